//! The sandbox: once the machine is built, every thread runs with
//! `no_new_privs`, without capabilities (when started as root), and under a
//! seccomp filter for its kind, built with rust-vmm's `seccompiler`. On by
//! default; `--sandbox=off` turns it off.
//!
//! The filters are deny lists: the system calls a thread kind never makes
//! fail with EPERM (not SIGSYS: a hostile guest that finds a way to make
//! the VMM call one gets an error, the VM is not killed under the user,
//! and a legitimate path we missed degrades into an error line instead of
//! a crash). What is denied:
//! - every kind: running programs (execve), changing privileges (set*id,
//!   capset), other processes' memory and tracing (ptrace,
//!   process_vm_*), namespaces and mounts, kernel modules, kexec, reboot,
//!   swap, bpf, perf, keyrings, userfaultfd, the clock, port I/O rights
//!   (iopl/ioperm), file handles (open_by_handle_at);
//! - vCPU threads (vCPU 0 is the main thread) also: creating sockets and
//!   connecting or listening (socket, socketpair, connect, bind, listen,
//!   accept, accept4), fork/vfork, memfd_create: a guest exit never needs
//!   them;
//! - device workers (console output, vhost-user deadline and hang-up
//!   watchers, stdin, serial mux, QMP, ivshmem doorbell server) also
//!   fork/vfork; they keep sockets (a server accepts clients).
//!
//! Threads spawned after their parent entered the sandbox inherit its
//! filter; each kind's entry point calls [`enter`] for its own.

use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// Whether threads enter the sandbox (set once from `--sandbox`).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The kinds of threads, each with its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread between building the machine and running vCPU 0.
    Main,
    /// A thread running a vCPU (vCPU 0: the main thread).
    Vcpu,
    /// A device or console worker thread.
    Worker,
}

/// Errors entering the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--sandbox: building the {kind:?} seccomp filter: {err}")]
    Filter {
        kind: ThreadKind,
        err: seccompiler::BackendError,
    },
    #[error("--sandbox: installing the {kind:?} seccomp filter: {err}")]
    Install {
        kind: ThreadKind,
        err: seccompiler::Error,
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

const DENIED_EVERYWHERE: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_personality,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_adjtimex,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_fanotify_init,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
];

const DENIED_VCPU: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_memfd_create,
];

/// Port I/O permissions and the old process-creating calls exist on x86_64
/// only (aarch64 Linux has neither: clone covers fork).
#[cfg(target_arch = "x86_64")]
const DENIED_EVERYWHERE_ARCH: &[libc::c_long] = &[libc::SYS_iopl, libc::SYS_ioperm];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_EVERYWHERE_ARCH: &[libc::c_long] = &[];
#[cfg(target_arch = "x86_64")]
const DENIED_FORK: &[libc::c_long] = &[libc::SYS_fork, libc::SYS_vfork];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_FORK: &[libc::c_long] = &[];

const DENIED_WORKER: &[libc::c_long] = DENIED_FORK;

/// The seccomp filter's architecture: the one shmvm is built for.
#[cfg(target_arch = "x86_64")]
const FILTER_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const FILTER_ARCH: TargetArch = TargetArch::aarch64;

/// The system calls `kind` may not make.
pub fn denied(kind: ThreadKind) -> Vec<libc::c_long> {
    let extra: &[libc::c_long] = match kind {
        ThreadKind::Main => &[],
        ThreadKind::Vcpu => DENIED_VCPU,
        ThreadKind::Worker => DENIED_WORKER,
    };
    let fork = match kind {
        ThreadKind::Vcpu => DENIED_FORK,
        ThreadKind::Main | ThreadKind::Worker => &[],
    };
    DENIED_EVERYWHERE
        .iter()
        .chain(DENIED_EVERYWHERE_ARCH)
        .chain(extra)
        .chain(fork)
        .copied()
        .collect()
}

/// The BPF program of `kind`'s filter.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, Error> {
    let rules = denied(kind)
        .into_iter()
        .map(|nr| (nr, Vec::<SeccompRule>::new()))
        .collect();
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        FILTER_ARCH,
    )
    .map_err(|err| Error::Filter { kind, err })?;
    f.try_into().map_err(|err| Error::Filter { kind, err })
}

/// `prctl(PR_SET_NO_NEW_PRIVS)` for the calling thread (and the threads it
/// creates): nothing executed could gain privileges.
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
pub fn enter_now(kind: ThreadKind) -> Result<(), Error> {
    no_new_privs()?;
    drop_capabilities()?;
    let prog = filter(kind)?;
    seccompiler::apply_filter(&prog).map_err(|err| Error::Install { kind, err })
}

/// [`enter`] for a worker thread's first line: a failure is logged, the
/// worker runs on (the main and vCPU threads refuse to run instead).
pub fn enter_worker() {
    if let Err(e) = enter(ThreadKind::Worker) {
        log::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn every_kind_stops_execve_and_keeps_ordinary_calls() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Worker] {
            let (exec, pid, unshare) = in_sandboxed_thread(kind, || {
                let path = c"/bin/true";
                let argv = [path.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                // SAFETY: valid NUL-terminated argv/envp; denied, so it
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
                (exec, pid, unshare)
            });
            assert_eq!(exec, libc::EPERM, "{kind:?}: execve");
            assert_eq!(unshare, libc::EPERM, "{kind:?}: unshare");
            assert_eq!(pid, i64::from(std::process::id()), "{kind:?}: getpid");
        }
    }

    #[test]
    fn vcpu_threads_cannot_open_sockets_but_workers_can() {
        let socket = || {
            // SAFETY: socket(2) with integer arguments; a returned fd is closed.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            let e = errno_of(fd.into());
            if fd >= 0 {
                // SAFETY: fd was just returned to us.
                unsafe { libc::close(fd) };
            }
            e
        };
        assert_eq!(in_sandboxed_thread(ThreadKind::Vcpu, socket), libc::EPERM);
        assert_eq!(in_sandboxed_thread(ThreadKind::Worker, socket), 0);
        let memfd = || {
            // SAFETY: memfd_create with a valid name; a returned fd is closed.
            let fd = unsafe { libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC) };
            let e = errno_of(fd.into());
            if fd >= 0 {
                // SAFETY: fd was just returned to us.
                unsafe { libc::close(fd) };
            }
            e
        };
        assert_eq!(in_sandboxed_thread(ThreadKind::Vcpu, memfd), libc::EPERM);
    }

    /// x86_64 only: aarch64 Linux has no fork/vfork (clone, which threads
    /// need too, creates processes there).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn workers_cannot_fork() {
        let r = in_sandboxed_thread(ThreadKind::Worker, || {
            // SAFETY: denied, so no child is created; if it were allowed the
            // child exits at once without running any Rust code.
            let r = unsafe { libc::syscall(libc::SYS_fork) };
            if r == 0 {
                // SAFETY: in the child: leave at once.
                unsafe { libc::_exit(0) };
            }
            errno_of(r)
        });
        assert_eq!(r, libc::EPERM);
    }

    #[test]
    fn a_sandboxed_thread_has_no_capabilities_and_no_new_privs() {
        let (eff, nnp) = in_sandboxed_thread(ThreadKind::Worker, || {
            let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
            let eff = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .map(|v| v.trim().to_string())
                .expect("CapEff");
            // SAFETY: prctl with integer arguments only.
            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
            (eff, nnp)
        });
        assert_eq!(eff, "0000000000000000");
        assert_eq!(nnp, 1);
    }
}
