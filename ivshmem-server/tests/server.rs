//! The server and the peer library together, over real sockets, and the
//! binary's options.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ivshmem_server::protocol::{self, recv};
use ivshmem_server::server::{Server, ServerConfig, ShmSource};
use ivshmem_server::{Peer, PeerEvent};
use vm_memory::{Bytes, VolatileMemory};

const T: Duration = Duration::from_secs(5);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ivshmem-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

fn serve(cfg: ServerConfig) -> Running {
    let mut server = Server::start(cfg).expect("server starts");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || server.run(&s).expect("server runs"));
    Running {
        stop,
        thread: Some(thread),
    }
}

fn cfg(dir: &std::path::Path, name: &str, vectors: u16) -> ServerConfig {
    ServerConfig {
        socket: dir.join("sock"),
        shm: ShmSource::Name(format!("/ivshmem-test-{}-{name}", std::process::id())),
        size: 1 << 20,
        vectors,
        keep: false,
    }
}

#[test]
fn peers_ring_each_other_share_memory_and_see_comings_and_goings() {
    let dir = tmp("peers");
    let c = cfg(&dir, "peers", 2);
    let shm_name = match &c.shm {
        ShmSource::Name(n) => n.clone(),
        ShmSource::Path(_) => unreachable!(),
    };
    let sock = c.socket.clone();
    let running = serve(c);
    assert!(
        std::path::Path::new(&format!("/dev/shm{shm_name}")).exists(),
        "named shm object while serving"
    );
    let mode = std::fs::metadata(format!("/dev/shm{shm_name}")).unwrap();
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let mut a = Peer::connect(&sock, T).expect("a connects");
    let mut b = Peer::connect(&sock, T).expect("b connects");
    assert_eq!((a.id(), b.id()), (0, 1));
    assert_eq!((a.vectors(), b.vectors()), (2, 2));
    assert_eq!(b.peers(), vec![0]);
    assert_eq!(a.next_event(T).unwrap(), PeerEvent::Joined(1));
    assert_eq!(a.peers(), vec![1]);
    // Memory is shared.
    a.memory()
        .as_volatile_slice()
        .write_obj(0xfeed_u32, 4096)
        .unwrap();
    assert_eq!(
        b.memory()
            .as_volatile_slice()
            .read_obj::<u32>(4096)
            .unwrap(),
        0xfeed
    );
    assert_eq!(a.size(), 1 << 20);
    // Doorbells both ways, per vector.
    a.ring(1, 1).unwrap();
    assert_eq!(b.wait(1, T).unwrap(), 1);
    assert!(matches!(
        b.wait(0, Duration::from_millis(50)),
        Err(ivshmem_server::peer::PeerError::Timeout(_))
    ));
    b.ring(0, 0).unwrap();
    b.ring(0, 0).unwrap();
    assert_eq!(a.wait(0, T).unwrap(), 2);
    // Absent peer or vector: errors, not panics.
    assert!(a.ring(7, 0).unwrap_err().to_string().contains("no peer 7"));
    assert!(a.ring(1, 2).unwrap_err().to_string().contains("not 2"));
    // b leaves: a hears it; a newcomer gets the next id, not b's.
    drop(b);
    assert_eq!(a.next_event(T).unwrap(), PeerEvent::Left(1));
    assert!(a.peers().is_empty());
    let c = Peer::connect(&sock, T).expect("c connects");
    assert_eq!(c.id(), 2);
    assert_eq!(a.next_event(T).unwrap(), PeerEvent::Joined(2));
    a.ring(2, 0).unwrap();
    drop(running);
    assert!(!sock.exists(), "socket removed at exit");
    assert!(
        !std::path::Path::new(&format!("/dev/shm{shm_name}")).exists(),
        "shm object removed at exit"
    );
}

/// The exact messages and their order, as QEMU's server sends them.
#[test]
fn message_order_is_qemus() {
    let dir = tmp("order");
    let c = cfg(&dir, "order", 3);
    let sock = c.socket.clone();
    let _running = serve(c);
    let deadline = || Some(Instant::now() + T);
    let first = UnixStream::connect(&sock).unwrap();
    let mut seq = Vec::new();
    for _ in 0..6 {
        let m = recv(&first, deadline(), "test").unwrap();
        seq.push((m.value, m.fd.is_some()));
    }
    assert_eq!(
        seq,
        vec![
            (0, false),
            (0, false),
            (-1, true),
            (0, true),
            (0, true),
            (0, true)
        ]
    );
    let second = UnixStream::connect(&sock).unwrap();
    let mut seq = Vec::new();
    for _ in 0..9 {
        let m = recv(&second, deadline(), "test").unwrap();
        seq.push((m.value, m.fd.is_some()));
    }
    assert_eq!(
        seq,
        vec![
            (0, false),
            (1, false),
            (-1, true),
            (0, true),
            (0, true),
            (0, true),
            (1, true),
            (1, true),
            (1, true)
        ]
    );
    // The first peer is told about the second, once per vector.
    for _ in 0..3 {
        let m = recv(&first, deadline(), "test").unwrap();
        assert_eq!((m.value, m.fd.is_some()), (1, true));
    }
    drop(second);
    let m = recv(&first, deadline(), "test").unwrap();
    assert_eq!((m.value, m.fd.is_some()), (1, false), "peer-gone notice");
    // Nothing more than that.
    assert!(matches!(
        recv(
            &first,
            Some(Instant::now() + Duration::from_millis(100)),
            "test"
        ),
        Err(protocol::ProtocolError::Timeout(..))
    ));
}

#[test]
fn bad_options_are_one_line_each() {
    let dir = tmp("options");
    let mut c = cfg(&dir, "options", 1);
    c.size = 3 << 20;
    let e = Server::start(c.clone()).unwrap_err().to_string();
    assert!(
        e.contains("-l 3145728") && e.contains("power of two"),
        "{e}"
    );
    c.size = 1 << 20;
    c.vectors = 65;
    let e = Server::start(c.clone()).unwrap_err().to_string();
    assert!(e.contains("-n 65"), "{e}");
    c.vectors = 1;
    let file = dir.join("exists");
    std::fs::write(&file, b"x").unwrap();
    c.shm = ShmSource::Path(file);
    let e = Server::start(c.clone()).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    // A second server on a live socket.
    c.shm = ShmSource::Path(dir.join("new"));
    let _running = serve(c.clone());
    c.shm = ShmSource::Path(dir.join("other"));
    let e = Server::start(c).unwrap_err().to_string();
    assert!(e.contains("another server is listening"), "{e}");
    assert!(
        !dir.join("other").exists(),
        "nothing left behind on failure"
    );
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The binary: a file created 0600 whatever the umask, removed at exit
/// unless --keep; a daemon that writes its pid file.
#[test]
fn binary_file_backend_umask_keep_and_daemon() {
    let dir = tmp("binary");
    let exe = env!("CARGO_BIN_EXE_ivshmem-server");
    let file = dir.join("mem");
    let sock = dir.join("sock");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 0277; exec {exe} -F -S {} -m {} -l 64K -n 2",
            sock.display(),
            file.display()
        ))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for("the socket", || sock.exists());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 64 << 10);
    let p = Peer::connect(&sock, T).unwrap();
    assert_eq!((p.vectors(), p.size()), (2, 64 << 10));
    drop(p);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!file.exists() && !sock.exists(), "removed at exit");

    // --keep, as a daemon with a pid file.
    let pid_file = dir.join("pid");
    let out = Command::new(exe)
        .args(["-S", &sock.to_string_lossy(), "-m", &file.to_string_lossy()])
        .args(["-p", &pid_file.to_string_lossy(), "--keep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for("the pid file", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    wait_for("the daemon to leave", || !sock.exists());
    assert!(file.exists(), "--keep keeps the file");
    wait_for("the pid file to go", || !pid_file.exists());

    // Errors: exit 2, one line.
    let out = Command::new(exe)
        .args(["-S", &sock.to_string_lossy(), "-m", &file.to_string_lossy()])
        .args(["-F"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
}

/// When the server goes, peers keep the doorbells they know; a wait then
/// sleeps until its deadline instead of spinning on the dead socket.
#[test]
fn peers_outlive_the_server() {
    let dir = tmp("gone");
    let c = cfg(&dir, "gone", 1);
    let sock = c.socket.clone();
    let running = serve(c);
    let mut a = Peer::connect(&sock, T).unwrap();
    let mut b = Peer::connect(&sock, T).unwrap();
    drop(running);
    let t0 = Instant::now();
    assert!(matches!(
        a.wait(0, Duration::from_millis(300)),
        Err(ivshmem_server::peer::PeerError::Timeout(_))
    ));
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(a.server_gone());
    b.ring(a.id(), 0).unwrap();
    assert_eq!(a.wait(0, T).unwrap(), 1);
    // b learnt of a at connect; nothing after that.
    assert_eq!(b.next_event(T).unwrap(), PeerEvent::Joined(a.id()));
    assert!(matches!(
        b.next_event(Duration::from_millis(100)),
        Err(ivshmem_server::peer::PeerError::Timeout(_))
    ));
}
