//! The VMM side of PCI: the root bus, reached through configuration
//! mechanism #1 on the PIO bus at 0xCF8 (x86_64) or through ECAM on the
//! MMIO bus (aarch64's `pci-host-ecam-generic`), a
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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::hv::Vm;
use crate::io::{BusKind, IoBuses};
use devices::bus::{AccessCounters, Bus, SharedDevice};
use devices::pci::{
    BarKind, BarRegion, BarRegisters, BarSpace, BarWindows, MapError, PCI_CONFIG_IO_BASE,
    PCI_CONFIG_IO_LEN, PciAddress, PciConfigIo, PciConfigMmio, PciRoot, SharedPciRoot,
};

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
    /// Registers: a bus device (PIO or MMIO bus by the BAR's space), with
    /// the counters its bus entries feed wherever the BAR moves.
    Registers {
        device: SharedDevice,
        counters: Arc<AccessCounters>,
    },
    /// Memory in a dedicated slot, plus a bus device that counts exits.
    Memory {
        region: HostRegion,
        slot: u32,
        exits: SharedDevice,
        counters: Arc<AccessCounters>,
        maps: Arc<AtomicU64>,
    },
}

/// Errors from wiring PCI devices; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PCI {device} BAR{index}: already has a backing")]
    Duplicate { device: PciAddress, index: usize },
    #[error("{device}: {err}")]
    Slot {
        device: String,
        err: devices::pci::Error,
    },
    #[error("PCI BAR assignment: {0}")]
    Assign(devices::pci::Error),
    #[error("{device}: BAR{index}: {source}")]
    NoRoom {
        device: String,
        index: usize,
        #[source]
        source: devices::pci::AllocError,
    },
    #[error("{device}: has no BAR{index} to back")]
    NoSuchBar { device: String, index: usize },
    #[error("PCI configuration space access: {0}")]
    ConfigAccess(devices::bus::Error),
}

impl Error {
    /// 2 for what the command line decides (slots, BAR sizes that do not
    /// fit the windows), 1 for what the hypervisor refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Slot { .. } | Error::NoRoom { .. } | Error::Assign(_) => 2,
            Error::ConfigAccess(_) | Error::Duplicate { .. } | Error::NoSuchBar { .. } => 1,
        }
    }
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

    /// BAR `index` of `device` is decoded by `regs` (a `BarRegisters`),
    /// whose accesses count in `counters`.
    pub fn add_registers(
        &self,
        device: PciAddress,
        index: usize,
        regs: SharedDevice,
        counters: Arc<AccessCounters>,
    ) -> Result<(), Error> {
        self.insert(
            device,
            index,
            Backing::Registers {
                device: regs,
                counters,
            },
        )
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
        counters: Arc<AccessCounters>,
    ) -> Result<Arc<AtomicU64>, Error> {
        let maps = Arc::new(AtomicU64::new(0));
        self.insert(
            device,
            index,
            Backing::Memory {
                region,
                slot,
                exits,
                counters,
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
            Backing::Registers { device, counters } => bus(&io, r)
                .insert_counted(device.clone(), r.addr, r.size, counters.clone())
                .map_err(refused),
            Backing::Memory {
                region,
                slot,
                exits,
                counters,
                maps,
            } => {
                if region.size != r.size {
                    return Err(MapError(format!(
                        "BAR size {:#x} differs from its memory {:#x}",
                        r.size, region.size
                    )));
                }
                io.mmio
                    .insert_counted(exits.clone(), r.addr, r.size, counters.clone())
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
            Backing::Registers { .. } => bus(&io, r).remove(r.addr).map(drop).map_err(refused),
            Backing::Memory { slot, .. } => {
                let cleared = slots.clear_slot(*slot).map_err(MapError);
                io.mmio.remove(r.addr).map_err(refused)?;
                cleared
            }
        }
    }
}

/// What backs one BAR of a PCI function.
#[derive(Debug, Clone)]
pub enum BarBacking {
    /// The device decodes it: its registers go on the PIO or MMIO bus (by
    /// the BAR's kind) wherever the guest places the BAR.
    Registers,
    /// Host memory, mapped into the guest as a memory slot, so accesses do
    /// not exit; one that still does reaches the device and is counted.
    Memory(HostRegion),
}

/// A PCI function to put on bus 0, as every PCI device plugs in.
#[derive(Clone)]
pub struct PciFunction {
    /// Names the function in messages and statistics.
    pub name: String,
    /// `addr=`: the slot asked for, else the first free one.
    pub slot: Option<u8>,
    /// `id=`: the device's id, as QMP's `query-pci` shows it (`qdev_id`).
    pub qdev_id: Option<String>,
    pub device: devices::pci::SharedPciDevice,
    /// Every BAR the device has, with what backs it.
    pub bars: Vec<(usize, BarBacking)>,
    /// Where its MSI vectors learn the function's requester ID (None: it
    /// has no MSIs).
    pub requester: Option<Requester>,
}

/// The PCI requester ID (bus << 8 | devfn) of a function, which its MSI
/// vectors carry (the GICv3 ITS translates by it); set
/// when its function is placed on the bus (0 until then).
#[derive(Debug, Clone, Default)]
pub struct Requester(Arc<AtomicU32>);

impl Requester {
    pub fn set(&self, bdf: u32) {
        self.0.store(bdf, Ordering::Relaxed);
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for PciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciFunction")
            .field("name", &self.name)
            .field("slot", &self.slot)
            .field("qdev_id", &self.qdev_id)
            .field("bars", &self.bars)
            .finish()
    }
}

/// A PCI device as the machine builder takes it: the function to place,
/// and what it did, for the statistics.
pub trait PciPlug: Send + Sync + std::fmt::Debug {
    /// The function with its BARs' backings (called once, before placing).
    fn function(&self) -> PciFunction;
    /// Adds this device's own statistics (its bus counters are already in
    /// the bus statistics), given where it was placed.
    fn add_stats(&self, placed: &Placed, pci: &Pci, stats: &mut crate::stats::Stats);
}

/// A function as placed: its address and how often each memory BAR was
/// mapped (1 + moves).
#[derive(Debug, Clone)]
pub struct Placed {
    pub name: String,
    pub qdev_id: Option<String>,
    pub address: PciAddress,
    pub memory_maps: Vec<(usize, Arc<AtomicU64>)>,
}

/// One function as `query-pci` shows it: its configuration header and
/// its BARs.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    pub address: PciAddress,
    /// The device's `id=` (None for the host bridge and devices without one).
    pub qdev_id: Option<String>,
    /// Configuration space bytes 0..64.
    pub header: [u8; 64],
    pub bars: Vec<BarInfo>,
}

/// One BAR: kind, size, and where it decodes (None: it does not).
#[derive(Debug, Clone, Copy)]
pub struct BarInfo {
    pub index: usize,
    pub kind: BarKind,
    pub size: u64,
    pub address: Option<u64>,
}

/// How the guest reaches bus 0's configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigAccess {
    /// Configuration mechanism #1: ports 0xCF8..0xCFF (x86_64).
    Ports,
    /// ECAM on the MMIO bus at `base`, bus 0 only (1 MiB): what a device
    /// tree's `pci-host-ecam-generic` node describes.
    Ecam { base: u64 },
}

/// Where bus 0 sits in a machine's map (from its `layout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHost {
    pub config: ConfigAccess,
    /// The windows BARs are assigned from.
    pub windows: BarWindows,
    /// Memory BARs get memory slots from this number on.
    pub first_slot: u32,
}

/// The PCI root and its functions, as wired into one VM.
pub struct Pci {
    root: SharedPciRoot,
    placed: Vec<Placed>,
}

impl std::fmt::Debug for Pci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pci").field("placed", &self.placed).finish()
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bus a BAR of `kind` decodes on.
fn bus_kind(kind: BarKind) -> BusKind {
    match kind.space() {
        BarSpace::Io => BusKind::Pio,
        BarSpace::Memory => BusKind::Mmio,
    }
}

impl Pci {
    /// Builds bus 0: the host bridge and `functions` (each in its slot or
    /// the first free one, its BARs backed as it says, memory BARs in
    /// memory slots from `host.first_slot` on), assigns BAR addresses from
    /// `host.windows` as firmware would, and puts the configuration space
    /// where `host.config` says.
    pub fn build(
        slots: &Arc<dyn MemorySlots>,
        io: &Arc<IoBuses>,
        functions: &[PciFunction],
        host: &PciHost,
    ) -> Result<Pci, Error> {
        let mapper = Arc::new(VmBarMapper::new(slots, io));
        let root: SharedPciRoot = Arc::new(Mutex::new(PciRoot::new(mapper.clone())));
        let mut placed = Vec::new();
        let mut next_slot = host.first_slot;
        for f in functions {
            let address = lock(&root)
                .add_device(f.slot, f.device.clone())
                .map_err(|err| Error::Slot {
                    device: f.name.clone(),
                    err,
                })?;
            let kinds: Vec<(usize, BarKind)> = lock(&f.device)
                .config()
                .bars()
                .map(|(i, k, _)| (i, k))
                .collect();
            let mut memory_maps = Vec::new();
            for (index, backing) in &f.bars {
                let kind = kinds
                    .iter()
                    .find(|(i, _)| i == index)
                    .map(|&(_, k)| k)
                    .ok_or(Error::NoSuchBar {
                        device: f.name.clone(),
                        index: *index,
                    })?;
                let regs: SharedDevice =
                    Arc::new(Mutex::new(BarRegisters::new(f.device.clone(), *index)));
                match backing {
                    BarBacking::Registers => {
                        let counters =
                            io.counters(bus_kind(kind), &format!("{} bar{index}", f.name));
                        mapper.add_registers(address, *index, regs, counters)?;
                    }
                    BarBacking::Memory(region) => {
                        let counters =
                            io.counters(BusKind::Mmio, &format!("{} bar{index} exits", f.name));
                        let maps = mapper.add_memory(
                            address,
                            *index,
                            region.clone(),
                            next_slot,
                            regs,
                            counters,
                        )?;
                        next_slot += 1;
                        memory_maps.push((*index, maps));
                    }
                }
            }
            if let Some(r) = &f.requester {
                r.set(u32::from(address.devfn()));
            }
            log::info!("{}: PCI {address}", f.name);
            placed.push(Placed {
                name: f.name.clone(),
                qdev_id: f.qdev_id.clone(),
                address,
                memory_maps,
            });
        }
        lock(&root)
            .assign_bars(&host.windows)
            .map_err(|e| match e {
                devices::pci::Error::Allocate {
                    device,
                    index,
                    source,
                } => Error::NoRoom {
                    device: placed
                        .iter()
                        .find(|p| p.address == device)
                        .map_or_else(|| device.to_string(), |p| p.name.clone()),
                    index,
                    source,
                },
                other => Error::Assign(other),
            })?;
        match host.config {
            ConfigAccess::Ports => io.add(
                BusKind::Pio,
                "pci-config",
                PciConfigIo::new(root.clone()),
                PCI_CONFIG_IO_BASE,
                PCI_CONFIG_IO_LEN,
            ),
            ConfigAccess::Ecam { base } => io.add(
                BusKind::Mmio,
                "pci-ecam",
                PciConfigMmio::new(root.clone()),
                base,
                PciConfigMmio::BUS0_SIZE,
            ),
        }
        .map_err(Error::ConfigAccess)?;
        Ok(Pci { root, placed })
    }

    /// The functions in the order they were given, as placed.
    pub fn placed(&self) -> &[Placed] {
        &self.placed
    }

    /// How often memory BAR `index` of `placed` was mapped.
    pub fn memory_maps(placed: &Placed, index: usize) -> u64 {
        placed
            .memory_maps
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(0, |(_, m)| m.load(Ordering::Relaxed))
    }

    /// Every function on bus 0 as it is now (QMP `query-pci`).
    pub fn describe(&self) -> Vec<FunctionInfo> {
        let root = lock(&self.root);
        let mut out = Vec::new();
        for slot in 0..32u8 {
            let address = PciAddress::new(slot, 0);
            let Some(dev) = root.device(address) else {
                continue;
            };
            let dev = lock(&dev);
            let cfg = dev.config();
            let mut header = [0u8; 64];
            cfg.peek(0, &mut header);
            let bars = cfg
                .bars()
                .map(|(index, kind, size)| BarInfo {
                    index,
                    kind,
                    size,
                    address: root.mapped(address, index).map(|r| r.addr),
                })
                .collect();
            let qdev_id = self
                .placed
                .iter()
                .find(|p| p.address == address)
                .and_then(|p| p.qdev_id.clone());
            out.push(FunctionInfo {
                address,
                qdev_id,
                header,
                bars,
            });
        }
        out
    }

    /// Every function's configuration space (256 bytes), by slot, for a
    /// snapshot.
    pub fn save_config(&self) -> Vec<(u8, Vec<u8>)> {
        let root = lock(&self.root);
        (0..32u8)
            .filter_map(|slot| {
                let dev = root.device(PciAddress::new(slot, 0))?;
                let mut config = vec![0u8; 256];
                lock(&dev).config().peek(0, &mut config);
                Some((slot, config))
            })
            .collect()
    }

    /// Puts saved configuration spaces back as the guest wrote them,
    /// through the configuration path (so BARs move as they did): decoding
    /// off, the BARs, the interrupt line, the capabilities, then the
    /// command register (decoding on where it was). Read-only bits are
    /// kept by the write masks; a slot that is empty now is refused.
    pub fn restore_config(&self, saved: &[(u8, Vec<u8>)]) -> Result<(), String> {
        let mut root = lock(&self.root);
        for (slot, config) in saved {
            let address = PciAddress::new(*slot, 0);
            if root.device(address).is_none() || config.len() != 256 {
                return Err(format!(
                    "PCI slot {slot}: no such function, or not 256 bytes"
                ));
            }
            root.config_write(address, 0x04, &[0, 0]);
            for at in (0x10..0x28).chain(0x40..0x100).step_by(4) {
                root.config_write(address, at, &config[at..at + 4]);
            }
            root.config_write(address, 0x3c, &config[0x3c..0x3d]);
            root.config_write(address, 0x04, &config[0x04..0x06]);
        }
        Ok(())
    }

    /// Where BAR `index` of the function at `address` decodes now.
    pub fn bar_address(&self, address: PciAddress, index: usize) -> Option<u64> {
        lock(&self.root).mapped(address, index).map(|r| r.addr)
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
        m.add_registers(dev, 0, ones.clone(), Arc::default())
            .unwrap();
        assert!(matches!(
            m.add_registers(dev, 0, ones.clone(), Arc::default()),
            Err(Error::Duplicate { index: 0, .. })
        ));
        let buf = Box::leak(vec![0u8; 0x1000].into_boxed_slice());
        let hr = HostRegion {
            host: buf.as_mut_ptr(),
            size: 0x1000,
            readonly: false,
            owner: Arc::new(()),
        };
        let maps = m
            .add_memory(dev, 2, hr, 7, ones.clone(), Arc::default())
            .unwrap();

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
        m.add_registers(dev, 4, ones, Arc::default()).unwrap();
        m.map_bar(dev, &region(4, BarKind::Io, 0xc000, 0x10))
            .unwrap();
        assert!(pio.read(0xc004, &mut b));
        m.map_bar(dev, &region(5, BarKind::Io, 0xd000, 0x10))
            .unwrap();
        assert!(!pio.read(0xd000, &mut b));
    }

    #[test]
    fn build_places_a_plug_with_typed_bars_and_counts_its_registers() {
        let slots = Arc::new(FakeSlots::default());
        let io = Arc::new(IoBuses::new());
        let cfg = crate::config::object::parse("memory-backend-memfd,id=sh,size=1M").unwrap();
        let backend = Arc::new(memory::Backend::create(&cfg).unwrap());
        let dev = crate::ivshmem::parse("memdev=sh,addr=3", 0).unwrap();
        let plug = crate::ivshmem::plug::Ivshmem::new(&dev, backend).unwrap();
        let host = PciHost {
            config: ConfigAccess::Ports,
            windows: BarWindows {
                io: None,
                mmio32: 0xc000_0000..0xfec0_0000,
                mmio64: Some(0x1_0000_0000..0x11_0000_0000),
            },
            first_slot: 8,
        };
        let dyn_slots: Arc<dyn MemorySlots> = slots.clone();
        let pci = Pci::build(&dyn_slots, &io, &[plug.function()], &host).unwrap();
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
        let mut stats = crate::stats::Stats::default();
        plug.add_stats(&pci.placed()[0], &pci, &mut stats);
        let s = &stats.ivshmem[0];
        assert_eq!(
            (
                s.pci.as_str(),
                s.bar2_addr,
                s.bar2_maps,
                s.bar0_reads,
                s.bar2_exits
            ),
            ("00:03.0", Some(0x1_0000_0000), 1, 1, 0)
        );
        // The BAR registers are counted in their bus entries, by name.
        let bar0 = io
            .bus_stats()
            .into_iter()
            .find(|b| b.name == "ivshmem-plain #0 bar0")
            .unwrap();
        assert_eq!((bar0.base, bar0.reads), (Some(0xc000_0000), 1));
    }
}
