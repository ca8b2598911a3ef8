//! shmvm test kernel: boots by PVH or the 64-bit ("linux64") entry on
//! x86_64, or as an arm64 `Image` on aarch64, reports what the VMM gave it
//! and runs the tests named on the command line. See README.md for
//! parameters, output lines and region protocols.
//!
//! x86_64 (`x86.rs` and the modules below it): CPL0 code is emulated
//! instruction by instruction on PVM, so it only orchestrates and writes
//! finished output lines to the UART; loops over memory, reading the boot
//! information and formatting output run as ring-3 jobs (`cpu::user`),
//! which execute natively. aarch64 (`aarch64/`): EL1 with the MMU off,
//! the boot information from the device tree, PCI through ECAM, PSCI.

#![no_std]
#![no_main]

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod boot;
#[cfg(target_arch = "x86_64")]
mod bootinfo;
#[cfg_attr(target_arch = "aarch64", path = "aarch64/console.rs")]
mod console;
#[cfg(target_arch = "x86_64")]
mod cpu;
#[cfg(target_arch = "x86_64")]
mod doorbell;
#[cfg(target_arch = "x86_64")]
mod ivshmem;
#[cfg(target_arch = "x86_64")]
mod jobs;
mod line;
#[cfg(target_arch = "x86_64")]
mod paging;
mod params;
mod pci;
mod ranges;
#[cfg(target_arch = "x86_64")]
mod snapcount;
#[cfg(target_arch = "x86_64")]
mod storm;
#[cfg(target_arch = "x86_64")]
mod tables;
#[cfg(target_arch = "x86_64")]
mod timer;
#[cfg(target_arch = "x86_64")]
mod x86;

use core::cell::UnsafeCell;

/// A static shared between CPL0 code and ring-3 jobs (x86_64), or between
/// the boot CPU and the secondaries it started (aarch64), whose accesses
/// are ordered by the code that uses it (x86_64: one CPU, and CPL0 is
/// suspended while a job runs; aarch64: only the boot CPU touches these,
/// the secondaries write their own mailbox words). Users take short-lived
/// references through `ptr()`.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: accesses never overlap (see above).
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }
    pub fn ptr(&self) -> *mut T {
        self.0.get()
    }
}

/// First failure reason (None: all passed so far).
pub static FAILURE: Global<Option<&'static str>> = Global::new(None);

/// Records a failure (x86_64: at CPL0 or in a ring-3 job; aarch64: on
/// the boot CPU).
pub fn note_failure(why: &'static str) {
    // SAFETY: x86_64: single CPU, CPL0 and ring-3 jobs never run at the
    // same time; aarch64: only the boot CPU calls this.
    unsafe {
        let f = FAILURE.ptr();
        if (*f).is_none() {
            *f = Some(why);
        }
    }
}
