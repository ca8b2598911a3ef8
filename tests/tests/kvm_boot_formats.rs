//! `-kernel` image formats beyond 64-bit ELF and bzImage: 32-bit ELF with a
//! PVH note, and Multiboot v1 kernels (a.out-kludge address fields, or
//! ELF32). Each kernel is generated here: a few hundred bytes of 32-bit code
//! that prints what its loader handed it on COM1 (`key=hex` lines) and ends
//! through isa-debug-exit with 0x10 (exit code 33). Every kernel runs under
//! shmvm and under QEMU 10, and the two must report the same.
//!
//! Needs /dev/kvm and `qemu-system-x86_64` (`make deps`).

mod guest32;

use std::path::Path;

use guest32::{ESI, Item, Report, elf32, qemu, report_program, report_program_from, shmvm};
use shmvm_tests::harness::{TempDir, require_kvm};

const PVH_MAGIC: u32 = 0x336e_c578;
const MB_HEADER_MAGIC: u32 = 0x1bad_b002;
const MB_EAX_MAGIC: u32 = 0x2bad_b002;
const MB_FLAG_PAGE_ALIGN: u32 = 1;
const MB_FLAG_MEMORY: u32 = 2;
const MB_FLAG_VIDEO: u32 = 4;
const MB_FLAG_AOUT: u32 = 1 << 16;

// ---------------------------------------------------------------------------
// Image builders.

fn mb_header(flags: u32, addresses: Option<[u32; 5]>) -> Vec<u8> {
    let mut h = Vec::new();
    for v in [
        MB_HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(MB_HEADER_MAGIC).wrapping_sub(flags),
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    for v in addresses.into_iter().flatten() {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// A flat Multiboot image with the address fields: the header first, the
/// code right after it, all loaded at `load`, with `bss` zero bytes after.
fn multiboot_aout(load: u32, items: &[Item], bss: u32) -> Vec<u8> {
    let code_at = load + 32;
    let code = report_program(code_at, items);
    let end = code_at + code.len() as u32;
    let mut f = mb_header(
        MB_FLAG_PAGE_ALIGN | MB_FLAG_MEMORY | MB_FLAG_AOUT,
        Some([load, load, end, end + bss, code_at]),
    );
    f.extend(code);
    f
}

/// An ELF32 Multiboot image (no address fields): one segment at `load`
/// whose first bytes are the Multiboot header, then the code.
fn multiboot_elf(load: u32, flags: u32, items: &[Item]) -> Vec<u8> {
    let header = mb_header(flags, None);
    let code_at = load + header.len() as u32;
    let mut seg = header;
    seg.extend(report_program(code_at, items));
    let len = seg.len() as u32;
    elf32(&[(seg, load, len)], code_at, None)
}

// ---------------------------------------------------------------------------
// The tests.

const PVH_ITEMS: &[Item] = &[
    Item::Dword("magic", &[0]),
    Item::Dword("nr_modules", &[12]),
    Item::Str("cmdline", &[24]),
    Item::At("data", 0x20_0000),
    Item::At("bss", 0x20_0800),
];

fn elf32_pvh_image() -> Vec<u8> {
    // Code at 1 MiB (entered through the PVH note, e_entry elsewhere), data
    // at 2 MiB: 4 bytes from the file, the rest of the page bss.
    let code = report_program(0x10_0000, PVH_ITEMS);
    let clen = code.len() as u32;
    elf32(
        &[
            (code, 0x10_0000, clen),
            (0x4433_2211u32.to_le_bytes().to_vec(), 0x20_0000, 0x1000),
        ],
        0xdead_0000,
        Some(0x10_0000),
    )
}

#[test]
fn kvm_elf32_pvh_kernel_boots_like_qemu() {
    require_kvm();
    let dir = TempDir::new("elf32");
    let k = dir.0.join("pvh32.elf");
    std::fs::write(&k, elf32_pvh_image()).expect("write kernel");
    let args = ["-append", "hello pvh32"];
    let ours = shmvm(&k, &args);
    ours.assert_exit_33("shmvm");
    assert_eq!(ours.hex("magic"), PVH_MAGIC, "{ours:#?}");
    assert_eq!(ours.hex("nr_modules"), 0);
    assert_eq!(ours.get("cmdline"), "hello pvh32");
    assert_eq!(ours.hex("data"), 0x4433_2211);
    assert_eq!(ours.hex("bss"), 0);
    let theirs = qemu(&k, &args);
    theirs.assert_exit_33("qemu");
    for key in ["magic", "nr_modules", "cmdline", "data", "bss"] {
        assert_eq!(ours.get(key), theirs.get(key), "{key}: {theirs:#?}");
    }
}

#[test]
fn bad_32bit_elf_images_fail_in_one_line() {
    let dir = TempDir::new("elf32-bad");
    let good = elf32_pvh_image();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "no-note",
            elf32(&[(vec![0xf4; 16], 0x10_0000, 16)], 0x10_0000, None),
            "PVH note",
        ),
        (
            "truncated",
            good[..good.len() - 30].to_vec(),
            "past the end",
        ),
        (
            "phnum",
            {
                let mut g = good.clone();
                g[44..46].copy_from_slice(&0xffffu16.to_le_bytes());
                g
            },
            "past the end",
        ),
        (
            "huge-bss",
            elf32(
                &[(vec![0xf4; 16], 0x10_0000, 0xf000_0000)],
                0x10_0000,
                Some(0x10_0000),
            ),
            "beyond guest RAM",
        ),
        (
            "low",
            elf32(&[(vec![0xf4; 16], 0x8000, 16)], 0x8000, Some(0x8000)),
            "below 0x100000",
        ),
        (
            "entry-outside",
            elf32(
                &[(vec![0xf4; 16], 0x10_0000, 16)],
                0x10_0000,
                Some(0x50_0000),
            ),
            "not inside any loaded segment",
        ),
    ];
    for (name, img, want) in cases {
        let k = dir.0.join(name);
        std::fs::write(&k, img).expect("write");
        let r = shmvm(&k, &[]);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(r.code, Some(2), "{name}: {r:#?}");
        assert_eq!(lines.len(), 1, "{name}: {r:#?}");
        assert!(
            lines[0].contains(want) && lines[0].contains("-kernel"),
            "{name}: {r:#?}"
        );
    }
}

const MB_ITEMS: &[Item] = &[
    Item::EntryEax("eax"),
    Item::Dword("flags", &[0]),
    Item::Dword("mem_lower", &[4]),
    Item::Dword("mem_upper", &[8]),
    Item::Dword("mods_count", &[20]),
    Item::Dword("mmap_length", &[44]),
    Item::Dword("mmap0_size", &[48, 0]),
    Item::Dword("mmap0_len", &[48, 12]),
    Item::Dword("mmap0_type", &[48, 20]),
    Item::Str("cmdline", &[16]),
    Item::Str("loader", &[64]),
];

const MB_MOD_ITEMS: &[Item] = &[
    Item::EntryEax("eax"),
    Item::Dword("mods_count", &[20]),
    Item::Dword("mod0_start", &[24, 0]),
    Item::Dword("mod0_end", &[24, 4]),
    Item::Str("mod0_string", &[24, 8]),
    Item::Dword("mod0_data", &[24, 0, 0]),
    Item::Dword("mod1_start", &[24, 16]),
    Item::Dword("mod1_end", &[24, 20]),
    Item::Str("mod1_string", &[24, 24]),
    Item::Dword("mod1_data", &[24, 16, 0]),
];

fn check_multiboot_basics(ours: &Report, theirs: &Report, kernel: &Path, append: &str) {
    ours.assert_exit_33("shmvm");
    theirs.assert_exit_33("qemu");
    let cmdline = format!("{} {append}", kernel.display());
    assert_eq!(ours.hex("eax"), MB_EAX_MAGIC, "{ours:#?}");
    assert_eq!(ours.hex("flags"), 0x24f);
    assert_eq!(ours.hex("mem_lower"), 639);
    assert_eq!(ours.hex("mem_upper"), 15 << 10);
    assert_eq!(ours.hex("mods_count"), 0);
    assert_eq!(ours.hex("mmap_length"), 3 * 24);
    assert_eq!(
        (
            ours.hex("mmap0_size"),
            ours.hex("mmap0_len"),
            ours.hex("mmap0_type")
        ),
        (20, 0x9fc00, 1)
    );
    assert_eq!(ours.get("cmdline"), cmdline);
    assert_eq!(ours.get("loader"), "shmvm");
    for key in [
        "eax",
        "flags",
        "mem_lower",
        "mods_count",
        "mmap0_size",
        "mmap0_type",
        "cmdline",
    ] {
        assert_eq!(ours.get(key), theirs.get(key), "{key}: {theirs:#?}");
    }
}

#[test]
fn kvm_multiboot_aout_kernel_boots_like_qemu() {
    require_kvm();
    let dir = TempDir::new("mb-aout");
    let k = dir.0.join("mb-aout.bin");
    std::fs::write(&k, multiboot_aout(0x10_0000, MB_ITEMS, 0x2000)).expect("write");
    let args = ["-append", "a=1 b"];
    let ours = shmvm(&k, &args);
    let theirs = qemu(&k, &args);
    check_multiboot_basics(&ours, &theirs, &k, "a=1 b");
}

#[test]
fn kvm_multiboot_elf_kernel_boots_like_qemu() {
    require_kvm();
    let dir = TempDir::new("mb-elf");
    let k = dir.0.join("mb.elf");
    let flags = MB_FLAG_PAGE_ALIGN | MB_FLAG_MEMORY;
    std::fs::write(&k, multiboot_elf(0x10_0000, flags, MB_ITEMS)).expect("write");
    let ours = shmvm(&k, &[]);
    let theirs = qemu(&k, &[]);
    check_multiboot_basics(&ours, &theirs, &k, "");
}

#[test]
fn kvm_multiboot_modules_from_initrd_list_like_qemu() {
    require_kvm();
    let dir = TempDir::new("mb-mods");
    let k = dir.0.join("mb.elf");
    let flags = MB_FLAG_PAGE_ALIGN | MB_FLAG_MEMORY;
    std::fs::write(&k, multiboot_elf(0x10_0000, flags, MB_MOD_ITEMS)).expect("write");
    let a = dir.0.join("a.mod");
    let b = dir.0.join("b,c.mod");
    std::fs::write(&a, b"MODA and some more bytes").expect("write");
    std::fs::write(&b, vec![b'B'; 5000]).expect("write");
    let list = format!(
        "{} x=1 y,{}",
        a.display(),
        b.display().to_string().replace(',', ",,")
    );
    let args = ["-initrd", list.as_str()];
    let ours = shmvm(&k, &args);
    let theirs = qemu(&k, &args);
    ours.assert_exit_33("shmvm");
    theirs.assert_exit_33("qemu");
    assert_eq!(ours.hex("mods_count"), 2, "{ours:#?}");
    let (s0, e0) = (ours.hex("mod0_start"), ours.hex("mod0_end"));
    let (s1, e1) = (ours.hex("mod1_start"), ours.hex("mod1_end"));
    assert_eq!((s0 % 4096, e0 - s0), (0, 24));
    assert_eq!((s1 % 4096, e1 - s1), (0, 5000));
    assert!(s0 >= 0x10_0000 && s1 >= e0);
    assert_eq!(ours.get("mod0_string"), format!("{} x=1 y", a.display()));
    assert_eq!(ours.get("mod1_string"), b.display().to_string());
    assert_eq!(ours.hex("mod0_data"), u32::from_le_bytes(*b"MODA"));
    assert_eq!(ours.hex("mod1_data"), u32::from_le_bytes(*b"BBBB"));
    for key in [
        "eax",
        "mods_count",
        "mod0_string",
        "mod0_data",
        "mod1_string",
        "mod1_data",
    ] {
        assert_eq!(ours.get(key), theirs.get(key), "{key}: {theirs:#?}");
    }
    assert_eq!(e1 - s1, theirs.hex("mod1_end") - theirs.hex("mod1_start"));
}

#[test]
fn bad_multiboot_images_fail_in_one_line() {
    let dir = TempDir::new("mb-bad");
    let load = 0x10_0000u32;
    let aout = |fields: [u32; 5], flags: u32| {
        let mut f = mb_header(flags | MB_FLAG_AOUT, Some(fields));
        f.extend_from_slice(&[0xf4; 64]);
        f
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "load-end-before-start",
            aout([load, load, load - 0x1000, 0, load + 32], 0),
            "below load_addr",
        ),
        (
            "past-file-end",
            aout([load, load, load + 0x10_0000, 0, load + 32], 0),
            "past the end",
        ),
        (
            "beyond-ram",
            aout([load, load, load + 96, 0x4000_0000, load + 32], 0),
            "beyond guest RAM",
        ),
        (
            "entry-outside",
            aout([load, load, load + 96, 0, 0x50_0000], 0),
            "entry_addr",
        ),
        (
            "unknown-flag",
            aout([load, load, 0, 0, load + 32], 1 << 3),
            "bits 0x8",
        ),
        (
            "flat-no-addresses",
            {
                let mut f = mb_header(MB_FLAG_MEMORY, None);
                f.extend_from_slice(&[0xf4; 64]);
                f
            },
            "not ELF",
        ),
    ];
    for (name, img, want) in cases {
        let k = dir.0.join(name);
        std::fs::write(&k, img).expect("write");
        let r = shmvm(&k, &[]);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(r.code, Some(2), "{name}: {r:#?}");
        assert_eq!(lines.len(), 1, "{name}: {r:#?}");
        assert!(lines[0].contains(want), "{name}: {r:#?}");
    }
    // A module that does not exist is named.
    let k = dir.0.join("ok.elf");
    std::fs::write(
        &k,
        multiboot_elf(load, MB_FLAG_MEMORY, &[Item::EntryEax("eax")]),
    )
    .expect("write");
    let r = shmvm(&k, &["-initrd", "/nonexistent/mod arg"]);
    assert_eq!(r.code, Some(2), "{r:#?}");
    assert!(r.stderr.contains("/nonexistent/mod:"), "{r:#?}");
}

#[test]
fn kvm_multiboot_video_flag_boots_with_a_warning() {
    require_kvm();
    let dir = TempDir::new("mb-video");
    let k = dir.0.join("mb.elf");
    let flags = MB_FLAG_MEMORY | MB_FLAG_VIDEO;
    std::fs::write(
        &k,
        multiboot_elf(0x10_0000, flags, &[Item::EntryEax("eax")]),
    )
    .expect("write");
    let ours = shmvm(&k, &[]);
    ours.assert_exit_33("shmvm");
    assert_eq!(ours.hex("eax"), MB_EAX_MAGIC);
    let theirs = qemu(&k, &[]);
    theirs.assert_exit_33("qemu");
}

/// A bzImage without the 64-bit entry (an i386 kernel's), its protected-mode
/// part the report program: shmvm enters it by Linux's 32-bit boot protocol
/// (ESI = boot_params). QEMU enters bzImages through their real-mode setup
/// code, which this image does not have, so only shmvm runs it.
#[test]
fn kvm_bzimage_32bit_protocol_entry() {
    require_kvm();
    const ITEMS: &[Item] = &[
        Item::Dword("e820_entries", &[0x1e8]),
        Item::Dword("type_of_loader", &[0x210]),
        Item::Str("cmdline", &[0x228]),
    ];
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
    put32(&mut f, 0x238, 255); // cmdline_size
    put32(&mut f, 0x260, 0x10_0000); // init_size
    f.extend(report_program_from(0x10_0000, ITEMS, ESI));
    let dir = TempDir::new("bz32");
    let k = dir.0.join("bz32");
    std::fs::write(&k, f).expect("write");
    let ours = shmvm(&k, &["-append", "console=ttyS0 ro"]);
    ours.assert_exit_33("shmvm");
    assert_eq!(ours.hex("e820_entries") & 0xff, 3, "{ours:#?}");
    assert_eq!(ours.hex("type_of_loader") & 0xff, 0xff);
    assert_eq!(ours.get("cmdline"), "console=ttyS0 ro");
}
