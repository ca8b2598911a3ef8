//! The hypervisor boundary's plain types: the exits a vCPU reports, in our
//! own types, and the arm64 vCPU and interrupt-controller set-up
//! ([`aarch64`]). The vmm's KVM backends (`vmm/src/hv/`) and the HVF
//! backend (`hv-hvf`) both speak them, so the exit handler and the machine
//! builder see one surface whatever the accelerator. No hypervisor here:
//! built and unit-tested on every host.

pub mod aarch64;

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
    /// the backend's `Vcpu::internal_error`.
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
