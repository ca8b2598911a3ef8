//! A built-in virtio device's queues served on a thread of their own, off
//! the vCPUs: the thread sleeps in epoll on the queues' kick eventfds (the
//! VMM registers them as ioeventfds, so a kick wakes it without an exit)
//! and on the device's input fds, and signals a queue's call eventfd (an
//! irqfd) when it added used buffers the driver wants to hear of.
//!
//! The owner on the vCPU side starts ([`Worker::activate`]) and resets
//! ([`Worker::reset`]) the device; both take the lock the thread holds
//! while it serves a batch, so a reset returns only after the requests in
//! flight completed. Stopping the worker (drop) serves every queue once
//! more, then joins the thread: what the guest made available before the
//! VM ended is done before the VMM exits.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::QueueConfig;
use super::device::{Queues, VirtioDevice};
use super::queue::{GuestMemory, QueueError};
use crate::notifier::Notifier;

/// What the vCPU side and the thread share.
struct Shared<D> {
    device: D,
    queues: Option<Queues>,
    features: u64,
}

/// Who to tell that the device broke (its queue state cannot be trusted
/// any more: it needs a reset).
pub type OnBroken = Box<dyn Fn(&QueueError) + Send>;

/// A device's worker thread and the handles to drive it.
pub struct Worker<D: VirtioDevice> {
    shared: Arc<Mutex<Shared<D>>>,
    mem: Arc<dyn GuestMemory>,
    kicks: Vec<Notifier>,
    calls: Vec<Notifier>,
    stop: Notifier,
    thread: Option<JoinHandle<()>>,
}

impl<D: VirtioDevice> std::fmt::Debug for Worker<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.kicks.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const STOP: u64 = u64::MAX;
const INPUT: u64 = 1 << 32;

impl<D: VirtioDevice> Worker<D> {
    /// Starts the thread `name` serving `device` over `mem`; `on_start`
    /// runs first on it (the VMM's sandbox), `on_broken` when a queue
    /// breaks.
    pub fn spawn(
        name: String,
        device: D,
        mem: Arc<dyn GuestMemory>,
        on_start: fn(),
        on_broken: OnBroken,
    ) -> std::io::Result<Worker<D>> {
        let n = device.queue_count();
        let kicks = (0..n)
            .map(|_| Notifier::new())
            .collect::<Result<Vec<_>, _>>()?;
        let calls = (0..n)
            .map(|_| Notifier::new())
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Notifier::new()?;
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, data: u64, edge: bool| {
            let mut events = EventSet::IN;
            if edge {
                events |= EventSet::EDGE_TRIGGERED;
            }
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))
        };
        add(stop.wait_fd().as_raw_fd(), STOP, false)?;
        for (q, k) in kicks.iter().enumerate() {
            add(k.wait_fd().as_raw_fd(), q as u64, false)?;
        }
        for (i, fd) in device.input_fds().into_iter().enumerate() {
            add(fd, INPUT + i as u64, true)?;
        }
        let shared = Arc::new(Mutex::new(Shared {
            device,
            queues: None,
            features: 0,
        }));
        let t = Thread {
            shared: shared.clone(),
            mem: mem.clone(),
            kicks: clone_all(&kicks)?,
            calls: clone_all(&calls)?,
            epoll,
            on_broken,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(256 << 10)
            .spawn(move || {
                on_start();
                t.run();
            })?;
        Ok(Worker {
            shared,
            mem,
            kicks,
            calls,
            stop,
            thread: Some(thread),
        })
    }

    /// The kick eventfds (for ioeventfds), one per queue.
    pub fn kicks(&self) -> &[Notifier] {
        &self.kicks
    }

    /// The call eventfds (for irqfds), one per queue.
    pub fn calls(&self) -> &[Notifier] {
        &self.calls
    }

    /// Runs `f` over the device model (e.g. for its statistics), waiting
    /// for a batch in progress.
    pub fn with_device<R>(&self, f: impl FnOnce(&D) -> R) -> R {
        f(&lock(&self.shared).device)
    }

    /// The driver accepted `features`.
    pub fn set_features(&self, features: u64) {
        lock(&self.shared).features = features;
    }

    /// Starts serving `queues` (the driver set DRIVER_OK).
    pub fn activate(&self, queues: &[QueueConfig]) -> Result<(), QueueError> {
        let mut s = lock(&self.shared);
        let mut q = Queues::new(s.device.queue_count(), queues, &*self.mem)?;
        let features = s.features;
        s.device.activate(features, &mut q, &*self.mem)?;
        s.queues = Some(q);
        drop(s);
        // Buffers made available before DRIVER_OK (a receive queue's) and
        // notifications the device produced while activating.
        for k in &self.kicks {
            k.signal().ok();
        }
        Ok(())
    }

    /// Stops serving the queues (the driver reset the device); returns
    /// once the batch in progress is done.
    pub fn reset(&self) {
        let mut s = lock(&self.shared);
        s.queues = None;
        s.features = 0;
        s.device.reset();
    }
}

impl<D: VirtioDevice> Drop for Worker<D> {
    fn drop(&mut self) {
        if let Err(e) = self.stop.signal() {
            log::warn!("virtio worker: cannot stop: {e}");
            return;
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("virtio worker: the thread panicked");
        }
    }
}

fn clone_all(fds: &[Notifier]) -> std::io::Result<Vec<Notifier>> {
    fds.iter().map(Notifier::try_clone).collect()
}

struct Thread<D> {
    shared: Arc<Mutex<Shared<D>>>,
    mem: Arc<dyn GuestMemory>,
    kicks: Vec<Notifier>,
    calls: Vec<Notifier>,
    epoll: Epoll,
    on_broken: OnBroken,
}

/// What woke the thread.
#[derive(Clone, Copy)]
enum Wake {
    Kick(u16),
    Input(usize),
}

impl<D: VirtioDevice> Thread<D> {
    fn run(self) {
        let mut events = vec![EpollEvent::default(); self.kicks.len() + 8];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio worker: epoll: {e}; the device stops");
                    return;
                }
            };
            let mut stop = false;
            for e in &events[..n] {
                match e.data() {
                    STOP => stop = true,
                    d if d >= INPUT => self.serve(Wake::Input((d - INPUT) as usize)),
                    q => {
                        let q = q as u16;
                        // Drained: kicks coalesce, one pass serves them all.
                        if let Some(k) = self.kicks.get(usize::from(q)) {
                            k.take().ok();
                        }
                        self.serve(Wake::Kick(q));
                    }
                }
            }
            if stop {
                // What the guest made available before the end is served.
                for q in 0..self.kicks.len() {
                    self.serve(Wake::Kick(q as u16));
                }
                return;
            }
        }
    }

    fn serve(&self, wake: Wake) {
        let mut s = lock(&self.shared);
        let Shared {
            device, queues: qs, ..
        } = &mut *s;
        let Some(queues) = qs.as_mut() else { return };
        let mem = &*self.mem;
        let r = match wake {
            Wake::Kick(q) => device.kick(q, queues, mem),
            Wake::Input(i) => device.input(i, queues, mem),
        };
        let notify = queues.take_notifications(mem);
        if r.is_err() {
            // Nothing more is read from rings that cannot be trusted.
            *qs = None;
        }
        drop(s);
        for q in notify {
            if let Some(c) = self.calls.get(usize::from(q))
                && let Err(e) = c.signal()
            {
                log::warn!("virtio worker: queue {q}: cannot signal: {e}");
            }
        }
        if let Err(e) = r {
            (self.on_broken)(&e);
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
