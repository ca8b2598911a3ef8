//! The hypervisor boundary: everything the rest of the VMM asks of "a VM"
//! and "a vCPU", and the exits a vCPU reports, in our own types.
//!
//! Only `kvm.rs` (x86_64) and `kvm_aarch64.rs` (with `kvm_shared.rs`, the
//! plumbing both use alike) talk to KVM (a test checks that no other file imports
//! KVM's crates). Another accelerator has the same surface: [`Vm`],
//! [`Vcpu`], [`VmExit`], and the state types of `x86.rs` (or their arm64
//! twin, `hv_boundary::aarch64`). The HVF backend for arm64 is the crate
//! `hv-hvf` (macOS on Apple silicon), adapted in `hvf.rs`; which backend a
//! build has is `build.rs`'s cfg (`kvm`, `hvf`, or none). Devices never see a `Vm`: they
//! ask the VM-level services (`interrupts.rs`) or get named operations
//! (ioeventfds, irqfds) through the machine builder. Coalesced
//! port writes ([`Vm::coalesce_pio`], [`CoalescedRing`]) are an optional
//! speed-up: an accelerator without them reports `false` and every write
//! simply exits.

// Plain types (the exits, the arm64 set-up): the `hv-boundary` crate,
// shared with the HVF backend (`hv-hvf`); built and unit-tested on every
// host.
pub use hv_boundary::{IoEventAddr, SystemEvent, VmExit, aarch64};
#[cfg(hvf)]
pub mod hvf;
#[cfg(all(target_arch = "x86_64", kvm))]
pub mod kvm;
#[cfg(all(target_arch = "aarch64", kvm))]
pub mod kvm_aarch64;
#[cfg(kvm)]
mod kvm_shared;
#[cfg(target_arch = "x86_64")]
pub mod x86;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{CoreRegs, GicConfig, GsiRoute, MsiController, VcpuInit};
#[cfg(hvf)]
pub use hvf::{Error, Vcpu, Vm};
#[cfg(all(target_arch = "x86_64", kvm))]
pub use kvm::{CoalescedRing, CoalescedWrite, Error, HostCpu, Vcpu, Vm};
#[cfg(all(target_arch = "aarch64", kvm))]
pub use kvm_aarch64::{Error, Vcpu, Vm};
#[cfg(target_arch = "x86_64")]
pub use x86::{
    CpuidEntry, DescriptorTable, Fpu, GsiRoute, IrqChip, LapicState, MsrEntry, Regs, Segment,
    SpecialRegs, VcpuState, VmIrqState,
};

/// The host's accelerator as QEMU's `-accel` names it (`kvm`, `hvf`), or
/// none: this host has no backend (x86_64 macOS, the BSDs).
pub const HOST_ACCEL: Option<&str> = if cfg!(kvm) {
    Some("kvm")
} else if cfg!(hvf) {
    Some("hvf")
} else {
    None
};
