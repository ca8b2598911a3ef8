//! PCI: configuration space, a root bus with a host bridge, configuration
//! mechanism #1 (ports 0xCF8..0xCFF) and ECAM, and a firmware-like BAR
//! allocator, and the MSI-X table model every MSI-X function uses.
//!
//! How a VMM wires it:
//! 1. Implement [`BarMapper`]: it is told, per device and BAR, when a BAR
//!    starts or stops decoding at an address. A register BAR goes on the
//!    MMIO (or PIO) bus as a [`BarRegisters`] device; a memory-backed BAR
//!    becomes a hypervisor memory slot.
//! 2. `PciRoot::new(mapper)`, `add_device(...)` for each device, then
//!    `assign_bars(&windows)`, which programs BARs and enables decoding the
//!    way firmware would, so the mapper sees every initial mapping.
//! 3. Put [`PciConfigIo`] on the PIO bus at [`PCI_CONFIG_IO_BASE`]
//!    (length [`PCI_CONFIG_IO_LEN`]) and, if the guest is told about it
//!    (ACPI MCFG), [`PciConfigMmio`] on the MMIO bus.
//!
//! A guest that moves a BAR or toggles the command register's enable bits
//! reaches the mapper through the same path: an unmap of the old region,
//! then a map of the new one. A BAR decodes only while its space is enabled
//! in the command register and its address is usable (not 0, not where the
//! sizing value puts it). A 64-bit BAR whose low half is written while it
//! decodes moves once, when its high half is written (or at the next other
//! configuration write), never to a half-updated address; drivers that
//! disable decoding around the change (Linux, firmware) see no difference.

mod alloc;
pub mod config;
pub mod msix;
mod root;

#[cfg(test)]
mod proptests;

pub use alloc::{AllocError, BarAllocator, BarWindows};
pub use config::{
    BarChange, BarKind, BarRegion, BarSpace, CMD_INTX_DISABLE, CMD_IO, CMD_MASTER, CMD_MEMORY,
    CONFIG_SIZE, ConfigSpace, ConfigStats, Error as ConfigError, NUM_BARS, PciIds,
};
pub use root::{
    BarRegisters, Error, HostBridge, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN, PciConfigIo,
    PciConfigMmio, PciRoot, SharedPciDevice, SharedPciRoot,
};

use std::fmt;

/// A function on bus 0: slot (device number) and function number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub slot: u8,
    pub function: u8,
}

impl PciAddress {
    pub const fn new(slot: u8, function: u8) -> Self {
        PciAddress { slot, function }
    }

    /// Device/function byte as used in configuration addresses.
    pub fn devfn(self) -> u8 {
        (self.slot << 3) | (self.function & 7)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00:{:02x}.{}", self.slot, self.function)
    }
}

/// A PCI function: its configuration space and the accesses to BARs it
/// decodes itself (registers). Memory-backed BARs never reach the device;
/// an access that does (the hypervisor had no memory slot there) comes
/// through `read_bar`/`write_bar` like a register access.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// A guest read of the configuration space.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config_mut().read(offset, data);
    }

    /// A guest write of the configuration space; returns decode changes.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        self.config_mut().write(offset, data)
    }

    /// A guest read at `offset` into BAR `index`. Default: all-ones.
    fn read_bar(&mut self, _index: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A guest write at `offset` into BAR `index`. Default: ignored.
    fn write_bar(&mut self, _index: usize, _offset: u64, _data: &[u8]) {}
}

/// Refusal from a [`BarMapper`] (e.g. the hypervisor rejected a slot).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct MapError(pub String);

/// What a VMM implements so PCI devices can have their BARs placed; the
/// devices crate knows nothing about buses of the VMM or the hypervisor.
///
/// Calls come from a vCPU thread inside a configuration access (with the
/// root locked, device unlocked) or from `PciRoot::assign_bars`; an
/// implementation must not lock the root.
pub trait BarMapper: Send + Sync {
    /// BAR `region.index` of `device` starts decoding at `region`.
    /// An error leaves it unmapped (guest accesses then read all-ones).
    fn map_bar(&self, device: PciAddress, region: &BarRegion) -> Result<(), MapError>;
    /// The BAR stops decoding at `region` (it was mapped there).
    fn unmap_bar(&self, device: PciAddress, region: &BarRegion) -> Result<(), MapError>;
}
