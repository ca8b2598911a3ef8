//! A virtio-serial port on a socket shmvm listens on
//! (`-chardev socket,id=ID,path=PATH,server=on,wait=off`), as QEMU's socket
//! chardev: the socket is mode 0600 and removed when the device goes; one
//! client at a time (a second waits in the listen backlog until the first
//! leaves, as QEMU accepts one connection per socket chardev); the guest's
//! output goes to the client, dropped (and counted as the device's errors)
//! while none is connected or when it does not read (never blocking the
//! guest); what the client sends is the port's input
//! ([`devices::virtio::console::PortInput`]), and the device tells the
//! guest when a client connects and leaves (PORT_OPEN).
//!
//! One thread per socket accepts and reads the client (blocking calls; it
//! waits while [`devices::virtio::console::INPUT_HELD`] bytes are held),
//! under the monitor's seccomp filter: the one kind allowed to accept.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::virtio::console::PortInput;

use super::plug::Error;
use crate::qmp::server::{Bound, Refused, listen};

type Client = Arc<Mutex<Option<UnixStream>>>;

/// The port's output: to the connected client, if any.
#[derive(Debug)]
pub struct SocketSink {
    client: Client,
    /// Removes the socket file when the device goes.
    _bound: Bound,
}

impl Write for SocketSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let c = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = c.as_ref() else {
            return Err(std::io::Error::new(
                ErrorKind::NotConnected,
                "no client: output dropped",
            ));
        };
        // SAFETY: send on an fd `s` owns, reading `buf`'s bytes only.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Listens on `path` (for `what`, the option named in errors) and starts
/// the thread serving its clients.
pub fn start(path: &Path, what: &str) -> Result<(SocketSink, Arc<PortInput>), Error> {
    let open = |err: std::io::Error| Error::Open {
        option: what.to_string(),
        err,
    };
    let bound = listen(path).map_err(|r| {
        open(match r {
            Refused::Io(step, e) => {
                std::io::Error::new(e.kind(), format!("{}: {step}: {e}", path.display()))
            }
            Refused::NotASocket => {
                std::io::Error::other(format!("{}: exists and is not a socket", path.display()))
            }
        })
    })?;
    let listener = bound.listener.try_clone().map_err(open)?;
    let input = Arc::new(PortInput::new().map_err(open)?);
    let client = Client::default();
    let (i, c, name) = (input.clone(), client.clone(), what.to_string());
    std::thread::Builder::new()
        .name("vport-socket".into())
        .stack_size(128 << 10)
        .spawn(move || {
            // The kind that accepts connections (workers do not).
            crate::sandbox::enter_thread(crate::sandbox::ThreadKind::Monitor);
            accept_loop(&listener, &i, &c, &name);
        })
        .map_err(open)?;
    Ok((
        SocketSink {
            client,
            _bound: bound,
        },
        input,
    ))
}

fn accept_loop(listener: &UnixListener, input: &PortInput, client: &Client, what: &str) {
    let warnings = devices::ratelimit::RateLimit::default();
    loop {
        match listener.accept() {
            Ok((s, _)) => serve(s, input, client, what),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                devices::warn_limited!(warnings, "{what}: accepting a client: {e}");
                // Out of fds, say: try again later, not in a loop.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One client: its bytes are the port's input until it leaves.
fn serve(mut s: UnixStream, input: &PortInput, client: &Client, what: &str) {
    let out = match s.try_clone() {
        Ok(o) => o,
        Err(e) => {
            log::warn!("{what}: a client: {e}; closed");
            return;
        }
    };
    *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    input.set_connected(true);
    log::debug!("{what}: a client connected");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => input.push(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("{what}: client: {e}");
                break;
            }
        }
    }
    *client.lock().unwrap_or_else(|e| e.into_inner()) = None;
    input.set_connected(false);
    log::debug!("{what}: the client left");
}
