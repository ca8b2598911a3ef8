//! The QMP sockets: one thread waiting in the host's poller
//! (`devices::poller`: epoll on Linux, poll(2) elsewhere), non-blocking
//! clients.
//!
//! A client can never stall the VM or the others: input is bounded per
//! message ([`MAX_INPUT`]) and per wake-up, output is queued per client
//! and bounded ([`MAX_QUEUED`]); a client over either bound is dropped.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use devices::poller::{Interest, Poll, Poller, Ready, Trigger};
use serde_json::Value;

use super::control::{self, EventSink, EventSource};
use super::protocol::{self, Machine, Session};
use crate::config::MonitorConfig;

/// Largest single input message (QEMU allows more, but nothing it accepts
/// needs more than a few hundred bytes).
pub const MAX_INPUT: usize = 1 << 20;
/// Output queued for a client that does not read; past it, it is dropped.
pub const MAX_QUEUED: usize = 4 << 20;
/// Clients at once; more are closed at once.
pub const MAX_CLIENTS: usize = 64;
/// Bytes read from one client per wake-up (fairness).
const READ_CHUNK: usize = 64 << 10;
/// How long the server waits before binding (see [`Server::serve`]).
const START_DELAY: Duration = Duration::from_millis(2);
/// How long pending output may take to drain when the VM ends.
const FLUSH_AT_EXIT: Duration = Duration::from_millis(200);

/// Errors creating the sockets; each names its option.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("-qmp unix:{path}: {what}: {err}")]
    Socket {
        path: String,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("-qmp unix:{path}: exists and is not a socket")]
    NotASocket { path: String },
    #[error("-qmp: {what}: {err}")]
    Setup {
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
}

impl Error {
    /// 2: the user can pick another path.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Socket { .. } | Error::NotASocket { .. } => 2,
            Error::Setup { .. } => 1,
        }
    }
}

/// A socket file removed when dropped.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listener: UnixListener,
    path: PathBuf,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What can be checked of `path` without creating it (two stats): that
/// its directory exists and nothing but a stale socket is there. Binding
/// itself (~60 us on ext4) happens on the server's thread, off the boot
/// path; what fails there ends the VM.
fn precheck(path: &Path) -> Result<(), Error> {
    let shown = || path.display().to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Err(err) = std::fs::metadata(dir).and_then(|m| {
        if m.is_dir() {
            Ok(())
        } else {
            Err(std::io::Error::from(ErrorKind::NotADirectory))
        }
    }) {
        return Err(Error::Socket {
            path: shown(),
            what: "its directory",
            err,
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(Error::NotASocket { path: shown() }),
        _ => Ok(()),
    }
}

/// Why [`listen`] could not bind a path.
#[derive(Debug)]
pub(crate) enum Refused {
    Io(&'static str, std::io::Error),
    NotASocket,
}

/// [`listen`] for a `-qmp` socket.
fn bind(path: &Path) -> Result<Bound, Error> {
    let shown = || path.display().to_string();
    listen(path).map_err(|r| match r {
        Refused::Io(what, err) => Error::Socket {
            path: shown(),
            what,
            err,
        },
        Refused::NotASocket => Error::NotASocket { path: shown() },
    })
}

/// Binds `path` as a unix socket of mode 0600, whatever the umask (the
/// mask is 0177 during bind).
pub(crate) fn listen(path: &Path) -> Result<Bound, Refused> {
    let err = Refused::Io;
    let try_bind = || {
        // SAFETY: umask only swaps the process's file mode mask; it is set
        // back right after bind. The other threads run vCPUs then, which
        // create no files.
        let old = unsafe { libc::umask(0o177) };
        let r = UnixListener::bind(path);
        // SAFETY: as above, restoring the caller's mask.
        unsafe { libc::umask(old) };
        r
    };
    let listener = match try_bind() {
        Ok(l) => l,
        // A stale socket from an earlier run is replaced, as QEMU does;
        // anything else at the path is left alone.
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let m = std::fs::symlink_metadata(path).map_err(|e| err("cannot listen", e))?;
            if !m.file_type().is_socket() {
                return Err(Refused::NotASocket);
            }
            std::fs::remove_file(path).map_err(|e| err("removing the stale socket", e))?;
            try_bind().map_err(|e| err("cannot listen", e))?
        }
        Err(e) => return Err(err("cannot listen", e)),
    };
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
    })
}

/// The monitors, checked; bound and served by [`Server::serve`].
#[derive(Debug)]
pub struct Server {
    paths: Vec<PathBuf>,
    events: EventSource,
    sink: EventSink,
    stop: Arc<AtomicBool>,
}

/// Ends [`Server::serve`] from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    sink: EventSink,
}

impl StopHandle {
    /// Sends what is queued (the SHUTDOWN event), closes every client and
    /// returns from `serve`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.sink.wake();
    }
}

/// One connected client.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    session: Session,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Whether writability is waited for.
    want_out: bool,
    dead: bool,
}

const LISTEN_BASE: u64 = 1 << 32;
const WAKE: u64 = 1 << 33;

impl Server {
    /// The monitors `configs` asks for, their paths checked (None: no
    /// monitor).
    pub fn new(configs: &[MonitorConfig]) -> Result<Option<Server>, Error> {
        if configs.is_empty() {
            return Ok(None);
        }
        for c in configs {
            precheck(&c.path)?;
        }
        let (sink, events) = control::events().map_err(|err| Error::Setup {
            what: "creating the event channel",
            err,
        })?;
        control::set_device_events(sink.clone());
        Ok(Some(Server {
            paths: configs.iter().map(|c| c.path.clone()).collect(),
            events,
            sink,
            stop: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Where the machine sends events.
    pub fn events(&self) -> EventSink {
        self.sink.clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
            sink: self.sink.clone(),
        }
    }

    /// Binds the sockets (mode 0600; removed again on every way out) and
    /// serves clients until [`StopHandle::stop`]; then flushes what is
    /// queued (briefly) and closes the clients. Errors: a socket could not
    /// be created.
    pub fn serve(self, vm: &dyn Machine) -> Result<(), Error> {
        self.serve_on::<Poller>(vm)
    }

    /// [`Server::serve`] on poller `P` (the tests run both on Linux).
    fn serve_on<P: Poll>(self, vm: &dyn Machine) -> Result<(), Error> {
        // Let vCPU 0 reach the guest first: on a busy host this thread's
        // start-up (bind ~60 us on ext4, the poller) would otherwise compete
        // with the boot path for a core. Clients wait for the socket file.
        // A VM that ends meanwhile (the stop handle wakes us) never binds.
        if self.stop_requested_within::<P>(START_DELAY) {
            return Ok(());
        }
        let sockets = self
            .paths
            .iter()
            .map(|p| bind(p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Err(err) = self.run::<P>(&sockets, vm) {
            log::error!("QMP server stopped: {err}");
        }
        Ok(())
    }

    /// Waits up to `d` for [`StopHandle::stop`]; true if it came.
    fn stop_requested_within<P: Poll>(&self, d: Duration) -> bool {
        let waited = P::new().and_then(|mut p| {
            p.add(
                self.events.wake.wait_fd(),
                WAKE,
                Interest::READ,
                Trigger::Level,
            )?;
            p.wait(Some(d), &mut Vec::with_capacity(1))
        });
        if let Err(e) = waited {
            log::debug!("QMP: start delay: {e}");
        }
        self.stop.load(Ordering::SeqCst)
    }

    fn run<P: Poll>(&self, sockets: &[Bound], vm: &dyn Machine) -> std::io::Result<()> {
        let mut poller = P::new()?;
        for (i, s) in sockets.iter().enumerate() {
            s.listener.set_nonblocking(true)?;
            poller.add(
                s.listener.as_fd(),
                LISTEN_BASE + i as u64,
                Interest::READ,
                Trigger::Level,
            )?;
        }
        poller.add(
            self.events.wake.wait_fd(),
            WAKE,
            Interest::READ,
            Trigger::Level,
        )?;
        let mut clients: Vec<Option<Client>> = Vec::new();
        let mut ready: Vec<Ready> = Vec::with_capacity(32);
        while !self.stop.load(Ordering::SeqCst) {
            poller.wait(None, &mut ready)?;
            for ev in &ready {
                match ev.token {
                    WAKE => {
                        let _ = self.events.wake.take();
                    }
                    t if t >= LISTEN_BASE => {
                        let i = usize::try_from(t - LISTEN_BASE).unwrap_or(usize::MAX);
                        if let Some(s) = sockets.get(i) {
                            // A new client's first bytes (or its hang-up)
                            // are handled at once: a burst of short
                            // connections never fills the table.
                            accept(&poller, &s.listener, &mut clients, &mut |all, slot| {
                                if let Some(Some(c)) = all.get_mut(slot) {
                                    c.read();
                                }
                                self.process(all, slot, vm);
                                if let Some(Some(c)) = all.get_mut(slot) {
                                    c.flush();
                                }
                                reap(&poller, all, slot);
                            });
                        }
                    }
                    t => {
                        let i = usize::try_from(t).unwrap_or(usize::MAX);
                        if let Some(Some(c)) = clients.get_mut(i) {
                            if ev.readable || ev.hang_up {
                                c.read();
                                self.process(&mut clients, i, vm);
                            } else {
                                c.flush();
                            }
                        }
                    }
                }
            }
            // Events first (QEMU sends STOP before stop's return), then
            // every client's queued replies.
            self.broadcast(&mut clients);
            for i in 0..clients.len() {
                if let Some(Some(c)) = clients.get_mut(i) {
                    c.flush();
                    c.arm(&poller, i);
                }
                reap(&poller, &mut clients, i);
            }
        }
        self.broadcast(&mut clients);
        let deadline = Instant::now() + FLUSH_AT_EXIT;
        for c in clients.iter_mut().flatten() {
            c.flush_until(deadline);
        }
        Ok(())
    }

    /// Answers every complete message client `i` sent. Events a command
    /// caused go out before its reply, as QEMU sends them.
    fn process(&self, clients: &mut [Option<Client>], i: usize, vm: &dyn Machine) {
        loop {
            let Some(Some(c)) = clients.get_mut(i) else {
                return;
            };
            let Some(msg) = c.next_message() else {
                return;
            };
            let reply = c.session.handle(msg, vm);
            self.broadcast(clients);
            if let Some(Some(c)) = clients.get_mut(i) {
                c.send(&reply);
            }
        }
    }

    /// Moves queued events into `out`.
    fn pump(&self, out: &mut Vec<Value>) {
        out.extend(self.events.rx.try_iter().map(|e| e.to_json()));
    }

    /// Sends queued events to every negotiated client.
    fn broadcast(&self, clients: &mut [Option<Client>]) {
        let mut events = Vec::new();
        self.pump(&mut events);
        for e in &events {
            for c in clients.iter_mut().flatten() {
                if c.session.negotiated() {
                    c.send(e);
                }
            }
        }
    }
}

/// Forgets client `slot` if it is dead.
fn reap(poller: &impl Poll, clients: &mut [Option<Client>], slot: usize) {
    if let Some(s) = clients.get_mut(slot)
        && s.as_ref().is_some_and(|c| c.dead)
        && let Some(c) = s.take()
    {
        let _ = poller.delete(c.stream.as_fd());
    }
}

/// Accepts every waiting connection; `new` sees each one once it has its
/// slot.
fn accept(
    poller: &impl Poll,
    listener: &UnixListener,
    clients: &mut Vec<Option<Client>>,
    new: &mut dyn FnMut(&mut Vec<Option<Client>>, usize),
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("QMP: accept: {e}");
                return;
            }
        };
        let slot = match clients.iter().position(Option::is_none) {
            Some(i) => i,
            None if clients.len() < MAX_CLIENTS => {
                clients.push(None);
                clients.len() - 1
            }
            None => {
                log::warn!("QMP: {MAX_CLIENTS} clients connected, refusing another");
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err()
            || poller
                .add(stream.as_fd(), slot as u64, Interest::READ, Trigger::Level)
                .is_err()
        {
            continue;
        }
        let mut c = Client {
            stream,
            session: Session::default(),
            input: Vec::new(),
            output: Vec::new(),
            want_out: false,
            dead: false,
        };
        c.send(&protocol::greeting());
        c.flush();
        clients[slot] = Some(c);
        new(clients, slot);
    }
}

/// Where the next JSON value in `buf` ends, or why there is none.
enum Next {
    Value(Value, usize),
    /// Only whitespace.
    Empty,
    /// Incomplete: wait for more bytes.
    More,
    /// A syntax error: reply and skip through the next newline.
    Bad(String),
}

fn next_value(buf: &[u8]) -> Next {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        None => Next::Empty,
        Some(Ok(v)) => Next::Value(v, it.byte_offset()),
        Some(Err(e)) if e.is_eof() => Next::More,
        Some(Err(e)) => Next::Bad(e.to_string()),
    }
}

impl Client {
    /// Reads what is there, up to [`READ_CHUNK`] (the others get their
    /// turn; the poller reports the rest).
    fn read(&mut self) {
        let mut buf = [0u8; 8192];
        let mut got = 0;
        while got < READ_CHUNK && self.input.len() <= MAX_INPUT {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.dead = true;
                    break;
                }
                Ok(n) => {
                    got += n;
                    self.input.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    break;
                }
            }
        }
    }

    /// The next complete message; parse errors are answered on the way, a
    /// message over [`MAX_INPUT`] ends the client.
    fn next_message(&mut self) -> Option<Value> {
        loop {
            match next_value(&self.input) {
                Next::Empty => {
                    self.input.clear();
                    return None;
                }
                Next::More => {
                    if self.input.len() > MAX_INPUT {
                        self.send(&protocol::parse_error(&format!(
                            "message longer than {MAX_INPUT} bytes"
                        )));
                        self.flush();
                        self.dead = true;
                        self.input = Vec::new();
                    }
                    return None;
                }
                Next::Bad(why) => {
                    self.send(&protocol::parse_error(&why));
                    let skip = self
                        .input
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(self.input.len(), |p| p + 1);
                    self.input.drain(..skip);
                }
                Next::Value(v, end) => {
                    self.input.drain(..end);
                    return Some(v);
                }
            }
        }
    }

    /// Queues one message (QEMU ends each with CRLF).
    fn send(&mut self, v: &Value) {
        if self.dead {
            return;
        }
        if self.output.len() > MAX_QUEUED {
            log::warn!("QMP: a client does not read its replies; dropping it");
            self.dead = true;
            return;
        }
        if serde_json::to_writer(&mut self.output, v).is_ok() {
            self.output.extend_from_slice(b"\r\n");
        }
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) {
        while !self.output.is_empty() && !self.dead {
            match self.stream.write(&self.output) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }

    fn flush_until(&mut self, deadline: Instant) {
        loop {
            self.flush();
            if self.output.is_empty() || self.dead || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for writability only while output waits.
    fn arm(&mut self, poller: &impl Poll, slot: usize) {
        let want = !self.output.is_empty();
        if want != self.want_out {
            let interest = if want {
                Interest::READ_WRITE
            } else {
                Interest::READ
            };
            if poller
                .modify(self.stream.as_fd(), slot as u64, interest, Trigger::Level)
                .is_ok()
            {
                self.want_out = want;
            }
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
