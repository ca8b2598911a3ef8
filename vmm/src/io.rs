//! The port-I/O and MMIO buses, and the one place a guest access that
//! exited is dispatched.
//!
//! - Every device sits on a bus with its [`AccessCounters`] in the bus
//!   entry (one device lock per access, nothing else); BAR registers that
//!   come and go with the guest's BAR programming keep theirs, registered
//!   once under a name ([`IoBuses::counters`]).
//! - An access nobody claims reads as all-ones, is counted, and is logged
//!   at debug level, a few lines a second at most: a guest that storms
//!   unclaimed ports cannot flood the log.
//! - An [`IoHook`] (console coalescing) sees every exit before it is
//!   handled and every port write after it; its replayed writes go through
//!   the same dispatch.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::bus::{AccessCounters, Bus, BusDevice, SharedDevice};

use crate::ratelimit::RateLimit;
use crate::stats::{BusStats, Unclaimed};

/// Which bus a device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Pio,
    Mmio,
}

impl BusKind {
    pub fn name(self) -> &'static str {
        match self {
            BusKind::Pio => "pio",
            BusKind::Mmio => "mmio",
        }
    }
}

/// Something that must run around exits: before any exit is handled (and
/// once more when a vCPU stops), and after each port write.
pub trait IoHook: Send + Sync + fmt::Debug {
    /// Delivers whatever the hook has queued, through `io`.
    fn before_exit(&self, io: &IoBuses);
    /// A port write to `port` was just dispatched.
    fn after_port_write(&self, port: u16, io: &IoBuses);
}

/// A named device's counters (for the statistics).
#[derive(Debug)]
struct Registered {
    name: String,
    kind: BusKind,
    counters: Arc<AccessCounters>,
}

/// Both buses, the registry of counted devices, the unclaimed-access counts
/// and the exit hook.
#[derive(Debug, Default)]
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
    devices: Mutex<Vec<Registered>>,
    unclaimed_pio: AtomicU64,
    unclaimed_mmio: AtomicU64,
    unclaimed_log: RateLimit,
    hook: OnceLock<Arc<dyn IoHook>>,
}

impl IoBuses {
    pub fn new() -> Self {
        Self::default()
    }

    fn bus(&self, kind: BusKind) -> &Bus {
        match kind {
            BusKind::Pio => &self.pio,
            BusKind::Mmio => &self.mmio,
        }
    }

    /// Registers a device named `name` on `kind`'s bus and returns its
    /// counters; the caller places it (now or later, maybe several times)
    /// with [`Bus::insert_counted`].
    pub fn counters(&self, kind: BusKind, name: &str) -> Arc<AccessCounters> {
        let counters = Arc::new(AccessCounters::default());
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Registered {
                name: name.to_string(),
                kind,
                counters: counters.clone(),
            });
        counters
    }

    /// Puts `dev` at `[base, base+len)` on `kind`'s bus, counted as `name`.
    /// Returns the shared handle the bus holds.
    pub fn add<D: BusDevice + 'static>(
        &self,
        kind: BusKind,
        name: &str,
        dev: D,
        base: u64,
        len: u64,
    ) -> Result<SharedDevice, devices::bus::Error> {
        let shared: SharedDevice = Arc::new(Mutex::new(dev));
        self.add_shared(kind, name, shared.clone(), base, len)?;
        Ok(shared)
    }

    /// Like [`IoBuses::add`] for a device the caller keeps a handle to
    /// (the console's input thread, the PCI root).
    pub fn add_shared(
        &self,
        kind: BusKind,
        name: &str,
        dev: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), devices::bus::Error> {
        let counters = Arc::new(AccessCounters::default());
        self.bus(kind)
            .insert_counted(dev, base, len, counters.clone())?;
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Registered {
                name: name.to_string(),
                kind,
                counters,
            });
        Ok(())
    }

    /// Installs the exit hook (once; a second one is refused).
    pub fn set_hook(&self, hook: Arc<dyn IoHook>) -> bool {
        self.hook.set(hook).is_ok()
    }

    /// Runs the hook's pre-exit step (see [`IoHook::before_exit`]).
    pub fn before_exit(&self) {
        if let Some(h) = self.hook.get() {
            h.before_exit(self);
        }
    }

    fn unclaimed(&self, what: fmt::Arguments<'_>, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        if log::log_enabled!(log::Level::Debug)
            && let Some(dropped) = self.unclaimed_log.allow()
        {
            log::debug!("unclaimed {what}{}", RateLimit::suffix(dropped));
        }
    }

    /// One port read of `data.len()` bytes.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
            let len = data.len();
            self.unclaimed(
                format_args!("port read {port:#x} ({len} bytes)"),
                &self.unclaimed_pio,
            );
        }
    }

    /// One port write; the hook hears of it after the device did.
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio_write_quiet(port, data);
        if let Some(h) = self.hook.get() {
            h.after_port_write(port, self);
        }
    }

    /// A port write the hook does not hear of (its own replays).
    pub fn pio_write_quiet(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            self.unclaimed(
                format_args!("port write {port:#x} <- {data:02x?}"),
                &self.unclaimed_pio,
            );
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
            let len = data.len();
            self.unclaimed(
                format_args!("MMIO read {addr:#x} ({len} bytes)"),
                &self.unclaimed_mmio,
            );
        }
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            self.unclaimed(
                format_args!("MMIO write {addr:#x} <- {data:02x?}"),
                &self.unclaimed_mmio,
            );
        }
    }

    /// Accesses nobody claimed so far.
    pub fn unclaimed_counts(&self) -> Unclaimed {
        Unclaimed {
            pio: self.unclaimed_pio.load(Ordering::Relaxed),
            mmio: self.unclaimed_mmio.load(Ordering::Relaxed),
        }
    }

    /// Every registered device with its counts and where it sits now
    /// (`None` for a BAR that does not decode at the end).
    pub fn bus_stats(&self) -> Vec<BusStats> {
        let placed = [
            (BusKind::Pio, self.pio.placements()),
            (BusKind::Mmio, self.mmio.placements()),
        ];
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .map(|d| {
                let at = placed
                    .iter()
                    .filter(|(k, _)| *k == d.kind)
                    .flat_map(|(_, p)| p)
                    .find(|p| Arc::ptr_eq(&p.counters, &d.counters));
                let (reads, writes) = d.counters.get();
                BusStats {
                    name: d.name.clone(),
                    bus: d.kind.name(),
                    base: at.map(|p| p.base),
                    len: at.map(|p| p.len),
                    reads,
                    writes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn dispatch_counts_in_the_bus_entry_and_unclaimed_reads_all_ones() {
        let io = IoBuses::new();
        io.add(BusKind::Pio, "reg", Reg(7), 0x80, 1).unwrap();
        let mut d = [0u8; 1];
        io.pio_read(0x80, &mut d);
        assert_eq!(d, [7]);
        io.pio_write(0x80, &[9]);
        let mut w = [0u8; 4];
        io.pio_read(0x81, &mut w);
        assert_eq!(w, [0xff; 4]);
        io.mmio_write(0x1000, &[1]);
        let s = io.bus_stats();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (
                s[0].name.as_str(),
                s[0].bus,
                s[0].base,
                s[0].reads,
                s[0].writes
            ),
            ("reg", "pio", Some(0x80), 1, 1)
        );
        assert_eq!(io.unclaimed_counts(), Unclaimed { pio: 1, mmio: 1 });
    }

    #[test]
    fn registered_counters_survive_unplacement() {
        let io = IoBuses::new();
        let c = io.counters(BusKind::Mmio, "bar0");
        let dev: SharedDevice = Arc::new(Mutex::new(Reg(1)));
        io.mmio.insert_counted(dev, 0xc000, 0x100, c).unwrap();
        let mut d = [0u8; 4];
        io.mmio_read(0xc010, &mut d);
        io.mmio.remove(0xc000).unwrap();
        let s = io.bus_stats();
        assert_eq!((s[0].base, s[0].reads), (None, 1));
    }

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl IoHook for Recorder {
        fn before_exit(&self, _io: &IoBuses) {
            self.0.lock().unwrap().push("before".into());
        }
        fn after_port_write(&self, port: u16, _io: &IoBuses) {
            self.0.lock().unwrap().push(format!("wrote {port:#x}"));
        }
    }

    #[test]
    fn the_hook_hears_of_port_writes_but_not_its_own_replays() {
        let io = IoBuses::new();
        let hook = Arc::new(Recorder::default());
        assert!(io.set_hook(hook.clone()));
        assert!(!io.set_hook(hook.clone()), "one hook only");
        io.before_exit();
        io.pio_write(0x3f9, &[0]);
        io.pio_write_quiet(0x3f8, b"a");
        assert_eq!(*hook.0.lock().unwrap(), ["before", "wrote 0x3f9"]);
    }
}
