//! shmvm library.
pub mod ivshmem;
pub mod pci;
