//! Small valid kernel images of each format `-kernel` takes (64-bit ELF
//! with a PVH note, bzImage, Multiboot v1): the seeds of the image parsers'
//! fuzzing (`fuzz_tests.rs`, and the `kernel_image` target in
//! `fuzz-targets/`), and the one way both fuzzers load an image.

use std::path::Path;

use vm_memory::GuestMemoryMmap;

use super::{BootFiles, BootSpec, Error, load};

/// The guest RAM the fuzzers load images into.
pub const SCRATCH_RAM: u64 = 16 << 20;

/// Loads the image at `path` into `mem` (`SCRATCH_RAM` bytes) as `-kernel`
/// would, with a console command line, no initrd and one vCPU.
pub fn load_image(mem: &GuestMemoryMmap, path: &Path) -> Result<(), Error> {
    let spec = BootSpec {
        kernel: path,
        initrd: None,
        cmdline: "console=ttyS0",
        protocol: None,
        vcpus: 1,
    };
    BootFiles::open(path, None)
        .and_then(|mut f| load(mem, SCRATCH_RAM, &spec, &mut f))
        .map(|_| ())
}

/// A 64-bit ELF: one PT_LOAD at 1 MiB and a PVH note (as the e2e tests').
pub fn elf64() -> Vec<u8> {
    let code: &[u8] = &[0xeb, 0xfe];
    let (ehdr, phdr) = (64usize, 56usize);
    let note_off = ehdr + 2 * phdr;
    let code_off = note_off + 20;
    let total = (code_off + code.len()) as u64;
    let entry = 0x10_0000 + code_off as u64;
    let mut f = b"\x7fELF\x02\x01\x01\x00".to_vec();
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&0x3eu16.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(ehdr as u64).to_le_bytes());
    f.extend_from_slice(&[0; 12]);
    for v in [ehdr as u16, phdr as u16, 2, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    for (ty, off, addr, size) in [
        (1u32, 0u64, 0x10_0000u64, total),
        (4, note_off as u64, 0x10_0000 + note_off as u64, 20),
    ] {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes());
        for v in [off, addr, addr, size, size, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    for v in [4u32, 4, 18] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(b"Xen\0");
    f.extend_from_slice(&(entry as u32).to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// A bzImage header with the 64-bit entry and a small payload.
pub fn bzimage() -> Vec<u8> {
    let mut f = vec![0u8; 5 * 512];
    f[0x1f1] = 4;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1;
    f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
    f.extend_from_slice(&[0x90; 1024]);
    f
}

/// A Multiboot v1 image with address fields (flag 16) loading itself at 1 MiB.
pub fn multiboot() -> Vec<u8> {
    let mut f = vec![0u8; 4096];
    let (magic, flags) = (0x1bad_b002u32, 0x0001_0000u32);
    let words = [
        magic,
        flags,
        0u32.wrapping_sub(magic.wrapping_add(flags)),
        0x10_0000, // header_addr
        0x10_0000, // load_addr
        0x10_1000, // load_end_addr
        0x10_1000, // bss_end_addr
        0x10_0040, // entry
    ];
    for (i, w) in words.iter().enumerate() {
        f[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    f
}
