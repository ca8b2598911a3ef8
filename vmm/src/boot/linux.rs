//! Linux x86 boot protocol (Documentation/arch/x86/boot.rst): the zero page
//! (`boot_params`) for the 64-bit entry of a bzImage or an ELF vmlinux.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Entry, Error};
use crate::layout::{ACPI_TABLES, CMDLINE, MemMapEntry, ZERO_PAGE};

const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader ID.
const LOADER_UNDEFINED: u8 = 0xff;
/// xloadflags bit 0: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
const DEFAULT_KERNEL_ALIGN: u32 = 0x100_0000;

/// How a bzImage is entered: the 64-bit entry (0x200 past the loaded
/// protected-mode code) when it has one (protocol 2.12+, XLF_KERNEL_64),
/// else the 32-bit boot protocol at the code's start (2.02+), as QEMU boots
/// i386 kernels. `want64`: `--boot linux64` asked for the 64-bit entry.
pub(super) fn bzimage_entry(h: &setup_header, load: u64, want64: bool) -> Result<Entry, String> {
    let version = || format!("{}.{:02}", h.version >> 8, h.version & 0xff);
    if h.version >= 0x020c && h.xloadflags & XLF_KERNEL_64 != 0 {
        return Ok(Entry::Linux64 { rip: load + 0x200 });
    }
    if want64 {
        return Err(if h.version < 0x020c {
            format!(
                "boot protocol {} is too old for the 64-bit entry (needs 2.12+)",
                version()
            )
        } else {
            "bzImage has no 64-bit entry point (xloadflags XLF_KERNEL_64 clear)".into()
        });
    }
    if h.version < 0x0202 {
        return Err(format!(
            "boot protocol {} is too old (needs 2.02+ for the 32-bit entry)",
            version()
        ));
    }
    Ok(Entry::Linux32 { rip: load })
}

/// Longest command line (without the NUL) the kernel accepts.
pub(super) fn cmdline_max(h: &setup_header) -> u64 {
    if h.version >= 0x0206 {
        u64::from(h.cmdline_size)
    } else {
        255
    }
}

/// Highest address the initrd may occupy.
pub(super) fn initrd_addr_max(h: &setup_header) -> u64 {
    if h.version >= 0x0203 {
        u64::from(h.initrd_addr_max)
    } else {
        0x37ff_ffff
    }
}

pub(super) fn write_zero_page(
    mem: &GuestMemoryMmap,
    hdr: Option<setup_header>,
    map: &[MemMapEntry],
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), Error> {
    let mut p = boot_params::default();
    match hdr {
        Some(h) => p.hdr = h,
        None => {
            p.hdr.boot_flag = BOOT_FLAG;
            p.hdr.header = HDRS_MAGIC;
            p.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGN;
        }
    }
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    // Boot protocol 2.14+: where the RSDP is (older kernels scan for it).
    p.acpi_rsdp_addr = ACPI_TABLES;
    p.hdr.cmd_line_ptr = CMDLINE as u32;
    p.ext_cmd_line_ptr = (CMDLINE >> 32) as u32;
    p.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    let n = map.len().min(p.e820_table.len());
    for (slot, e) in p.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_entries = n as u8;
    mem.write_obj(p, GuestAddress(ZERO_PAGE))
        .map_err(|e| Error::Write {
            addr: ZERO_PAGE,
            reason: e.to_string(),
        })
}
