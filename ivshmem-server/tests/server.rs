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

/// When the server goes (freeing its peers in connection order, as
/// QEMU's does: b hears that a left, a hears nothing), peers keep the
/// doorbells they still know; a wait then sleeps until its deadline
/// instead of spinning on the dead socket.
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
    a.ring(b.id(), 0).unwrap();
    assert_eq!(b.wait(0, T).unwrap(), 1);
    // b learnt of a at connect, then that a left; nothing after that.
    assert_eq!(b.next_event(T).unwrap(), PeerEvent::Joined(a.id()));
    assert_eq!(b.next_event(T).unwrap(), PeerEvent::Left(a.id()));
    assert!(b.ring(a.id(), 0).is_err(), "a's doorbell went with it");
    assert!(matches!(
        b.next_event(Duration::from_millis(100)),
        Err(ivshmem_server::peer::PeerError::Timeout(_))
    ));
    assert_eq!(a.peers(), vec![b.id()], "a heard nothing");
}

/// One message exactly as it crossed the socket: its 8 bytes and every fd
/// that came with them (room is left for more than one, so a server that
/// attached two would show it).
struct Wire {
    bytes: [u8; 8],
    fds: Vec<std::fs::File>,
}

/// Reads one 8-byte message with one `recvmsg` per call; a stream socket
/// never merges the bytes of a message carrying fds with the next one.
fn wire(stream: &UnixStream) -> Wire {
    use std::os::fd::{FromRawFd, RawFd};
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    stream.set_read_timeout(Some(T)).expect("socket timeout");
    let mut bytes = [0u8; 8];
    let mut have = 0;
    let mut fds = Vec::new();
    while have < 8 {
        let mut raw: [RawFd; 4] = [-1; 4];
        let mut iov = [libc::iovec {
            iov_base: bytes[have..].as_mut_ptr().cast(),
            iov_len: 8 - have,
        }];
        // SAFETY: the iovec points into `bytes`, which outlives the call
        // and has room for `8 - have` bytes; the fds received are new and
        // owned by this function (each wrapped in a File just below).
        let (n, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut raw) }.expect("recvmsg");
        assert!(n > 0, "the server closed the connection mid-transcript");
        for &fd in &raw[..nfds] {
            // SAFETY: a descriptor just received, owned by nobody else.
            fds.push(unsafe { std::fs::File::from_raw_fd(fd) });
        }
        have += n;
    }
    Wire { bytes, fds }
}

fn link(f: &std::fs::File) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The transcript of one connection, as (little-endian bytes, fd kinds).
fn transcript(stream: &UnixStream, n: usize) -> Vec<Wire> {
    (0..n).map(|_| wire(stream)).collect()
}

fn kinds(w: &[Wire]) -> Vec<(i64, Vec<String>)> {
    w.iter()
        .map(|m| {
            let kind = m
                .fds
                .iter()
                .map(|f| {
                    let l = link(f);
                    if l == "anon_inode:[eventfd]" {
                        "eventfd".to_string()
                    } else if l.starts_with("/dev/shm/") {
                        "shm".to_string()
                    } else {
                        l
                    }
                })
                .collect();
            (i64::from_le_bytes(m.bytes), kind)
        })
        .collect()
}

/// Byte for byte what QEMU's contrib/ivshmem-server sends (facts from its
/// source: each message one `sendmsg` of an int64 in little-endian with at
/// most one SCM_RIGHTS fd; version 0, id, -1 with the shm fd; the
/// newcomer's vectors to the others, the others' to it, its own to it; a
/// leaving peer's id without fd to the rest; a peer that sends anything is
/// dropped; at exit the peers are freed in connection order, the rest told
/// of each). The fds are the real objects: the eventfd peer 1 got for peer
/// 0's vector v is the one peer 0 got as its own vector v, and the shared
/// memory is one object of the configured size.
#[test]
fn wire_transcript_is_qemus_byte_for_byte() {
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    let dir = tmp("wire");
    let c = cfg(&dir, "wire", 2);
    let sock = c.socket.clone();
    let running = serve(c);
    let ev = || vec!["eventfd".to_string()];
    let first = UnixStream::connect(&sock).unwrap();
    let t0 = transcript(&first, 5);
    assert_eq!(t0[0].bytes, [0; 8], "version 0, 8 bytes little-endian");
    assert_eq!(t0[2].bytes, [0xff; 8], "-1 as 8 bytes of 0xff");
    assert_eq!(
        kinds(&t0),
        vec![
            (0, vec![]),
            (0, vec![]),
            (-1, vec!["shm".to_string()]),
            (0, ev()),
            (0, ev())
        ]
    );
    let shm0 = t0[2].fds[0].metadata().unwrap();
    assert_eq!(shm0.len(), 1 << 20, "the shm fd has the configured size");

    let second = UnixStream::connect(&sock).unwrap();
    let t1 = transcript(&second, 7);
    assert_eq!(t1[1].bytes, [1, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        kinds(&t1),
        vec![
            (0, vec![]),
            (1, vec![]),
            (-1, vec!["shm".to_string()]),
            (0, ev()),
            (0, ev()),
            (1, ev()),
            (1, ev())
        ]
    );
    let shm1 = t1[2].fds[0].metadata().unwrap();
    assert_eq!(
        (shm1.dev(), shm1.ino()),
        (shm0.dev(), shm0.ino()),
        "both peers get the same shared memory object"
    );
    let told = transcript(&first, 2);
    assert_eq!(kinds(&told), vec![(1, ev()), (1, ev())]);
    // Identity, vector by vector (never crossed): write through one
    // peer's copy, read through the owner's.
    let efd = |f: &std::fs::File| f.try_clone().unwrap();
    for v in 0..2 {
        efd(&t1[3 + v].fds[0])
            .write_all(&(10 + v as u64).to_ne_bytes())
            .unwrap();
        let mut got = [0u8; 8];
        efd(&t0[3 + v].fds[0]).read_exact(&mut got).unwrap();
        assert_eq!(u64::from_ne_bytes(got), 10 + v as u64, "peer 0 vector {v}");
        efd(&told[v].fds[0])
            .write_all(&(20 + v as u64).to_ne_bytes())
            .unwrap();
        efd(&t1[5 + v].fds[0]).read_exact(&mut got).unwrap();
        assert_eq!(u64::from_ne_bytes(got), 20 + v as u64, "peer 1 vector {v}");
    }

    // A peer that sends anything is dropped, as in QEMU's server; the
    // others get its id, 8 bytes, no fd.
    let mut third = UnixStream::connect(&sock).unwrap();
    let _ = transcript(&third, 9);
    let _ = transcript(&first, 2);
    let _ = transcript(&second, 2);
    third.write_all(&[0u8; 8]).unwrap();
    for s in [&first, &second] {
        let m = wire(s);
        assert_eq!((m.bytes, m.fds.len()), ([2, 0, 0, 0, 0, 0, 0, 0], 0));
    }
    let mut rest = Vec::new();
    third.set_read_timeout(Some(T)).unwrap();
    third.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the dropped peer's socket is closed");

    // At exit: peer 0 is freed first (its socket closes with nothing
    // more), peer 1 hears that 0 left, then its socket closes.
    drop(running);
    let mut rest = Vec::new();
    (&first).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "peer 0 gets nothing more: {rest:?}");
    let m = wire(&second);
    assert_eq!((m.bytes, m.fds.len()), ([0; 8], 0), "peer 1: peer 0 left");
    let mut rest = Vec::new();
    (&second).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "then peer 1's socket closes: {rest:?}");
}

/// `-M`: an existing shm object is never taken over (O_EXCL), one line
/// naming it; `--keep` leaves the object behind at exit, mode 0600.
#[test]
fn shm_object_is_exclusive_and_kept_on_request() {
    let dir = tmp("shmkeep");
    let mut c = cfg(&dir, "shmkeep", 1);
    let ShmSource::Name(name) = c.shm.clone() else {
        unreachable!()
    };
    let path = PathBuf::from(format!("/dev/shm{name}"));
    std::fs::write(&path, b"someone else's").unwrap();
    let e = Server::start(c.clone()).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains(&name[1..]), "names the object: {e}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"someone else's",
        "untouched"
    );
    std::fs::remove_file(&path).unwrap();
    c.keep = true;
    drop(serve(c));
    let meta = std::fs::metadata(&path).expect("kept at exit");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 1 << 20);
    std::fs::remove_file(&path).unwrap();
}
