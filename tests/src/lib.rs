//! Helpers for end-to-end tests.
pub mod shm;
