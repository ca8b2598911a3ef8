//! The QEMU command-line contract, end to end (issue 12): real command lines
//! from the tools that generate them either boot the test kernel with the
//! same meaning or are refused in one line naming the option; every no-op
//! option changes nothing the guest sees; every refused option says the
//! shmvm way; isa-debug-exit behaves as QEMU's, side by side with QEMU;
//! every command in the README's "Running a VM" section runs; and the
//! binary works when started as `qemu-system-x86_64`.
//!
//! Needs /dev/kvm, `build/guest/testkernel` and, for the side-by-side test,
//! `qemu-system-x86_64` (make deps) with qboot; each test says so when a
//! prerequisite is missing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shmvm_tests::harness::{
    KUNIT_X86_64, KUNIT_X86_64_QBOOT, Run, TempDir, concat_args, repo_root, require_kvm, run,
    shmvm_bin, testkernel, wait,
};
use shmvm_tests::qsd::Qsd;

const T: Duration = Duration::from_secs(30);

/// The test kernel's report lines (`shmvm: key=value`), which say what the
/// VMM gave the guest.
fn report(r: &Run) -> Vec<String> {
    r.stdout
        .lines()
        .filter(|l| l.starts_with("shmvm: "))
        .map(str::to_string)
        .collect()
}

/// A test kernel run passed: exit 33 through isa-debug-exit at 0xf4, or 0
/// when no exit device is on that port (it then resets), verdict=pass.
fn passed(r: &Run) -> bool {
    matches!(r.code, Some(0 | 33)) && r.value("verdict").as_deref() == Some("pass")
}

fn refusal(r: &Run) -> String {
    assert_eq!(r.code, Some(2), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", r.stderr);
    assert!(r.stdout.is_empty(), "{r:?}");
    lines[0].to_string()
}

/// What a corpus line must do under shmvm.
enum Expect {
    /// Boot the test kernel and pass.
    Boots,
    /// Be refused: the one stderr line starts with this.
    Refused(&'static str),
}

struct Line {
    /// Where the line comes from.
    source: &'static str,
    /// The arguments after the program name; `{kernel}`, `{dir}`, `{sock}`
    /// stand for the test kernel, a temp directory and a back-end socket.
    args: &'static [&'static str],
    expect: Expect,
}

const CORPUS: &[Line] = &[
    Line {
        source: "kunit.py run --arch=x86_64 (Linux tools/testing/kunit)",
        args: KUNIT_X86_64,
        expect: Expect::Boots,
    },
    Line {
        source: "kunit.py run --arch=x86_64, qboot (Linux tools/testing/kunit)",
        args: &concat_args::<19>(KUNIT_X86_64, KUNIT_X86_64_QBOOT),
        expect: Expect::Boots,
    },
    Line {
        // virtme-ng 1.42 without virtiofsd in PATH (9p root): `vng --dry-run -r ./bzImage -- true`, virtme-ng 1.42 (PyPI), trimmed after the first
        // refused option (the rest is virtio-serial ports and the kernel).
        source: "virtme-ng 1.42 vng --dry-run",
        args: &[
            "-name",
            "virtme-ng",
            "-m",
            "1G",
            "-fsdev",
            "local,id=virtfs5,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=virtfs5,mount_tag=/dev/root",
            "-machine",
            "accel=kvm:tcg",
            "-device",
            "i6300esb,id=watchdog0",
            "-cpu",
            "host,topoext=on",
            "-parallel",
            "none",
            "-net",
            "none",
            "-smp",
            "2",
            "-vga",
            "none",
            "-display",
            "none",
            "-serial",
            "chardev:console",
            "-chardev",
            "file,id=console,path=/dev/null",
            "-chardev",
            "stdio,id=stdin,signal=on,mux=off",
            "-no-reboot",
            "-kernel",
            "{kernel}",
        ],
        expect: Expect::Refused("shmvm: -fsdev: not supported; shmvm has no 9p"),
    },
    Line {
        // syzkaller vm/qemu/qemu.go, linux/amd64: boot() with an image, default
        // network device e1000 and snapshot on.
        source: "syzkaller vm/qemu (linux/amd64)",
        args: &[
            "-m",
            "2048",
            "-smp",
            "2",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-enable-kvm",
            "-cpu",
            "host,migratable=off",
            "-device",
            "e1000,netdev=net0",
            "-netdev",
            "user,id=net0,host=10.0.2.10,hostfwd=tcp::10022-:22",
            "-hda",
            "{dir}/image",
            "-snapshot",
            "-kernel",
            "{kernel}",
            "-append",
            "earlyprintk=serial oops=panic panic=1 root=/dev/sda console=ttyS0",
        ],
        expect: Expect::Refused("shmvm: -netdev: not supported; shmvm has no network devices"),
    },
    Line {
        // QEMU docs/system/devices/ivshmem.rst, "-object memory-backend-file,size=1M,share,
        // mem-path=/dev/shm/ivshmem,id=hostmem -device ivshmem-plain,memdev=hostmem"
        // (the file in a temp directory).
        source: "QEMU docs/system/devices/ivshmem.rst",
        args: &[
            "-kernel",
            "{kernel}",
            "-object",
            "memory-backend-file,size=1M,share,mem-path={dir}/ivshmem,id=hostmem",
            "-device",
            "ivshmem-plain,memdev=hostmem",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ],
        expect: Expect::Boots,
    },
    Line {
        // QEMU docs/system/devices/vhost-user.rst example (-m 4096, memory-backend-memfd
        // size=4G share=on, -numa node,memdev=mem), sized down to 256M, with
        // qemu-storage-daemon as the vhost-user-blk back-end.
        source: "QEMU docs/system/devices/vhost-user.rst",
        args: &[
            "-kernel",
            "{kernel}",
            "-m",
            "256",
            "-chardev",
            "socket,id=ba1,path={sock}",
            "-device",
            "vhost-user-blk-pci,chardev=ba1",
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on",
            "-numa",
            "node,memdev=mem",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ],
        expect: Expect::Boots,
    },
    Line {
        // guest/testkernel/README.md, the QEMU microvm line (without -initrd).
        source: "guest/testkernel/README.md (microvm)",
        args: &[
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-bios",
            "/usr/share/qemu/qboot.rom",
            "-m",
            "128M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
            "{kernel}",
            "-smp",
            "2",
            "-append",
            "shmvm.test=boot,memtest",
        ],
        expect: Expect::Boots,
    },
    Line {
        // guest/testkernel/README.md, the QEMU q35 ivshmem line (file in a temp directory).
        source: "guest/testkernel/README.md (q35 ivshmem)",
        args: &[
            "-M",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-m",
            "128M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
            "{kernel}",
            "-object",
            "memory-backend-file,id=hm,mem-path={dir}/x,size=1M,share=on",
            "-device",
            "ivshmem-plain,memdev=hm",
        ],
        expect: Expect::Boots,
    },
    Line {
        // A common hand-written kernel-debugging line (disk image, gdb stub).
        source: "typical kernel debugging script (-hda, -s)",
        args: &[
            "-kernel",
            "{kernel}",
            "-hda",
            "rootfs.ext4",
            "-append",
            "root=/dev/sda console=ttyS0",
            "-nographic",
            "-no-reboot",
            "-enable-kvm",
            "-cpu",
            "host",
            "-smp",
            "2",
            "-s",
            "-m",
            "1024M",
        ],
        expect: Expect::Refused(
            "shmvm: -hda: not supported; use -drive file=IMG,if=virtio,format=raw, or -device vhost-user-blk-pci",
        ),
    },
];

#[test]
fn kvm_corpus_of_real_qemu_command_lines() {
    require_kvm();
    let kernel = testkernel();
    let dir = TempDir::new("corpus");
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    let mut qsd = None;
    for line in CORPUS {
        let sock = dir.0.join("vhost.sock");
        let args: Vec<String> = line
            .args
            .iter()
            .map(|a| {
                a.replace("{kernel}", kernel.to_str().unwrap())
                    .replace("{dir}", dir.0.to_str().unwrap())
                    .replace("{sock}", sock.to_str().unwrap())
            })
            .collect();
        if line.args.iter().any(|a| a.contains("{sock}")) && qsd.is_none() {
            qsd = Some(Qsd::start(&img, &sock));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&argv, T);
        match line.expect {
            Expect::Boots => assert!(passed(&r), "{}: did not boot: {r:?}", line.source),
            Expect::Refused(want) => {
                let got = refusal(&r);
                assert!(got.starts_with(want), "{}: {got:?}", line.source);
            }
        }
    }
}

/// The README's option table rows of one class: (option, value) as written.
fn readme_rows(class: &str) -> Vec<(String, Option<String>, String)> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    readme
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells.get(1) == Some(&class)).then(|| {
                let opt = cells[0].trim_matches('`').replace("\\|", "|");
                let (name, value) = match opt.split_once(' ') {
                    Some((n, v)) => (
                        n.to_string(),
                        Some(v.split('[').next().unwrap().to_string()),
                    ),
                    None => (opt.clone(), None),
                };
                (name, value, cells[2].replace("\\|", "|"))
            })
        })
        .collect()
}

#[test]
fn kvm_every_noop_option_changes_nothing_the_guest_sees() {
    require_kvm();
    let kernel = testkernel();
    let k = kernel.to_str().unwrap();
    let base_args = [
        "-kernel",
        k,
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ];
    let base = run(&base_args, T);
    assert!(passed(&base), "{base:?}");
    let rows = readme_rows("2: no-op");
    assert!(rows.len() >= 15, "{rows:?}");
    for (name, value, _) in rows {
        let mut args: Vec<&str> = base_args.to_vec();
        args.push(&name);
        if let Some(v) = &value {
            args.push(v);
        }
        let r = run(&args, T);
        assert!(passed(&r), "{name} {value:?}: {r:?}");
        assert_eq!(
            report(&r),
            report(&base),
            "{name} {value:?} changed the guest's view"
        );
        // And -v says it was a no-op.
        args.push("-v");
        let r = run(&args, T);
        assert!(
            r.stderr.contains(name.as_str()) && r.stderr.contains("no-op"),
            "{name}: -v does not say so: {}",
            r.stderr
        );
    }
    // No-op values of class-1 options and other no-op spellings: the
    // machine types whose devices shmvm provides, -cpu host's feature
    // forms, accelerator fallbacks, QEMU's boot order, the default escape.
    for extra in [
        &["-M", "q35"][..],
        &["-M", "pc"],
        &["-M", "microvm"],
        &["-machine", "q35,accel=kvm"],
        &["-machine", "accel=kvm:tcg"],
        &["-cpu", "host,-arch-capabilities"],
        &["-cpu", "host,topoext=on"],
        &["-cpu", "max"],
        &["-accel", "kvm", "-accel", "tcg"],
        &["-boot", "c"],
        &["-echr", "0x01"],
    ] {
        let mut args: Vec<&str> = base_args.to_vec();
        args.extend_from_slice(extra);
        let r = run(&args, T);
        assert!(passed(&r), "{extra:?}: {r:?}");
        assert_eq!(
            report(&r),
            report(&base),
            "{extra:?} changed the guest's view"
        );
        // -v says so (the configuration layer's notes too: logging is up
        // before the command line is parsed).
        args.push("-v");
        let r = run(&args, T);
        let first = extra[1].split(',').next().unwrap();
        assert!(
            r.stderr
                .lines()
                .any(|l| l.contains(first) && l.contains("no-op")),
            "{extra:?}: -v does not say so: {}",
            r.stderr
        );
    }
}

#[test]
fn every_refused_option_names_itself_and_the_shmvm_way() {
    let rows = readme_rows("3: refused");
    assert!(rows.len() >= 30, "{rows:?}");
    for (name, value, text) in rows {
        let mut args = vec!["-kernel", "/nonexistent", name.as_str()];
        if let Some(v) = &value {
            args.push(v);
        }
        let r = run(&args, T);
        assert_eq!(refusal(&r), format!("shmvm: {name}: {text}"), "{args:?}");
    }
    // Other values of conditional no-ops, and options QEMU does not have.
    for (args, want) in [
        (
            &["-display", "gtk"][..],
            "shmvm: -display gtk: not supported; shmvm has no display",
        ),
        (
            &["-accel", "tcg"],
            "shmvm: -accel tcg: not supported; shmvm runs on KVM only",
        ),
        (&["-cpu", "qemu64"], "shmvm: -cpu qemu64: not supported;"),
        (
            &["-monitor", "stdio"],
            "shmvm: -monitor stdio: not supported; shmvm has no monitor",
        ),
        (
            &["-echr", "0x14"],
            "shmvm: -echr 0x14: not supported; the mux escape key is always Ctrl-A",
        ),
        (
            &["-nographc"],
            "shmvm: -nographc: unknown option (did you mean -nographic?)",
        ),
        (
            &["disk.img"],
            "shmvm: 'disk.img': a bare argument is a disk image",
        ),
    ] {
        let mut a = vec!["-kernel", "/nonexistent"];
        a.extend_from_slice(args);
        let got = refusal(&run(&a, T));
        assert!(got.starts_with(want), "{args:?}: {got}");
    }
}

#[test]
fn hda_never_prints_help_and_exits_0() {
    // Any option starting with -h used to print the help and exit 0.
    for args in [&["-hda", "x.img"][..], &["-hdb", "x"], &["-help-me"]] {
        let r = run(args, T);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}");
    }
}

/// `mov dx, 0x501; mov al, 0x10; out dx, al; jmp .` (32-bit PVH entry).
const EXIT_0X501: &[u8] = &[0x66, 0xba, 0x01, 0x05, 0xb0, 0x10, 0xee, 0xeb, 0xfe];

#[test]
fn kvm_isa_debug_exit_default_port_side_by_side_with_qemu() {
    require_kvm();
    let d = TempDir::new("debugexit");
    let k = d.tiny_kernel(EXIT_0X501);
    let qboot = Path::new("/usr/share/qemu/qboot.rom");
    assert!(
        qboot.exists(),
        "{} is missing: run `make deps` (qemu-system-x86 from bookworm-backports)",
        qboot.display()
    );
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-bios",
            "/usr/share/qemu/qboot.rom",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-kernel",
            &k,
            "-device",
            "isa-debug-exit",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("qemu-system-x86_64 (make deps): {e}"));
    let q = wait(qemu, T);
    // The same line, as QEMU users write it, under shmvm.
    let s = run(
        &[
            "-M",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-bios",
            "/usr/share/qemu/qboot.rom",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-kernel",
            &k,
            "-device",
            "isa-debug-exit",
        ],
        T,
    );
    assert_eq!(
        (q.code, s.code),
        (Some(33), Some(33)),
        "qemu {q:?}\nshmvm {s:?}"
    );
}

#[test]
fn kvm_every_readme_command_runs() {
    require_kvm();
    testkernel();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme.find("## Running a VM").unwrap();
    let end = readme[start..].find("### Options").unwrap() + start;
    let commands: Vec<&str> = readme[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("    shmvm "))
        .collect();
    assert!(commands.len() >= 5, "{commands:?}");
    for c in commands {
        let args: Vec<&str> = c.split_whitespace().collect();
        let out = Command::new(shmvm_bin())
            .args(&args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let r = wait(out, T);
        if args.iter().any(|a| a.ends_with("help")) {
            assert!(r.code == Some(0) && !r.stdout.is_empty(), "{c}: {r:?}");
        } else {
            assert!(passed(&r), "{c}: {r:?}");
        }
    }
}

#[test]
fn kvm_works_as_qemu_system_x86_64_through_a_symlink() {
    require_kvm();
    let d = TempDir::new("symlink");
    let link: PathBuf = d.0.join("qemu-system-x86_64");
    std::os::unix::fs::symlink(shmvm_bin(), &link).unwrap();
    let k = testkernel();
    let child = Command::new(&link)
        .args(["-nodefaults", "-m", "1024", "-kernel"])
        .arg(&k)
        .args([
            "-append",
            "console=ttyS0",
            "-no-reboot",
            "-nographic",
            "-accel",
            "kvm",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait(child, T);
    assert!(passed(&r), "{r:?}");
    let v = Command::new(&link).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("(git "),
        "{v:?}"
    );
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(shmvm_bin()).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("shmvm "), "{text}");
    let commit = text
        .split("(git ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_default();
    assert!(!commit.is_empty(), "no commit in {text:?}");
    // In a git checkout the commit is this one's HEAD or one before it (the
    // binary may predate a commit that did not touch it): a real commit of
    // this history, never a made-up or foreign name.
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .map(|o| o.status.success())
    };
    if git(&["rev-parse", "--git-dir"]) == Some(true) {
        assert_eq!(
            git(&["merge-base", "--is-ancestor", commit, "HEAD"]),
            Some(true),
            "--version names {commit}, which is not HEAD or an ancestor of it"
        );
    }
}

/// Reads one byte from COM1 and exits through isa-debug-exit at 0xf4 with
/// it: `1: mov dx,0x3fd; in al,dx; test al,1; jz 1b; mov dx,0x3f8;
/// in al,dx; out 0xf4,al; jmp .`
const ECHO_BYTE_TO_EXIT: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xf7, 0x66, 0xba, 0xf8, 0x03, 0xec, 0xe6, 0xf4,
    0xeb, 0xfe,
];

/// Runs a tiny kernel with `args`, feeding `input` on stdin.
fn run_with_input(code: &[u8], args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    let d = TempDir::new("mux");
    let k = d.tiny_kernel(code);
    let mut child = Command::new(shmvm_bin())
        .args([
            "-kernel",
            &k,
            "-m",
            "16",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    // Keep stdin open until the VM ends (EOF is not a quit).
    let r = wait(child, T);
    drop(stdin);
    r
}

#[test]
fn kvm_mon_stdio_ctrl_a_x_quits_and_ctrl_a_h_lists_the_keys() {
    require_kvm();
    for args in [
        &["-serial", "mon:stdio"][..],
        &[
            "-chardev",
            "stdio,mux=on,id=con",
            "-serial",
            "chardev:con",
            "-mon",
            "chardev=con",
        ],
        &["-nographic"],
    ] {
        // jmp .: only C-a x can end it.
        let r = run_with_input(&[0xeb, 0xfe], args, b"\x01h\x01c\x01x");
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        assert!(
            r.stdout.contains("C-a x    exit emulator"),
            "{args:?}: {r:?}"
        );
        assert!(r.stdout.contains("no monitor"), "{args:?}: {r:?}");
        assert!(r.stdout.contains("terminated"), "{args:?}: {r:?}");
    }
}

#[test]
fn kvm_mon_stdio_passes_ctrl_a_ctrl_a_and_plain_bytes_to_the_guest() {
    require_kvm();
    // C-a C-a: one C-a (1) reaches the guest: exit (1 << 1) | 1.
    let r = run_with_input(ECHO_BYTE_TO_EXIT, &["-serial", "mon:stdio"], b"\x01\x01");
    assert_eq!(r.code, Some(3), "{r:?}");
    // An unknown key after C-a is dropped; the next byte goes through.
    let r = run_with_input(ECHO_BYTE_TO_EXIT, &["-serial", "mon:stdio"], b"\x01zA");
    assert_eq!(r.code, Some((0x41 << 1) | 1), "{r:?}");
    // Without a mux, C-a is an ordinary byte.
    let r = run_with_input(ECHO_BYTE_TO_EXIT, &["-serial", "stdio"], b"\x01");
    assert_eq!(r.code, Some(3), "{r:?}");
}

#[test]
fn man_page_and_completions_come_from_the_clap_definition() {
    let gen_bin = shmvm_bin().with_file_name("shmvm-gen");
    assert!(
        gen_bin.exists(),
        "{} is missing: cargo build --release -p vmm",
        gen_bin.display()
    );
    let man = Command::new(&gen_bin).arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(man.contains(".TH shmvm 1"), "{man}");
    assert!(
        man.contains("QEMU OPTIONS BY CLASS") && man.contains("-drive"),
        "{man}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let c = Command::new(&gen_bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&c.stdout);
        assert!(
            c.status.success() && text.contains("kernel") && text.contains("vhost-user-blk"),
            "{shell}: {text}"
        );
    }
    let bad = Command::new(&gen_bin)
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn kvm_pidfile_holds_the_pid_while_running_and_goes_at_exit() {
    use std::io::Write;
    require_kvm();
    let d = TempDir::new("pidfile");
    let k = d.tiny_kernel(&[0xeb, 0xfe]);
    let pidfile = d.0.join("vm.pid");
    let mut child = Command::new(shmvm_bin())
        .args([
            "-kernel",
            &k,
            "-m",
            "16",
            "-serial",
            "mon:stdio",
            "-pidfile",
        ])
        .arg(&pidfile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&pidfile)
            && t.ends_with('\n')
        {
            break t;
        }
        assert!(t0.elapsed() < T, "no pid file");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(text.trim(), child.id().to_string());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\x01x").unwrap();
    let r = wait(child, T);
    drop(stdin);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!pidfile.exists(), "pid file left behind");
}
