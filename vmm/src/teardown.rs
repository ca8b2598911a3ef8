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
//! that closes it after shmvm is gone. It runs at the very end of a run,
//! after the guest's output is flushed and every backend is dropped (named
//! shm unlinked, file data written), so nothing the user can observe waits
//! on the helper: it holds no other fd, and it only takes time in the kernel.
//!
//! How (all the `unsafe` of this is here):
//! - `clone(CLONE_VM)`: the helper shares shmvm's address space (no page
//!   table copy; after shmvm exits the address space lives until the helper
//!   exits, with the backends already unmapped) and gets its own copy of the
//!   fd table. No exit signal: shmvm never waits for it. When shmvm exits,
//!   the helper is reparented to init (or the nearest subreaper), which gets
//!   SIGCHLD for it as for any orphan and reaps it.
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

/// Ends `vm` without making the caller wait for KVM: the last reference
/// goes to a helper process (module comment). Call it last, when nothing
/// else of the machine is left: every vCPU fd must be closed already (a
/// vCPU fd also holds the VM). Falls back to closing the VM here when the
/// helper cannot be started.
pub fn detach(vm: Vm) {
    if STARTED.swap(true, Ordering::SeqCst) {
        drop(vm);
        return;
    }
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log::debug!("teardown: pipe2: {}", std::io::Error::last_os_error());
        drop(vm);
        return;
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    VM_FD.store(vm.teardown_fd(), Ordering::Relaxed);
    PIPE_RD.store(rd.as_raw_fd(), Ordering::Relaxed);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        MAX_FD.store(lim.rlim_cur.min(1 << 16) as i32, Ordering::Relaxed);
    }
    match spawn_helper() {
        Ok(pid) => {
            wait_closed();
            log::debug!("teardown: VM handed to helper process {pid}");
        }
        Err(e) => log::debug!("teardown: no helper process ({e}); closing the VM here"),
    }
    // Our references go first, then the pipe: when the helper's read
    // returns, it holds the last reference.
    drop(vm);
    drop(rd);
    drop(wr);
}

/// Starts the helper with every signal blocked; returns its pid.
fn spawn_helper() -> std::io::Result<libc::pid_t> {
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
    // helper only (STARTED). CLONE_VM without CLONE_THREAD makes a separate
    // process sharing this address space; `helper` touches only statics and
    // its own stack and makes raw system calls (module comment). Exit signal
    // 0: nobody is told when it ends until it is reparented.
    let pid = unsafe {
        let top = STACK.0.get().cast::<u8>().add(STACK_SIZE);
        libc::clone(
            helper,
            top.cast::<libc::c_void>(),
            libc::CLONE_VM,
            std::ptr::null_mut(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid == -1 { Err(err) } else { Ok(pid) }
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
