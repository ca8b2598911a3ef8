//! Host memory backends.
