//! Free-RAM arithmetic over the memory map (pure; unit-tested on the host).

pub const E820_RAM: u32 = 1;
pub const MAX_RANGES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820 {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    pub kind: u32,
}

/// Usable RAM minus some holes, as 8-byte aligned [start, end) ranges.
pub struct Ranges {
    pub r: [(u64, u64); MAX_RANGES],
    pub n: usize,
    pub bytes: u64,
    /// Highest usable RAM address (exclusive).
    pub top: u64,
}

impl Ranges {
    pub const EMPTY: Ranges = Ranges {
        r: [(0, 0); MAX_RANGES],
        n: 0,
        bytes: 0,
        top: 0,
    };

    /// Type-1 entries of `map` minus `holes` (empty holes are ignored).
    pub fn compute(&mut self, map: &[E820], holes: &[(u64, u64)]) {
        self.n = 0;
        self.bytes = 0;
        self.top = 0;
        for e in map {
            if e.kind != E820_RAM || e.end <= e.start {
                continue;
            }
            self.top = self.top.max(e.end);
            self.add_minus(e.start, e.end, holes);
        }
    }

    fn add_minus(&mut self, s: u64, t: u64, holes: &[(u64, u64)]) {
        let Some((&(h0, h1), rest)) = holes.split_first() else {
            let (s, t) = ((s + 7) & !7, t & !7);
            if t > s && self.n < MAX_RANGES {
                self.r[self.n] = (s, t);
                self.n += 1;
                self.bytes += t - s;
            }
            return;
        };
        if h1 <= h0 || h1 <= s || h0 >= t {
            return self.add_minus(s, t, rest);
        }
        if s < h0 {
            self.add_minus(s, h0, rest);
        }
        if h1 < t {
            self.add_minus(h1, t, rest);
        }
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.r[..self.n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(start: u64, end: u64) -> E820 {
        E820 {
            start,
            end,
            kind: E820_RAM,
        }
    }

    #[test]
    fn holes_split_ranges_and_reserved_entries_are_skipped() {
        let map = [
            ram(0, 0x9fc00),
            E820 {
                start: 0x9fc00,
                end: 0x100000,
                kind: 2,
            },
            ram(0x100000, 0x8000000),
            ram(0x1_0000_0000, 0x1_4000_0000),
        ];
        let mut r = Ranges::EMPTY;
        r.compute(
            &map,
            &[
                (0x100000, 0x178048),
                (0x7fb6000, 0x7fb6000 + 300000),
                (0, 0),
            ],
        );
        assert_eq!(
            r.as_slice(),
            &[
                (0, 0x9fc00),
                (0x178048, 0x7fb6000),
                ((0x7fb6000 + 300000 + 7) & !7, 0x8000000),
                (0x1_0000_0000, 0x1_4000_0000)
            ]
        );
        assert_eq!(r.top, 0x1_4000_0000);
        assert_eq!(
            r.bytes,
            r.as_slice().iter().map(|(s, t)| t - s).sum::<u64>()
        );
    }

    #[test]
    fn a_hole_covering_a_range_removes_it_and_ends_are_aligned() {
        let mut r = Ranges::EMPTY;
        r.compute(
            &[ram(0x1003, 0x2005), ram(0x5000, 0x6000)],
            &[(0x4000, 0x7000)],
        );
        assert_eq!(r.as_slice(), &[(0x1008, 0x2000)]);
    }
}
