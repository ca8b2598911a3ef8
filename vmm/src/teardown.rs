//! Destroying the VM off the exit path.
//!
//! Closing the last reference to a KVM VM with an in-kernel irqchip takes
//! 9-18 ms on the development host: KVM unregisters the PIC and IOAPIC from
//! its I/O buses and each unregistration waits for an SRCU grace period
//! (measured with `bench/kvm-teardown-probe.c`: 0.3 ms without the
//! irqchip; the PIT is not the cost). Left to the normal exit, that time is
//! spent inside the process's `exit_files`, before its parent can see the
//! exit status, so everything waiting for shmvm waits for KVM.
//!
//! [`detach`] hands the last reference to the VM fd to a helper process
//! that closes it after shmvm is gone. It ends a run, after the guest's
//! output is flushed: [`begin`] starts the helper, the machine is taken
//! apart meanwhile (named shm unlinked, file data written, memory
//! unmapped), and [`Handoff::complete`] lets it go once it holds only the
//! VM fd, so nothing the user can observe waits on the helper: it holds no
//! other fd, and it only takes time in the kernel.
//!
//! How (all the `unsafe` of this is here):
//! - `clone(CLONE_VM)`: the helper shares shmvm's address space (no page
//!   table copy; after shmvm exits the address space lives until the helper
//!   exits, with the backends already unmapped) and gets its own copy of the
//!   fd table. It is an orphan from birth, never shmvm's zombie: shmvm
//!   clones a short-lived intermediate that clones the helper and exits,
//!   and reaps that intermediate at once (`waitpid`, microseconds). The
//!   helper is then reparented to init (or the nearest subreaper), which
//!   gets SIGCHLD for it as for any orphan and reaps it when it ends. (A
//!   direct child with no exit signal sat as shmvm's zombie from its exit to
//!   shmvm's, and forever in a process embedding this library.)
//! - The helper runs on a small static stack and makes raw system calls
//!   only: it shares shmvm's memory, including the calling thread's TLS, so
//!   it must not touch libc state (errno), locks or the allocator. Every
//!   signal is blocked in it (signals.rs's handlers would run on shmvm's
//!   data); SIGKILL still ends it, which still frees the VM.
//! - It first closes every fd but the VM fd and the read end of a pipe, so
//!   a caller reading shmvm's stdout/stderr to EOF (`Command::output()`)
//!   sees EOF when shmvm itself exits; shmvm waits (bounded) until it has.
//! - Then it blocks reading the pipe. shmvm drops its own VM and vCPU fds
//!   first and closes the pipe's write end after (explicitly, or by
//!   exiting), so when the helper's read returns the helper holds the last
//!   reference to the VM: its exit is where KVM destroys the VM.

use std::cell::UnsafeCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::hv::Vm;

/// The helper's stack: it only makes system calls.
const STACK_SIZE: usize = 16 << 10;

#[repr(C, align(64))]
struct Stack(UnsafeCell<[u8; STACK_SIZE]>);

// SAFETY: only the helper process uses the stack, and at most one helper is
// ever started (`STARTED`); shmvm never reads or writes it.
unsafe impl Sync for Stack {}

static STACK: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));
/// The intermediate's stack (it only calls `clone`).
static STACK_INTERMEDIATE: Stack = Stack(UnsafeCell::new([0; STACK_SIZE]));
static STARTED: AtomicBool = AtomicBool::new(false);
/// What the helper needs, in static memory (shared through CLONE_VM; the
/// caller's stack frame may be gone by the time the helper reads them).
static VM_FD: AtomicI32 = AtomicI32::new(-1);
static PIPE_RD: AtomicI32 = AtomicI32::new(-1);
/// Highest fd number to close when `close_range` is missing (Linux < 5.9).
static MAX_FD: AtomicI32 = AtomicI32::new(1024);
/// Set to 1 (futex-woken) by the helper once it holds only its two fds.
static CLOSED: AtomicU32 = AtomicU32::new(0);

/// How long shmvm waits for the helper to close its copies of shmvm's fds.
/// Normally microseconds; a helper that is not scheduled in time only
/// delays a reader's EOF, never the teardown's correctness.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

/// Raw `syscall` for the helper: no errno, no TLS, no libc.
///
/// # Safety
/// The arguments must be valid for system call `nr`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn raw_syscall(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux system call ABI: number in rax, arguments in
    // rdi/rsi/rdx, result in rax, rcx and r11 clobbered; the caller vouches
    // for the arguments.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Raw `svc #0` for the helper (aarch64): no errno, no TLS, no libc.
///
/// # Safety
/// The arguments must be valid for system call `nr`.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn raw_syscall(nr: libc::c_long, a1: usize, a2: usize, a3: usize) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 Linux system call ABI: number in x8, arguments in
    // x0/x1/x2, result in x0, nothing else clobbered; the caller vouches
    // for the arguments.
    unsafe {
        std::arch::asm!(
            "svc #0",
            in("x8") nr,
            inlateout("x0") a1 as isize => ret,
            in("x1") a2,
            in("x2") a3,
            options(nostack),
        );
    }
    ret
}

/// Closes every fd of the helper but `keep` (two fds, any order).
fn close_all_but(keep: [i32; 2]) {
    let (lo, hi) = (keep[0].min(keep[1]), keep[0].max(keep[1]));
    let ranges = [(0, lo - 1), (lo + 1, hi - 1), (hi + 1, i32::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        // SAFETY: close_range only closes fds of this (the helper's) table.
        let r = unsafe {
            raw_syscall(
                libc::SYS_close_range,
                first as usize,
                last as u32 as usize,
                0,
            )
        };
        if r == -(libc::ENOSYS as isize) {
            let last = last.min(MAX_FD.load(Ordering::Relaxed));
            for fd in first..=last {
                // SAFETY: closing an fd of the helper's own table.
                unsafe { raw_syscall(libc::SYS_close, fd as usize, 0, 0) };
            }
        }
    }
}

/// The helper process (see the module comment). Returns into glibc's clone
/// trampoline, which calls `exit`.
extern "C" fn helper(_arg: *mut libc::c_void) -> libc::c_int {
    let (vm, rd) = (
        VM_FD.load(Ordering::Relaxed),
        PIPE_RD.load(Ordering::Relaxed),
    );
    let name = b"shmvm-teardown\0";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        raw_syscall(
            libc::SYS_prctl,
            libc::PR_SET_NAME as usize,
            name.as_ptr() as usize,
            0,
        )
    };
    close_all_but([vm, rd]);
    CLOSED.store(1, Ordering::Release);
    // SAFETY: futex wake on a static u32; private is right: shmvm shares
    // this address space.
    unsafe {
        raw_syscall(
            libc::SYS_futex,
            CLOSED.as_ptr() as usize,
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
            1,
        )
    };
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let r = unsafe { raw_syscall(libc::SYS_read, rd as usize, &raw mut byte as usize, 1) };
        if r != -(libc::EINTR as isize) {
            break;
        }
    }
    // Exiting closes the VM fd, the last reference: KVM destroys the VM now.
    0
}

/// The intermediate process: starts the helper (an orphan once this
/// exits) and returns into glibc's clone trampoline, which makes the raw
/// `exit` system call. It shares shmvm's memory like the helper, so it only
/// calls `clone` (glibc's wrapper: registers and a system call; the parent
/// thread is blocked in `waitpid` meanwhile).
extern "C" fn intermediate(_arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the helper's stack is used by the helper only (STARTED); the
    // top is 64-byte aligned; `helper` touches only statics and its stack.
    // Exit signal 0: the helper's parent is gone before it ends, and a
    // reparented child gets SIGCHLD as its exit signal anyway.
    let pid = unsafe {
        let top = STACK.0.get().cast::<u8>().add(STACK_SIZE);
        libc::clone(
            helper,
            top.cast::<libc::c_void>(),
            libc::CLONE_VM,
            std::ptr::null_mut(),
        )
    };
    HELPER_PID.store(pid, Ordering::Relaxed);
    0
}

/// The helper's pid as the intermediate saw it (-1: clone failed).
static HELPER_PID: AtomicI32 = AtomicI32::new(-1);

/// Ends `vm` without making the caller wait for KVM: the last reference
/// goes to a helper process (module comment). Call it last, when nothing
/// else of the machine is left: every vCPU fd must be closed already (a
/// vCPU fd also holds the VM). Falls back to closing the VM here when the
/// helper cannot be started.
pub fn detach(vm: Vm) {
    begin(&vm).complete(move || drop(vm));
}

/// A hand-off of the VM to the helper, started by [`begin`] while the
/// caller still takes the rest of the machine apart, ended by
/// [`Handoff::complete`].
#[derive(Debug)]
#[must_use = "the hand-off ends with complete()"]
pub struct Handoff {
    /// The pipe whose closing lets the helper go, and the intermediate
    /// process to reap (None: no helper, the VM is closed here).
    started: Option<(OwnedFd, OwnedFd, libc::pid_t)>,
}

/// Starts handing `vm` to the helper: the intermediate is cloned and left
/// to start the helper on another CPU while the caller drops devices and
/// unmaps memory (a clone and an exit, ~0.05 ms here, off the exit path).
/// The helper's fd table is a copy of ours at this point; it closes every
/// fd but the VM's and its pipe's before [`Handoff::complete`] returns.
pub fn begin(vm: &Vm) -> Handoff {
    begin_fd(vm.teardown_fd())
}

/// [`begin`] for any fd: the helper keeps `fd` open until the hand-off
/// completes (or shmvm exits).
fn begin_fd(fd: std::os::fd::RawFd) -> Handoff {
    let none = Handoff { started: None };
    if STARTED.swap(true, Ordering::SeqCst) {
        return none;
    }
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log::debug!("teardown: pipe2: {}", std::io::Error::last_os_error());
        return none;
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    VM_FD.store(fd, Ordering::Relaxed);
    PIPE_RD.store(rd.as_raw_fd(), Ordering::Relaxed);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        MAX_FD.store(lim.rlim_cur.min(1 << 16) as i32, Ordering::Relaxed);
    }
    match start_intermediate() {
        Ok(pid) => Handoff {
            started: Some((rd, wr, pid)),
        },
        Err(e) => {
            log::debug!("teardown: no helper process ({e}); closing the VM here");
            none
        }
    }
}

impl Handoff {
    /// Ends the hand-off: reaps the intermediate, waits (bounded) until the
    /// helper holds only its two fds, then `drop_ours` drops the caller's
    /// references (the VM fd among them) and the pipe closes: the helper's
    /// read returns with the last reference in its hands.
    pub fn complete(self, drop_ours: impl FnOnce()) {
        let Some((rd, wr, pid)) = self.started else {
            drop_ours();
            return;
        };
        match reap_intermediate(pid) {
            Ok(helper) => {
                wait_closed();
                log::debug!("teardown: VM handed to helper process {helper}");
            }
            Err(e) => log::debug!("teardown: no helper process ({e}); closing the VM here"),
        }
        drop_ours();
        drop(rd);
        drop(wr);
    }
}

/// Clones the intermediate with every signal blocked (the helper it starts
/// inherits the mask); returns its pid without waiting for it.
fn start_intermediate() -> std::io::Result<libc::pid_t> {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `old` is written by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset initializes `all`; pthread_sigmask only changes
    // this thread's mask, restored below.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the stack top is 64-byte aligned and the stack is used by the
    // intermediate only (STARTED). CLONE_VM without CLONE_THREAD makes a
    // separate process sharing this address space; `intermediate` only
    // calls clone and stores a static (module comment). Exit signal 0: it is
    // waited for with __WALL.
    let pid = unsafe {
        let top = STACK_INTERMEDIATE.0.get().cast::<u8>().add(STACK_SIZE);
        libc::clone(
            intermediate,
            top.cast::<libc::c_void>(),
            libc::CLONE_VM,
            std::ptr::null_mut(),
        )
    };
    let result = if pid == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    // SAFETY: restores the mask saved above (the child has its own copy).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

/// Reaps the intermediate (the helper is an orphan from then on); returns
/// the helper's pid.
fn reap_intermediate(pid: libc::pid_t) -> std::io::Result<libc::pid_t> {
    let mut status = 0;
    let r = loop {
        // SAFETY: waitpid on our own child, status written to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r != -1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break r;
        }
    };
    let helper = HELPER_PID.load(Ordering::Relaxed);
    if r == pid && helper > 0 {
        Ok(helper)
    } else {
        Err(std::io::Error::other(
            "the intermediate could not start the helper",
        ))
    }
}

/// Waits until the helper has closed its copies of our fds (bounded).
fn wait_closed() {
    let deadline = Instant::now() + CLOSE_WAIT;
    while CLOSED.load(Ordering::Acquire) == 0 {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            log::debug!("teardown: helper slow to close its fds");
            return;
        };
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(left.subsec_nanos()),
        };
        // SAFETY: futex wait on a static u32 while it is still 0, with a
        // valid relative timeout; spurious returns are handled by the loop.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                CLOSED.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                &ts as *const libc::timespec,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pid, state) of every process named `comm` whose parent is us.
    fn our_children_named(comm: &str) -> Vec<(i32, char)> {
        let me = std::process::id().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next().and_then(|s| s.chars().next());
            if let (Some(state), Some(ppid)) = (state, rest.next())
                && ppid == me
                && &stat[open + 1..close] == comm
            {
                out.push((pid, state));
            }
        }
        out
    }

    #[test]
    fn the_helper_is_never_our_zombie() {
        let mut p = [-1; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned by nothing else.
        let (probe_rd, probe_wr) =
            unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        // The helper keeps the probe's write end (standing in for the VM fd)
        // until detach closes its pipe: EOF on the read end is its exit.
        let raw = probe_wr.as_raw_fd();
        begin_fd(raw).complete(move || drop(probe_wr));
        let mut f = std::fs::File::from(probe_rd);
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut buf).expect("probe read");
        // Its exit is done (the fd table closes before the zombie state);
        // give the kernel a moment to finish exit notification.
        std::thread::sleep(Duration::from_millis(50));
        let kids = our_children_named("shmvm-teardown");
        assert!(
            kids.is_empty(),
            "teardown helpers left as our children (zombies): {kids:?}"
        );
        let helper = HELPER_PID.load(Ordering::Relaxed);
        assert!(helper > 0, "no helper was started");
    }
}
