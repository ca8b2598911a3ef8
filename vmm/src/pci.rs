//! The VMM side of PCI: a [`BarMapper`] that places register BARs on the
//! MMIO/PIO buses and memory-backed BARs as hypervisor memory slots, and the
//! per-device exit counters printed at exit.
//!
//! A memory-backed BAR (ivshmem BAR2) is a memory slot, so guest accesses
//! never exit. Its range is also claimed on the MMIO bus by the device's
//! BAR adapter: if an access ever exits there (no slot), the device counts
//! it as a BAR2 exit instead of it vanishing as an unclaimed access.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::bus::{Bus, SharedDevice};
use devices::pci::{BarRegion, BarSpace, MapError, PciAddress};

/// What the mapper needs of the hypervisor: one memory slot set or cleared.
pub trait MemorySlots: Send + Sync {
    /// Maps `[host, host + size)` at guest physical `gpa` in `slot`,
    /// read-only for the guest when `readonly`.
    ///
    /// # Safety
    /// The host range must stay mapped while the slot is set.
    unsafe fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
        readonly: bool,
    ) -> Result<(), String>;
    /// Removes `slot`.
    fn clear_slot(&self, slot: u32) -> Result<(), String>;
}

/// Host memory behind a memory BAR. `owner` keeps the mapping alive.
#[derive(Clone)]
pub struct HostRegion {
    pub host: *mut u8,
    pub size: u64,
    pub readonly: bool,
    pub owner: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for HostRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostRegion({:p}+{:#x}, readonly={})",
            self.host, self.size, self.readonly
        )
    }
}

/// What backs one BAR.
enum Backing {
    /// Registers: a bus device (PIO or MMIO bus by the BAR's space).
    Registers(SharedDevice),
    /// Memory in a dedicated slot, plus a bus device that counts exits.
    Memory {
        region: HostRegion,
        slot: u32,
        exits: SharedDevice,
    },
}

// SAFETY: `host` points into a mapping kept alive by `owner` (Send + Sync);
// the pointer itself is only handed to the hypervisor, never dereferenced.
unsafe impl Send for Backing {}
// SAFETY: as above; no interior access through the pointer.
unsafe impl Sync for Backing {}

/// Errors from registering BAR backings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("PCI {device} BAR{index}: already has a backing")]
    Duplicate { device: PciAddress, index: usize },
}

/// Places BARs for the PCI root. Register backings before the root
/// assigns addresses.
pub struct VmBarMapper {
    slots: Arc<dyn MemorySlots>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    backings: Mutex<HashMap<(PciAddress, usize), Backing>>,
}

impl std::fmt::Debug for VmBarMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBarMapper")
            .field("backings", &self.lock().len())
            .finish()
    }
}

impl VmBarMapper {
    pub fn new(slots: Arc<dyn MemorySlots>, mmio: Arc<Bus>, pio: Arc<Bus>) -> Self {
        VmBarMapper {
            slots,
            mmio,
            pio,
            backings: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(PciAddress, usize), Backing>> {
        self.backings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// BAR `index` of `device` is decoded by `regs` (a `BarRegisters`).
    pub fn add_registers(
        &self,
        device: PciAddress,
        index: usize,
        regs: SharedDevice,
    ) -> Result<(), Error> {
        self.insert(device, index, Backing::Registers(regs))
    }

    /// BAR `index` of `device` is `region`, mapped as memory slot `slot`;
    /// `exits` (a `BarRegisters` for the same BAR) sees accesses that exit.
    pub fn add_memory(
        &self,
        device: PciAddress,
        index: usize,
        region: HostRegion,
        slot: u32,
        exits: SharedDevice,
    ) -> Result<(), Error> {
        self.insert(
            device,
            index,
            Backing::Memory {
                region,
                slot,
                exits,
            },
        )
    }

    fn insert(&self, device: PciAddress, index: usize, b: Backing) -> Result<(), Error> {
        let mut map = self.lock();
        if map.contains_key(&(device, index)) {
            return Err(Error::Duplicate { device, index });
        }
        map.insert((device, index), b);
        Ok(())
    }

    fn bus(&self, r: &BarRegion) -> &Bus {
        match r.kind.space() {
            BarSpace::Io => &self.pio,
            BarSpace::Memory => &self.mmio,
        }
    }
}

fn refused(e: impl std::fmt::Display) -> MapError {
    MapError(e.to_string())
}

impl devices::pci::BarMapper for VmBarMapper {
    fn map_bar(&self, device: PciAddress, r: &BarRegion) -> Result<(), MapError> {
        let map = self.lock();
        let Some(backing) = map.get(&(device, r.index)) else {
            // A BAR without a backing decodes nothing: accesses read all-ones.
            return Ok(());
        };
        match backing {
            Backing::Registers(dev) => self
                .bus(r)
                .insert(dev.clone(), r.addr, r.size)
                .map_err(refused),
            Backing::Memory {
                region,
                slot,
                exits,
            } => {
                if region.size != r.size {
                    return Err(MapError(format!(
                        "BAR size {:#x} differs from its memory {:#x}",
                        r.size, region.size
                    )));
                }
                self.mmio
                    .insert(exits.clone(), r.addr, r.size)
                    .map_err(refused)?;
                // SAFETY: `region.owner` keeps `host..host+size` mapped and is
                // held in this mapper, which lives as long as the VM.
                let set = unsafe {
                    self.slots
                        .set_slot(*slot, r.addr, region.host, region.size, region.readonly)
                };
                set.inspect_err(|_| {
                    let _ = self.mmio.remove(r.addr);
                })
                .map_err(MapError)
            }
        }
    }

    fn unmap_bar(&self, device: PciAddress, r: &BarRegion) -> Result<(), MapError> {
        let map = self.lock();
        let Some(backing) = map.get(&(device, r.index)) else {
            return Ok(());
        };
        match backing {
            Backing::Registers(_) => self.bus(r).remove(r.addr).map(drop).map_err(refused),
            Backing::Memory { slot, .. } => {
                let cleared = self.slots.clear_slot(*slot).map_err(MapError);
                self.mmio.remove(r.addr).map_err(refused)?;
                cleared
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use devices::pci::{BarKind, BarMapper};

    #[derive(Default)]
    struct FakeSlots(Mutex<Vec<String>>);

    impl MemorySlots for FakeSlots {
        unsafe fn set_slot(
            &self,
            slot: u32,
            gpa: u64,
            _host: *mut u8,
            size: u64,
            ro: bool,
        ) -> Result<(), String> {
            if gpa == 0xbad000 {
                return Err("EEXIST".into());
            }
            self.0
                .lock()
                .unwrap()
                .push(format!("set {slot} {gpa:#x}+{size:#x} ro={ro}"));
            Ok(())
        }
        fn clear_slot(&self, slot: u32) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("clear {slot}"));
            Ok(())
        }
    }

    struct Ones;
    impl BusDevice for Ones {
        fn read(&mut self, _: u64, d: &mut [u8]) {
            d.fill(1);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn region(index: usize, kind: BarKind, addr: u64, size: u64) -> BarRegion {
        BarRegion {
            index,
            kind,
            addr,
            size,
        }
    }

    #[test]
    fn registers_follow_the_bar_and_memory_becomes_a_slot() {
        let slots = Arc::new(FakeSlots::default());
        let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let m = VmBarMapper::new(slots.clone(), mmio.clone(), pio.clone());
        let dev = PciAddress::new(2, 0);
        let ones: SharedDevice = Arc::new(Mutex::new(Ones));
        m.add_registers(dev, 0, ones.clone()).unwrap();
        assert_eq!(
            m.add_registers(dev, 0, ones.clone()),
            Err(Error::Duplicate {
                device: dev,
                index: 0
            })
        );
        let buf = Box::leak(vec![0u8; 0x1000].into_boxed_slice());
        let hr = HostRegion {
            host: buf.as_mut_ptr(),
            size: 0x1000,
            readonly: false,
            owner: Arc::new(()),
        };
        m.add_memory(dev, 2, hr, 7, ones.clone()).unwrap();

        let r0 = region(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0xc000_0000,
            0x100,
        );
        m.map_bar(dev, &r0).unwrap();
        let mut b = [0u8; 4];
        assert!(mmio.read(0xc000_0010, &mut b));
        m.unmap_bar(dev, &r0).unwrap();
        assert!(!mmio.read(0xc000_0010, &mut b));

        let r2 = region(
            2,
            BarKind::Memory64 { prefetchable: true },
            0x10_0000_0000,
            0x1000,
        );
        m.map_bar(dev, &r2).unwrap();
        m.unmap_bar(dev, &r2).unwrap();
        let moved = BarRegion {
            addr: 0x20_0000_0000,
            ..r2
        };
        m.map_bar(dev, &moved).unwrap();
        assert_eq!(
            *slots.0.lock().unwrap(),
            [
                "set 7 0x1000000000+0x1000 ro=false",
                "clear 7",
                "set 7 0x2000000000+0x1000 ro=false"
            ]
        );
        assert!(
            mmio.read(0x20_0000_0000, &mut b),
            "exit counter claims the BAR range"
        );

        // A refused slot leaves nothing on the bus.
        let bad = BarRegion {
            addr: 0xbad000,
            ..r2
        };
        m.unmap_bar(dev, &moved).unwrap();
        assert_eq!(m.map_bar(dev, &bad), Err(MapError("EEXIST".into())));
        assert!(!mmio.read(0xbad000, &mut b));
        // An I/O BAR goes on the PIO bus; an unknown BAR maps to nothing.
        m.add_registers(dev, 4, ones).unwrap();
        m.map_bar(dev, &region(4, BarKind::Io, 0xc000, 0x10))
            .unwrap();
        assert!(pio.read(0xc004, &mut b));
        m.map_bar(dev, &region(5, BarKind::Io, 0xd000, 0x10))
            .unwrap();
        assert!(!pio.read(0xd000, &mut b));
    }
}
