//! The sandbox: once the machine is built, every thread runs with
//! `no_new_privs`, without capabilities (when started as root), and under a
//! seccomp filter for its kind, compiled into the binary ([`bpf`]: a binary
//! search over the allowed calls, built by `const fn`s at compile time). On
//! by default; `--sandbox=off` turns it off.
//!
//! The filters are allow lists, one per thread kind, all in this file
//! ([`lists`]: [`COMMON`] plus the kind's own list, `ioctl` limited to the
//! kind's request numbers, `prctl`, `fcntl`, `clone` and `tgkill` to the
//! argument values they are made with). Any other system call traps
//! (SECCOMP_RET_TRAP): [`on_sigsys`] makes it fail with EPERM and prints
//! one line naming the thread kind and the call, once per call number, and
//! counts it ([`blocked`]). Not a kill: a hostile guest that finds a way to
//! steer a VMM thread gets errors, and a legitimate path a list missed
//! degrades into one clear line instead of a VM killed under its user.
//!
//! A new device adds the calls its threads make here, to the kind that
//! makes them (a worker thread doing `pread64`/`pwrite64`/`fdatasync`, say,
//! to [`WORKER`]), and the README's "Security model" lists them.
//!
//! Filters stack: a thread started by a sandboxed thread runs under its
//! parent's filter as well as its own. Every thread of shmvm is started
//! before its parent enters the sandbox (the vCPU threads before vCPU 0
//! runs, workers while the machine is built), except the teardown helper,
//! which runs under the main thread's filter (teardown.rs).

//! Off Linux there is no seccomp: `--sandbox=on` is refused there (cli)
//! and threads never enter.

#[cfg(target_os = "linux")]
pub mod bpf;

#[cfg(target_os = "linux")]
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether threads enter the sandbox (set once from `--sandbox`).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The kinds of threads, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: it runs vCPU 0, then takes the machine apart and
    /// hands the VM to the teardown helper.
    Main,
    /// A thread running a vCPU other than vCPU 0.
    Vcpu,
    /// A device or console worker thread (console output, the stdin
    /// reader, the ivshmem doorbell watcher, vhost-user deadline and
    /// hang-up watchers, the watchdog's timer).
    Worker,
    /// The QMP monitor's thread.
    Monitor,
}

#[cfg(target_os = "linux")]
impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Worker => "worker",
            ThreadKind::Monitor => "monitor",
        }
    }
}

/// Errors entering the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--sandbox: installing the {kind:?} seccomp filter: {err}")]
    Install {
        kind: ThreadKind,
        err: std::io::Error,
    },
    #[error("--sandbox: {what}: {err}")]
    Os {
        what: &'static str,
        err: std::io::Error,
    },
}

/// Turns the sandbox on or off for threads entering it from now on.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether the sandbox is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// The allow lists and their BPF, for x86_64 and aarch64. The lists were
/// traced on x86_64; aarch64 has no legacy calls (`poll`, `epoll_wait`,
/// `readlink`, `unlink`, ...: its libc makes the `*at`/`p*` ones, which
/// the lists have for both), other KVM requests on the vCPU (KVM_GET_ONE_REG
/// instead of the x86 register and snapshot requests), and no snapshots.
#[cfg(target_os = "linux")]
mod lists {
    use super::*;

    /// An `ioctl` request number: `_IOC(dir, type, nr, size)`.
    pub(super) const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | (ty << 8) | nr
    }
    pub(super) const fn kvm_io(nr: u64) -> u64 {
        ioc(0, 0xae, nr, 0)
    }
    pub(super) const fn kvm_iow(nr: u64, size: u64) -> u64 {
        ioc(1, 0xae, nr, size)
    }
    #[cfg(target_arch = "x86_64")]
    pub(super) const fn kvm_ior(nr: u64, size: u64) -> u64 {
        ioc(2, 0xae, nr, size)
    }

    // The KVM requests made once the guest runs (sizes from <linux/kvm.h>).
    pub(super) const KVM_RUN: u64 = kvm_io(0x80);
    pub(super) const KVM_IRQ_LINE: u64 = kvm_iow(0x61, 8);
    pub(super) const KVM_SET_GSI_ROUTING: u64 = kvm_iow(0x6a, 8);
    pub(super) const KVM_SET_USER_MEMORY_REGION: u64 = kvm_iow(0x46, 32);
    pub(super) const KVM_IRQFD: u64 = kvm_iow(0x76, 32);
    pub(super) const KVM_IOEVENTFD: u64 = kvm_iow(0x79, 64);
    pub(super) const KVM_SIGNAL_MSI: u64 = kvm_iow(0xa5, 32);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_REGS: u64 = kvm_ior(0x81, 144);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_SREGS: u64 = kvm_ior(0x83, 312);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_TRANSLATE: u64 = ioc(3, 0xae, 0x85, 24);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_UNREGISTER_COALESCED_MMIO: u64 = kvm_iow(0x68, 16);
    // Saving a snapshot: each vCPU's state (on its own thread), the VM's
    // interrupt controllers and clock, the MSR list (on the saving thread).
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_FPU: u64 = kvm_ior(0x8c, 416);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_MSRS: u64 = ioc(3, 0xae, 0x88, 8);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_LAPIC: u64 = kvm_ior(0x8e, 1024);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_XSAVE: u64 = kvm_ior(0xa4, 4096);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_XSAVE2: u64 = kvm_ior(0xcf, 4096);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_XCRS: u64 = kvm_ior(0xa6, 392);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_VCPU_EVENTS: u64 = kvm_ior(0x9f, 64);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_MP_STATE: u64 = kvm_ior(0x98, 4);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_DEBUGREGS: u64 = kvm_ior(0xa1, 128);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_CPUID2: u64 = ioc(3, 0xae, 0x91, 8);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_TSC_KHZ: u64 = kvm_io(0xa3);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_MSR_INDEX_LIST: u64 = ioc(3, 0xae, 0x02, 4);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_IRQCHIP: u64 = ioc(3, 0xae, 0x62, 520);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_PIT2: u64 = kvm_ior(0x9f, 112);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_GET_CLOCK: u64 = kvm_ior(0x7c, 48);
    #[cfg(target_arch = "x86_64")]
    pub(super) const KVM_CHECK_EXTENSION: u64 = kvm_io(0x03);
    /// aarch64: reading a vCPU register (the PC of a failed run).
    #[cfg(target_arch = "aarch64")]
    pub(super) const KVM_GET_ONE_REG: u64 = kvm_iow(0xab, 16);

    /// A vCPU saving its own state for a snapshot.
    #[cfg(target_arch = "x86_64")]
    pub(super) const VCPU_SAVE_IOCTLS: &[u64] = &[
        KVM_GET_FPU,
        KVM_GET_MSRS,
        KVM_GET_LAPIC,
        KVM_GET_XSAVE,
        KVM_GET_XSAVE2,
        KVM_GET_XCRS,
        KVM_GET_VCPU_EVENTS,
        KVM_GET_MP_STATE,
        KVM_GET_DEBUGREGS,
        KVM_GET_CPUID2,
        KVM_GET_TSC_KHZ,
        KVM_CHECK_EXTENSION,
    ];

    /// The thread writing a snapshot (the monitor on QMP's
    /// x-shmvm-snapshot-save, the `snapshot` worker on SIGUSR1): the VM's
    /// state, then files in the snapshot directory (created, written, synced,
    /// renamed into place).
    pub(super) const SNAPSHOT: &[Allow] = &[
        #[cfg(target_arch = "x86_64")]
        Arg(
            libc::SYS_ioctl,
            1,
            &[
                KVM_GET_MSR_INDEX_LIST,
                KVM_GET_IRQCHIP,
                KVM_GET_PIT2,
                KVM_GET_CLOCK,
                KVM_CHECK_EXTENSION,
            ],
        ),
        Call(libc::SYS_openat),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_mkdir),
        Call(libc::SYS_mkdirat),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_rmdir),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_rename),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_renameat),
        Call(libc::SYS_renameat2),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_unlink),
        Call(libc::SYS_unlinkat),
        Call(libc::SYS_fsync),
        Call(libc::SYS_fdatasync),
        Call(libc::SYS_ftruncate),
        Call(libc::SYS_fallocate),
        Call(libc::SYS_pwrite64),
        Call(libc::SYS_pread64),
        Call(libc::SYS_copy_file_range),
        Call(libc::SYS_fchmod),
        Call(libc::SYS_getcwd),
        Call(libc::SYS_rt_sigtimedwait),
    ];
    // Terminals (<asm-generic/ioctls.h>): the console's raw mode and its
    // restoration, the window size.
    pub(super) const TCGETS: u64 = 0x5401;
    pub(super) const TCSETS: u64 = 0x5402;
    pub(super) const TCSETSW: u64 = 0x5403;
    pub(super) const TIOCGWINSZ: u64 = 0x5413;
    pub(super) const FIONBIO: u64 = 0x5421;

    pub use super::bpf::Allow;
    use Allow::{Arg, Call, OwnPid};

    /// Device emulation's requests on the VM fd: BAR moves (memory slots),
    /// MSI-X routes and irqfds, virtio queue notifications (ioeventfds),
    /// legacy interrupt lines.
    pub(super) const VM_IOCTLS: &[u64] = &[
        KVM_SET_USER_MEMORY_REGION,
        KVM_SET_GSI_ROUTING,
        KVM_IRQFD,
        KVM_IOEVENTFD,
        KVM_SIGNAL_MSI,
        KVM_IRQ_LINE,
    ];
    pub(super) const TTY_IOCTLS: &[u64] = &[TCGETS, TCSETS, TCSETSW, TIOCGWINSZ, FIONBIO];

    /// Every kind: memory, futexes, time, signals, exiting, I/O on the fds it
    /// already has, naming itself, entering a (stricter) filter.
    pub const COMMON: &[Allow] = &[
        Call(libc::SYS_read),
        Call(libc::SYS_write),
        Call(libc::SYS_readv),
        Call(libc::SYS_writev),
        Call(libc::SYS_close),
        Call(libc::SYS_lseek),
        Call(libc::SYS_fstat),
        Call(libc::SYS_newfstatat),
        Call(libc::SYS_statx),
        Call(libc::SYS_mmap),
        Call(libc::SYS_munmap),
        Call(libc::SYS_mprotect),
        Call(libc::SYS_mremap),
        Call(libc::SYS_madvise),
        Call(libc::SYS_brk),
        Call(libc::SYS_futex),
        Call(libc::SYS_sched_yield),
        Call(libc::SYS_sched_getaffinity),
        Call(libc::SYS_getrandom),
        Call(libc::SYS_clock_gettime),
        Call(libc::SYS_clock_nanosleep),
        Call(libc::SYS_nanosleep),
        Call(libc::SYS_gettid),
        Call(libc::SYS_getpid),
        Call(libc::SYS_rt_sigreturn),
        Call(libc::SYS_rt_sigprocmask),
        Call(libc::SYS_sigaltstack),
        Call(libc::SYS_restart_syscall),
        Call(libc::SYS_exit),
        Call(libc::SYS_exit_group),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_poll),
        Call(libc::SYS_ppoll),
        Call(libc::SYS_eventfd2),
        Call(libc::SYS_dup),
        Call(libc::SYS_capget),
        Call(libc::SYS_seccomp),
        Arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        ),
        Arg(
            libc::SYS_prctl,
            0,
            &[
                libc::PR_SET_NAME as u64,
                libc::PR_GET_NAME as u64,
                libc::PR_SET_NO_NEW_PRIVS as u64,
                libc::PR_GET_NO_NEW_PRIVS as u64,
            ],
        ),
        // Kicking a vCPU thread out of KVM_RUN (the VM ends, QMP's stop):
        // `tgkill` to this process only (its pid is filled in when the
        // filter is installed).
        OwnPid(libc::SYS_tgkill, 0),
    ];

    /// vCPU threads: KVM_RUN and the exit handling (device emulation on the VM
    /// fd, vhost-user messages on the back-end's socket, the console).
    pub const VCPU: &[Allow] = &[
        // Running, and reporting a failed run (the guest's registers and the
        // bytes at its RIP).
        #[cfg(target_arch = "x86_64")]
        Arg(
            libc::SYS_ioctl,
            1,
            &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE],
        ),
        #[cfg(target_arch = "aarch64")]
        Arg(libc::SYS_ioctl, 1, &[KVM_RUN, KVM_GET_ONE_REG]),
        #[cfg(target_arch = "x86_64")]
        Arg(libc::SYS_ioctl, 1, VCPU_SAVE_IOCTLS),
        // The console's coalesced port stops coalescing when the guest turns
        // the UART's transmit interrupt on (coalesce.rs).
        #[cfg(target_arch = "x86_64")]
        Arg(libc::SYS_ioctl, 1, &[KVM_UNREGISTER_COALESCED_MMIO]),
        // ... and deletes vCPU 0's flush timer, from whichever vCPU wrote
        // that register (it was EPERM on the others: the timer kept firing).
        Call(libc::SYS_timer_delete),
        Arg(libc::SYS_ioctl, 1, VM_IOCTLS),
        Arg(libc::SYS_ioctl, 1, TTY_IOCTLS),
        Call(libc::SYS_sendmsg),
        Call(libc::SYS_recvmsg),
        Call(libc::SYS_sendto),
        Call(libc::SYS_recvfrom),
        Call(libc::SYS_shutdown),
    ];

    /// The main thread, besides [`VCPU`]: the console flush timer (vCPU 0),
    /// then taking the machine apart (named shm objects unlinked, backends
    /// unmapped) and handing the VM to the teardown helper (`clone` with
    /// CLONE_VM only, `wait4` for the intermediate; the helper itself closes
    /// fds with `close_range`).
    pub const MAIN: &[Allow] = &[
        Call(libc::SYS_timer_create),
        Call(libc::SYS_timer_settime),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_unlink),
        Call(libc::SYS_unlinkat),
        Call(libc::SYS_flock),
        Call(libc::SYS_msync),
        Call(libc::SYS_fsync),
        Call(libc::SYS_fdatasync),
        Call(libc::SYS_pipe2),
        Call(libc::SYS_prlimit64),
        Call(libc::SYS_wait4),
        Call(libc::SYS_close_range),
        Arg(libc::SYS_clone, 0, &[libc::CLONE_VM as u64]),
    ];

    /// Device and console workers: waiting on their fds, the back-ends'
    /// sockets (with receive deadlines), the doorbell's interrupt wiring on the
    /// VM fd, the terminal; naming a received fd in a message (`readlink` of
    /// /proc/self/fd/N).
    pub const WORKER: &[Allow] = &[
        // Built-in virtio-blk's I/O threads: the image file.
        Call(libc::SYS_pread64),
        Call(libc::SYS_pwrite64),
        Call(libc::SYS_preadv),
        Call(libc::SYS_pwritev),
        Call(libc::SYS_preadv2),
        Call(libc::SYS_pwritev2),
        Call(libc::SYS_fdatasync),
        Call(libc::SYS_fsync),
        Arg(libc::SYS_ioctl, 1, VM_IOCTLS),
        Arg(libc::SYS_ioctl, 1, TTY_IOCTLS),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_readlink),
        Call(libc::SYS_readlinkat),
        Call(libc::SYS_setsockopt),
        Call(libc::SYS_epoll_create1),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_epoll_wait),
        Call(libc::SYS_epoll_pwait),
        Call(libc::SYS_epoll_ctl),
        Call(libc::SYS_sendmsg),
        Call(libc::SYS_recvmsg),
        Call(libc::SYS_sendto),
        Call(libc::SYS_recvfrom),
        Call(libc::SYS_shutdown),
    ];

    /// The QMP monitor: its listening sockets (made on its own thread, off
    /// the boot path: a Unix socket, bound under a umask, then listening) and
    /// clients (one epoll set), pausing and resuming vCPUs (kicks), the power
    /// button's interrupt (an irqfd on the first `system_powerdown`), the
    /// queries (query-cpus-fast reads /proc/self/task/*/comm: read-only opens).
    pub const MONITOR: &[Allow] = &[
        Arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]),
        Call(libc::SYS_bind),
        Call(libc::SYS_listen),
        Call(libc::SYS_umask),
        Arg(
            libc::SYS_openat,
            2,
            &[
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_DIRECTORY) as u64,
            ],
        ),
        Call(libc::SYS_getdents64),
        Arg(libc::SYS_ioctl, 1, &[FIONBIO, KVM_IRQFD]),
        Call(libc::SYS_epoll_create1),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_epoll_wait),
        Call(libc::SYS_epoll_pwait),
        Call(libc::SYS_epoll_ctl),
        Call(libc::SYS_accept4),
        Call(libc::SYS_sendmsg),
        Call(libc::SYS_recvmsg),
        Call(libc::SYS_sendto),
        Call(libc::SYS_recvfrom),
        Call(libc::SYS_shutdown),
        #[cfg(target_arch = "x86_64")]
        Call(libc::SYS_unlink),
    ];

    /// `kind`'s allow lists: [`COMMON`] and its own (the main thread's
    /// include the vCPU list: it runs vCPU 0).
    pub const fn lists(kind: ThreadKind) -> &'static [&'static [Allow]] {
        match kind {
            ThreadKind::Main => &[COMMON, VCPU, MAIN],
            ThreadKind::Vcpu => &[COMMON, VCPU],
            ThreadKind::Worker => &[COMMON, WORKER, SNAPSHOT],
            ThreadKind::Monitor => &[COMMON, MONITOR, SNAPSHOT],
        }
    }

    /// Each kind's program, compiled with shmvm (bpf.rs): `PROGRAM_*`
    /// while compiling, only the used instructions kept in the binary.
    macro_rules! program {
        ($prog:ident, $len:ident, $compiled:ident, $kind:expr) => {
            const $compiled: super::bpf::Program =
                super::bpf::compile(lists($kind), libc::SYS_clone3);
            const $len: usize = $compiled.len;
            static $prog: [libc::sock_filter; $len] = super::bpf::exact(&$compiled);
        };
    }
    program!(MAIN_BPF, MAIN_LEN, MAIN_COMPILED, ThreadKind::Main);
    program!(VCPU_BPF, VCPU_LEN, VCPU_COMPILED, ThreadKind::Vcpu);
    program!(WORKER_BPF, WORKER_LEN, WORKER_COMPILED, ThreadKind::Worker);
    program!(
        MONITOR_BPF,
        MONITOR_LEN,
        MONITOR_COMPILED,
        ThreadKind::Monitor
    );
    /// The longest of them (the stack copy that gets the pid).
    pub(super) const MAX_LEN: usize = {
        let mut m = MAIN_LEN;
        let others = [VCPU_LEN, WORKER_LEN, MONITOR_LEN];
        let mut i = 0;
        while i < others.len() {
            if others[i] > m {
                m = others[i];
            }
            i += 1;
        }
        m
    };

    /// `kind`'s compiled program and the instruction that gets the pid.
    pub fn program(kind: ThreadKind) -> (&'static [libc::sock_filter], Option<usize>) {
        match kind {
            ThreadKind::Main => (&MAIN_BPF, MAIN_COMPILED.pid_at),
            ThreadKind::Vcpu => (&VCPU_BPF, VCPU_COMPILED.pid_at),
            ThreadKind::Worker => (&WORKER_BPF, WORKER_COMPILED.pid_at),
            ThreadKind::Monitor => (&MONITOR_BPF, MONITOR_COMPILED.pid_at),
        }
    }
}
#[cfg(target_os = "linux")]
pub use lists::*;

/// System calls the filters stopped, all threads.
static BLOCKED: AtomicU64 = AtomicU64::new(0);
/// Call numbers already reported (one line each), as a bit set.
#[cfg(target_os = "linux")]
static REPORTED: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

#[cfg(target_os = "linux")]
thread_local! {
    /// This thread's kind, for the report (const-initialized: readable in
    /// a signal handler).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// How many system calls the sandbox has stopped.
pub fn blocked() -> u64 {
    BLOCKED.load(Ordering::Relaxed)
}

/// Appends `n` in decimal to `buf` at `*at` (no allocation: signal handler).
#[cfg(target_os = "linux")]
fn put_num(buf: &mut [u8], at: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(buf, at, &digits[i..]);
}

#[cfg(target_os = "linux")]
fn put(buf: &mut [u8], at: &mut usize, s: &[u8]) {
    let n = s.len().min(buf.len() - *at);
    buf[*at..*at + n].copy_from_slice(&s[..n]);
    *at += n;
}

/// SIGSYS from a filter's SECCOMP_RET_TRAP: the call fails with EPERM; the
/// first time a call number is stopped, one line on stderr says which.
/// Async-signal-safe: atomics, a const thread-local, a stack buffer and
/// `write`.
#[cfg(target_os = "linux")]
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // The 64-bit siginfo of SIGSYS (x86_64 and aarch64 alike): `_sigsys {
    // void *_call_addr; int _syscall; unsigned _arch; }` at offset 16, so
    // the call is at 24.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let nr = unsafe { info.cast::<u8>().add(24).cast::<i32>().read() };
    BLOCKED.fetch_add(1, Ordering::Relaxed);
    let bit = nr.clamp(0, 511) as usize;
    let old = REPORTED[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    if old & (1 << (bit % 64)) == 0 {
        let kind = KIND.with(Cell::get).map_or("unsandboxed", ThreadKind::name);
        let mut buf = [0u8; 192];
        let mut at = 0;
        put(&mut buf, &mut at, b"shmvm: sandbox: a ");
        put(&mut buf, &mut at, kind.as_bytes());
        put(&mut buf, &mut at, b" thread made system call ");
        put_num(&mut buf, &mut at, u64::from(nr.unsigned_abs()));
        put(
            &mut buf,
            &mut at,
            b", which its allow list does not have: it failed with EPERM (vmm/src/sandbox.rs)\n",
        );
        // SAFETY: writes our own stack buffer to stderr.
        unsafe { libc::write(2, buf.as_ptr().cast(), at) };
    }
    // The trapped call returns what rax holds when the handler returns.
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes the interrupted context for SA_SIGINFO
    // handlers; rax is the system call's return value on x86_64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM)
    };
    // SAFETY: as above; x0 is the return value on aarch64.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        (*uc).uc_mcontext.regs[0] = (-i64::from(libc::EPERM)) as u64
    };
}

/// Installs [`on_sigsys`] (process-wide; idempotent).
#[cfg(target_os = "linux")]
fn install_sigsys() -> Result<(), Error> {
    // SAFETY: sigaction is plain data; all-zero is a valid start.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: a valid sigaction for SIGSYS; `on_sigsys` is
    // async-signal-safe.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(Error::Os {
            what: "installing the SIGSYS handler",
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS)` for the calling thread (and the threads it
/// creates): nothing executed could gain privileges.
#[cfg(target_os = "linux")]
fn no_new_privs() -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(Error::Os {
            what: "PR_SET_NO_NEW_PRIVS",
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Drops every capability of the calling thread (effective, permitted,
/// inheritable, ambient); the threads it creates inherit the empty sets.
/// Nothing after start-up needs one: /dev/kvm, the backends and the
/// sockets are open by then.
#[cfg(target_os = "linux")]
fn drop_capabilities() -> Result<(), Error> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut now = [Data::default(); 2];
    // SAFETY: capget writes two data structs (version 3) into `now`, both
    // live for the call; the header is valid.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, now.as_mut_ptr()) };
    if r == 0
        && now
            .iter()
            .all(|d| d.effective | d.permitted | d.inheritable == 0)
    {
        // None left (a thread started by a sandboxed one, or a second
        // entry): capset is denied by then, and there is nothing to drop.
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only; failure (old kernels) is
    // harmless: ambient capabilities then do not exist.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let data = [Data::default(); 2];
    // SAFETY: capset reads a valid header and two data structs (version 3
    // uses two), all live for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err(Error::Os {
            what: "dropping capabilities (capset)",
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Puts the calling thread in the sandbox for `kind`, if it is on.
pub fn enter(kind: ThreadKind) -> Result<(), Error> {
    if !enabled() {
        return Ok(());
    }
    enter_now(kind)
}

/// [`enter`] whatever the switch says (tests).
#[cfg(target_os = "linux")]
pub fn enter_now(kind: ThreadKind) -> Result<(), Error> {
    install_sigsys()?;
    no_new_privs()?;
    drop_capabilities()?;
    KIND.with(|k| k.set(Some(kind)));
    install_filter(kind)?;
    Ok(())
}

/// No seccomp off Linux: the sandbox cannot be entered.
#[cfg(not(target_os = "linux"))]
pub fn enter_now(kind: ThreadKind) -> Result<(), Error> {
    Err(Error::Install {
        kind,
        err: std::io::ErrorKind::Unsupported.into(),
    })
}

/// Installs `kind`'s compiled program on the calling thread, with this
/// process's id written in (one copy on the stack, one system call).
#[cfg(target_os = "linux")]
fn install_filter(kind: ThreadKind) -> Result<(), Error> {
    let (prog, pid_at) = program(kind);
    let mut insns = [libc::sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    }; MAX_LEN];
    insns[..prog.len()].copy_from_slice(prog);
    if let Some(at) = pid_at {
        insns[at].k = std::process::id();
    }
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).unwrap_or(u16::MAX),
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: seccomp copies the program (`prog.len()` valid instructions
    // on our stack) and reads nothing else; no_new_privs is set above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(Error::Install {
            kind,
            err: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// [`enter`] for a worker thread's first line: a failure is logged, the
/// worker runs on (the main and vCPU threads refuse to run instead).
pub fn enter_worker() {
    enter_thread(ThreadKind::Worker);
}

/// [`enter`] for a helper thread of `kind` (a worker, the monitor): a
/// failure is logged, the thread runs on.
pub fn enter_thread(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        log::warn!("{e}");
    }
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    use super::lists::*;
    use super::*;

    /// errno of a raw system call, 0 when it succeeded.
    fn errno_of(r: libc::c_long) -> i32 {
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    fn in_sandboxed_thread<T: Send + 'static>(
        kind: ThreadKind,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            enter_now(kind).expect("entering the sandbox");
            f()
        })
        .join()
        .expect("sandboxed thread")
    }

    const KINDS: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Worker,
        ThreadKind::Monitor,
    ];

    /// errno of `socket(AF_INET, SOCK_STREAM)`, closing a returned fd.
    fn socket() -> i32 {
        socket_of(libc::AF_INET)
    }

    fn socket_of(family: i32) -> i32 {
        // SAFETY: socket(2) with integer arguments; a returned fd is closed.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
        let e = errno_of(fd.into());
        if fd >= 0 {
            // SAFETY: fd was just returned to us.
            unsafe { libc::close(fd) };
        }
        e
    }

    #[test]
    fn every_kind_stops_what_it_does_not_list_and_keeps_ordinary_calls() {
        for kind in KINDS {
            let before = blocked();
            let (exec, pid, unshare, sock, fork) = in_sandboxed_thread(kind, || {
                let path = c"/bin/true";
                let argv = [path.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                // SAFETY: valid NUL-terminated argv/envp; stopped, so it
                // returns instead of replacing the test process.
                let exec = unsafe {
                    libc::syscall(
                        libc::SYS_execve,
                        path.as_ptr(),
                        argv.as_ptr(),
                        envp.as_ptr(),
                    )
                };
                let exec = errno_of(exec);
                // SAFETY: getpid has no arguments.
                let pid = unsafe { libc::syscall(libc::SYS_getpid) };
                // SAFETY: unshare(0) changes nothing even when allowed.
                let unshare = errno_of(unsafe { libc::syscall(libc::SYS_unshare, 0) });
                // SAFETY: stopped, so no child is created; if it were
                // allowed the child leaves at once without running Rust.
                let r = unsafe { libc::syscall(libc::SYS_fork) };
                if r == 0 {
                    // SAFETY: in the child: leave at once.
                    unsafe { libc::_exit(0) };
                }
                (exec, pid, unshare, socket(), errno_of(r))
            });
            assert_eq!(exec, libc::EPERM, "{kind:?}: execve");
            assert_eq!(unshare, libc::EPERM, "{kind:?}: unshare");
            assert_eq!(sock, libc::EPERM, "{kind:?}: socket");
            assert_eq!(fork, libc::EPERM, "{kind:?}: fork");
            assert_eq!(pid, i64::from(std::process::id()), "{kind:?}: getpid");
            assert!(
                blocked() >= before + 4,
                "{kind:?}: stopped calls not counted"
            );
        }
        // Outside the sandbox the same calls work.
        assert_eq!(socket(), 0);
    }

    /// `ioctl(fd, req)` on a pipe: ENOTTY when the filter lets it through
    /// (a pipe has no such request), EPERM when the filter stops it.
    fn ioctl_on_pipe(req: u64) -> i32 {
        // stdin may be a terminal; a pipe's fd is made before the filter.
        PIPE.with(|fd| {
            // SAFETY: an ioctl the pipe does not implement; no memory is
            // read or written through the null argument.
            errno_of(unsafe { libc::syscall(libc::SYS_ioctl, *fd, req, 0usize) })
        })
    }

    thread_local! {
        /// A pipe's read end, made on first use (tests make it before
        /// entering the sandbox); the write end is closed at once.
        static PIPE: i32 = {
            let mut p = [-1; 2];
            // SAFETY: pipe2 writes two fds into the array.
            assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: closing the write end pipe2 gave us.
            unsafe { libc::close(p[1]) };
            p[0]
        };
    }

    /// [`in_sandboxed_thread`] with the thread's pipe made first.
    fn ioctls_in<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            PIPE.with(|_| ());
            enter_now(kind).expect("entering the sandbox");
            f()
        })
        .join()
        .expect("sandboxed thread")
    }

    #[test]
    fn ioctl_requests_are_filtered_per_kind() {
        const KVM_CREATE_VM: u64 = kvm_io(0x01);
        // vCPUs may run, nobody may create a VM or a vCPU.
        let vcpu = ioctls_in(ThreadKind::Vcpu, || {
            (ioctl_on_pipe(KVM_RUN), ioctl_on_pipe(KVM_CREATE_VM))
        });
        assert_eq!(vcpu, (libc::ENOTTY, libc::EPERM));
        // KVM_RUN is the vCPUs' (and the main thread's: vCPU 0) only.
        for (kind, run) in [
            (ThreadKind::Main, libc::ENOTTY),
            (ThreadKind::Worker, libc::EPERM),
            (ThreadKind::Monitor, libc::EPERM),
        ] {
            let got = ioctls_in(kind, || {
                (ioctl_on_pipe(KVM_RUN), ioctl_on_pipe(KVM_CREATE_VM))
            });
            assert_eq!(got, (run, libc::EPERM), "{kind:?}");
        }
        // The monitor has no terminal requests (it has FIONBIO and the
        // power button's KVM_IRQFD only).
        let mon = ioctls_in(ThreadKind::Monitor, || ioctl_on_pipe(TCGETS));
        assert_eq!(mon, libc::EPERM);
    }

    #[test]
    fn only_the_main_thread_may_clone_and_only_with_clone_vm() {
        // clone with thread flags (what pthread_create would use) is
        // stopped everywhere; the arguments never reach the kernel.
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD) as u64;
        for kind in KINDS {
            let e = in_sandboxed_thread(kind, move || {
                // SAFETY: stopped by the filter, so no thread is created
                // on the bogus stack (null: the kernel would refuse).
                errno_of(unsafe { libc::syscall(libc::SYS_clone, thread_flags, 0usize) })
            });
            assert_eq!(e, libc::EPERM, "{kind:?}");
        }
        // Starting a thread the std way fails too (clone3 is in no list).
        let spawned = in_sandboxed_thread(ThreadKind::Worker, || {
            std::thread::Builder::new().spawn(|| ()).is_ok()
        });
        assert!(!spawned, "a sandboxed worker started a thread");
    }

    #[test]
    fn only_the_monitor_accepts_connections() {
        let accept = || {
            // SAFETY: accept4 on an invalid fd with null address pointers.
            errno_of(unsafe {
                libc::syscall(libc::SYS_accept4, -1, 0usize, 0usize, libc::SOCK_CLOEXEC)
            })
        };
        assert_eq!(
            in_sandboxed_thread(ThreadKind::Monitor, accept),
            libc::EBADF
        );
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Worker] {
            assert_eq!(in_sandboxed_thread(kind, accept), libc::EPERM, "{kind:?}");
        }
        // It makes its own Unix sockets (off the boot path), no others.
        let unix = || (socket_of(libc::AF_UNIX), socket_of(libc::AF_INET6));
        assert_eq!(
            in_sandboxed_thread(ThreadKind::Monitor, unix),
            (0, libc::EPERM)
        );
        assert_eq!(
            in_sandboxed_thread(ThreadKind::Vcpu, unix),
            (libc::EPERM, libc::EPERM)
        );
    }

    #[test]
    fn tgkill_reaches_only_this_process() {
        let (own, other) = in_sandboxed_thread(ThreadKind::Monitor, || {
            // SAFETY: signal 0 only checks that the target exists.
            let own =
                unsafe { libc::syscall(libc::SYS_tgkill, std::process::id(), libc::gettid(), 0) };
            // SAFETY: as above, for init's main thread: stopped by the filter.
            let other = unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
            (errno_of(own), errno_of(other))
        });
        assert_eq!((own, other), (0, libc::EPERM));
    }

    /// The same lists through rust-vmm's seccompiler, as the filters were
    /// built before they were compiled into the binary (a 32-bit compare
    /// per argument value, trap otherwise), with clone3's EPERM in front.
    fn seccompiler_program(kind: ThreadKind) -> Vec<libc::sock_filter> {
        use seccompiler::{
            BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
            SeccompFilter, SeccompRule, TargetArch,
        };
        use std::collections::{BTreeMap, BTreeSet};
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let mut any = BTreeSet::new();
        for a in lists(kind).iter().flat_map(|l| l.iter()) {
            let (nr, arg, values) = match *a {
                Allow::Call(nr) => {
                    any.insert(nr);
                    continue;
                }
                Allow::Arg(nr, arg, values) => (nr, arg, values.to_vec()),
                Allow::OwnPid(nr, arg) => (nr, arg, vec![u64::from(std::process::id())]),
            };
            for v in values {
                let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                    .expect("condition");
                rules
                    .entry(nr)
                    .or_default()
                    .push(SeccompRule::new(vec![c]).expect("rule"));
            }
        }
        for nr in any {
            rules.insert(nr, Vec::new());
        }
        let f = SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .expect("filter");
        let prog: BpfProgram = f.try_into().expect("program");
        let mut out = vec![
            libc::sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: libc::SYS_clone3 as u32,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: bpf::RET_ERRNO | libc::EPERM as u32,
            },
        ];
        out.extend(prog.into_iter().map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        }));
        out
    }

    /// The program as installed: the compiled one with our pid written in.
    fn installed(kind: ThreadKind) -> Vec<libc::sock_filter> {
        let (prog, pid_at) = program(kind);
        let mut p = prog.to_vec();
        p[pid_at.expect("every kind may tgkill its own threads")].k = std::process::id();
        p
    }

    #[test]
    fn compiled_programs_decide_every_call_as_seccompiler_did() {
        let pid = u64::from(std::process::id());
        for kind in KINDS {
            let ours = installed(kind);
            let theirs = seccompiler_program(kind);
            // Every argument value the lists name, its neighbours, the pid,
            // and the same values with high bits set (compared on 32 bits).
            let mut values: Vec<u64> = vec![0, 1, pid, pid + 1, u64::from(u32::MAX)];
            for a in lists(kind).iter().flat_map(|l| l.iter()) {
                if let Allow::Arg(_, _, vs) = a {
                    for &v in *vs {
                        values.extend([v, v.wrapping_add(1), v.wrapping_sub(1), v | 1 << 40]);
                    }
                }
            }
            let mut calls = 0;
            for nr in (0..480).chain([libc::SYS_clone3, 0x4000_0000, 0x4000_0010]) {
                for arg in 0..3u8 {
                    for &v in &values {
                        let mut args = [0u64; 6];
                        args[usize::from(arg)] = v;
                        for arch in [bpf::AUDIT_ARCH, 0x4000_0003] {
                            // The old program looked at clone3 before the
                            // architecture; the new one kills any call made
                            // through another ABI first.
                            let want = if nr == libc::SYS_clone3 && arch != bpf::AUDIT_ARCH {
                                bpf::RET_KILL_PROCESS
                            } else {
                                bpf::run(&theirs, nr as u32, arch, args).0
                            };
                            let (got, steps) = bpf::run(&ours, nr as u32, arch, args);
                            assert_eq!(
                                got, want,
                                "{kind:?}: call {nr} args {args:x?} arch {arch:#x}"
                            );
                            // A binary search: a call is decided in a few
                            // comparisons plus its argument block.
                            assert!(steps <= 64, "{kind:?}: call {nr} took {steps} steps");
                            calls += 1;
                        }
                    }
                }
            }
            assert!(calls > 10_000);
            assert!(
                ours.len() < theirs.len() * 2 / 3,
                "{kind:?}: {} instructions against seccompiler's {}",
                ours.len(),
                theirs.len()
            );
        }
    }

    #[test]
    fn a_sandboxed_thread_has_no_capabilities_and_no_new_privs() {
        let (caps, nnp) = in_sandboxed_thread(ThreadKind::Worker, || {
            // capget(2), version 3: a header then two (effective,
            // permitted, inheritable) triples.
            let mut hdr = [0x2008_0522u32, 0];
            let mut data = [u32::MAX; 6];
            // SAFETY: capget writes six u32s into `data`; the header is valid.
            let r = unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), data.as_mut_ptr()) };
            assert_eq!(r, 0, "capget");
            // SAFETY: prctl with integer arguments only.
            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            (data, nnp)
        });
        assert_eq!(caps, [0; 6]);
        assert_eq!(nnp, 1);
    }
}
