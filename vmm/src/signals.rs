//! Stopping vCPUs: SIGINT/SIGTERM/SIGHUP record the request and kick every vCPU
//! thread with a real-time signal; the kick handler sets the thread's
//! `kvm_run.immediate_exit` so a KVM_RUN that races with the kick returns at
//! once instead of sleeping in the guest. The same signal, from a timer,
//! makes vCPU 0 replay coalesced console output (coalesce.rs); it restarts
//! interrupted system calls (SA_RESTART), so it never surfaces as EINTR
//! anywhere but in KVM_RUN, which KVM ends with EINTR regardless.
//!
//! Off Linux (HVF on macOS) there is no `kvm_run` and no real-time signal:
//! the stop signals are blocked and taken by one thread in `sigwait`, and
//! a kick is the hypervisor's (`hv::hvf::kick_all`, `hv_vcpus_exit`),
//! made from that thread, never from a handler.

#[cfg(target_os = "linux")]
use std::cell::Cell;
use std::sync::atomic::AtomicI32;
use std::sync::atomic::Ordering;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

#[cfg(target_os = "linux")]
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

#[cfg(target_os = "linux")]
use crate::config::MAX_VCPUS;

/// The stop signal received (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// pthread ids of the threads running vCPUs.
#[cfg(target_os = "linux")]
static VCPU_THREADS: [AtomicU64; MAX_VCPUS as usize] =
    [const { AtomicU64::new(0) }; MAX_VCPUS as usize];
#[cfg(target_os = "linux")]
static VCPU_THREAD_COUNT: AtomicUsize = AtomicUsize::new(0);

#[cfg(target_os = "linux")]
thread_local! {
    /// This thread's vCPU `immediate_exit` byte (null: not a vCPU thread).
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Errors installing handlers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install handler for signal {sig}: {err}")]
    Install {
        sig: i32,
        err: vmm_sys_util::errno::Error,
    },
    #[error("cannot start the thread that takes the stop signals: {0}")]
    Thread(#[source] std::io::Error),
}

/// The signal that asked the VMM to stop, if any.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

#[cfg(target_os = "linux")]
extern "C" fn on_stop(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    kick_all();
}

#[cfg(target_os = "linux")]
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only a const-initialized Cell is read: no allocation, async-signal-safe.
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points into this thread's vCPU kvm_run mapping, which
        // stays mapped while the thread is registered (cleared before the
        // vCPU is dropped, see `VcpuThreadGuard`).
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// The signals that end the VM with cleanup (exit 128+N): SIGHUP too, so a
/// closed terminal or a hung-up session never leaves a named shm object.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the SIGINT/SIGTERM/SIGHUP and vCPU-kick handlers.
#[cfg(target_os = "linux")]
pub fn install() -> Result<(), Error> {
    for sig in STOP_SIGNALS {
        register_signal_handler(sig, on_stop).map_err(|err| Error::Install { sig, err })?;
    }
    let sig = kick_signal();
    // SAFETY: sigaction is plain data; all-zero is a valid start.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_kick as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `act.sa_mask` is a valid sigset to fill; `act` is valid for
    // sigaction, and `on_kick` is async-signal-safe.
    let r = unsafe {
        libc::sigfillset(&mut act.sa_mask);
        libc::sigaction(sig, &act, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(Error::Install {
            sig,
            err: vmm_sys_util::errno::Error::last(),
        });
    }
    Ok(())
}

/// Takes SIGINT/SIGTERM/SIGHUP on a thread of their own: blocked in the
/// calling thread (the main thread, before any other starts, so every
/// thread inherits the mask) and waited for with `sigwait`; each records
/// the stop and kicks the vCPUs.
#[cfg(not(target_os = "linux"))]
pub fn install() -> Result<(), Error> {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset for both calls.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in STOP_SIGNALS {
        // SAFETY: as above; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is initialized; no old mask is asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(Error::Install {
            sig: STOP_SIGNALS[0],
            err: vmm_sys_util::errno::Error::new(r),
        });
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut sig = 0;
                // SAFETY: `set` is an initialized sigset; sigwait writes the
                // signal taken into `sig`.
                if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                    STOP_SIGNAL.store(sig, Ordering::SeqCst);
                    kick_all();
                }
            }
        })
        .map(drop)
        .map_err(Error::Thread)
}

/// `--snapshot-on-signal`: SIGUSR1 asks for a snapshot.
#[cfg(target_os = "linux")]
static SNAPSHOT_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The signal that asks for a snapshot (`--snapshot-on-signal`).
pub const SNAPSHOT_SIGNAL: i32 = libc::SIGUSR1;

#[cfg(target_os = "linux")]
extern "C" fn on_snapshot(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SNAPSHOT_REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the [`SNAPSHOT_SIGNAL`] handler (only with `--snapshot-on-signal`:
/// otherwise SIGUSR1 keeps its default action).
#[cfg(target_os = "linux")]
pub fn install_snapshot() -> Result<(), Error> {
    register_signal_handler(SNAPSHOT_SIGNAL, on_snapshot).map_err(|err| Error::Install {
        sig: SNAPSHOT_SIGNAL,
        err,
    })
}

/// Whether a snapshot was asked for since the last call (clears it).
#[cfg(target_os = "linux")]
pub fn take_snapshot_request() -> bool {
    SNAPSHOT_REQUESTED.swap(false, Ordering::SeqCst)
}

/// The real-time signal that kicks a vCPU thread out of KVM_RUN.
#[cfg(target_os = "linux")]
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Kicks every vCPU out of the hypervisor: HVF's `hv_vcpus_exit`.
#[cfg(hvf)]
pub fn kick_all() {
    crate::hv::hvf::kick_all();
}

/// Sends the kick signal to every registered vCPU thread.
#[cfg(target_os = "linux")]
pub fn kick_all() {
    let n = VCPU_THREAD_COUNT
        .load(Ordering::SeqCst)
        .min(VCPU_THREADS.len());
    for t in &VCPU_THREADS[..n] {
        let id = t.load(Ordering::SeqCst);
        if id != 0 {
            // SAFETY: `id` is a pthread_t of a vCPU thread that is registered
            // until it has left its run loop; pthread_kill is async-signal-safe.
            unsafe { libc::pthread_kill(id as libc::pthread_t, kick_signal()) };
        }
    }
}

/// Registration of the current thread as a vCPU thread; undone on drop.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct VcpuThreadGuard {
    slot: usize,
}

#[cfg(target_os = "linux")]
impl VcpuThreadGuard {
    /// Registers the calling thread for kicks, with its vCPU's
    /// `immediate_exit` byte.
    pub fn register(immediate_exit: *mut u8) -> VcpuThreadGuard {
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        let slot = VCPU_THREAD_COUNT
            .fetch_add(1, Ordering::SeqCst)
            .min(VCPU_THREADS.len() - 1);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        VCPU_THREADS[slot].store(me as u64, Ordering::SeqCst);
        VcpuThreadGuard { slot }
    }
}

#[cfg(target_os = "linux")]
impl Drop for VcpuThreadGuard {
    fn drop(&mut self) {
        VCPU_THREADS[self.slot].store(0, Ordering::SeqCst);
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}
