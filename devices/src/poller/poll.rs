//! The poller off Linux: poll(2) over the registrations, rebuilt at each
//! wait (a thread here waits on a handful of fds). Edges are emulated as
//! one-shot reports put back by `rearm` (the module above says why that is
//! the same contract as epoll's edges).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{Interest, Poll, Ready, Trigger, timeout_ms};

#[derive(Debug, Clone, Copy)]
struct Entry {
    fd: RawFd,
    token: u64,
    interest: Interest,
    trigger: Trigger,
    /// An edge registration reported and not re-armed yet: out of the set.
    fired: bool,
}

impl Entry {
    /// A registration, armed.
    fn new(fd: BorrowedFd<'_>, token: u64, interest: Interest, trigger: Trigger) -> Entry {
        Entry {
            fd: fd.as_raw_fd(),
            token,
            interest,
            trigger,
            fired: false,
        }
    }
}

/// Registrations waited on with poll(2).
#[derive(Debug, Default)]
pub struct PollPoller {
    entries: Mutex<Vec<Entry>>,
    /// The pollfds of the last wait and the entries they stand for.
    fds: Vec<libc::pollfd>,
    which: Vec<usize>,
}

fn events(interest: Interest) -> libc::c_short {
    let mut ev = 0;
    if interest.read {
        ev |= libc::POLLIN;
    }
    if interest.write {
        ev |= libc::POLLOUT;
    }
    ev
}

impl PollPoller {
    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Poll for PollPoller {
    fn new() -> io::Result<PollPoller> {
        Ok(PollPoller::default())
    }

    fn add(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        trigger: Trigger,
    ) -> io::Result<()> {
        let new = Entry::new(fd, token, interest, trigger);
        let mut entries = self.entries();
        if entries.iter().any(|e| e.fd == new.fd) {
            // As epoll_ctl(EPOLL_CTL_ADD) of a registered fd.
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        entries.push(new);
        Ok(())
    }

    fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        trigger: Trigger,
    ) -> io::Result<()> {
        let new = Entry::new(fd, token, interest, trigger);
        let mut entries = self.entries();
        let e = entries
            .iter_mut()
            .find(|e| e.fd == new.fd)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        *e = new;
        Ok(())
    }

    fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        let mut entries = self.entries();
        let i = entries
            .iter()
            .position(|e| e.fd == fd)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        entries.remove(i);
        Ok(())
    }

    fn rearm(&self, token: u64) {
        for e in self.entries().iter_mut().filter(|e| e.token == token) {
            e.fired = false;
        }
    }

    fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<Ready>) -> io::Result<()> {
        ready.clear();
        self.fds.clear();
        self.which.clear();
        let entries = self.entries.get_mut().unwrap_or_else(|e| e.into_inner());
        for (i, e) in entries.iter().enumerate() {
            if !e.fired {
                self.fds.push(libc::pollfd {
                    fd: e.fd,
                    events: events(e.interest),
                    revents: 0,
                });
                self.which.push(i);
            }
        }
        let nfds = libc::nfds_t::try_from(self.fds.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `fds` holds `nfds` initialized pollfds, which poll only
        // writes the `revents` of; the fds are the registrations', open
        // (the caller's promise to `add`) or, if not, reported as POLLNVAL.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), nfds, timeout_ms(timeout)) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        for (p, &i) in self.fds.iter().zip(&self.which) {
            if p.revents == 0 {
                continue;
            }
            let e = &mut entries[i];
            if e.trigger == Trigger::Edge {
                e.fired = true;
            }
            ready.push(Ready {
                token: e.token,
                readable: p.revents & libc::POLLIN != 0,
                writable: p.revents & libc::POLLOUT != 0,
                hang_up: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
            });
        }
        Ok(())
    }
}
