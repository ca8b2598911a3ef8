//! Address buses (port I/O and MMIO) that route guest accesses to devices.
//!
//! A device is inserted over a range and sees offsets relative to the range
//! start, never absolute guest addresses. Ranges can be moved at run time
//! (a guest reprogramming a PCI BAR), so the map sits behind a lock that
//! vCPU threads take for reading only.
//!
//! Each entry carries the device's access counters, so counting costs no
//! lock of its own: one read of the map, one device lock per access. The
//! counters are the caller's ([`Bus::insert_counted`]) and outlive the
//! entry, so a BAR that moves keeps its counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device model reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from changing a bus's map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
    #[error("no device starts at bus address {0:#x}")]
    NotFound(u64),
}

/// How often the guest read and wrote one device's range.
#[derive(Debug, Default)]
pub struct AccessCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

impl AccessCounters {
    /// (reads, writes) as of now.
    pub fn get(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
    counters: Arc<AccessCounters>,
}

/// Where one range sits and whose counters it feeds.
#[derive(Debug, Clone)]
pub struct Placement {
    pub base: u64,
    pub len: u64,
    pub counters: Arc<AccessCounters>,
}

/// A map from address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        f.debug_list()
            .entries(ranges.iter().map(|(base, e)| (*base, e.len)))
            .finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)` with counters of its own.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        self.insert_counted(device, base, len, Arc::default())
    }

    /// Puts `device` at `[base, base + len)`; its accesses count in `counters`.
    pub fn insert_counted(
        &self,
        device: SharedDevice,
        base: u64,
        len: u64,
        counters: Arc<AccessCounters>,
    ) -> Result<(), Error> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(Error::InvalidRange { base, len });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The only candidates for overlap are the last range starting below
        // `base + len` and, through it, everything in between.
        if let Some((&other, e)) = ranges.range(..base + len).next_back()
            && other + e.len > base
        {
            return Err(Error::Overlap { base, len, other });
        }
        ranges.insert(
            base,
            Entry {
                len,
                device,
                counters,
            },
        );
        Ok(())
    }

    /// Removes the device whose range starts at `base`, returning it.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, Error> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(Error::NotFound(base))
    }

    /// Moves the range starting at `old_base` to `new_base`. On overlap the
    /// map is left unchanged.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), Error> {
        let entry = {
            let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
            ranges.remove(&old_base).ok_or(Error::NotFound(old_base))?
        };
        let len = entry.len;
        self.insert_counted(entry.device.clone(), new_base, len, entry.counters.clone())
            .inspect_err(|_| {
                let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
                ranges.insert(old_base, entry);
            })
    }

    /// Every range on the bus, in address order.
    pub fn placements(&self) -> Vec<Placement> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        ranges
            .iter()
            .map(|(&base, e)| Placement {
                base,
                len: e.len,
                counters: e.counters.clone(),
            })
            .collect()
    }

    /// The device claiming `addr` and the offset into its range, counted as
    /// a read or a write.
    fn resolve(&self, addr: u64, write: bool) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        if addr - base >= entry.len {
            return None;
        }
        let counter = if write {
            &entry.counters.writes
        } else {
            &entry.counters.reads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some((entry.device.clone(), addr - base))
    }

    /// Routes a read; returns false when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, false) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, true) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset_and_reports_unclaimed() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last, Some((0, vec![0x41])));
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        let p = bus.placements();
        assert_eq!((p.len(), p[0].base, p[0].len), (1, 0x3f8, 8));
        assert_eq!(
            p[0].counters.get(),
            (1, 1),
            "unclaimed accesses are not counted"
        );
    }

    #[test]
    fn counters_follow_a_moved_range() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let counters = Arc::new(AccessCounters::default());
        bus.insert_counted(dev.clone(), 0x1000, 0x10, counters.clone())
            .unwrap();
        assert!(bus.write(0x1004, &[1]));
        bus.relocate(0x1000, 0x2000).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x2002, &mut b));
        bus.remove(0x2000).unwrap();
        bus.insert_counted(dev, 0x3000, 0x10, counters.clone())
            .unwrap();
        assert!(bus.read(0x3000, &mut b));
        assert_eq!(counters.get(), (2, 1));
    }

    #[test]
    fn rejects_overlaps_and_relocates() {
        let bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(
            bus.insert(a.clone(), 0x10ff, 1),
            Err(Error::Overlap {
                base: 0x10ff,
                len: 1,
                other: 0x1000
            })
        );
        assert_eq!(
            bus.insert(a.clone(), 0xf00, 0x101),
            Err(Error::Overlap {
                base: 0xf00,
                len: 0x101,
                other: 0x1000
            })
        );
        bus.insert(a.clone(), 0x1100, 0x100).unwrap();
        assert!(bus.relocate(0x1000, 0x1180).is_err());
        bus.relocate(0x1000, 0x8000).unwrap();
        let mut b = [0u8; 1];
        assert!(!bus.read(0x1000, &mut b));
        assert!(bus.read(0x8010, &mut b));
        assert_eq!(b[0], 0x10);
        assert_eq!(
            bus.insert(a, 0, 0),
            Err(Error::InvalidRange { base: 0, len: 0 })
        );
    }
}
