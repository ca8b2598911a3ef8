//! PVH boot: `hvm_start_info` with the memory map, command line and the
//! initrd as module 0 (xen/include/public/arch-x86/hvm/start_info.h).

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Error;
use crate::layout::{ACPI_TABLES, CMDLINE, MemMapEntry, PVH_MEMMAP, PVH_MODLIST, PVH_START_INFO};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn err(addr: u64) -> impl Fn(vm_memory::GuestMemoryError) -> Error {
    move |e| Error::Write {
        addr,
        reason: e.to_string(),
    }
}

pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    map: &[MemMapEntry],
    _cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<(), Error> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: map.len() as u32,
        rsdp_paddr: ACPI_TABLES,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST))
            .map_err(err(PVH_MODLIST))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
    }
    for (i, e) in map.iter().enumerate() {
        let at = PVH_MEMMAP + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(at)).map_err(err(at))?;
    }
    mem.write_obj(info, GuestAddress(PVH_START_INFO))
        .map_err(err(PVH_START_INFO))
}
