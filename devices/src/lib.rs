//! Device models. They see bus offsets and never the VMM or its vCPUs.

pub mod acpi_pm;
pub mod bus;
pub mod debug_exit;
pub mod ged;
pub mod i6300esb;
pub mod i8042;
pub mod ivshmem;
pub mod ivshmem_doorbell;
pub mod notifier;
pub mod pci;
pub mod poller;
pub mod ratelimit;
pub mod serial;
pub mod snapshot;
pub mod virtio;
