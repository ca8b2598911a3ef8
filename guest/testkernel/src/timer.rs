//! TSC frequency: CPUID leaf 0x40000010 (hypervisor timing leaf), then leaf
//! 0x15 (TSC/crystal ratio), then a 10 ms PIT channel-2 calibration, then
//! leaf 0x16 (base MHz); 1 GHz is assumed (and said) if all fail.

use crate::cpu::{cpuid, inb, outb, rdtsc};
use crate::{Dec, Global, say};

static KHZ: Global<u64> = Global::new(0);

const PIT_HZ: u64 = 1_193_182;
const PIT_MS: u64 = 10;

fn pit_khz() -> u64 {
    let latch = PIT_HZ * PIT_MS / 1000;
    // Gate on, speaker off; channel 2, lobyte/hibyte, mode 0, binary.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xB0);
    outb(0x42, latch as u8);
    outb(0x42, (latch >> 8) as u8);
    let t0 = rdtsc();
    let mut polls = 0u32;
    while inb(0x61) & 0x20 == 0 {
        polls += 1;
        if polls > 5_000_000 {
            return 0;
        }
    }
    let t1 = rdtsc();
    // OUT2 high on the first poll: no PIT behind port 0x61.
    if polls < 2 {
        return 0;
    }
    (t1 - t0) / PIT_MS
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
