//! The VMM side of PCI: the root bus on the PIO bus at 0xCF8, a
//! [`BarMapper`](devices::pci::BarMapper) that places register BARs on the
//! MMIO/PIO buses and memory-backed BARs as hypervisor memory slots, the
//! ivshmem-plain devices, and their counters printed at exit.
//!
//! A memory-backed BAR (ivshmem BAR2) is a memory slot, so guest accesses
//! never exit. Its range is also claimed on the MMIO bus by the device's
//! BAR adapter: if an access ever exits there (no slot, or a write to a
//! read-only slot), the device counts it as a BAR2 exit instead of it
//! vanishing as an unclaimed access.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use devices::bus::{Bus, SharedDevice};
use devices::ivshmem::{IvshmemPlain, MEMORY_BAR, REGISTER_BAR};
use devices::pci::{
    BarRegion, BarRegisters, BarSpace, BarWindows, MapError, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN,
    PciAddress, PciConfigIo, PciRoot, SharedPciRoot,
};
use memory::Backend;

use crate::hv::Vm;
use crate::io::{BusKind, IoBuses};
use crate::ivshmem::IvshmemConfig;

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

impl MemorySlots for Vm {
    unsafe fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
        readonly: bool,
    ) -> Result<(), String> {
        // SAFETY: forwarded from the caller's guarantee.
        unsafe { self.set_memory_slot(slot, gpa, host, size, readonly) }.map_err(|e| e.to_string())
    }

    fn clear_slot(&self, slot: u32) -> Result<(), String> {
        self.remove_memory_slot(slot).map_err(|e| e.to_string())
    }
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

// SAFETY: `host` points into a mapping kept alive by `owner` (Send + Sync);
// the pointer itself is only handed to the hypervisor, never dereferenced.
unsafe impl Send for HostRegion {}
// SAFETY: as above; nothing is accessed through the pointer.
unsafe impl Sync for HostRegion {}

/// What backs one BAR.
enum Backing {
    /// Registers: a bus device (PIO or MMIO bus by the BAR's space).
    Registers(SharedDevice),
    /// Memory in a dedicated slot, plus a bus device that counts exits.
    Memory {
        region: HostRegion,
        slot: u32,
        exits: SharedDevice,
        maps: Arc<AtomicU64>,
    },
}

/// Errors from wiring PCI devices; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PCI {device} BAR{index}: already has a backing")]
    Duplicate { device: PciAddress, index: usize },
    #[error("{device}: {err}")]
    Ivshmem {
        device: String,
        err: devices::ivshmem::Error,
    },
    #[error("{device}: {err}")]
    Slot {
        device: String,
        err: devices::pci::Error,
    },
    #[error("PCI BAR assignment: {0}")]
    Assign(devices::pci::Error),
    #[error("PCI configuration ports: {0}")]
    ConfigPorts(devices::bus::Error),
}

/// Places BARs for the PCI root. Register backings before the root
/// assigns addresses.
///
/// It holds the VM and the buses weakly: the buses hold the root, which
/// holds the mapper, and the VM must close before the memory it maps goes.
pub struct VmBarMapper {
    slots: Weak<dyn MemorySlots>,
    io: Weak<IoBuses>,
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
    pub fn new(slots: &Arc<dyn MemorySlots>, io: &Arc<IoBuses>) -> Self {
        VmBarMapper {
            slots: Arc::downgrade(slots),
            io: Arc::downgrade(io),
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
    /// Returns a counter of how often the BAR was mapped (1 + moves).
    pub fn add_memory(
        &self,
        device: PciAddress,
        index: usize,
        region: HostRegion,
        slot: u32,
        exits: SharedDevice,
    ) -> Result<Arc<AtomicU64>, Error> {
        let maps = Arc::new(AtomicU64::new(0));
        self.insert(
            device,
            index,
            Backing::Memory {
                region,
                slot,
                exits,
                maps: maps.clone(),
            },
        )?;
        Ok(maps)
    }

    fn insert(&self, device: PciAddress, index: usize, b: Backing) -> Result<(), Error> {
        let mut map = self.lock();
        if map.contains_key(&(device, index)) {
            return Err(Error::Duplicate { device, index });
        }
        map.insert((device, index), b);
        Ok(())
    }

    fn parts(&self) -> Result<(Arc<dyn MemorySlots>, Arc<IoBuses>), MapError> {
        match (self.slots.upgrade(), self.io.upgrade()) {
            (Some(s), Some(i)) => Ok((s, i)),
            _ => Err(MapError("the VM is shutting down".into())),
        }
    }
}

fn bus<'a>(io: &'a IoBuses, r: &BarRegion) -> &'a Bus {
    match r.kind.space() {
        BarSpace::Io => &io.pio,
        BarSpace::Memory => &io.mmio,
    }
}

fn refused(e: impl std::fmt::Display) -> MapError {
    MapError(e.to_string())
}

impl devices::pci::BarMapper for VmBarMapper {
    fn map_bar(&self, device: PciAddress, r: &BarRegion) -> Result<(), MapError> {
        let (slots, io) = self.parts()?;
        let map = self.lock();
        let Some(backing) = map.get(&(device, r.index)) else {
            // A BAR without a backing decodes nothing: accesses read all-ones.
            return Ok(());
        };
        match backing {
            Backing::Registers(dev) => bus(&io, r)
                .insert(dev.clone(), r.addr, r.size)
                .map_err(refused),
            Backing::Memory {
                region,
                slot,
                exits,
                maps,
            } => {
                if region.size != r.size {
                    return Err(MapError(format!(
                        "BAR size {:#x} differs from its memory {:#x}",
                        r.size, region.size
                    )));
                }
                io.mmio
                    .insert(exits.clone(), r.addr, r.size)
                    .map_err(refused)?;
                // SAFETY: `region.owner` keeps `host..host+size` mapped and is
                // held in this mapper, which lives as long as the VM.
                let set = unsafe {
                    slots.set_slot(*slot, r.addr, region.host, region.size, region.readonly)
                };
                if let Err(e) = set {
                    let _ = io.mmio.remove(r.addr);
                    return Err(MapError(e));
                }
                maps.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn unmap_bar(&self, device: PciAddress, r: &BarRegion) -> Result<(), MapError> {
        let (slots, io) = self.parts()?;
        let map = self.lock();
        let Some(backing) = map.get(&(device, r.index)) else {
            return Ok(());
        };
        match backing {
            Backing::Registers(_) => bus(&io, r).remove(r.addr).map(drop).map_err(refused),
            Backing::Memory { slot, .. } => {
                let cleared = slots.clear_slot(*slot).map_err(MapError);
                io.mmio.remove(r.addr).map_err(refused)?;
                cleared
            }
        }
    }
}

/// One wired ivshmem-plain device.
struct Ivshmem {
    name: String,
    memdev: String,
    address: PciAddress,
    device: Arc<Mutex<IvshmemPlain>>,
    bar2_maps: Arc<AtomicU64>,
}

/// Another PCI function to put on bus 0: its register BARs go on the buses
/// through [`BarRegisters`] (e.g. a virtio-pci device).
pub struct PciFunction {
    pub name: String,
    pub slot: Option<u8>,
    pub device: devices::pci::SharedPciDevice,
    pub register_bars: Vec<usize>,
}

impl std::fmt::Debug for PciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PciFunction({})", self.name)
    }
}

/// The PCI root and its devices, as wired into one VM.
pub struct Pci {
    root: SharedPciRoot,
    ivshmem: Vec<Ivshmem>,
}

impl std::fmt::Debug for Pci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pci")
            .field("ivshmem", &self.ivshmem.len())
            .finish()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pci {
    /// Builds bus 0 with the host bridge and one ivshmem-plain per entry of
    /// `ivshmem` (its config and its memdev's backend), assigns BARs from
    /// `windows` and puts configuration mechanism #1 on the PIO bus.
    /// `first_slot` is the first memory slot number free for BARs.
    /// `functions` are further devices, placed after the ivshmem ones.
    pub fn build(
        slots: &Arc<dyn MemorySlots>,
        io: &Arc<IoBuses>,
        ivshmem: &[(&IvshmemConfig, Arc<Backend>)],
        functions: &[PciFunction],
        windows: &BarWindows,
        first_slot: u32,
    ) -> Result<Pci, Error> {
        let mapper = Arc::new(VmBarMapper::new(slots, io));
        let root: SharedPciRoot = Arc::new(Mutex::new(PciRoot::new(mapper.clone())));
        let mut wired = Vec::new();
        for (i, (cfg, backend)) in ivshmem.iter().enumerate() {
            let name = cfg.to_string();
            let device = IvshmemPlain::new(backend.size())
                .map(|d| Arc::new(Mutex::new(d)))
                .map_err(|err| Error::Ivshmem {
                    device: name.clone(),
                    err,
                })?;
            let address = lock(&root)
                .add_device(cfg.slot, device.clone())
                .map_err(|err| Error::Slot {
                    device: name.clone(),
                    err,
                })?;
            let regs: SharedDevice =
                Arc::new(Mutex::new(BarRegisters::new(device.clone(), REGISTER_BAR)));
            mapper.add_registers(address, REGISTER_BAR, regs)?;
            let region = HostRegion {
                host: backend.as_ptr(),
                size: backend.size(),
                readonly: backend.readonly(),
                owner: backend.clone(),
            };
            let exits: SharedDevice =
                Arc::new(Mutex::new(BarRegisters::new(device.clone(), MEMORY_BAR)));
            let bar2_maps =
                mapper.add_memory(address, MEMORY_BAR, region, first_slot + i as u32, exits)?;
            log::info!(
                "{name}: PCI {address}, memdev '{}' ({} bytes)",
                cfg.memdev,
                backend.size()
            );
            wired.push(Ivshmem {
                name,
                memdev: cfg.memdev.clone(),
                address,
                device,
                bar2_maps,
            });
        }
        for f in functions {
            let address = lock(&root)
                .add_device(f.slot, f.device.clone())
                .map_err(|err| Error::Slot {
                    device: f.name.clone(),
                    err,
                })?;
            for &bar in &f.register_bars {
                let regs: SharedDevice =
                    Arc::new(Mutex::new(BarRegisters::new(f.device.clone(), bar)));
                mapper.add_registers(address, bar, regs)?;
            }
            log::info!("{}: PCI {address}", f.name);
        }
        lock(&root).assign_bars(windows).map_err(Error::Assign)?;
        io.add(
            BusKind::Pio,
            "pci-config (0xcf8)",
            PciConfigIo::new(root.clone()),
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_LEN,
        )
        .map_err(Error::ConfigPorts)?;
        Ok(Pci {
            root,
            ivshmem: wired,
        })
    }

    /// One line per ivshmem device: where BAR2 is, how often it was mapped,
    /// and what reached the VMM (config accesses, BAR0 accesses, BAR2 exits).
    pub fn report(&self) -> String {
        let mut out = String::new();
        for d in &self.ivshmem {
            let s = lock(&d.device).stats();
            let bar2 = lock(&self.root).mapped(d.address, MEMORY_BAR);
            let at = bar2.map_or("unmapped".to_string(), |r| format!("{:#x}", r.addr));
            out.push_str(&format!(
                "  {} ({}, memdev '{}'): bar2 at {at}, mapped {} times; config {} reads, {} writes; \
                 bar0 {} reads, {} writes, {} bad; bar2 exits {}\n",
                d.name,
                d.address,
                d.memdev,
                d.bar2_maps.load(Ordering::Relaxed),
                s.config_reads,
                s.config_writes,
                s.bar0_reads,
                s.bar0_writes,
                s.bar0_bad_accesses,
                s.bar2_exits,
            ));
        }
        out
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
        let io = Arc::new(IoBuses::new());
        let dyn_slots: Arc<dyn MemorySlots> = slots.clone();
        let m = VmBarMapper::new(&dyn_slots, &io);
        let (mmio, pio) = (&io.mmio, &io.pio);
        let dev = PciAddress::new(2, 0);
        let ones: SharedDevice = Arc::new(Mutex::new(Ones));
        m.add_registers(dev, 0, ones.clone()).unwrap();
        assert!(matches!(
            m.add_registers(dev, 0, ones.clone()),
            Err(Error::Duplicate { index: 0, .. })
        ));
        let buf = Box::leak(vec![0u8; 0x1000].into_boxed_slice());
        let hr = HostRegion {
            host: buf.as_mut_ptr(),
            size: 0x1000,
            readonly: false,
            owner: Arc::new(()),
        };
        let maps = m.add_memory(dev, 2, hr, 7, ones.clone()).unwrap();

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
        assert_eq!(maps.load(Ordering::Relaxed), 2);

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

    #[test]
    fn build_wires_ivshmem_and_reports_counters() {
        let slots = Arc::new(FakeSlots::default());
        let io = Arc::new(IoBuses::new());
        let cfg =
            crate::config::object::parse_backend("memory-backend-memfd,id=sh,size=1M").unwrap();
        let backend = Arc::new(Backend::create(&cfg).unwrap());
        let dev = crate::ivshmem::parse("memdev=sh,addr=3", 0).unwrap();
        let windows = BarWindows {
            io: None,
            mmio32: 0xc000_0000..0xfec0_0000,
            mmio64: Some(0x1_0000_0000..0x11_0000_0000),
        };
        let dyn_slots: Arc<dyn MemorySlots> = slots.clone();
        let pci = Pci::build(&dyn_slots, &io, &[(&dev, backend)], &[], &windows, 8).unwrap();
        assert_eq!(
            *slots.0.lock().unwrap(),
            ["set 8 0x100000000+0x100000 ro=false"]
        );
        // The guest reads the vendor/device ID through 0xCF8/0xCFC.
        io.pio.write(0xcf8, &0x8000_1800u32.to_le_bytes());
        let mut id = [0u8; 4];
        assert!(io.pio.read(0xcfc, &mut id));
        assert_eq!(u32::from_le_bytes(id), 0x1110_1af4);
        // BAR0 registers at the start of the 32-bit window.
        let mut v = [0u8; 4];
        assert!(io.mmio.read(0xc000_0008, &mut v));
        assert_eq!(v, [0; 4], "IVPosition");
        let r = pci.report();
        assert!(
            r.contains(
                "ivshmem-plain #0 (00:03.0, memdev 'sh'): bar2 at 0x100000000, mapped 1 times"
            ) && r.contains("bar0 1 reads, 0 writes, 0 bad; bar2 exits 0"),
            "{r}"
        );
    }
}
