//! Every command-line and configuration error: exit code 2, exactly one line
//! on stderr naming the option, nothing on stdout, and nothing left behind
//! in /dev/shm or the temp directory. Cases that get as far as creating a
//! backend before failing need /dev/kvm (their names say so).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use shmvm_tests::harness::{TempDir, command, leftover_shm, refused, require_kvm, run};

const T: Duration = Duration::from_secs(20);

fn check(args: &[&str], option: &str, dir: &TempDir) {
    let tmp_before = dir.entries();
    let r = refused(command(args), option);
    assert_eq!(
        leftover_shm(r.pid),
        Vec::<String>::new(),
        "{args:?}: /dev/shm changed"
    );
    assert_eq!(dir.entries(), tmp_before, "{args:?}: temp dir changed");
}

/// `jmp .`
const HANG: &[u8] = &[0xeb, 0xfe];

#[test]
fn usage_errors_exit_2_with_one_line() {
    let d = TempDir::new("cli");
    let k = d.tiny_kernel(HANG);
    let k = k.as_str();
    let missing = d.0.join("missing");
    let missing = missing.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "-kernel"),
        (vec!["-kernel", k, "--frobnicate"], "-frobnicate"),
        (vec!["-kernel", k, "-m", "lots"], "-m"),
        (vec!["-kernel", k, "-m", "1"], "-m"),
        (vec!["-kernel", k, "-smp", "0"], "-smp"),
        (vec!["-kernel", k, "-smp", "999"], "-smp"),
        (vec!["-kernel", k, "-serial", "pty"], "-serial"),
        (vec!["-kernel", k, "-device", "e1000"], "-device"),
        (
            vec!["-kernel", k, "-device", "i6300esb,addr=0x40"],
            "-device: i6300esb: addr='0x40'",
        ),
        (
            vec!["-kernel", k, "-watchdog-action", "explode"],
            "-watchdog-action explode: not a watchdog action",
        ),
        (
            vec!["-kernel", k, "-action", "watchdog=reboot"],
            "-action watchdog=reboot",
        ),
        (
            vec!["-kernel", k, "-action", "reboot=reset"],
            "-action reboot=reset: reboot=reset: not supported",
        ),
        (
            vec!["-kernel", k, "-device", "isa-debug-exit,iobase=zz"],
            "-device",
        ),
        (
            vec!["-kernel", k, "-device", "isa-debug-exit,iosize=8"],
            "-device",
        ),
        (
            vec!["-kernel", k, "-machine", "memory-backend=nope"],
            "-machine",
        ),
        (vec!["-kernel", k, "-machine", "accel=tcg"], "-machine"),
        (
            vec!["-kernel", k, "-object", "memory-backend-ram,size=64M"],
            "-object",
        ),
        (
            vec!["-kernel", k, "-object", "memory-backend-foo,id=m,size=64M"],
            "-object",
        ),
        (
            vec!["-kernel", k, "-object", "memory-backend-ram,id=m,size=64Q"],
            "-object",
        ),
        (
            vec![
                "-kernel",
                k,
                "-object",
                "memory-backend-ram,id=m,size=64M",
                "-object",
                "memory-backend-shm,id=m,size=64M",
            ],
            "-object",
        ),
        (
            vec![
                "-kernel",
                k,
                "-m",
                "128",
                "-object",
                "memory-backend-ram,id=m,size=64M",
                "-machine",
                "memory-backend=m",
            ],
            "-m",
        ),
        (vec!["-kernel", k, "--boot", "efi"], "-boot"),
        (vec!["-kernel", missing], "-kernel"),
        (vec!["-kernel", "/etc/hostname"], "-kernel"),
        (vec!["-kernel", k, "-initrd", missing], "-initrd"),
        (
            vec!["-kernel", k, "-chardev", "socket,id=c,path=/tmp/x"],
            "-chardev",
        ),
    ];
    for (args, option) in cases {
        check(&args, option, &d);
    }
}

#[test]
fn kvm_config_errors_after_backend_creation_leave_nothing() {
    require_kvm();
    let d = TempDir::new("cfg");
    let k = d.tiny_kernel(HANG);
    let k = k.as_str();
    let big = d.0.join("big.initrd");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let nodir = d.0.join("nodir/ram.img");
    let file_obj = format!(
        "memory-backend-file,id=m,size=64M,mem-path={}",
        nodir.display()
    );
    let shm = "memory-backend-shm,id=m,size=32M";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "-kernel",
                k,
                "-object",
                &file_obj,
                "-machine",
                "memory-backend=m",
            ],
            "-object",
        ),
        (
            vec![
                "-kernel",
                k,
                "-object",
                "memory-backend-shm,id=m,size=64M,share=off",
                "-machine",
                "memory-backend=m",
            ],
            "-object",
        ),
        // Fails in the loader, after the shm backend exists: it must be gone.
        (
            vec![
                "-kernel",
                k,
                "-object",
                shm,
                "-machine",
                "memory-backend=m",
                "-initrd",
                big.to_str().unwrap(),
            ],
            "-initrd",
        ),
        (
            vec![
                "-kernel",
                k,
                "-object",
                shm,
                "-machine",
                "memory-backend=m",
                "-device",
                "isa-debug-exit,iobase=0x3f8",
            ],
            "-device isa-debug-exit at port 0x3f8",
        ),
    ];
    for (args, option) in cases {
        check(&args, option, &d);
    }
    let _ = std::fs::remove_file(&big);
}

#[test]
fn help_shows_examples_and_exits_0() {
    let r = run(&["--help"], T);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("Examples:") && r.stdout.contains("-object memory-backend-shm"),
        "{}",
        r.stdout
    );
}
