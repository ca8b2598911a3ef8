//! Device models. They see bus offsets and never the VMM or its vCPUs.

pub mod bus;
pub mod ivshmem;
pub mod pci;
