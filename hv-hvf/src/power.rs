//! PSCI in the VMM. Under KVM the kernel implements PSCI; under HVF a
//! guest's HVC comes to the VMM, which answers it here: each vCPU's
//! affinity (its MPIDR, which HVF lets the VMM choose), its power state,
//! and the policy for every call `aarch64_exits::psci` decodes.
//!
//! A secondary vCPU's thread waits in [`PowerTable::wait_for_on`] until
//! another vCPU's CPU_ON names it; CPU_OFF sends a vCPU back there.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use aarch64_exits::psci::{self, Call, Status};
use hv_boundary::SystemEvent;

/// MPIDR_EL1's affinity fields (Aff3, Aff2, Aff1, Aff0).
pub const AFFINITY_MASK: u64 = 0xff_00ff_ffff;
/// MPIDR_EL1 bit 31 is RES1.
const MPIDR_RES1: u64 = 1 << 31;

/// The MPIDR of vCPU `index`: 16 CPUs a cluster (Aff0 = index % 16, Aff1 =
/// index / 16), what QEMU's `virt` gives a GICv3 machine, so the device
/// tree and the redistributors agree on every host.
pub fn mpidr(index: u8) -> u64 {
    MPIDR_RES1 | u64::from(index / 16) << 8 | u64::from(index % 16)
}

/// One vCPU's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    /// CPU_ON was accepted; the vCPU's thread has not started it yet.
    OnPending {
        entry: u64,
        context_id: u64,
    },
    On,
}

/// What a PSCI call means for the calling vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Write this to x0 and carry on.
    Return(u64),
    /// The VM shuts down or resets: the vCPU reports it and stops.
    Event(SystemEvent),
    /// CPU_OFF: the calling vCPU waits for a CPU_ON.
    Off,
}

/// Why [`PowerTable::wait_for_on`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Start at `entry` with `context_id` in x0.
    Start { entry: u64, context_id: u64 },
    /// Kicked (the VM may be stopping) or the wait's slice ran out: the
    /// caller looks at why it runs and waits again.
    Again,
}

#[derive(Debug, Default)]
struct Cpus {
    mpidrs: Vec<u64>,
    power: Vec<Power>,
    /// Bumped by every kick, so a waiter sees one that came while it slept.
    kicks: u64,
}

/// Every vCPU's affinity and power state; the condition variable that
/// wakes a waiting vCPU (CPU_ON, a kick, an interrupt for a vCPU in WFI).
#[derive(Debug, Default)]
pub struct PowerTable {
    cpus: Mutex<Cpus>,
    changed: Condvar,
}

impl PowerTable {
    fn lock(&self) -> MutexGuard<'_, Cpus> {
        self.cpus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds vCPU `index` (the next one) with its MPIDR, powered on or off.
    pub fn add(&self, index: u8, on: bool) {
        let mut c = self.lock();
        let i = usize::from(index);
        if c.power.len() <= i {
            c.power.resize(i + 1, Power::Off);
            c.mpidrs.resize(i + 1, 0);
        }
        c.mpidrs[i] = mpidr(index);
        c.power[i] = if on { Power::On } else { Power::Off };
    }

    /// Powers vCPU `index` on or off before it first runs (the boundary's
    /// `VcpuInit::powered_off`).
    pub fn set_initial(&self, index: u8, on: bool) {
        if let Some(p) = self.lock().power.get_mut(usize::from(index)) {
            *p = if on { Power::On } else { Power::Off };
        }
    }

    pub fn state(&self, index: u8) -> Option<Power> {
        self.lock().power.get(usize::from(index)).copied()
    }

    /// Wakes every waiting vCPU (stop, pause, an interrupt raised).
    pub fn kick(&self) {
        let mut c = self.lock();
        c.kicks = c.kicks.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Waits (at most `slice`) for vCPU `index` to be turned on; claims the
    /// start when it is. A vCPU that is already on starts at once with no
    /// entry (`Wake::Start` is only for CPU_ON: see [`PowerTable::started`]).
    pub fn wait_for_on(&self, index: u8, slice: Duration) -> Wake {
        let i = usize::from(index);
        let mut c = self.lock();
        let kicks = c.kicks;
        loop {
            if let Some(Power::OnPending { entry, context_id }) = c.power.get(i).copied() {
                c.power[i] = Power::On;
                self.changed.notify_all();
                return Wake::Start { entry, context_id };
            }
            if c.kicks != kicks {
                return Wake::Again;
            }
            let (g, t) = self
                .changed
                .wait_timeout(c, slice)
                .unwrap_or_else(|e| e.into_inner());
            c = g;
            if t.timed_out() {
                return Wake::Again;
            }
        }
    }

    /// Sleeps vCPU `index` in WFI for at most `timeout`, or until a kick
    /// (an interrupt was raised, the VM stops).
    pub fn sleep(&self, timeout: Duration) {
        if timeout.is_zero() {
            return;
        }
        let c = self.lock();
        let kicks = c.kicks;
        let _ = self
            .changed
            .wait_timeout_while(c, timeout, |c| c.kicks == kicks);
    }

    /// Whether vCPU `index` is on (the boot CPU, or one whose CPU_ON its
    /// thread has claimed).
    pub fn started(&self, index: u8) -> bool {
        self.state(index) == Some(Power::On)
    }

    /// Answers PSCI call `call` made by vCPU `me`.
    pub fn call(&self, me: u8, call: Call) -> Outcome {
        let ok = Outcome::Return(Status::Success.x0());
        let status = |s: Status| Outcome::Return(s.x0());
        match call {
            Call::Version => Outcome::Return(u64::from(psci::VERSION_1_1)),
            // Standby only: returning at once is a valid wake-up.
            Call::CpuSuspend { .. } => ok,
            Call::CpuOff => {
                if let Some(p) = self.lock().power.get_mut(usize::from(me)) {
                    *p = Power::Off;
                }
                Outcome::Off
            }
            Call::CpuOn {
                target,
                entry,
                context_id,
            } => {
                let mut c = self.lock();
                let Some(i) = c.find(target) else {
                    return status(Status::InvalidParameters);
                };
                match c.power[i] {
                    Power::On => status(Status::AlreadyOn),
                    Power::OnPending { .. } => status(Status::OnPending),
                    Power::Off => {
                        c.power[i] = Power::OnPending { entry, context_id };
                        self.changed.notify_all();
                        ok
                    }
                }
            }
            Call::AffinityInfo {
                target,
                lowest_level,
            } => {
                if lowest_level != 0 {
                    return status(Status::InvalidParameters);
                }
                let c = self.lock();
                match c.find(target).map(|i| c.power[i]) {
                    None => status(Status::InvalidParameters),
                    Some(Power::On) => Outcome::Return(psci::affinity::ON),
                    Some(Power::Off) => Outcome::Return(psci::affinity::OFF),
                    Some(Power::OnPending { .. }) => Outcome::Return(psci::affinity::ON_PENDING),
                }
            }
            Call::MigrateInfoType => Outcome::Return(psci::MIGRATE_INFO_NO_TOS),
            Call::SystemOff => Outcome::Event(SystemEvent::Shutdown),
            Call::SystemReset | Call::SystemReset2 { .. } => Outcome::Event(SystemEvent::Reset),
            Call::Features { function } => {
                if Call::known(function) {
                    ok
                } else {
                    status(Status::NotSupported)
                }
            }
            Call::SmcccVersion => Outcome::Return(u64::from(psci::SMCCC_1_1)),
            // No SMCCC architecture workarounds to advertise.
            Call::SmcccArchFeatures { .. } | Call::Unknown { .. } => status(Status::NotSupported),
        }
    }
}

impl Cpus {
    fn find(&self, target: u64) -> Option<usize> {
        self.mpidrs
            .iter()
            .position(|m| m & AFFINITY_MASK == target & AFFINITY_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn table(n: u8) -> PowerTable {
        let t = PowerTable::default();
        for i in 0..n {
            t.add(i, i == 0);
        }
        t
    }

    #[test]
    fn mpidrs_group_sixteen_cpus_a_cluster() {
        assert_eq!(mpidr(0), 0x8000_0000);
        assert_eq!(mpidr(1), 0x8000_0001);
        assert_eq!(mpidr(15), 0x8000_000f);
        assert_eq!(mpidr(16), 0x8000_0100);
        assert_eq!(mpidr(33), 0x8000_0201);
    }

    #[test]
    fn cpu_on_off_and_affinity_info_follow_psci() {
        let t = table(3);
        let on = |target| Call::CpuOn {
            target,
            entry: 0x4008_0000,
            context_id: 7,
        };
        let info = |target| Call::AffinityInfo {
            target,
            lowest_level: 0,
        };
        assert_eq!(t.call(0, info(1)), Outcome::Return(psci::affinity::OFF));
        assert_eq!(t.call(0, on(1)), Outcome::Return(0));
        assert_eq!(
            t.state(1),
            Some(Power::OnPending {
                entry: 0x4008_0000,
                context_id: 7
            })
        );
        assert_eq!(
            t.call(0, info(1)),
            Outcome::Return(psci::affinity::ON_PENDING)
        );
        assert_eq!(t.call(0, on(1)), Outcome::Return(Status::OnPending.x0()));
        assert_eq!(t.call(1, on(0)), Outcome::Return(Status::AlreadyOn.x0()));
        // No CPU with that affinity; bit 31 and other non-affinity bits do
        // not matter.
        assert_eq!(
            t.call(0, on(5)),
            Outcome::Return(Status::InvalidParameters.x0())
        );
        assert_eq!(t.call(0, on(0x8000_0002)), Outcome::Return(0));
        // The vCPU's thread claims the start.
        assert_eq!(
            t.wait_for_on(1, Duration::from_millis(1)),
            Wake::Start {
                entry: 0x4008_0000,
                context_id: 7
            }
        );
        assert!(t.started(1));
        assert_eq!(t.call(0, info(1)), Outcome::Return(psci::affinity::ON));
        assert_eq!(t.call(1, Call::CpuOff), Outcome::Off);
        assert_eq!(t.state(1), Some(Power::Off));
        assert_eq!(
            t.call(
                0,
                Call::AffinityInfo {
                    target: 1,
                    lowest_level: 1
                }
            ),
            Outcome::Return(Status::InvalidParameters.x0())
        );
    }

    #[test]
    fn system_calls_versions_and_features() {
        let t = table(1);
        assert_eq!(t.call(0, Call::Version), Outcome::Return(0x1_0001));
        assert_eq!(
            t.call(0, Call::SystemOff),
            Outcome::Event(SystemEvent::Shutdown)
        );
        assert_eq!(
            t.call(0, Call::SystemReset),
            Outcome::Event(SystemEvent::Reset)
        );
        assert_eq!(
            t.call(
                0,
                Call::Features {
                    function: psci::id::CPU_ON_64
                }
            ),
            Outcome::Return(0)
        );
        assert_eq!(
            t.call(
                0,
                Call::Features {
                    function: 0x8400_0005
                }
            ),
            Outcome::Return(u64::MAX)
        );
        assert_eq!(
            t.call(
                0,
                Call::Unknown {
                    function: 0xc200_0000
                }
            ),
            Outcome::Return(u64::MAX)
        );
        assert_eq!(t.call(0, Call::MigrateInfoType), Outcome::Return(2));
    }

    #[test]
    fn a_waiting_secondary_starts_when_another_thread_turns_it_on() {
        let t = Arc::new(table(2));
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || {
                loop {
                    if let w @ Wake::Start { .. } = t.wait_for_on(1, Duration::from_secs(5)) {
                        return w;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            t.call(
                0,
                Call::CpuOn {
                    target: 1,
                    entry: 0x1000,
                    context_id: 2
                }
            ),
            Outcome::Return(0)
        );
        assert_eq!(
            waiter.join().expect("waiter"),
            Wake::Start {
                entry: 0x1000,
                context_id: 2
            }
        );
    }

    #[test]
    fn a_kick_ends_a_wait_early() {
        let t = Arc::new(table(2));
        let start = Instant::now();
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || t.wait_for_on(1, Duration::from_secs(30)))
        };
        // Kick until the waiter returns (a kick before it waits is not seen).
        while !waiter.is_finished() {
            t.kick();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(waiter.join().expect("waiter"), Wake::Again);
        assert!(start.elapsed() < Duration::from_secs(20));
        // A WFI sleep ends on a kick too.
        let sleeper = {
            let t = t.clone();
            std::thread::spawn(move || t.sleep(Duration::from_secs(30)))
        };
        while !sleeper.is_finished() {
            t.kick();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(start.elapsed() < Duration::from_secs(20));
    }
}
