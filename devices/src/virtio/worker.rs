//! A built-in virtio device's queues served on a thread of their own, off
//! the vCPUs: the thread sleeps in the host's poller (`crate::poller`:
//! epoll on Linux, poll(2) elsewhere) on the queues' kick notifiers (the
//! VMM registers them as ioeventfds, so a kick wakes it without an exit)
//! and on the device's input fds, and signals a queue's call notifier (an
//! irqfd) when it added used buffers the driver wants to hear of.
//!
//! The owner on the vCPU side starts ([`Worker::activate`]) and resets
//! ([`Worker::reset`]) the device; both take the lock the thread holds
//! while it serves a batch, so a reset returns only after the requests in
//! flight completed. Stopping the worker (drop) serves every queue once
//! more, then joins the thread: what the guest made available before the
//! VM ended is done before the VMM exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::QueueConfig;
use super::device::{Queues, VirtioDevice};
use super::queue::{GuestMemory, QueueError};
use crate::notifier::Notifier;
use crate::poller::{Interest, Poll, Poller, Trigger};

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
    wakes: Arc<AtomicU64>,
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
        Self::spawn_on::<Poller>(name, device, mem, on_start, on_broken)
    }

    /// [`Worker::spawn`] on poller `P` (the tests run both on Linux).
    fn spawn_on<P: Poll + 'static>(
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
        let poller = P::new()?;
        poller.add(stop.wait_fd(), STOP, Interest::READ, Trigger::Level)?;
        for (q, k) in kicks.iter().enumerate() {
            poller.add(k.wait_fd(), q as u64, Interest::READ, Trigger::Level)?;
        }
        let inputs = device.input_fds();
        for (i, fd) in inputs.iter().enumerate() {
            poller.add(*fd, INPUT + i as u64, Interest::READ, Trigger::Edge)?;
        }
        let inputs = inputs.len();
        let wakes = Arc::new(AtomicU64::new(0));
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
            inputs,
            wakes: wakes.clone(),
            on_broken,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(256 << 10)
            .spawn(move || {
                on_start();
                t.run(poller);
            })?;
        Ok(Worker {
            shared,
            mem,
            kicks,
            calls,
            stop,
            wakes,
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

    /// How often the thread woke (a thread that spins shows here).
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
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
    /// How many input fds the device has (tokens `INPUT + i`).
    inputs: usize,
    wakes: Arc<AtomicU64>,
    on_broken: OnBroken,
}

/// What woke the thread.
#[derive(Clone, Copy)]
enum Wake {
    Kick(u16),
    Input(usize),
}

impl<D: VirtioDevice> Thread<D> {
    fn run(self, mut poller: impl Poll) {
        let mut ready = Vec::with_capacity(self.kicks.len() + self.inputs + 1);
        loop {
            if let Err(e) = poller.wait(None, &mut ready) {
                log::error!("virtio worker: waiting: {e}; the device stops");
                return;
            }
            self.wakes.fetch_add(1, Ordering::Relaxed);
            let mut stop = false;
            for r in &ready {
                match r.token {
                    STOP => stop = true,
                    t if t >= INPUT => {
                        // Served, the device read its fd to empty: back in
                        // the set (off Linux; epoll's next edge does it).
                        // Not served (no queues yet): left out until the
                        // next kick, or it would be reported at once again.
                        if self.serve(Wake::Input((t - INPUT) as usize)) {
                            poller.rearm(t);
                        }
                    }
                    q => {
                        let q = q as u16;
                        // Drained: kicks coalesce, one pass serves them all.
                        if let Some(k) = self.kicks.get(usize::from(q)) {
                            k.take().ok();
                        }
                        self.serve(Wake::Kick(q));
                        // New buffers, or the device started (its start
                        // kicks every queue): input may go somewhere now.
                        for i in 0..self.inputs {
                            poller.rearm(INPUT + i as u64);
                        }
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

    /// Serves `wake`; false when the device is not running (no queues).
    fn serve(&self, wake: Wake) -> bool {
        let mut s = lock(&self.shared);
        let Shared {
            device, queues: qs, ..
        } = &mut *s;
        let Some(queues) = qs.as_mut() else {
            return false;
        };
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
        true
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
