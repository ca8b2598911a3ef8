//! The virtio-pci function: configuration space with the virtio and MSI-X
//! capabilities, and the register BAR (common configuration, ISR, device
//! configuration, notifications, MSI-X table and PBA).

use super::msix::{self, Msix, MsixVector};
use super::{
    NO_VECTOR, NotifyRegion, PCI_DEVICE_ID_BASE, PCI_REVISION, PCI_VENDOR_ID, QueueConfig,
    TransportEvents, features, status,
};
use crate::pci::{BarChange, BarKind, ConfigError, ConfigSpace, PciDevice, PciIds};

/// The one BAR (64-bit memory, taking BAR0 and BAR1) with every region.
pub const BAR_INDEX: usize = 0;
pub const BAR_SIZE: u64 = 0x8000;
/// Regions in the BAR, one page each so a VMM could map them apart.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
const REGION_SIZE: u64 = 0x1000;
/// Bytes of the common configuration structure we decode (up to and
/// including queue_notify_data/queue_reset, which read as zero).
pub const COMMON_CFG_LEN: u64 = 0x40;
/// Queue `q` is kicked at NOTIFY_OFFSET + q * 4.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// Most queues a function may have (the MSI-X table's room).
pub const MAX_QUEUES: u16 = 511;

/// Vendor-specific capability ID and virtio structure types (spec 4.1.4).
const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// Class code: mass storage / SCSI, as QEMU's virtio-blk-pci (Linux does
/// not look at it; lspci does).
const CLASS_STORAGE_SCSI: u32 = 0x01_00_00;
const CLASS_OTHER: u32 = 0xff_00_00;
const SUBSYSTEM_ID: u16 = 0x1100;

/// Common configuration register offsets (spec 4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// What a virtio-pci function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciConfig {
    /// Virtio device type (2: block).
    pub device_type: u16,
    /// Features the device offers; VERSION_1 is always added and the bits
    /// in [`features::TRANSPORT_UNSUPPORTED`] are removed.
    pub features: u64,
    /// Number of virtqueues (1..=[`MAX_QUEUES`]).
    pub queues: u16,
    /// Largest size of each queue (a power of two, <= 32768).
    pub max_queue_size: u16,
    /// Bytes of device-specific configuration (<= 4096).
    pub device_config_len: u32,
}

/// Counters of what reached the model, for `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportStats {
    pub common_reads: u64,
    pub common_writes: u64,
    pub device_config_accesses: u64,
    /// Queue notifications that exited to the VMM instead of an ioeventfd.
    pub notify_exits: u64,
    pub msix_writes: u64,
    pub resets: u64,
    pub driver_ok: u64,
    pub bad_accesses: u64,
}

#[derive(Debug, Clone, Copy)]
struct Queue {
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl Queue {
    fn new(max: u16) -> Self {
        Queue {
            size: max,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// A modern virtio-pci function. The owner gets the events.
pub struct VirtioPci {
    config: ConfigSpace,
    cfg: VirtioPciConfig,
    /// Offered features.
    offered: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    msix: Msix,
    msix_cap: usize,
    /// Where the notification region was last reported.
    notify_at: Option<u64>,
    owner: Box<dyn TransportEvents>,
    stats: TransportStats,
    /// The driver's mistakes are the guest's to make: rate-limited.
    warnings: crate::ratelimit::RateLimit,
    /// Names the function in those warnings (the `-device` value).
    name: String,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("type", &self.cfg.device_type)
            .field("status", &self.status)
            .field("queues", &self.queues.len())
            .finish()
    }
}

/// Errors in a [`VirtioPciConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("virtio-pci: {0} queues (must be 1..={MAX_QUEUES})")]
    Queues(u16),
    #[error("virtio-pci: queue size {0} (must be a power of two, 1..=32768)")]
    QueueSize(u16),
    #[error("virtio-pci: device configuration of {0} bytes (at most 4096)")]
    DeviceConfig(u32),
    #[error("virtio-pci: {0}")]
    Config(#[from] ConfigError),
}

/// A vendor-specific virtio capability (`struct virtio_pci_cap`, plus the
/// notify multiplier for the notify structure).
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, multiplier: Option<u32>) -> Vec<u8> {
    let len = if multiplier.is_some() { 20 } else { 16 };
    let mut c = vec![0u8; len];
    c[0] = CAP_VENDOR;
    c[2] = len as u8;
    c[3] = cfg_type;
    c[4] = BAR_INDEX as u8;
    c[8..12].copy_from_slice(&(offset as u32).to_le_bytes());
    c[12..16].copy_from_slice(&(length as u32).to_le_bytes());
    if let Some(m) = multiplier {
        c[16..20].copy_from_slice(&m.to_le_bytes());
    }
    c
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Replaces bytes `[lo, lo + len)` (bits 8*lo..) of `field` with `value`.
fn set_part(field: &mut u64, lo: u64, len: usize, value: u64) {
    let bits = 8 * len as u32;
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let shift = 8 * lo as u32;
    *field = (*field & !(mask << shift)) | ((value & mask) << shift);
}

impl VirtioPci {
    pub fn new(cfg: VirtioPciConfig, owner: Box<dyn TransportEvents>) -> Result<Self, Error> {
        if cfg.queues == 0 || cfg.queues > MAX_QUEUES {
            return Err(Error::Queues(cfg.queues));
        }
        if !cfg.max_queue_size.is_power_of_two() || cfg.max_queue_size > 32768 {
            return Err(Error::QueueSize(cfg.max_queue_size));
        }
        if u64::from(cfg.device_config_len) > REGION_SIZE {
            return Err(Error::DeviceConfig(cfg.device_config_len));
        }
        let class = if cfg.device_type == super::TYPE_BLOCK {
            CLASS_STORAGE_SCSI
        } else {
            CLASS_OTHER
        };
        let mut config = ConfigSpace::new(PciIds {
            vendor: PCI_VENDOR_ID,
            device: PCI_DEVICE_ID_BASE + cfg.device_type,
            revision: PCI_REVISION,
            class,
            subsystem_vendor: PCI_VENDOR_ID,
            subsystem: SUBSYSTEM_ID,
        });
        config.add_bar(
            BAR_INDEX,
            BarKind::Memory64 {
                prefetchable: false,
            },
            BAR_SIZE,
        )?;
        let notify_len = u64::from(cfg.queues) * u64::from(NOTIFY_OFF_MULTIPLIER);
        let mut caps = vec![
            virtio_cap(CFG_COMMON, COMMON_CFG_OFFSET, COMMON_CFG_LEN, None),
            virtio_cap(CFG_ISR, ISR_OFFSET, 4, None),
            virtio_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
        ];
        // A device without configuration (virtio-rng) has no device
        // capability, as in QEMU: Linux refuses one of length 0 ("bad
        // capability len") and then fails the whole probe.
        if cfg.device_config_len > 0 {
            caps.push(virtio_cap(
                CFG_DEVICE,
                DEVICE_CFG_OFFSET,
                u64::from(cfg.device_config_len),
                None,
            ));
        }
        for c in caps {
            // Nothing in these capabilities is guest-writable.
            config.add_capability(&c, &vec![0; c.len()])?;
        }
        // One vector for configuration changes, one per queue.
        let msix = Msix::new(cfg.queues + 1);
        let (body, mask) = msix.capability(
            BAR_INDEX as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
        );
        let msix_cap = config.add_capability(&body, &mask)?;
        let offered = (cfg.features | features::VERSION_1) & !features::TRANSPORT_UNSUPPORTED;
        Ok(VirtioPci {
            config,
            cfg,
            offered,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: vec![Queue::new(cfg.max_queue_size); usize::from(cfg.queues)],
            msix,
            msix_cap,
            notify_at: None,
            owner,
            stats: TransportStats::default(),
            warnings: Default::default(),
            name: "virtio-pci".into(),
        })
    }

    /// Names the function in the driver-error warnings (default
    /// `virtio-pci`): with several virtio devices a line must say which.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The features offered to the driver.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// The features the driver acknowledged (meaningful after FEATURES_OK).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn device_status(&self) -> u8 {
        self.status
    }

    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// The device broke (its model found the rings unusable): sets
    /// DEVICE_NEEDS_RESET while the driver runs it (spec 2.1.2); the
    /// driver's reset clears it.
    pub fn set_needs_reset(&mut self) {
        if self.status & status::DRIVER_OK != 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
        }
    }

    /// Offset of the MSI-X capability in configuration space.
    pub fn msix_capability(&self) -> usize {
        self.msix_cap
    }

    /// Back to the power-on state (MSI-X table and capability untouched:
    /// they belong to PCI, not to the virtio device).
    fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.msix_config = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        let max = self.cfg.max_queue_size;
        self.queues.iter_mut().for_each(|q| *q = Queue::new(max));
        self.stats.resets += 1;
        self.owner.reset();
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// The value of the common configuration field at `off` (its first
    /// byte) with its width, or None for an unknown offset.
    fn common_field(&self, off: u64) -> Option<(u64, u64)> {
        use common::*;
        let q = self.selected();
        Some(match off {
            DEVICE_FEATURE_SELECT => (u64::from(self.device_feature_select), 4),
            DEVICE_FEATURE => {
                let f = match self.device_feature_select {
                    0 => self.offered & 0xffff_ffff,
                    1 => self.offered >> 32,
                    _ => 0,
                };
                (f, 4)
            }
            DRIVER_FEATURE_SELECT => (u64::from(self.driver_feature_select), 4),
            DRIVER_FEATURE => {
                let f = match self.driver_feature_select {
                    0 => self.driver_features & 0xffff_ffff,
                    1 => self.driver_features >> 32,
                    _ => 0,
                };
                (f, 4)
            }
            MSIX_CONFIG => (u64::from(self.msix_config), 2),
            NUM_QUEUES => (u64::from(self.cfg.queues), 2),
            DEVICE_STATUS => (u64::from(self.status), 1),
            CONFIG_GENERATION => (0, 1),
            QUEUE_SELECT => (u64::from(self.queue_select), 2),
            QUEUE_SIZE => (q.map_or(0, |q| u64::from(q.size)), 2),
            QUEUE_MSIX_VECTOR => (q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)), 2),
            QUEUE_ENABLE => (q.map_or(0, |q| u64::from(q.enabled)), 2),
            QUEUE_NOTIFY_OFF => (q.map_or(0, |_| u64::from(self.queue_select)), 2),
            QUEUE_DESC => (q.map_or(0, |q| q.desc), 8),
            QUEUE_DRIVER => (q.map_or(0, |q| q.driver), 8),
            QUEUE_DEVICE => (q.map_or(0, |q| q.device), 8),
            // queue_notify_data, queue_reset (not offered): read as zero.
            0x38 | 0x3a => (0, 2),
            _ => return None,
        })
    }

    /// Splits an access into (field start, byte offset inside the field).
    /// Accesses must stay inside one field and be naturally aligned to
    /// their size (the 64-bit fields also take 32-bit halves).
    fn common_target(off: u64, len: usize) -> Option<(u64, u64)> {
        let len = len as u64;
        if !matches!(len, 1 | 2 | 4 | 8) || !off.is_multiple_of(len) || off >= COMMON_CFG_LEN {
            return None;
        }
        let start = match off {
            0x20..0x38 => off & !7,
            0x14 | 0x15 => off,
            0x10..0x20 | 0x38..0x40 => off & !1,
            _ => off & !3,
        };
        Some((start, off - start))
    }

    fn read_common(&mut self, off: u64, data: &mut [u8]) {
        self.stats.common_reads += 1;
        let field = Self::common_target(off, data.len())
            .and_then(|(start, lo)| Some((self.common_field(start)?, lo)));
        match field {
            Some(((value, width), lo)) if lo + data.len() as u64 <= width => {
                let bytes = (value >> (8 * lo)).to_le_bytes();
                data.copy_from_slice(&bytes[..data.len()]);
            }
            _ => {
                self.stats.bad_accesses += 1;
                data.fill(0);
            }
        }
    }

    fn write_common(&mut self, off: u64, data: &[u8]) {
        use common::*;
        self.stats.common_writes += 1;
        let Some((start, lo)) = Self::common_target(off, data.len()) else {
            self.stats.bad_accesses += 1;
            return;
        };
        let width = self.common_field(start).map_or(0, |(_, w)| w);
        if lo + data.len() as u64 > width {
            self.stats.bad_accesses += 1;
            return;
        }
        let v = le(data);
        let configurable = self.status & status::DRIVER_OK == 0;
        match start {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            DRIVER_FEATURE if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => set_part(&mut self.driver_features, lo, data.len(), v),
                    1 => set_part(&mut self.driver_features, 4 + lo, data.len(), v),
                    _ => {}
                }
            }
            MSIX_CONFIG => self.msix_config = self.valid_vector(v as u16),
            DEVICE_STATUS => self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(v as u16);
                if let Some(q) = self.selected_mut() {
                    q.vector = vector;
                }
            }
            QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE
                if configurable =>
            {
                let max = self.cfg.max_queue_size;
                let Some(q) = self.selected_mut() else { return };
                match start {
                    // A size the device cannot take is not applied.
                    QUEUE_SIZE if (v as u16).is_power_of_two() && v as u16 <= max => {
                        q.size = v as u16;
                    }
                    QUEUE_ENABLE if v == 1 => q.enabled = true,
                    QUEUE_DESC if !q.enabled => set_part(&mut q.desc, lo, data.len(), v),
                    QUEUE_DRIVER if !q.enabled => set_part(&mut q.driver, lo, data.len(), v),
                    QUEUE_DEVICE if !q.enabled => set_part(&mut q.device, lo, data.len(), v),
                    _ => {}
                }
            }
            // Read-only fields, or writes the current state forbids.
            _ => {}
        }
    }

    /// A vector number the table has, else NO_VECTOR (what the driver reads
    /// back to learn the assignment failed).
    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix.vectors() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = v | (old & status::DEVICE_NEEDS_RESET);
        if new & status::FEATURES_OK != 0
            && old & status::FEATURES_OK == 0
            && let Err(e) = self.check_features()
        {
            crate::warn_limited!(
                self.warnings,
                "{}: features {:#x} refused: {e}",
                self.name,
                self.driver_features
            );
            new &= !status::FEATURES_OK;
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            match self.activate(new) {
                Ok(()) => self.stats.driver_ok += 1,
                Err(e) => {
                    crate::warn_limited!(
                        self.warnings,
                        "{}: cannot start the device: {e}",
                        self.name
                    );
                    new |= status::DEVICE_NEEDS_RESET;
                }
            }
        }
        self.status = new;
    }

    fn check_features(&mut self) -> Result<(), String> {
        let f = self.driver_features;
        if f & !self.offered != 0 {
            return Err(format!("bits {:#x} were not offered", f & !self.offered));
        }
        if f & features::VERSION_1 == 0 {
            return Err("VERSION_1 is required by a modern device".into());
        }
        self.owner.features_ok(f)
    }

    fn activate(&mut self, new_status: u8) -> Result<(), String> {
        if new_status & status::FEATURES_OK == 0 {
            return Err("DRIVER_OK without FEATURES_OK".into());
        }
        let queues: Vec<QueueConfig> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .map(|(i, q)| QueueConfig {
                index: i as u16,
                size: q.size,
                vector: q.vector,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
            })
            .collect();
        self.owner.driver_ok(&queues)
    }

    fn report_msix(&mut self, changes: Vec<(u16, MsixVector)>) {
        for (v, state) in changes {
            self.owner.msix_vector(v, state);
        }
    }

    fn update_notify_region(&mut self) {
        let at = self.config.decoded(BAR_INDEX).map(|r| r.addr);
        if at == self.notify_at {
            return;
        }
        self.notify_at = at;
        self.owner.notify_region(at.map(|base| NotifyRegion {
            base: base + NOTIFY_OFFSET,
            multiplier: NOTIFY_OFF_MULTIPLIER,
            queues: self.cfg.queues,
        }));
    }
}

impl PciDevice for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write(offset, data);
        if let Some(control) =
            crate::pci::msix::control_written(&self.config, self.msix_cap, offset, data.len())
        {
            let c = self.msix.set_control(control);
            self.report_msix(c);
        }
        if changes.iter().any(|c| c.index == BAR_INDEX) {
            self.update_notify_region();
        }
        changes
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        if index != BAR_INDEX {
            data.fill(0xff);
            return;
        }
        let (region, off) = (offset / REGION_SIZE * REGION_SIZE, offset % REGION_SIZE);
        let fits = off + data.len() as u64 <= REGION_SIZE;
        match region {
            COMMON_CFG_OFFSET if fits => self.read_common(off, data),
            // No INTx: the ISR status is always zero (MSI-X only).
            ISR_OFFSET => data.fill(0),
            DEVICE_CFG_OFFSET
                if off + data.len() as u64 <= u64::from(self.cfg.device_config_len) =>
            {
                self.stats.device_config_accesses += 1;
                self.owner.read_config(off, data);
            }
            MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET => {
                self.msix.read_table(offset - MSIX_TABLE_OFFSET, data)
            }
            MSIX_PBA_OFFSET => self.msix.read_pba(off, data),
            _ => {
                self.stats.bad_accesses += 1;
                data.fill(0);
            }
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index != BAR_INDEX {
            return;
        }
        let (region, off) = (offset / REGION_SIZE * REGION_SIZE, offset % REGION_SIZE);
        let fits = off + data.len() as u64 <= REGION_SIZE;
        match region {
            COMMON_CFG_OFFSET if fits => self.write_common(off, data),
            DEVICE_CFG_OFFSET
                if off + data.len() as u64 <= u64::from(self.cfg.device_config_len) =>
            {
                self.stats.device_config_accesses += 1;
                self.owner.write_config(off, data);
            }
            NOTIFY_OFFSET
                if off < u64::from(self.cfg.queues) * u64::from(NOTIFY_OFF_MULTIPLIER) =>
            {
                self.stats.notify_exits += 1;
                let queue = (off / u64::from(NOTIFY_OFF_MULTIPLIER)) as u16;
                self.owner.queue_notify(queue);
            }
            MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET => {
                self.stats.msix_writes += 1;
                let c = self.msix.write_table(offset - MSIX_TABLE_OFFSET, data);
                self.report_msix(c);
            }
            _ => self.stats.bad_accesses += 1,
        }
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;

// The table (a vector per queue plus one) fits below the PBA, and the
// notification addresses fit in their page.
const _: () =
    assert!(msix::ENTRY_SIZE * (MAX_QUEUES as u64 + 1) <= MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET);
const _: () = assert!(MAX_QUEUES as u64 * NOTIFY_OFF_MULTIPLIER as u64 <= REGION_SIZE);
