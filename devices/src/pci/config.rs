//! A type-0 PCI configuration space: 256 bytes, per-byte write and
//! write-one-to-clear masks, and up to six BARs with the sizing protocol.
//!
//! The sizing protocol falls out of the write mask: a BAR's address bits
//! below its size are read-only zero and its type bits are read-only, so
//! writing all-ones and reading back yields `!(size - 1) | type bits`.
//!
//! The space also decides where each BAR decodes (`decoded`): a BAR decodes
//! only while the command register enables its space (I/O or memory) and its
//! address is usable. Which host resources back a decoded BAR is not known
//! here; [`super::PciRoot`] turns decode changes into [`super::BarMapper`]
//! calls.

use std::fmt;

/// Size of the conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

pub const REG_VENDOR_ID: usize = 0x00;
pub const REG_DEVICE_ID: usize = 0x02;
pub const REG_COMMAND: usize = 0x04;
pub const REG_STATUS: usize = 0x06;
pub const REG_REVISION: usize = 0x08;
pub const REG_PROG_IF: usize = 0x09;
pub const REG_SUBCLASS: usize = 0x0a;
pub const REG_CLASS: usize = 0x0b;
pub const REG_CACHE_LINE: usize = 0x0c;
pub const REG_LATENCY: usize = 0x0d;
pub const REG_HEADER_TYPE: usize = 0x0e;
pub const REG_BAR0: usize = 0x10;
pub const REG_SUBSYS_VENDOR: usize = 0x2c;
pub const REG_SUBSYS_ID: usize = 0x2e;
pub const REG_ROM: usize = 0x30;
pub const REG_INTR_LINE: usize = 0x3c;
pub const REG_INTR_PIN: usize = 0x3d;

/// Command register bits a guest may change.
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_MASTER: u16 = 1 << 2;
pub const CMD_PARITY: u16 = 1 << 6;
pub const CMD_SERR: u16 = 1 << 8;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
const CMD_WRITABLE: u16 =
    CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE;
/// Status bits that are cleared by writing one (error reports).
const STATUS_W1C: u16 = 0xf900;

const BAR_IO: u32 = 0x1;
const BAR_MEM_64: u32 = 0x4;
const BAR_MEM_PREFETCH: u32 = 0x8;

/// A BAR's last byte must be below these.
const IO_SPACE_END: u64 = 0x1_0000;
const MEM32_SPACE_END: u64 = 0xffff_ffff;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarKind {
    Io,
    Memory32 { prefetchable: bool },
    Memory64 { prefetchable: bool },
}

impl BarKind {
    /// The read-only low bits of the BAR register.
    fn type_bits(self) -> u32 {
        match self {
            BarKind::Io => BAR_IO,
            BarKind::Memory32 { prefetchable } => {
                if prefetchable {
                    BAR_MEM_PREFETCH
                } else {
                    0
                }
            }
            BarKind::Memory64 { prefetchable } => {
                BAR_MEM_64 | if prefetchable { BAR_MEM_PREFETCH } else { 0 }
            }
        }
    }

    fn min_size(self) -> u64 {
        match self {
            BarKind::Io => 4,
            _ => 16,
        }
    }

    fn max_size(self) -> u64 {
        match self {
            BarKind::Io => 256,
            BarKind::Memory32 { .. } => 1 << 31,
            BarKind::Memory64 { .. } => 1 << 63,
        }
    }

    /// The address space the BAR decodes in.
    pub fn space(self) -> BarSpace {
        match self {
            BarKind::Io => BarSpace::Io,
            _ => BarSpace::Memory,
        }
    }
}

/// The address space of a decoded BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarSpace {
    Io,
    Memory,
}

/// Where one BAR decodes: guest port or physical address and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarRegion {
    pub index: usize,
    pub kind: BarKind,
    pub addr: u64,
    pub size: u64,
}

impl fmt::Display for BarRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.kind.space() {
            BarSpace::Io => "io",
            BarSpace::Memory => "mem",
        };
        write!(
            f,
            "BAR{} {space} {:#x}+{:#x}",
            self.index, self.addr, self.size
        )
    }
}

/// A change of one BAR's decode, the result of a configuration write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarChange {
    pub index: usize,
    pub old: Option<BarRegion>,
    pub new: Option<BarRegion>,
}

/// The identity registers of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code, subclass and programming interface as 0xCCSSPP.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// Errors from describing a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("BAR{0} does not exist (a type-0 header has BAR0..BAR5)")]
    BadIndex(usize),
    #[error("BAR{0} is already in use")]
    InUse(usize),
    #[error("BAR{index}: size {size:#x} must be a power of two in {min:#x}..={max:#x}")]
    BadSize {
        index: usize,
        size: u64,
        min: u64,
        max: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    kind: BarKind,
    size: u64,
}

/// Counters of configuration accesses, for exit statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigStats {
    pub reads: u64,
    pub writes: u64,
}

/// One function's configuration space.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    regs: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    w1cmask: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; NUM_BARS],
    /// A 64-bit BAR whose low half was written while it decoded: its move
    /// waits for the high half (or any other write) so the guest never sees
    /// the region at a half-updated address.
    pending_high: Option<usize>,
    /// What each BAR decoded after the last applied write.
    decoded: [Option<BarRegion>; NUM_BARS],
    stats: ConfigStats,
}

impl ConfigSpace {
    /// A type-0 header with the given identity, no BARs, decoding off.
    pub fn new(ids: PciIds) -> Self {
        let mut cs = ConfigSpace {
            regs: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            w1cmask: [0; CONFIG_SIZE],
            bars: [None; NUM_BARS],
            pending_high: None,
            decoded: [None; NUM_BARS],
            stats: ConfigStats::default(),
        };
        cs.set_u16(REG_VENDOR_ID, ids.vendor);
        cs.set_u16(REG_DEVICE_ID, ids.device);
        cs.regs[REG_REVISION] = ids.revision;
        cs.regs[REG_PROG_IF] = ids.class as u8;
        cs.regs[REG_SUBCLASS] = (ids.class >> 8) as u8;
        cs.regs[REG_CLASS] = (ids.class >> 16) as u8;
        cs.set_u16(REG_SUBSYS_VENDOR, ids.subsystem_vendor);
        cs.set_u16(REG_SUBSYS_ID, ids.subsystem);
        cs.set_mask16(REG_COMMAND, CMD_WRITABLE);
        cs.w1cmask[REG_STATUS..REG_STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        cs.wmask[REG_CACHE_LINE] = 0xff;
        cs.wmask[REG_LATENCY] = 0xff;
        cs.wmask[REG_INTR_LINE] = 0xff;
        cs
    }

    /// Declares BAR `index`; a 64-bit BAR also takes `index + 1`.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Result<(), Error> {
        let wide = matches!(kind, BarKind::Memory64 { .. });
        if index >= NUM_BARS || (wide && index + 1 >= NUM_BARS) {
            return Err(Error::BadIndex(index));
        }
        if self.is_bar_register(index) || (wide && self.is_bar_register(index + 1)) {
            return Err(Error::InUse(index));
        }
        let (min, max) = (kind.min_size(), kind.max_size());
        if !size.is_power_of_two() || size < min || size > max {
            return Err(Error::BadSize {
                index,
                size,
                min,
                max,
            });
        }
        self.bars[index] = Some(Bar { kind, size });
        let mask = !(size - 1);
        let off = REG_BAR0 + 4 * index;
        self.set_u32(off, kind.type_bits());
        let low_mask = match kind {
            BarKind::Io => (mask as u32) & !0x3,
            _ => (mask as u32) & !0xf,
        };
        self.set_mask32(off, low_mask);
        if wide {
            self.set_mask32(off + 4, (mask >> 32) as u32);
        }
        Ok(())
    }

    /// Whether BAR register `index` belongs to a declared BAR (either half).
    fn is_bar_register(&self, index: usize) -> bool {
        self.bars[index].is_some()
            || (index > 0
                && matches!(
                    self.bars[index - 1],
                    Some(Bar {
                        kind: BarKind::Memory64 { .. },
                        ..
                    })
                ))
    }

    /// Sets the interrupt pin register (0: none, 1..=4: INTA..INTD).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.regs[REG_INTR_PIN] = pin;
    }

    /// Sets the header type register (bit 7: multi-function).
    pub fn set_header_type(&mut self, header_type: u8) {
        self.regs[REG_HEADER_TYPE] = header_type;
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the space read 0xff.
    pub fn read(&mut self, offset: usize, data: &mut [u8]) {
        self.stats.reads += 1;
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Applies a guest write through the masks and returns the BARs whose
    /// decode changed. Bytes past the space are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        self.stats.writes += 1;
        for (i, &val) in data.iter().enumerate() {
            let Some(reg) = self.regs.get_mut(offset + i) else {
                break;
            };
            let (w, c) = (self.wmask[offset + i], self.w1cmask[offset + i]);
            *reg = ((*reg & !w) | (val & w)) & !(val & c);
        }
        let end = offset + data.len();
        let touches = |reg: usize| offset < reg + 4 && reg < end;
        // A low-half write of a decoding 64-bit BAR defers; anything else
        // (its high half, the command register, another register) applies.
        let deferred = (0..NUM_BARS).find(|&i| {
            let low = REG_BAR0 + 4 * i;
            matches!(
                self.bars[i],
                Some(Bar {
                    kind: BarKind::Memory64 { .. },
                    ..
                })
            ) && self.decoded[i].is_some()
                && touches(low)
                && !touches(low + 4)
                && offset >= low
                && end <= low + 4
        });
        match deferred {
            Some(i) if self.pending_high.is_none() || self.pending_high == Some(i) => {
                self.pending_high = Some(i);
                Vec::new()
            }
            _ => {
                self.pending_high = None;
                self.update_decode()
            }
        }
    }

    /// Recomputes every BAR's decode and returns what changed.
    fn update_decode(&mut self) -> Vec<BarChange> {
        let mut changes = Vec::new();
        for index in 0..NUM_BARS {
            let new = self.decode(index);
            let old = self.decoded[index];
            if new != old {
                self.decoded[index] = new;
                changes.push(BarChange { index, old, new });
            }
        }
        changes
    }

    /// Where BAR `index` decodes according to its registers and the command
    /// register, or None (space disabled, address zero or out of range).
    fn decode(&self, index: usize) -> Option<BarRegion> {
        let bar = self.bars[index]?;
        let cmd = self.command();
        let low = u64::from(self.u32_at(REG_BAR0 + 4 * index));
        let (enabled, addr, limit) = match bar.kind {
            BarKind::Io => (cmd & CMD_IO != 0, low & !0x3, IO_SPACE_END),
            BarKind::Memory32 { .. } => (cmd & CMD_MEMORY != 0, low & !0xf, MEM32_SPACE_END),
            BarKind::Memory64 { .. } => {
                let high = u64::from(self.u32_at(REG_BAR0 + 4 * index + 4));
                (cmd & CMD_MEMORY != 0, (high << 32) | (low & !0xf), u64::MAX)
            }
        };
        // Like QEMU: a BAR never decodes at 0, nor when its last byte would
        // be the last byte of 4 GiB or 2^64 (where the sizing value puts it).
        let last = addr.checked_add(bar.size - 1)?;
        (enabled && addr != 0 && last < limit).then_some(BarRegion {
            index,
            kind: bar.kind,
            addr,
            size: bar.size,
        })
    }

    /// What BAR `index` decodes now (as last applied).
    pub fn decoded(&self, index: usize) -> Option<BarRegion> {
        self.decoded.get(index).copied().flatten()
    }

    /// The declared BARs: index, kind and size.
    pub fn bars(&self) -> impl Iterator<Item = (usize, BarKind, u64)> + '_ {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b.kind, b.size)))
    }

    /// The address programmed into BAR `index` (whether or not it decodes).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let low = u64::from(self.u32_at(REG_BAR0 + 4 * index));
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 { .. } => low & !0xf,
            BarKind::Memory64 { .. } => {
                (u64::from(self.u32_at(REG_BAR0 + 4 * index + 4)) << 32) | (low & !0xf)
            }
        })
    }

    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.regs[REG_COMMAND], self.regs[REG_COMMAND + 1]])
    }

    pub fn stats(&self) -> ConfigStats {
        self.stats
    }

    fn u32_at(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.regs[off..off + 4]);
        u32::from_le_bytes(b)
    }

    fn set_u16(&mut self, off: usize, v: u16) {
        self.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, off: usize, v: u32) {
        self.regs[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set_mask16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_mask32(&mut self, off: usize, v: u32) {
        self.wmask[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: PciIds = PciIds {
        vendor: 0x1af4,
        device: 0x1110,
        revision: 1,
        class: 0x050000,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    };

    fn rd32(cs: &mut ConfigSpace, off: usize) -> u32 {
        let mut b = [0u8; 4];
        cs.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr32(cs: &mut ConfigSpace, off: usize, v: u32) -> Vec<BarChange> {
        cs.write(off, &v.to_le_bytes())
    }

    fn wr16(cs: &mut ConfigSpace, off: usize, v: u16) -> Vec<BarChange> {
        cs.write(off, &v.to_le_bytes())
    }

    fn space() -> ConfigSpace {
        let mut cs = ConfigSpace::new(IDS);
        cs.add_bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x100,
        )
        .unwrap();
        cs.add_bar(1, BarKind::Io, 0x20).unwrap();
        cs.add_bar(2, BarKind::Memory64 { prefetchable: true }, 1 << 33)
            .unwrap();
        cs.add_bar(4, BarKind::Memory32 { prefetchable: true }, 0x1000)
            .unwrap();
        cs
    }

    #[test]
    fn sizing_protocol_every_bar_kind() {
        let mut cs = space();
        for (off, want) in [
            (0x10, 0xffff_ff00u32), // 256 B mem32
            (0x14, 0xffff_ffe1),    // 32 B io
            (0x18, 0x0000_000c),    // 8 GiB mem64 prefetch: low half all address bits fixed
            (0x1c, 0xffff_fffe),    // high half: bit 33 and up
            (0x20, 0xffff_f008),    // 4 KiB mem32 prefetch
            (0x24, 0x0000_0000),    // absent BAR5
        ] {
            wr32(&mut cs, off, 0xffff_ffff);
            assert_eq!(rd32(&mut cs, off), want, "BAR register {off:#x}");
        }
        // Restoring zero reads back the type bits only.
        wr32(&mut cs, 0x18, 0);
        assert_eq!(rd32(&mut cs, 0x18), 0xc);
        assert_eq!(rd32(&mut cs, 0x14), 0xffff_ffe1);
    }

    #[test]
    fn small_mem64_sizes_in_low_half() {
        let mut cs = ConfigSpace::new(IDS);
        cs.add_bar(
            2,
            BarKind::Memory64 {
                prefetchable: false,
            },
            0x4000,
        )
        .unwrap();
        wr32(&mut cs, 0x18, !0);
        wr32(&mut cs, 0x1c, !0);
        assert_eq!(rd32(&mut cs, 0x18), 0xffff_c004);
        assert_eq!(rd32(&mut cs, 0x1c), 0xffff_ffff);
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut cs = space();
        for off in (0..0x40).step_by(4).filter(|o| !(0x10..0x28).contains(o)) {
            let before = rd32(&mut cs, off);
            wr32(&mut cs, off, 0x5a5a_5a5a);
            let after = rd32(&mut cs, off);
            let writable = match off {
                0x04 => u32::from(CMD_WRITABLE),
                0x0c => 0xffff,
                0x3c => 0xff,
                _ => 0,
            };
            let cleared = if off == 0x04 {
                0x5a5a_5a5a & 0xf900_0000
            } else {
                0
            };
            assert_eq!(
                after & !writable,
                before & !writable & !cleared,
                "register {off:#x}"
            );
            assert_eq!(
                after & writable,
                0x5a5a_5a5a & writable,
                "register {off:#x}"
            );
        }
        assert_eq!(rd32(&mut cs, 0x00), 0x1110_1af4);
        assert_eq!(rd32(&mut cs, 0x08), 0x0500_0001);
        assert_eq!(rd32(&mut cs, 0x2c), 0x1100_1af4);
    }

    #[test]
    fn status_error_bits_clear_on_write_one() {
        let mut cs = space();
        cs.regs[REG_STATUS + 1] = 0xf9;
        wr16(&mut cs, REG_STATUS, 0x0800);
        assert_eq!(cs.regs[REG_STATUS + 1], 0xf1);
    }

    #[test]
    fn bytes_past_the_space_read_all_ones() {
        let mut cs = space();
        let mut b = [0u8; 4];
        cs.read(254, &mut b);
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        cs.write(255, &[1, 2, 3]);
        assert_eq!(cs.regs[255], 0);
    }

    #[test]
    fn command_bits_gate_decode() {
        let mut cs = space();
        wr32(&mut cs, 0x10, 0xfebf_f000);
        wr32(&mut cs, 0x14, 0xc040);
        assert!(wr32(&mut cs, 0x18, 0).is_empty());
        assert!(wr32(&mut cs, 0x1c, 0x10).is_empty());
        assert!(cs.decoded(0).is_none());
        let ch = wr16(&mut cs, REG_COMMAND, CMD_MEMORY);
        let idx: Vec<usize> = ch.iter().map(|c| c.index).collect();
        assert_eq!(idx, vec![0, 2], "BAR4 at 0 does not decode");
        assert_eq!(cs.decoded(2).unwrap().addr, 0x10_0000_0000);
        assert_eq!(cs.decoded(0).unwrap().addr, 0xfebf_f000);
        assert!(cs.decoded(1).is_none());
        let ch = wr16(&mut cs, REG_COMMAND, CMD_IO);
        assert_eq!(ch.len(), 3);
        assert_eq!(
            cs.decoded(1),
            Some(BarRegion {
                index: 1,
                kind: BarKind::Io,
                addr: 0xc040,
                size: 0x20
            })
        );
        assert!(cs.decoded(0).is_none() && cs.decoded(2).is_none());
    }

    #[test]
    fn sizing_with_decode_on_never_maps_at_all_ones() {
        let mut cs = space();
        wr32(&mut cs, 0x10, 0xfebf_f000);
        wr16(&mut cs, REG_COMMAND, CMD_MEMORY);
        // 32-bit BAR written all-ones: 0xffffff00+0x100 reaches 4 GiB, not decoded.
        let ch = wr32(&mut cs, 0x10, !0);
        assert_eq!(
            ch,
            vec![BarChange {
                index: 0,
                old: cs_region(0, 0xfebf_f000),
                new: None
            }]
        );
        let ch = wr32(&mut cs, 0x10, 0xfebf_f000);
        assert_eq!(ch[0].new.unwrap().addr, 0xfebf_f000);
    }

    fn cs_region(index: usize, addr: u64) -> Option<BarRegion> {
        Some(BarRegion {
            index,
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            addr,
            size: 0x100,
        })
    }

    #[test]
    fn mem64_move_waits_for_high_half() {
        let mut cs = space();
        wr32(&mut cs, 0x18, 0);
        wr32(&mut cs, 0x1c, 0x10);
        wr16(&mut cs, REG_COMMAND, CMD_MEMORY);
        // Low half first: nothing moves yet.
        assert!(wr32(&mut cs, 0x18, 0).is_empty());
        let ch = wr32(&mut cs, 0x1c, 0x12);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].old.unwrap().addr, 0x10_0000_0000);
        assert_eq!(ch[0].new.unwrap().addr, 0x12_0000_0000);
        // A lone low-half write applies at the next other write.
        let mut cs = ConfigSpace::new(IDS);
        cs.add_bar(2, BarKind::Memory64 { prefetchable: true }, 0x1000)
            .unwrap();
        wr32(&mut cs, 0x18, 0x8000_0000);
        wr16(&mut cs, REG_COMMAND, CMD_MEMORY);
        assert!(wr32(&mut cs, 0x18, 0x9000_0000).is_empty());
        assert_eq!(cs.decoded(2).unwrap().addr, 0x8000_0000);
        let ch = wr16(&mut cs, REG_COMMAND, CMD_MEMORY | CMD_MASTER);
        assert_eq!(ch[0].new.unwrap().addr, 0x9000_0000);
        // Byte writes to the low half defer as well.
        assert!(cs.write(0x1b, &[0xa0]).is_empty());
        assert_eq!(wr32(&mut cs, 0x1c, 0)[0].new.unwrap().addr, 0xa000_0000);
    }

    #[test]
    fn add_bar_rejects_bad_layouts() {
        let mut cs = ConfigSpace::new(IDS);
        let m64 = BarKind::Memory64 {
            prefetchable: false,
        };
        assert_eq!(cs.add_bar(5, m64, 0x1000), Err(Error::BadIndex(5)));
        assert_eq!(cs.add_bar(6, BarKind::Io, 4), Err(Error::BadIndex(6)));
        assert!(matches!(
            cs.add_bar(0, BarKind::Io, 6),
            Err(Error::BadSize { .. })
        ));
        assert!(matches!(
            cs.add_bar(0, BarKind::Io, 512),
            Err(Error::BadSize { .. })
        ));
        assert!(matches!(cs.add_bar(0, m64, 8), Err(Error::BadSize { .. })));
        cs.add_bar(0, m64, 0x1000).unwrap();
        assert_eq!(cs.add_bar(1, BarKind::Io, 4), Err(Error::InUse(1)));
        assert_eq!(cs.add_bar(0, BarKind::Io, 4), Err(Error::InUse(0)));
        let msg = cs.add_bar(2, m64, 3).unwrap_err().to_string();
        assert!(
            msg.contains("BAR2") && msg.contains("power of two"),
            "{msg}"
        );
    }

    #[test]
    fn io_bar_above_64k_does_not_decode() {
        let mut cs = space();
        wr16(&mut cs, REG_COMMAND, CMD_IO);
        wr32(&mut cs, 0x14, 0x1_0000);
        assert_eq!(cs.decoded(1).map(|r| r.addr), None, "past 64 KiB");
        wr32(&mut cs, 0x14, 0xfff0);
        assert_eq!(
            cs.decoded(1).map(|r| r.addr),
            Some(0xffe0),
            "aligned down to its size"
        );
        wr32(&mut cs, 0x14, 0xffe0);
        assert_eq!(cs.decoded(1).map(|r| r.addr), Some(0xffe0));
    }
}
