//! arm64 guest exits, decoded without a hypervisor: the parts of an HVF
//! backend that need no Mac and no arm64 host, so they are unit-tested on
//! Linux and type-checked for every target (`make check-portable`).
//!
//! - [`esr`]: an exception syndrome (ESR_EL2, what HVF reports in
//!   `hv_vcpu_exit_t.exception.syndrome`) as a typed [`esr::Exit`]: an MMIO
//!   read or write (size, register, sign extension), an HVC or SMC (the
//!   SMCCC conduit of PSCI), WFI/WFE, a trapped system register access;
//!   how far the PC moves after it is handled.
//! - [`psci`]: the PSCI call in x0..x3 as a typed [`psci::Call`], and the
//!   return codes the VMM writes back to x0.
//!
//! - [`hvf`] (Apple silicon only): HVF's exit record as a decoded exit,
//!   through the kept binding crate `applevisor`.
//!
//! Under KVM the kernel does this decoding itself; Hypervisor.framework
//! hands the VMM the raw syndrome.

pub mod esr;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub mod hvf;
pub mod psci;
