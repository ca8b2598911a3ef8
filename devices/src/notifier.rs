//! A wake-up from one thread to another, or between the VMM and the
//! hypervisor: an interrupt line (raised by a device, delivered by KVM's
//! irqfd or HVF's relay), a queue's doorbell (written by KVM's ioeventfd
//! or the HVF vCPU, read by a worker), a stop request.
//!
//! On Linux it is one eventfd, which KVM takes as it is. Elsewhere
//! (macOS, the BSDs) there is no eventfd: it is a non-blocking pipe
//! (vmm-sys-util's notifier pair), whose read end is what a poller waits
//! on and whose write end is what a signaller writes. Signals coalesce on
//! both: however many came, one [`Notifier::take`] sees them all.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

#[cfg(not(target_os = "linux"))]
use vmm_sys_util::event::{self, EventConsumer, EventFlag, EventNotifier};
#[cfg(target_os = "linux")]
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A coalescing wake-up: [`signal`](Notifier::signal) on one side,
/// [`take`](Notifier::take) or a poll on [`wait_fd`](Notifier::wait_fd)
/// on the other.
#[derive(Debug)]
pub struct Notifier {
    #[cfg(target_os = "linux")]
    fd: EventFd,
    #[cfg(not(target_os = "linux"))]
    rx: EventConsumer,
    #[cfg(not(target_os = "linux"))]
    tx: EventNotifier,
}

/// `fd` borrowed for as long as its owner.
fn borrow(fd: &impl AsRawFd) -> BorrowedFd<'_> {
    // SAFETY: the owner keeps the descriptor open for the borrow's
    // lifetime, which is its own.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// A full pipe, or an eventfd at its maximum count, is signalled already.
fn signalled(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        r => r,
    }
}

#[cfg(target_os = "linux")]
impl Notifier {
    /// A new notifier, non-blocking and closed on exec.
    pub fn new() -> io::Result<Notifier> {
        EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map(Notifier::from)
    }

    /// Signals it (wakes whoever polls its [`wait_fd`](Self::wait_fd)).
    pub fn signal(&self) -> io::Result<()> {
        signalled(self.fd.write(1))
    }

    /// Whether it was signalled since the last call; clears it.
    pub fn take(&self) -> io::Result<bool> {
        match self.fd.read() {
            Ok(n) => Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The same notifier through duplicated descriptors (an irqfd or
    /// ioeventfd on one is on the other).
    pub fn try_clone(&self) -> io::Result<Notifier> {
        self.fd.try_clone().map(Notifier::from)
    }

    /// What becomes readable when it is signalled.
    pub fn wait_fd(&self) -> BorrowedFd<'_> {
        borrow(&self.fd)
    }

    /// What a signaller outside this process's code (the hypervisor, a
    /// vhost-user back-end) writes an 8-byte count to.
    pub fn signal_fd(&self) -> BorrowedFd<'_> {
        borrow(&self.fd)
    }

    /// The eventfd, for KVM's irqfd and ioeventfd and for vhost-user.
    pub fn eventfd(&self) -> &EventFd {
        &self.fd
    }
}

/// An eventfd someone else made (a vhost-user back-end's, an ivshmem
/// peer's) used as a notifier.
#[cfg(target_os = "linux")]
impl From<EventFd> for Notifier {
    fn from(fd: EventFd) -> Notifier {
        Notifier { fd }
    }
}

#[cfg(not(target_os = "linux"))]
impl Notifier {
    /// A new notifier, non-blocking and closed on exec.
    pub fn new() -> io::Result<Notifier> {
        let (rx, tx) =
            event::new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(Notifier { rx, tx })
    }

    /// Signals it (wakes whoever polls its [`wait_fd`](Self::wait_fd)).
    pub fn signal(&self) -> io::Result<()> {
        signalled(self.tx.notify())
    }

    /// Whether it was signalled since the last call; clears it (drains
    /// every 8-byte signal in the pipe).
    pub fn take(&self) -> io::Result<bool> {
        let mut raised = false;
        loop {
            match self.rx.consume() {
                Ok(()) => raised = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(raised),
                // A short read: a writer that wrote less than 8 bytes.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// The same notifier through duplicated pipe ends.
    pub fn try_clone(&self) -> io::Result<Notifier> {
        Ok(Notifier {
            rx: self.rx.try_clone()?,
            tx: self.tx.try_clone()?,
        })
    }

    /// What becomes readable when it is signalled: the pipe's read end.
    pub fn wait_fd(&self) -> BorrowedFd<'_> {
        borrow(&self.rx)
    }

    /// What a signaller outside this process's code (the HVF vCPU loop's
    /// ioevents) writes an 8-byte count to: the pipe's write end.
    pub fn signal_fd(&self) -> BorrowedFd<'_> {
        borrow(&self.tx)
    }
}

impl AsFd for Notifier {
    /// The end to poll ([`Notifier::wait_fd`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wait_fd()
    }
}

impl vm_superio::Trigger for Notifier {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.signal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(n: &Notifier) -> bool {
        use crate::poller::{Interest, Poll, PollPoller, Trigger};
        let mut p = PollPoller::new().unwrap();
        p.add(n.wait_fd(), 0, Interest::READ, Trigger::Level)
            .unwrap();
        let mut ready = Vec::new();
        p.wait(Some(std::time::Duration::ZERO), &mut ready).unwrap();
        ready.iter().any(|r| r.readable)
    }

    #[test]
    fn signals_coalesce_and_take_clears_them() {
        let n = Notifier::new().unwrap();
        assert!(!n.take().unwrap());
        assert!(!readable(&n));
        for _ in 0..3 {
            n.signal().unwrap();
        }
        assert!(readable(&n));
        assert!(n.take().unwrap());
        assert!(!readable(&n));
        assert!(!n.take().unwrap());
    }

    #[test]
    fn a_clone_is_the_same_notifier() {
        let a = Notifier::new().unwrap();
        let b = a.try_clone().unwrap();
        b.signal().unwrap();
        assert!(readable(&a));
        assert!(a.take().unwrap());
        assert!(!b.take().unwrap());
    }

    #[test]
    fn a_raw_8_byte_write_to_the_signal_end_signals() {
        use std::io::Write;
        let n = Notifier::new().unwrap();
        let fd = n.signal_fd().try_clone_to_owned().unwrap();
        std::fs::File::from(fd)
            .write_all(&1u64.to_ne_bytes())
            .unwrap();
        assert!(n.take().unwrap());
    }
}
