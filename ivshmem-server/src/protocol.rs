//! The framing of QEMU's ivshmem server protocol and the handshake a peer
//! reads, as plain functions over a Unix stream.
//!
//! Every message is one signed 64-bit little-endian integer, sent with one
//! `sendmsg`, carrying at most one file descriptor. A receiver accumulates
//! the 8 bytes (a stream may split them) and keeps the fd that came with
//! them; a second fd in one message is dropped by the kernel (MSG_CTRUNC).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The only protocol version there is.
pub const PROTOCOL_VERSION: i64 = 0;
/// Peer ids are 16 bits (the doorbell register's upper half).
pub const MAX_PEER_ID: i64 = 0xffff;
/// Most vectors QEMU's server hands out per peer.
pub const MAX_VECTORS: u16 = 64;
/// After the first of its own eventfds, how long a peer that does not know
/// how many vectors to expect waits for more before taking the set as
/// complete. The server sends them back to back.
pub const QUIET_AFTER_OWN: Duration = Duration::from_millis(200);

/// What went wrong talking to the other end.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the server closed the connection while {0}")]
    Closed(&'static str),
    #[error("the server closed the connection in the middle of a message ({0} of 8 bytes)")]
    Partial(usize),
    #[error("no answer from the server within {0:?} while {1}")]
    Timeout(Duration, &'static str),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
    #[error("the server speaks protocol version {0}, this peer speaks {PROTOCOL_VERSION}")]
    Version(i64),
    #[error("the server sent {value} where {what} was expected")]
    Unexpected { value: i64, what: &'static str },
    #[error("the server sent a file descriptor with {0}, which carries none")]
    UnexpectedFd(&'static str),
    #[error("the server sent no shared memory file descriptor")]
    NoSharedMemory,
    #[error(
        "the server sent a file descriptor for peer {peer} vector {vector} that is not an eventfd"
    )]
    NotEventfd { peer: u16, vector: usize },
    #[error("the server sent {got} vector(s) for this peer, {want} were asked for (vectors=)")]
    FewerVectors { got: usize, want: usize },
    #[error("the server sent more than {want} vectors for peer {peer} (vectors=)")]
    TooManyVectors { peer: u16, want: usize },
    #[error("peer id {0} is not 0..=65535")]
    BadPeerId(i64),
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub value: i64,
    pub fd: Option<File>,
}

/// Sends one message, with `fd` attached when given.
pub fn send(stream: &UnixStream, value: i64, fd: Option<&impl AsRawFd>) -> io::Result<()> {
    let bytes = value.to_le_bytes();
    let fds: Vec<_> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let sent = stream
        .send_with_fds(&[&bytes[..]], &fds)
        .map_err(io::Error::from)?;
    if sent != bytes.len() {
        // Unix stream sockets do not split an 8-byte send in practice.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of 8 bytes"),
        ));
    }
    Ok(())
}

/// Receives one message, waiting until `deadline` (None: forever).
/// `doing` names the step for errors.
pub fn recv(
    stream: &UnixStream,
    deadline: Option<Instant>,
    doing: &'static str,
) -> Result<Message, ProtocolError> {
    let mut buf = [0u8; 8];
    let mut have = 0;
    let mut fd = None;
    while have < buf.len() {
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ProtocolError::Timeout(Duration::ZERO, doing));
                }
                Some(left)
            }
            None => None,
        };
        stream
            .set_read_timeout(timeout)
            .map_err(|e| ProtocolError::Io("setting a socket timeout", e))?;
        match stream.recv_with_fd(&mut buf[have..]) {
            Ok((0, _)) if have == 0 => return Err(ProtocolError::Closed(doing)),
            Ok((0, _)) => return Err(ProtocolError::Partial(have)),
            Ok((n, f)) => {
                have += n;
                if f.is_some() {
                    fd = f;
                }
            }
            Err(e) if matches!(e.errno(), libc::EAGAIN | libc::EINTR) => {
                if e.errno() == libc::EAGAIN {
                    let waited = timeout.unwrap_or_default();
                    return Err(ProtocolError::Timeout(waited, doing));
                }
            }
            Err(e) => return Err(ProtocolError::Io("reading from the server", e.into())),
        }
    }
    Ok(Message {
        value: i64::from_le_bytes(buf),
        fd,
    })
}

/// Whether `file` is an eventfd (the kernel names its inode so).
fn is_eventfd(file: &File) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

/// Turns a received eventfd into an [`EventFd`].
fn into_eventfd(file: File, peer: u16, vector: usize) -> Result<EventFd, ProtocolError> {
    if !is_eventfd(&file) {
        return Err(ProtocolError::NotEventfd { peer, vector });
    }
    let fd: OwnedFd = file.into();
    // SAFETY: `fd` is an open eventfd this process owns (received over
    // SCM_RIGHTS and checked above); ownership moves into the EventFd.
    Ok(unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) })
}

/// What a message after the handshake means.
#[derive(Debug)]
pub enum Notice {
    /// Peer `peer`'s next vector: writing 1 to `fd` rings it.
    Vector { peer: u16, fd: File },
    /// Peer `peer` left.
    Gone { peer: u16 },
}

fn peer_id(value: i64) -> Result<u16, ProtocolError> {
    u16::try_from(value).map_err(|_| ProtocolError::BadPeerId(value))
}

/// Classifies a message received after the shared memory.
pub fn notice(msg: Message) -> Result<Notice, ProtocolError> {
    let peer = peer_id(msg.value)?;
    Ok(match msg.fd {
        Some(fd) => Notice::Vector { peer, fd },
        None => Notice::Gone { peer },
    })
}

/// The peers this end knows: per peer id, its vectors' eventfds.
#[derive(Debug, Default)]
pub struct PeerTable {
    pub peers: std::collections::BTreeMap<u16, Vec<EventFd>>,
}

/// What a notice changed, for whoever watches peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A peer's first vector arrived.
    Joined(u16),
    /// One more vector of a known peer.
    Vector(u16, usize),
    /// The peer left (it had vectors).
    Left(u16),
    /// A leave notice for a peer this end did not know.
    UnknownLeft(u16),
}

impl PeerTable {
    /// Applies one notice; `max_vectors` limits the vectors per peer.
    pub fn apply(
        &mut self,
        n: Notice,
        max_vectors: Option<usize>,
    ) -> Result<Change, ProtocolError> {
        match n {
            Notice::Vector { peer, fd } => {
                let v = self.peers.entry(peer).or_default();
                if let Some(want) = max_vectors
                    && v.len() >= want
                {
                    return Err(ProtocolError::TooManyVectors { peer, want });
                }
                let index = v.len();
                v.push(into_eventfd(fd, peer, index)?);
                Ok(if index == 0 {
                    Change::Joined(peer)
                } else {
                    Change::Vector(peer, index)
                })
            }
            Notice::Gone { peer } => Ok(match self.peers.remove(&peer) {
                Some(_) => Change::Left(peer),
                None => Change::UnknownLeft(peer),
            }),
        }
    }
}

/// What the handshake gave a peer.
#[derive(Debug)]
pub struct Setup {
    /// This peer's id.
    pub id: u16,
    /// The shared memory.
    pub shm: File,
    /// The other peers and this one (its own eventfds: the ones it waits on).
    pub table: PeerTable,
}

/// Reads the handshake: version, own id, the shared memory, then the
/// existing peers' eventfds and this peer's own. With `vectors` given, exactly
/// that many own eventfds are expected (fewer within `quiet` after the
/// first, or more, is an error); without, the set is complete when `quiet`
/// passes with no more. Everything happens before `deadline`.
pub fn handshake(
    stream: &UnixStream,
    vectors: Option<usize>,
    deadline: Instant,
    quiet: Duration,
) -> Result<Setup, ProtocolError> {
    let first = recv(stream, Some(deadline), "sending the protocol version")?;
    if first.fd.is_some() {
        return Err(ProtocolError::UnexpectedFd("the protocol version"));
    }
    if first.value != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(first.value));
    }
    let own = recv(stream, Some(deadline), "sending this peer's id")?;
    if own.fd.is_some() {
        return Err(ProtocolError::UnexpectedFd("the peer id"));
    }
    let id = peer_id(own.value)?;
    let shm = recv(stream, Some(deadline), "sending the shared memory")?;
    if shm.value != -1 {
        return Err(ProtocolError::Unexpected {
            value: shm.value,
            what: "-1 with the shared memory",
        });
    }
    let shm = shm.fd.ok_or(ProtocolError::NoSharedMemory)?;
    let mut table = PeerTable::default();
    let own_count = |t: &PeerTable| t.peers.get(&id).map_or(0, Vec::len);
    loop {
        let have = own_count(&table);
        if vectors.is_some_and(|want| have == want) {
            break;
        }
        let until = if have > 0 {
            deadline.min(Instant::now() + quiet)
        } else {
            deadline
        };
        let msg = match recv(stream, Some(until), "sending the peers' eventfds") {
            Ok(m) => m,
            Err(ProtocolError::Timeout(..)) if have > 0 => match vectors {
                Some(want) => return Err(ProtocolError::FewerVectors { got: have, want }),
                None => break,
            },
            Err(e) => return Err(e),
        };
        table.apply(notice(msg)?, vectors)?;
    }
    Ok(Setup { id, shm, table })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("socketpair")
    }

    fn efd() -> EventFd {
        EventFd::new(0).expect("eventfd")
    }

    fn shm_file() -> File {
        let f = tempfile();
        f.set_len(4096).expect("size");
        f
    }

    fn tempfile() -> File {
        let p = std::env::temp_dir().join(format!(
            "ivshmem-proto-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("temp file");
        let _ = std::fs::remove_file(&p);
        f
    }

    const NO_FD: Option<&File> = None;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    const QUIET: Duration = Duration::from_millis(50);

    #[test]
    fn handshake_as_qemu_sends_it() {
        let (a, b) = pair();
        send(&a, 0, NO_FD).unwrap();
        send(&a, 3, NO_FD).unwrap();
        send(&a, -1, Some(&shm_file())).unwrap();
        let (p1v0, p1v1, own0, own1) = (efd(), efd(), efd(), efd());
        send(&a, 1, Some(&p1v0)).unwrap();
        send(&a, 1, Some(&p1v1)).unwrap();
        send(&a, 3, Some(&own0)).unwrap();
        send(&a, 3, Some(&own1)).unwrap();
        let s = handshake(&b, Some(2), soon(), QUIET).unwrap();
        assert_eq!(s.id, 3);
        assert_eq!(s.table.peers[&1].len(), 2);
        assert_eq!(s.table.peers[&3].len(), 2);
        // Writing the received eventfd signals the sender's.
        s.table.peers[&1][1].write(1).unwrap();
        assert_eq!(p1v1.read().unwrap(), 1);
        // Without a vector count: the set ends when the server goes quiet.
        let (a, b) = pair();
        for (v, fd) in [(0, None), (0, None), (-1, Some(shm_file()))] {
            send(&a, v, fd.as_ref()).unwrap();
        }
        send(&a, 0, Some(&efd())).unwrap();
        let s = handshake(&b, None, soon(), QUIET).unwrap();
        assert_eq!((s.id, s.table.peers[&0].len()), (0, 1));
    }

    #[test]
    fn split_message_is_reassembled_with_its_fd() {
        let (a, b) = pair();
        let e = efd();
        let bytes = 7i64.to_le_bytes();
        a.send_with_fds(&[&bytes[..3]], &[e.as_raw_fd()]).unwrap();
        a.send_with_fds(&[&bytes[3..]], &[]).unwrap();
        let m = recv(&b, Some(soon()), "test").unwrap();
        assert_eq!(m.value, 7);
        assert!(m.fd.is_some());
    }

    fn err_of(script: impl FnOnce(&UnixStream), vectors: Option<usize>) -> String {
        let (a, b) = pair();
        script(&a);
        drop(a);
        match handshake(&b, vectors, soon(), QUIET) {
            Ok(s) => panic!("handshake accepted {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_servers_get_one_line_errors() {
        let e = err_of(|_| {}, None);
        assert!(
            e.contains("closed the connection while sending the protocol version"),
            "{e}"
        );
        let e = err_of(|a| send(a, 1, NO_FD).unwrap(), None);
        assert!(e.contains("protocol version 1"), "{e}");
        let e = err_of(|a| send(a, 0, Some(&efd())).unwrap(), None);
        assert!(
            e.contains("file descriptor with the protocol version"),
            "{e}"
        );
        let e = err_of(
            |a| {
                send(a, 0, NO_FD).unwrap();
                send(a, 70000, NO_FD).unwrap();
            },
            None,
        );
        assert!(e.contains("peer id 70000"), "{e}");
        // Too few fds: the shared memory message without its fd.
        let e = err_of(
            |a| {
                send(a, 0, NO_FD).unwrap();
                send(a, 1, NO_FD).unwrap();
                send(a, -1, NO_FD).unwrap();
            },
            None,
        );
        assert!(e.contains("no shared memory"), "{e}");
        // Garbage: bytes that are not a whole message, then close.
        let e = err_of(
            |a| {
                use std::io::Write;
                (&*a).write_all(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]).unwrap();
            },
            None,
        );
        assert!(
            e.contains("peer id") || e.contains("middle of a message"),
            "{e}"
        );
        // Early close after the shared memory: no own eventfd ever came.
        let e = err_of(
            |a| {
                send(a, 0, NO_FD).unwrap();
                send(a, 1, NO_FD).unwrap();
                send(a, -1, Some(&shm_file())).unwrap();
            },
            Some(1),
        );
        assert!(
            e.contains("closed the connection while sending the peers"),
            "{e}"
        );
        // Fewer vectors than asked.
        let e = err_of(
            |a| {
                send(a, 0, NO_FD).unwrap();
                send(a, 1, NO_FD).unwrap();
                send(a, -1, Some(&shm_file())).unwrap();
                send(a, 1, Some(&efd())).unwrap();
                // Keep the socket open past the quiet period.
                std::mem::forget(a.try_clone().unwrap());
            },
            Some(2),
        );
        assert!(
            e.contains("sent 1 vector(s) for this peer, 2 were asked"),
            "{e}"
        );
        // More than the device has.
        let e = err_of(
            |a| {
                send(a, 0, NO_FD).unwrap();
                send(a, 1, NO_FD).unwrap();
                send(a, -1, Some(&shm_file())).unwrap();
                send(a, 2, Some(&efd())).unwrap();
                send(a, 2, Some(&efd())).unwrap();
            },
            Some(1),
        );
        assert!(e.contains("more than 1 vectors for peer 2"), "{e}");
        // A file that is not an eventfd where an eventfd belongs.
        let e = err_of(
            |a| {
                send(a, 0, NO_FD).unwrap();
                send(a, 1, NO_FD).unwrap();
                send(a, -1, Some(&shm_file())).unwrap();
                send(a, 1, Some(&shm_file())).unwrap();
            },
            Some(1),
        );
        assert!(e.contains("not an eventfd"), "{e}");
    }

    #[test]
    fn silence_times_out() {
        let (_a, b) = pair();
        let e = handshake(&b, None, Instant::now() + QUIET, QUIET).unwrap_err();
        assert!(matches!(e, ProtocolError::Timeout(..)), "{e}");
    }

    #[test]
    fn notices_update_the_table() {
        let mut t = PeerTable::default();
        // A received fd, as the table gets them.
        let f = |e: EventFd| {
            let (a, b) = pair();
            send(&a, 0, Some(&e)).unwrap();
            recv(&b, Some(soon()), "test").unwrap().fd.unwrap()
        };
        let n = Notice::Vector {
            peer: 4,
            fd: f(efd()),
        };
        assert_eq!(t.apply(n, None).unwrap(), Change::Joined(4));
        let n = Notice::Vector {
            peer: 4,
            fd: f(efd()),
        };
        assert_eq!(t.apply(n, None).unwrap(), Change::Vector(4, 1));
        assert_eq!(
            t.apply(Notice::Gone { peer: 4 }, None).unwrap(),
            Change::Left(4)
        );
        assert_eq!(
            t.apply(Notice::Gone { peer: 4 }, None).unwrap(),
            Change::UnknownLeft(4)
        );
        assert!(
            notice(Message {
                value: -2,
                fd: None
            })
            .is_err()
        );
    }
}
