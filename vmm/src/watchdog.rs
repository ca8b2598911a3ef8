//! `-device i6300esb` and `-watchdog-action` / `-action watchdog=`: the
//! watchdog's configuration, its PCI plug, the timer thread that runs its
//! stages out, and what the machine does when it fires.
//!
//! The model (`devices::i6300esb`) only computes deadlines; the thread
//! started here (one per device, only when one is configured) sleeps on a
//! condition variable until the nearest deadline, on guest time
//! ([`VmState::guest_ns`]: it stands still while the VM is paused, as
//! QEMU's virtual clock). No polling: a guest's ping moves the deadline and
//! wakes the thread, which goes back to sleep for the new interval.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

// The device's runtime (its PCI plug, the timer thread, the QMP events)
// is Linux's, as QMP is; its configuration parses everywhere.
#[cfg(target_os = "linux")]
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(target_os = "linux")]
use std::thread::JoinHandle;
#[cfg(target_os = "linux")]
use std::time::Duration;

#[cfg(target_os = "linux")]
use devices::i6300esb::{Clock, Expiry, I6300esb, REGISTER_BAR, TimerEvents};

use crate::config::keyval::KeyVal;
use crate::config::{Error as ConfigError, invalid};
#[cfg(target_os = "linux")]
use crate::exit::VmEnd;
#[cfg(target_os = "linux")]
use crate::pci::{BarBacking, Pci, PciFunction, PciPlug, Placed};
#[cfg(target_os = "linux")]
use crate::qmp::{self, Event};
#[cfg(target_os = "linux")]
use crate::stats::{Stats, WatchdogStats};
#[cfg(target_os = "linux")]
use crate::vcpu::{PauseReason, VmState};

/// What an expired watchdog does: QEMU's `WatchdogAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogAction {
    /// A system reset, which ends shmvm (it never reboots: `-no-reboot`).
    #[default]
    Reset,
    /// A press of the ACPI power button (QMP `system_powerdown`).
    Shutdown,
    /// The VM ends at once (QMP `quit`).
    Poweroff,
    /// The vCPUs stop (QMP `stop`).
    Pause,
    /// One line on stderr; the VM runs on.
    Debug,
    None,
    /// An NMI to every vCPU.
    InjectNmi,
}

impl WatchdogAction {
    pub const ALL: [WatchdogAction; 7] = [
        WatchdogAction::Reset,
        WatchdogAction::Shutdown,
        WatchdogAction::Poweroff,
        WatchdogAction::Pause,
        WatchdogAction::Debug,
        WatchdogAction::None,
        WatchdogAction::InjectNmi,
    ];

    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            WatchdogAction::Reset => "reset",
            WatchdogAction::Shutdown => "shutdown",
            WatchdogAction::Poweroff => "poweroff",
            WatchdogAction::Pause => "pause",
            WatchdogAction::Debug => "debug",
            WatchdogAction::None => "none",
            WatchdogAction::InjectNmi => "inject-nmi",
        }
    }

    fn parse(s: &str) -> Option<WatchdogAction> {
        Self::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Whether `s` is an action's name (QEMU's spelling, lower case).
    pub fn is_name(s: &str) -> bool {
        Self::parse(s).is_some()
    }
}

/// The refusal of a value that is no action, listing QEMU's.
pub fn not_an_action() -> String {
    format!(
        "not a watchdog action ({})",
        WatchdogAction::ALL.map(WatchdogAction::name).join(", ")
    )
}

/// The watchdog action from the `-action` values in order (the CLI turns
/// `-watchdog-action A` into `-action watchdog=A`, so the last of either
/// wins, as in QEMU). Of the other `-action` keys, only the values that are
/// shmvm's behaviour are taken: `reboot=shutdown` (`-no-reboot`) and
/// `shutdown=poweroff`.
pub fn parse_actions(values: &[String]) -> Result<WatchdogAction, ConfigError> {
    let mut action = WatchdogAction::default();
    for v in values {
        let bad = |reason: String| ConfigError::Unsupported {
            option: "-action",
            spec: v.clone(),
            reason,
        };
        let mut kv = crate::config::keyval("-action", v, None)?;
        if let Some(w) = kv.take("watchdog") {
            action = WatchdogAction::parse(&w)
                .ok_or_else(|| bad(format!("watchdog={w}: {}", not_an_action())))?;
        }
        if let Some(r) = kv.take("reboot")
            && r != "shutdown"
        {
            return Err(bad(format!(
                "reboot={r}: not supported; a guest reset always ends shmvm (reboot=shutdown, -no-reboot)"
            )));
        }
        if let Some(s) = kv.take("shutdown")
            && s != "poweroff"
        {
            return Err(bad(format!(
                "shutdown={s}: not supported; a guest shutdown always ends shmvm (shutdown=poweroff)"
            )));
        }
        if let Some(p) = kv.take("panic") {
            return Err(bad(format!(
                "panic={p}: not supported; shmvm has no panic device"
            )));
        }
        kv.finish(&["reboot", "shutdown", "panic", "watchdog"])
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(action)
}

/// `-device i6300esb[,id=ID][,addr=SLOT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub id: Option<String>,
    pub slot: Option<u8>,
}

impl std::fmt::Display for WatchdogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.id {
            Some(id) => write!(f, "i6300esb '{id}'"),
            None => write!(f, "i6300esb"),
        }
    }
}

/// Parses the properties of `-device i6300esb`.
pub fn parse_device(mut kv: KeyVal) -> Result<WatchdogConfig, ConfigError> {
    let bad = |reason: String| invalid("-device", format!("i6300esb: {reason}"));
    let slot = match kv.take("addr") {
        None => None,
        Some(v) => Some(crate::ivshmem::parse_slot(&v).ok_or_else(|| {
            bad(format!(
                "addr='{v}' is not a PCI slot 1..1f (hex, optionally SLOT.0)"
            ))
        })?),
    };
    let id = kv.take("id");
    kv.finish(&["addr", "id"]).map_err(|e| bad(e.to_string()))?;
    Ok(WatchdogConfig { id, slot })
}

/// Guest time, from the VM's state.
#[cfg(target_os = "linux")]
struct GuestClock(Arc<VmState>);

#[cfg(target_os = "linux")]
impl Clock for GuestClock {
    fn now_ns(&self) -> u64 {
        self.0.guest_ns()
    }
}

/// The deadline the thread waits for, and whether it should stop.
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
struct Alarm {
    deadline: Option<u64>,
    quit: bool,
}

/// The model's [`TimerEvents`]: where the thread learns of new deadlines.
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
struct Timer {
    alarm: Mutex<Alarm>,
    changed: Condvar,
}

#[cfg(target_os = "linux")]
impl Timer {
    fn lock(&self) -> MutexGuard<'_, Alarm> {
        self.alarm.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(target_os = "linux")]
impl TimerEvents for Timer {
    fn deadline_changed(&self, deadline_ns: Option<u64>) {
        self.lock().deadline = deadline_ns;
        self.changed.notify_one();
    }
}

/// A machine-specific step of an action (the button and the NMI are each
/// machine's own); an error is one line for the log.
#[cfg(target_os = "linux")]
pub type Hook = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the machine offers the actions besides its state.
#[cfg(target_os = "linux")]
pub struct Hooks {
    /// Presses the ACPI power button.
    pub power_button: Hook,
    /// Sends an NMI to every vCPU.
    pub inject_nmi: Hook,
}

#[cfg(target_os = "linux")]
impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").finish_non_exhaustive()
    }
}

/// What performing the action needs of the machine.
#[cfg(target_os = "linux")]
struct Actions {
    action: WatchdogAction,
    name: String,
    state: Arc<VmState>,
    hooks: Hooks,
}

/// How long the `pause` action waits for the vCPUs to park.
#[cfg(target_os = "linux")]
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(target_os = "linux")]
impl Actions {
    /// Performs the action (on the timer's thread).
    fn fire(&self) {
        let action = self.action;
        qmp::control::device_event(Event::Watchdog {
            action: action.name(),
        });
        log::info!("{}: expired, action {}", self.name, action.name());
        match action {
            WatchdogAction::Reset | WatchdogAction::Poweroff => {
                self.state.request_end(VmEnd::Watchdog(action));
            }
            WatchdogAction::Shutdown => match (self.hooks.power_button)() {
                Ok(()) => qmp::control::device_event(Event::Powerdown),
                Err(e) => log::warn!("{}: {e}", self.name),
            },
            WatchdogAction::Pause => {
                if self.state.pause_for(PauseReason::Watchdog, PAUSE_TIMEOUT) {
                    qmp::control::device_event(Event::Stop);
                } else {
                    self.state.resume();
                    log::warn!("{}: the vCPUs did not stop in time", self.name);
                }
            }
            // QEMU's line, as it prints it.
            WatchdogAction::Debug => eprintln!("watchdog: timer fired"),
            WatchdogAction::None => {}
            WatchdogAction::InjectNmi => {
                if let Err(e) = (self.hooks.inject_nmi)() {
                    log::warn!("{}: {e}", self.name);
                }
            }
        }
    }
}

/// Runs stages out until told to quit: sleeps until the nearest deadline
/// (guest time, which never runs ahead of the host's, so a sleep never
/// overshoots), then lets the model decide what ran out.
#[cfg(target_os = "linux")]
fn run(timer: &Timer, device: &Mutex<I6300esb>, clock: &GuestClock, actions: &Actions) {
    let mut alarm = timer.lock();
    loop {
        if alarm.quit {
            return;
        }
        let Some(deadline) = alarm.deadline else {
            alarm = timer.changed.wait(alarm).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let now = clock.now_ns();
        if now < deadline {
            let left = Duration::from_nanos(deadline - now);
            alarm = timer
                .changed
                .wait_timeout(alarm, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        // The model calls back into the timer: not with the alarm held.
        drop(alarm);
        let expiry = device.lock().unwrap_or_else(|e| e.into_inner()).expire();
        match expiry {
            Some(Expiry::Fired) => actions.fire(),
            Some(Expiry::Stage2Started) => log::debug!("{}: stage 1 ran out", actions.name),
            Some(Expiry::Quiet) | None => {}
        }
        alarm = timer.lock();
    }
}

/// Errors starting a watchdog.
#[cfg(target_os = "linux")]
#[derive(Debug, thiserror::Error)]
#[error("-device {device}: cannot start its timer thread: {err}")]
pub struct Error {
    device: String,
    #[source]
    err: std::io::Error,
}

#[cfg(target_os = "linux")]
impl Error {
    pub fn exit_code(&self) -> i32 {
        1
    }
}

/// One i6300esb: the PCI function and its timer thread (joined on drop).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct Watchdog {
    name: String,
    slot: Option<u8>,
    qdev_id: Option<String>,
    action: WatchdogAction,
    device: Arc<Mutex<I6300esb>>,
    timer: Arc<Timer>,
    thread: Option<JoinHandle<()>>,
}

#[cfg(target_os = "linux")]
impl Watchdog {
    /// The device, with its thread started (sleeping until the guest
    /// enables the timer).
    pub fn new(
        cfg: &WatchdogConfig,
        action: WatchdogAction,
        state: &Arc<VmState>,
        hooks: Hooks,
    ) -> Result<Watchdog, Error> {
        let name = cfg.to_string();
        let timer = Arc::new(Timer::default());
        let clock = GuestClock(state.clone());
        let device = Arc::new(Mutex::new(I6300esb::new(
            Arc::new(GuestClock(state.clone())),
            timer.clone(),
        )));
        let actions = Actions {
            action,
            name: name.clone(),
            state: state.clone(),
            hooks,
        };
        let thread = {
            let (timer, device) = (timer.clone(), device.clone());
            std::thread::Builder::new()
                .name("watchdog".into())
                .stack_size(128 << 10)
                .spawn(move || {
                    crate::sandbox::enter_worker();
                    run(&timer, &device, &clock, &actions);
                })
                .map_err(|err| Error {
                    device: name.clone(),
                    err,
                })?
        };
        log::info!("{name}: action {}", action.name());
        Ok(Watchdog {
            name,
            slot: cfg.slot,
            qdev_id: cfg.id.clone(),
            action,
            device,
            timer,
            thread: Some(thread),
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for Watchdog {
    fn drop(&mut self) {
        self.timer.lock().quit = true;
        self.timer.changed.notify_one();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("{}: the timer thread panicked", self.name);
        }
    }
}

#[cfg(target_os = "linux")]
impl PciPlug for Watchdog {
    fn function(&self) -> PciFunction {
        PciFunction {
            name: self.name.clone(),
            slot: self.slot,
            qdev_id: self.qdev_id.clone(),
            device: self.device.clone(),
            bars: vec![(REGISTER_BAR, BarBacking::Registers)],
            requester: None,
        }
    }

    fn add_stats(&self, placed: &Placed, _pci: &Pci, stats: &mut Stats) {
        let d = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let s = d.stats();
        stats.watchdog.push(WatchdogStats {
            name: self.name.clone(),
            pci: placed.address.to_string(),
            action: self.action.name(),
            pings: s.pings,
            stage1_expiries: s.stage1_expiries,
            fired: s.fired,
            locked_writes: s.locked_writes,
            enabled: d.enabled(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(v: &[&str]) -> Result<WatchdogAction, String> {
        parse_actions(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn actions_are_qemus_and_the_last_wins() {
        assert_eq!(actions(&[]), Ok(WatchdogAction::Reset));
        for a in WatchdogAction::ALL {
            assert_eq!(actions(&[&format!("watchdog={}", a.name())]), Ok(a));
        }
        assert_eq!(
            actions(&["watchdog=pause", "reboot=shutdown", "watchdog=inject-nmi"]),
            Ok(WatchdogAction::InjectNmi)
        );
        assert_eq!(
            actions(&["reboot=shutdown,shutdown=poweroff,watchdog=debug"]),
            Ok(WatchdogAction::Debug)
        );
        for (v, want) in [
            (
                "watchdog=reboot",
                "-action watchdog=reboot: watchdog=reboot: not a watchdog action (reset, shutdown, poweroff, pause, debug, none, inject-nmi)",
            ),
            (
                "watchdog=Reset",
                "-action watchdog=Reset: watchdog=Reset: not a",
            ),
            (
                "reboot=reset",
                "-action reboot=reset: reboot=reset: not supported",
            ),
            (
                "shutdown=pause",
                "-action shutdown=pause: shutdown=pause: not supported",
            ),
            (
                "panic=none",
                "-action panic=none: panic=none: not supported",
            ),
            ("frob=1", "-action frob=1: unknown property 'frob'"),
        ] {
            let e = actions(&[v]).unwrap_err();
            assert!(e.starts_with(want), "{v}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn guest_time_stands_still_while_paused() {
        let s = VmState::default();
        let t0 = std::time::Instant::now();
        let a = s.guest_ns();
        // No vCPU runs: the pause is in effect at once.
        assert!(s.pause(Duration::from_secs(1)));
        let p = s.guest_ns();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.guest_ns(), p, "guest time moved while paused");
        s.resume();
        std::thread::sleep(Duration::from_millis(5));
        let b = s.guest_ns();
        let wall = t0.elapsed();
        assert!(b > p, "guest time stopped after resume");
        assert!(
            Duration::from_nanos(b - a) + Duration::from_millis(30) <= wall,
            "the pause was counted: guest {:?}, wall {wall:?}",
            Duration::from_nanos(b - a)
        );
    }

    #[test]
    fn device_properties() {
        let kv = |s: &str| KeyVal::parse(s, None).unwrap();
        assert_eq!(
            parse_device(kv("id=watchdog0")).unwrap(),
            WatchdogConfig {
                id: Some("watchdog0".into()),
                slot: None
            }
        );
        assert_eq!(parse_device(kv("addr=5")).unwrap().slot, Some(5));
        let e = parse_device(kv("addr=zz")).unwrap_err().to_string();
        assert!(e.starts_with("-device: i6300esb: addr='zz'"), "{e}");
        let e = parse_device(kv("timeout=3")).unwrap_err().to_string();
        assert!(e.contains("'timeout'"), "{e}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_fires_on_guest_time_and_stops_on_drop() {
        use devices::i6300esb::{LOCK_ENABLE, LOCK_REG, RELOAD_REG, TIMER1_REG, TIMER2_REG};
        use devices::pci::PciDevice;
        let state = Arc::new(VmState::default());
        let timer = Arc::new(Timer::default());
        let device = Arc::new(Mutex::new(I6300esb::new(
            Arc::new(GuestClock(state.clone())),
            timer.clone(),
        )));
        {
            let mut d = device.lock().unwrap();
            // 1 MHz scale, 10000 ticks (9.6 ms) a stage.
            d.write_config(0x60, &devices::i6300esb::CONFIG_1MHZ.to_le_bytes());
            for reg in [TIMER1_REG, TIMER2_REG] {
                d.write_bar(0, RELOAD_REG, &[0x80]);
                d.write_bar(0, RELOAD_REG, &[0x86]);
                d.write_bar(0, reg, &10_000u32.to_le_bytes());
            }
            d.write_config(LOCK_REG, &[LOCK_ENABLE]);
        }
        let t0 = std::time::Instant::now();
        // A machine without a VM or a button: only the end is recorded.
        let actions = Actions {
            action: WatchdogAction::Reset,
            name: "i6300esb".into(),
            state: state.clone(),
            hooks: Hooks {
                power_button: Box::new(|| Err("no button".into())),
                inject_nmi: Box::new(|| Err("no NMI".into())),
            },
        };
        let thread = {
            let (timer, device, state) = (timer.clone(), device.clone(), state.clone());
            std::thread::spawn(move || run(&timer, &device, &GuestClock(state), &actions))
        };
        while state.end().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "never fired");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            t0.elapsed() >= Duration::from_micros(2 * 9600),
            "fired early: {:?}",
            t0.elapsed()
        );
        assert_eq!(state.end(), Some(VmEnd::Watchdog(WatchdogAction::Reset)));
        assert_eq!(device.lock().unwrap().stats().fired, 1);
        timer.lock().quit = true;
        timer.changed.notify_one();
        thread.join().unwrap();
    }
}
