//! `-device ivshmem-plain`: the device model (`devices::ivshmem`) as a PCI
//! function whose BAR0 holds its registers and whose BAR2 is its memdev's
//! mapping, a memory slot. Shared by both machines (x86_64 `machine/`,
//! aarch64 `arch/aarch64/machine.rs`).

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::sync::{Arc, Mutex};

use devices::ivshmem::{IvshmemPlain, MEMORY_BAR, REGISTER_BAR};
use memory::Backend;

use crate::ivshmem::IvshmemConfig;
use crate::pci::{BarBacking, HostRegion, Pci, PciFunction, PciPlug, Placed};
use crate::stats::{IvshmemStats, Stats};

/// One ivshmem-plain device and the backend it shares.
#[derive(Debug)]
pub struct Ivshmem {
    name: String,
    slot: Option<u8>,
    qdev_id: Option<String>,
    memdev: Arc<Backend>,
    device: Arc<Mutex<IvshmemPlain>>,
}

/// Errors creating the device; each names it.
#[derive(Debug, thiserror::Error)]
#[error("{device}: {err}")]
pub struct Error {
    device: String,
    #[source]
    err: devices::ivshmem::Error,
}

impl Ivshmem {
    /// The device for `cfg`, sharing `memdev` (the backend its `memdev=`
    /// names; the configuration layer checked it).
    pub fn new(cfg: &IvshmemConfig, memdev: Arc<Backend>) -> Result<Ivshmem, Error> {
        let name = cfg.to_string();
        let device = IvshmemPlain::new(memdev.size()).map_err(|err| Error {
            device: name.clone(),
            err,
        })?;
        log::info!("{name}: memdev '{}' ({} bytes)", memdev.id(), memdev.size());
        Ok(Ivshmem {
            name,
            slot: cfg.slot,
            qdev_id: cfg.id.clone(),
            memdev,
            device: Arc::new(Mutex::new(device)),
        })
    }
}

impl PciPlug for Ivshmem {
    fn function(&self) -> PciFunction {
        let region = HostRegion {
            host: self.memdev.as_ptr(),
            size: self.memdev.size(),
            readonly: self.memdev.readonly(),
            owner: self.memdev.clone(),
        };
        PciFunction {
            name: self.name.clone(),
            slot: self.slot,
            qdev_id: self.qdev_id.clone(),
            device: self.device.clone(),
            bars: vec![
                (REGISTER_BAR, BarBacking::Registers),
                (MEMORY_BAR, BarBacking::Memory(region)),
            ],
            requester: None,
        }
    }

    fn add_stats(&self, placed: &Placed, pci: &Pci, stats: &mut Stats) {
        let s = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats();
        stats.ivshmem.push(IvshmemStats {
            name: self.name.clone(),
            pci: placed.address.to_string(),
            memdev: self.memdev.id().to_string(),
            bar2_addr: pci.bar_address(placed.address, MEMORY_BAR),
            bar2_maps: Pci::memory_maps(placed, MEMORY_BAR),
            config_reads: s.config_reads,
            config_writes: s.config_writes,
            bar0_reads: s.bar0_reads,
            bar0_writes: s.bar0_writes,
            bar0_bad: s.bar0_bad_accesses,
            bar2_exits: s.bar2_exits,
        });
    }
}
