//! The server on a real socket, on both pollers (epoll, and the poll(2) of
//! macOS and the BSDs): negotiation, a command with its id, an event,
//! a second client's bad input and hang-up, output that waits for the
//! client to read, and the socket gone after the stop.

use std::io::{BufRead, BufReader};
use std::sync::atomic::AtomicU32;

#[cfg(target_os = "linux")]
use devices::poller::EpollPoller;
use devices::poller::PollPoller;
use serde_json::json;

use super::*;
use crate::qmp::{Event, Request};

struct Fake;

impl Machine for Fake {
    fn call(&self, r: Request) -> control::Reply {
        match r {
            Request::Status => Ok(json!({"status": "running", "running": true})),
            _ => Ok(json!({})),
        }
    }
}

/// Generous: the machine may be loaded.
const PATIENCE: Duration = Duration::from_secs(10);

fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("shmvm-qmp-test-{}-{n}.sock", std::process::id()))
}

struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    /// Connects once the server bound `path` (it binds after a short delay).
    fn connect(path: &Path) -> Client {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(start.elapsed() < PATIENCE, "connect: {e}");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn line(&mut self) -> Value {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "{l:?}");
        serde_json::from_str(&l).unwrap()
    }

    fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }
}

/// Stops the server however the test ends (a failed check must not leave
/// the scope waiting for the server's thread).
struct StopOnDrop(StopHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn serves_clients<P: Poll>() {
    let path = socket_path();
    let server = Server::new(&[MonitorConfig { path: path.clone() }])
        .unwrap()
        .unwrap();
    let stop = StopOnDrop(server.stop_handle());
    let events = server.events();
    std::thread::scope(|s| {
        let t = s.spawn(|| server.serve_on::<P>(&Fake));
        let mut a = Client::connect(&path);
        assert!(a.line()["QMP"]["version"].is_object());
        a.send(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(a.line(), json!({"return": {}}));
        a.send(r#"{"execute":"query-status","id":7}"#);
        assert_eq!(
            a.line(),
            json!({"return": {"status": "running", "running": true}, "id": 7})
        );
        events.emit(Event::Stop);
        assert_eq!(a.line()["event"], "STOP");

        // A second client: bad input is answered, its hang-up reaped.
        let mut b = Client::connect(&path);
        assert!(b.line()["QMP"].is_object());
        b.send("{\"execute\":\n");
        b.send("}}\n");
        assert_eq!(b.line()["error"]["class"], "GenericError");
        drop(b);

        // Replies that outgrow the socket's buffer wait for the client.
        const N: usize = 10_000;
        let burst = r#"{"execute":"query-status"}"#.repeat(N);
        let writer = a.w.try_clone().unwrap();
        // All the input first (the server reads on while its replies
        // wait), then the replies: what did not fit in the socket goes out
        // as the client reads, when the server hears it can write. A writer
        // thread of its own, so that a failure cannot block the test.
        let (done, written) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut w = writer;
            let _ = done.send(w.write_all(burst.as_bytes()).is_ok());
        });
        assert_eq!(written.recv_timeout(PATIENCE), Ok(true));
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..N {
            assert_eq!(a.line()["return"]["running"], true);
        }

        drop(stop);
        t.join().unwrap().unwrap();
        // The server closed the client and removed its socket.
        let mut rest = String::new();
        assert_eq!(a.r.read_line(&mut rest).unwrap(), 0, "{rest:?}");
        assert!(!path.exists());
    });
}

#[cfg(target_os = "linux")]
#[test]
fn serves_clients_on_epoll() {
    serves_clients::<EpollPoller>();
}

#[test]
fn serves_clients_on_poll() {
    serves_clients::<PollPoller>();
}
