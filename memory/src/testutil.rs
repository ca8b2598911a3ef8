//! Test helpers: a child process (this test binary, re-run) that maps a backend's
//! memory from an fd passed over a Unix socket (SCM_RIGHTS) or from a shm name.
//!
//! Only [`object`] serves the tests that run everywhere; the rest serves the
//! host tests of `backend_tests.rs`, which run on Linux only.

#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::sys::{self, MapRequest};

/// Environment variable telling the child test which fd is its socket.
pub(crate) const CHILD_SOCKET_ENV: &str = "SHMVM_MEMORY_TEST_CHILD_SOCKET";
/// What the child writes at offset PAGE of its mapping.
pub(crate) const CHILD_PATTERN: &[u8; 16] = b"written by child";
/// What parents write at offset 0.
pub(crate) const PARENT_PATTERN: &[u8; 16] = b"parent was here!";
/// Where the child writes.
pub(crate) const CHILD_OFFSET: usize = 4096;

/// sendmsg with one fd in SCM_RIGHTS.
pub(crate) fn send_with_fd(
    sock: &UnixStream,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // u64 array: aligned for cmsghdr.
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw = fd.as_raw_fd();
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
        assert!(space <= std::mem::size_of_val(&cmsg_buf));
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` bytes of writable, aligned memory, so the
        // first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
        }
    }
    // SAFETY: msg points to valid iovec and control buffers that outlive the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Received fds are close-on-exec where recvmsg can make them so (macOS can't;
/// the test child there inherits them, which it does not mind).
#[cfg(not(target_os = "macos"))]
const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
#[cfg(target_os = "macos")]
const RECV_FLAGS: libc::c_int = 0;

/// recvmsg of up to `buf.len()` bytes and at most one fd.
pub(crate) fn recv_with_fd(
    sock: &UnixStream,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg_buf = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
    // SAFETY: msg points to valid, writable buffers that outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, RECV_FLAGS) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: msg was filled in by recvmsg; the CMSG macros walk its control buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
    }
    Ok((n as usize, fd))
}

/// How the child gets at the memory.
#[derive(Debug)]
pub(crate) enum Handle<'a> {
    /// An fd passed with SCM_RIGHTS, and the offset of the region in it.
    Fd(BorrowedFd<'a>, u64),
    /// A shm name the child opens itself.
    ShmName(&'a str),
}

/// Runs the child against a region of `len` bytes: the child maps it MAP_SHARED,
/// reports the first 16 bytes it sees, then writes [`CHILD_PATTERN`] at
/// [`CHILD_OFFSET`]. Returns what the child saw.
pub(crate) fn run_child(handle: Handle<'_>, len: u64) -> [u8; 16] {
    let (mut parent, child) = UnixStream::pair().expect("socketpair");
    let child_raw = child.as_raw_fd();
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "backend::tests::cross_process_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_SOCKET_ENV, child_raw.to_string())
    .stdout(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only calls fcntl, which is
    // async-signal-safe; it lets exactly this fd survive exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(child_raw, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut proc: Child = cmd.spawn().expect("spawn child");
    drop(child);
    let mut msg = Vec::new();
    let (fd, offset, name) = match handle {
        Handle::Fd(fd, off) => (Some(fd), off, ""),
        Handle::ShmName(n) => (None, 0, n),
    };
    msg.extend_from_slice(&offset.to_le_bytes());
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(name.as_bytes());
    send_with_fd(&parent, &msg, fd).expect("send to child");
    let mut seen = [0u8; 16];
    parent.read_exact(&mut seen).expect("child's report");
    let mut done = [0u8; 4];
    parent.read_exact(&mut done).expect("child's done");
    assert_eq!(&done, b"done");
    parent.write_all(b"bye").ok();
    let status = proc.wait().expect("wait child");
    assert!(status.success(), "child failed: {status}");
    seen
}

/// The child's side; runs in the re-executed test binary.
pub(crate) fn child_main(sock_fd: i32) {
    // SAFETY: the parent passed us this fd number for our end of the socket pair, and
    // nothing else in this process owns it.
    let mut sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(sock_fd) });
    let mut buf = [0u8; 512];
    let (n, fd) = recv_with_fd(&sock, &mut buf).expect("recv");
    assert!(n >= 16, "short message");
    let offset = u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let fd = match fd {
        Some(fd) => fd,
        None => {
            let name = std::str::from_utf8(&buf[16..n]).expect("utf8 name");
            sys::shm_open(name, libc::O_RDWR, 0).expect("shm_open by name")
        }
    };
    let m = sys::map(&MapRequest {
        len: len as usize,
        align: 0,
        writable: true,
        shared: true,
        noreserve: false,
        fd: Some((std::os::fd::AsFd::as_fd(&fd), offset)),
    })
    .expect("child mmap");
    let mut seen = [0u8; 16];
    // SAFETY: the mapping is at least 2 pages long and readable.
    unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), seen.as_mut_ptr(), 16) };
    sock.write_all(&seen).expect("report");
    // SAFETY: CHILD_OFFSET + 16 is inside the writable mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(CHILD_PATTERN.as_ptr(), m.as_ptr().add(CHILD_OFFSET), 16)
    };
    sock.write_all(b"done").expect("done");
    let mut bye = [0u8; 3];
    let _ = sock.read(&mut bye);
}

/// The value of an smaps field (e.g. `Rss:`) for the mapping containing `addr`.
pub(crate) fn smaps_field(addr: *const u8, field: &str) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let addr = addr as usize;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = (a..b).contains(&addr);
            continue;
        }
        if inside && let Some(v) = line.strip_prefix(field) {
            return v.trim().to_string();
        }
    }
    panic!("no {field} for a mapping at {addr:#x} in /proc/self/smaps");
}

/// The VmFlags line of /proc/self/smaps for the mapping containing `addr`.
pub(crate) fn vm_flags(addr: *const u8) -> Vec<String> {
    smaps_field(addr, "VmFlags:")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The /proc/self/numa_maps line of the mapping starting at `addr`.
pub(crate) fn numa_policy(addr: *const u8) -> String {
    let maps = std::fs::read_to_string("/proc/self/numa_maps").expect("numa_maps");
    let key = format!("{:x} ", addr as usize);
    maps.lines()
        .find_map(|l| l.strip_prefix(&key).map(str::to_string))
        .unwrap_or_else(|| panic!("no numa_maps line for {key}"))
}

/// A backend from a QEMU `-object` string, for this crate's tests only (the
/// VMM parses the command line with its own keyval parser): `,,` escapes,
/// sizes with a K/M/G/T suffix, booleans on/off.
pub(crate) fn object(spec: &str) -> Result<crate::BackendConfig, crate::Error> {
    use crate::{BackendKind, BackendProps, HostMemPolicy, KindOptions, OnOffAuto};
    let spec = spec.replace(",,", "\u{1}");
    let mut items = spec.split(',').map(|s| s.replace('\u{1}', ","));
    let first = items.next().unwrap_or_default();
    let ty = first.strip_prefix("qom-type=").unwrap_or(&first);
    let kind = BackendKind::from_qom_type(ty).expect("object type");
    let size = |v: &str| -> u64 {
        if let Some(h) = v.strip_prefix("0x") {
            return u64::from_str_radix(h, 16).expect("hex size");
        }
        let (n, m) = match v.as_bytes().last() {
            Some(b'K') => (&v[..v.len() - 1], 1 << 10),
            Some(b'M') => (&v[..v.len() - 1], 1 << 20),
            Some(b'G') => (&v[..v.len() - 1], 1 << 30),
            Some(b'T') => (&v[..v.len() - 1], 1 << 40),
            Some(b'E') => (&v[..v.len() - 1], 1 << 60),
            _ => (v, 1),
        };
        n.parse::<u64>().expect("size") * m
    };
    let on = |v: &str| matches!(v, "on" | "yes" | "true");
    let (mut id, mut p, mut opts) = (
        String::new(),
        BackendProps::default(),
        KindOptions::new(kind),
    );
    for item in items {
        let (k, v) = item.split_once('=').expect("key=value");
        match (k, &mut opts) {
            ("id", _) => id = v.to_string(),
            ("size", _) => p.size = Some(size(v)),
            ("share", _) => p.share = Some(on(v)),
            ("prealloc", _) => p.prealloc = Some(on(v)),
            ("prealloc-threads", _) => p.prealloc_threads = Some(v.parse().expect("threads")),
            ("reserve", _) => p.reserve = Some(on(v)),
            ("merge", _) => p.merge = Some(on(v)),
            ("dump", _) => p.dump = Some(on(v)),
            ("host-nodes", _) => {
                p.host_nodes.push(v.parse().expect("node"));
                p.host_nodes.sort_unstable();
            }
            ("policy", _) => {
                p.policy = Some(match v {
                    "bind" => HostMemPolicy::Bind,
                    "preferred" => HostMemPolicy::Preferred,
                    "interleave" => HostMemPolicy::Interleave,
                    _ => HostMemPolicy::Default,
                })
            }
            ("mem-path", KindOptions::File(f)) => f.mem_path = Some(v.into()),
            ("align", KindOptions::File(f)) => f.align = size(v),
            ("offset", KindOptions::File(f)) => f.offset = size(v),
            ("discard-data", KindOptions::File(f)) => f.discard_data = on(v),
            ("readonly", KindOptions::File(f)) => f.readonly = on(v),
            ("rom", KindOptions::File(f)) => {
                f.rom = match v {
                    "auto" => OnOffAuto::Auto,
                    v if on(v) => OnOffAuto::On,
                    _ => OnOffAuto::Off,
                }
            }
            ("hugetlb", KindOptions::Memfd(m)) => m.hugetlb = on(v),
            ("hugetlbsize", KindOptions::Memfd(m)) => m.hugetlbsize = size(v),
            ("seal", KindOptions::Memfd(m)) => m.seal = on(v),
            ("name", KindOptions::Shm(s)) => s.name = Some(v.to_string()),
            ("keep", KindOptions::Shm(s)) => s.keep = on(v),
            ("reclaim", KindOptions::Shm(s)) => s.reclaim = on(v),
            _ => panic!("test helper: unsupported property {k} for {ty}"),
        }
    }
    crate::BackendConfig::from_props(&id, p, opts)
}
