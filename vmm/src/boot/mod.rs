//! Loading a kernel, initrd and command line into guest RAM and writing the
//! boot structures (PVH start info or Linux zero page, MP table, GDT, page
//! tables) for the chosen entry protocol.

pub mod cpu;
mod linux;
pub mod mptable;
mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::cli::BootProtocol;
use crate::layout::{self, BOOT_GDT, BOOT_IDT, CMDLINE, HIMEM, MPTABLE, PML4};
pub use cpu::Entry;

/// Errors loading the kernel or initrd, each naming the file and option.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--kernel {path}: {reason}")]
    Kernel { path: String, reason: String },
    #[error("--initrd {path}: {reason}")]
    Initrd { path: String, reason: String },
    #[error("--boot pvh: {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote(String),
    #[error("--cmdline: {len} bytes exceed the kernel's limit of {max}")]
    CmdlineTooLong { len: usize, max: u64 },
    #[error("writing boot data at {addr:#x}: {reason}")]
    Write { addr: u64, reason: String },
}

/// The kernel and initrd, opened before anything else is created so a bad
/// path fails early and leaves nothing behind.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel: File,
    pub initrd: Option<File>,
}

impl BootFiles {
    pub fn open(kernel: &Path, initrd: Option<&Path>) -> Result<BootFiles, Error> {
        let kernel = File::open(kernel).map_err(|e| Error::Kernel {
            path: kernel.display().to_string(),
            reason: e.to_string(),
        })?;
        let initrd = initrd
            .map(|p| {
                File::open(p).map_err(|e| Error::Initrd {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(BootFiles { kernel, initrd })
    }
}

/// Inputs to [`load`].
#[derive(Debug)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub protocol: Option<BootProtocol>,
    pub vcpus: u8,
}

/// Kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

fn detect(f: &mut File) -> std::io::Result<Option<Format>> {
    let mut head = [0u8; 0x206];
    f.seek(SeekFrom::Start(0))?;
    let n = read_up_to(f, &mut head)?;
    f.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(Format::Elf));
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Some(Format::BzImage));
    }
    Ok(None)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), Error> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| Error::Write {
            addr,
            reason: e.to_string(),
        })
}

/// Where the loaded pieces ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entry: Entry,
    pub initrd: Option<(u64, u64)>,
}

/// Highest page-aligned address for `size` bytes ending at or below `top`
/// and starting at or above `floor`.
pub fn place_initrd(size: u64, floor: u64, top: u64) -> Option<u64> {
    let start = top.checked_sub(size)? & !0xfff;
    (start >= floor).then_some(start)
}

/// Loads everything into `mem` (sized `ram_size`) and returns vCPU 0's entry.
pub fn load(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    spec: &BootSpec<'_>,
    files: &mut BootFiles,
) -> Result<Loaded, Error> {
    let kpath = spec.kernel.display().to_string();
    let kerr = |reason: String| Error::Kernel {
        path: kpath.clone(),
        reason,
    };
    let kf = &mut files.kernel;
    let format = detect(kf)
        .map_err(|e| kerr(e.to_string()))?
        .ok_or_else(|| kerr("not an ELF or bzImage kernel".into()))?;

    let (entry, kernel_end, hdr) = match format {
        Format::Elf => {
            let r = Elf::load(mem, None, kf, Some(GuestAddress(HIMEM)))
                .map_err(|e| kerr(format!("ELF load failed: {e}")))?;
            let entry = match (r.pvh_boot_cap, spec.protocol) {
                (PvhBootCapability::PvhEntryPresent(a), None | Some(BootProtocol::Pvh)) => {
                    Entry::Pvh { rip: a.0 }
                }
                (_, Some(BootProtocol::Pvh)) => return Err(Error::NoPvhNote(kpath)),
                _ => Entry::Linux64 {
                    rip: r.kernel_load.0,
                },
            };
            (entry, r.kernel_end, None)
        }
        Format::BzImage => {
            if spec.protocol == Some(BootProtocol::Pvh) {
                return Err(Error::NoPvhNote(kpath));
            }
            let r = BzImage::load(mem, None, kf, Some(GuestAddress(HIMEM)))
                .map_err(|e| kerr(format!("bzImage load failed: {e}")))?;
            let hdr = r
                .setup_header
                .ok_or_else(|| kerr("bzImage without a setup header".into()))?;
            linux::check_bzimage(&hdr).map_err(kerr)?;
            // The 64-bit entry point is 0x200 past the protected-mode code,
            // and the kernel decompresses in place within init_size.
            let entry = Entry::Linux64 {
                rip: r.kernel_load.0 + 0x200,
            };
            let end =
                r.kernel_load.0 + u64::from(hdr.init_size).max(r.kernel_end - r.kernel_load.0);
            (entry, end, Some(hdr))
        }
    };
    if kernel_end > layout::low_ram_end(ram_size) {
        return Err(kerr(format!(
            "ends at {kernel_end:#x}, beyond RAM below the MMIO hole"
        )));
    }

    // Command line, NUL terminated.
    let max = hdr
        .as_ref()
        .map_or(layout::CMDLINE_MAX - 1, linux::cmdline_max);
    if spec.cmdline.len() as u64 > max {
        return Err(Error::CmdlineTooLong {
            len: spec.cmdline.len(),
            max,
        });
    }
    let mut cl = Vec::with_capacity(spec.cmdline.len() + 1);
    cl.extend_from_slice(spec.cmdline.as_bytes());
    cl.push(0);
    write(mem, CMDLINE, &cl)?;

    let initrd = match (spec.initrd, files.initrd.as_mut()) {
        (Some(p), Some(f)) => Some(load_initrd(mem, ram_size, p, f, kernel_end, hdr.as_ref())?),
        _ => None,
    };

    // Shared pieces: MP table, GDT, empty IDT.
    write(mem, MPTABLE, &mptable::build(MPTABLE, spec.vcpus))?;
    let gdt: Vec<u8> = cpu::gdt(entry)
        .iter()
        .flat_map(|e| e.to_le_bytes())
        .collect();
    write(mem, BOOT_GDT, &gdt)?;
    write(mem, BOOT_IDT, &0u64.to_le_bytes())?;

    let map = layout::memory_map(ram_size);
    match entry {
        Entry::Pvh { .. } => pvh::write_start_info(mem, &map, spec.cmdline.len(), initrd)?,
        Entry::Linux64 { .. } => {
            write(mem, PML4, &cpu::page_tables())?;
            linux::write_zero_page(mem, hdr, &map, spec.cmdline.len(), initrd)?;
        }
    }
    Ok(Loaded { entry, initrd })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    path: &Path,
    f: &mut File,
    kernel_end: u64,
    hdr: Option<&setup_header>,
) -> Result<(u64, u64), Error> {
    let ipath = path.display().to_string();
    let ierr = |reason: String| Error::Initrd {
        path: ipath.clone(),
        reason,
    };
    let size = f.metadata().map_err(|e| ierr(e.to_string()))?.len();
    let mut top = layout::low_ram_end(ram_size);
    if let Some(h) = hdr {
        top = top.min(linux::initrd_addr_max(h) + 1);
    }
    let floor = kernel_end.next_multiple_of(4096);
    let addr = place_initrd(size, floor, top).ok_or_else(|| {
        ierr(format!(
            "{size} bytes do not fit between the kernel end {floor:#x} and {top:#x}"
        ))
    })?;
    if size > 0 {
        mem.read_exact_volatile_from(GuestAddress(addr), f, size as usize)
            .map_err(|e| ierr(format!("reading into guest RAM: {e}")))?;
    }
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        assert_eq!(
            place_initrd(0x1800, 0x20_0000, 0x400_0000),
            Some(0x3ff_e000)
        );
        assert_eq!(
            place_initrd(0x1000, 0x20_0000, 0x400_0000),
            Some(0x3ff_f000)
        );
        assert_eq!(place_initrd(0x400_0000, 0x20_0000, 0x400_0000), None);
        assert_eq!(place_initrd(0, 0x20_0000, 0x400_0000), Some(0x400_0000));
    }
}
