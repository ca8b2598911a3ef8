//! PCI configuration space, bus 0: through mechanism #1 (ports
//! 0xCF8/0xCFC) on x86_64, through the host bridge's ECAM window (from the
//! device tree) on aarch64.

use crate::Global;
#[cfg(target_arch = "x86_64")]
use crate::cpu::{inl, outl};
#[cfg(target_arch = "x86_64")]
use core::arch::asm;

/// Port accesses to 0xCF8..0xCFF made so far (the storm test reports
/// them, to compare with the VMM's count for the PCI configuration ports).
#[cfg(target_arch = "x86_64")]
pub static PORT_ACCESSES: Global<u64> = Global::new(0);

/// Counts `n` accesses to the configuration ports.
#[cfg(target_arch = "x86_64")]
pub fn count(n: u64) {
    // SAFETY: single CPU; CPL0 and ring-3 jobs never run at the same time.
    unsafe { *PORT_ACCESSES.ptr() += n }
}

#[cfg(target_arch = "x86_64")]
const ADDR: u16 = 0xCF8;
#[cfg(target_arch = "x86_64")]
const DATA: u16 = 0xCFC;

/// The ECAM window's base (bus 0), from the device tree (0: none found).
#[cfg(target_arch = "aarch64")]
pub static ECAM: Global<u64> = Global::new(0);

pub const COMMAND: u8 = 0x04;
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;

#[derive(Clone, Copy)]
pub struct Bdf {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

#[cfg(target_arch = "x86_64")]
impl Bdf {
    fn addr(self, off: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.bus) << 16)
            | (u32::from(self.dev) << 11)
            | (u32::from(self.func) << 8)
            | u32::from(off & 0xFC)
    }

    pub fn read32(self, off: u8) -> u32 {
        count(2);
        outl(ADDR, self.addr(off));
        inl(DATA)
    }

    pub fn write32(self, off: u8, v: u32) {
        count(2);
        outl(ADDR, self.addr(off));
        outl(DATA, v);
    }

    /// 16-bit write (so the status register next to COMMAND, whose bits are
    /// write-1-to-clear, is not written).
    pub fn write16(self, off: u8, v: u16) {
        count(2);
        outl(ADDR, self.addr(off));
        let port = DATA + u16::from(off & 2);
        // SAFETY: port I/O to the PCI configuration data window.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
        }
    }
}

#[cfg(target_arch = "aarch64")]
impl Bdf {
    /// The register's address in the ECAM window.
    fn addr(self, off: u8) -> u64 {
        // SAFETY: ECAM is written once by the boot CPU before any PCI access.
        let ecam = unsafe { *ECAM.ptr() };
        ecam + (u64::from(self.bus) << 20)
            + (u64::from(self.dev) << 15)
            + (u64::from(self.func) << 12)
            + u64::from(off)
    }

    pub fn read32(self, off: u8) -> u32 {
        // SAFETY: an aligned register in the ECAM window (device MMIO);
        // an absent function reads all-ones.
        unsafe { core::ptr::read_volatile(self.addr(off & 0xFC) as *const u32) }
    }

    pub fn write32(self, off: u8, v: u32) {
        // SAFETY: as read32.
        unsafe { core::ptr::write_volatile(self.addr(off & 0xFC) as *mut u32, v) }
    }

    /// 16-bit write (so the status register next to COMMAND, whose bits are
    /// write-1-to-clear, is not written).
    pub fn write16(self, off: u8, v: u16) {
        // SAFETY: as read32.
        unsafe { core::ptr::write_volatile(self.addr(off & 0xFE) as *mut u16, v) }
    }
}

impl Bdf {
    pub fn read16(self, off: u8) -> u16 {
        (self.read32(off) >> (8 * (off & 2))) as u16
    }
}

/// First function on bus 0 with this vendor/device ID.
pub fn find(vendor: u16, device: u16) -> Option<Bdf> {
    let want = u32::from(vendor) | (u32::from(device) << 16);
    for dev in 0..32u8 {
        let f0 = Bdf {
            bus: 0,
            dev,
            func: 0,
        };
        let id = f0.read32(0);
        if id & 0xFFFF == 0xFFFF {
            continue;
        }
        if id == want {
            return Some(f0);
        }
        // Header type bit 7: multi-function device.
        if (f0.read32(0x0C) >> 16) & 0x80 != 0 {
            for func in 1..8u8 {
                let f = Bdf { bus: 0, dev, func };
                if f.read32(0) == want {
                    return Some(f);
                }
            }
        }
    }
    None
}
