//! Multiboot (version 0.6.96) kernels, entered the way QEMU's `-kernel`
//! loader enters them: 32-bit protected mode, paging off, flat CS/DS,
//! EAX = 0x2BADB002, EBX = the Multiboot information structure with the
//! memory sizes, the memory map, the command line ("<kernel path> <args>",
//! as QEMU passes it), the boot loader name and the modules.
//!
//! Modules come from `-initrd` as QEMU takes them: a comma-separated list
//! (`,,` for a comma in a name), each entry a file name optionally followed
//! by a space and arguments; the module's string is the whole entry.
//! Modules are loaded after the kernel, each on a page boundary.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Error;
use super::image::{Head, Segment};
use crate::layout::{
    self, E820_RAM, HIMEM, MULTIBOOT_INFO, MULTIBOOT_MAX_MODS, MULTIBOOT_MMAP, MULTIBOOT_MODS,
    MULTIBOOT_STRINGS, MULTIBOOT_STRINGS_MAX, MemMapEntry,
};

/// Header magic, and the value the kernel finds in EAX.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// Header flags: modules page aligned, memory information, video mode
/// table, and the a.out-kludge address fields.
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0-15 are requirements: a loader that cannot meet one must refuse.
const REQUIRED_MASK: u32 = 0xffff;
/// Header length with the address fields.
const AOUT_HEADER_LEN: usize = 32;

/// Information structure flags (what shmvm fills in; the same set QEMU's
/// loader passes): mem_*, boot_device, cmdline, mods, mmap, loader name.
const INFO_MEMORY: u32 = 1 << 0;
const INFO_BOOT_DEVICE: u32 = 1 << 1;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// BIOS drive 0x80 (first hard disk), no partition: what QEMU passes.
const BOOT_DEVICE: u32 = 0x8000_ffff;
/// Size of the information structure up to the framebuffer fields.
const INFO_LEN: usize = 116;
/// One memory map entry: size (not counting itself), base, length, type.
const MMAP_ENTRY_LEN: usize = 24;
const MOD_ENTRY_LEN: usize = 16;
const LOADER_NAME: &str = "shmvm";

/// A Multiboot header found in the first 8 KiB of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
}

impl Header {
    /// The first 4-byte aligned magic whose checksum holds, as QEMU and
    /// GRUB search.
    pub fn find(head: &Head) -> Option<Header> {
        let n = head.bytes.len();
        (0..n.saturating_sub(11)).step_by(4).find_map(|i| {
            let magic = head.u32_at(i)?;
            let flags = head.u32_at(i + 4)?;
            let sum = head.u32_at(i + 8)?;
            (magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0)
                .then_some(Header { offset: i, flags })
        })
    }

    pub fn has_addresses(&self) -> bool {
        self.flags & FLAG_AOUT_KLUDGE != 0
    }

    /// Refuses requirement bits shmvm cannot meet; returns a warning for the
    /// video mode request, which QEMU also ignores ("multiboot knows VBE.
    /// we don't.") and boots anyway.
    pub fn check_flags(&self) -> Result<Option<String>, String> {
        let known = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;
        let unknown = self.flags & REQUIRED_MASK & !known;
        if unknown != 0 {
            return Err(format!(
                "multiboot header flags {:#x} require features shmvm does not know (bits {unknown:#x})",
                self.flags
            ));
        }
        Ok((self.flags & FLAG_VIDEO_MODE != 0).then(|| {
            "multiboot header asks for a video mode (flag 2): no video here, booting without \
             one as QEMU does"
                .to_string()
        }))
    }

    /// The one segment and the entry point the address fields describe.
    pub fn aout_segment(&self, head: &Head) -> Result<(Segment, u64), String> {
        let i = self.offset;
        let field = |k: usize| {
            head.u32_at(i + 12 + 4 * k)
                .map(u64::from)
                .ok_or_else(|| "multiboot header is cut off before its address fields".to_string())
        };
        debug_assert_eq!(AOUT_HEADER_LEN, 12 + 4 * 5);
        let (header_addr, load_addr, load_end, bss_end, entry) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let behind = header_addr
            .checked_sub(load_addr)
            .filter(|d| *d <= i as u64)
            .ok_or_else(|| {
                format!(
                    "multiboot header_addr {header_addr:#x} and load_addr {load_addr:#x} put the \
                     load start outside the file"
                )
            })?;
        let offset = i as u64 - behind;
        let file_size = if load_end == 0 {
            head.file_len - offset
        } else {
            load_end.checked_sub(load_addr).ok_or_else(|| {
                format!("multiboot load_end_addr {load_end:#x} is below load_addr {load_addr:#x}")
            })?
        };
        let mem_size = if bss_end == 0 {
            file_size
        } else {
            bss_end
                .checked_sub(load_addr)
                .filter(|m| *m >= file_size)
                .ok_or_else(|| {
                    format!(
                        "multiboot bss_end_addr {bss_end:#x} is below the loaded image's end {:#x}",
                        load_addr + file_size
                    )
                })?
        };
        if entry < load_addr || entry >= load_addr + mem_size {
            return Err(format!(
                "multiboot entry_addr {entry:#x} is outside the image at {load_addr:#x}..{:#x}",
                load_addr + mem_size
            ));
        }
        Ok((
            Segment {
                offset,
                file_size,
                paddr: load_addr,
                mem_size,
            },
            entry,
        ))
    }
}

/// One `-initrd` entry for a Multiboot kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The file to load (the entry up to its first space).
    pub path: std::path::PathBuf,
    /// The module's string: the whole entry, file name and arguments.
    pub string: Vec<u8>,
}

/// Splits QEMU's module list: `,` separates entries, `,,` is a comma.
pub fn parse_modules(list: &OsStr) -> Vec<ModuleSpec> {
    let b = list.as_bytes();
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b',' {
            if b.get(i + 1) == Some(&b',') {
                cur.push(b',');
                i += 2;
                continue;
            }
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(b[i]);
        }
        i += 1;
    }
    out.push(cur);
    out.into_iter()
        .map(|string| {
            let name_len = string
                .iter()
                .position(|c| *c == b' ')
                .unwrap_or(string.len());
            ModuleSpec {
                path: OsStr::from_bytes(&string[..name_len]).into(),
                string,
            }
        })
        .collect()
}

/// A module placed in guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub start: u64,
    pub end: u64,
    pub string: Vec<u8>,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes the information structure, memory map, module list and strings.
/// The kernel command line is already at [`layout::CMDLINE`].
pub fn write_info(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    map: &[MemMapEntry],
    modules: &[Placed],
) -> Result<(), Error> {
    let w = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| Error::Write {
                addr,
                reason: e.to_string(),
            })
    };
    if modules.len() > MULTIBOOT_MAX_MODS {
        return Err(Error::Modules(format!(
            "{} multiboot modules, at most {MULTIBOOT_MAX_MODS}",
            modules.len()
        )));
    }
    let mut strings = Vec::new();
    let mut string_at = |s: &[u8]| -> Result<u32, Error> {
        let at = MULTIBOOT_STRINGS + strings.len() as u64;
        strings.extend_from_slice(s);
        strings.push(0);
        if strings.len() as u64 > MULTIBOOT_STRINGS_MAX {
            return Err(Error::Modules(format!(
                "multiboot module strings take more than {MULTIBOOT_STRINGS_MAX} bytes"
            )));
        }
        Ok(at as u32)
    };
    let mut mods = vec![0u8; modules.len() * MOD_ENTRY_LEN];
    for (m, e) in modules.iter().zip(mods.chunks_exact_mut(MOD_ENTRY_LEN)) {
        put32(e, 0, m.start as u32);
        put32(e, 4, m.end as u32);
        put32(e, 8, string_at(&m.string)?);
    }
    let name = string_at(LOADER_NAME.as_bytes())?;
    // Multiboot's fields are 32-bit: RAM above 4 GiB is still in the
    // map, whose entries are 64-bit.
    let mut mmap = Vec::with_capacity(map.len() * MMAP_ENTRY_LEN);
    for e in map {
        mmap.extend_from_slice(&((MMAP_ENTRY_LEN - 4) as u32).to_le_bytes());
        mmap.extend_from_slice(&e.addr.to_le_bytes());
        mmap.extend_from_slice(&e.size.to_le_bytes());
        mmap.extend_from_slice(&e.kind.to_le_bytes());
    }
    let lower = map
        .iter()
        .find(|e| e.addr == 0 && e.kind == E820_RAM)
        .map_or(0, |e| e.size.min(HIMEM) >> 10);
    let upper = (layout::low_ram_end(ram_size).saturating_sub(HIMEM)) >> 10;
    let mut info = [0u8; INFO_LEN];
    put32(
        &mut info,
        0,
        INFO_MEMORY | INFO_BOOT_DEVICE | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME,
    );
    put32(&mut info, 4, lower as u32);
    put32(&mut info, 8, upper as u32);
    put32(&mut info, 12, BOOT_DEVICE);
    put32(&mut info, 16, layout::CMDLINE as u32);
    put32(&mut info, 20, modules.len() as u32);
    put32(&mut info, 24, MULTIBOOT_MODS as u32);
    put32(&mut info, 44, mmap.len() as u32);
    put32(&mut info, 48, MULTIBOOT_MMAP as u32);
    put32(&mut info, 64, name);
    w(MULTIBOOT_STRINGS, &strings)?;
    w(MULTIBOOT_MODS, &mods)?;
    w(MULTIBOOT_MMAP, &mmap)?;
    w(MULTIBOOT_INFO, &info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: Vec<u8>) -> Head {
        let file_len = bytes.len() as u64;
        Head { bytes, file_len }
    }

    fn header_at(at: usize, flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; at];
        b.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(
            &0u32
                .wrapping_sub(HEADER_MAGIC)
                .wrapping_sub(flags)
                .to_le_bytes(),
        );
        for f in fields {
            b.extend_from_slice(&f.to_le_bytes());
        }
        b
    }

    #[test]
    fn finds_aligned_header_with_good_checksum_only() {
        let h = head(header_at(64, 3, &[]));
        assert_eq!(h.bytes.len(), 76);
        assert_eq!(
            Header::find(&h),
            Some(Header {
                offset: 64,
                flags: 3
            })
        );
        let mut bad = header_at(64, 3, &[]);
        bad[72] ^= 1;
        assert_eq!(Header::find(&head(bad)), None);
        let mut unaligned = vec![0u8; 2];
        unaligned.extend(header_at(64, 3, &[]));
        assert_eq!(Header::find(&head(unaligned)), None);
        assert_eq!(Header::find(&head(vec![0; 11])), None);
    }

    #[test]
    fn address_fields_give_one_segment() {
        // Header at file offset 0x40, linked at 0x100040 with the image
        // starting at file offset 0 = 0x100000; 0x1000 bytes loaded, bss to
        // 0x102000.
        let mut b = header_at(
            0x40,
            FLAG_AOUT_KLUDGE | FLAG_PAGE_ALIGN,
            &[0x10_0040, 0x10_0000, 0x10_1000, 0x10_2000, 0x10_0080],
        );
        b.resize(0x1000, 0x90);
        let h = head(b);
        let mb = Header::find(&h).unwrap();
        assert!(mb.has_addresses());
        let (seg, entry) = mb.aout_segment(&h).unwrap();
        assert_eq!(
            seg,
            Segment {
                offset: 0,
                file_size: 0x1000,
                paddr: 0x10_0000,
                mem_size: 0x2000
            }
        );
        assert_eq!(entry, 0x10_0080);
        // load_end_addr 0: the rest of the file.
        let mut b = header_at(
            0x40,
            FLAG_AOUT_KLUDGE,
            &[0x10_0040, 0x10_0000, 0, 0, 0x10_0000],
        );
        b.resize(0x800, 0);
        let h = head(b);
        let (seg, _) = Header::find(&h).unwrap().aout_segment(&h).unwrap();
        assert_eq!((seg.file_size, seg.mem_size), (0x800, 0x800));
    }

    #[test]
    fn inconsistent_address_fields_are_refused() {
        let cases: [(&[u32], &str); 5] = [
            (&[0x10_0000, 0x10_0040, 0, 0, 0x10_0040], "outside the file"),
            (&[0x20_0000, 0x10_0000, 0, 0, 0x10_0000], "outside the file"),
            (
                &[0x10_0040, 0x10_0000, 0xf_0000, 0, 0x10_0000],
                "below load_addr",
            ),
            (
                &[0x10_0040, 0x10_0000, 0x10_1000, 0x10_0800, 0x10_0000],
                "bss_end_addr",
            ),
            (
                &[0x10_0040, 0x10_0000, 0x10_0100, 0, 0x30_0000],
                "entry_addr",
            ),
        ];
        for (fields, want) in cases {
            let mut b = header_at(0x40, FLAG_AOUT_KLUDGE, fields);
            b.resize(0x1000, 0);
            let h = head(b);
            let err = Header::find(&h).unwrap().aout_segment(&h).unwrap_err();
            assert!(err.contains(want), "{fields:x?}: {err}");
        }
        let h = head(header_at(0x40, FLAG_AOUT_KLUDGE, &[0x10_0040]));
        let err = Header::find(&h).unwrap().aout_segment(&h).unwrap_err();
        assert!(err.contains("cut off"), "{err}");
    }

    #[test]
    fn flags_the_loader_cannot_meet() {
        let h = |flags| Header { offset: 0, flags };
        assert_eq!(h(3 | FLAG_AOUT_KLUDGE).check_flags(), Ok(None));
        assert!(h(FLAG_VIDEO_MODE).check_flags().unwrap().is_some());
        assert!(h(1 << 3).check_flags().unwrap_err().contains("0x8"));
        assert_eq!(
            h(1 << 20).check_flags(),
            Ok(None),
            "optional bits are ignored"
        );
    }

    #[test]
    fn module_lists_as_qemu_splits_them() {
        let m = parse_modules(OsStr::new("a.bin x=1 y,b,,c.bin,c"));
        assert_eq!(
            m,
            vec![
                ModuleSpec {
                    path: "a.bin".into(),
                    string: b"a.bin x=1 y".to_vec()
                },
                ModuleSpec {
                    path: "b,c.bin".into(),
                    string: b"b,c.bin".to_vec()
                },
                ModuleSpec {
                    path: "c".into(),
                    string: b"c".to_vec()
                },
            ]
        );
    }

    #[test]
    fn info_structure_fields() {
        let ram = 64u64 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let map = layout::memory_map(ram);
        let mods = [Placed {
            start: 0x20_0000,
            end: 0x20_0010,
            string: b"mod arg".to_vec(),
        }];
        write_info(&mem, ram, &map, &mods).unwrap();
        let rd = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).unwrap();
        assert_eq!(rd(MULTIBOOT_INFO), 0x24f);
        assert_eq!(rd(MULTIBOOT_INFO + 4), 639);
        assert_eq!(rd(MULTIBOOT_INFO + 8), (63 << 10));
        assert_eq!(rd(MULTIBOOT_INFO + 20), 1);
        assert_eq!(rd(MULTIBOOT_INFO + 44), 3 * 24);
        assert_eq!(rd(MULTIBOOT_MMAP), 20);
        assert_eq!(rd(MULTIBOOT_MMAP + 24 + 20), layout::E820_RESERVED);
        assert_eq!(rd(MULTIBOOT_MODS), 0x20_0000);
        assert_eq!(rd(MULTIBOOT_MODS + 4), 0x20_0010);
        let mut s = [0u8; 8];
        mem.read_slice(&mut s, GuestAddress(u64::from(rd(MULTIBOOT_MODS + 8))))
            .unwrap();
        assert_eq!(&s, b"mod arg\0");
        let mut s = [0u8; 6];
        mem.read_slice(&mut s, GuestAddress(u64::from(rd(MULTIBOOT_INFO + 64))))
            .unwrap();
        assert_eq!(&s, b"shmvm\0");
        let too_many = vec![mods[0].clone(); MULTIBOOT_MAX_MODS + 1];
        assert!(matches!(
            write_info(&mem, ram, &map, &too_many),
            Err(Error::Modules(_))
        ));
    }
}
