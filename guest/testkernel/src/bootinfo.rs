//! What the loader told us: PVH `hvm_start_info` or a Linux `boot_params`
//! zero page. Copied into statics right away (in ring 3, by `main::boot_job`),
//! so memtest may overwrite the originals later.

use crate::boot::{__kernel_end, __kernel_start, ENTRY_PVH};
use crate::ranges::E820;
use crate::{Global, jobs};

pub const E820_MAX: usize = 128;
pub const CMDLINE_MAX: usize = 4096;
const PVH_MAGIC: u32 = 0x336e_c578;

pub struct BootInfo {
    pub entry: u32,
    pub cmdline: [u8; CMDLINE_MAX],
    pub cmdline_len: usize,
    pub e820: [E820; E820_MAX],
    pub e820_len: usize,
    /// Initrd physical range (`initrd_size == 0`: none).
    pub initrd_start: u64,
    pub initrd_size: u64,
    /// ACPI RSDP from the loader (0: unknown, scan for it).
    pub rsdp: u64,
}

pub static INFO: Global<BootInfo> = Global::new(BootInfo {
    entry: 0,
    cmdline: [0; CMDLINE_MAX],
    cmdline_len: 0,
    e820: [E820 {
        start: 0,
        end: 0,
        kind: 0,
    }; E820_MAX],
    e820_len: 0,
    initrd_start: 0,
    initrd_size: 0,
    rsdp: 0,
});

/// Physical memory the kernel image (code, data, stacks, page tables) uses.
pub fn kernel_range() -> (u64, u64) {
    // Linker-script symbols: only their addresses are taken.
    (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    )
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: addr points into loader-provided boot structures below 4 GiB,
    // which the boot page tables map.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

fn rd64(addr: u64) -> u64 {
    // SAFETY: as rd32.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

fn rd8(addr: u64) -> u8 {
    // SAFETY: as rd32.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Copies `n` (at most E820_MAX) memory-map entries of `stride` bytes at
/// `map`, each starting with address, size (u64) and type (u32).
fn read_e820(info: &mut BootInfo, map: u64, stride: u64, n: usize) {
    let n = n.min(E820_MAX);
    for (i, slot) in info.e820[..n].iter_mut().enumerate() {
        let e = map + stride * i as u64;
        let start = rd64(e);
        *slot = E820 {
            start,
            end: start.wrapping_add(rd64(e + 8)),
            kind: rd32(e + 16),
        };
    }
    info.e820_len = n;
}

/// Reads the boot structures at `ptr` (ring 3: the loader's structures are
/// below 4 GiB, mapped user-accessible). Err: a short reason for the verdict.
pub fn load(entry: u32, ptr: u64) -> Result<(), &'static str> {
    let info = INFO.ptr();
    let (cmdline, cmdline_max);
    // SAFETY: single CPU; CPL0 is suspended and nothing else uses INFO.
    unsafe {
        (*info).entry = entry;
        if entry == ENTRY_PVH {
            if rd32(ptr) != PVH_MAGIC {
                return Err("bad_start_info_magic");
            }
            let version = rd32(ptr + 4);
            let nr_modules = rd32(ptr + 12);
            let modlist = rd64(ptr + 16);
            cmdline = rd64(ptr + 24);
            cmdline_max = CMDLINE_MAX as u64;
            (*info).rsdp = rd64(ptr + 32);
            if version < 1 {
                return Err("start_info_without_memmap");
            }
            // hvm_memmap_table_entry: addr, size, type (u32), reserved.
            read_e820(&mut *info, rd64(ptr + 40), 24, rd32(ptr + 48) as usize);
            if nr_modules > 0 && modlist != 0 {
                (*info).initrd_start = rd64(modlist);
                (*info).initrd_size = rd64(modlist + 8);
            }
        } else {
            // boot_e820_entry: addr, size, type (u32), packed.
            read_e820(&mut *info, ptr + 0x2D0, 20, usize::from(rd8(ptr + 0x1E8)));
            cmdline = u64::from(rd32(ptr + 0x228)) | (u64::from(rd32(ptr + 0xC8)) << 32);
            let size = u64::from(rd32(ptr + 0x238));
            cmdline_max = if size == 0 {
                CMDLINE_MAX as u64
            } else {
                (size + 1).min(CMDLINE_MAX as u64)
            };
            let rd = u64::from(rd32(ptr + 0x218)) | (u64::from(rd32(ptr + 0xC0)) << 32);
            let rs = u64::from(rd32(ptr + 0x21C)) | (u64::from(rd32(ptr + 0xC4)) << 32);
            if rd != 0 && rs != 0 {
                (*info).initrd_start = rd;
                (*info).initrd_size = rs;
            }
            (*info).rsdp = rd64(ptr + 0x70);
            if (*info).e820_len == 0 {
                return Err("boot_params_without_e820");
            }
        }
        if cmdline != 0 {
            let dst = &raw mut (*info).cmdline as u64;
            (*info).cmdline_len =
                jobs::copy_cstr(dst, cmdline, cmdline_max.min(CMDLINE_MAX as u64 - 1)) as usize;
        }
    }
    Ok(())
}
