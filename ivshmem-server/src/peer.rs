//! A host program as an ivshmem peer.
//!
//! ```no_run
//! # fn main() -> Result<(), ivshmem_server::peer::PeerError> {
//! use std::time::Duration;
//! let mut p = ivshmem_server::Peer::connect("/tmp/ivshmem_socket", Duration::from_secs(5))?;
//! println!("I am peer {}; others: {:?}", p.id(), p.peers());
//! if let Some(&other) = p.peers().first() {
//!     p.ring(other, 0)?;
//! }
//! let rings = p.wait(0, Duration::from_secs(1))?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;
use vm_memory::mmap::MmapRegion;

use vm_memory::{FileOffset, VolatileMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::protocol::{self, Change, PeerTable, ProtocolError, QUIET_AFTER_OWN};

/// Errors of a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("ivshmem peer: can't connect to {path}: {err}")]
    Connect { path: String, err: io::Error },
    #[error("ivshmem peer: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("ivshmem peer: the shared memory ({size} bytes): {err}")]
    Map { size: u64, err: String },
    #[error("ivshmem peer: no peer {0}")]
    NoPeer(u16),
    #[error("ivshmem peer: peer {peer} has {count} vector(s), not {vector}")]
    NoVector {
        peer: u16,
        vector: usize,
        count: usize,
    },
    #[error("ivshmem peer: nothing within {0:?}")]
    Timeout(Duration),
    #[error("ivshmem peer: {0}")]
    Io(#[from] io::Error),
}

/// A peer joining or leaving, as the server announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    Joined(u16),
    Left(u16),
}

const SOCKET: u64 = u64::MAX;

/// A connected peer.
#[derive(Debug)]
pub struct Peer {
    stream: UnixStream,
    /// The socket alone, to see whether a notice is waiting.
    socket_ready: Epoll,
    server_gone: bool,
    id: u16,
    shm: Arc<MmapRegion>,
    table: PeerTable,
    events: VecDeque<PeerEvent>,
    /// Per own vector: its epoll and whether the socket is in it.
    waiters: Vec<Option<(Epoll, bool)>>,
}

impl Peer {
    /// Connects to the server at `path` and reads the handshake, all within
    /// `timeout`.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Peer, PeerError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|err| PeerError::Connect {
            path: path.display().to_string(),
            err,
        })?;
        let setup = protocol::handshake(&stream, None, Instant::now() + timeout, QUIET_AFTER_OWN)?;
        let size = setup.shm.metadata()?.len();
        let len = usize::try_from(size).map_err(|_| PeerError::Map {
            size,
            err: "too large".into(),
        })?;
        let shm = MmapRegion::from_file(FileOffset::new(setup.shm, 0), len).map_err(|e| {
            PeerError::Map {
                size,
                err: e.to_string(),
            }
        })?;
        let events = setup
            .table
            .peers
            .keys()
            .filter(|&&p| p != setup.id)
            .map(|&p| PeerEvent::Joined(p))
            .collect();
        let socket_ready = Epoll::new()?;
        socket_ready.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, SOCKET),
        )?;
        Ok(Peer {
            socket_ready,
            stream,
            server_gone: false,
            id: setup.id,
            shm: Arc::new(shm),
            table: setup.table,
            events,
            waiters: Vec::new(),
        })
    }

    /// This peer's id (what a guest's IVPosition reads for it).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The shared memory (a handle that outlives borrows of the peer:
    /// `peer.memory().as_volatile_slice().read_obj::<u64>(off)`).
    pub fn memory(&self) -> Arc<MmapRegion> {
        self.shm.clone()
    }

    /// Bytes of shared memory.
    pub fn size(&self) -> usize {
        self.shm.len()
    }

    /// Own vectors.
    pub fn vectors(&self) -> usize {
        self.table.peers.get(&self.id).map_or(0, Vec::len)
    }

    /// The other peers, by id.
    pub fn peers(&self) -> Vec<u16> {
        self.table
            .peers
            .keys()
            .copied()
            .filter(|&p| p != self.id)
            .collect()
    }

    /// Whether the server closed the connection (peers then no longer
    /// change; the doorbells already known keep working).
    pub fn server_gone(&self) -> bool {
        self.server_gone
    }

    /// Rings `vector` of `peer` (this peer's own id rings itself).
    pub fn ring(&mut self, peer: u16, vector: usize) -> Result<(), PeerError> {
        self.drain_notices()?;
        let fds = self.table.peers.get(&peer).ok_or(PeerError::NoPeer(peer))?;
        let fd = fds.get(vector).ok_or(PeerError::NoVector {
            peer,
            vector,
            count: fds.len(),
        })?;
        fd.write(1)?;
        Ok(())
    }

    /// Waits up to `timeout` for a doorbell on own `vector`; returns how
    /// many rings it collected (rings before the wait count too).
    pub fn wait(&mut self, vector: usize, timeout: Duration) -> Result<u64, PeerError> {
        let count = self.vectors();
        let own = self
            .table
            .peers
            .get(&self.id)
            .and_then(|v| v.get(vector))
            .ok_or(PeerError::NoVector {
                peer: self.id,
                vector,
                count,
            })?
            .try_clone()?;
        let deadline = Instant::now() + timeout;
        // One epoll per vector, kept between waits (rebuilt without the
        // socket once the server is gone, or it would always be readable).
        if self.waiters.len() <= vector {
            self.waiters.resize_with(vector + 1, || None);
        }
        let mut waiter = match self.waiters[vector].take() {
            Some((e, with_socket)) if with_socket != self.server_gone => (e, with_socket),
            _ => (self.epoll(Some(&own))?, !self.server_gone),
        };
        let r = loop {
            match own.read() {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => break Err(e.into()),
            }
            if let Err(e) = self.wait_ready(&waiter.0, deadline, timeout) {
                break Err(e);
            }
            if let Err(e) = self.drain_notices() {
                break Err(e);
            }
            if waiter.1 && self.server_gone {
                waiter = (self.epoll(Some(&own))?, false);
            }
        };
        self.waiters[vector] = Some(waiter);
        r
    }

    /// The next peer that joined or left, waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<PeerEvent, PeerError> {
        let deadline = Instant::now() + timeout;
        let mut epoll = self.epoll(None)?;
        loop {
            let gone = self.server_gone;
            self.drain_notices()?;
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if self.server_gone && !gone {
                // Nothing will change any more: wait out the timeout quietly.
                epoll = self.epoll(None)?;
            }
            self.wait_ready(&epoll, deadline, timeout)?;
        }
    }

    fn epoll(&self, own: Option<&vmm_sys_util::eventfd::EventFd>) -> Result<Epoll, PeerError> {
        let epoll = Epoll::new()?;
        if let Some(own) = own {
            epoll.ctl(
                ControlOperation::Add,
                own.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )?;
        }
        if !self.server_gone {
            epoll.ctl(
                ControlOperation::Add,
                self.stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, SOCKET),
            )?;
        }
        Ok(epoll)
    }

    fn wait_ready(
        &self,
        epoll: &Epoll,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PeerError::Timeout(timeout));
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut ev = [EpollEvent::default(); 2];
        match epoll.wait(ms, &mut ev) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies every notice the server has sent so far.
    fn drain_notices(&mut self) -> Result<(), PeerError> {
        while !self.server_gone {
            let mut ev = [EpollEvent::default(); 1];
            if self.socket_ready.wait(0, &mut ev)? == 0 {
                return Ok(());
            }
            let deadline = Some(Instant::now() + Duration::from_secs(1));
            let msg = match protocol::recv(&self.stream, deadline, "sending a notice") {
                Ok(m) => m,
                Err(ProtocolError::Closed(_)) => {
                    log::warn!("ivshmem peer {}: the server closed the connection", self.id);
                    self.server_gone = true;
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            match self.table.apply(protocol::notice(msg)?, None)? {
                Change::Joined(p) => self.events.push_back(PeerEvent::Joined(p)),
                Change::Left(p) => self.events.push_back(PeerEvent::Left(p)),
                Change::Vector(..) | Change::UnknownLeft(_) => {}
            }
        }
        Ok(())
    }
}
