//! The QEMU command-line contract against the tools themselves (issue 12):
//! command lines that virtme-ng generates now (`vng --dry-run`, the
//! virtme-ng `make deps` installs in build/venv), not copies of them;
//! `make install` with a PREFIX, run through its `qemu-system-x86_64`
//! symlink; and /dev/kvm missing or not accessible, whatever the host's
//! own /dev/kvm is like (a private mount namespace hides or replaces it).
//!
//! Needs build/venv (make deps), virtiofsd (make deps), /dev/kvm, the test
//! kernel, and root (mount namespaces): each test says so when one is
//! missing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shmvm_tests::harness::{
    KUNIT_X86_64, KUNIT_X86_64_QBOOT, Run, TempDir, repo_root, require_kvm, shmvm_bin, testkernel,
    wait,
};
use shmvm_tests::qsd::Qsd;

const T: Duration = Duration::from_secs(30);

fn venv_bin(name: &str) -> PathBuf {
    let p = repo_root().join("build/venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make deps` (virtme-ng 1.42 in build/venv)",
        p.display()
    );
    p
}

/// The QEMU command line `vng --dry-run` prints for the test kernel, as
/// argv (program first), split by Python's shlex as a shell would.
fn vng_dry_run(cwd: &Path, kernel: &Path, extra: &[&str]) -> Vec<String> {
    let path = format!(
        "{}:{}",
        venv_bin("vng").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(venv_bin("vng"))
        .args(["--dry-run", "--disable-microvm", "--run"])
        .arg(kernel)
        .arg("--qemu")
        .arg(shmvm_bin())
        .args(extra)
        .env("PATH", path)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "vng: {out:?}");
    let line = text.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    let split = Command::new(venv_bin("python3"))
        .args([
            "-c",
            "import shlex,sys; sys.stdout.write('\\0'.join(shlex.split(sys.stdin.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(line.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let argv: Vec<String> = String::from_utf8(split.stdout)
        .unwrap()
        .split('\0')
        .map(str::to_string)
        .collect();
    assert_eq!(
        Path::new(&argv[0]),
        shmvm_bin(),
        "vng did not call --qemu: {line}"
    );
    argv
}

fn run_argv(argv: &[String]) -> Run {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, T)
}

/// Rewrites the `path=` of `-chardev KIND,id=ID,...` to `path`.
fn set_chardev_path(argv: &mut [String], id: &str, path: &Path) {
    let arg = argv
        .iter_mut()
        .find(|a| a.split(',').any(|p| p == format!("id={id}")) && a.contains("path="))
        .unwrap_or_else(|| panic!("no -chardev id={id}"));
    *arg = arg
        .split(',')
        .map(|p| match p.strip_prefix("path=") {
            Some(_) => format!("path={}", path.display()),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
}

/// The report line `shmvm: verdict=...` in a console's text.
fn verdict(console: &str) -> Option<&str> {
    console
        .lines()
        .find_map(|l| l.strip_prefix("shmvm: verdict="))
}

/// virtme-ng 1.42's line, as generated now, with `--exec` (its console to
/// /dev/null, the command's output and exit code through virtio-serial
/// ports) and interactive (`-echr 1`, a mux'd stdio console with a
/// monitor, the kernel log on a virtconsole). The line as generated, vng's
/// i6300esb watchdog included, boots the test kernel with its root on
/// vhost-user-fs served by virtiofsd, as vng's own run would have it.
#[test]
fn kvm_virtme_ng_dry_run_lines_boot() {
    require_kvm();
    let kernel = testkernel();
    let d = TempDir::new("vng");
    for interactive in [false, true] {
        let extra: &[&str] = if interactive {
            &[]
        } else {
            &["--exec", "true"]
        };
        let mut argv = vng_dry_run(&d.0, &kernel, extra);
        assert_eq!(argv.iter().any(|a| a == "-echr"), interactive, "{argv:?}");
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "-device" && w[1] == "i6300esb,id=watchdog0"),
            "vng no longer adds its watchdog: {argv:?}"
        );
        let sock = d.0.join(format!("fs{}.sock", u8::from(interactive)));
        set_chardev_path(&mut argv, "charvirtfs5", &sock);
        let console = d.0.join("console");
        if !interactive {
            set_chardev_path(&mut argv, "console", &console);
            set_chardev_path(&mut argv, "ret", &d.0.join("virtme_ret"));
        }
        argv.extend(
            [
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
                "--stats=json",
            ]
            .map(String::from),
        );
        let share = TempDir::new("vng-root");
        let _fs = Qsd::virtiofsd(&share.0, &sock);
        let r = run_argv(&argv);
        let text = if interactive {
            r.stdout.clone()
        } else {
            std::fs::read_to_string(&console).unwrap_or_default()
        };
        assert_eq!(
            (r.code, verdict(&text)),
            (Some(33), Some("pass")),
            "interactive={interactive}: {r:?}\nconsole: {text}"
        );
        // The vhost-user-fs device (virtiofsd), every virtio-serial
        // function vng asked for, and the watchdog (never armed by this
        // guest) were there for the guest.
        let st = r.stats();
        let serial = argv.iter().filter(|a| *a == "virtio-serial-pci").count();
        assert_eq!(
            (st.vhost_user.len(), st.virtio.len()),
            (1, serial),
            "{st:?}"
        );
        assert_eq!(
            st.watchdog
                .iter()
                .map(|w| (w.name.as_str(), w.fired))
                .collect::<Vec<_>>(),
            [("i6300esb 'watchdog0'", 0)],
            "{st:?}"
        );
    }
}

/// `make install` puts shmvm, its man page and completions under PREFIX
/// (`QEMU_SYMLINK=1`: also bin/qemu-system-x86_64 -> shmvm), the installed
/// symlink boots kunit's command line, and `make uninstall` takes it all
/// away. Make's own install recipe runs, on the binaries this test run
/// built (`-o deps -o shmvm`: no rebuild inside a test).
#[test]
fn kvm_make_install_with_prefix_and_the_qemu_symlink() {
    require_kvm();
    let d = TempDir::new("install");
    let prefix = d.0.join("usr");
    let gen_bin = shmvm_bin().with_file_name("shmvm-gen");
    assert!(
        gen_bin.exists(),
        "{}: cargo build --release -p vmm",
        gen_bin.display()
    );
    let make = |target: &str| {
        let out = Command::new("make")
            .args(["-s", "-o", "deps", "-o", "shmvm", target, "QEMU_SYMLINK=1"])
            .arg(format!("PREFIX={}", prefix.display()))
            .arg(format!("SHMVM={}", shmvm_bin().display()))
            .arg(format!("GEN={}", gen_bin.display()))
            .arg(format!("GEN_DIR={}", d.0.join("gen").display()))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "make {target}: {out:?}");
    };
    make("install");
    let files = [
        "bin/shmvm",
        "bin/qemu-system-x86_64",
        "share/man/man1/shmvm.1",
        "share/bash-completion/completions/shmvm",
        "share/zsh/site-functions/_shmvm",
        "share/fish/vendor_completions.d/shmvm.fish",
    ];
    for f in files {
        let p = prefix.join(f);
        assert!(p.exists(), "make install did not install {f}");
    }
    assert_eq!(
        std::fs::read_link(prefix.join("bin/qemu-system-x86_64")).unwrap(),
        Path::new("shmvm")
    );
    let man = std::fs::read_to_string(prefix.join("share/man/man1/shmvm.1")).unwrap();
    assert!(
        man.contains(".TH shmvm 1") && man.contains("-drive"),
        "{man}"
    );
    let bash =
        std::fs::read_to_string(prefix.join("share/bash-completion/completions/shmvm")).unwrap();
    assert!(
        bash.contains("--kernel") && bash.contains("complete"),
        "{bash}"
    );

    // kunit.py's line (Linux tools/testing/kunit, kunit_kernel.py with
    // qemu_configs/x86_64.py), through the installed qemu-system-x86_64.
    let k = testkernel();
    let k = k.to_str().expect("a UTF-8 path");
    let child = Command::new(prefix.join("bin/qemu-system-x86_64"))
        .args(
            KUNIT_X86_64
                .iter()
                .chain(KUNIT_X86_64_QBOOT)
                .map(|a| a.replace("{kernel}", k)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait(child, T);
    assert_eq!(
        (r.code, r.value("verdict").as_deref()),
        (Some(0), Some("pass")),
        "{r:?}"
    );
    let v = Command::new(prefix.join("bin/qemu-system-x86_64"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("(git "),
        "{v:?}"
    );

    make("uninstall");
    for f in files {
        assert!(!prefix.join(f).exists(), "make uninstall left {f}");
    }
}

/// Runs shmvm on a tiny kernel inside a private mount namespace after
/// `setup` (a shell snippet; `$D` is a scratch directory), optionally as
/// `nobody`.
fn in_mount_namespace(setup: &str, as_nobody: bool) -> std::process::Output {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (a private mount namespace hides /dev/kvm)"
    );
    let d = TempDir::new("nokvm");
    let k = d.tiny_kernel(&[0xeb, 0xfe]);
    let drop_to = if as_nobody {
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" \"$@\""
    } else {
        "exec \"$0\" \"$@\""
    };
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{setup}\n{drop_to}"))
        .arg(shmvm_bin())
        .args(["-kernel", &k])
        .env("D", &d.0)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// /dev/kvm missing, or there but not accessible (a 0600 root node, shmvm
/// run as nobody): exit 2 and one line naming the device and the usual
/// fix, on any host (the host's own /dev/kvm mode does not matter).
#[test]
fn dev_kvm_missing_or_inaccessible_exits_2_naming_the_fix() {
    for (what, setup, nobody, fix) in [
        (
            "missing",
            "mount -t tmpfs -o size=64k shmvm-test /dev",
            false,
            "KVM is not available: load kvm_intel or kvm_amd",
        ),
        (
            "not accessible",
            "mknod \"$D/kvm\" c 10 232; chmod 0600 \"$D/kvm\"; mount --bind \"$D/kvm\" /dev/kvm",
            true,
            "add your user to the 'kvm' group",
        ),
    ] {
        let out = in_mount_namespace(setup, nobody);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with("shmvm: /dev/kvm: ") && err.contains(fix),
            "{what}: {err}"
        );
        assert!(out.stdout.is_empty(), "{what}: {out:?}");
    }
}
