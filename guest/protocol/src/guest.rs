//! The guest half of the handshake, over any [`Shared`] region (the test
//! kernel's BAR2) and [`Clock`]: write the header and P1, wait for the
//! host's P2, verify it, write the verdict. The host half is
//! [`crate::host_handshake`].

use core::sync::atomic::{Ordering, fence};

use crate::*;

/// Why the guest half failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestError {
    /// The host never wrote P2; `state` is the header's last state.
    Timeout { state: u32 },
    /// The host found P1 wrong (it wrote STATE_HOST_BAD).
    HostSawBadP1,
    /// P2 differs at byte offset `at` (the guest wrote STATE_GUEST_BAD).
    P2Mismatch { at: u64, got: u64, want: u64 },
}

/// The guest half of the handshake over the whole region `r`.
pub fn guest_handshake<S: Shared, C: Clock>(
    r: &S,
    seed: u64,
    clock: &mut C,
) -> Result<(), GuestError> {
    let size = r.size();
    r.write32(HDR_STATE, STATE_IDLE);
    r.write32(HDR_MAGIC, MAGIC);
    r.write32(HDR_VERSION, VERSION);
    r.write64(HDR_SEED, seed);
    r.write64(HDR_DATA_OFF, DATA_OFF);
    r.write64(HDR_DATA_LEN, size - DATA_OFF);
    let mut o = DATA_OFF;
    while o + 8 <= size {
        r.write64(o, p1(o, seed));
        o += 8;
    }
    fence(Ordering::Release);
    r.write32(HDR_STATE, STATE_GUEST_WROTE);
    loop {
        match r.read32(HDR_STATE) {
            STATE_HOST_WROTE => break,
            STATE_HOST_BAD => return Err(GuestError::HostSawBadP1),
            state if clock.expired() => return Err(GuestError::Timeout { state }),
            _ => clock.pause(),
        }
    }
    fence(Ordering::Acquire);
    let mut o = DATA_OFF;
    while o + 8 <= size {
        let (got, want) = (r.read64(o), p2(o, seed));
        if got != want {
            r.write32(HDR_STATE, STATE_GUEST_BAD);
            return Err(GuestError::P2Mismatch { at: o, got, want });
        }
        o += 8;
    }
    r.write32(HDR_STATE, STATE_GUEST_OK);
    Ok(())
}
