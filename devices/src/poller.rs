//! Waiting on several fds at once, the same on every host: register an fd
//! with a token, wait (with a timeout), get the tokens of the fds that are
//! ready. The virtio workers wait on their queues' doorbells and their
//! devices' input; the QMP server on its sockets and its wake-up.
//!
//! On Linux it is epoll ([`EpollPoller`]), as the workers and the monitor
//! always waited. Elsewhere (macOS, the BSDs) it is poll(2)
//! ([`PollPoller`]): POSIX, and enough for what is waited on here (pipes
//! and sockets, a few per thread). Both are built on Linux, where the
//! tests run both (here, the virtio worker's and the QMP server's).
//!
//! Registrations are level-triggered (reported at every wait while ready)
//! or edge-triggered ([`Trigger::Edge`]): reported when the fd becomes
//! ready, not again while the caller leaves it ready, so an fd whose data
//! cannot be taken yet does not spin its thread. poll(2) has no edges, so
//! there an edge registration is one-shot: once reported, it is left out
//! of the poll set until the caller calls [`Poll::rearm`] with its token.
//! The contract that makes both the same: after an edge registration is
//! reported, call `rearm` once its fd is read to empty (a signal that
//! arrives after that is then reported on either host), or later, when
//! whatever kept the caller from reading it changed (on Linux `rearm` does
//! nothing: the next write is a new edge). Never `rearm` an fd left
//! readable, unless you want it reported at once off Linux.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

#[cfg(target_os = "linux")]
mod epoll;
mod poll;

#[cfg(target_os = "linux")]
pub use epoll::EpollPoller;
pub use poll::PollPoller;

/// The host's poller: epoll on Linux, poll(2) elsewhere.
#[cfg(target_os = "linux")]
pub type Poller = EpollPoller;
/// The host's poller: epoll on Linux, poll(2) elsewhere.
#[cfg(not(target_os = "linux"))]
pub type Poller = PollPoller;

/// What a registration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    /// Readable (or hung up).
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    /// Readable or writable.
    pub const READ_WRITE: Interest = Interest {
        read: true,
        write: true,
    };
}

/// How a registration is reported (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// At every wait while the fd is ready.
    Level,
    /// When it becomes ready; off Linux, once until [`Poll::rearm`].
    Edge,
}

/// One ready registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the fd has an error: a read says which.
    pub hang_up: bool,
}

/// A set of registered fds to wait on ([`Poller`] is the host's).
pub trait Poll: Send + Sized {
    fn new() -> io::Result<Self>;
    /// Registers `fd` under `token`. The fd must stay open until it is
    /// [`delete`](Poll::delete)d or the poller dropped.
    fn add(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        trigger: Trigger,
    ) -> io::Result<()>;
    /// Changes what `fd` waits for and its token and trigger.
    fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        trigger: Trigger,
    ) -> io::Result<()>;
    /// Forgets `fd`.
    fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Puts edge registration `token` back after its report (a no-op on
    /// Linux and for a level registration).
    fn rearm(&self, token: u64);
    /// Waits until a registration is ready or `timeout` (None: forever)
    /// passed, and puts the ready ones in `ready` (cleared first; empty
    /// on a timeout or a signal).
    fn wait(&mut self, timeout: Option<Duration>, ready: &mut Vec<Ready>) -> io::Result<()>;
}

/// `timeout` in milliseconds as epoll and poll take it: -1 for none, and
/// rounded up (a sub-millisecond wait must not become a busy loop).
fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

#[cfg(test)]
mod tests;
