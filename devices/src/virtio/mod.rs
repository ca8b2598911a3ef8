//! virtio 1.x over PCI (the "modern" transport, virtio spec 4.1).
//!
//! [`VirtioPci`] is a PCI function (vendor 0x1af4, device 0x1040 + type,
//! revision 1) whose one 64-bit memory BAR holds the common configuration,
//! ISR, device configuration and notification regions, each described by a
//! vendor-specific capability, plus the MSI-X table and PBA.
//!
//! The transport runs no virtqueues. Whoever serves the device (a
//! vhost-user back-end, or a built-in model on a [`worker::Worker`], both
//! wired by the VMM) implements [`TransportEvents`] and
//! is told when the driver accepts features, starts the device with given
//! queues, resets it, reprograms an MSI-X vector, or moves the notification
//! region (so it can register ioeventfds there). This crate knows nothing
//! of the VMM or the hypervisor.

/// The MSI-X model lives with PCI (ivshmem-doorbell uses it too).
pub use crate::pci::msix;
pub mod blk;
pub mod console;
pub mod device;
pub mod queue;
pub mod rng;
mod transport;
pub mod worker;

pub use msix::{Msix, MsixVector};
pub use transport::{
    BAR_INDEX, BAR_SIZE, COMMON_CFG_LEN, COMMON_CFG_OFFSET, DEVICE_CFG_OFFSET, Error, ISR_OFFSET,
    MAX_QUEUES, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET,
    TransportStats, VirtioPci, VirtioPciConfig,
};

/// PCI vendor of every virtio device.
pub const PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) virtio devices use 0x1040 + device type.
pub const PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision of a modern device (spec 4.1.2.1: at least 1).
pub const PCI_REVISION: u8 = 1;

/// Virtio device types (spec 5).
pub const TYPE_NET: u16 = 1;
pub const TYPE_BLOCK: u16 = 2;
pub const TYPE_CONSOLE: u16 = 3;
pub const TYPE_RNG: u16 = 4;

/// `device_status` bits (spec 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Reserved feature bits (spec 6) the transport cares about.
pub mod features {
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    pub const RING_PACKED: u64 = 1 << 34;
    pub const SR_IOV: u64 = 1 << 37;
    pub const NOTIFICATION_DATA: u64 = 1 << 38;
    pub const NOTIF_CONFIG_DATA: u64 = 1 << 39;
    pub const RING_RESET: u64 = 1 << 40;
    /// Bits this transport never offers: no IOMMU, no SR-IOV, no
    /// notification data, no per-queue reset (the common configuration's
    /// queue_reset register is not implemented).
    pub const TRANSPORT_UNSUPPORTED: u64 =
        ACCESS_PLATFORM | SR_IOV | NOTIFICATION_DATA | NOTIF_CONFIG_DATA | RING_RESET;
}

/// "No MSI-X vector" in msix_config / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

/// One virtqueue as the driver configured it, handed over at DRIVER_OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub index: u16,
    /// Number of descriptors the driver chose (a power of two).
    pub size: u16,
    /// MSI-X vector for used-buffer notifications, or [`NO_VECTOR`].
    pub vector: u16,
    /// Guest physical addresses of the descriptor table, the driver
    /// (available) ring and the device (used) ring.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// Where the guest kicks queues: queue `q` is notified by a write at
/// `base + q * multiplier` (queue_notify_off is the queue index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyRegion {
    pub base: u64,
    pub multiplier: u32,
    pub queues: u16,
}

impl NotifyRegion {
    /// Guest physical address whose writes notify `queue`.
    pub fn queue_addr(&self, queue: u16) -> u64 {
        self.base + u64::from(queue) * u64::from(self.multiplier)
    }
}

/// What the owner of a [`VirtioPci`] device is told. Calls come from a vCPU
/// thread with the device locked: an implementation must not lock the
/// device or the PCI root.
pub trait TransportEvents: Send {
    /// A driver read of the device-specific configuration at `offset`.
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// A driver write of the device-specific configuration at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set FEATURES_OK after acknowledging `features` (already
    /// checked to be a subset of the offered ones, with VERSION_1). An error
    /// refuses them: FEATURES_OK then reads back clear.
    fn features_ok(&mut self, features: u64) -> Result<(), String>;
    /// The driver set DRIVER_OK; `queues` are the enabled queues. An error
    /// sets DEVICE_NEEDS_RESET.
    fn driver_ok(&mut self, queues: &[QueueConfig]) -> Result<(), String>;
    /// The driver wrote 0 to device_status. Called whatever the state was.
    fn reset(&mut self);
    /// MSI-X vector `vector` now delivers `state` (or is masked).
    fn msix_vector(&mut self, vector: u16, state: MsixVector);
    /// A queue notification reached the device model: nothing (no
    /// ioeventfd) caught it before.
    fn queue_notify(&mut self, queue: u16);
    /// The notification region moved (None: the BAR stopped decoding).
    fn notify_region(&mut self, region: Option<NotifyRegion>);
}
