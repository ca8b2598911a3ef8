//! ivshmem-doorbell end to end on the host's /dev/kvm: shmvm's server (the
//! `ivshmem-server` crate, run in this process), the real shmvm binary with
//! the test kernel, QEMU 10's own `ivshmem-doorbell` device, and host
//! programs as peers through the library. Every test needs /dev/kvm (the
//! QEMU ones also qemu-system-x86_64) and fails loudly without it.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ivshmem_server::protocol::send;
use ivshmem_server::server::{Server, ServerConfig, ShmSource};
use ivshmem_server::{Peer, PeerEvent, pingpong};
use shmvm_tests::harness::{self, Run, qemu_q35, require_kvm, testkernel, unique, with_testkernel};
use vm_memory::{Bytes, VolatileMemory};
use vmm_sys_util::eventfd::EventFd;

const T: Duration = Duration::from_secs(30);
use pingpong::{READY, READY_OFF, SEQ_OFF};

struct Serving {
    dir: PathBuf,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// shmvm's server with `vectors` vectors and 1 MiB of shared memory.
fn serve(tag: &str, vectors: u16) -> Serving {
    let dir = temp_dir(tag);
    let socket = dir.join("ivshmem.sock");
    let mut server = Server::start(ServerConfig {
        socket: socket.clone(),
        shm: ShmSource::Name(format!("/{}", unique(tag))),
        size: 1 << 20,
        vectors,
        keep: false,
    })
    .expect("ivshmem server starts");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || server.run(&s).expect("server runs"));
    Serving {
        dir,
        socket,
        stop,
        thread: Some(thread),
    }
}

fn chardev(socket: &Path) -> String {
    format!("socket,path={},id=iv", socket.display())
}

fn append(tests: &str, id: u16, peer: u16, rounds: u32) -> String {
    format!(
        "shmvm.test={tests} shmvm.ivposition={id} shmvm.peer={peer} shmvm.rounds={rounds} shmvm.timeout_ms=60000"
    )
}

/// A shmvm guest with one ivshmem-doorbell on `socket`.
fn shmvm_guest(socket: &Path, vectors: u16, append: &str) -> Child {
    let dev = format!("ivshmem-doorbell,chardev=iv,vectors={vectors}");
    with_testkernel(&[
        "-m",
        "64M",
        "-chardev",
        &chardev(socket),
        "-device",
        &dev,
        "-append",
        append,
        "--stats=json",
    ])
    .spawn()
    .expect("starting shmvm")
}

/// A QEMU 10 guest (q35, SeaBIOS: qboot leaves q35's BARs unassigned) with
/// QEMU's own ivshmem-doorbell on `socket`.
fn qemu_guest(socket: &Path, vectors: u16, append: &str) -> Child {
    let dev = format!("ivshmem-doorbell,chardev=iv,vectors={vectors}");
    qemu_q35()
        .args(["-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-chardev", &chardev(socket), "-device", &dev])
        .arg("-kernel")
        .arg(testkernel())
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (QEMU 10, make deps) is needed by this test")
}

/// The `--stats=json` line's first ivshmem-doorbell entry.
fn doorbell_stats(run: &Run) -> serde_json::Value {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("{\"shmvm_stats\""))
        .unwrap_or_else(|| panic!("no --stats=json line in\n{}", run.stderr));
    let v: serde_json::Value = serde_json::from_str(line).expect("stats JSON");
    v["ivshmem_doorbell"][0].clone()
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no '{key}' in {v}"))
}

/// Waits for `want` among the observer's peer events.
fn expect_event(p: &mut Peer, want: PeerEvent) {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.next_event(left) {
            Ok(e) if e == want => return,
            Ok(_) => continue,
            Err(e) => panic!("waiting for {want:?}: {e}"),
        }
    }
}

fn ok_line<'a>(run: &'a Run, prefix: &str) -> &'a str {
    run.line(prefix).unwrap_or_else(|| {
        panic!(
            "no '{prefix}' line\n--- stdout\n{}--- stderr\n{}",
            run.stdout, run.stderr
        )
    })
}

#[test]
fn kvm_doorbell_rings_itself_ignores_absent_peers_and_never_exits() {
    require_kvm();
    let s = serve("db-self", 2);
    let run = harness::wait(
        shmvm_guest(&s.socket, 2, &append("doorbell-self,doorbell-bad", 0, 0, 1)),
        T,
    );
    run.assert_pass();
    ok_line(&run, "shmvm: doorbell self ok vectors=2 irqs=1,1");
    let st = doorbell_stats(&run);
    eprintln!("{st}");
    assert_eq!((u(&st, "id"), u(&st, "vectors")), (0, 2));
    assert_eq!(u(&st, "ioeventfds"), 2, "own id x 2 vectors");
    assert_eq!(u(&st, "irqfds"), 2);
    // Only the three bad rings exited (absent peer 65535, absent vector
    // 127 twice); the four good ones stayed in the kernel.
    assert_eq!(u(&st, "doorbell_exits"), 3, "{st}");
    assert_eq!(u(&st, "rings_ignored"), 3, "{st}");
    assert_eq!(u(&st, "errors"), 0, "{st}");
    assert!(
        run.stderr
            .contains("rang peer 65535 vector 0, which does not exist; ignored"),
        "{}",
        run.stderr
    );
}

/// A ring while the vector is masked waits for the unmask (the eventfd
/// stays readable while no irqfd is attached); with ioeventfd=off every ring
/// exits and the VMM delivers it itself.
#[test]
fn kvm_doorbell_masked_vector_holds_the_ring_and_ioeventfd_off_forwards() {
    require_kvm();
    let s = serve("db-masked", 1);
    let run = harness::wait(
        shmvm_guest(
            &s.socket,
            1,
            &append("doorbell-masked,doorbell-self", 0, 0, 1),
        ),
        T,
    );
    run.assert_pass();
    ok_line(&run, "shmvm: doorbell masked ring delivered on unmask");
    assert_eq!(u(&doorbell_stats(&run), "doorbell_exits"), 0);
    drop(s);
    let s = serve("db-noioeventfd", 1);
    let child = with_testkernel(&[
        "-m",
        "64M",
        "-chardev",
        &chardev(&s.socket),
        "-device",
        "ivshmem-doorbell,chardev=iv,ioeventfd=off",
        "-append",
        &append("doorbell-self", 0, 0, 1),
        "--stats=json",
    ])
    .spawn()
    .expect("starting shmvm");
    let run = harness::wait(child, T);
    run.assert_pass();
    let st = doorbell_stats(&run);
    assert_eq!(u(&st, "ioeventfds"), 0, "{st}");
    assert_eq!(u(&st, "doorbell_exits"), 1, "{st}");
    assert_eq!(u(&st, "rings_forwarded"), 1, "{st}");
}

/// QEMU's ivshmem-doorbell and shmvm's, on shmvm's server, ping each other
/// in both directions; an observer peer (this process) fixes the ids and
/// sees both guests' writes.
#[test]
fn kvm_doorbell_interop_with_qemu_both_directions() {
    require_kvm();
    let s = serve("db-qemu", 1);
    let mut observer = Peer::connect(&s.socket, T).expect("observer connects");
    assert_eq!(observer.id(), 0);
    let rounds = 300;
    // shmvm answers (id 1), QEMU rings (id 2).
    let pong = shmvm_guest(&s.socket, 1, &append("doorbell-pong", 1, 2, rounds));
    expect_event(&mut observer, PeerEvent::Joined(1));
    let ping = qemu_guest(
        &s.socket,
        1,
        &append("doorbell-self,doorbell-ping", 2, 1, rounds),
    );
    expect_event(&mut observer, PeerEvent::Joined(2));
    let (ping, pong) = (harness::wait(ping, T * 2), harness::wait(pong, T * 2));
    ping.assert_pass();
    pong.assert_pass();
    eprintln!("{}", ok_line(&ping, "shmvm: doorbell pingpong"));
    expect_event(&mut observer, PeerEvent::Left(1));
    // Both guests' writes are in the region the observer maps.
    let region = observer.memory();
    let m = region.as_volatile_slice();
    for id in [1usize, 2] {
        assert_eq!(m.read_obj::<u64>(READY_OFF + 8 * id).unwrap(), READY);
        assert_eq!(
            m.read_obj::<u64>(SEQ_OFF + 8 * id).unwrap(),
            u64::from(rounds) + 1
        );
    }
    let st = doorbell_stats(&pong);
    assert_eq!(u(&st, "doorbell_exits"), 0, "{st}");
    assert_eq!(u(&st, "peers_joined"), 2, "{st}");

    // QEMU answers (id 3), shmvm rings (id 4).
    let pong = qemu_guest(&s.socket, 1, &append("doorbell-pong", 3, 4, rounds));
    expect_event(&mut observer, PeerEvent::Joined(3));
    let ping = shmvm_guest(&s.socket, 1, &append("doorbell-ping", 4, 3, rounds));
    let (ping, pong) = (harness::wait(ping, T * 2), harness::wait(pong, T * 2));
    ping.assert_pass();
    pong.assert_pass();
    eprintln!("{}", ok_line(&ping, "shmvm: doorbell pingpong"));
    let st = doorbell_stats(&ping);
    assert_eq!(u(&st, "doorbell_exits"), 0, "{st}");
    assert_eq!(u(&st, "bar0_writes"), 0, "no ring exited: {st}");
}

/// Two shmvm guests and a host program: while the host and guest A ping
/// each other, guest B is killed (SIGKILL: its socket closes with no
/// goodbye); the host and A hear that B left and finish every round.
#[test]
fn kvm_doorbell_three_peers_one_leaves_mid_run() {
    require_kvm();
    let s = serve("db-three", 1);
    let mut host = Peer::connect(&s.socket, T).expect("host peer connects");
    assert_eq!(host.id(), 0);
    let rounds: u32 = 5000;
    let a = shmvm_guest(&s.socket, 1, &append("doorbell-pong", 1, 0, rounds));
    expect_event(&mut host, PeerEvent::Joined(1));
    // B answers a peer 3 that never comes: it waits until killed.
    let mut b = shmvm_guest(&s.socket, 1, &append("doorbell-pong", 2, 3, 1));
    expect_event(&mut host, PeerEvent::Joined(2));
    let region = host.memory();
    let pinger = std::thread::spawn(move || {
        let lat = pingpong::ping(&mut host, 1, u64::from(rounds), T);
        (host, lat)
    });
    let a_seq = || {
        region
            .as_volatile_slice()
            .read_obj::<u64>(SEQ_OFF + 8)
            .expect("A's round")
    };
    let deadline = Instant::now() + T;
    while a_seq() < 100 {
        assert!(Instant::now() < deadline, "A never got to round 100");
        std::thread::sleep(Duration::from_millis(1));
    }
    b.kill().expect("kill B");
    b.wait().expect("reap B");
    let at = a_seq();
    assert!(
        at < u64::from(rounds),
        "B was gone only after the run (round {at}): make rounds larger"
    );
    let (mut host, lat) = pinger.join().expect("pinger thread");
    let lat = lat.expect("the host pings guest A to the end after B left");
    let a = harness::wait(a, T);
    a.assert_pass();
    eprintln!(
        "B killed at round {at} of {rounds}; host<->guest round trip: median {:?} p99 {:?}",
        lat.percentile(50),
        lat.percentile(99)
    );
    expect_event(&mut host, PeerEvent::Left(2));
    expect_event(&mut host, PeerEvent::Left(1));
    assert!(host.peers().is_empty());
    let st = doorbell_stats(&a);
    assert_eq!(u(&st, "peers_joined"), 2, "host and B: {st}");
    assert_eq!(u(&st, "peers_left"), 1, "B: {st}");
    assert_eq!(u(&st, "peers"), 1, "{st}");
    assert_eq!(u(&st, "doorbell_exits"), 0, "{st}");
    assert_eq!(u(&st, "errors"), 0, "{st}");
}

/// A fake server that runs `script` on the first connection.
fn fake_server(
    tag: &str,
    script: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
) -> (PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let socket = dir.join("fake.sock");
    let l = UnixListener::bind(&socket).expect("bind");
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            script(s);
        }
    });
    (dir, socket)
}

fn shm_file(dir: &Path, size: u64) -> std::fs::File {
    let p = dir.join("shm");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .expect("shm file");
    f.set_len(size).expect("size");
    f
}

const NO_FD: Option<&std::fs::File> = None;

fn start_error(socket: &Path, vectors: u16) -> String {
    let run = harness::wait(shmvm_guest(socket, vectors, "shmvm.test=boot"), T);
    assert_eq!(run.code, Some(2), "exit 2 expected:\n{}", run.stderr);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("{\"shmvm_stats\""))
        .collect();
    assert_eq!(lines.len(), 1, "one line:\n{}", run.stderr);
    lines[0].to_string()
}

#[test]
fn kvm_doorbell_bad_servers_are_one_line_errors_at_start() {
    require_kvm();
    let dir = temp_dir("db-bad");
    let e = start_error(&dir.join("nobody.sock"), 1);
    assert!(
        e.contains("ivshmem-doorbell #0: can't connect to the ivshmem server at"),
        "{e}"
    );
    let (d1, garbage) = fake_server("db-garbage", |mut s| {
        let _ = s.write_all(b"garbage!garbage!");
        std::thread::sleep(Duration::from_secs(2));
    });
    let e = start_error(&garbage, 1);
    assert!(e.contains("protocol version"), "{e}");
    let (d2, version) = fake_server("db-version", |s| {
        let _ = send(&s, 1, NO_FD);
        std::thread::sleep(Duration::from_secs(2));
    });
    let e = start_error(&version, 1);
    assert!(e.contains("speaks protocol version 1"), "{e}");
    let (d3, early) = fake_server("db-early", |s| {
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, 0, NO_FD);
    });
    let e = start_error(&early, 1);
    assert!(
        e.contains("closed the connection while sending the shared memory"),
        "{e}"
    );
    let d4 = temp_dir("db-fewfds");
    let f = shm_file(&d4, 1 << 20);
    let (d5, few) = fake_server("db-few", move |s| {
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, -1, Some(&f));
        let _ = send(&s, 0, Some(&EventFd::new(0).expect("eventfd")));
        std::thread::sleep(Duration::from_secs(3));
    });
    let e = start_error(&few, 2);
    assert!(
        e.contains("sent 1 vector(s) for this peer, 2 were asked"),
        "{e}"
    );
    let f = shm_file(&d4, 3 << 12);
    let (d6, size) = fake_server("db-size", move |s| {
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, -1, Some(&f));
        let _ = send(&s, 0, Some(&EventFd::new(0).expect("eventfd")));
        std::thread::sleep(Duration::from_secs(2));
    });
    let e = start_error(&size, 1);
    assert!(e.contains("0x3000 bytes, not a power of two"), "{e}");
    for d in [dir, d1, d2, d3, d4, d5, d6] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// At run time a server's garbage is a warning and a dead doorbell, never
/// a crash: the guest keeps ringing itself.
#[test]
fn kvm_doorbell_garbage_at_run_time_is_a_warning() {
    require_kvm();
    let d = temp_dir("db-rt");
    let f = shm_file(&d, 1 << 20);
    let (d2, sock) = fake_server("db-rt-srv", move |s| {
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, 0, NO_FD);
        let _ = send(&s, -1, Some(&f));
        let _ = send(&s, 0, Some(&EventFd::new(0).expect("eventfd")));
        // A peer id out of range, a non-eventfd for peer 5, then a close.
        let _ = send(&s, 70000, NO_FD);
        let _ = send(&s, 5, Some(&f));
        std::thread::sleep(Duration::from_millis(50));
    });
    let run = harness::wait(shmvm_guest(&sock, 1, &append("doorbell-self", 0, 0, 1)), T);
    run.assert_pass();
    for want in [
        "peer id 70000 is not 0..=65535",
        "not an eventfd",
        "the ivshmem server closed the connection",
    ] {
        assert!(run.stderr.contains(want), "no '{want}' in\n{}", run.stderr);
    }
    let _ = std::fs::remove_dir_all(d);
    let _ = std::fs::remove_dir_all(d2);
}
