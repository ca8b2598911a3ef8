//! BAR address assignment at VM start, as firmware does it: 32-bit memory
//! BARs in the MMIO hole below 4 GiB, 64-bit memory BARs in a window above
//! RAM (or the hole when there is none or it is full), I/O BARs in an I/O
//! window; every BAR naturally aligned (its address a multiple of its size).

use std::ops::Range;

use super::BarKind;

/// Guest address windows for BARs, from the VMM's memory layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarWindows {
    /// I/O ports for I/O BARs.
    pub io: Option<Range<u64>>,
    /// The MMIO hole below 4 GiB.
    pub mmio32: Range<u64>,
    /// A window above RAM for 64-bit BARs.
    pub mmio64: Option<Range<u64>>,
}

/// Errors from assigning an address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("no room for a {size:#x}-byte {} BAR: {}", kind_name(*kind), describe(windows))]
    NoRoom {
        kind: BarKind,
        size: u64,
        windows: BarWindows,
    },
}

fn kind_name(kind: BarKind) -> &'static str {
    match kind {
        BarKind::Io => "I/O",
        BarKind::Memory32 { .. } => "32-bit memory",
        BarKind::Memory64 { .. } => "64-bit memory",
    }
}

/// The windows as a reader wants them: ranges and sizes.
fn describe(w: &BarWindows) -> String {
    let range = |r: &Range<u64>| {
        format!(
            "{:#x}..{:#x} ({:#x} bytes)",
            r.start,
            r.end,
            r.end - r.start
        )
    };
    let mut s = format!("the 32-bit window is {}", range(&w.mmio32));
    if let Some(r) = &w.mmio64 {
        s.push_str(&format!(", the 64-bit window {}", range(r)));
    }
    if let Some(r) = &w.io {
        s.push_str(&format!(", the I/O window {}", range(r)));
    }
    s
}

/// A bump allocator over [`BarWindows`]. Feeding BARs largest first keeps
/// the alignment padding small.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    windows: BarWindows,
    next_io: u64,
    next32: u64,
    next64: u64,
}

impl BarAllocator {
    pub fn new(windows: BarWindows) -> Self {
        BarAllocator {
            next_io: windows.io.as_ref().map_or(0, |w| w.start),
            next32: windows.mmio32.start,
            next64: windows.mmio64.as_ref().map_or(0, |w| w.start),
            windows,
        }
    }

    /// Takes a naturally aligned address for a BAR of `size` bytes
    /// (a power of two, as every BAR is).
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, AllocError> {
        let no_room = || AllocError::NoRoom {
            kind,
            size,
            windows: self.windows.clone(),
        };
        match kind {
            BarKind::Io => {
                let w = self.windows.io.as_ref().ok_or_else(no_room)?;
                take(&mut self.next_io, w.end, size).ok_or_else(no_room)
            }
            BarKind::Memory32 { .. } => {
                take(&mut self.next32, self.windows.mmio32.end, size).ok_or_else(no_room)
            }
            BarKind::Memory64 { .. } => {
                if let Some(w) = &self.windows.mmio64
                    && let Some(a) = take(&mut self.next64, w.end, size)
                {
                    return Ok(a);
                }
                take(&mut self.next32, self.windows.mmio32.end, size).ok_or_else(no_room)
            }
        }
    }
}

/// Aligns `*next` up to `size`, takes `size` bytes if they end by `end`.
fn take(next: &mut u64, end: u64, size: u64) -> Option<u64> {
    if !size.is_power_of_two() {
        return None;
    }
    let start = next.checked_add(size - 1)? & !(size - 1);
    let stop = start.checked_add(size)?;
    (stop <= end).then(|| {
        *next = stop;
        start
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const M32: BarKind = BarKind::Memory32 {
        prefetchable: false,
    };
    const M64: BarKind = BarKind::Memory64 { prefetchable: true };

    fn windows() -> BarWindows {
        BarWindows {
            io: Some(0xc000..0x1_0000),
            mmio32: 0xc000_1000..0xfec0_0000,
            mmio64: Some(0x10_0000_0000..0x20_0000_0000),
        }
    }

    #[test]
    fn no_room_names_the_bar_and_the_windows() {
        let mut a = BarAllocator::new(windows());
        let e = a.allocate(M64, 1 << 40).unwrap_err().to_string();
        assert_eq!(
            e,
            "no room for a 0x10000000000-byte 64-bit memory BAR: the 32-bit window is \
             0xc0001000..0xfec00000 (0x3ebff000 bytes), the 64-bit window \
             0x1000000000..0x2000000000 (0x1000000000 bytes), the I/O window 0xc000..0x10000 (0x4000 bytes)"
        );
    }

    #[test]
    fn every_bar_is_naturally_aligned_inside_its_window() {
        let mut a = BarAllocator::new(windows());
        let mut got = Vec::new();
        for (kind, size) in [
            (M32, 0x100),
            (M32, 0x10_0000),
            (M64, 1 << 30),
            (M64, 0x1000),
            (M64, 1 << 32),
            (BarKind::Io, 0x20),
            (BarKind::Io, 0x4),
        ] {
            let addr = a.allocate(kind, size).unwrap();
            assert_eq!(addr % size, 0, "{kind:?} {size:#x} at {addr:#x}");
            got.push((kind, addr, size));
        }
        assert_eq!(got[0].1, 0xc000_1000);
        assert_eq!(got[1].1, 0xc010_0000);
        assert_eq!(got[2].1, 0x10_0000_0000);
        assert_eq!(got[3].1, 0x10_4000_0000);
        assert_eq!(got[4].1, 0x11_0000_0000);
        assert_eq!(got[5].1, 0xc000);
        assert_eq!(got[6].1, 0xc020);
        // No two ranges overlap.
        for (i, x) in got.iter().enumerate() {
            for y in &got[i + 1..] {
                let same_space = (x.0 == BarKind::Io) == (y.0 == BarKind::Io);
                assert!(
                    !same_space || x.1 + x.2 <= y.1 || y.1 + y.2 <= x.1,
                    "{x:x?} {y:x?}"
                );
            }
        }
    }

    #[test]
    fn mem64_falls_back_to_the_hole_and_exhaustion_is_an_error() {
        let mut a = BarAllocator::new(BarWindows {
            io: None,
            mmio32: 0xe000_0000..0xf000_0000,
            mmio64: None,
        });
        assert_eq!(a.allocate(M64, 0x1000_0000), Ok(0xe000_0000));
        assert!(a.allocate(M64, 0x1000_0000).is_err());
        let e = a.allocate(BarKind::Io, 4).unwrap_err().to_string();
        assert!(e.contains("no room for a 0x4-byte I/O BAR"), "{e}");
        let mut a = BarAllocator::new(windows());
        assert_eq!(
            a.allocate(M64, 1 << 36),
            Ok(0x10_0000_0000),
            "fills the window exactly"
        );
        assert!(a.allocate(M64, 1 << 36).is_err());
    }
}
