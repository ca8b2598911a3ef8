//! shmvm library.
pub mod ivshmem;
