//! Built-in virtio devices (virtio-blk, virtio-serial, virtio-rng) on the
//! virtio-pci transport: the device models and their worker threads live
//! in `devices::virtio`; this module wires them to the VM.
//!
//! - [`memory`]: guest RAM as the models reach it (vm-memory underneath).
//! - [`config`]: `-drive`, `-device virtio-blk-pci|virtio-rng-pci|
//!   virtio-serial-pci|virtconsole|virtserialport`.
//! - [`wiring`]: kicks as ioeventfds that wake the worker, interrupts as
//!   irqfds on the queues' MSI-X vectors (shared with vhost-user-blk, whose
//!   back-end holds the other ends).
//! - `Owner`: the transport's owner, turning the driver's events into
//!   worker calls and wiring.

pub mod config;
// The wiring needs a VM (KVM or HVF); the configuration parses everywhere.
#[cfg(any(kvm, hvf))]
pub mod memory;
#[cfg(any(kvm, hvf))]
mod plug;
#[cfg(any(kvm, hvf))]
mod port_socket;
#[cfg(any(kvm, hvf))]
pub mod wiring;
#[cfg(any(kvm, hvf))]
pub use plug::*;
