//! The test pattern: a pure function of (seed, absolute offset), so any
//! sub-range of a region can be filled by one party and verified by another
//! (guest and host) without exchanging anything but the seed. The pattern
//! itself is the protocol crate's (`guest/protocol`), shared with the test
//! kernel; this module fills and checks byte ranges of it.

/// The pattern word covering absolute bytes `8*index .. 8*index+8`: the
/// protocol crate's region pattern, which is the test kernel's P1.
pub fn word(seed: u64, index: u64) -> u64 {
    protocol::region_word(seed, index)
}

/// The pattern byte at absolute offset `off` (little-endian within its word).
pub fn byte_at(seed: u64, off: u64) -> u8 {
    protocol::region_byte(seed, off)
}

/// Fills `buf`, which starts at absolute offset `base`, with the pattern.
pub fn fill(seed: u64, base: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(seed, base + i as u64);
    }
}

/// A pattern mismatch summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Absolute offset of the first wrong byte.
    pub first_offset: u64,
    /// The byte the pattern expects there.
    pub expected: u8,
    /// The byte found there.
    pub found: u8,
    /// How many bytes in the checked range are wrong.
    pub count: u64,
}

/// Accumulates mismatches over consecutive chunks of a verified range.
#[derive(Debug, Default)]
pub struct Checker {
    result: Option<Mismatch>,
}

impl Checker {
    /// Checks `buf`, which holds the bytes found at absolute offset `base`.
    pub fn check(&mut self, seed: u64, base: u64, buf: &[u8]) {
        for (i, &found) in buf.iter().enumerate() {
            let off = base + i as u64;
            let expected = byte_at(seed, off);
            if found != expected {
                match &mut self.result {
                    Some(m) => m.count += 1,
                    None => {
                        self.result = Some(Mismatch {
                            first_offset: off,
                            expected,
                            found,
                            count: 1,
                        })
                    }
                }
            }
        }
    }

    /// Checks whole pattern words: `words[i]` was read at absolute offset
    /// `base + 8*i`, with `base` a multiple of 8. Fast path for aligned ranges.
    pub fn check_words(&mut self, seed: u64, base: u64, words: &[u64]) {
        debug_assert_eq!(base % 8, 0);
        for (i, &w) in words.iter().enumerate() {
            let off = base + 8 * i as u64;
            if w != word(seed, off / 8) {
                self.check(seed, off, &w.to_le_bytes());
            }
        }
    }

    /// The first mismatch and the total count, if any byte was wrong.
    pub fn finish(self) -> Option<Mismatch> {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_test_kernels_p1() {
        for o in (0x1000..0x1100u64).step_by(8) {
            assert_eq!(word(7, o / 8), protocol::p1(o, 7));
        }
    }

    #[test]
    fn pattern_does_not_repeat_trivially() {
        let mut buf = vec![0u8; 4096];
        fill(7, 0, &mut buf);
        let zeros = buf.iter().filter(|&&b| b == 0).count();
        assert!(zeros < 64, "{zeros} zero bytes in 4 KiB of pattern");
        assert_ne!(buf[..8], buf[8..16]);
    }

    #[test]
    fn sub_range_fill_matches_whole_fill() {
        let mut whole = vec![0u8; 100];
        fill(42, 1000, &mut whole);
        let mut part = vec![0u8; 37];
        fill(42, 1013, &mut part);
        assert_eq!(&whole[13..50], &part[..]);
    }

    #[test]
    fn bytes_are_little_endian_words() {
        let w = word(3, 2).to_le_bytes();
        for (i, &b) in w.iter().enumerate() {
            assert_eq!(byte_at(3, 16 + i as u64), b);
        }
    }

    #[test]
    fn checker_accepts_good_and_counts_bad() {
        let mut buf = vec![0u8; 64];
        fill(9, 8, &mut buf);
        let mut c = Checker::default();
        c.check(9, 8, &buf);
        assert_eq!(c.finish(), None);

        buf[10] ^= 0xff;
        buf[40] ^= 0x01;
        let mut c = Checker::default();
        c.check(9, 8, &buf);
        let m = c.finish().expect("two bytes were corrupted");
        assert_eq!(m.first_offset, 18);
        assert_eq!(m.count, 2);
        assert_eq!(m.expected, byte_at(9, 18));
        assert_eq!(m.found, byte_at(9, 18) ^ 0xff);
    }

    #[test]
    fn word_checker_agrees_with_byte_checker() {
        let words: Vec<u64> = (0..16).map(|i| word(5, 4 + i)).collect();
        let mut c = Checker::default();
        c.check_words(5, 32, &words);
        assert_eq!(c.finish(), None);

        let mut bad = words.clone();
        bad[3] ^= 0xff00;
        let mut c = Checker::default();
        c.check_words(5, 32, &bad);
        let m = c.finish().expect("one byte was corrupted");
        assert_eq!(m.first_offset, 32 + 3 * 8 + 1);
        assert_eq!(m.count, 1);
    }

    #[test]
    fn wrong_seed_fails_in_every_word() {
        // P1 is offset-mixed XOR seed: another seed changes every word in
        // the bytes where the seeds differ.
        let mut buf = vec![0u8; 256];
        fill(0x1234_5678_9abc_def0, 0, &mut buf);
        let mut c = Checker::default();
        c.check(0x0fed_cba9_8765_4321, 0, &buf);
        let m = c.finish().expect("different seed");
        assert!(m.count > 200, "{m:?}");
        let mut c = Checker::default();
        c.check(3, 0, &buf[..8]);
        assert!(
            c.finish().is_some(),
            "a one-bit seed change shows in word 0"
        );
    }
}
