//! The HVF backend of the hypervisor boundary for the aarch64 machine:
//! Hypervisor.framework on Apple silicon through the kept binding crates
//! `applevisor` (and its raw `applevisor-sys` where the safe layer has no
//! call: mapping the VMM's own guest RAM, a GIC on an existing VM).
//!
//! The same surface as the vmm's KVM backend (`vmm/src/hv/kvm_aarch64.rs`):
//! `Vm` (memory slots, vCPUs, the in-kernel GICv3, interrupt lines) and
//! `Vcpu` (`init`, `set_core_regs`, `mpidr`, `run` returning
//! [`hv_boundary::VmExit`]). What KVM does in the kernel and HVF leaves to
//! the VMM is here:
//!
//! - [`memmap`]: guest RAM slots, host-page aligned (16 KiB on Apple
//!   silicon), never overlapping;
//! - [`power`]: PSCI in the VMM: MPIDR affinities, each vCPU's power state
//!   (off, on pending, on), CPU_ON/CPU_OFF/AFFINITY_INFO/SYSTEM_OFF/RESET;
//! - [`step`]: an exit decoded by `aarch64-exits` turned into what the
//!   backend does next (an MMIO exit to the VMM, a PSCI call, a WFI sleep, a
//!   system register read-as-zero), and an MMIO read completed into its
//!   register on the next run;
//! - [`wfi`]: how long a vCPU in WFI sleeps (its virtual timer's deadline);
//! - [`gic`]: SPI numbers to GIC INTIDs, and the machine's SPIs against
//!   HVF's range;
//! - [`ioevent`]: ioeventfd without KVM: MMIO writes matched in the vCPU
//!   thread and signalled there;
//! - [`routing`]: KVM's GSI routing and irqfd bookkeeping without KVM:
//!   which SPI or MSI a GSI raises, which notifier raises which GSI;
//! - [`relay`]: interrupt lines without irqfd: a thread that waits on the
//!   devices' notifiers (pipes off Linux) and raises what their GSI routes
//!   to (an SPI, or an MSI through the GIC's MBI frame).
//!
//! Every module above builds and is unit-tested on every host; `hvf`
//! (the calls into Hypervisor.framework) only on aarch64 macOS, where
//! `make check-portable` type-checks it. None of it has run on a Mac.

pub mod gic;
pub mod ioevent;
pub mod memmap;
pub mod power;
pub mod relay;
pub mod routing;
pub mod step;
pub mod wfi;

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod hvf;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub use hvf::{Error, Vcpu, Vm};
