//! shmvm library.
