//! Console output that never blocks a vCPU: the UART's bytes go into a
//! bounded queue that a writer thread drains into stdout (or the serial
//! file). A reader that stops reading (a stalled pipe, a terminal on
//! Ctrl-S) fills the queue; further bytes are dropped and counted
//! (`--stats`: `console_dropped_bytes`), and the guest goes on. At the end,
//! what is queued gets a bounded time to drain, so a stalled reader never
//! holds up the exit either.
//!
//! The fast path: when nothing is queued or being written, the vCPU writes
//! the bytes itself if the fd is ready for them (`poll` with no wait, then
//! one `write` of at most `PIPE_BUF` bytes, which a pipe with a free page
//! or a regular file takes without blocking; terminals, sockets and
//! devices always use the queue); what it does not take goes to the
//! queue, in order. A console line then reaches its reader without a
//! thread hand-over (the first line of a boot is on the boot's critical
//! path); a slow or stalled reader makes the fd not ready, and everything
//! goes through the queue as before.
//!
//! Output that never waits for a reader (a regular file, /dev/null) has no
//! queue and no writer thread at all: the vCPU writes it, and what a
//! failing write does not take is dropped and counted. The writer thread
//! allocates its buffer on its first write, so a thread that never writes
//! (the reader keeps up) costs no heap arena either.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes queued at most; beyond this the guest's output is dropped.
pub const QUEUE_LIMIT: usize = 1 << 20;
/// How long the end of a run waits for queued output to drain.
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(500);

/// Why the UART's output could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// stdout could not be duplicated, or the `-serial file:` log opened.
    #[error("--serial file:{path}: {err}")]
    File {
        path: String,
        #[source]
        err: std::io::Error,
    },
    /// The writer thread did not start.
    #[error("starting the console writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl OutputError {
    /// 2 for the user's file, 1 for the host.
    pub fn exit_code(&self) -> i32 {
        match self {
            OutputError::File { .. } => 2,
            OutputError::Thread(_) => 1,
        }
    }
}

/// The UART's output for `mode`: stdout (unbuffered: every byte the guest
/// sends is visible at once) or the `-serial file:` log
/// ([`create_serial_file`]'s rules) through [`ConsoleOut`], with the handle
/// that counts drops; a sink for `none`. Both machines' 16550 take it.
pub fn serial_output(
    mode: &crate::config::SerialMode,
) -> Result<(Box<dyn Write + Send>, Option<Dropped>), OutputError> {
    use crate::config::SerialMode;
    use std::os::fd::AsFd;
    let file = |path: String| move |err| OutputError::File { path, err };
    let sink: File = match mode {
        SerialMode::Stdio => File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(file("stdout".into()))?,
        ),
        SerialMode::File(p) => create_serial_file(p).map_err(file(p.display().to_string()))?,
        SerialMode::None => return Ok((Box::new(std::io::sink()), None)),
    };
    let (out, dropped) = ConsoleOut::spawn(sink).map_err(OutputError::Thread)?;
    Ok((Box::new(out), Some(dropped)))
}

/// The `-serial file:` log: created 0600 whatever the umask, truncated, never
/// through a symbolic link (O_NOFOLLOW), never blocking (O_NONBLOCK: a FIFO
/// without a reader is refused), and only a regular file or a character device
/// such as /dev/null. `/proc/self/fd/N` is the one link followed: one of the
/// VMM's own descriptors, not a link someone placed (virtme-ng's `vng -v`
/// sends the console to `/proc/self/fd/2`).
pub fn create_serial_file(p: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let own_fd = p
        .strip_prefix("/proc/self/fd")
        .ok()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let nofollow = if own_fd { 0 } else { libc::O_NOFOLLOW };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nofollow | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("is a symbolic link (not followed)")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    let t = meta.file_type();
    if t.is_file() {
        f.set_len(0)?;
    } else if !t.is_char_device() {
        return Err(std::io::Error::other(
            "is not a regular file or a character device",
        ));
    }
    Ok(f)
}

/// Where the writer thread puts the bytes (tests give a stalling one).
type Sink = Box<dyn FnMut(&[u8]) -> std::io::Result<()> + Send>;

#[derive(Debug, Default)]
struct Queue {
    bytes: VecDeque<u8>,
    /// The writer thread is inside `write()` with bytes taken off the queue.
    writing: bool,
    /// The writer thread waits for bytes: only then does a new byte need a
    /// wake-up (the UART hands over one byte at a time; a wake-up per byte
    /// would be a system call per byte on the vCPU's path).
    idle: bool,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when bytes arrive, when the queue is closed and when the
    /// writer finishes a write.
    changed: Condvar,
    dropped: AtomicU64,
    /// Bytes the vCPU wrote itself (the fast path).
    direct: AtomicU64,
}

/// Counts of what the console could not deliver.
#[derive(Debug, Clone, Default)]
pub struct Dropped(Arc<Shared>);

impl Dropped {
    /// Bytes dropped because the reader was not keeping up.
    pub fn bytes(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `deadline` for everything queued to be written; what is
    /// still queued then is dropped (and counted).
    pub fn settle(&self, deadline: Duration) {
        self.0.drain(deadline);
    }
}

impl Shared {
    fn drain(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while !q.bytes.is_empty() || q.writing {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let n = q.bytes.len();
                q.bytes.clear();
                self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                log::warn!(
                    "serial: the console reader is not reading: {n} queued bytes of guest \
                     output dropped"
                );
                return;
            }
            q = self
                .changed
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The writing end the UART gets; see the module docs.
#[derive(Debug)]
pub struct ConsoleOut {
    shared: Arc<Shared>,
    limit: usize,
    /// The fd the fast path writes to (the writer thread's too).
    direct: Option<Arc<File>>,
    /// The fd never waits for a reader: every write is direct, and there
    /// is no writer thread.
    always_ready: bool,
}

/// At most this much is written directly: a pipe with room takes it whole
/// (`PIPE_BUF`), and a UART hands over a few bytes at a time anyway.
const DIRECT_MAX: usize = 4096;

/// Writes `data` to `f` if that cannot block: `poll` says the fd is ready
/// for writing, then one `write`. Returns how much it took (0: not ready).
fn try_write_now(f: &File, data: &[u8]) -> usize {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd on our stack; no wait.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    if ready != 1 || p.revents & libc::POLLOUT == 0 || p.revents & libc::POLLERR != 0 {
        return 0;
    }
    let n = data.len().min(DIRECT_MAX);
    // SAFETY: writes from a live slice of at least `n` bytes.
    let r = unsafe { libc::write(p.fd, data.as_ptr().cast(), n) };
    usize::try_from(r).unwrap_or(0)
}

/// Whether writes to `meta`'s file never wait for a reader: a regular
/// file, or /dev/null.
fn never_waits(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let t = meta.file_type();
    // /dev/null is 1:3 on Linux; elsewhere its numbers are the host's own.
    #[cfg(target_os = "linux")]
    let null = meta.rdev() == libc::makedev(1, 3);
    #[cfg(not(target_os = "linux"))]
    let null = std::fs::metadata("/dev/null").is_ok_and(|n| n.rdev() == meta.rdev());
    t.is_file() || (t.is_char_device() && null)
}

/// Writes `data` to a file that never waits for a reader; returns how
/// much it took before an error (a full disk, say).
fn write_fully(mut f: &File, mut data: &[u8]) -> usize {
    let all = data.len();
    while !data.is_empty() {
        match f.write(data) {
            Ok(0) => break,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("serial: output lost: {e}");
                break;
            }
        }
    }
    all - data.len()
}

impl ConsoleOut {
    /// The console over `file` (stdout or the serial file): written by the
    /// vCPU directly when that cannot block, through a queue and a writer
    /// thread (started here) otherwise.
    pub fn spawn(file: File) -> Result<(ConsoleOut, Dropped), std::io::Error> {
        let meta = file.metadata()?;
        if never_waits(&meta) {
            let shared = Arc::new(Shared::default());
            let out = ConsoleOut {
                shared: shared.clone(),
                limit: 0,
                direct: Some(Arc::new(file)),
                always_ready: true,
            };
            return Ok((out, Dropped(shared)));
        }
        let file = Arc::new(file);
        let f = file.clone();
        let (mut out, dropped) = ConsoleOut::spawn_with_limit(
            Box::new(move |b: &[u8]| (&*f).write_all(b)),
            QUEUE_LIMIT,
        )?;
        // Only where a ready fd takes the whole write: a pipe with a free
        // page takes up to PIPE_BUF bytes. A terminal's "ready" only means
        // some room (a write larger than it would block), so terminals,
        // sockets and other devices always go through the queue.
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_fifo() {
            out.direct = Some(file);
        }
        Ok((out, dropped))
    }

    /// Bytes the vCPU wrote itself.
    pub fn direct_bytes(&self) -> u64 {
        self.shared.direct.load(Ordering::Relaxed)
    }

    fn spawn_with_limit(
        mut write: Sink,
        limit: usize,
    ) -> Result<(ConsoleOut, Dropped), std::io::Error> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::Builder::new()
            .name("console-out".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::sandbox::enter_worker();
                // Allocated on the first write: until then the thread has
                // touched no heap (no arena of its own).
                let mut chunk = Vec::new();
                loop {
                    {
                        let mut q = s.queue.lock().unwrap_or_else(|e| e.into_inner());
                        q.writing = false;
                        s.changed.notify_all();
                        while q.bytes.is_empty() && !q.closed {
                            q.idle = true;
                            q = s.changed.wait(q).unwrap_or_else(|e| e.into_inner());
                        }
                        q.idle = false;
                        if q.bytes.is_empty() {
                            return;
                        }
                        let n = q.bytes.len().min(64 << 10);
                        chunk.clear();
                        chunk.extend(q.bytes.drain(..n));
                        q.writing = true;
                    }
                    if let Err(e) = write(&chunk) {
                        log::debug!("serial: output lost: {e}");
                        s.dropped.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                }
            })?;
        let dropped = Dropped(shared.clone());
        Ok((
            ConsoleOut {
                shared,
                limit,
                direct: None,
                always_ready: false,
            },
            dropped,
        ))
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let all = data.len();
        if self.always_ready
            && let Some(f) = &self.direct
        {
            let written = write_fully(f, data);
            self.shared
                .direct
                .fetch_add(written as u64, Ordering::Relaxed);
            self.shared
                .dropped
                .fetch_add((all - written) as u64, Ordering::Relaxed);
            return Ok(all);
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        // The fast path, only with nothing ahead of these bytes (the lock
        // keeps the writer thread from taking any meanwhile).
        if let Some(f) = &self.direct
            && q.bytes.is_empty()
            && !q.writing
        {
            let n = try_write_now(f, data);
            self.shared.direct.fetch_add(n as u64, Ordering::Relaxed);
            data = &data[n..];
            if data.is_empty() {
                return Ok(all);
            }
        }
        let room = self.limit.saturating_sub(q.bytes.len());
        let take = room.min(data.len());
        q.bytes.extend(&data[..take]);
        if take < data.len() {
            self.shared
                .dropped
                .fetch_add((data.len() - take) as u64, Ordering::Relaxed);
        }
        if take > 0 && q.idle {
            q.idle = false;
            self.shared.changed.notify_all();
        }
        Ok(all)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOut {
    fn drop(&mut self) {
        self.shared.drain(DRAIN_DEADLINE);
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.closed = true;
        q.bytes.clear();
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_planted_link_is_refused_but_our_own_fd_is_followed() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("shmvm-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        let link = dir.join("link");
        std::fs::write(&target, b"kept").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_serial_file(&link).unwrap_err();
        assert_eq!(e.to_string(), "is a symbolic link (not followed)");
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        // vng -v: -chardev file,path=/proc/self/fd/2 behind -serial.
        let own = File::create(dir.join("own")).unwrap();
        let path = format!("/proc/self/fd/{}", own.as_raw_fd());
        let mut f = create_serial_file(std::path::Path::new(&path)).unwrap();
        f.write_all(b"console").unwrap();
        assert_eq!(std::fs::read(dir.join("own")).unwrap(), b"console");
        // Only digits after /proc/self/fd/.
        assert!(create_serial_file(std::path::Path::new("/proc/self/fd/x")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stalled_sink_never_blocks_the_writer_and_drops_are_counted() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let (mut out, dropped) = ConsoleOut::spawn_with_limit(
            Box::new(move |b: &[u8]| {
                // Stalls until the test releases it (a reader that stopped).
                let _ = release_rx.recv();
                g.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(b);
                Ok(())
            }),
            16,
        )
        .expect("writer thread");
        let t0 = Instant::now();
        for _ in 0..1000 {
            out.write_all(b"0123456789").expect("never fails");
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "writes blocked");
        assert!(dropped.bytes() > 9000, "dropped {}", dropped.bytes());
        drop(release_tx);
        drop(out);
        assert_eq!(
            got.lock().unwrap_or_else(|e| e.into_inner()).len() as u64 + dropped.bytes(),
            10_000
        );
    }

    /// A pipe: (read end, write end as a File).
    fn pipe() -> (File, File) {
        use std::os::fd::OwnedFd;
        let (rd, wr) = std::io::pipe().expect("pipe");
        (File::from(OwnedFd::from(rd)), File::from(OwnedFd::from(wr)))
    }

    fn set_nonblocking(f: &File) {
        // SAFETY: fcntl on an fd we own, integer arguments.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }

    #[test]
    fn with_a_reader_keeping_up_the_vcpu_writes_directly() {
        let (mut rd, wr) = pipe();
        let (mut out, dropped) = ConsoleOut::spawn(wr).expect("writer thread");
        for _ in 0..100 {
            out.write_all(b"line\n").expect("never fails");
        }
        // Already in the pipe when write() returned: no thread hand-over.
        set_nonblocking(&rd);
        let mut got = vec![0u8; 4096];
        let n = std::io::Read::read(&mut rd, &mut got).expect("read");
        assert_eq!(n, 500);
        assert_eq!(out.direct_bytes(), 500);
        assert_eq!(dropped.bytes(), 0);
    }

    #[test]
    fn with_a_full_pipe_bytes_are_queued_in_order_and_never_block() {
        let (mut rd, wr) = pipe();
        // Fill the pipe: the reader has stalled.
        set_nonblocking(&wr);
        let mut filled = 0usize;
        while let Ok(n) = (&wr).write(&[b'.'; 4096]) {
            filled += n;
        }
        // SAFETY: fcntl on an fd we own: back to blocking, as stdout is.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETFL, 0) };
        let (mut out, dropped) = ConsoleOut::spawn(wr).expect("writer thread");
        let t0 = Instant::now();
        out.write_all(b"abc").expect("never fails");
        out.write_all(b"def").expect("never fails");
        assert!(t0.elapsed() < Duration::from_millis(500), "a vCPU blocked");
        assert_eq!(out.direct_bytes(), 0);
        // The reader wakes up: everything arrives, queued bytes in order.
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        while all.len() < filled + 6 {
            let n = std::io::Read::read(&mut rd, &mut buf).expect("read");
            all.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&all[filled..], b"abcdef");
        assert_eq!(dropped.bytes(), 0);
    }

    #[test]
    fn a_file_or_dev_null_is_written_by_the_vcpu_without_a_thread() {
        let dir = std::env::temp_dir().join(format!("shmvm-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("log");
        let (mut out, dropped) =
            ConsoleOut::spawn(File::create(&path).expect("create")).expect("console");
        assert!(out.always_ready, "a regular file got a writer thread");
        for _ in 0..100 {
            out.write_all(b"line\n").expect("never fails");
        }
        // In the file when write() returned.
        assert_eq!(std::fs::read(&path).expect("read").len(), 500);
        assert_eq!((out.direct_bytes(), dropped.bytes()), (500, 0));
        drop(out);
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        let (out, _) = ConsoleOut::spawn(null).expect("console");
        assert!(out.always_ready, "/dev/null got a writer thread");
        // A pipe can fill up: it keeps its thread.
        let (_rd, wr) = pipe();
        let (out, _) = ConsoleOut::spawn(wr).expect("console");
        assert!(!out.always_ready);
        // What a failing write does not take is dropped and counted.
        let (mut out, dropped) =
            ConsoleOut::spawn(File::open(&path).expect("open read-only")).expect("console");
        out.write_all(b"lost").expect("never fails");
        assert_eq!((out.direct_bytes(), dropped.bytes()), (0, 4));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_end_waits_a_bounded_time_for_a_stalled_sink() {
        let (_keep, stall) = mpsc::channel::<()>();
        let (mut out, dropped) = ConsoleOut::spawn_with_limit(
            Box::new(move |_b: &[u8]| {
                let _ = stall.recv_timeout(Duration::from_secs(30));
                Ok(())
            }),
            1024,
        )
        .expect("writer thread");
        out.write_all(b"first").expect("queued");
        std::thread::sleep(Duration::from_millis(50));
        out.write_all(b"second").expect("queued");
        let t0 = Instant::now();
        drop(out);
        assert!(t0.elapsed() < DRAIN_DEADLINE + Duration::from_secs(1));
        assert_eq!(dropped.bytes(), 6);
    }
}
