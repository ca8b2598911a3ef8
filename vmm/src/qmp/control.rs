//! The interface between the QMP server and the machine: the requests the
//! machine answers (through [`super::protocol::Machine`], called on the
//! server's thread), and the events it sends (a channel plus a notifier
//! that wakes the server).

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use devices::notifier::Notifier;
use serde_json::{Value, json};

/// What the server asks the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `query-status`: the [`RunState`].
    Status,
    /// Park every vCPU (STOP event once parked).
    Stop,
    /// Let them run again (RESUME event).
    Cont,
    /// Press the power button (POWERDOWN event).
    Powerdown,
    /// `system_reset` (the VM ends: shmvm never reboots, like `-no-reboot`).
    Reset,
    /// `quit`.
    Quit,
    CpusFast,
    Memdev,
    Pci,
    Stats,
}

/// The machine's answer: a QMP `return` value, or a GenericError's text.
pub type Reply = Result<Value, String>;

/// QEMU's `RunState` names for what shmvm can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Paused by a watchdog's `pause` action.
    Watchdog,
    /// `-S`: not started yet (the first `cont` starts it).
    Prelaunch,
    Shutdown,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Watchdog => "watchdog",
            RunState::Prelaunch => "prelaunch",
            RunState::Shutdown => "shutdown",
        }
    }

    /// `query-status`'s return value.
    pub fn to_json(self) -> Value {
        json!({"status": self.name(), "running": self == RunState::Running})
    }
}

/// QEMU's `ShutdownCause` names that shmvm can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownCause {
    HostError,
    HostQmpQuit,
    HostQmpSystemReset,
    HostSignal,
    GuestShutdown,
    GuestReset,
    GuestPanic,
}

impl ShutdownCause {
    pub fn name(self) -> &'static str {
        match self {
            ShutdownCause::HostError => "host-error",
            ShutdownCause::HostQmpQuit => "host-qmp-quit",
            ShutdownCause::HostQmpSystemReset => "host-qmp-system-reset",
            ShutdownCause::HostSignal => "host-signal",
            ShutdownCause::GuestShutdown => "guest-shutdown",
            ShutdownCause::GuestReset => "guest-reset",
            ShutdownCause::GuestPanic => "guest-panic",
        }
    }

    /// Whether the guest caused it (QEMU's `guest` field).
    pub fn by_guest(self) -> bool {
        matches!(
            self,
            ShutdownCause::GuestShutdown | ShutdownCause::GuestReset | ShutdownCause::GuestPanic
        )
    }
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Shutdown(ShutdownCause),
    Powerdown,
    Stop,
    Resume,
    /// A device's peer went away: a vhost-user back-end hung up, an
    /// ivshmem peer left. shmvm's own event (QEMU has none).
    DeviceGone {
        device: String,
        kind: &'static str,
        peer: String,
    },
    /// A watchdog ran out and performs `action` (QEMU's WATCHDOG, sent
    /// before what the action causes: SHUTDOWN, STOP, POWERDOWN).
    Watchdog {
        action: &'static str,
    },
}

impl Event {
    /// The event as QMP sends it, stamped with the current time.
    pub fn to_json(&self) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (name, data) = match self {
            Event::Shutdown(c) => (
                "SHUTDOWN",
                Some(json!({"guest": c.by_guest(), "reason": c.name()})),
            ),
            Event::Powerdown => ("POWERDOWN", None),
            Event::Stop => ("STOP", None),
            Event::Resume => ("RESUME", None),
            Event::DeviceGone { device, kind, peer } => (
                "X_SHMVM_PEER_GONE",
                Some(json!({"device": device, "type": kind, "peer": peer})),
            ),
            Event::Watchdog { action } => ("WATCHDOG", Some(json!({"action": action}))),
        };
        let mut v = json!({
            "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()},
            "event": name,
        });
        if let (Some(d), Some(o)) = (data, v.as_object_mut()) {
            o.insert("data".into(), d);
        }
        v
    }
}

/// Where events go: cloneable, wakes the server.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    wake: Arc<Notifier>,
}

/// The server's end of the event channel.
#[derive(Debug)]
pub struct EventSource {
    pub(super) rx: mpsc::Receiver<Event>,
    pub(super) wake: Arc<Notifier>,
}

/// A new event channel.
pub fn events() -> std::io::Result<(EventSink, EventSource)> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(Notifier::new()?);
    Ok((
        EventSink {
            tx,
            wake: wake.clone(),
        },
        EventSource { rx, wake },
    ))
}

impl EventSink {
    /// Wakes the server without an event (to stop it).
    pub fn wake(&self) {
        let _ = self.wake.signal();
    }

    /// Queues `e` for every negotiated client; never blocks.
    pub fn emit(&self, e: Event) {
        if self.tx.send(e).is_ok() {
            let _ = self.wake.signal();
        }
    }
}

/// The sink device threads (vhost-user watchers) report to: set once when
/// a monitor exists; without one, events are dropped.
static DEVICE_EVENTS: OnceLock<EventSink> = OnceLock::new();

/// Makes `sink` the destination of [`device_gone`] (first call wins).
pub fn set_device_events(sink: EventSink) {
    let _ = DEVICE_EVENTS.set(sink);
}

/// Sends a device's event `e` to the monitor's clients, if there is a
/// monitor (from any thread).
pub fn device_event(e: Event) {
    if let Some(s) = DEVICE_EVENTS.get() {
        s.emit(e);
    }
}

/// Reports that `device`'s peer went away (from any thread).
pub fn device_gone(device: &str, kind: &'static str, peer: &str) {
    device_event(Event::DeviceGone {
        device: device.to_string(),
        kind,
        peer: peer.to_string(),
    });
}
