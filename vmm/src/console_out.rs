//! Console output that never blocks a vCPU: the UART's bytes go into a
//! bounded queue that a writer thread drains into stdout (or the serial
//! file). A reader that stops reading (a stalled pipe, a terminal on
//! Ctrl-S) fills the queue; further bytes are dropped and counted
//! (`--stats`: `console_dropped_bytes`), and the guest goes on. At the end,
//! what is queued gets a bounded time to drain, so a stalled reader never
//! holds up the exit either.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes queued at most; beyond this the guest's output is dropped.
pub const QUEUE_LIMIT: usize = 1 << 20;
/// How long the end of a run waits for queued output to drain.
pub const DRAIN_DEADLINE: Duration = Duration::from_millis(500);

/// The `-serial file:` log: created 0600 whatever the umask, truncated, never
/// through a symbolic link (O_NOFOLLOW), never blocking (O_NONBLOCK: a FIFO
/// without a reader is refused), and only a regular file or a character device
/// such as /dev/null.
pub fn create_serial_file(p: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
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
}

impl ConsoleOut {
    /// Starts the writer thread over `sink`.
    pub fn spawn(mut sink: Box<dyn Write + Send>) -> Result<(ConsoleOut, Dropped), std::io::Error> {
        ConsoleOut::spawn_with_limit(
            Box::new(move |b: &[u8]| sink.write_all(b).and_then(|_| sink.flush())),
            QUEUE_LIMIT,
        )
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
                let mut chunk = Vec::with_capacity(4096);
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
        Ok((ConsoleOut { shared, limit }, dropped))
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
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
        Ok(data.len())
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
