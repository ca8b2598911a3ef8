//! shmvm: a small KVM virtual machine monitor whose guest RAM is a host
//! memory backend (ram, file, memfd, shm).
//!
//! One architecture seam: `crate::layout` and `crate::machine` are the
//! target's own (x86_64: `layout.rs`, `machine/`; aarch64: `arch/aarch64/`),
//! and so are the boundary's state types in `hv/`. Configuration, memory
//! backends, the I/O dispatcher, the exit handler, the vCPU run loop and the
//! monitor are shared. The x86-only modules are gated here.
//!
//! The hypervisor is the other seam (`build.rs` sets one cfg): `kvm` on
//! Linux, `hvf` on macOS on Apple silicon (the aarch64 machine only), none
//! elsewhere, where configuration and parsing build and `machine::run`
//! says that the host has no accelerator (`no_accel.rs`). What needs
//! Linux beyond the hypervisor (seccomp, vhost-user, the ivshmem
//! doorbell's eventfds) is gated with `target_os = "linux"`; what waits on
//! fds does so through `devices::poller` (epoll on Linux, poll(2)
//! elsewhere) and wakes through `devices::notifier`.

// The aarch64 machine's pure parts (layout, image header, device tree)
// build and are unit-tested everywhere; its machine only on aarch64.
pub mod arch;
#[cfg(all(target_arch = "x86_64", kvm))]
pub mod boot;
pub mod cli;
#[cfg(all(target_arch = "x86_64", kvm))]
pub mod coalesce;
pub mod config;
pub mod console_out;
#[cfg(any(kvm, hvf))]
pub mod control;
#[cfg(all(target_arch = "x86_64", kvm))]
pub mod cpuid;
pub mod exit;
pub mod fd_limit;
#[cfg(any(kvm, hvf))]
pub mod guest_ram;
pub mod hv;
#[cfg(any(kvm, hvf))]
pub mod interrupts;
pub mod io;
pub mod ivshmem;
pub mod ivshmem_doorbell;
#[cfg(target_arch = "x86_64")]
pub mod layout;
#[cfg(all(target_arch = "x86_64", kvm))]
pub mod machine;
#[cfg(not(any(kvm, hvf)))]
#[path = "no_accel.rs"]
pub mod machine;
#[cfg(any(kvm, hvf))]
pub mod pci;
pub mod qmp;
pub mod ratelimit;
pub mod sandbox;
#[cfg(any(kvm, hvf))]
pub mod serial_mux;
#[cfg(any(kvm, hvf))]
pub mod signals;
#[cfg(all(target_arch = "x86_64", kvm))]
pub mod snapshot;
pub mod stats;
#[cfg(kvm)]
pub mod teardown;
pub mod terminal;
#[cfg(any(kvm, hvf))]
pub mod vcpu;
pub mod vhost_user;
pub mod virtio;
pub mod watchdog;

#[cfg(target_arch = "aarch64")]
pub use arch::aarch64::layout;
#[cfg(all(target_arch = "aarch64", any(kvm, hvf)))]
pub use arch::aarch64::machine;
