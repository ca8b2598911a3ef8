//! HVF's exit record (`hv_vcpu_exit_t`, through the `applevisor` binding) in
//! this crate's terms. Apple silicon only: type-checked for
//! aarch64-apple-darwin by `make check-portable`, never run (no Mac here).

use applevisor::vcpu::{ExitReason, VcpuExit};

use crate::esr::{Exit, Syndrome};

/// Why `hv_vcpu_run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HvfExit {
    /// `hv_vcpus_exit` kicked the vCPU (pause, stop, a signal to deliver).
    Canceled,
    /// The virtual timer fired and HVF masked it: the VMM raises its PPI
    /// and unmasks the timer once the guest has dealt with it.
    VtimerActivated,
    /// A trap: the decoded syndrome, how far the PC moves once it is
    /// handled, and the faulting IPA (meaningful for a data abort).
    Exception {
        exit: Exit,
        pc_advance: u64,
        ipa: u64,
    },
    /// HVF does not say.
    Unknown,
}

impl HvfExit {
    pub fn new(e: &VcpuExit) -> HvfExit {
        match e.reason {
            ExitReason::CANCELED => HvfExit::Canceled,
            ExitReason::VTIMER_ACTIVATED => HvfExit::VtimerActivated,
            ExitReason::EXCEPTION => {
                let s = Syndrome::new(e.exception.syndrome);
                HvfExit::Exception {
                    exit: s.decode(),
                    pc_advance: s.pc_advance(),
                    ipa: e.exception.physical_address,
                }
            }
            ExitReason::UNKNOWN => HvfExit::Unknown,
        }
    }
}
