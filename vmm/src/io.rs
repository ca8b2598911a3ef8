//! The port-I/O and MMIO buses the exit handler dispatches to, with
//! per-device access counters and a count of accesses nobody claimed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::{Bus, BusDevice, SharedDevice};

/// How often a device was read and written.
#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

/// A device with its counters, as inserted on a bus.
struct Counted<D> {
    dev: D,
    counters: Arc<Counters>,
}

impl<D: BusDevice> BusDevice for Counted<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.dev.read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.dev.write(offset, data);
    }
}

/// Forwards bus accesses to a device behind its own lock.
struct Forward<D: ?Sized>(Arc<Mutex<D>>);

impl<D: BusDevice + ?Sized> BusDevice for Forward<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data);
    }
}

/// Both buses, the device statistics and the unclaimed-access counts.
#[derive(Debug, Default)]
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
    stats: Mutex<Vec<(String, Arc<Counters>)>>,
    pub unclaimed_pio: AtomicU64,
    pub unclaimed_mmio: AtomicU64,
}

/// Which bus a device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Pio,
    Mmio,
}

impl IoBuses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `dev` (wrapped with counters named `name`) at `[base, base+len)`.
    pub fn add<D: BusDevice + 'static>(
        &self,
        kind: BusKind,
        name: &str,
        dev: D,
        base: u64,
        len: u64,
    ) -> Result<SharedDevice, devices::bus::Error> {
        let counters = Arc::new(Counters::default());
        let shared: SharedDevice = Arc::new(Mutex::new(Counted {
            dev,
            counters: counters.clone(),
        }));
        match kind {
            BusKind::Pio => self.pio.insert(shared.clone(), base, len)?,
            BusKind::Mmio => self.mmio.insert(shared.clone(), base, len)?,
        }
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), counters));
        Ok(shared)
    }

    /// Inserts a device the caller keeps a handle to (the serial console's
    /// input thread, the PCI code), counted under `name`.
    pub fn add_shared<D: BusDevice + ?Sized + 'static>(
        &self,
        kind: BusKind,
        name: &str,
        dev: Arc<Mutex<D>>,
        base: u64,
        len: u64,
    ) -> Result<(), devices::bus::Error> {
        self.add(kind, name, Forward(dev), base, len).map(|_| ())
    }

    /// One line per device plus the unclaimed counts.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for (name, c) in self.stats.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(&format!(
                "  {name}: {} reads, {} writes\n",
                c.reads.load(Ordering::Relaxed),
                c.writes.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "  unclaimed: {} port accesses, {} MMIO accesses\n",
            self.unclaimed_pio.load(Ordering::Relaxed),
            self.unclaimed_mmio.load(Ordering::Relaxed)
        ));
        out
    }
}
