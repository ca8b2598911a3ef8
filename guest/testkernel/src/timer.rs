//! TSC frequency: CPUID leaf 0x40000010 (hypervisor timing leaf), then leaf
//! 0x15 (TSC/crystal ratio), then a 10 ms PIT channel-2 calibration, then
//! leaf 0x16 (base MHz); 1 GHz is assumed (and said) if all fail.

use crate::console::Dec;
use crate::cpu::{cpuid, inb, outb, rdtsc};
use crate::{Global, say};

static KHZ: Global<u64> = Global::new(0);

const PIT_HZ: u64 = 1_193_182;
/// PIT ticks between the two samples (~20 ms).
const PIT_SPAN: u16 = 23_864;
/// (TSC, PIT count) readings per sample; the tightest one is kept.
const TRIES: u32 = 5;

/// Latches and reads PIT channel 2's count.
fn pit_count() -> u16 {
    outb(0x43, 0x80);
    let lo = inb(0x42);
    let hi = inb(0x42);
    u16::from(lo) | (u16::from(hi) << 8)
}

/// (TSC at the middle of the read, count) from the read bracketed most
/// tightly by rdtsc: a vCPU descheduled during a read only widens that
/// read's bracket, so the tightest one is accurate.
fn sample() -> (u64, u16) {
    let mut best = (u64::MAX, 0u64, 0u16);
    for _ in 0..TRIES {
        let t0 = rdtsc();
        let c = pit_count();
        let t1 = rdtsc();
        if t1 - t0 < best.0 {
            best = (t1 - t0, t0 + (t1 - t0) / 2, c);
        }
    }
    (best.1, best.2)
}

/// TSC kHz from PIT channel 2 (mode 0, counting down from 0xFFFF: 55 ms
/// before it wraps); 0 if no PIT answers.
fn pit_khz() -> u64 {
    // Gate on, speaker off; channel 2, lobyte/hibyte, mode 0, binary.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xB0);
    outb(0x42, 0xFF);
    outb(0x42, 0xFF);
    let (ta, ca) = sample();
    let mut polls = 0u32;
    loop {
        let c = pit_count();
        if c > ca {
            return 0; // wrapped or not counting: no usable PIT
        }
        if ca - c >= PIT_SPAN {
            break;
        }
        polls += 1;
        // A PIT counts at 1.19 MHz, so reads microseconds apart differ; a
        // count that never moves means nothing answers at port 0x42.
        if (polls == 1000 && c == ca) || polls > 1_000_000 {
            return 0;
        }
    }
    let (tb, cb) = sample();
    if cb >= ca || tb <= ta {
        return 0;
    }
    (tb - ta) * PIT_HZ / u64::from(ca - cb) / 1000
}

fn measure() -> (u64, &'static str) {
    let hv = cpuid(0x4000_0000, 0)[0];
    if (0x4000_0010..0x4000_0100).contains(&hv) {
        let k = u64::from(cpuid(0x4000_0010, 0)[0]);
        if k != 0 {
            return (k, "cpuid_40000010");
        }
    }
    let max = cpuid(0, 0)[0];
    if max >= 0x15 {
        let [den, num, crystal, _] = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return (
                u64::from(crystal) * u64::from(num) / u64::from(den) / 1000,
                "cpuid_15",
            );
        }
    }
    let k = pit_khz();
    if k != 0 {
        return (k, "pit");
    }
    if max >= 0x16 {
        let mhz = u64::from(cpuid(0x16, 0)[0] & 0xFFFF);
        if mhz != 0 {
            return (mhz * 1000, "cpuid_16");
        }
    }
    (1_000_000, "guess")
}

/// TSC ticks per millisecond (measured once, reported on first use).
pub fn tsc_khz() -> u64 {
    // SAFETY: single CPU, CPL0 only.
    unsafe {
        let k = KHZ.ptr();
        if *k == 0 {
            let (v, src) = measure();
            *k = v.max(1);
            say!("shmvm: tsc_khz=", Dec(*k), " source=", src);
        }
        *k
    }
}

/// Absolute TSC value `ms` milliseconds from now.
pub fn deadline(ms: u64) -> u64 {
    rdtsc().saturating_add(ms.saturating_mul(tsc_khz()))
}
