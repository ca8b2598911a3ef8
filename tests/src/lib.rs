//! Helpers for end-to-end tests: the harness (running shmvm, reading what
//! it produced), the typed statistics, host-side shared regions, the
//! qemu-storage-daemon peer, host bandwidth loops, a raw QMP client.
pub mod bandwidth;
pub mod harness;
pub mod lab;
pub mod qsd;
pub mod raw_qmp;
pub mod shm;
pub mod stats;
