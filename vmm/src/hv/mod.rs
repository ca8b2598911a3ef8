//! The hypervisor boundary: everything the rest of the VMM asks of "a VM"
//! and "a vCPU", and the exits a vCPU reports, in our own types.
//!
//! Only `kvm.rs` (x86_64) and `kvm_aarch64.rs` talk to KVM (a test checks that no other file imports
//! KVM's crates). Another accelerator has the same surface: [`Vm`],
//! [`Vcpu`], [`VmExit`], and the state types of `x86.rs` (or their arm64
//! twin, `hv_boundary::aarch64`). The HVF backend for arm64 is the crate
//! `hv-hvf` (macOS on Apple silicon; not yet wired in here). Devices never see a `Vm`: they
//! ask the VM-level services (`interrupts.rs`) or get named operations
//! (ioeventfds, irqfds) through the machine builder. Coalesced
//! port writes ([`Vm::coalesce_pio`], [`CoalescedRing`]) are an optional
//! speed-up: an accelerator without them reports `false` and every write
//! simply exits.

// Plain types (the exits, the arm64 set-up): the `hv-boundary` crate,
// shared with the HVF backend (`hv-hvf`); built and unit-tested on every
// host.
pub use hv_boundary::{IoEventAddr, SystemEvent, VmExit, aarch64};
#[cfg(target_arch = "x86_64")]
pub mod kvm;
#[cfg(target_arch = "aarch64")]
pub mod kvm_aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{CoreRegs, GicConfig, VcpuInit};
#[cfg(target_arch = "x86_64")]
pub use kvm::{CoalescedRing, CoalescedWrite, Error, HostCpu, Vcpu, Vm};
#[cfg(target_arch = "aarch64")]
pub use kvm_aarch64::{Error, Vcpu, Vm};
#[cfg(target_arch = "x86_64")]
pub use x86::{
    CpuidEntry, DescriptorTable, Fpu, GsiRoute, IrqChip, LapicState, MsrEntry, Regs, Segment,
    SpecialRegs, VcpuState, VmIrqState,
};
