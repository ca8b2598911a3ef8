//! vhost-user devices: virtio devices whose queues an external process
//! (the vhost-user back-end: `qemu-storage-daemon` for a disk, `virtiofsd`
//! for a directory, `vhost-device-vsock`, `vhost-device-rng`, ...) serves
//! straight from guest RAM, which it maps through the RAM backend's file
//! descriptor. One front-end serves every type; the types are data.
//!
//! - [`kinds`]: the table of device types (virtio id, configuration,
//!   queues, feature masks, what the user may set).
//! - [`config`]: `-device vhost-user-{blk,fs,vsock,rng,device}-pci,chardev=ID`
//!   with `-chardev socket,id=ID,path=PATH` (QEMU's spelling), or
//!   `--vhost-user-blk socket=PATH`; the shared-RAM requirement.
//! - [`frontend`]: the vhost-user protocol (rust-vmm `vhost` crate):
//!   feature negotiation, memory table, configuration, vring set-up, a
//!   deadline on every wait for the back-end, and a watcher that reports
//!   the back-end hanging up. No KVM here.
//! - [`device`]: the virtio-pci transport's owner: on the driver's events
//!   it starts/stops the back-end's vrings, routes MSI-X vectors through
//!   the VM's interrupt service with irqfds (the back-end's call eventfds)
//!   and registers ioeventfds on the notify addresses (its kick eventfds),
//!   so neither kicks nor interrupts pass through the VMM.

pub mod config;
#[cfg(target_os = "linux")]
pub mod device;
#[cfg(target_os = "linux")]
pub mod frontend;
pub mod kinds;

pub use config::{ChardevConfig, VhostUserConfig};
#[cfg(target_os = "linux")]
pub use device::{VhostUser, VhostUserDeviceStats, Wired};
#[cfg(target_os = "linux")]
pub use frontend::{Link, MemRegion};
pub use kinds::{Kind, KindConfig};

/// virtio-blk feature bits (virtio spec 5.2.3) we look at.
pub mod blk_features {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    /// Writeback toggle through a configuration write: not offered (we do
    /// not forward configuration writes to the back-end).
    pub const CONFIG_WCE: u64 = 1 << 11;
    pub const MQ: u64 = 1 << 12;
}

/// Bytes of `struct virtio_blk_config` up to and including
/// write_zeroes_may_unmap and its padding (what Linux reads).
pub const BLK_CONFIG_LEN: u32 = 60;
/// Offset of `size_max` (u32) in the block configuration.
pub const BLK_CONFIG_SIZE_MAX: usize = 8;
/// Offset of `num_queues` in the block configuration (with VIRTIO_BLK_F_MQ).
pub const BLK_CONFIG_NUM_QUEUES: usize = 34;
