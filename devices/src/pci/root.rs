//! The root bus (bus 0) with its host bridge, the two ways a guest reaches
//! configuration space (mechanism #1 ports, ECAM), and the adapter that puts
//! a device's register BAR on a [`Bus`](crate::bus::Bus).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    BarAllocator, BarChange, BarKind, BarMapper, BarWindows, CMD_IO, CMD_MEMORY, ConfigSpace,
    PciAddress, PciDevice, PciIds,
};
use crate::bus::BusDevice;

/// First port of configuration mechanism #1 (address register 0xCF8, data
/// 0xCFC..0xCFF).
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;

/// Slots on bus 0 (device numbers 0..=31).
const NUM_SLOTS: u8 = 32;
/// Bytes of ECAM space per bus (32 devices x 8 functions x 4 KiB).
pub(crate) const ECAM_BUS_SIZE: u64 = 1 << 20;

const CONFIG_ENABLE: u32 = 1 << 31;
/// Address register bits that hold state: enable, bus, device, function,
/// dword register (bits 30:24 and 1:0 are reserved, read as zero).
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;
pub type SharedPciRoot = Arc<Mutex<PciRoot>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors from building the root bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("PCI slot {0} does not exist on bus 0 (slots are 1..=31; 0 is the host bridge)")]
    BadSlot(u8),
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    #[error("no free PCI slot on bus 0")]
    NoFreeSlot,
    #[error("PCI device {device} BAR{index}: {source}")]
    Allocate {
        device: PciAddress,
        index: usize,
        #[source]
        source: super::AllocError,
    },
}

/// The host bridge at 00.0 (class 0x0600). It uses the ID QEMU gives its
/// generic PCIe host bridge (1b36:0008) rather than an Intel chipset's.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub const IDS: PciIds = PciIds {
        vendor: 0x1b36,
        device: 0x0008,
        revision: 0,
        class: 0x06_00_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    };

    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(Self::IDS),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// Bus 0: functions by device/function number, and the BAR mappings the
/// [`BarMapper`] accepted.
pub struct PciRoot {
    devices: BTreeMap<PciAddress, SharedPciDevice>,
    mapper: Arc<dyn BarMapper>,
    mapped: HashMap<(PciAddress, usize), super::BarRegion>,
    /// BAR (un)mapping failures: the guest picks the addresses, so these
    /// warnings are rate-limited.
    bar_warnings: crate::ratelimit::RateLimit,
}

impl fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PciRoot")
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl PciRoot {
    /// Bus 0 with the host bridge at 00.0.
    pub fn new(mapper: Arc<dyn BarMapper>) -> Self {
        let mut devices: BTreeMap<PciAddress, SharedPciDevice> = BTreeMap::new();
        devices.insert(
            PciAddress::new(0, 0),
            Arc::new(Mutex::new(HostBridge::new())),
        );
        PciRoot {
            devices,
            mapper,
            mapped: HashMap::new(),
            bar_warnings: Default::default(),
        }
    }

    /// Adds `device` as function 0 of `slot`, or of the first free slot.
    pub fn add_device(
        &mut self,
        slot: Option<u8>,
        device: SharedPciDevice,
    ) -> Result<PciAddress, Error> {
        let slot = match slot {
            Some(s) if s == 0 || s >= NUM_SLOTS => return Err(Error::BadSlot(s)),
            Some(s) if self.devices.contains_key(&PciAddress::new(s, 0)) => {
                return Err(Error::SlotInUse(s));
            }
            Some(s) => s,
            None => (1..NUM_SLOTS)
                .find(|&s| !self.devices.contains_key(&PciAddress::new(s, 0)))
                .ok_or(Error::NoFreeSlot)?,
        };
        let addr = PciAddress::new(slot, 0);
        self.devices.insert(addr, device);
        Ok(addr)
    }

    /// The function at `addr`, if any.
    pub fn device(&self, addr: PciAddress) -> Option<SharedPciDevice> {
        self.devices.get(&addr).cloned()
    }

    /// Where the mapper currently has BAR `index` of `addr`.
    pub fn mapped(&self, addr: PciAddress, index: usize) -> Option<super::BarRegion> {
        self.mapped.get(&(addr, index)).copied()
    }

    /// A configuration read; an absent function reads all-ones.
    pub fn config_read(&self, addr: PciAddress, offset: usize, data: &mut [u8]) {
        match self.devices.get(&addr) {
            Some(dev) => lock(dev).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; an absent function ignores it. BARs whose
    /// decode changed are unmapped/mapped through the mapper.
    pub fn config_write(&mut self, addr: PciAddress, offset: usize, data: &[u8]) {
        let Some(dev) = self.devices.get(&addr) else {
            return;
        };
        // The device lock is dropped before the mapper runs.
        let changes = lock(dev).write_config(offset, data);
        for change in changes {
            self.apply(addr, change);
        }
    }

    fn apply(&mut self, addr: PciAddress, change: BarChange) {
        if let Some(old) = self.mapped.remove(&(addr, change.index)) {
            match self.mapper.unmap_bar(addr, &old) {
                Ok(()) => log::debug!("pci {addr}: unmapped {old}"),
                Err(e) => crate::warn_limited!(
                    self.bar_warnings,
                    "pci {addr}: unmapping {old} failed: {e}"
                ),
            }
        }
        if let Some(new) = change.new {
            match self.mapper.map_bar(addr, &new) {
                Ok(()) => {
                    log::debug!("pci {addr}: mapped {new}");
                    self.mapped.insert((addr, change.index), new);
                }
                Err(e) => crate::warn_limited!(
                    self.bar_warnings,
                    "pci {addr}: mapping {new} failed, left unmapped: {e}"
                ),
            }
        }
    }

    /// Assigns every BAR an address from `windows` (largest first, naturally
    /// aligned), writes it into the BAR and enables I/O / memory decoding,
    /// as firmware does before the OS runs.
    pub fn assign_bars(&mut self, windows: &BarWindows) -> Result<(), Error> {
        let mut alloc = BarAllocator::new(windows.clone());
        let mut bars: Vec<(PciAddress, usize, BarKind, u64)> = Vec::new();
        for (&addr, dev) in &self.devices {
            let dev = lock(dev);
            bars.extend(dev.config().bars().map(|(i, k, s)| (addr, i, k, s)));
        }
        bars.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        let mut enable: BTreeMap<PciAddress, u16> = BTreeMap::new();
        for (addr, index, kind, size) in bars {
            let base = alloc
                .allocate(kind, size)
                .map_err(|source| Error::Allocate {
                    device: addr,
                    index,
                    source,
                })?;
            let reg = super::config::REG_BAR0 + 4 * index;
            self.config_write(addr, reg, &(base as u32).to_le_bytes());
            if matches!(kind, BarKind::Memory64 { .. }) {
                self.config_write(addr, reg + 4, &((base >> 32) as u32).to_le_bytes());
            }
            *enable.entry(addr).or_default() |= if kind == BarKind::Io {
                CMD_IO
            } else {
                CMD_MEMORY
            };
        }
        for (addr, bits) in enable {
            let mut cmd = [0u8; 2];
            self.config_read(addr, super::config::REG_COMMAND, &mut cmd);
            let cmd = u16::from_le_bytes(cmd) | bits;
            self.config_write(addr, super::config::REG_COMMAND, &cmd.to_le_bytes());
        }
        Ok(())
    }
}

/// Configuration mechanism #1 on the PIO bus at 0xCF8..0xCFF.
///
/// The address register takes dword accesses at 0xCF8 only; narrower
/// accesses to 0xCF8..0xCFB read all-ones and are ignored (on chipsets they
/// reach other registers, such as the reset control at 0xCF9). The data
/// window takes byte, word and dword accesses at any offset of 0xCFC..0xCFF.
pub struct PciConfigIo {
    root: SharedPciRoot,
    address: u32,
}

impl fmt::Debug for PciConfigIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PciConfigIo {{ address: {:#x} }}", self.address)
    }
}

impl PciConfigIo {
    pub fn new(root: SharedPciRoot) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// The function and register the address register selects, if enabled
    /// and on bus 0.
    fn target(&self, data_offset: u64) -> Option<(PciAddress, usize)> {
        let a = self.address;
        if a & CONFIG_ENABLE == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let dev = PciAddress::new(((a >> 11) & 0x1f) as u8, ((a >> 8) & 0x7) as u8);
        Some((dev, (a & 0xfc) as usize + data_offset as usize))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => {
                // Only the bytes inside the data window are meaningful.
                let n = data.len().min(8 - offset as usize);
                data.fill(0xff);
                if let Some((dev, reg)) = self.target(offset - 4) {
                    lock(&self.root).config_read(dev, reg, &mut data[..n]);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.address = u32::from_le_bytes(b) & CONFIG_ADDRESS_MASK;
            }
            4..=7 => {
                let n = data.len().min(8 - offset as usize);
                if let Some((dev, reg)) = self.target(offset - 4) {
                    lock(&self.root).config_write(dev, reg, &data[..n]);
                }
            }
            _ => {}
        }
    }
}

/// ECAM (MMCONFIG) on the MMIO bus: 1 MiB per bus, 4 KiB per function.
/// Only bus 0 exists; registers past the 256-byte conventional space and
/// other buses read all-ones. Accesses must not cross a dword.
pub struct PciConfigMmio {
    root: SharedPciRoot,
}

impl fmt::Debug for PciConfigMmio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PciConfigMmio")
    }
}

impl PciConfigMmio {
    /// Bytes of MMIO space to give it for bus 0 only.
    pub const BUS0_SIZE: u64 = ECAM_BUS_SIZE;

    pub fn new(root: SharedPciRoot) -> Self {
        PciConfigMmio { root }
    }

    fn target(offset: u64, len: usize) -> Option<(PciAddress, usize)> {
        let reg = (offset & 0xfff) as usize;
        let in_dword = (reg & 3) + len <= 4;
        if offset >= ECAM_BUS_SIZE || reg >= super::CONFIG_SIZE || !in_dword {
            return None;
        }
        let dev = PciAddress::new(((offset >> 15) & 0x1f) as u8, ((offset >> 12) & 0x7) as u8);
        Some((dev, reg))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some((dev, reg)) => lock(&self.root).config_read(dev, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((dev, reg)) = Self::target(offset, data.len()) {
            lock(&self.root).config_write(dev, reg, data);
        }
    }
}

/// One register BAR of a device as a bus device: the VMM inserts it on its
/// MMIO (or PIO) bus where the BAR is mapped.
pub struct BarRegisters {
    device: SharedPciDevice,
    index: usize,
}

impl fmt::Debug for BarRegisters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BarRegisters {{ index: {} }}", self.index)
    }
}

impl BarRegisters {
    pub fn new(device: SharedPciDevice, index: usize) -> Self {
        BarRegisters { device, index }
    }
}

impl BusDevice for BarRegisters {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.index, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.index, offset, data);
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
