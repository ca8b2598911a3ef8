//! Patterns and layouts shared with host-side code (tests include this file
//! with `#[path]`; README.md documents the same). Pure functions, no_std.

/// Handshake header (offsets in BAR2).
pub const HDR_MAGIC: u64 = 0x00; // u32 "SHMV"
pub const HDR_VERSION: u64 = 0x04; // u32 1
pub const HDR_STATE: u64 = 0x08; // u32 STATE_*
pub const HDR_SEED: u64 = 0x10; // u64
pub const HDR_DATA_OFF: u64 = 0x18; // u64
pub const HDR_DATA_LEN: u64 = 0x20; // u64
pub const MAGIC: u32 = 0x564D_4853;
pub const DATA_OFF: u64 = 0x1000;
pub const STATE_IDLE: u32 = 0;
pub const STATE_GUEST_WROTE: u32 = 1;
pub const STATE_HOST_WROTE: u32 = 2;
pub const STATE_GUEST_OK: u32 = 3;
pub const STATE_GUEST_BAD: u32 = 4;
pub const STATE_HOST_BAD: u32 = 5;

pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Pattern P1 (written by the guest) at byte offset `o` of BAR2.
#[inline(always)]
pub fn p1(o: u64, seed: u64) -> u64 {
    o.wrapping_mul(GOLDEN) ^ seed
}

/// Pattern P2 (written by the host) at byte offset `o` of BAR2.
#[inline(always)]
pub fn p2(o: u64, seed: u64) -> u64 {
    !p1(o, seed)
}

pub const SLOT_SIZE: u64 = 0x1000;
pub const SLOT_MAGIC: u64 = 0x544F_4C53_564D_4853; // "SHMVSLOT"

/// Slot pattern word `i` (4..512) of party `n`.
#[inline(always)]
pub fn slot_word(seed: u64, n: u64, i: u64) -> u64 {
    (seed ^ ((n + 1) << 32) ^ i).wrapping_mul(GOLDEN)
}

/// Memtest pattern: the value stored at physical address `a`.
#[inline(always)]
pub fn memtest_pattern(a: u64, seed: u64) -> u64 {
    a ^ seed ^ 0xA5A5_A5A5_5A5A_5A5A
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn patterns_differ_everywhere() {
        for o in (DATA_OFF..DATA_OFF + 4096).step_by(8) {
            assert_eq!(p1(o, 7) ^ p2(o, 7), u64::MAX);
            assert_ne!(p1(o, 7), p1(o + 8, 7));
        }
        assert_ne!(slot_word(1, 0, 4), slot_word(1, 1, 4));
        assert_ne!(slot_word(1, 0, 4), slot_word(2, 0, 4));
    }

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&MAGIC.to_le_bytes(), b"SHMV");
        assert_eq!(&SLOT_MAGIC.to_le_bytes(), b"SHMVSLOT");
    }
}
