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

/// The waiting guest, then: read the PCI device id of bus 0 slot 5 through
/// 0xcf8/0xcfc and write (device id - 0x1040), the virtio device id, to
/// isa-debug-exit (exit status (V << 1) | 1):
/// `mov eax,0x80002800; mov dx,0xcf8; out dx,eax; mov dx,0xcfc; in eax,dx;
///  shr eax,16; sub eax,0x1040; mov dx,0x501; out dx,al; jmp .`
fn key_then_virtio_id_of_slot5() -> Vec<u8> {
    let mut code = WAIT_FOR_KEY[..9].to_vec();
    code.extend_from_slice(&[
        0xb8, 0x00, 0x28, 0x00, 0x80, 0x66, 0xba, 0xf8, 0x0c, 0xef, 0x66, 0xba, 0xfc, 0x0c, 0xed,
        0xc1, 0xe8, 0x10, 0x2d, 0x40, 0x10, 0x00, 0x00, 0x66, 0xba, 0x01, 0x05, 0xee, 0xeb, 0xfe,
    ]);
    code
}

/// Each real back-end: the device is built on it (handshake, memory
/// table, configuration), sits on PCI slot 5 with its virtio device id
/// where the guest reads it; killed while the guest runs, it costs one
/// line naming it and the guest goes on to exit with the same answer.
#[test]
fn kvm_each_backend_type_wired_and_its_death_is_one_line() {
    use shmvm_tests::qsd::VhostBackend;
    require_kvm();
    let kinds: [(&str, u16, &str); 3] = [
        ("vhost-user-rng-pci", 4, "entropy device"),
        ("vhost-user-fs-pci", 26, "file system"),
        ("vhost-user-vsock-pci", 19, "vsock device"),
    ];
    for (driver, id, noun) in kinds {
        for kill in [false, true] {
            let dir = TempDir::new("vu");
            let sock = dir.0.join("be.sock");
            let shared = dir.0.join("shared");
            std::fs::create_dir_all(&shared).expect("shared dir");
            let mut be = match id {
                4 => VhostBackend::rng(&sock),
                26 => VhostBackend::virtiofsd(&shared, &sock),
                _ => VhostBackend::vsock(&sock, 3, &dir.0.join("vm.vsock")),
            };
            let device = match id {
                26 => format!("{driver},chardev=c0,addr=5,tag=hostfs"),
                _ => format!("{driver},chardev=c0,addr=5"),
            };
            let kernel = dir.tiny_kernel(&key_then_virtio_id_of_slot5());
            let chardev = format!("socket,id=c0,path={}", be.sock.display());
            let mut child = Command::new(shmvm_bin())
                .args(["-kernel", &kernel, "-device", "isa-debug-exit"])
                .args(["-object", "memory-backend-memfd,id=ram0,size=64M"])
                .args(["-machine", "memory-backend=ram0"])
                .args(["-chardev", &chardev, "-device", &device])
                .args(["-serial", "stdio"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn shmvm");
            std::thread::sleep(Duration::from_millis(500));
            if kill {
                be.kill();
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"x").expect("key");
            drop(stdin);
            let r = wait(child, T);
            assert_eq!(
                r.code,
                Some(i32::from(id) << 1 | 1),
                "{driver} (kill {kill}): the guest reads virtio id {id} on slot 5: {r:?}"
            );
            let hangups: Vec<&str> = r.stderr.lines().filter(|l| l.contains("hung up")).collect();
            if kill {
                assert_eq!(hangups.len(), 1, "{driver}: {r:?}");
                assert!(
                    hangups[0].ends_with(&format!(
                        "hung up; its {noun} stops answering, the guest keeps running"
                    )),
                    "{}",
                    hangups[0]
                );
            } else {
                assert!(hangups.is_empty(), "{driver}: {r:?}");
                assert!(!r.stderr.contains("warn"), "{driver}: {r:?}");
            }
        }
    }
}

#[test]
fn vhost_user_type_mistakes_are_one_line() {
    let with = |device: &str| {
        refused(&[
            "-kernel",
            "/nonexistent",
            "-object",
            "memory-backend-memfd,id=m,size=64M",
            "-machine",
            "memory-backend=m",
            "-chardev",
            "socket,id=c0,path=/tmp/none.sock",
            "-device",
            device,
        ])
    };
    assert_eq!(
        with("vhost-user-fs-pci,chardev=c0"),
        "shmvm: -device: vhost-user-fs-pci: tag= is required (the name the guest mounts)"
    );
    assert!(with("vhost-user-fs-pci,chardev=c0,tag=t,queue-size=100").contains("not a power of 2"));
    assert!(with("vhost-user-vsock-pci,chardev=c0,guest-cid=3").contains("back-end sets the CID"));
    assert!(with("vhost-user-device-pci,chardev=c0").contains("virtio-id= is required"));
    assert_eq!(
        with("vhost-user-rng-pci,chardev=c1"),
        "shmvm: -device vhost-user-rng-pci: chardev 'c1' is not defined by any -chardev"
    );
}
