//! The QMP monitor (`-qmp`, `-mon`), driven by QEMU's own client library
//! `qemu.qmp` (installed in build/venv by `make deps`): every command
//! compared with QEMU 10 running the same waiting kernel, and abuse (bad
//! JSON, huge lines, a client that never reads, 100 reconnects) that must
//! leave the VM and the other clients unaffected. Needs /dev/kvm.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shmvm_tests::harness::{self as vm, TempDir};
use shmvm_tests::raw_qmp::RawQmp;

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

/// system_powerdown presses the GED power button: the event bit is in the
/// GED register (the guest here polls it instead of running ACPI), and
/// the POWERDOWN event goes out. Without a monitor there is no GED.
#[test]
fn kvm_powerdown_sets_the_ged_event() {
    vm::require_kvm();
    let dir = TempDir::new("qmp-ged");
    // 1: mov eax, [0xfed00000]; cmp eax, 1; jne 1b (all-ones until the
    //    GED is placed at the first press); out 0xf4, al (debug-exit:
    //    1 -> exit 3); cli; hlt; jmp hlt
    let code = [
        0xa1, 0x00, 0x00, 0xd0, 0xfe, 0x83, 0xf8, 0x01, 0x75, 0xf6, 0xe6, 0xf4, 0xfa, 0xf4, 0xeb,
        0xfd,
    ];
    let kernel = dir.tiny_kernel(&code);
    let sock = dir.0.join("q.sock");
    let (child, mut q) = RawQmp::start(
        &kernel,
        &sock,
        &["-device", "isa-debug-exit,iobase=0xf4,iosize=4"],
    );
    std::thread::sleep(Duration::from_millis(100));
    let r = q.ask(r#"{"execute":"system_powerdown","id":1}"#);
    assert!(r.contains("\"return\""), "{r}");
    let r = vm::wait(child, Duration::from_secs(10));
    assert_eq!(
        r.code,
        Some(3),
        "the guest did not see the event: {}",
        r.stderr
    );
    assert!(!sock.exists(), "socket left behind");
}

/// A vhost-user back-end that goes away is reported as shmvm's
/// X_SHMVM_PEER_GONE event; the monitor here is `-chardev ...,server=on`
/// with `-mon`.
#[test]
fn kvm_vhost_user_hangup_is_an_event() {
    vm::require_kvm();
    let dir = TempDir::new("qmp-vub");
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    let mut qsd = shmvm_tests::qsd::Qsd::start(&img, &dir.0.join("vhost.sock"));
    let kernel = dir.tiny_kernel(WAITING_KERNEL);
    let sock = dir.0.join("mon.sock");
    let child = Command::new(vm::shmvm_bin())
        .args(["-kernel", &kernel, "-serial", "none"])
        .args(["-object", "memory-backend-memfd,id=ram0,size=64M,share=on"])
        .args(["-machine", "memory-backend=ram0"])
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", qsd.sock.display()))
        .args(["-device", "vhost-user-blk-pci,chardev=c0"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=mon0,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["-mon", "chardev=mon0,mode=control"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn shmvm");
    let mut q = RawQmp::connect(&sock);
    if let Err(e) = q.negotiate() {
        let r = vm::wait(child, Duration::from_secs(10));
        panic!("negotiation: {e}; shmvm {:?}: {}", r.code, r.stderr);
    }
    qsd.kill();
    let t0 = std::time::Instant::now();
    let event = loop {
        let l = q.line();
        if l.contains("X_SHMVM_PEER_GONE") {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no event; last {l}");
    };
    assert!(
        event.contains("\"type\":\"vhost-user\"") && event.contains("vhost.sock"),
        "{event}"
    );
    let r = match q.try_ask(r#"{"execute":"query-status","id":"s"}"#) {
        Ok(r) => r,
        Err(e) => {
            let r = vm::wait(child, Duration::from_secs(10));
            panic!(
                "query-status after the event: {e}; shmvm {:?}: {}",
                r.code, r.stderr
            );
        }
    };
    assert!(
        r.contains("\"running\":true") && r.contains("\"id\":\"s\""),
        "{r}"
    );
    let quit = q.try_ask(r#"{"execute":"quit"}"#);
    let r = vm::wait(child, Duration::from_secs(10));
    assert!(
        quit.is_ok(),
        "quit: {quit:?}; shmvm {:?}: {}",
        r.code,
        r.stderr
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!sock.exists(), "socket left behind");
}

/// An ivshmem peer that leaves the server is X_SHMVM_PEER_GONE, with the
/// device and the peer's id.
#[test]
fn kvm_ivshmem_peer_leaving_is_an_event() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ivshmem_server::server::{Server, ServerConfig, ShmSource};

    vm::require_kvm();
    let dir = TempDir::new("qmp-ivpeer");
    let socket = dir.0.join("ivshmem.sock");
    let mut server = Server::start(ServerConfig {
        socket: socket.clone(),
        shm: ShmSource::Name(format!("/shmvm-qmp-ivpeer-{}", std::process::id())),
        size: 1 << 20,
        vectors: 1,
        keep: false,
    })
    .expect("ivshmem server starts");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let served = std::thread::spawn(move || server.run(&s).expect("server runs"));
    let kernel = dir.tiny_kernel(WAITING_KERNEL);
    let sock = dir.0.join("q.sock");
    let chardev = format!("socket,path={},id=iv", socket.display());
    let (child, mut q) = RawQmp::start(
        &kernel,
        &sock,
        &[
            "-m",
            "32M",
            "-chardev",
            &chardev,
            "-device",
            "ivshmem-doorbell,chardev=iv,vectors=1,addr=5",
        ],
    );
    // The device as QEMU's query-pci shows QEMU's ivshmem-doorbell: at
    // addr=5, 1af4:1110 class 0x0500, BAR0 256 bytes of registers, BAR1
    // the MSI-X table and PBA (4 KiB), BAR2 the server's 1 MiB, 64-bit
    // prefetchable.
    let pci: serde_json::Value =
        serde_json::from_str(&q.ask(r#"{"execute":"query-pci"}"#)).expect("query-pci JSON");
    let devs = pci["return"][0]["devices"].as_array().expect("devices");
    let d = devs
        .iter()
        .find(|d| d["id"]["device"] == 0x1110)
        .unwrap_or_else(|| panic!("no 1af4:1110 in {pci}"));
    assert_eq!(
        (&d["slot"], &d["id"]["vendor"], &d["class_info"]["class"]),
        (
            &serde_json::json!(5),
            &serde_json::json!(0x1af4),
            &serde_json::json!(0x0500)
        ),
        "{d}"
    );
    let region = |bar: u64| {
        d["regions"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["bar"] == bar))
            .unwrap_or_else(|| panic!("no BAR{bar} in {d}"))
            .clone()
    };
    assert_eq!(region(0)["size"], 256, "{d}");
    assert_eq!(region(1)["size"], 4096, "{d}");
    let bar2 = region(2);
    assert_eq!(
        (&bar2["size"], &bar2["prefetch"], &bar2["mem_type_64"]),
        (
            &serde_json::json!(1 << 20),
            &serde_json::json!(true),
            &serde_json::json!(true)
        ),
        "{d}"
    );
    // shmvm joined at start (peer 0); a host peer comes and goes.
    let host = ivshmem_server::Peer::connect(&socket, Duration::from_secs(10))
        .expect("host peer connects");
    let id = host.id();
    drop(host);
    let t0 = std::time::Instant::now();
    let event = loop {
        let l = q.line();
        if l.contains("X_SHMVM_PEER_GONE") {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no event; last {l}");
    };
    assert!(
        event.contains("\"type\":\"ivshmem\"") && event.contains(&format!("\"peer {id}\"")),
        "{event}"
    );
    let quit = q.try_ask(r#"{"execute":"quit"}"#);
    let r = vm::wait(child, Duration::from_secs(10));
    assert!(
        quit.is_ok(),
        "quit: {quit:?}; shmvm {:?}: {}",
        r.code,
        r.stderr
    );
    stop.store(true, Ordering::SeqCst);
    let _ = served.join();
}

/// `stop` parks every vCPU before it answers and `cont` lets them go on:
/// the guest counts in shared RAM the test reads, and the count must not
/// move between the reply to `stop` and `cont`, and move again after.
#[test]
fn kvm_stop_freezes_the_guest_and_cont_resumes_it() {
    let mut g = CountingGuest::start("qmp-stopcont", &["-smp", "2"]);
    g.moves("at start");
    for round in 0..3 {
        let r = g.q.ask(r#"{"execute":"stop","id":"s"}"#);
        assert!(r.contains("\"return\""), "{r}");
        let frozen = g.count();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            g.count(),
            frozen,
            "round {round}: the guest ran while stopped"
        );
        let r = g.q.ask(r#"{"execute":"query-status"}"#);
        assert!(r.contains("\"status\":\"paused\""), "{r}");
        let r = g.q.ask(r#"{"execute":"cont"}"#);
        assert!(r.contains("\"return\""), "{r}");
        g.moves("after cont");
    }
    g.quit();
}

/// A guest that counts in shared RAM (a file the test reads), under
/// shmvm with a QMP monitor.
struct CountingGuest {
    _dir: TempDir,
    child: std::process::Child,
    q: RawQmp,
    ram: std::fs::File,
}

impl CountingGuest {
    /// Where the guest counts.
    const COUNTER: u64 = 0x20_0000;

    fn start(name: &str, extra: &[&str]) -> CountingGuest {
        vm::require_kvm();
        let dir = TempDir::new(name);
        // 1: inc dword [0x200000]; jmp 1b (32-bit protected mode, no paging).
        let kernel = dir.tiny_kernel(&[0xff, 0x05, 0x00, 0x00, 0x20, 0x00, 0xeb, 0xf8]);
        let ram = dir.0.join("ram");
        let sock = dir.0.join("q.sock");
        let object = format!(
            "memory-backend-file,id=m,size=16M,mem-path={},share=on",
            ram.display()
        );
        let mut args = extra.to_vec();
        args.extend(["-object", &object, "-machine", "memory-backend=m"]);
        let (child, q) = RawQmp::start(&kernel, &sock, &args);
        let ram = std::fs::File::open(&ram).expect("the guest RAM file");
        CountingGuest {
            _dir: dir,
            child,
            q,
            ram,
        }
    }

    fn count(&self) -> u32 {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        self.ram
            .read_exact_at(&mut b, Self::COUNTER)
            .expect("read the counter");
        u32::from_le_bytes(b)
    }

    /// Waits (at most 10 s) for the count to move.
    fn moves(&self, what: &str) {
        let c0 = self.count();
        let t0 = std::time::Instant::now();
        while self.count() == c0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: the guest's counter stays at {c0}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `quit`: shmvm exits 0.
    fn quit(mut self) {
        let quit = self.q.try_ask(r#"{"execute":"quit"}"#);
        let r = vm::wait(self.child, Duration::from_secs(10));
        assert!(quit.is_ok(), "quit: {quit:?}; {}", r.stderr);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
}

/// `query-pci`'s `qdev_id` is each device's `id=`, "" where it has none
/// (the host bridge, an `if=virtio` drive's own device), as in QEMU.
#[test]
fn kvm_query_pci_shows_each_devices_id() {
    vm::require_kvm();
    let dir = TempDir::new("qmp-qdev-id");
    let kernel = dir.tiny_kernel(WAITING_KERNEL);
    let (disk, own) = (dir.0.join("disk.img"), dir.0.join("own.img"));
    for f in [&disk, &own] {
        std::fs::write(f, vec![0u8; 1 << 20]).expect("a disk image");
    }
    let sock = dir.0.join("q.sock");
    let (disk, own) = (disk.display(), own.display());
    let drive = format!("file={disk},if=none,id=d0,format=raw");
    let own_drive = format!("file={own},if=virtio,format=raw");
    let (child, mut q) = RawQmp::start(
        &kernel,
        &sock,
        &[
            "-object",
            "memory-backend-shm,id=m,size=1M",
            "-device",
            "ivshmem-plain,memdev=m,id=iv0,addr=3",
            "-device",
            "virtio-rng-pci,id=rng0,addr=4",
            "-device",
            "virtio-rng-pci,addr=5",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,id=blk0,addr=6",
            "-drive",
            &own_drive,
            "-device",
            "virtio-serial-pci,id=ser0,addr=8",
        ],
    );
    let pci: serde_json::Value =
        serde_json::from_str(&q.ask(r#"{"execute":"query-pci"}"#)).expect("query-pci JSON");
    let ids: Vec<(u64, String)> = pci["return"][0]["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            let slot = d["slot"].as_u64().expect("slot");
            let id = d["qdev_id"].as_str().expect("qdev_id is a string");
            (slot, id.to_string())
        })
        .collect();
    let own_slot = ids
        .iter()
        .find(|(s, _)| ![0, 3, 4, 5, 6, 8].contains(s))
        .map(|(s, _)| *s)
        .unwrap_or_else(|| panic!("no slot for the if=virtio drive in {ids:?}"));
    let mut want: Vec<(u64, String)> = [
        (0, ""),
        (3, "iv0"),
        (4, "rng0"),
        (5, ""),
        (6, "blk0"),
        (own_slot, ""),
        (8, "ser0"),
    ]
    .iter()
    .map(|&(s, id)| (s, id.to_string()))
    .collect();
    want.sort();
    let mut got = ids;
    got.sort();
    assert_eq!(got, want, "{pci}");
    let quit = q.try_ask(r#"{"execute":"quit"}"#);
    let r = vm::wait(child, Duration::from_secs(10));
    assert!(quit.is_ok(), "quit: {quit:?}; {}", r.stderr);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// `-S`: the guest does not run before the first `cont` (its counter in
/// shared RAM stays 0, `query-status` says QEMU's `prelaunch`); after it,
/// it runs and the status is `running`.
#[test]
fn kvm_dash_s_holds_the_guest_until_cont() {
    let mut g = CountingGuest::start("qmp-dash-s", &["-S"]);
    let r = g.q.ask(r#"{"execute":"query-status"}"#);
    assert!(
        r.contains(r#""running":false"#) && r.contains(r#""status":"prelaunch""#),
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(g.count(), 0, "the guest ran before cont");
    let r = g.q.ask(r#"{"execute":"cont"}"#);
    assert!(r.contains("\"return\""), "{r}");
    g.moves("after cont");
    let r = g.q.ask(r#"{"execute":"query-status"}"#);
    assert!(r.contains(r#""status":"running""#), "{r}");
    g.quit();
}
