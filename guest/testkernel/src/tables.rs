//! CPU count from the MP table and the ACPI MADT (searched and parsed in
//! ring 3: scanning the BIOS areas is thousands of loads).

use crate::Global;
use crate::bootinfo::INFO;

pub struct CpuTables {
    /// Address of the MP floating pointer (0: none).
    pub mp_addr: u64,
    pub mp_cpus: u64,
    /// Address of the MP configuration table (0: none) and its entry count.
    pub mp_cfg: u64,
    pub mp_entries: u64,
    /// Address of the RSDP (0: none).
    pub rsdp_addr: u64,
    /// Address of the MADT (0: none).
    pub madt_addr: u64,
    pub madt_cpus: u64,
}

pub static CPUS: Global<CpuTables> = Global::new(CpuTables {
    mp_addr: 0,
    mp_cpus: 0,
    mp_cfg: 0,
    mp_entries: 0,
    rsdp_addr: 0,
    madt_addr: 0,
    madt_cpus: 0,
});

/// Only the low 4 GiB is mapped when this runs.
const MAPPED: u64 = 1 << 32;

fn rd8(a: u64) -> u8 {
    // SAFETY: callers check a < MAPPED (identity-mapped, user-accessible).
    unsafe { core::ptr::read_volatile(a as *const u8) }
}
fn rd16(a: u64) -> u16 {
    u16::from(rd8(a)) | (u16::from(rd8(a + 1)) << 8)
}
fn rd32(a: u64) -> u32 {
    u32::from(rd16(a)) | (u32::from(rd16(a + 2)) << 16)
}
fn rd64(a: u64) -> u64 {
    u64::from(rd32(a)) | (u64::from(rd32(a + 4)) << 32)
}

fn sum(a: u64, len: u64) -> u8 {
    let mut s = 0u8;
    for i in 0..len {
        s = s.wrapping_add(rd8(a + i));
    }
    s
}

fn sig(a: u64, s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &c)| rd8(a + i as u64) == c)
}

/// Scans [from, to) on 16-byte boundaries for `s` with a valid checksum
/// over `len` bytes.
fn scan(from: u64, to: u64, s: &[u8], len: u64) -> u64 {
    let mut a = from & !15;
    while a + len <= to {
        if sig(a, s) && sum(a, len) == 0 {
            return a;
        }
        a += 16;
    }
    0
}

/// The BIOS areas where both tables may live: the first KiB of the EBDA,
/// the last KiB of base memory and the BIOS ROM area.
fn find(s: &[u8], len: u64, rom_from: u64) -> u64 {
    let ebda = u64::from(rd16(0x40E)) << 4;
    if (0x80000..0xA0000).contains(&ebda) {
        let a = scan(ebda, ebda + 1024, s, len);
        if a != 0 {
            return a;
        }
    }
    let a = scan(0x9FC00, 0xA0000, s, len);
    if a != 0 {
        return a;
    }
    scan(rom_from, 0x100000, s, len)
}

fn mp_count(t: &mut CpuTables) {
    let fp = find(b"_MP_", 16, 0xF0000);
    if fp == 0 {
        return;
    }
    t.mp_addr = fp;
    let cfg = u64::from(rd32(fp + 4));
    if rd8(fp + 11) != 0 {
        // A default configuration (no table) is always two processors.
        t.mp_cpus = 2;
        return;
    }
    if cfg == 0 || cfg >= MAPPED || !sig(cfg, b"PCMP") {
        return;
    }
    let len = u64::from(rd16(cfg + 4));
    let count = rd16(cfg + 34);
    t.mp_cfg = cfg;
    t.mp_entries = u64::from(count);
    // Walk by the table length, as Linux does: some generators (qboot)
    // leave the entry count at 0.
    let mut e = cfg + 44;
    let end = cfg + len;
    while e < end {
        match rd8(e) {
            0 => {
                if rd8(e + 3) & 1 != 0 {
                    t.mp_cpus += 1;
                }
                e += 20;
            }
            1..=4 => e += 8,
            _ => break,
        }
    }
}

fn madt_count(t: &mut CpuTables, hint: u64) {
    let rsdp = if hint != 0 && hint < MAPPED && sig(hint, b"RSD PTR ") {
        hint
    } else {
        find(b"RSD PTR ", 20, 0xE0000)
    };
    if rsdp == 0 {
        return;
    }
    t.rsdp_addr = rsdp;
    let xsdt = if rd8(rsdp + 15) >= 2 {
        rd64(rsdp + 24)
    } else {
        0
    };
    let (root, step) = if xsdt != 0 && xsdt < MAPPED {
        (xsdt, 8)
    } else {
        (u64::from(rd32(rsdp + 16)), 4)
    };
    if root == 0 || root >= MAPPED {
        return;
    }
    let len = u64::from(rd32(root + 4));
    let mut p = root + 36;
    while p + step <= root + len {
        let tbl = if step == 8 {
            rd64(p)
        } else {
            u64::from(rd32(p))
        };
        p += step;
        if tbl == 0 || tbl >= MAPPED || !sig(tbl, b"APIC") {
            continue;
        }
        t.madt_addr = tbl;
        let tlen = u64::from(rd32(tbl + 4));
        let mut e = tbl + 44;
        while e + 2 <= tbl + tlen {
            let (kind, elen) = (rd8(e), u64::from(rd8(e + 1)));
            if elen < 2 {
                break;
            }
            let flags = match kind {
                0 => rd32(e + 4),
                9 => rd32(e + 8),
                _ => 0,
            };
            // Enabled, or online-capable (ACPI 6.3): both are CPUs.
            if (kind == 0 || kind == 9) && flags & 3 != 0 {
                t.madt_cpus += 1;
            }
            e += elen;
        }
        return;
    }
}

/// Fills `CPUS`. Ring 3 (part of `main::boot_job`).
pub fn count() {
    // SAFETY: CPL0 is suspended; sole user of these statics.
    unsafe {
        let t = &mut *CPUS.ptr();
        mp_count(t);
        madt_count(t, (*INFO.ptr()).rsdp);
    }
}
