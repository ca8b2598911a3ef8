//! shmvm: a small KVM virtual machine monitor whose guest RAM is a host
//! memory backend (ram, file, memfd, shm).
//!
//! One architecture seam: `crate::layout` and `crate::machine` are the
//! target's own (x86_64: `layout.rs`, `machine/`; aarch64: `arch/aarch64/`),
//! and so are the boundary's state types in `hv/`. Configuration, memory
//! backends, the I/O dispatcher, the exit handler, the vCPU run loop and the
//! monitor are shared. The x86-only modules are gated here.

// The aarch64 machine's pure parts (layout, image header, device tree)
// build and are unit-tested everywhere; its machine only on aarch64.
pub mod arch;
#[cfg(target_arch = "x86_64")]
pub mod boot;
pub mod cli;
#[cfg(target_arch = "x86_64")]
pub mod coalesce;
pub mod config;
pub mod console_out;
#[cfg(target_arch = "x86_64")]
pub mod cpuid;
pub mod exit;
pub mod fd_limit;
pub mod guest_ram;
pub mod hv;
pub mod interrupts;
pub mod io;
pub mod ivshmem;
pub mod ivshmem_doorbell;
#[cfg(target_arch = "x86_64")]
pub mod layout;
#[cfg(target_arch = "x86_64")]
pub mod machine;
pub mod pci;
pub mod qmp;
pub mod ratelimit;
pub mod sandbox;
pub mod serial_mux;
pub mod signals;
#[cfg(target_arch = "x86_64")]
pub mod snapshot;
pub mod stats;
pub mod teardown;
pub mod terminal;
pub mod vcpu;
pub mod vhost_user;
pub mod virtio;
pub mod watchdog;

#[cfg(target_arch = "aarch64")]
pub use arch::aarch64::{layout, machine};
