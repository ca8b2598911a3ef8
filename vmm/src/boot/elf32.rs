//! 32-bit ELF (ELFCLASS32, i386) kernels: the loadable segments, the entry
//! point and the PVH entry note. linux-loader reads only 64-bit ELF, so the
//! headers are parsed here, bounded by the file's real length.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::image::{Head, Segment};

const ELFCLASS32: u8 = 1;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EHDR_LEN: usize = 52;
const PHDR_LEN: usize = 32;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
/// Xen's note name and the PVH entry type (xen/include/public/elfnote.h).
const XEN_NOTE_NAME: &[u8] = b"Xen\0";
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Note segments larger than this are not searched (real ones are bytes).
const MAX_NOTES_LEN: u64 = 64 << 10;

/// What a 32-bit ELF kernel asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf32 {
    pub segments: Vec<Segment>,
    /// `e_entry`, turned into a physical address when it points into an
    /// executable segment linked at a different virtual address (as QEMU
    /// and GRUB do for higher-half kernels).
    pub entry: u64,
    /// The `XEN_ELFNOTE_PHYS32_ENTRY` address, if the image has the note.
    pub pvh_entry: Option<u64>,
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Reads `len` bytes at `offset` after checking they are in the file.
fn read_range(f: &mut File, file_len: u64, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(format!(
                "{len} bytes at {offset:#x} run past the end of the {file_len}-byte file"
            ));
        }
    }
    let n = usize::try_from(len).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; n];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| format!("reading {len} bytes at {offset:#x}: {e}"))?;
    Ok(buf)
}

/// The PVH entry from a note area, if present.
fn find_pvh_note(notes: &[u8]) -> Option<u64> {
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = u32_le(notes, at) as usize;
        let descsz = u32_le(notes, at + 4) as usize;
        let kind = u32_le(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let next = desc_at.checked_add(descsz.checked_next_multiple_of(4)?)?;
        if desc_at.checked_add(descsz)? > notes.len() {
            return None;
        }
        if kind == XEN_ELFNOTE_PHYS32_ENTRY
            && notes.get(name_at..name_at + namesz)? == XEN_NOTE_NAME
        {
            let d = &notes[desc_at..desc_at + descsz];
            return match descsz {
                4 => Some(u64::from(u32_le(d, 0))),
                8 => Some(u64::from_le_bytes(d.try_into().ok()?)),
                _ => None,
            };
        }
        at = next;
    }
    None
}

/// Parses the headers of a 32-bit ELF kernel (`head` read from `f`).
pub fn parse(head: &Head, f: &mut File) -> Result<Elf32, String> {
    let h = &head.bytes;
    if h.len() < EHDR_LEN {
        return Err("32-bit ELF header is truncated".into());
    }
    if h[4] != ELFCLASS32 || h[5] != ELFDATA2LSB || h[6] != EV_CURRENT {
        return Err("not a little-endian version-1 32-bit ELF".into());
    }
    let (e_type, machine) = (u16_le(h, 16), u16_le(h, 18));
    if e_type != ET_EXEC {
        return Err(format!(
            "32-bit ELF of type {e_type} is not an executable (ET_EXEC)"
        ));
    }
    if machine != EM_386 {
        return Err(format!(
            "32-bit ELF for machine {machine} is not an i386 (EM_386) kernel"
        ));
    }
    let entry = u64::from(u32_le(h, 24));
    let phoff = u64::from(u32_le(h, 28));
    let phentsize = usize::from(u16_le(h, 42));
    let phnum = u64::from(u16_le(h, 44));
    if phentsize != PHDR_LEN {
        return Err(format!(
            "program header size {phentsize} is not {PHDR_LEN} (32-bit ELF)"
        ));
    }
    if phnum == 0 {
        return Err("32-bit ELF has no program headers".into());
    }
    let table = read_range(f, head.file_len, phoff, phnum * PHDR_LEN as u64)
        .map_err(|e| format!("program headers: {e}"))?;
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    let mut phys_entry = entry;
    for ph in table.chunks_exact(PHDR_LEN) {
        let (kind, offset, vaddr, paddr) = (
            u32_le(ph, 0),
            u64::from(u32_le(ph, 4)),
            u64::from(u32_le(ph, 8)),
            u64::from(u32_le(ph, 12)),
        );
        let (file_size, mem_size, flags) = (
            u64::from(u32_le(ph, 16)),
            u64::from(u32_le(ph, 20)),
            u32_le(ph, 24),
        );
        match kind {
            PT_LOAD if mem_size > 0 => {
                if flags & PF_X != 0
                    && vaddr != paddr
                    && entry >= vaddr
                    && entry < vaddr.saturating_add(file_size)
                {
                    phys_entry = entry - vaddr + paddr;
                }
                segments.push(Segment {
                    offset,
                    file_size,
                    paddr,
                    mem_size,
                });
            }
            PT_NOTE if pvh_entry.is_none() && file_size <= MAX_NOTES_LEN => {
                let notes = read_range(f, head.file_len, offset, file_size)
                    .map_err(|e| format!("note segment: {e}"))?;
                pvh_entry = find_pvh_note(&notes);
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err("32-bit ELF has no loadable (PT_LOAD) segment".into());
    }
    Ok(Elf32 {
        segments,
        entry: phys_entry,
        pvh_entry,
    })
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Checks a 64-bit ELF's program headers against the file's real length and
/// guest RAM before linux-loader reads it: linux-loader walks a note segment
/// note by note whatever its size (1 GiB of zeros in a sparse file is ~90
/// million reads), and trusts the sizes the headers claim.
pub fn check_elf64(head: &Head, f: &mut File, ram_end: u64) -> Result<(), String> {
    const EHDR64_LEN: usize = 64;
    const PHDR64_LEN: usize = 56;
    let h = head
        .bytes
        .get(..EHDR64_LEN)
        .ok_or("64-bit ELF header is truncated")?;
    let phoff = u64_le(h, 0x20);
    let phentsize = usize::from(u16_le(h, 0x36));
    let phnum = u64::from(u16_le(h, 0x38));
    if phentsize != PHDR64_LEN {
        return Err(format!(
            "program header size {phentsize} is not {PHDR64_LEN} (64-bit ELF)"
        ));
    }
    let table = read_range(f, head.file_len, phoff, phnum * PHDR64_LEN as u64)
        .map_err(|e| format!("program headers: {e}"))?;
    for ph in table.chunks_exact(PHDR64_LEN) {
        let (kind, offset, file_size, mem_size) =
            (u32_le(ph, 0), u64_le(ph, 8), u64_le(ph, 32), u64_le(ph, 40));
        let in_file = offset
            .checked_add(file_size)
            .is_some_and(|end| end <= head.file_len);
        match kind {
            PT_NOTE if file_size > MAX_NOTES_LEN => {
                return Err(format!(
                    "note segment of {file_size} bytes at {offset:#x} is larger than \
                     {MAX_NOTES_LEN} bytes (real notes are a few bytes)"
                ));
            }
            PT_NOTE | PT_LOAD if !in_file => {
                return Err(format!(
                    "segment of {file_size} bytes at {offset:#x} runs past the end of the \
                     {}-byte file",
                    head.file_len
                ));
            }
            PT_LOAD if mem_size > ram_end => {
                return Err(format!(
                    "segment of {mem_size:#x} bytes is larger than guest RAM ({ram_end:#x} bytes \
                     below the MMIO hole)"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Test images: a 32-bit ELF with the given loadable segments (file bytes,
/// physical address, memory size) and an optional PVH note.
#[cfg(test)]
pub(crate) fn build_test_image(
    segments: &[(&[u8], u32, u32)],
    entry: u32,
    pvh: Option<u32>,
) -> Vec<u8> {
    let phnum = segments.len() + usize::from(pvh.is_some());
    let mut data_off = EHDR_LEN + phnum * PHDR_LEN;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x01\x01\x01\0");
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&ET_EXEC.to_le_bytes());
    f.extend_from_slice(&EM_386.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR_LEN as u32).to_le_bytes());
    f.extend_from_slice(&[0; 8]); // shoff, flags
    f.extend_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]);
    let mut data = Vec::new();
    let ph = |f: &mut Vec<u8>, kind: u32, off: usize, addr: u32, fsz: usize, msz: u32| {
        for v in [kind, off as u32, addr, addr, fsz as u32, msz, 7, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    for (bytes, addr, msz) in segments {
        ph(&mut f, PT_LOAD, data_off, *addr, bytes.len(), *msz);
        data.extend_from_slice(bytes);
        data_off += bytes.len();
    }
    if let Some(e) = pvh {
        ph(&mut f, PT_NOTE, data_off, 0, 20, 0);
        for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(XEN_NOTE_NAME);
        data.extend_from_slice(&e.to_le_bytes());
    }
    f.extend(data);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_bytes(img: &[u8]) -> Result<Elf32, String> {
        let p =
            std::env::temp_dir().join(format!("shmvm-elf32-{}-{}", std::process::id(), img.len()));
        std::fs::write(&p, img).unwrap();
        let mut f = File::open(&p).unwrap();
        let head = Head::read(&mut f).unwrap();
        let r = parse(&head, &mut f);
        let _ = std::fs::remove_file(&p);
        r
    }

    #[test]
    fn segments_entry_and_pvh_note() {
        let img = build_test_image(
            &[(&[0x90; 16], 0x10_0000, 16), (&[1, 2], 0x20_0000, 0x1000)],
            0x10_0000,
            Some(0x10_0004),
        );
        let e = parse_bytes(&img).unwrap();
        assert_eq!(e.entry, 0x10_0000);
        assert_eq!(e.pvh_entry, Some(0x10_0004));
        assert_eq!(e.segments.len(), 2);
        assert_eq!(
            e.segments[1],
            Segment {
                offset: (EHDR_LEN + 3 * PHDR_LEN + 16) as u64,
                file_size: 2,
                paddr: 0x20_0000,
                mem_size: 0x1000
            }
        );
        let no_note = build_test_image(&[(&[0x90; 16], 0x10_0000, 16)], 0x10_0000, None);
        assert_eq!(parse_bytes(&no_note).unwrap().pvh_entry, None);
    }

    #[test]
    fn bad_headers_are_refused_without_trusting_them() {
        let good = build_test_image(&[(&[0x90; 16], 0x10_0000, 16)], 0x10_0000, None);
        // A huge program header count: refused from the file length.
        let mut img = good.clone();
        img[44..46].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(parse_bytes(&img).unwrap_err().contains("past the end"));
        let mut img = good.clone();
        img[28..32].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(parse_bytes(&img).unwrap_err().contains("past the end"));
        let mut img = good.clone();
        img[42] = 56;
        assert!(parse_bytes(&img).unwrap_err().contains("header size"));
        let mut img = good.clone();
        img[18] = 62;
        assert!(parse_bytes(&img).unwrap_err().contains("EM_386"));
        assert!(parse_bytes(&good[..40]).unwrap_err().contains("truncated"));
        // A note whose sizes point past its segment is ignored, not followed.
        assert_eq!(find_pvh_note(&[0xff; 12]), None);
        let mut n = vec![4, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 18, 0, 0, 0];
        n.extend_from_slice(b"Xen\0");
        assert_eq!(find_pvh_note(&n), None);
    }

    #[test]
    fn higher_half_entry_becomes_physical() {
        let mut img = build_test_image(&[(&[0x90; 16], 0x10_0000, 16)], 0xc010_0000, None);
        // p_vaddr of the first (only) program header = 0xc0100000.
        img[EHDR_LEN + 8..EHDR_LEN + 12].copy_from_slice(&0xc010_0000u32.to_le_bytes());
        assert_eq!(parse_bytes(&img).unwrap().entry, 0x10_0000);
    }
}
