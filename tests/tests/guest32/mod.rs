//! 32-bit test guests generated in test code, and running them under
//! shmvm and QEMU side by side: a tiny x86-32 assembler, a report program
//! that prints what its loader handed it (`key=hex` lines on COM1) and ends
//! through isa-debug-exit with 0x10 (exit code 33), an i386 ELF builder.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmvm_tests::harness::{run, wait};

pub const EXIT_PORT: u16 = 0xf4;
pub const COM1: u16 = 0x3f8;
pub const RAM_MIB: &str = "16";
/// A stack both loaders leave alone (RAM below the EBDA).
pub const STACK_TOP: u32 = 0x8_0000;

// ---------------------------------------------------------------------------
// A tiny x86-32 assembler: just the instructions the report program uses.

const EAX: u8 = 0;
const ECX: u8 = 1;
const EDX: u8 = 2;
pub const EBX: u8 = 3;
const ESP: u8 = 4;
const EBP: u8 = 5;
pub const ESI: u8 = 6;
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
    /// `mov r, [base + disp]` (base is not ESP).
    fn load(&mut self, r: u8, base: u8, disp: u16) -> &mut Self {
        assert!(base != ESP);
        match u8::try_from(disp) {
            Ok(d) if d < 0x80 => self.b(&[0x8b, 0x40 | (r << 3) | base, d]),
            _ => self
                .b(&[0x8b, 0x80 | (r << 3) | base])
                .b(&u32::from(disp).to_le_bytes()),
        }
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
pub enum Item {
    /// EAX at entry, in hex.
    EntryEax(&'static str),
    /// The dword reached from the entry pointer register (EBX unless
    /// [`report_program_from`] says otherwise) by following `path`:
    /// `[ebx+p0]`, then `[that+p1]`, ...
    Dword(&'static str, &'static [u16]),
    /// The NUL-terminated string whose address `path` reaches.
    Str(&'static str, &'static [u16]),
    /// The dword at a fixed guest address.
    At(&'static str, u32),
    /// CPUID leaf, subleaf: register 0-3 (EAX, EBX, ECX, EDX).
    Cpuid(&'static str, u32, u32, u8),
}

/// 32-bit code loaded at `base` that prints `items` and exits with 0x10.
pub fn report_program(base: u32, items: &[Item]) -> Vec<u8> {
    report_program_from(base, items, EBX)
}

/// As [`report_program`], the paths starting from register `pointer` (ESI
/// for Linux's boot_params).
pub fn report_program_from(base: u32, items: &[Item], pointer: u8) -> Vec<u8> {
    let mut a = Asm::new(base);
    a.mov_rr(EDI, EAX)
        .mov_rr(EBP, pointer)
        .mov_imm(ESP, STACK_TOP);
    // A newline first: SeaBIOS leaves "Booting from ROM.." unterminated.
    a.b(&[0xb0, b'\n']).call("putc");
    for (i, item) in items.iter().enumerate() {
        let (key, path): (&str, &[u16]) = match item {
            Item::EntryEax(k) | Item::At(k, _) | Item::Cpuid(k, ..) => (k, &[]),
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
            Item::Cpuid(_, leaf, subleaf, reg) => {
                a.mov_imm(EAX, *leaf)
                    .mov_imm(ECX, *subleaf)
                    .b(&[0x0f, 0xa2]);
                let src = [EAX, EBX, ECX, EDX][usize::from(*reg & 3)];
                a.mov_rr(EAX, src);
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
            Item::EntryEax(k)
            | Item::At(k, _)
            | Item::Dword(k, _)
            | Item::Str(k, _)
            | Item::Cpuid(k, ..) => k,
        };
        a.label(&format!("key{i}")).asciz(&format!("{key}="));
    }
    let _ = (EDX, ECX);
    a.finish()
}

// ---------------------------------------------------------------------------
// Image builders.

// ---------------------------------------------------------------------------
// Image builders.

/// A 32-bit i386 ELF executable: `segments` are (bytes, physical address,
/// memory size); `prefix` goes right after the headers, inside the first
/// segment's file range (for a Multiboot header), so the first segment's
/// bytes start `prefix.len()` bytes later. `pvh` adds the PVH entry note.
pub fn elf32(segments: &[(Vec<u8>, u32, u32)], entry: u32, pvh: Option<u32>) -> Vec<u8> {
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

// ---------------------------------------------------------------------------
// Running both VMMs.

/// `key=value` lines a run printed, and its exit code.
#[derive(Debug)]
pub struct Report {
    pub code: Option<i32>,
    pub values: BTreeMap<String, String>,
    pub stdout: String,
    pub stderr: String,
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
    pub fn get(&self, k: &str) -> &str {
        self.values.get(k).map_or("<missing>", String::as_str)
    }
    pub fn hex(&self, k: &str) -> u32 {
        u32::from_str_radix(self.get(k), 16).unwrap_or_else(|_| panic!("{k} in {self:#?}"))
    }
    pub fn assert_exit_33(&self, who: &str) {
        assert_eq!(
            self.code,
            Some(33),
            "{who}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

pub fn shmvm(kernel: &Path, extra: &[&str]) -> Report {
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
pub fn qemu(kernel: &Path, extra: &[&str]) -> Report {
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
