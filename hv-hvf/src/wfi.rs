//! How long a vCPU in WFI sleeps, and when a fired virtual timer may be
//! unmasked again. HVF traps WFI to the VMM and leaves the guest's timer
//! to it: the vCPU sleeps until its virtual timer's compare value
//! (CNTV_CVAL_EL0) or an interrupt (a kick), never longer than a slice so
//! it notices a stop.

use std::time::Duration;

/// CNTV_CTL_EL0 bits.
pub const CTL_ENABLE: u64 = 1 << 0;
pub const CTL_IMASK: u64 = 1 << 1;
pub const CTL_ISTATUS: u64 = 1 << 2;

/// The host counter's ticks to nanoseconds (`mach_timebase_info`:
/// `numer / denom`; 125/3 on Apple silicon's 24 MHz counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timebase {
    pub numer: u32,
    pub denom: u32,
}

impl Timebase {
    pub fn ticks_to_duration(&self, ticks: u64) -> Duration {
        let denom = u128::from(self.denom.max(1));
        let ns = u128::from(ticks) * u128::from(self.numer) / denom;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The WFI sleep: until the virtual timer fires (`ctl`, `cval` are the
/// vCPU's CNTV_CTL_EL0 and CNTV_CVAL_EL0, `now` its virtual count), at
/// most `slice`. A disabled or masked timer does not wake the vCPU.
pub fn sleep_for(ctl: u64, cval: u64, now: u64, tb: Timebase, slice: Duration) -> Duration {
    if ctl & CTL_ENABLE == 0 || ctl & CTL_IMASK != 0 {
        return slice;
    }
    if cval <= now {
        return Duration::ZERO;
    }
    tb.ticks_to_duration(cval - now).min(slice)
}

/// Whether the timer's interrupt is still asserted (enabled, unmasked,
/// its condition met): HVF masks the timer when it fires, and the VMM
/// unmasks it once the guest has dealt with it (not asserted any more).
pub fn asserted(ctl: u64) -> bool {
    ctl & (CTL_ENABLE | CTL_IMASK | CTL_ISTATUS) == CTL_ENABLE | CTL_ISTATUS
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPLE: Timebase = Timebase {
        numer: 125,
        denom: 3,
    };
    const SLICE: Duration = Duration::from_millis(10);

    #[test]
    fn wfi_sleeps_until_the_timer_or_the_slice() {
        // 24 MHz: 24_000 ticks are 1 ms.
        assert_eq!(APPLE.ticks_to_duration(24_000), Duration::from_millis(1));
        assert_eq!(
            sleep_for(CTL_ENABLE, 1_024_000, 1_000_000, APPLE, SLICE),
            Duration::from_millis(1)
        );
        // Already due: no sleep.
        assert_eq!(sleep_for(CTL_ENABLE, 5, 10, APPLE, SLICE), Duration::ZERO);
        // Far away, disabled or masked: the slice.
        assert_eq!(sleep_for(CTL_ENABLE, u64::MAX, 0, APPLE, SLICE), SLICE);
        assert_eq!(sleep_for(0, 1, 0, APPLE, SLICE), SLICE);
        assert_eq!(sleep_for(CTL_ENABLE | CTL_IMASK, 1, 0, APPLE, SLICE), SLICE);
        // A zero denominator does not divide by zero.
        let odd = Timebase { numer: 1, denom: 0 };
        assert_eq!(odd.ticks_to_duration(7), Duration::from_nanos(7));
    }

    #[test]
    fn the_timer_is_asserted_only_enabled_unmasked_and_firing() {
        assert!(asserted(CTL_ENABLE | CTL_ISTATUS));
        assert!(!asserted(CTL_ENABLE));
        assert!(!asserted(CTL_ENABLE | CTL_IMASK | CTL_ISTATUS));
        assert!(!asserted(CTL_ISTATUS));
    }
}
