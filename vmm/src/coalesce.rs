//! Console output without a vCPU exit per byte.
//!
//! A polled console (test kernels, early boot code) writes each byte with
//! an `out` to the UART's transmit register, and each one costs a trip
//! from the guest to the VMM (~9 us on the PVM development host, where this
//! is most of a small test kernel's run time). While that register has no
//! effect but output ([`Serial::transmit_is_output_only`]), KVM is asked to
//! queue writes to it in its coalesced-I/O ring instead, and the VMM
//! replays them:
//! - before handling any exit, on whichever vCPU took it, so every queued
//!   byte reaches the UART before any later UART access (an LSR poll, the
//!   next exit of any kind) and in the guest's order;
//! - when a flush timer kicks vCPU 0, every [`FLUSH_PERIOD`], so the output
//!   of a guest that stops exiting (spinning, halted with interrupts off)
//!   still shows, even if the VMM is then killed;
//! - when the vCPUs have stopped.
//!
//! Once the guest enables the transmit-empty interrupt or loopback (Linux's
//! 8250 driver does both while probing), the zone is removed for good:
//! from then on every write exits, so an interrupt-driven driver is never
//! left waiting for an interrupt whose write is still queued.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::serial::Serial;

use crate::hv::{self, CoalescedRing, Vcpu};
use crate::io::{IoBuses, IoHook};
use crate::stats::ConsoleStats;

/// How long queued output may wait when the guest takes no exits.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(20);

/// Coalesced writes to one UART's transmit register.
#[derive(Debug)]
pub struct SerialCoalescing {
    vm: Arc<hv::Vm>,
    ring: CoalescedRing,
    serial: Arc<Mutex<Serial>>,
    /// The transmit register's port (the UART's base).
    port: u16,
    active: AtomicBool,
    replayed: AtomicU64,
    timer: Mutex<Option<FlushTimer>>,
}

impl SerialCoalescing {
    /// Starts coalescing writes to the transmit register at `port` (the
    /// UART's base) if the hypervisor can; `None` (every write exits, as
    /// without it) if not. `vcpu` is any vCPU, for the ring mapping. Must
    /// run before the guest does.
    pub fn start(
        vm: &Arc<hv::Vm>,
        vcpu: &Vcpu,
        serial: &Arc<Mutex<Serial>>,
        port: u16,
    ) -> Option<SerialCoalescing> {
        match vm.coalesce_pio(port, 1) {
            Ok(true) => {}
            Ok(false) => {
                log::debug!("serial: the hypervisor cannot coalesce port writes");
                return None;
            }
            Err(e) => {
                log::warn!("serial: {e}; console writes exit one by one");
                return None;
            }
        }
        let ring = match vcpu.coalesced_ring() {
            Ok(r) => r,
            Err(e) => {
                if let Err(e) = vm.uncoalesce_pio(port, 1) {
                    log::warn!("serial: {e}");
                }
                log::warn!("serial: {e}; console writes exit one by one");
                return None;
            }
        };
        Some(SerialCoalescing {
            vm: vm.clone(),
            ring,
            serial: serial.clone(),
            port,
            active: AtomicBool::new(true),
            replayed: AtomicU64::new(0),
            timer: Mutex::new(None),
        })
    }

    /// Replays every queued write through the port dispatch, in order.
    pub fn drain(&self, io: &IoBuses) {
        let n = self.ring.drain(|w| io.pio_write_quiet(w.port, w.bytes()));
        if n > 0 {
            self.replayed.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Called after a port write was dispatched: a write to the UART's
    /// other registers may have given transmit a side effect, which ends
    /// coalescing.
    fn check_port_write(&self, port: u16, io: &IoBuses) {
        let uart = self.port..self.port.saturating_add(Serial::PORTS as u16);
        if port == self.port || !uart.contains(&port) || !self.active.load(Ordering::Acquire) {
            return;
        }
        let output_only = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transmit_is_output_only();
        if !output_only && self.active.swap(false, Ordering::AcqRel) {
            match self.vm.uncoalesce_pio(self.port, 1) {
                Ok(()) => {
                    log::debug!("serial: transmit has side effects now, writes exit again");
                    self.stop_flush_timer();
                }
                // Writes keep being queued; they are still replayed in
                // order at every exit and on every flush tick.
                Err(e) => log::warn!("serial: {e}"),
            }
            // Writes queued before the zone went away.
            self.drain(io);
        }
    }

    /// Starts a timer that kicks the calling thread (vCPU 0, registered
    /// for kicks) every [`FLUSH_PERIOD`], so its run loop drains the ring.
    pub fn start_flush_timer(&self) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        match FlushTimer::start(FLUSH_PERIOD) {
            Ok(t) => *self.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
            Err(e) => log::warn!(
                "serial: no flush timer ({e}): output of a guest that stops taking exits shows late"
            ),
        }
    }

    pub fn stop_flush_timer(&self) {
        self.timer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// What it did, for the statistics.
    pub fn stats(&self) -> ConsoleStats {
        ConsoleStats {
            coalesced_writes: self.replayed.load(Ordering::Relaxed),
            coalescing_on: self.active.load(Ordering::Relaxed),
        }
    }
}

/// The exit hooks: queued writes reach the UART before any exit is
/// handled, and a write to another UART register may end queuing.
impl IoHook for SerialCoalescing {
    fn before_exit(&self, io: &IoBuses) {
        self.drain(io);
    }

    fn after_port_write(&self, port: u16, io: &IoBuses) {
        self.check_port_write(port, io);
    }
}

/// A POSIX timer sending the vCPU kick signal to one thread; deleted on
/// drop.
#[derive(Debug)]
struct FlushTimer(libc::timer_t);

// SAFETY: a timer_t is a process-wide id; any thread may delete it.
unsafe impl Send for FlushTimer {}

impl FlushTimer {
    fn start(period: Duration) -> Result<FlushTimer, std::io::Error> {
        // SAFETY: sigevent is plain integers; all-zero is a valid start.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = crate::signals::kick_signal();
        // The raw system call: the static build's glibc leaves `gettid`
        // an unresolved weak symbol.
        // SAFETY: gettid has no arguments and no preconditions.
        ev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `ev` and `id` are valid for the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let timer = FlushTimer(id);
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos().into(),
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `timer.0` is the timer just created; `spec` is valid.
        if unsafe { libc::timer_settime(timer.0, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(timer)
    }
}

impl Drop for FlushTimer {
    fn drop(&mut self) {
        // SAFETY: deletes the timer created in `start`, once.
        unsafe { libc::timer_delete(self.0) };
    }
}
