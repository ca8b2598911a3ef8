//! Helpers for end-to-end tests: the harness (running shmvm, reading what
//! it produced), the typed statistics, host-side shared regions, the
//! qemu-storage-daemon peer, host bandwidth loops.
pub mod bandwidth;
pub mod harness;
pub mod lab;
pub mod qsd;
pub mod shm;
pub mod stats;
