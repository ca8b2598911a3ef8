//! What to do about one vCPU exit: a plain function over [`VmExit`], so it
//! can be tested without a guest.

use devices::debug_exit::GuestExit;

use crate::hv::{SystemEvent, VmExit};
use crate::io::IoBuses;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// A guest device asked (reset, debug-exit).
    Guest(GuestExit),
    /// The guest powered off or reset through a hypervisor system event.
    Poweroff,
    /// A watchdog ran out and its action (reset, poweroff) ends the VM.
    Watchdog(crate::watchdog::WatchdogAction),
    TripleFault,
    SystemEvent(SystemEvent),
    InternalError {
        suberror: u32,
        detail: String,
    },
    FailEntry(u64),
    Unhandled(String),
    /// The VMM was told to stop by this signal.
    Signal(i32),
    /// A monitor asked (QMP `quit`, or `system_reset`: shmvm never reboots).
    Monitor(MonitorEnd),
    /// A monitor socket could not be created (after the VM started).
    MonitorFailed(String),
    /// A vCPU thread failed outside the guest (an ioctl, a panic).
    VcpuFailed(String),
}

impl VmEnd {
    /// The process exit code for this ending.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmEnd::Guest(g) => g.exit_code(),
            VmEnd::Poweroff | VmEnd::Monitor(_) | VmEnd::Watchdog(_) => 0,
            VmEnd::Signal(s) => 128 + s,
            _ => 1,
        }
    }

    /// One line for stderr when the ending is a failure (None: say nothing).
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            VmEnd::Guest(_) | VmEnd::Poweroff | VmEnd::Monitor(_) | VmEnd::Watchdog(_) => {
                return None;
            }
            VmEnd::TripleFault => "guest triple fault (KVM_EXIT_SHUTDOWN)".into(),
            VmEnd::SystemEvent(SystemEvent::Crash) => "guest crashed (system event)".into(),
            VmEnd::SystemEvent(k) => format!("guest system event {k:?}"),
            VmEnd::InternalError { suberror, detail } => {
                format!("KVM internal error (suberror {suberror}): {detail}")
            }
            VmEnd::FailEntry(r) => format!("VM entry failed (hardware reason {r:#x})"),
            VmEnd::Unhandled(what) => format!("unhandled vCPU exit: {what}"),
            VmEnd::Signal(s) => format!("stopped by signal {s}"),
            VmEnd::VcpuFailed(what) => format!("vCPU failed: {what}"),
            VmEnd::MonitorFailed(what) => what.clone(),
        })
    }
}

/// Why a monitor ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorEnd {
    Quit,
    Reset,
}

/// The handler's verdict for one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Re-enter the guest.
    Continue,
    /// This vCPU was interrupted: check whether the VM is stopping.
    Interrupted,
    /// The VM ends; internal errors still need their details filled in by
    /// the caller, which owns the vCPU.
    End(VmEnd),
}

/// Handles one exit: routes I/O through the dispatcher (unclaimed reads see
/// all-ones, unclaimed writes are dropped; both are counted) and turns the
/// terminal exits into a [`VmEnd`].
pub fn handle_exit(exit: VmExit<'_>, io: &IoBuses) -> Action {
    match exit {
        VmExit::IoIn { port, size, data } => {
            let size = element_size(size, data.len());
            for el in data.chunks_mut(size) {
                io.pio_read(port, el);
            }
            Action::Continue
        }
        VmExit::IoOut { port, size, data } => {
            let size = element_size(size, data.len());
            for el in data.chunks(size) {
                io.pio_write(port, el);
            }
            Action::Continue
        }
        VmExit::MmioRead { addr, data } => {
            io.mmio_read(addr, data);
            Action::Continue
        }
        VmExit::MmioWrite { addr, data } => {
            io.mmio_write(addr, data);
            Action::Continue
        }
        // Only seen without an in-kernel irqchip: the guest waits for an
        // interrupt, so let it run again.
        VmExit::Hlt => Action::Continue,
        VmExit::Interrupted => Action::Interrupted,
        VmExit::Shutdown => Action::End(VmEnd::TripleFault),
        VmExit::SystemEvent(SystemEvent::Shutdown | SystemEvent::Reset) => {
            Action::End(VmEnd::Poweroff)
        }
        VmExit::SystemEvent(e) => Action::End(VmEnd::SystemEvent(e)),
        VmExit::InternalError => Action::End(VmEnd::InternalError {
            suberror: 0,
            detail: String::new(),
        }),
        VmExit::FailEntry { reason } => Action::End(VmEnd::FailEntry(reason)),
        VmExit::Other(what) => Action::End(VmEnd::Unhandled(what)),
    }
}

/// The size of one port access within `len` bytes of string I/O: `size`
/// when it evenly divides `len`, else (never seen from KVM) all of `len`
/// as one access. Never 0, so `chunks` can use it.
fn element_size(size: usize, len: usize) -> usize {
    if size != 0 && len.is_multiple_of(size) {
        size
    } else {
        len.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::BusKind;
    use devices::bus::BusDevice;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(self.0);
        }
        fn write(&mut self, _o: u64, d: &[u8]) {
            self.0 = d[0];
        }
    }

    #[test]
    fn port_io_routes_to_devices_and_unclaimed_reads_all_ones() {
        let io = IoBuses::new();
        io.add(BusKind::Pio, "reg", Reg(7), 0x80, 1).unwrap();
        let mut d = [0u8; 1];
        assert_eq!(
            handle_exit(
                VmExit::IoIn {
                    port: 0x80,
                    size: 1,
                    data: &mut d
                },
                &io
            ),
            Action::Continue
        );
        assert_eq!(d, [7]);
        assert_eq!(
            handle_exit(
                VmExit::IoOut {
                    port: 0x80,
                    size: 1,
                    data: &[9]
                },
                &io
            ),
            Action::Continue
        );
        handle_exit(
            VmExit::IoIn {
                port: 0x80,
                size: 1,
                data: &mut d,
            },
            &io,
        );
        assert_eq!(d, [9]);
        let mut w = [0u8; 4];
        assert_eq!(
            handle_exit(
                VmExit::IoIn {
                    port: 0x81,
                    size: 4,
                    data: &mut w
                },
                &io
            ),
            Action::Continue
        );
        assert_eq!(w, [0xff; 4]);
        handle_exit(
            VmExit::IoOut {
                port: 0x81,
                size: 1,
                data: &[1],
            },
            &io,
        );
        assert_eq!(io.unclaimed_counts().pio, 2);
        let s = io.bus_stats();
        assert_eq!((s[0].reads, s[0].writes), (2, 1));
    }

    /// Logs every access (offset, bytes); reads return a running counter.
    #[derive(Default)]
    struct Log {
        writes: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        next: u8,
    }
    impl BusDevice for Log {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            self.next += 1;
            d.fill(self.next);
        }
        fn write(&mut self, _o: u64, d: &[u8]) {
            self.writes.lock().unwrap().push(d.to_vec());
        }
    }

    #[test]
    fn string_port_io_is_one_access_per_element_in_order() {
        let io = IoBuses::new();
        let dev = Log::default();
        let writes = dev.writes.clone();
        io.add(BusKind::Pio, "log", dev, 0x3f8, 8).unwrap();
        // `rep outsb` of 3 bytes: three 1-byte writes, in order.
        let out = VmExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"abc",
        };
        assert_eq!(handle_exit(out, &io), Action::Continue);
        // `outw`: one 2-byte write; `rep outsw` of 2: two of them.
        handle_exit(
            VmExit::IoOut {
                port: 0x3f8,
                size: 2,
                data: &[1, 2],
            },
            &io,
        );
        handle_exit(
            VmExit::IoOut {
                port: 0x3f8,
                size: 2,
                data: &[3, 4, 5, 6],
            },
            &io,
        );
        let w = writes.lock().unwrap().clone();
        let want: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"b".to_vec(),
            b"c".to_vec(),
            vec![1, 2],
            vec![3, 4],
            vec![5, 6],
        ];
        assert_eq!(w, want);
        // `rep insb` of 3 (KVM reads ahead): three reads, each its own value.
        let mut d = [0u8; 3];
        handle_exit(
            VmExit::IoIn {
                port: 0x3f8,
                size: 1,
                data: &mut d,
            },
            &io,
        );
        assert_eq!(d, [1, 2, 3]);
        let s = io.bus_stats();
        assert_eq!((s[0].reads, s[0].writes), (3, 6));
        // A size that does not divide the data is one access, never a panic.
        handle_exit(
            VmExit::IoOut {
                port: 0x3f8,
                size: 0,
                data: &[7, 8, 9],
            },
            &io,
        );
        assert_eq!(writes.lock().unwrap().last(), Some(&vec![7, 8, 9]));
    }

    #[test]
    fn mmio_unclaimed_is_counted_not_fatal() {
        let io = IoBuses::new();
        let mut d = [0u8; 8];
        let a = handle_exit(
            VmExit::MmioRead {
                addr: 0xd000_0000,
                data: &mut d,
            },
            &io,
        );
        assert_eq!((a, d), (Action::Continue, [0xff; 8]));
        let a = handle_exit(
            VmExit::MmioWrite {
                addr: 0xd000_0000,
                data: &[1, 2],
            },
            &io,
        );
        assert_eq!(a, Action::Continue);
        assert_eq!(io.unclaimed_counts().mmio, 2);
    }

    #[test]
    fn terminal_exits_and_exit_codes() {
        let io = IoBuses::new();
        assert_eq!(
            handle_exit(VmExit::Shutdown, &io),
            Action::End(VmEnd::TripleFault)
        );
        assert_eq!(
            handle_exit(VmExit::SystemEvent(SystemEvent::Shutdown), &io),
            Action::End(VmEnd::Poweroff)
        );
        assert_eq!(handle_exit(VmExit::Interrupted, &io), Action::Interrupted);
        assert_eq!(handle_exit(VmExit::Hlt, &io), Action::Continue);
        assert!(matches!(
            handle_exit(VmExit::InternalError, &io),
            Action::End(VmEnd::InternalError { .. })
        ));
        assert_eq!(
            handle_exit(VmExit::FailEntry { reason: 7 }, &io),
            Action::End(VmEnd::FailEntry(7))
        );
        assert_eq!(
            handle_exit(VmExit::Other("Debug".into()), &io),
            Action::End(VmEnd::Unhandled("Debug".into()))
        );
        assert_eq!(
            VmEnd::Guest(GuestExit::DebugExit { value: 0x10 }).exit_code(),
            33
        );
        assert_eq!(VmEnd::Guest(GuestExit::Reset).exit_code(), 0);
        assert_eq!(VmEnd::Poweroff.exit_code(), 0);
        assert_eq!(VmEnd::TripleFault.exit_code(), 1);
        assert_eq!(VmEnd::Signal(15).exit_code(), 143);
        assert!(VmEnd::Poweroff.describe().is_none());
        assert!(!VmEnd::TripleFault.describe().unwrap().contains('\n'));
    }
}
