//! The machine's side of the QMP monitor: answers [`qmp::Request`]s from
//! the server's thread while the vCPUs run, and turns the VM's end into
//! the SHUTDOWN event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::exit::{MonitorEnd, VmEnd};
use crate::qmp::control::Reply;
use crate::qmp::{self, Event, EventSink, Request, RunState, ShutdownCause};
use crate::watchdog::WatchdogAction;
use devices::debug_exit::GuestExit;

use super::Machine;

/// How long `stop` waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the monitor sees of a running machine.
#[derive(Debug)]
pub(super) struct Control<'a> {
    pub machine: &'a Machine,
    pub vcpus: usize,
    pub events: EventSink,
    /// SHUTDOWN already sent (quit and system_reset send it at once, as
    /// QEMU does before their reply).
    shutdown_sent: AtomicBool,
}

/// QEMU's cause for how the VM ended.
pub(super) fn shutdown_cause(end: &VmEnd) -> ShutdownCause {
    match end {
        VmEnd::Guest(GuestExit::Reset)
        | VmEnd::TripleFault
        | VmEnd::Watchdog(WatchdogAction::Reset) => ShutdownCause::GuestReset,
        VmEnd::Guest(_) | VmEnd::Poweroff | VmEnd::Watchdog(_) => ShutdownCause::GuestShutdown,
        VmEnd::SystemEvent(crate::hv::SystemEvent::Crash) => ShutdownCause::GuestPanic,
        VmEnd::Signal(_) => ShutdownCause::HostSignal,
        VmEnd::Monitor(MonitorEnd::Quit) => ShutdownCause::HostQmpQuit,
        VmEnd::Monitor(MonitorEnd::Reset) => ShutdownCause::HostQmpSystemReset,
        _ => ShutdownCause::HostError,
    }
}

impl<'a> Control<'a> {
    pub fn new(machine: &'a Machine, vcpus: usize, events: EventSink) -> Self {
        Control {
            machine,
            vcpus,
            events,
            shutdown_sent: AtomicBool::new(false),
        }
    }

    /// Sends SHUTDOWN for `cause` unless it was sent already.
    pub fn shutdown(&self, cause: ShutdownCause) {
        if !self.shutdown_sent.swap(true, Ordering::SeqCst) {
            self.events.emit(Event::Shutdown(cause));
        }
    }

    /// The monitor could not start: the VM ends (exit 1), saying why.
    pub fn failed(&self, e: qmp::server::Error) {
        self.machine
            .state
            .request_end(VmEnd::MonitorFailed(e.to_string()));
    }

    fn end(&self, end: MonitorEnd) -> Reply {
        self.shutdown(shutdown_cause(&VmEnd::Monitor(end)));
        self.machine.state.request_end(VmEnd::Monitor(end));
        Ok(json!({}))
    }

    fn status(&self) -> RunState {
        let s = &self.machine.state;
        if s.stopping() {
            RunState::Shutdown
        } else if s.paused() {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    fn cpus_fast(&self) -> Value {
        let tids = vcpu_thread_ids(self.vcpus);
        Value::Array(
            (0..self.vcpus)
                .map(|i| {
                    json!({
                        "cpu-index": i,
                        "qom-path": format!("/machine/unattached/device[{i}]"),
                        "thread-id": tids[i],
                        "props": {"core-id": i, "thread-id": 0, "socket-id": 0},
                        "target": "x86_64",
                    })
                })
                .collect(),
        )
    }

    fn memdev(&self) -> Value {
        let m = self.machine;
        let backends = std::iter::once(m.ram.backend()).chain(m.objects.iter().map(|b| &**b));
        Value::Array(
            backends
                .map(|b| {
                    let c = b.config();
                    json!({
                        "id": c.id(),
                        "size": c.size(),
                        "merge": c.merge(),
                        "dump": c.dump(),
                        "prealloc": c.prealloc(),
                        "share": c.share(),
                        "reserve": c.reserve(),
                        "host-nodes": c.host_nodes(),
                        "policy": policy_name(c.policy()),
                    })
                })
                .collect(),
        )
    }

    fn pci(&self) -> Value {
        let devices: Vec<Value> = self.machine.pci.describe().iter().map(pci_device).collect();
        json!([{"bus": 0, "devices": devices}])
    }
}

fn policy_name(p: memory::HostMemPolicy) -> &'static str {
    match p {
        memory::HostMemPolicy::Default => "default",
        memory::HostMemPolicy::Preferred => "preferred",
        memory::HostMemPolicy::Bind => "bind",
        memory::HostMemPolicy::Interleave => "interleave",
    }
}

/// Linux thread ids of the vCPUs: vCPU 0 runs on the main thread, the
/// others on threads named `vcpuN` (read from /proc when asked, so boot
/// pays nothing).
fn vcpu_thread_ids(n: usize) -> Vec<u32> {
    let mut ids = vec![0; n];
    if let Some(first) = ids.first_mut() {
        *first = std::process::id();
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let idx = comm
                .trim()
                .strip_prefix("vcpu")
                .and_then(|i| i.parse::<usize>().ok());
            let tid = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok());
            if let (Some(i), Some(tid)) = (idx, tid)
                && let Some(slot) = ids.get_mut(i)
            {
                *slot = tid;
            }
        }
    }
    ids
}

fn u16_at(h: &[u8; 64], at: usize) -> u16 {
    u16::from_le_bytes([h[at], h[at + 1]])
}

/// QEMU's descriptions of the classes shmvm has.
fn class_desc(class: u16) -> Option<&'static str> {
    Some(match class {
        0x0100 => "SCSI controller",
        0x0500 => "RAM controller",
        0x0600 => "Host bridge",
        0x0000 => return None,
        _ => return None,
    })
}

/// One `PciDeviceInfo`, field names as QEMU's schema.
fn pci_device(f: &crate::pci::FunctionInfo) -> Value {
    let h = &f.header;
    let class = u16_at(h, 0x0a);
    let mut class_info = json!({"class": class});
    if let (Some(d), Some(o)) = (class_desc(class), class_info.as_object_mut()) {
        o.insert("desc".into(), json!(d));
    }
    let regions: Vec<Value> = f
        .bars
        .iter()
        .map(|b| {
            let address = b.address.unwrap_or(u64::MAX);
            match b.kind {
                devices::pci::BarKind::Io => {
                    json!({"bar": b.index, "type": "io", "address": address, "size": b.size})
                }
                devices::pci::BarKind::Memory32 { prefetchable }
                | devices::pci::BarKind::Memory64 { prefetchable } => json!({
                    "bar": b.index,
                    "type": "memory",
                    "address": address,
                    "size": b.size,
                    "prefetch": prefetchable,
                    "mem_type_64": matches!(b.kind, devices::pci::BarKind::Memory64 { .. }),
                }),
            }
        })
        .collect();
    let pin = h[0x3d];
    let mut d = json!({
        "bus": 0,
        "slot": f.address.slot,
        "function": f.address.function,
        "class_info": class_info,
        "id": {
            "vendor": u16_at(h, 0x00),
            "device": u16_at(h, 0x02),
            "subsystem-vendor": u16_at(h, 0x2c),
            "subsystem": u16_at(h, 0x2e),
        },
        "irq_pin": pin,
        "qdev_id": f.qdev_id.as_deref().unwrap_or(""),
        "regions": regions,
    });
    if pin != 0
        && let Some(o) = d.as_object_mut()
    {
        o.insert("irq".into(), json!(h[0x3c]));
    }
    d
}

impl qmp::protocol::Machine for Control<'_> {
    fn snapshot_save(&self, path: &str) -> Reply {
        let saved = self
            .machine
            .save_snapshot(std::path::Path::new(path))
            .map_err(|e| format!("x-shmvm-snapshot-save {path}: {e}"))?;
        log::info!(
            "snapshot saved to {path}: state in {:.3} ms, {:.3} ms in all",
            saved.state_ms,
            saved.total_ms
        );
        Ok(json!({
            "memory-referenced": saved.referenced,
            "memory-written": saved.written,
            "state-ms": saved.state_ms,
            "total-ms": saved.total_ms,
        }))
    }

    fn call(&self, request: Request) -> Reply {
        let state = &self.machine.state;
        match request {
            Request::Status => Ok(self.status().to_json()),
            Request::Stop => {
                if !state.paused() {
                    if !state.pause(PAUSE_TIMEOUT) {
                        state.resume();
                        return Err("vCPUs did not stop in time".into());
                    }
                    self.events.emit(Event::Stop);
                }
                Ok(json!({}))
            }
            Request::Cont => {
                if state.paused() {
                    state.resume();
                    self.events.emit(Event::Resume);
                }
                Ok(json!({}))
            }
            Request::Powerdown => {
                self.machine
                    .power_button
                    .press()
                    .map_err(|e| e.to_string())?;
                self.events.emit(Event::Powerdown);
                Ok(json!({}))
            }
            Request::Reset => self.end(MonitorEnd::Reset),
            Request::Quit => self.end(MonitorEnd::Quit),
            Request::CpusFast => Ok(self.cpus_fast()),
            Request::Memdev => Ok(self.memdev()),
            Request::Pci => Ok(self.pci()),
            Request::Stats => serde_json::to_value(self.machine.stats()).map_err(|e| e.to_string()),
        }
    }
}
