//! vhost-user-blk-pci through the real binary.
//!
//! - Configuration errors (private guest RAM, chardev mistakes): one line,
//!   exit 2, before any VM exists; no /dev/kvm needed.
//! - `kvm_*`: a VM with the device wired to a real `qemu-storage-daemon`
//!   back-end (needs /dev/kvm and qemu-storage-daemon). The guest is a tiny
//!   kernel that polls the serial port and resets the machine when the test
//!   types a byte, so the test decides when the guest "powers off". Guest
//!   I/O through the device needs a Linux guest: that is the lab's job.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmvm_tests::harness::{Run, TempDir, require_kvm, run, shmvm_bin, wait};
use shmvm_tests::qsd::Qsd;

const T: Duration = Duration::from_secs(30);

fn refused(args: &[&str]) -> String {
    let r = run(args, T);
    assert_eq!(r.code, Some(2), "exit code for {args:?}: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {args:?}: {:?}", r.stderr);
    lines[0].to_string()
}

#[test]
fn private_ram_is_refused_naming_the_backend() {
    let e = refused(&[
        "-kernel",
        "/nonexistent",
        "-m",
        "64",
        "-chardev",
        "socket,id=c0,path=/tmp/none.sock",
        "-device",
        "vhost-user-blk-pci,chardev=c0",
    ]);
    assert_eq!(
        e,
        "shmvm: vhost-user-blk-pci #0 (/tmp/none.sock): guest RAM backend 'pc.ram' \
         (memory-backend-ram) is private (share=off): a vhost-user back-end maps guest RAM \
         through its file descriptor; use memory-backend-memfd or memory-backend-shm, or share=on"
    );
    let e = refused(&[
        "-kernel",
        "/nonexistent",
        "-object",
        "memory-backend-memfd,id=m,size=64M,share=off",
        "-machine",
        "memory-backend=m",
        "--vhost-user-blk",
        "socket=/tmp/none.sock",
    ]);
    assert!(
        e.contains("guest RAM backend 'm' (memory-backend-memfd) is private"),
        "{e}"
    );
}

#[test]
fn chardev_mistakes_are_one_line() {
    let shared = [
        "-object",
        "memory-backend-shm,id=m,size=64M",
        "-machine",
        "memory-backend=m",
    ];
    let with = |extra: &[&str]| {
        let mut a = vec!["-kernel", "/nonexistent"];
        a.extend_from_slice(&shared);
        a.extend_from_slice(extra);
        refused(&a)
    };
    assert_eq!(
        with(&["-device", "vhost-user-blk-pci,chardev=c9"]),
        "shmvm: -device vhost-user-blk-pci: chardev 'c9' is not defined by any -chardev"
    );
    assert_eq!(
        with(&["-chardev", "pty,id=c0"]),
        "shmvm: -chardev: 'pty,id=c0': backend 'pty' is not supported (socket, stdio, file, null; see -chardev help)"
    );
    assert!(with(&["-device", "vhost-user-blk-pci"]).contains("chardev= is required"));
}

/// A guest that polls COM1's line status until a byte arrives, then resets
/// the machine through the i8042 (exit 0):
/// `1: mov dx,0x3fd; in al,dx; test al,1; jz 1b; mov al,0xfe; out 0x64,al; jmp .`
const WAIT_FOR_KEY: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xf7, 0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe,
];

/// A back-end serving a fresh 8 MiB image in `dir`.
fn start_qsd(dir: &TempDir) -> Qsd {
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    Qsd::start(&img, &dir.0.join("vhost.sock"))
}

/// Boots the waiting guest with the device on a fresh back-end, kills the
/// back-end while the guest waits when `kill_backend`, then presses a key
/// and collects the run.
fn run_with_device(ram: &str, kill_backend: bool) -> Run {
    require_kvm();
    let dir = TempDir::new("vub");
    let mut qsd = start_qsd(&dir);
    let kernel = dir.tiny_kernel(WAIT_FOR_KEY);
    let chardev = format!("socket,id=c0,path={}", qsd.sock.display());
    let mut child = Command::new(shmvm_bin())
        .args(["-kernel", &kernel])
        .args(["-object", ram, "-machine", "memory-backend=ram0"])
        .args([
            "-chardev",
            &chardev,
            "-device",
            "vhost-user-blk-pci,chardev=c0",
        ])
        .args(["--stats=json", "-serial", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmvm");
    // The device connects while the VM is built; give it time to run.
    std::thread::sleep(Duration::from_millis(500));
    if kill_backend {
        qsd.kill();
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"x").expect("key");
    drop(stdin);
    wait(child, T)
}

#[test]
fn kvm_device_wired_and_vm_ends_cleanly() {
    let r = run_with_device("memory-backend-memfd,id=ram0,size=64M", false);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stderr.contains("warn"), "no wiring warnings: {r:?}");
    assert!(!r.stderr.contains("hung up"), "{r:?}");
    // The guest never drove the device: nothing started, nothing failed.
    let st = r.stats();
    let [v] = st.vhost_user.as_slice() else {
        panic!("one vhost-user device in the statistics: {st:?}");
    };
    assert_eq!((v.starts, v.errors, v.notify_exits), (0, 0, 0), "{v:?}");
}

#[test]
fn kvm_backend_death_is_one_line_and_the_guest_keeps_running() {
    let r = run_with_device("memory-backend-shm,id=ram0,size=64M", true);
    assert_eq!(
        r.code,
        Some(0),
        "VM ends cleanly after the guest resets: {r:?}"
    );
    let hangups: Vec<&str> = r.stderr.lines().filter(|l| l.contains("hung up")).collect();
    assert_eq!(hangups.len(), 1, "{r:?}");
    assert!(
        hangups[0].starts_with("shmvm: error: vhost-user back-end ")
            && hangups[0].ends_with("hung up; its disk stops answering, the guest keeps running"),
        "{}",
        hangups[0]
    );
}
