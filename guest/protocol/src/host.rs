//! The host halves of the test kernel's region protocols, over any
//! [`Shared`] region and [`Clock`].

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use crate::*;

/// A shared region another party writes concurrently: every access is a
/// volatile load or store of an aligned word at a byte offset below `len`.
/// Implementations panic on an offset outside the region (a bug in the
/// caller: the protocols below check offsets they read from the region).
pub trait Shared {
    /// The region's size in bytes.
    fn size(&self) -> u64;
    fn read32(&self, off: u64) -> u32;
    fn write32(&self, off: u64, v: u32);
    fn read64(&self, off: u64) -> u64;
    fn write64(&self, off: u64, v: u64);
}

/// Time for the waits of a protocol: `expired` once the deadline passed,
/// `pause` between two polls.
pub trait Clock {
    fn expired(&mut self) -> bool;
    fn pause(&mut self);
}

/// What a waiting party waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    GuestPattern,
    GuestVerdict,
    Slot(u64),
}

/// Why a host half failed. (A hand-written `Display`: this crate has no
/// dependencies, so it builds for the freestanding test kernel as is.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    Timeout(Awaited),
    BadHeader {
        off: u64,
        len: u64,
        region: u64,
    },
    P1Mismatch {
        at: u64,
        got: u64,
        want: u64,
    },
    GuestSawBadP2,
    BadSlot {
        me: u64,
        parties: u64,
        region: u64,
    },
    PartiesMismatch {
        slot: u64,
        says: u64,
        want: u64,
    },
    SlotWord {
        slot: u64,
        word: u64,
        got: u64,
        want: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Timeout(Awaited::GuestPattern) => {
                write!(f, "timed out waiting for the guest's pattern (state 1)")
            }
            Error::Timeout(Awaited::GuestVerdict) => {
                write!(f, "timed out waiting for the guest's verdict (state 3)")
            }
            Error::Timeout(Awaited::Slot(n)) => write!(f, "timed out waiting for slot {n}"),
            Error::BadHeader { off, len, region } => write!(
                f,
                "bad header: data at {off:#x}+{len:#x} in a {region:#x} region"
            ),
            Error::P1Mismatch { at, got, want } => {
                write!(f, "P1 mismatch at {at:#x}: got {got:#x}, want {want:#x}")
            }
            Error::GuestSawBadP2 => write!(f, "the guest saw a P2 mismatch"),
            Error::BadSlot {
                me,
                parties,
                region,
            } => {
                write!(f, "bad slot {me} of {parties} for a {region:#x} region")
            }
            Error::PartiesMismatch { slot, says, want } => {
                write!(f, "slot {slot} says {says} parties, not {want}")
            }
            Error::SlotWord {
                slot,
                word,
                got,
                want,
            } => {
                write!(f, "slot {slot} word {word}: got {got:#x}, want {want:#x}")
            }
        }
    }
}

impl core::error::Error for Error {}

fn wait<C: Clock>(
    clock: &mut C,
    what: Awaited,
    mut done: impl FnMut() -> Option<Result<(), Error>>,
) -> Result<(), Error> {
    loop {
        if let Some(r) = done() {
            return r;
        }
        if clock.expired() {
            return Err(Error::Timeout(what));
        }
        clock.pause();
    }
}

/// The host half of the handshake: wait for the guest's P1, verify it,
/// write P2, wait for the guest's verdict. Returns the data length checked.
/// Start from a zeroed region: a stale header would be taken as fresh.
pub fn host_handshake<S: Shared, C: Clock>(r: &S, clock: &mut C) -> Result<u64, Error> {
    wait(clock, Awaited::GuestPattern, || {
        (r.read32(HDR_MAGIC) == MAGIC && r.read32(HDR_STATE) == STATE_GUEST_WROTE).then_some(Ok(()))
    })?;
    fence(Ordering::Acquire);
    let seed = r.read64(HDR_SEED);
    let (off, len) = (r.read64(HDR_DATA_OFF), r.read64(HDR_DATA_LEN));
    let end = off
        .checked_add(len)
        .filter(|&e| e <= r.size() && off >= DATA_OFF && off.is_multiple_of(8));
    let Some(end) = end else {
        r.write32(HDR_STATE, STATE_HOST_BAD);
        return Err(Error::BadHeader {
            off,
            len,
            region: r.size(),
        });
    };
    // A trailing partial word is not part of the pattern.
    let end = end - (end - off) % 8;
    for o in (off..end).step_by(8) {
        let (got, want) = (r.read64(o), p1(o, seed));
        if got != want {
            r.write32(HDR_STATE, STATE_HOST_BAD);
            return Err(Error::P1Mismatch { at: o, got, want });
        }
    }
    for o in (off..end).step_by(8) {
        r.write64(o, p2(o, seed));
    }
    fence(Ordering::Release);
    r.write32(HDR_STATE, STATE_HOST_WROTE);
    wait(clock, Awaited::GuestVerdict, || match r.read32(HDR_STATE) {
        STATE_GUEST_OK => Some(Ok(())),
        STATE_GUEST_BAD => Some(Err(Error::GuestSawBadP2)),
        _ => None,
    })?;
    Ok(len)
}

/// One party of the slots protocol: write slot `me`, wait until all
/// `parties` slots are written, verify every one.
pub fn slots<S: Shared, C: Clock>(
    r: &S,
    me: u64,
    parties: u64,
    seed: u64,
    clock: &mut C,
) -> Result<(), Error> {
    let fits = parties
        .checked_mul(SLOT_SIZE)
        .is_some_and(|n| n <= r.size());
    if parties == 0 || me >= parties || !fits {
        return Err(Error::BadSlot {
            me,
            parties,
            region: r.size(),
        });
    }
    let base = me * SLOT_SIZE;
    for i in SLOT_FIRST_WORD..SLOT_SIZE / 8 {
        r.write64(base + 8 * i, slot_word(seed, me, i));
    }
    r.write64(base + SLOT_PARTY, me);
    r.write64(base + SLOT_PARTIES, parties);
    r.write64(base + SLOT_SEED, seed);
    fence(Ordering::Release);
    r.write64(base, SLOT_MAGIC);
    for n in 0..parties {
        let s = n * SLOT_SIZE;
        wait(clock, Awaited::Slot(n), || {
            (r.read64(s) == SLOT_MAGIC
                && r.read64(s + SLOT_PARTY) == n
                && r.read64(s + SLOT_SEED) == seed)
                .then_some(Ok(()))
        })?;
        fence(Ordering::Acquire);
        let says = r.read64(s + SLOT_PARTIES);
        if says != parties {
            return Err(Error::PartiesMismatch {
                slot: n,
                says,
                want: parties,
            });
        }
        for i in SLOT_FIRST_WORD..SLOT_SIZE / 8 {
            let (got, want) = (r.read64(s + 8 * i), slot_word(seed, n, i));
            if got != want {
                return Err(Error::SlotWord {
                    slot: n,
                    word: i,
                    got,
                    want,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    /// A region of atomics: the two parties of a test share it across threads.
    #[derive(Clone)]
    struct Mem(Arc<Vec<AtomicU64>>);

    impl Mem {
        fn new(len: u64) -> Mem {
            Mem(Arc::new((0..len / 8).map(|_| AtomicU64::new(0)).collect()))
        }
    }

    impl Shared for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64 * 8
        }
        fn read32(&self, off: u64) -> u32 {
            let w = self.read64(off & !7);
            (w >> (8 * (off & 4))) as u32
        }
        fn write32(&self, off: u64, v: u32) {
            let a = &self.0[(off / 8) as usize];
            let shift = 8 * (off & 4);
            let mut w = a.load(Ordering::SeqCst);
            loop {
                let new = (w & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
                match a.compare_exchange(w, new, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return,
                    Err(cur) => w = cur,
                }
            }
        }
        fn read64(&self, off: u64) -> u64 {
            self.0[(off / 8) as usize].load(Ordering::SeqCst)
        }
        fn write64(&self, off: u64, v: u64) {
            self.0[(off / 8) as usize].store(v, Ordering::SeqCst)
        }
    }

    struct Deadline(Instant);

    impl Deadline {
        fn after(ms: u64) -> Deadline {
            Deadline(Instant::now() + Duration::from_millis(ms))
        }
    }

    impl Clock for Deadline {
        fn expired(&mut self) -> bool {
            Instant::now() > self.0
        }
        fn pause(&mut self) {
            std::thread::yield_now();
        }
    }

    /// The guest half, as the test kernel runs it.
    fn guest(m: &Mem, seed: u64, bad_p1: bool) -> bool {
        m.write64(HDR_SEED, seed);
        m.write64(HDR_DATA_OFF, DATA_OFF);
        m.write64(HDR_DATA_LEN, m.size() - DATA_OFF);
        for o in (DATA_OFF..m.size()).step_by(8) {
            m.write64(o, p1(o, seed) ^ u64::from(bad_p1));
        }
        m.write32(HDR_MAGIC, MAGIC);
        m.write32(HDR_STATE, STATE_GUEST_WROTE);
        loop {
            match m.read32(HDR_STATE) {
                STATE_HOST_WROTE => break,
                STATE_HOST_BAD => return false,
                _ => std::thread::yield_now(),
            }
        }
        let ok = (DATA_OFF..m.size())
            .step_by(8)
            .all(|o| m.read64(o) == p2(o, seed));
        m.write32(HDR_STATE, if ok { STATE_GUEST_OK } else { STATE_GUEST_BAD });
        ok
    }

    #[test]
    fn handshake_against_the_guest_half() {
        let m = Mem::new(0x4000);
        let g = m.clone();
        let t = std::thread::spawn(move || guest(&g, 0x1234, false));
        assert_eq!(host_handshake(&m, &mut Deadline::after(10_000)), Ok(0x3000));
        assert!(t.join().unwrap());
    }

    #[test]
    fn the_guest_half_against_the_host_half() {
        let m = Mem::new(0x4000);
        let g = m.clone();
        let t = std::thread::spawn(move || {
            crate::guest_handshake(&g, 0x77, &mut Deadline::after(10_000))
        });
        assert_eq!(host_handshake(&m, &mut Deadline::after(10_000)), Ok(0x3000));
        assert_eq!(t.join().unwrap(), Ok(()));
        let lonely = Mem::new(0x2000);
        assert_eq!(
            crate::guest_handshake(&lonely, 1, &mut Deadline::after(20)),
            Err(crate::GuestError::Timeout {
                state: STATE_GUEST_WROTE
            })
        );
    }

    #[test]
    fn handshake_reports_a_wrong_pattern() {
        let m = Mem::new(0x2000);
        let g = m.clone();
        let t = std::thread::spawn(move || guest(&g, 7, true));
        let e = host_handshake(&m, &mut Deadline::after(10_000)).unwrap_err();
        assert!(matches!(e, Error::P1Mismatch { at: 0x1000, .. }), "{e}");
        assert!(!t.join().unwrap());
        assert_eq!(m.read32(HDR_STATE), STATE_HOST_BAD);
    }

    #[test]
    fn handshake_refuses_a_header_outside_the_region() {
        let m = Mem::new(0x2000);
        m.write64(HDR_DATA_OFF, DATA_OFF);
        m.write64(HDR_DATA_LEN, 0x2000);
        m.write32(HDR_MAGIC, MAGIC);
        m.write32(HDR_STATE, STATE_GUEST_WROTE);
        let e = host_handshake(&m, &mut Deadline::after(1000)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad header: data at 0x1000+0x2000 in a 0x2000 region"
        );
    }

    #[test]
    fn slots_time_out_naming_the_missing_party_then_pass() {
        let m = Mem::new(0x4000);
        let e = slots(&m, 0, 2, 7, &mut Deadline::after(20)).unwrap_err();
        assert_eq!(e.to_string(), "timed out waiting for slot 1");
        let other = m.clone();
        let t = std::thread::spawn(move || slots(&other, 1, 2, 7, &mut Deadline::after(5000)));
        slots(&m, 0, 2, 7, &mut Deadline::after(5000)).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(
            slots(&m, 2, 2, 7, &mut Deadline::after(0)),
            Err(Error::BadSlot {
                me: 2,
                parties: 2,
                region: 0x4000
            })
        );
    }
}
