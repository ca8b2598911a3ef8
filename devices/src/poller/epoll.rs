//! The poller on Linux: one epoll set (vmm-sys-util's), edges as epoll's.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{Interest, Poll, Ready, Trigger, timeout_ms};

/// Registrations in an epoll set.
#[derive(Debug)]
pub struct EpollPoller {
    epoll: Epoll,
    /// Registrations (sizes the event buffer: one wait reports them all).
    count: AtomicUsize,
    events: Vec<EpollEvent>,
}

fn events(interest: Interest, trigger: Trigger) -> EventSet {
    let mut set = EventSet::empty();
    if interest.read {
        set |= EventSet::IN | EventSet::READ_HANG_UP;
    }
    if interest.write {
        set |= EventSet::OUT;
    }
    if trigger == Trigger::Edge {
        set |= EventSet::EDGE_TRIGGERED;
    }
    set
}

impl Poll for EpollPoller {
    fn new() -> io::Result<EpollPoller> {
        Ok(EpollPoller {
            epoll: Epoll::new()?,
            count: AtomicUsize::new(0),
            events: Vec::new(),
        })
    }

    fn add(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        trigger: Trigger,
    ) -> io::Result<()> {
        let ev = EpollEvent::new(events(interest, trigger), token);
        self.epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), ev)?;
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        trigger: Trigger,
    ) -> io::Result<()> {
        let ev = EpollEvent::new(events(interest, trigger), token);
        self.epoll.ctl(ControlOperation::Modify, fd.as_raw_fd(), ev)
    }

    fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        )?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Nothing to do: the next write to the fd is a new edge.
    fn rearm(&self, _token: u64) {}

    fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<Ready>) -> io::Result<()> {
        ready.clear();
        let want = self.count.load(Ordering::Relaxed).max(1);
        if self.events.len() < want {
            self.events.resize(want, EpollEvent::default());
        }
        let n = match self.epoll.wait(timeout_ms(timeout), &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        ready.extend(self.events[..n].iter().map(|e| {
            let set = e.event_set();
            Ready {
                token: e.data(),
                readable: set.contains(EventSet::IN),
                writable: set.contains(EventSet::OUT),
                hang_up: set
                    .intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR),
            }
        }));
        Ok(())
    }
}
