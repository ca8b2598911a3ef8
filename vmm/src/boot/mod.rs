//! Loading a kernel, initrd and command line into guest RAM and writing the
//! boot structures (PVH start info or Linux zero page, MP table, GDT, page
//! tables) for the chosen entry protocol.

pub mod acpi;
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
use crate::layout::{self, ACPI_TABLES, BOOT_GDT, BOOT_IDT, CMDLINE, HIMEM, MPTABLE, PML4};
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

impl Error {
    /// 2 for a bad image or option, 1 when writing into guest RAM failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Write { .. } => 1,
            _ => 2,
        }
    }
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

    // Shared pieces: MP table and ACPI tables (CPUs, PCI root, power-off),
    // GDT, empty IDT.
    write(mem, MPTABLE, &mptable::build(MPTABLE, spec.vcpus))?;
    let mmio64 = layout::pci_mmio64_start(ram_size);
    let tables = acpi::build(
        ACPI_TABLES,
        spec.vcpus,
        (mmio64, mmio64 + layout::PCI_MMIO64_SIZE),
    );
    write(mem, ACPI_TABLES, &tables)?;
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
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;

    /// A synthetic bzImage: 4 setup sectors after the boot sector, a
    /// protocol 2.15 header with the 64-bit entry flag, then `payload`.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 5 * 512];
        let put16 =
            |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
        f[0x1f1] = 4; // setup_sects
        put16(&mut f, 0x1fe, 0xaa55);
        f[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut f, 0x206, 0x020f);
        f[0x211] = 0x01; // loadflags: LOADED_HIGH
        put32(&mut f, 0x214, 0x10_0000); // code32_start
        put32(&mut f, 0x22c, 0x7fff_ffff); // initrd_addr_max
        put32(&mut f, 0x230, 0x20_0000); // kernel_alignment
        put16(&mut f, 0x236, 0x1); // xloadflags: XLF_KERNEL_64
        put32(&mut f, 0x238, 2047); // cmdline_size
        put32(&mut f, 0x260, 0x40_0000); // init_size
        f.extend_from_slice(payload);
        f
    }

    fn temp_file(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("shmvm-unit-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn bzimage_gets_64bit_entry_zero_page_and_high_initrd() {
        let ram = 64 * MIB;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let kpath = temp_file("bz", &fake_bzimage(&[0x90; 4096]));
        let ipath = temp_file("initrd", &[0xab; 10_000]);
        let spec = BootSpec {
            kernel: &kpath,
            initrd: Some(&ipath),
            cmdline: "console=ttyS0 reboot=k",
            protocol: None,
            vcpus: 2,
        };
        let mut files = BootFiles::open(&kpath, Some(&ipath)).unwrap();
        let loaded = load(&mem, ram, &spec, &mut files).unwrap();
        let _ = std::fs::remove_file(&kpath);
        let _ = std::fs::remove_file(&ipath);
        assert_eq!(loaded.entry, Entry::Linux64 { rip: 0x10_0200 });
        let initrd_addr = (ram - 10_000) & !0xfff;
        assert_eq!(loaded.initrd, Some((initrd_addr, 10_000)));
        let p: boot_params = mem
            .read_obj(GuestAddress(crate::layout::ZERO_PAGE))
            .unwrap();
        let h = p.hdr;
        assert_eq!(
            (h.type_of_loader, h.cmd_line_ptr, { h.ramdisk_image }),
            (0xff, CMDLINE as u32, initrd_addr as u32)
        );
        assert_eq!({ h.ramdisk_size }, 10_000);
        assert_eq!({ h.code32_start }, 0x10_0000);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (HIMEM, ram - HIMEM, 1)
        );
        let mut cl = [0u8; 23];
        mem.read_slice(&mut cl, GuestAddress(CMDLINE)).unwrap();
        assert_eq!(&cl, b"console=ttyS0 reboot=k\0");
        let mut payload = [0u8; 4];
        mem.read_slice(&mut payload, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(payload, [0x90; 4]);
        // The MP table is there for both vCPUs, and PVH is refused.
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE)).unwrap();
        assert_eq!(&sig, b"_MP_");
        let spec = BootSpec {
            protocol: Some(BootProtocol::Pvh),
            ..spec
        };
        let kpath2 = temp_file("bz2", &fake_bzimage(&[0x90; 16]));
        let mut files = BootFiles::open(&kpath2, None).unwrap();
        let spec = BootSpec {
            kernel: &kpath2,
            initrd: None,
            ..spec
        };
        assert!(matches!(
            load(&mem, ram, &spec, &mut files),
            Err(Error::NoPvhNote(_))
        ));
        let _ = std::fs::remove_file(&kpath2);
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let mut img = fake_bzimage(&[0x90; 16]);
        img[0x236] = 0;
        let kpath = temp_file("bz32", &img);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let spec = BootSpec {
            kernel: &kpath,
            initrd: None,
            cmdline: "",
            protocol: None,
            vcpus: 1,
        };
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let r = load(&mem, 32 << 20, &spec, &mut files);
        let _ = std::fs::remove_file(&kpath);
        match r {
            Err(Error::Kernel { reason, .. }) => assert!(reason.contains("64-bit"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

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
