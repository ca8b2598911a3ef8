//! ivshmem-plain (1af4:1110) on aarch64: found through ECAM, checked like
//! on x86_64 (revision, class, subsystem, BAR types and sizes), its BARs
//! assigned by the kernel itself from the host bridge's 32-bit window (no
//! firmware assigns them here; a VMM moves BAR2's memory slot to where the
//! guest puts it), then the guest half of the handshake with a host
//! process (`protocol::guest_handshake`) over BAR2.

use core::ptr::{read_volatile, write_volatile};

use super::{Deadline, info, ms_since};
use crate::console::{Dec, Digits, Hex};
use crate::params::PARAMS;
use crate::pci::{self, CMD_IO, CMD_MEMORY, COMMAND};
use crate::say;
use protocol::{DATA_OFF, GuestError, Shared};

const VENDOR: u16 = 0x1af4;
const DEVICE: u16 = 0x1110;
const BAR0_SIZE: u64 = 256;
const IVPOSITION: u64 = 8;

fn fail_if(cond: bool, why: &'static str) -> Result<(), &'static str> {
    if cond { Err(why) } else { Ok(()) }
}

/// BAR2 as the protocol's shared region (device memory: the MMU is off).
struct Bar2 {
    base: u64,
    size: u64,
}

impl Shared for Bar2 {
    fn size(&self) -> u64 {
        self.size
    }
    fn read32(&self, off: u64) -> u32 {
        // SAFETY: the protocol stays below `size` in the assigned BAR2.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }
    fn write32(&self, off: u64, v: u32) {
        // SAFETY: as read32.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }
    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as read32.
        unsafe { read_volatile((self.base + off) as *const u64) }
    }
    fn write64(&self, off: u64, v: u64) {
        // SAFETY: as read32.
        unsafe { write_volatile((self.base + off) as *mut u64, v) }
    }
}

/// Finds and checks the device, sizes and assigns its BARs, enables
/// memory decoding and checks IVPosition.
fn probe() -> Result<Bar2, &'static str> {
    let i = info();
    fail_if(i.ecam.is_none(), "no_pci_host_in_device_tree")?;
    let Some((win, win_size)) = i.mmio32 else {
        return Err("no_pci_mmio32_window");
    };
    let Some(f) = pci::find(VENDOR, DEVICE) else {
        say!("shmvm: ivshmem not found on PCI bus 0");
        return Err("ivshmem_not_found");
    };
    let class = f.read32(0x08);
    let subsys = f.read32(0x2C);
    say!(
        "shmvm: ivshmem pci=",
        Digits(u64::from(f.bus), 2),
        ":",
        Digits(u64::from(f.dev), 2),
        ".",
        Digits(u64::from(f.func), 1),
        " id=1af4:1110 rev=",
        Dec(u64::from(class & 0xFF)),
        " class=",
        Digits(u64::from(class >> 8), 6),
        " subsystem=",
        Digits(u64::from(subsys & 0xFFFF), 4),
        ":",
        Digits(u64::from(subsys >> 16), 4)
    );
    fail_if(class & 0xFF != 1, "ivshmem_revision")?;
    fail_if(class >> 8 != 0x05_00_00, "ivshmem_class")?;
    fail_if(subsys != 0x1100_1af4, "ivshmem_subsystem")?;

    // Sizing with decoding off, as Linux does.
    let cmd = f.read16(COMMAND);
    f.write16(COMMAND, cmd & !(CMD_MEMORY | CMD_IO));
    f.write32(0x10, !0);
    let m0 = f.read32(0x10);
    f.write32(0x18, !0);
    f.write32(0x1C, !0);
    let (mlo, mhi) = (f.read32(0x18), f.read32(0x1C));
    let size0 = u64::from(!(m0 & !0xF)).wrapping_add(1) & 0xFFFF_FFFF;
    let size2 = (!(((u64::from(mhi) << 32) | u64::from(mlo)) & !0xF)).wrapping_add(1);
    fail_if(m0 & 0x7 != 0, "ivshmem_bar0_not_mem32")?;
    fail_if(size0 != BAR0_SIZE, "ivshmem_bar0_size")?;
    fail_if(mlo & 0xF != 0xC, "ivshmem_bar2_not_mem64_prefetchable")?;
    fail_if(
        size2 == 0 || size2 & (size2 - 1) != 0,
        "ivshmem_bar2_size_not_pow2",
    )?;
    // SAFETY: PARAMS is no longer written.
    if let Some(want) = unsafe { (*PARAMS.ptr()).ivshmem_size } {
        fail_if(size2 != want, "ivshmem_bar2_size")?;
    }
    // BAR0 at the window's start, BAR2 at the first boundary of its size
    // past BAR0, both inside the window.
    let bar0 = win;
    let bar2 = (win + BAR0_SIZE).next_multiple_of(size2);
    fail_if(bar2 + size2 > win + win_size, "ivshmem_bar2_no_room")?;
    f.write32(0x10, bar0 as u32);
    f.write32(0x18, bar2 as u32);
    f.write32(0x1C, (bar2 >> 32) as u32);
    f.write16(COMMAND, cmd | CMD_MEMORY);
    let back0 = u64::from(f.read32(0x10) & !0xF);
    let back2 = ((u64::from(f.read32(0x1C)) << 32) | u64::from(f.read32(0x18))) & !0xF;
    say!(
        "shmvm: ivshmem bar0=",
        Hex(back0),
        " size=",
        Dec(size0),
        " bar2=",
        Hex(back2),
        " size=",
        Dec(size2)
    );
    fail_if(back0 != bar0 || back2 != bar2, "ivshmem_bar_readback")?;
    // SAFETY: BAR0 is assigned and decoded (above).
    let ivpos = u64::from(unsafe { read_volatile((bar0 + IVPOSITION) as *const u32) });
    say!("shmvm: ivshmem ivposition=", Hex(ivpos));
    // SAFETY: PARAMS is no longer written.
    let want_ivpos = unsafe { (*PARAMS.ptr()).ivposition };
    fail_if(ivpos != want_ivpos, "ivshmem_ivposition")?;
    Ok(Bar2 {
        base: bar2,
        size: size2,
    })
}

/// The handshake with the host process (README, "ivshmem handshake").
pub fn handshake() -> Result<(), &'static str> {
    let r = probe()?;
    fail_if(r.size < 2 * DATA_OFF, "ivshmem_region_too_small")?;
    // SAFETY: PARAMS is no longer written.
    let (seed, timeout) = unsafe { ((*PARAMS.ptr()).seed, (*PARAMS.ptr()).timeout_ms) };
    say!(
        "shmvm: ivshmem handshake start seed=",
        Hex(seed),
        " data_len=",
        Dec(r.size - DATA_OFF)
    );
    let t0 = super::counter().1;
    let result = protocol::guest_handshake(&r, seed, &mut Deadline::after_ms(timeout));
    let ms = ms_since(t0);
    match result {
        Ok(()) => {
            say!("shmvm: ivshmem handshake ok ms=", Dec(ms));
            Ok(())
        }
        Err(GuestError::Timeout { state }) => {
            say!(
                "shmvm: ivshmem handshake timeout state=",
                Dec(u64::from(state)),
                " ms=",
                Dec(ms)
            );
            Err("ivshmem_handshake_timeout")
        }
        Err(GuestError::HostSawBadP1) => {
            say!("shmvm: ivshmem handshake host reported P1 mismatch");
            Err("ivshmem_host_saw_bad_p1")
        }
        Err(GuestError::P2Mismatch { at, got, want }) => {
            say!(
                "shmvm: ivshmem handshake P2 mismatch at offset=",
                Hex(at),
                " got=",
                Hex(got),
                " want=",
                Hex(want)
            );
            Err("ivshmem_p2_mismatch")
        }
    }
}
