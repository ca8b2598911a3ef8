//! ivshmem-plain (1af4:1110): a PCI function whose BAR2 is a shared memory
//! region, as in QEMU's `-device ivshmem-plain,memdev=ID`.
//!
//! BAR0 holds 256 bytes of registers (IntrMask, IntrStatus, IVPosition,
//! Doorbell). Without a server there are no peers or interrupts, so the
//! registers only keep their values. BAR2 is a 64-bit prefetchable memory
//! BAR of the memdev's size; the VMM backs it with a hypervisor memory slot,
//! so guest accesses to it never reach this model. If one does (no slot was
//! there), it is counted as a BAR2 exit: the number a test expects to be 0.

use crate::pci::{BarKind, ConfigSpace, PciDevice, PciIds};

pub const VENDOR_ID: u16 = 0x1af4;
pub const DEVICE_ID: u16 = 0x1110;
pub const REVISION: u8 = 1;
/// Class 05 (memory controller), subclass 00 (RAM), prog-if 00.
pub const CLASS: u32 = 0x05_00_00;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const SUBSYSTEM_ID: u16 = 0x1100;

/// The register BAR and its size.
pub const REGISTER_BAR: usize = 0;
pub const REGISTER_BAR_SIZE: u64 = 256;
/// The shared memory BAR.
pub const MEMORY_BAR: usize = 2;

/// Register offsets in BAR0.
pub const REG_INTR_MASK: u64 = 0;
pub const REG_INTR_STATUS: u64 = 4;
pub const REG_IV_POSITION: u64 = 8;
pub const REG_DOORBELL: u64 = 12;

/// Errors from creating the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "ivshmem-plain: memdev size {0:#x} is not a power of two (a PCI BAR's size must be one)"
    )]
    SizeNotPowerOfTwo(u64),
    #[error("ivshmem-plain: memdev size {0:#x} is below the 4 KiB minimum")]
    SizeTooSmall(u64),
}

/// What the device saw, for exit statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IvshmemStats {
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar0_reads: u64,
    pub bar0_writes: u64,
    /// BAR0 accesses that were not 4 bytes wide and 4-byte aligned.
    pub bar0_bad_accesses: u64,
    /// Accesses to BAR2 that reached the device: VM exits caused by BAR2.
    pub bar2_exits: u64,
}

/// The ivshmem-plain function.
#[derive(Debug)]
pub struct IvshmemPlain {
    config: ConfigSpace,
    intr_mask: u32,
    intr_status: u32,
    stats: IvshmemStats,
    /// BAR2 exits happen when the guest touches it: rate-limited.
    warnings: crate::ratelimit::RateLimit,
}

impl IvshmemPlain {
    /// A device whose BAR2 is `memory_size` bytes (a power of two, >= 4 KiB).
    pub fn new(memory_size: u64) -> Result<Self, Error> {
        if !memory_size.is_power_of_two() {
            return Err(Error::SizeNotPowerOfTwo(memory_size));
        }
        if memory_size < 4096 {
            return Err(Error::SizeTooSmall(memory_size));
        }
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: REVISION,
            class: CLASS,
            subsystem_vendor: SUBSYSTEM_VENDOR_ID,
            subsystem: SUBSYSTEM_ID,
        });
        // Neither can fail: fixed indices and power-of-two sizes in range.
        let bars = [
            (
                REGISTER_BAR,
                BarKind::Memory32 {
                    prefetchable: false,
                },
                REGISTER_BAR_SIZE,
            ),
            (
                MEMORY_BAR,
                BarKind::Memory64 { prefetchable: true },
                memory_size,
            ),
        ];
        for (index, kind, size) in bars {
            config
                .add_bar(index, kind, size)
                .map_err(|_| Error::SizeNotPowerOfTwo(size))?;
        }
        Ok(IvshmemPlain {
            config,
            intr_mask: 0,
            intr_status: 0,
            stats: IvshmemStats::default(),
            warnings: Default::default(),
        })
    }

    pub fn stats(&self) -> IvshmemStats {
        let c = self.config.stats();
        IvshmemStats {
            config_reads: c.reads,
            config_writes: c.writes,
            ..self.stats
        }
    }

    fn register_read(&mut self, offset: u64) -> u32 {
        match offset {
            REG_INTR_MASK => self.intr_mask,
            // Reading the status clears it (QEMU's semantics).
            REG_INTR_STATUS => std::mem::take(&mut self.intr_status),
            // No server hands out peer IDs: every peer is 0.
            REG_IV_POSITION => 0,
            _ => 0,
        }
    }

    fn register_write(&mut self, offset: u64, value: u32) {
        match offset {
            REG_INTR_MASK => self.intr_mask = value,
            REG_INTR_STATUS => self.intr_status = value,
            // There are no peers to ring; IVPosition is read-only.
            _ => {}
        }
    }
}

/// A BAR0 access the registers answer: 4 bytes wide and 4-byte aligned.
pub(crate) fn is_register_access(offset: u64, len: usize) -> bool {
    len == 4 && offset.is_multiple_of(4) && offset < REGISTER_BAR_SIZE
}

impl PciDevice for IvshmemPlain {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        match index {
            REGISTER_BAR if is_register_access(offset, data.len()) => {
                self.stats.bar0_reads += 1;
                let v = self.register_read(offset);
                data.copy_from_slice(&v.to_le_bytes());
            }
            REGISTER_BAR => {
                self.stats.bar0_bad_accesses += 1;
                data.fill(0xff);
            }
            MEMORY_BAR => {
                self.stats.bar2_exits += 1;
                crate::warn_limited!(
                    self.warnings,
                    "ivshmem: BAR2 read at {offset:#x} exited to the VMM (no memory slot)"
                );
                data.fill(0xff);
            }
            _ => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        match index {
            REGISTER_BAR if is_register_access(offset, data.len()) => {
                self.stats.bar0_writes += 1;
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.register_write(offset, u32::from_le_bytes(b));
            }
            REGISTER_BAR => self.stats.bar0_bad_accesses += 1,
            MEMORY_BAR => {
                self.stats.bar2_exits += 1;
                crate::warn_limited!(
                    self.warnings,
                    "ivshmem: BAR2 write at {offset:#x} exited to the VMM (no memory slot)"
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{CMD_MEMORY, PciDevice};

    fn rd(d: &mut IvshmemPlain, off: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        d.read_config(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn bar0(d: &mut IvshmemPlain, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read_bar(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_registers() {
        let mut d = IvshmemPlain::new(1 << 20).unwrap();
        assert_eq!(rd(&mut d, 0x00, 2), 0x1af4);
        assert_eq!(rd(&mut d, 0x02, 2), 0x1110);
        assert_eq!(rd(&mut d, 0x08, 1), 1, "revision");
        assert_eq!(rd(&mut d, 0x09, 1), 0, "prog-if");
        assert_eq!(rd(&mut d, 0x0a, 2), 0x0500, "class 05 subclass 00");
        assert_eq!(rd(&mut d, 0x0e, 1), 0, "type-0 header");
        assert_eq!(rd(&mut d, 0x2c, 2), 0x1af4);
        assert_eq!(rd(&mut d, 0x2e, 2), 0x1100);
        assert_eq!(
            rd(&mut d, 0x04, 2),
            0,
            "decoding off until firmware or OS enables it"
        );
        assert_eq!(
            rd(&mut d, 0x3d, 1),
            0,
            "no interrupt pin: -plain has no interrupts"
        );
        assert_eq!(rd(&mut d, 0x34, 1), 0, "no capabilities (no MSI-X)");
        assert_eq!(rd(&mut d, 0x06, 2) & 0x10, 0, "status: no capability list");
    }

    #[test]
    fn bars_size_as_in_qemu() {
        let mut d = IvshmemPlain::new(64 << 20).unwrap();
        assert_eq!(
            rd(&mut d, 0x10, 4),
            0,
            "BAR0: 32-bit non-prefetchable memory"
        );
        assert_eq!(rd(&mut d, 0x18, 4), 0xc, "BAR2: 64-bit prefetchable memory");
        for off in (0x10..0x28).step_by(4) {
            d.write_config(off, &[0xff; 4]);
        }
        assert_eq!(rd(&mut d, 0x10, 4), 0xffff_ff00, "256 bytes");
        assert_eq!(rd(&mut d, 0x14, 4), 0);
        assert_eq!(rd(&mut d, 0x18, 4), 0xfc00_000c, "64 MiB");
        assert_eq!(rd(&mut d, 0x1c, 4), 0xffff_ffff);
        assert_eq!(rd(&mut d, 0x20, 4), 0);
        assert_eq!(rd(&mut d, 0x24, 4), 0);
        let mut d = IvshmemPlain::new(8 << 30).unwrap();
        d.write_config(0x18, &[0xff; 4]);
        d.write_config(0x1c, &[0xff; 4]);
        assert_eq!(
            (rd(&mut d, 0x18, 4), rd(&mut d, 0x1c, 4)),
            (0xc, 0xffff_fffe),
            "8 GiB"
        );
    }

    #[test]
    fn size_rules() {
        assert_eq!(
            IvshmemPlain::new(3 << 20).unwrap_err(),
            Error::SizeNotPowerOfTwo(3 << 20)
        );
        assert_eq!(
            IvshmemPlain::new(1024).unwrap_err(),
            Error::SizeTooSmall(1024)
        );
        let msg = Error::SizeNotPowerOfTwo(0x300000).to_string();
        assert!(
            msg.contains("0x300000") && msg.contains("power of two"),
            "{msg}"
        );
    }

    #[test]
    fn registers() {
        let mut d = IvshmemPlain::new(1 << 20).unwrap();
        d.write_bar(0, REG_INTR_MASK, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(bar0(&mut d, REG_INTR_MASK), 0xffff_ffff);
        d.write_bar(0, REG_INTR_STATUS, &5u32.to_le_bytes());
        assert_eq!(bar0(&mut d, REG_INTR_STATUS), 5);
        assert_eq!(bar0(&mut d, REG_INTR_STATUS), 0, "cleared by reading");
        d.write_bar(0, REG_IV_POSITION, &7u32.to_le_bytes());
        assert_eq!(
            bar0(&mut d, REG_IV_POSITION),
            0,
            "IVPosition is read-only 0"
        );
        d.write_bar(0, REG_DOORBELL, &0x0001_0000u32.to_le_bytes());
        assert_eq!(bar0(&mut d, REG_DOORBELL), 0);
        assert_eq!(bar0(&mut d, 0x80), 0, "unused registers read 0");
        // Narrow or unaligned accesses are ignored and read all-ones.
        let mut b = [0u8; 2];
        d.read_bar(0, 0, &mut b);
        assert_eq!(b, [0xff; 2]);
        d.write_bar(0, REG_INTR_MASK, &[0, 0]);
        d.write_bar(0, 2, &[0; 4]);
        assert_eq!(bar0(&mut d, REG_INTR_MASK), 0xffff_ffff);
        let s = d.stats();
        assert_eq!(
            (s.bar0_reads, s.bar0_writes, s.bar0_bad_accesses),
            (7, 4, 3)
        );
        assert_eq!(s.bar2_exits, 0);
    }

    #[test]
    fn bar2_exits_and_config_accesses_are_counted() {
        let mut d = IvshmemPlain::new(1 << 20).unwrap();
        let mut b = [0u8; 8];
        d.read_bar(2, 0x100, &mut b);
        assert_eq!(b, [0xff; 8]);
        d.write_bar(2, 0, &[1]);
        rd(&mut d, 0, 4);
        let ch = d.write_config(0x04, &CMD_MEMORY.to_le_bytes());
        assert!(ch.is_empty(), "BARs at address 0 do not decode");
        let s = d.stats();
        assert_eq!((s.bar2_exits, s.config_reads, s.config_writes), (2, 1, 1));
    }

    #[derive(Default)]
    struct Maps(std::sync::Mutex<Vec<(u8, usize, u64, u64)>>);

    impl crate::pci::BarMapper for Maps {
        fn map_bar(
            &self,
            d: crate::pci::PciAddress,
            r: &crate::pci::BarRegion,
        ) -> Result<(), crate::pci::MapError> {
            self.0
                .lock()
                .unwrap()
                .push((d.slot, r.index, r.addr, r.size));
            Ok(())
        }
        fn unmap_bar(
            &self,
            _: crate::pci::PciAddress,
            _: &crate::pci::BarRegion,
        ) -> Result<(), crate::pci::MapError> {
            Ok(())
        }
    }

    #[test]
    fn on_the_root_bus_found_by_scanning_and_placed_like_firmware() {
        use crate::pci::{BarWindows, PciAddress, PciRoot};
        use std::sync::{Arc, Mutex};
        let maps = Arc::new(Maps::default());
        let mut root = PciRoot::new(maps.clone());
        for (slot, size) in [(Some(4), 1u64 << 20), (None, 32 << 20)] {
            let dev = Arc::new(Mutex::new(IvshmemPlain::new(size).unwrap()));
            root.add_device(slot, dev).unwrap();
        }
        root.assign_bars(&BarWindows {
            io: None,
            mmio32: 0xc000_0000..0xfec0_0000,
            mmio64: Some(0x10_0000_0000..0x20_0000_0000),
        })
        .unwrap();
        let found: Vec<u8> = (0..32)
            .filter(|&slot| {
                let mut b = [0u8; 4];
                root.config_read(PciAddress::new(slot, 0), 0, &mut b);
                u32::from_le_bytes(b) == 0x1110_1af4
            })
            .collect();
        assert_eq!(found, vec![1, 4]);
        let mut maps = maps.0.lock().unwrap().clone();
        maps.sort();
        assert_eq!(
            maps,
            vec![
                (1, 0, 0xc000_0000, 0x100),
                (1, 2, 0x10_0000_0000, 32 << 20),
                (4, 0, 0xc000_0100, 0x100),
                (4, 2, 0x10_0200_0000, 1 << 20),
            ]
        );
    }
}
