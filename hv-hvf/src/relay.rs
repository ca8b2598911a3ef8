//! Interrupt lines without irqfd. KVM raises a GIC line itself when a
//! device writes its eventfd; HVF has no such thing, and off Linux a
//! device's line is a pipe (`devices::notifier::Notifier`). The relay is
//! one thread that polls every line's read end and, for each that was
//! written, drains it and raises the line's GSI (under HVF: what the
//! routing table says, `hv_gic_set_spi` or `hv_gic_send_msi`). Works the
//! same with eventfds, which is how it is tested on Linux.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

/// A running relay; dropping it stops its thread.
#[derive(Debug)]
pub struct IrqRelay {
    stop: Option<std::io::PipeWriter>,
    thread: Option<JoinHandle<()>>,
}

impl IrqRelay {
    /// Starts relaying: a write to `lines[i].0` calls `raise(lines[i].1)`
    /// (its GSI).
    /// The read ends are made non-blocking.
    pub fn spawn(
        lines: Vec<(OwnedFd, u32)>,
        raise: impl Fn(u32) + Send + 'static,
    ) -> std::io::Result<IrqRelay> {
        for (fd, _) in &lines {
            set_nonblocking(fd)?;
        }
        let (stop_rx, stop_tx) = std::io::pipe()?;
        let thread = std::thread::Builder::new()
            .name("irq-relay".into())
            .stack_size(64 << 10)
            .spawn(move || relay(stop_rx, lines, raise))?;
        Ok(IrqRelay {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for IrqRelay {
    fn drop(&mut self) {
        if let Some(mut s) = self.stop.take() {
            // A failed write still wakes the thread: the pipe closes below.
            let _ = s.write_all(&[1]);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows; no memory passed.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Empties a non-blocking pipe or eventfd; whether anything was in it.
fn drain(fd: &OwnedFd) -> bool {
    let mut f = std::fs::File::from(match fd.try_clone() {
        Ok(f) => f,
        Err(_) => return false,
    });
    let mut buf = [0u8; 64];
    let mut any = false;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return any,
            Ok(_) => any = true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return any,
        }
    }
}

fn relay(stop: std::io::PipeReader, lines: Vec<(OwnedFd, u32)>, raise: impl Fn(u32)) {
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
        .chain(lines.iter().map(|(fd, _)| fd.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a live, correctly sized array of pollfd for the
        // call; the descriptors stay open (owned by this thread).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("irq relay: poll: {}", std::io::Error::last_os_error());
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        for (p, (fd, gsi)) in fds[1..].iter_mut().zip(&lines) {
            if p.revents & libc::POLLIN != 0 && drain(fd) {
                raise(*gsi);
            } else if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                // The device is gone: stop polling its line (poll skips a
                // negative fd) rather than spin on the hang-up.
                p.fd = -1;
            }
            p.revents = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_write_to_a_line_raises_its_spi_once_per_wakeup() {
        let (r1, mut w1) = std::io::pipe().expect("pipe");
        let (r2, mut w2) = std::io::pipe().expect("pipe");
        let (tx, rx) = mpsc::channel();
        let relay = IrqRelay::spawn(vec![(r1.into(), 33), (r2.into(), 40)], move |spi| {
            let _ = tx.send(spi);
        })
        .expect("relay");
        let wait = || rx.recv_timeout(Duration::from_secs(10)).expect("raised");
        w2.write_all(&[1]).expect("write");
        assert_eq!(wait(), 40);
        w1.write_all(&[1]).expect("write");
        assert_eq!(wait(), 33);
        // Several writes before the relay looks coalesce (a level, not a
        // count), and nothing is raised without a write.
        w1.write_all(&[1, 1, 1]).expect("write");
        assert_eq!(wait(), 33);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        drop(relay);
        // Stopped: the raise closure (and its sender) is gone.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
