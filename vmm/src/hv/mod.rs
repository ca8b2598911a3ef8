//! The hypervisor boundary: everything the rest of the VMM asks of "a VM"
//! and "a vCPU", and the exits a vCPU reports, in our own types.
//!
//! Only `kvm.rs` (x86_64) and `kvm_aarch64.rs` (with `kvm_shared.rs`, the
//! plumbing both use alike) talk to KVM (a test checks that no other file imports
//! KVM's crates). Another accelerator (HVF) would add a sibling module with
//! the same surface: [`Vm`], [`Vcpu`], [`VmExit`], and the state types of
//! `x86.rs` (an aarch64 twin for arm64). Devices never see a `Vm`: they
//! ask the VM-level services (`interrupts.rs`) or get named operations
//! (ioeventfds, irqfds) through the machine builder. Coalesced
//! port writes ([`Vm::coalesce_pio`], [`CoalescedRing`]) are an optional
//! speed-up: an accelerator without them reports `false` and every write
//! simply exits.

// Plain types: built (and unit-tested) on every host.
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod kvm;
#[cfg(target_arch = "aarch64")]
pub mod kvm_aarch64;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod kvm_shared;
#[cfg(target_arch = "x86_64")]
pub mod x86;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{CoreRegs, GicConfig, GsiRoute, VcpuInit};
#[cfg(target_arch = "x86_64")]
pub use kvm::{CoalescedRing, CoalescedWrite, Error, HostCpu, Vcpu, Vm};
#[cfg(target_arch = "aarch64")]
pub use kvm_aarch64::{Error, Vcpu, Vm};
#[cfg(target_arch = "x86_64")]
pub use x86::{
    CpuidEntry, DescriptorTable, Fpu, GsiRoute, IrqChip, LapicState, MsrEntry, Regs, Segment,
    SpecialRegs, VcpuState, VmIrqState,
};

/// Where an ioeventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddr {
    Pio(u64),
    Mmio(u64),
}

/// A system event a vCPU reports (PSCI or ACPI-style, from the hypervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    Shutdown,
    Reset,
    Crash,
    Other(u32),
}

/// Why `Vcpu::run` returned, with the data the exit handler needs.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// `in` from a port: fill `data`, `size` bytes per access. String I/O
    /// (`rep insb`) delivers several accesses to the same port at once:
    /// `data` holds `data.len() / size` elements, in order.
    IoIn {
        port: u16,
        size: usize,
        data: &'a mut [u8],
    },
    /// `out` to a port: `data.len() / size` accesses of `size` bytes, in
    /// order (several only for string I/O).
    IoOut {
        port: u16,
        size: usize,
        data: &'a [u8],
    },
    /// A read from unbacked guest-physical memory: fill `data`.
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    /// The guest executed HLT (only reported without an in-kernel irqchip).
    Hlt,
    /// Triple fault (or another shutdown condition).
    Shutdown,
    /// A PSCI/ACPI-style system event.
    SystemEvent(SystemEvent),
    /// The hypervisor could not emulate or run guest code. Details come from
    /// [`Vcpu::internal_error`].
    InternalError,
    /// VM entry failed with a hardware reason code.
    FailEntry {
        reason: u64,
    },
    /// KVM_RUN was interrupted by a signal (EINTR) or `immediate_exit`.
    Interrupted,
    /// Anything else, named for the one-line report.
    Other(String),
}
