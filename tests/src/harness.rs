//! The one harness of the end-to-end tests: where the binaries are, one
//! [`Run`] (what a finished shmvm produced), one [`wait`] with a timeout,
//! one [`refused`] check for configuration errors, the typed statistics
//! ([`Run::stats`], `--stats=json`), temporary files, and tiny kernels.
//!
//! Prerequisites fail loudly (a panic naming what is missing and how to get
//! it): /dev/kvm, the shmvm binary, the test kernel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::stats::Stats;

/// Repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `shmvm` binary: env SHMVM_BIN, else the one cargo built next to this
/// test executable (target/<profile>/shmvm). Panics with a fix if missing.
pub fn shmvm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHMVM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/shmvm
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("shmvm");
    assert!(
        bin.exists(),
        "shmvm binary not found at {}: build it first (cargo build [--release] -p vmm) or set SHMVM_BIN",
        bin.display()
    );
    bin
}

/// The test kernel: env SHMVM_TESTKERNEL, else build/guest/testkernel.
/// Panics (the test FAILS) when it is missing.
pub fn testkernel() -> PathBuf {
    let p = std::env::var_os("SHMVM_TESTKERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest/testkernel"));
    assert!(
        p.exists(),
        "test kernel {} is missing: run `make testkernel` or set SHMVM_TESTKERNEL",
        p.display()
    );
    p
}

/// Fails loudly when the host has no usable /dev/kvm.
pub fn require_kvm() {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = f {
        panic!("this test needs /dev/kvm (read-write): {e}");
    }
}

/// A unique name for this test process: `shmvm-test-<pid>-<tag>`.
pub fn unique(tag: &str) -> String {
    format!("shmvm-test-{}-{tag}", std::process::id())
}

/// Removes a file when dropped (test leftovers under /dev/shm).
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a finished run produced.
#[derive(Debug)]
pub struct Run {
    pub pid: u32,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn new(pid: u32, out: Output) -> Run {
        Run {
            pid,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Values of `shmvm: KEY=...` lines, in order (the rest of the line).
    pub fn values(&self, key: &str) -> Vec<String> {
        let prefix = format!("shmvm: {key}=");
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    /// Rests of `shmvm: WORD ...` lines (for `e820 start=..`, `initrd size=..`).
    pub fn lines_of(&self, word: &str) -> Vec<String> {
        let prefix = format!("shmvm: {word} ");
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    pub fn value(&self, key: &str) -> Option<String> {
        self.values(key).into_iter().next()
    }

    /// The first line of stdout or stderr starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .find(|l| l.trim_start().starts_with(prefix))
    }

    /// Asserts the test kernel passed (exit 33, verdict=pass).
    pub fn assert_pass(&self) {
        assert_eq!(
            (self.code, self.value("verdict").as_deref()),
            (Some(33), Some("pass")),
            "guest did not pass\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// The statistics of a run with `--stats=json`; panics (the test
    /// fails) naming what is wrong with them.
    pub fn stats(&self) -> Stats {
        Stats::from_output(&self.stderr).unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", self.stderr))
    }
}

/// `shmvm ARGS` with no console input and both outputs captured.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(shmvm_bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// [`command`] with the test kernel, an exit device, the console on stdout,
/// and `args` appended.
pub fn with_testkernel(args: &[&str]) -> Command {
    // The test kernel's exit port (QEMU's isa-debug-exit default is 0x501).
    let mut c = command(&[
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-serial",
        "stdio",
    ]);
    c.arg("-kernel").arg(testkernel()).args(args);
    c
}

/// QEMU 10 on a q35 machine under KVM, 128 MiB, nothing but what the test
/// adds (SeaBIOS: qboot leaves q35's BARs unassigned), for tests that run
/// the same guest on QEMU's device and on shmvm's. The host CPU minus
/// arch-capabilities, which this host's KVM cannot give a nested guest.
pub fn qemu_q35() -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "q35",
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
    ])
    .args(["-m", "128M", "-nodefaults", "-no-user-config", "-nographic"]);
    c
}

/// Starts `cmd`; panics naming the binary if it cannot.
pub fn spawn(mut cmd: Command) -> Child {
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()))
}

/// Waits for `child` up to `timeout`, then kills it and fails the test with
/// its output so far. Both pipes are drained while waiting, so a chatty
/// guest cannot block on a full pipe.
pub fn wait(child: Child, timeout: Duration) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid (not reaped yet: the
            // thread's wait has not returned); no memory involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let r = Run::new(pid, rx.recv().expect("output after kill").expect("output"));
            panic!(
                "shmvm timed out after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                r.stdout, r.stderr
            );
        }
    };
    Run::new(pid, out.expect("collecting the child's output"))
}

/// Runs shmvm with `args` to completion (killed after `timeout`).
pub fn run(args: &[&str], timeout: Duration) -> Run {
    wait(spawn(command(args)), timeout)
}

/// Runs the test kernel with `args` ([`with_testkernel`]), 60 s at most.
pub fn run_testkernel(args: &[&str]) -> Run {
    wait(spawn(with_testkernel(args)), Duration::from_secs(60))
}

/// Runs `cmd` and asserts shmvm refused it: exit code 2, nothing on stdout,
/// exactly one line on stderr, starting `shmvm: ` and naming `names` (the
/// option, device or object at fault). Returns the run; the line is
/// `run.stderr.trim_end()`.
pub fn refused(cmd: Command, names: &str) -> Run {
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let r = wait(spawn(cmd), Duration::from_secs(20));
    assert_eq!(r.code, Some(2), "exit code for {what}: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr is not one line: {:?}",
        r.stderr
    );
    assert!(lines[0].starts_with("shmvm: "), "{what}: {}", lines[0]);
    assert!(
        lines[0].contains(names),
        "{what}: {:?} does not name {names}",
        lines[0]
    );
    assert!(r.stdout.is_empty(), "{what}: stdout {:?}", r.stdout);
    r
}

/// Names in /dev/shm that a shmvm process with this pid created (the memory
/// crate names its shm objects `shmvm-<pid>-<random>`), to check that
/// nothing was left behind. Pid-specific so parallel tests do not interfere.
pub fn leftover_shm(pid: u32) -> Vec<String> {
    let prefix = format!("shmvm-{pid}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh empty directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = std::process::id();
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("shmvm-test-{tag}-{n}-{k}"));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    /// Writes [`tiny_kernel`]`(code)` here as `tiny.elf`; returns its path.
    pub fn tiny_kernel(&self, code: &[u8]) -> String {
        let p = self.0.join("tiny.elf");
        std::fs::write(&p, tiny_kernel(code)).expect("write tiny kernel");
        p.to_str().expect("UTF-8 temp path").to_string()
    }

    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Guest-physical address where a [`tiny_kernel`] image is loaded.
pub const TINY_KERNEL_BASE: u64 = 0x10_0000;
/// File offset of the code in a [`tiny_kernel`]: ELF header, two program
/// headers, the PVH note.
const TINY_CODE_OFFSET: usize = 64 + 2 * 56 + 20;
/// Guest-physical address of the first code byte (the entry point), for
/// code that addresses its own data.
pub const TINY_KERNEL_CODE: u64 = TINY_KERNEL_BASE + TINY_CODE_OFFSET as u64;

/// Boots `code` as a [`tiny_kernel`] with 16 MiB of RAM and `args`, to
/// completion (killed after 20 s).
pub fn run_tiny(dir: &TempDir, code: &[u8], args: &[&str]) -> Run {
    let k = dir.tiny_kernel(code);
    let mut all = vec!["-kernel", k.as_str(), "-m", "16"];
    all.extend_from_slice(args);
    run(&all, Duration::from_secs(20))
}

/// A minimal ELF kernel: one PT_LOAD at 1 MiB holding `code`, entered at its
/// first byte, with a PVH note pointing at the same address. For tests of
/// VMM behaviour that the real test kernel never exercises (hangs, faults).
pub fn tiny_kernel(code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let note_len = 12 + 4 + 4;
    let code_off = note_off + note_len;
    debug_assert_eq!(code_off, TINY_CODE_OFFSET);
    let total = code_off + code.len();
    let entry = TINY_KERNEL_CODE;
    let mut f = Vec::with_capacity(total);
    // ELF header
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let phdr = |f: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64| {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes()); // R+X
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
    };
    phdr(&mut f, 1, 0, TINY_KERNEL_BASE, total as u64);
    phdr(
        &mut f,
        4,
        note_off as u64,
        TINY_KERNEL_BASE + note_off as u64,
        note_len as u64,
    );
    // Note: namesz 4 ("Xen\0"), descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&18u32.to_le_bytes());
    f.extend_from_slice(b"Xen\0");
    f.extend_from_slice(&(entry as u32).to_le_bytes());
    f.extend_from_slice(code);
    debug_assert_eq!(f.len(), total);
    f
}

/// kunit.py's x86_64 QEMU line (Linux tools/testing/kunit: kunit_kernel.py's
/// LinuxSourceTreeOperationsQemu.start() with qemu_configs/x86_64.py), the
/// arguments after the program name; `{kernel}` stands for the kernel.
/// Since Linux 6.x its x86_64 config adds [`KUNIT_X86_64_QBOOT`].
pub const KUNIT_X86_64: &[&str] = &[
    "-nodefaults",
    "-m",
    "1024",
    "-kernel",
    "{kernel}",
    "-append",
    "kunit.enable=1 console=ttyS0 kunit_shutdown=reboot",
    "-no-reboot",
    "-nographic",
    "-accel",
    "kvm",
    "-accel",
    "hvf",
    "-accel",
    "tcg",
    "-serial",
    "stdio",
];

/// The qboot firmware kunit's x86_64 config asks for
/// (`extra_qemu_params=['-bios', 'qboot.rom']`).
pub const KUNIT_X86_64_QBOOT: &[&str] = &["-bios", "qboot.rom"];

/// `a` then `b`, in a constant (command lines built from shared parts);
/// `N` must be their total length.
pub const fn concat_args<const N: usize>(
    a: &[&'static str],
    b: &[&'static str],
) -> [&'static str; N] {
    assert!(a.len() + b.len() == N, "N must be the total length");
    let mut out = [""; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[a.len() + j] = b[j];
        j += 1;
    }
    out
}
