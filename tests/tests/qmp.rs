//! The QMP monitor (`-qmp`, `-mon`), driven by QEMU's own client library
//! `qemu.qmp` (installed in build/venv by `make deps`): every command
//! compared with QEMU 10 running the same waiting kernel, and abuse (bad
//! JSON, huge lines, a client that never reads, 100 reconnects) that must
//! leave the VM and the other clients unaffected. Needs /dev/kvm.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shmvm_tests::vm::{self, TempDir};

/// `cli; hlt; jmp hlt`: waits forever without using the host CPU, so a
/// monitor has all the time it needs (under shmvm and QEMU alike).
const WAITING_KERNEL: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd];

/// The venv's python with qemu.qmp; fails with the fix when missing.
fn python() -> PathBuf {
    let p = vm::repo_root().join("build/venv/bin/python3");
    let ok = Command::new(&p)
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import qemu.qmp: run `make deps` (scripts/deps.sh installs it)",
        p.display()
    );
    p
}

fn check(mode: &str) {
    vm::require_kvm();
    let py = python();
    let dir = TempDir::new(&format!("qmp-{mode}"));
    let kernel = dir.tiny_kernel(WAITING_KERNEL);
    let script = vm::repo_root().join("tests/qmp/qmp_check.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(mode)
        .arg("--shmvm")
        .arg(vm::shmvm_bin())
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .expect("run tests/qmp/qmp_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PASS"),
        "qmp_check.py {mode} failed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn kvm_qmp_commands_match_qemu() {
    check("compare");
}

#[test]
fn kvm_qmp_survives_bad_clients() {
    check("abuse");
}

/// Option errors: one line naming the option, exit 2, nothing left behind.
#[test]
fn qmp_option_errors() {
    let dir = TempDir::new("qmp-errors");
    let kernel = dir.tiny_kernel(WAITING_KERNEL);
    let file = dir.0.join("not-a-socket");
    std::fs::write(&file, b"keep me").expect("write");
    let file_spec = format!("unix:{},server=on,wait=off", file.display());
    let cases: &[(&[&str], &str)] = &[
        (&["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"], "-qmp"),
        (&["-qmp", "unix:/tmp/x.sock,server=on"], "-qmp"),
        (&["-mon", "chardev=nope,mode=control"], "-mon"),
        (
            &[
                "-chardev",
                "socket,id=m,path=/tmp/m.sock,server=on,wait=off",
            ],
            "-chardev",
        ),
        (&["-qmp", &file_spec], "-qmp"),
        (
            &["-qmp", "unix:/nonexistent/dir/q.sock,server,nowait"],
            "-qmp",
        ),
    ];
    for (args, option) in cases {
        let mut all = vec!["-kernel", kernel.as_str(), "-m", "16", "-serial", "none"];
        all.extend_from_slice(args);
        let r = vm::run(&all, Duration::from_secs(10));
        let line = r.stderr.trim();
        assert_eq!(r.code, Some(2), "{args:?}: {line}");
        assert!(
            line.lines().count() == 1 && line.contains(option),
            "{args:?}: {line:?} does not name {option} on one line"
        );
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}
