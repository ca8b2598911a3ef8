//! The aarch64 machine: QEMU `virt`-like addresses, a Linux arm64 `Image`
//! and initrd, a generated device tree, the in-kernel GICv3 with the
//! architected timer and PSCI, a 16550 UART on MMIO and a debug-exit
//! register for test kernels.

pub mod fdt;
pub mod image;
pub mod layout;
#[cfg(all(target_arch = "aarch64", any(kvm, hvf)))]
pub mod machine;

/// No console-output coalescing on aarch64 yet (UART writes exit one by
/// one): an uninhabited stand-in for `coalesce::SerialCoalescing`, so the
/// shared vCPU loop reads the same on both architectures.
#[derive(Debug)]
pub enum NoCoalescing {}

impl NoCoalescing {
    pub fn start_flush_timer(&self) {
        match *self {}
    }

    pub fn stop_flush_timer(&self) {
        match *self {}
    }
}
