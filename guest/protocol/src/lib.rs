//! The protocols between the test kernel and host-side code, written once:
//! the ivshmem handshake (header layout, states, the two patterns), the
//! multi-party slots, the memtest pattern, the region pattern of
//! `ivshmem-tool` and FNV-1a 64. Pure and `no_std`: the freestanding test
//! kernel, `tests/` (`shm-peer`, the harness), `ivshmem-tool` and the lab
//! runner all use this crate, so a pattern cannot drift between a guest and
//! its host peer. guest/testkernel/README.md describes the protocols.
//!
//! The host halves ([`host_handshake`], [`slots`]) and the guest half of
//! the handshake ([`guest_handshake`]) are generic over
//! [`Shared`], a region accessed with volatile loads and stores, and over a
//! [`Clock`], so they run unchanged over a host mapping in `shm-peer` and
//! `ivshmem-tool` and in unit tests here.

#![cfg_attr(not(test), no_std)]

mod guest;
mod host;

pub use guest::{GuestError, guest_handshake};
pub use host::{Clock, Error, Shared, host_handshake, slots};

/// Handshake header, at offset 0 of the region (BAR2).
pub const HDR_MAGIC: u64 = 0x00; // u32 MAGIC
pub const HDR_VERSION: u64 = 0x04; // u32 VERSION
pub const HDR_STATE: u64 = 0x08; // u32 STATE_*
pub const HDR_SEED: u64 = 0x10; // u64
pub const HDR_DATA_OFF: u64 = 0x18; // u64
pub const HDR_DATA_LEN: u64 = 0x20; // u64
/// "SHMV", little endian.
pub const MAGIC: u32 = 0x564D_4853;
pub const VERSION: u32 = 1;
/// Where the guest puts the handshake's data area.
pub const DATA_OFF: u64 = 0x1000;
pub const STATE_IDLE: u32 = 0;
/// The guest wrote P1 over the data area.
pub const STATE_GUEST_WROTE: u32 = 1;
/// The host verified P1 and wrote P2.
pub const STATE_HOST_WROTE: u32 = 2;
/// The guest verified P2.
pub const STATE_GUEST_OK: u32 = 3;
pub const STATE_GUEST_BAD: u32 = 4;
pub const STATE_HOST_BAD: u32 = 5;

pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Pattern P1 (written by the guest) at byte offset `o` of the region.
/// Also the region pattern of `ivshmem-tool fill/verify` ([`region_word`]).
#[inline(always)]
pub fn p1(o: u64, seed: u64) -> u64 {
    o.wrapping_mul(GOLDEN) ^ seed
}

/// Pattern P2 (written by the host) at byte offset `o` of the region.
#[inline(always)]
pub fn p2(o: u64, seed: u64) -> u64 {
    !p1(o, seed)
}

/// The region pattern word covering absolute bytes `8*index .. 8*index+8`
/// (`ivshmem-tool fill/verify`, the lab's mailbox protocol): P1, so a region
/// the tool fills with seed S over the handshake's data area holds exactly
/// what the test kernel writes as P1 with seed S.
#[inline(always)]
pub fn region_word(seed: u64, index: u64) -> u64 {
    p1(index.wrapping_mul(8), seed)
}

/// The region pattern byte at absolute offset `off` (little endian in its word).
#[inline(always)]
pub fn region_byte(seed: u64, off: u64) -> u8 {
    region_word(seed, off / 8).to_le_bytes()[(off % 8) as usize]
}

/// Multi-party slots: party `n` owns `SLOT_SIZE` bytes at `n * SLOT_SIZE`.
pub const SLOT_SIZE: u64 = 0x1000;
/// "SHMVSLOT", little endian; written last, at offset 0 of a slot.
pub const SLOT_MAGIC: u64 = 0x544F_4C53_564D_4853;
pub const SLOT_PARTY: u64 = 0x08; // u64 n
pub const SLOT_PARTIES: u64 = 0x10; // u64 parties
pub const SLOT_SEED: u64 = 0x18; // u64 seed
/// The first pattern word of a slot (words 4..512 hold [`slot_word`]).
pub const SLOT_FIRST_WORD: u64 = 4;

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

/// The lab's mailbox protocol (ivshmem between an L1 host process and an L2
/// Linux guest running `ivshmem-tool`): 8 bytes at offset 0, the region
/// pattern from `MAILBOX_DATA_OFF`. The host fills its pattern, then writes
/// `HOST_READY`; the guest verifies, fills its own, then writes `GUEST_DONE`.
pub const HOST_READY: &[u8; 8] = b"HOSTRDY!";
pub const GUEST_DONE: &[u8; 8] = b"GUESTDN!";
pub const MAILBOX_DATA_OFF: u64 = 0x1000;

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `bytes` (the test kernel's initrd hash).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The snapshot test (`shmvm.test=snapcount`): the guest fills a region
/// of `snap_mib` MiB with [`snapcount_init`], then runs `rounds` rounds of
/// [`snapcount_round`] over it, folding each round's checksum into a total
/// with [`snapcount_fold`]; every result depends on every earlier round,
/// so a restore that lost or repeated any memory or register state ends
/// with another total. Host tests compute the same total natively.
#[inline(always)]
pub fn snapcount_init(index: u64, seed: u64) -> u64 {
    memtest_pattern(index.wrapping_mul(8), seed)
}

/// One round over the region's words: each word is stepped (an LCG mixed
/// with its index and the round) and the round's checksum returned.
pub fn snapcount_round(words: &mut [u64], round: u64) -> u64 {
    let mut acc = FNV_OFFSET ^ round;
    for (i, w) in words.iter_mut().enumerate() {
        let v = w
            .wrapping_mul(0x5851_F42D_4C95_7F2D)
            .wrapping_add(round ^ i as u64);
        *w = v;
        acc = (acc ^ v).wrapping_mul(FNV_PRIME);
    }
    acc
}

/// The running total after a round with checksum `acc`.
#[inline(always)]
pub fn snapcount_fold(total: u64, acc: u64) -> u64 {
    total.rotate_left(7) ^ acc
}

/// Where the guest reports to a host peer over ivshmem after the last
/// round (`shmvm.test=snapcount-ivshmem`): the total at offset 0, then
/// [`SNAP_GUEST_DONE`] at 8; the host answers with a non-zero word at 16,
/// which the guest prints.
pub const SNAP_TOTAL_OFF: u64 = 0;
pub const SNAP_FLAG_OFF: u64 = 8;
pub const SNAP_HOST_OFF: u64 = 16;
pub const SNAP_GUEST_DONE: u64 = 0x454E_4F44_5041_4E53; // "SNAPDONE"

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
    fn region_pattern_is_p1() {
        for o in (DATA_OFF..DATA_OFF + 256).step_by(8) {
            assert_eq!(region_word(9, o / 8), p1(o, 9));
            let bytes = p1(o, 9).to_le_bytes();
            for (i, b) in bytes.iter().enumerate() {
                assert_eq!(region_byte(9, o + i as u64), *b);
            }
        }
        assert_ne!(region_word(1, 5), region_word(2, 5));
        assert_ne!(region_word(1, 5), region_word(1, 6));
    }

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&MAGIC.to_le_bytes(), b"SHMV");
        assert_eq!(&SLOT_MAGIC.to_le_bytes(), b"SHMVSLOT");
        assert_eq!(&SNAP_GUEST_DONE.to_le_bytes(), b"SNAPDONE");
    }
}
