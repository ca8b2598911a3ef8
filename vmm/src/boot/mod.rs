//! Loading a kernel, initrd and command line into guest RAM and writing the
//! boot structures (PVH start info or Linux zero page, MP table, GDT, page
//! tables) for the chosen entry protocol.

pub mod acpi;
pub mod cpu;
mod elf32;
mod image;
mod linux;
pub mod mptable;
mod multiboot;
pub mod power_button;
mod pvh;
pub mod samples;
mod topology;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::BootProtocol;
use crate::layout::{self, ACPI_TABLES, BOOT_GDT, BOOT_IDT, CMDLINE, HIMEM, MPTABLE, PML4};
pub use cpu::Entry;
use image::{Head, Segment};
use multiboot::ModuleSpec;
pub use topology::{Error as TopologyError, Topology};

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
    #[error("--initrd: {0}")]
    Modules(String),
    #[error(transparent)]
    Topology(#[from] TopologyError),
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

/// One `--initrd` file, opened: the initrd, or a Multiboot module.
#[derive(Debug)]
pub struct Module {
    pub spec: ModuleSpec,
    pub file: File,
}

/// The kernel and initrd (or Multiboot modules), opened before anything
/// else is created so a bad path fails early and leaves nothing behind.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel: File,
    head: Head,
    multiboot: Option<multiboot::Header>,
    pub modules: Vec<Module>,
}

impl BootFiles {
    /// Opens `kernel` and reads its first 8 KiB; `initrd` is one file, or
    /// for a Multiboot kernel QEMU's comma-separated module list.
    pub fn open(kernel: &Path, initrd: Option<&Path>) -> Result<BootFiles, Error> {
        let kerr = |reason: String| Error::Kernel {
            path: kernel.display().to_string(),
            reason,
        };
        let mut kfile = open_image(kernel).map_err(kerr)?;
        let head = Head::read(&mut kfile).map_err(|e| kerr(e.to_string()))?;
        let multiboot = (!head.is_bzimage())
            .then(|| multiboot::Header::find(&head))
            .flatten();
        let specs = match initrd {
            None => Vec::new(),
            Some(p) if multiboot.is_some() => multiboot::parse_modules(p.as_os_str()),
            Some(p) => vec![ModuleSpec {
                path: p.to_path_buf(),
                string: p.as_os_str().as_encoded_bytes().to_vec(),
            }],
        };
        let modules = specs
            .into_iter()
            .map(|spec| {
                let file = open_image(&spec.path).map_err(|reason| Error::Initrd {
                    path: spec.path.display().to_string(),
                    reason,
                })?;
                Ok(Module { spec, file })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(BootFiles {
            kernel: kfile,
            head,
            multiboot,
            modules,
        })
    }
}

/// Opens a kernel, initrd or module file without ever blocking (O_NONBLOCK: a
/// FIFO would wait for a writer forever) and accepts only a regular file or a
/// block device. O_NONBLOCK stays set: it changes nothing for those two.
pub fn open_image(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let t = f.metadata().map_err(|e| e.to_string())?.file_type();
    let kind = if t.is_file() || t.is_block_device() {
        return Ok(f);
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    };
    Err(format!("is {kind}, not a regular file"))
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

/// A kernel image shmvm loads itself: checked segments and the entry.
#[derive(Debug)]
struct OwnImage {
    segments: Vec<Segment>,
    entry: Entry,
}

impl OwnImage {
    /// Checks that the entry point is inside a loaded segment, so a bad
    /// image is refused instead of running through zeroed RAM.
    fn new(segments: Vec<Segment>, entry: Entry) -> Result<OwnImage, String> {
        let rip = match entry {
            Entry::Pvh { rip }
            | Entry::Multiboot { rip }
            | Entry::Linux64 { rip }
            | Entry::Linux32 { rip } => rip,
        };
        if !segments
            .iter()
            .any(|s| rip >= s.paddr && s.end().is_some_and(|e| rip < e))
        {
            return Err(format!(
                "entry point {rip:#x} is not inside any loaded segment"
            ));
        }
        Ok(OwnImage { segments, entry })
    }

    fn end(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(Segment::end)
            .max()
            .unwrap_or(HIMEM)
    }
}

/// Decides how to enter a 32-bit ELF or Multiboot image, or returns `None`
/// for the formats linux-loader reads (64-bit ELF, bzImage).
fn own_image(
    files: &mut BootFiles,
    protocol: Option<BootProtocol>,
) -> Result<Option<OwnImage>, String> {
    let head = &files.head;
    if head.is_bzimage() {
        return Ok(None);
    }
    let class = head.elf_class();
    if let (Some(mb), None) = (files.multiboot, protocol) {
        if let Some(warning) = mb.check_flags()? {
            log::warn!("--kernel: {warning}");
        }
        if mb.has_addresses() {
            let (seg, rip) = mb.aout_segment(head)?;
            return OwnImage::new(vec![seg], Entry::Multiboot { rip }).map(Some);
        }
        return match class {
            Some(1) => {
                let e = elf32::parse(head, &mut files.kernel)?;
                OwnImage::new(e.segments, Entry::Multiboot { rip: e.entry }).map(Some)
            }
            // A 64-bit ELF with a PVH note is still bootable by that note.
            Some(2) => Ok(None),
            _ => Err(
                "multiboot header without the address fields (flag 16) in an image that is not \
                 ELF: nothing says where to load it"
                    .into(),
            ),
        };
    }
    match class {
        Some(1) => {
            if protocol == Some(BootProtocol::Linux64) {
                return Err("--boot linux64: a 32-bit ELF has no 64-bit entry point".into());
            }
            let e = elf32::parse(head, &mut files.kernel)?;
            let rip = e.pvh_entry.ok_or(
                "32-bit ELF with neither a PVH note (XEN_ELFNOTE_PHYS32_ENTRY) nor a multiboot \
                 header: no entry protocol to start it with",
            )?;
            OwnImage::new(e.segments, Entry::Pvh { rip }).map(Some)
        }
        Some(2) => Ok(None),
        Some(c) => Err(format!("ELF class {c} is neither 32- nor 64-bit")),
        None => Err("not an ELF, bzImage or multiboot kernel".into()),
    }
}

/// Loads everything into `mem` (sized `ram_size`) and returns vCPU 0's
/// entry; the vCPUs form one flat package.
pub fn load(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    spec: &BootSpec<'_>,
    files: &mut BootFiles,
) -> Result<Loaded, Error> {
    load_with(mem, ram_size, spec, &Topology::flat(spec.vcpus), files)
}

/// As [`load`], with the vCPUs' APIC IDs from `topo` in the MP table and
/// the MADT (vCPU `i` must then be created with KVM vCPU ID
/// `topo.apic_id(i)` and get CPUID from [`crate::cpuid::for_vcpu_in`]).
pub fn load_with(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    spec: &BootSpec<'_>,
    topo: &Topology,
    files: &mut BootFiles,
) -> Result<Loaded, Error> {
    topo.check(spec.vcpus)?;
    // The VMM's writes below fault guest RAM in: keep them on small pages.
    let _small_pages = crate::guest_ram::ThpPause::new();
    let kpath = spec.kernel.display().to_string();
    let kerr = |reason: String| Error::Kernel {
        path: kpath.clone(),
        reason,
    };
    let ram_end = layout::low_ram_end(ram_size);
    let own = own_image(files, spec.protocol).map_err(kerr)?;
    let (entry, kernel_end, hdr) = if let Some(img) = own {
        for s in &img.segments {
            s.check(files.head.file_len, HIMEM, ram_end).map_err(kerr)?;
        }
        image::load_segments(mem, &mut files.kernel, &img.segments).map_err(kerr)?;
        (img.entry, img.end(), None)
    } else if files.head.is_bzimage() {
        if spec.protocol == Some(BootProtocol::Pvh) {
            return Err(Error::NoPvhNote(kpath));
        }
        let kf = &mut files.kernel;
        let r = BzImage::load(mem, None, kf, Some(GuestAddress(HIMEM)))
            .map_err(|e| kerr(format!("bzImage load failed: {e}")))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| kerr("bzImage without a setup header".into()))?;
        let want64 = spec.protocol == Some(BootProtocol::Linux64);
        let entry = linux::bzimage_entry(&hdr, r.kernel_load.0, want64).map_err(kerr)?;
        // The kernel decompresses in place within init_size.
        let end = r.kernel_load.0 + u64::from(hdr.init_size).max(r.kernel_end - r.kernel_load.0);
        (entry, end, Some(hdr))
    } else {
        elf32::check_elf64(&files.head, &mut files.kernel, ram_end).map_err(kerr)?;
        let kf = &mut files.kernel;
        let r = Elf::load(mem, None, kf, Some(GuestAddress(HIMEM)))
            .map_err(|e| kerr(format!("ELF load failed: {e}")))?;
        let multiboot = files.multiboot.is_some() && spec.protocol.is_none();
        let entry = match (r.pvh_boot_cap, spec.protocol) {
            (PvhBootCapability::PvhEntryPresent(a), None | Some(BootProtocol::Pvh)) => {
                Entry::Pvh { rip: a.0 }
            }
            (_, Some(BootProtocol::Pvh)) => return Err(Error::NoPvhNote(kpath)),
            _ if multiboot => {
                return Err(kerr(
                    "64-bit ELF multiboot kernel without the address fields (flag 16): \
                     Multiboot enters 32-bit code (QEMU refuses it too); link it as a 32-bit \
                     ELF"
                    .into(),
                ));
            }
            _ => Entry::Linux64 {
                rip: r.kernel_load.0,
            },
        };
        (entry, r.kernel_end, None)
    };
    if kernel_end > ram_end {
        return Err(kerr(format!(
            "ends at {kernel_end:#x}, beyond RAM below the MMIO hole"
        )));
    }

    // Command line, NUL terminated. Multiboot kernels get the kernel's
    // path first, as from QEMU and GRUB.
    let cmdline = match entry {
        Entry::Multiboot { .. } => format!("{kpath} {}", spec.cmdline),
        _ => spec.cmdline.to_string(),
    };
    let max = hdr
        .as_ref()
        .map_or(layout::CMDLINE_MAX - 1, linux::cmdline_max);
    if cmdline.len() as u64 > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut cl = Vec::with_capacity(cmdline.len() + 1);
    cl.extend_from_slice(cmdline.as_bytes());
    cl.push(0);
    write(mem, CMDLINE, &cl)?;

    let mut initrd = None;
    let mut placed = Vec::new();
    match (entry, files.modules.as_mut_slice()) {
        (Entry::Multiboot { .. }, mods) => {
            placed = load_modules(mem, ram_end, kernel_end, mods)?;
        }
        (_, []) => {}
        (_, [m]) => {
            initrd = Some(load_initrd(mem, ram_size, m, kernel_end, hdr.as_ref())?);
        }
        (_, mods) => {
            return Err(Error::Modules(format!(
                "{} files given, but only Multiboot kernels take a module list",
                mods.len()
            )));
        }
    }

    // Shared pieces: MP table and ACPI tables (CPUs, PCI root, power-off),
    // GDT, empty IDT.
    write(mem, MPTABLE, &mptable::build_for(MPTABLE, topo, spec.vcpus))?;
    let mmio64 = layout::pci_mmio64_start(ram_size);
    let tables = acpi::build_for(
        ACPI_TABLES,
        topo,
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
        Entry::Pvh { .. } => pvh::write_start_info(mem, &map, cmdline.len(), initrd)?,
        Entry::Linux64 { .. } => {
            write(mem, PML4, &cpu::page_tables())?;
            linux::write_zero_page(mem, hdr, &map, cmdline.len(), initrd)?;
        }
        Entry::Linux32 { .. } => linux::write_zero_page(mem, hdr, &map, cmdline.len(), initrd)?,
        Entry::Multiboot { .. } => multiboot::write_info(mem, ram_size, &map, &placed)?,
    }
    Ok(Loaded { entry, initrd })
}

/// Loads Multiboot modules one after another from the first page after the
/// kernel, each page aligned (as QEMU places them).
fn load_modules(
    mem: &GuestMemoryMmap,
    ram_end: u64,
    kernel_end: u64,
    mods: &mut [Module],
) -> Result<Vec<multiboot::Placed>, Error> {
    let mut at = kernel_end;
    let mut placed = Vec::with_capacity(mods.len());
    for m in mods {
        let merr = |reason: String| Error::Initrd {
            path: m.spec.path.display().to_string(),
            reason,
        };
        let size = m.file.metadata().map_err(|e| merr(e.to_string()))?.len();
        let start = at.next_multiple_of(4096);
        let end = start
            .checked_add(size)
            .filter(|e| *e <= ram_end)
            .ok_or_else(|| {
                merr(format!(
                    "{size} bytes do not fit between {start:#x} and the end of RAM below the \
                     MMIO hole at {ram_end:#x}"
                ))
            })?;
        if size > 0 {
            mem.read_exact_volatile_from(GuestAddress(start), &mut m.file, size as usize)
                .map_err(|e| merr(format!("reading into guest RAM: {e}")))?;
        }
        placed.push(multiboot::Placed {
            start,
            end,
            string: m.spec.string.clone(),
        });
        at = end;
    }
    Ok(placed)
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    m: &mut Module,
    kernel_end: u64,
    hdr: Option<&setup_header>,
) -> Result<(u64, u64), Error> {
    let ipath = m.spec.path.display().to_string();
    let f = &mut m.file;
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
mod fuzz_tests;

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

    fn spec<'a>(kernel: &'a Path, initrd: Option<&'a Path>, cmdline: &'a str) -> BootSpec<'a> {
        BootSpec {
            kernel,
            initrd,
            cmdline,
            protocol: None,
            vcpus: 1,
        }
    }

    #[test]
    fn elf32_pvh_kernel_segments_and_entry() {
        let ram = 32 * MIB;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        // Dirty the bss range first: the loader must zero it.
        mem.write_slice(&[0xee; 16], GuestAddress(0x20_0100))
            .unwrap();
        let img = elf32::build_test_image(
            &[
                (&[0xf4; 16], 0x10_0000, 16),
                (&[1, 2, 3, 4], 0x20_0000, 0x1000),
            ],
            0x10_0000,
            Some(0x10_0004),
        );
        let kpath = temp_file("elf32", &img);
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let r = load(&mem, ram, &spec(&kpath, None, "x"), &mut files);
        let _ = std::fs::remove_file(&kpath);
        assert_eq!(r.unwrap().entry, Entry::Pvh { rip: 0x10_0004 });
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 0]);
        mem.read_slice(&mut b, GuestAddress(0x20_0100)).unwrap();
        assert_eq!(b, [0; 8], "bss zeroed");
    }

    #[test]
    fn multiboot_kernel_modules_and_info() {
        let ram = 32 * MIB;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        // Multiboot header with the address fields at offset 0: the file
        // loads at 1 MiB, entry right after the 32-byte header.
        let flags = multiboot::FLAG_AOUT_KLUDGE | 3;
        let mut img = Vec::new();
        for v in [
            multiboot::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(multiboot::HEADER_MAGIC)
                .wrapping_sub(flags),
            0x10_0000,
            0x10_0000,
            0,
            0x10_3000,
            0x10_0020,
        ] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.extend_from_slice(&[0xf4; 100]);
        let kpath = temp_file("mb", &img);
        let m1 = temp_file("mod1", b"first");
        let m2 = temp_file("mod2", &[7; 5000]);
        let list = format!("{} a=1,{}", m1.display(), m2.display());
        let ipath = Path::new(&list);
        let mut files = BootFiles::open(&kpath, Some(ipath)).unwrap();
        let r = load(&mem, ram, &spec(&kpath, Some(ipath), "hi"), &mut files);
        for p in [&kpath, &m1, &m2] {
            let _ = std::fs::remove_file(p);
        }
        assert_eq!(r.unwrap().entry, Entry::Multiboot { rip: 0x10_0020 });
        let rd = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).unwrap();
        let info = layout::MULTIBOOT_INFO;
        assert_eq!(rd(info + 20), 2, "mods_count");
        let mods = u64::from(rd(info + 24));
        // The kernel ends at bss_end 0x103000: modules from there, page
        // aligned.
        assert_eq!((rd(mods), rd(mods + 4)), (0x10_3000, 0x10_3005));
        assert_eq!(
            (rd(mods + 16), rd(mods + 20)),
            (0x10_4000, 0x10_4000 + 5000)
        );
        let mut s = vec![0u8; list.find(',').unwrap()];
        mem.read_slice(&mut s, GuestAddress(u64::from(rd(mods + 8))))
            .unwrap();
        assert_eq!(s, format!("{} a=1", m1.display()).as_bytes());
        let mut cl = vec![0u8; kpath.display().to_string().len() + 3];
        mem.read_slice(&mut cl, GuestAddress(u64::from(rd(info + 16))))
            .unwrap();
        assert_eq!(cl, format!("{} hi", kpath.display()).as_bytes());
        // A module list is only for Multiboot kernels.
        let img = elf32::build_test_image(&[(&[0xf4; 16], 0x10_0000, 16)], 0x10_0000, None);
        let kpath = temp_file("elf32-none", &img);
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let r = load(&mem, ram, &spec(&kpath, None, ""), &mut files);
        let _ = std::fs::remove_file(&kpath);
        match r {
            Err(Error::Kernel { reason, .. }) => assert!(reason.contains("PVH note"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// Mutated 32-bit ELF and Multiboot headers: every image either loads
    /// or fails with an error; none panics or writes outside RAM.
    #[test]
    fn mutated_images_fail_cleanly() {
        let ram = 8 * MIB;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let elf = elf32::build_test_image(
            &[(&[0xf4; 64], 0x10_0000, 0x2000), (&[1; 64], 0x20_0000, 64)],
            0x10_0000,
            Some(0x10_0000),
        );
        let flags = multiboot::FLAG_AOUT_KLUDGE | 3;
        let mut mb = Vec::new();
        for v in [
            multiboot::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(multiboot::HEADER_MAGIC)
                .wrapping_sub(flags),
            0x10_0000,
            0x10_0000,
            0x10_0080,
            0x10_1000,
            0x10_0020,
        ] {
            mb.extend_from_slice(&v.to_le_bytes());
        }
        mb.resize(0x100, 0xf4);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let kpath = temp_file("fuzz", &[]);
        let (mut ok, mut failed) = (0, 0);
        for round in 0..400 {
            let mut img = if round % 2 == 0 {
                elf.clone()
            } else {
                mb.clone()
            };
            for _ in 0..1 + next() % 4 {
                let at = (next() % 136) as usize % img.len();
                img[at] = next() as u8;
            }
            if next() % 8 == 0 {
                img.truncate((next() as usize) % img.len());
            }
            std::fs::write(&kpath, &img).unwrap();
            let mut files = BootFiles::open(&kpath, None).unwrap();
            match load(&mem, ram, &spec(&kpath, None, ""), &mut files) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(!e.to_string().contains('\n'), "{e}");
                    failed += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&kpath);
        assert!(ok > 0 && failed > 0, "{ok} loaded, {failed} refused");
    }

    #[test]
    fn topology_that_cannot_hold_the_vcpus_is_refused() {
        let ram = 32 * MIB;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let img =
            elf32::build_test_image(&[(&[0xf4; 16], 0x10_0000, 16)], 0x10_0000, Some(0x10_0000));
        let kpath = temp_file("elf32-topo", &img);
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let mut sp = spec(&kpath, None, "");
        sp.vcpus = 5;
        let topo = Topology {
            sockets: 2,
            cores: 2,
            threads: 1,
        };
        let r = load_with(&mem, ram, &sp, &topo, &mut files);
        let _ = std::fs::remove_file(&kpath);
        assert!(matches!(
            r,
            Err(Error::Topology(TopologyError::TooSmall { .. }))
        ));
    }

    #[test]
    fn bzimage_without_64bit_entry_gets_the_32bit_protocol() {
        let mut img = fake_bzimage(&[0x90; 16]);
        img[0x236] = 0;
        let kpath = temp_file("bz32", &img);
        let ram = 32 * MIB;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let r = load(&mem, ram, &spec(&kpath, None, "ro"), &mut files);
        assert_eq!(r.unwrap().entry, Entry::Linux32 { rip: 0x10_0000 });
        let p: boot_params = mem
            .read_obj(GuestAddress(crate::layout::ZERO_PAGE))
            .unwrap();
        assert_eq!(
            ({ p.hdr.cmd_line_ptr }, p.e820_entries),
            (CMDLINE as u32, 3)
        );
        // --boot linux64 insists on the 64-bit entry.
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let mut sp = spec(&kpath, None, "");
        sp.protocol = Some(BootProtocol::Linux64);
        let r = load(&mem, ram, &sp, &mut files);
        match r {
            Err(Error::Kernel { reason, .. }) => assert!(reason.contains("64-bit"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Protocol 2.01 has no cmd_line_ptr: refused.
        img[0x206..0x208].copy_from_slice(&0x0201u16.to_le_bytes());
        std::fs::write(&kpath, &img).unwrap();
        let mut files = BootFiles::open(&kpath, None).unwrap();
        let r = load(&mem, ram, &spec(&kpath, None, ""), &mut files);
        let _ = std::fs::remove_file(&kpath);
        match r {
            Err(Error::Kernel { reason, .. }) => assert!(reason.contains("2.02+"), "{reason}"),
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
