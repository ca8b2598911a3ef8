//! Helpers for end-to-end tests.
pub mod harness;
pub mod qsd;
pub mod shm;
pub mod vm;
