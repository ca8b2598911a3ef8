//! `vsock-echo PORT`: listen on a vsock port, accept one connection, read
//! one line and write it back. The lab's guest side of vhost-user-vsock
//! traffic (the host side is vhost-device-vsock's unix socket in L1).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VsockError {
    #[error("vsock {what}: {source}")]
    Sys {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("vsock: no connection on port {port} within {ms} ms")]
    Timeout { port: u32, ms: u64 },
}

fn sys(what: &'static str) -> VsockError {
    VsockError::Sys {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Listens on `port` (any CID); `ready` is called once listening. Returns
/// the line echoed (without its newline).
pub fn echo(port: u32, timeout: Duration, ready: impl FnOnce()) -> Result<String, VsockError> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd: RawFd =
        unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket"));
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm of the size passed.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(sys("bind"));
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd, 1) } < 0 {
        return Err(sys("listen"));
    }
    ready();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(sys("poll"));
    }
    if n == 0 {
        return Err(VsockError::Timeout {
            port,
            ms: timeout.as_millis() as u64,
        });
    }
    // SAFETY: accept(2) on our listening socket, peer address not wanted.
    let c = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(sys("accept"));
    }
    drop(listener);
    // SAFETY: c is a fresh connected socket nobody else owns.
    let conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(c) });
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|source| VsockError::Sys {
            what: "read",
            source,
        })?;
    (&conn)
        .write_all(line.as_bytes())
        .map_err(|source| VsockError::Sys {
            what: "write",
            source,
        })?;
    Ok(line.trim_end().to_string())
}
