//! What a built-in virtio device model is to the thread that serves it:
//! the [`VirtioDevice`] trait and the running device's [`Queues`]. Plain
//! and portable; the thread itself (epoll, eventfds) is Linux's
//! ([`super::worker`]).

use std::os::fd::BorrowedFd;

use super::QueueConfig;
use super::queue::{Chain, GuestMemory, MemoryError, QueueError, SplitQueue};

/// A device model served by a worker thread. Its state is plain data, so a
/// snapshot can save it.
pub trait VirtioDevice: Send + 'static {
    /// Virtio device type (spec 5).
    fn device_type(&self) -> u16;
    /// Features offered (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    fn queue_count(&self) -> u16;
    /// Largest queue size (a power of two).
    fn max_queue_size(&self) -> u16 {
        256
    }
    /// The device-specific configuration space (read-only for the driver).
    fn config(&self) -> Vec<u8>;
    /// The driver set DRIVER_OK having acknowledged `features`.
    fn activate(
        &mut self,
        _features: u64,
        _queues: &mut Queues,
        _mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        Ok(())
    }
    /// The driver reset the device; the queues are gone.
    fn reset(&mut self) {}
    /// Queue `queue` was kicked (or is served once more before the worker
    /// stops).
    fn kick(
        &mut self,
        queue: u16,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError>;
    /// Fds whose readability the worker reports through
    /// [`VirtioDevice::input`], edge-triggered (`crate::poller`): each
    /// report is a new signal. [`input`](VirtioDevice::input) reads its fd
    /// to empty (a [`Notifier`](crate::notifier::Notifier)'s `take`) and
    /// holds what the guest has no buffers for, to deliver on a later kick;
    /// an fd left readable would be reported again at once off Linux.
    fn input_fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }
    /// Input fd `index` (of [`VirtioDevice::input_fds`]) became readable;
    /// called only while the device is active.
    fn input(
        &mut self,
        _index: usize,
        _queues: &mut Queues,
        _mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        Ok(())
    }
}

/// The running device's queues, and which of them got used buffers.
#[derive(Debug, Default)]
pub struct Queues {
    queues: Vec<Option<SplitQueue>>,
    used: Vec<bool>,
}

impl Queues {
    /// Queues from the transport's configurations (a device of `count`
    /// queues; those the driver left disabled are `None`).
    pub fn new(
        count: u16,
        configs: &[QueueConfig],
        mem: &dyn GuestMemory,
    ) -> Result<Queues, QueueError> {
        let mut queues = vec![None; usize::from(count)];
        for c in configs {
            if let Some(slot) = queues.get_mut(usize::from(c.index)) {
                *slot = Some(SplitQueue::new(*c, mem)?);
            }
        }
        Ok(Queues {
            used: vec![false; queues.len()],
            queues,
        })
    }

    /// Whether the driver enabled queue `q`.
    pub fn enabled(&self, q: u16) -> bool {
        matches!(self.queues.get(usize::from(q)), Some(Some(_)))
    }

    /// The next chain of queue `q` (None also when it is not enabled).
    pub fn pop(&mut self, q: u16, mem: &dyn GuestMemory) -> Result<Option<Chain>, QueueError> {
        match self.queues.get_mut(usize::from(q)) {
            Some(Some(queue)) => queue.pop(mem),
            _ => Ok(None),
        }
    }

    /// Completes `head` of queue `q` with `len` bytes written.
    pub fn add_used(
        &mut self,
        q: u16,
        head: u16,
        len: u32,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        let i = usize::from(q);
        if let Some(Some(queue)) = self.queues.get_mut(i) {
            queue.add_used(mem, head, len)?;
            self.used[i] = true;
        }
        Ok(())
    }

    /// Queues that got used buffers since the last call and want an
    /// interrupt for them.
    pub fn take_notifications(&mut self, mem: &dyn GuestMemory) -> Vec<u16> {
        let mut out = Vec::new();
        for (i, (q, used)) in self.queues.iter().zip(self.used.iter_mut()).enumerate() {
            if std::mem::take(used)
                && let Some(q) = q
                && q.wants_interrupt(mem)
            {
                out.push(i as u16);
            }
        }
        out
    }

    pub fn count(&self) -> u16 {
        self.queues.len() as u16
    }
}

/// A memory error on a buffer the queue checked to be in RAM: the chain's
/// buffers are re-checked on each access, so this only happens when
/// memory went away, which breaks the queue.
pub fn memory_broken(queue: u16, err: MemoryError) -> QueueError {
    QueueError::Memory { queue, err }
}
