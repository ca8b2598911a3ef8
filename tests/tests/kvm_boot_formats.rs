//! `-kernel` image formats beyond 64-bit ELF and bzImage: 32-bit ELF with a
//! PVH note, and Multiboot v1 kernels (a.out-kludge address fields, or
//! ELF32). Each kernel is generated here: a few hundred bytes of 32-bit code
//! that prints what its loader handed it on COM1 (`key=hex` lines) and ends
//! through isa-debug-exit with 0x10 (exit code 33). Every kernel runs under
//! shmvm and under QEMU 10, and the two must report the same.
//!
//! Needs /dev/kvm and `qemu-system-x86_64` (`make deps`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmvm_tests::vm::{TempDir, require_kvm, run, wait};

const EXIT_PORT: u16 = 0xf4;
const COM1: u16 = 0x3f8;
const RAM_MIB: &str = "16";
const PVH_MAGIC: u32 = 0x336e_c578;
const MB_HEADER_MAGIC: u32 = 0x1bad_b002;
const MB_EAX_MAGIC: u32 = 0x2bad_b002;
const MB_FLAG_PAGE_ALIGN: u32 = 1;
const MB_FLAG_MEMORY: u32 = 2;
const MB_FLAG_VIDEO: u32 = 4;
const MB_FLAG_AOUT: u32 = 1 << 16;
/// A stack both loaders leave alone (RAM below the EBDA).
const STACK_TOP: u32 = 0x8_0000;

// ---------------------------------------------------------------------------
// A tiny x86-32 assembler: just the instructions the report program uses.

const EAX: u8 = 0;
const ECX: u8 = 1;
const EDX: u8 = 2;
const EBX: u8 = 3;
const ESP: u8 = 4;
const EBP: u8 = 5;
const ESI: u8 = 6;
const EDI: u8 = 7;

#[derive(Debug)]
enum Fixup {
    Rel8,
    Rel32,
    Abs32,
}

#[derive(Debug, Default)]
struct Asm {
    base: u32,
    code: Vec<u8>,
    labels: BTreeMap<String, usize>,
    fixups: Vec<(usize, String, Fixup)>,
}

impl Asm {
    fn new(base: u32) -> Asm {
        Asm {
            base,
            ..Default::default()
        }
    }
    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }
    fn label(&mut self, name: &str) -> &mut Self {
        self.labels.insert(name.to_string(), self.code.len());
        self
    }
    fn fix(&mut self, name: &str, kind: Fixup) -> &mut Self {
        let width = if matches!(kind, Fixup::Rel8) { 1 } else { 4 };
        self.fixups.push((self.code.len(), name.to_string(), kind));
        self.code.extend(std::iter::repeat_n(0, width));
        self
    }
    fn mov_imm(&mut self, r: u8, v: u32) -> &mut Self {
        self.b(&[0xb8 + r]).b(&v.to_le_bytes())
    }
    fn mov_addr(&mut self, r: u8, label: &str) -> &mut Self {
        self.b(&[0xb8 + r]).fix(label, Fixup::Abs32)
    }
    /// `mov r, [base + disp8]` (base is not ESP).
    fn load(&mut self, r: u8, base: u8, disp: u8) -> &mut Self {
        assert!(base != ESP && disp < 0x80);
        self.b(&[0x8b, 0x40 | (r << 3) | base, disp])
    }
    /// `mov eax, [abs32]`
    fn load_abs(&mut self, addr: u32) -> &mut Self {
        self.b(&[0xa1]).b(&addr.to_le_bytes())
    }
    fn mov_rr(&mut self, dst: u8, src: u8) -> &mut Self {
        self.b(&[0x89, 0xc0 | (src << 3) | dst])
    }
    fn call(&mut self, label: &str) -> &mut Self {
        self.b(&[0xe8]).fix(label, Fixup::Rel32)
    }
    fn jcc(&mut self, op: u8, label: &str) -> &mut Self {
        self.b(&[op]).fix(label, Fixup::Rel8)
    }
    fn asciz(&mut self, s: &str) -> &mut Self {
        self.b(s.as_bytes()).b(&[0])
    }
    fn finish(mut self) -> Vec<u8> {
        for (at, name, kind) in std::mem::take(&mut self.fixups) {
            let target = *self.labels.get(&name).expect("label") as i64;
            match kind {
                Fixup::Rel8 => {
                    let d = target - (at as i64 + 1);
                    self.code[at] = i8::try_from(d).expect("short jump") as u8;
                }
                Fixup::Rel32 => {
                    let d = (target - (at as i64 + 4)) as i32;
                    self.code[at..at + 4].copy_from_slice(&d.to_le_bytes());
                }
                Fixup::Abs32 => {
                    let a = self.base + target as u32;
                    self.code[at..at + 4].copy_from_slice(&a.to_le_bytes());
                }
            }
        }
        self.code
    }
}

/// What the report program prints, one `key=value` line each.
#[derive(Debug, Clone)]
enum Item {
    /// EAX at entry, in hex.
    EntryEax(&'static str),
    /// The dword reached from EBX at entry by following `path`: `[ebx+p0]`,
    /// then `[that+p1]`, ...
    Dword(&'static str, &'static [u8]),
    /// The NUL-terminated string whose address `path` reaches.
    Str(&'static str, &'static [u8]),
    /// The dword at a fixed guest address.
    At(&'static str, u32),
}

/// 32-bit code loaded at `base` that prints `items` and exits with 0x10.
fn report_program(base: u32, items: &[Item]) -> Vec<u8> {
    let mut a = Asm::new(base);
    a.mov_rr(EDI, EAX).mov_rr(EBP, EBX).mov_imm(ESP, STACK_TOP);
    // A newline first: SeaBIOS leaves "Booting from ROM.." unterminated.
    a.b(&[0xb0, b'\n']).call("putc");
    for (i, item) in items.iter().enumerate() {
        let (key, path): (&str, &[u8]) = match item {
            Item::EntryEax(k) | Item::At(k, _) => (k, &[]),
            Item::Dword(k, p) | Item::Str(k, p) => (k, p),
        };
        a.mov_addr(ESI, &format!("key{i}")).call("puts");
        match item {
            Item::EntryEax(_) => {
                a.mov_rr(EAX, EDI);
            }
            Item::At(_, addr) => {
                a.load_abs(*addr);
            }
            _ => {
                a.load(EAX, EBP, path[0]);
                for d in &path[1..] {
                    a.load(EAX, EAX, *d);
                }
            }
        }
        if let Item::Str(..) = item {
            a.mov_rr(ESI, EAX).call("puts");
        } else {
            a.call("puthex");
        }
        a.b(&[0xb0, b'\n']).call("putc"); // mov al, '\n'
        let _ = key;
    }
    // isa-debug-exit: out 0xf4, eax = 0x10; then halt for good.
    a.b(&[0x66, 0xba])
        .b(&EXIT_PORT.to_le_bytes())
        .mov_imm(EAX, 0x10)
        .b(&[0xef])
        .label("halt")
        .b(&[0xfa, 0xf4])
        .jcc(0xeb, "halt");
    // putc: al -> COM1
    a.label("putc")
        .b(&[0x52, 0x66, 0xba])
        .b(&COM1.to_le_bytes())
        .b(&[0xee, 0x5a, 0xc3]);
    // puts: esi -> COM1 until NUL
    a.label("puts")
        .b(&[0xac, 0x84, 0xc0]) // lodsb; test al, al
        .jcc(0x74, "puts_done")
        .call("putc")
        .jcc(0xeb, "puts")
        .label("puts_done")
        .b(&[0xc3]);
    // puthex: eax as 8 hex digits
    a.label("puthex")
        .b(&[0x51])
        .mov_imm(ECX, 8)
        .label("hex_loop")
        .b(&[0xc1, 0xc0, 0x04, 0x50]) // rol eax, 4; push eax
        .b(&[0x83, 0xe0, 0x0f, 0x04, b'0', 0x3c, b'9']) // and eax, 15; add al, '0'; cmp al, '9'
        .jcc(0x76, "hex_digit")
        .b(&[0x04, 7]) // add al, 7
        .label("hex_digit")
        .call("putc")
        .b(&[0x58, 0x49]) // pop eax; dec ecx
        .jcc(0x75, "hex_loop")
        .b(&[0x59, 0xc3]);
    for (i, item) in items.iter().enumerate() {
        let key = match item {
            Item::EntryEax(k) | Item::At(k, _) | Item::Dword(k, _) | Item::Str(k, _) => k,
        };
        a.label(&format!("key{i}")).asciz(&format!("{key}="));
    }
    let _ = (EDX, ECX);
    a.finish()
}

// ---------------------------------------------------------------------------
// Image builders.

/// A 32-bit i386 ELF executable: `segments` are (bytes, physical address,
/// memory size); `prefix` goes right after the headers, inside the first
/// segment's file range (for a Multiboot header), so the first segment's
/// bytes start `prefix.len()` bytes later. `pvh` adds the PVH entry note.
fn elf32(segments: &[(Vec<u8>, u32, u32)], entry: u32, pvh: Option<u32>) -> Vec<u8> {
    const EHDR: usize = 52;
    const PHDR: usize = 32;
    let phnum = segments.len() + usize::from(pvh.is_some());
    let mut off = EHDR + phnum * PHDR;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u32).to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&(phnum as u16).to_le_bytes());
    f.extend_from_slice(&[0; 6]);
    let mut data = Vec::new();
    let ph = |f: &mut Vec<u8>, kind: u32, off: usize, addr: u32, fsz: usize, msz: u32| {
        for v in [kind, off as u32, addr, addr, fsz as u32, msz, 7, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    for (bytes, addr, msz) in segments {
        ph(&mut f, 1, off, *addr, bytes.len(), *msz);
        data.extend_from_slice(bytes);
        off += bytes.len();
    }
    if let Some(e) = pvh {
        ph(&mut f, 4, off, 0, 20, 0);
        for v in [4u32, 4, 18] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.extend_from_slice(b"Xen\0");
        data.extend_from_slice(&e.to_le_bytes());
    }
    f.extend(data);
    f
}

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
// Running both VMMs.

/// `key=value` lines a run printed, and its exit code.
#[derive(Debug)]
struct Report {
    code: Option<i32>,
    values: BTreeMap<String, String>,
    stdout: String,
    stderr: String,
}

impl Report {
    fn from(code: Option<i32>, stdout: String, stderr: String) -> Report {
        let values = stdout
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Report {
            code,
            values,
            stdout,
            stderr,
        }
    }
    fn get(&self, k: &str) -> &str {
        self.values.get(k).map_or("<missing>", String::as_str)
    }
    fn hex(&self, k: &str) -> u32 {
        u32::from_str_radix(self.get(k), 16).unwrap_or_else(|_| panic!("{k} in {self:#?}"))
    }
    fn assert_exit_33(&self, who: &str) {
        assert_eq!(
            self.code,
            Some(33),
            "{who}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

fn shmvm(kernel: &Path, extra: &[&str]) -> Report {
    let k = kernel.to_str().expect("UTF-8 path");
    let mut args = vec![
        "-kernel",
        k,
        "-m",
        RAM_MIB,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ];
    args.extend_from_slice(extra);
    let r = run(&args, Duration::from_secs(20));
    Report::from(r.code, r.stdout, r.stderr)
}

/// QEMU microvm with qboot, as the boot benchmark runs it. Its fw_cfg
/// loader boots PVH and Multiboot kernels alike (`-M pc` with SeaBIOS
/// reports the same values, only slower and with a smaller mem_upper and a
/// longer memory map, as SeaBIOS keeps memory for itself).
fn qemu(kernel: &Path, extra: &[&str]) -> Report {
    let bin = "qemu-system-x86_64";
    let have = Command::new(bin).arg("--version").output();
    assert!(
        have.is_ok_and(|o| o.status.success()),
        "this test needs {bin} (QEMU 10: `make deps`)"
    );
    let mut cmd = Command::new(bin);
    cmd.args([
        "-M",
        "microvm",
        "-bios",
        "/usr/share/qemu/qboot.rom",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-m",
        RAM_MIB,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel",
    ])
    .arg(kernel)
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn qemu");
    let r = wait(child, Duration::from_secs(60));
    Report::from(r.code, r.stdout, r.stderr)
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
