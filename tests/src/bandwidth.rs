//! The host side of the ivshmem bandwidth bench: the same write and read
//! loops the test kernel runs in ring 3 (four 8-byte volatile accesses per
//! step), plus a plain memcpy, over a buffer of N MiB; best of 3 timed
//! rounds after one untimed first-touch pass. MB = 10^6 bytes, as the guest
//! reports.

use std::time::Instant;

/// One host measurement, in MB/s.
#[derive(Debug, Clone, Copy)]
pub struct HostBandwidth {
    pub write_mbps: u64,
    pub read_mbps: u64,
    pub memcpy_mbps: u64,
    pub bytes: usize,
}

fn fill(buf: &mut [u64], v: u64) {
    for c in buf.chunks_exact_mut(4) {
        for w in c {
            // SAFETY: `w` is a valid, aligned &mut u64.
            unsafe { std::ptr::write_volatile(w, v) };
        }
    }
}

fn sum(buf: &[u64]) -> u64 {
    let mut acc = 0;
    for c in buf.chunks_exact(4) {
        for w in c {
            // SAFETY: `w` is a valid, aligned &u64.
            acc ^= unsafe { std::ptr::read_volatile(w) };
        }
    }
    acc
}

fn best(rounds: u32, mut f: impl FnMut(u32)) -> f64 {
    (0..rounds)
        .map(|r| {
            let t = Instant::now();
            f(r);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Runs the host loops over `mib` MiB.
pub fn host(mib: usize) -> HostBandwidth {
    let bytes = mib << 20;
    let mut a = vec![0u64; bytes / 8];
    let mut b = vec![0u64; bytes / 8];
    fill(&mut a, 1);
    fill(&mut b, 1);
    let w = best(3, |r| fill(&mut a, u64::from(r)));
    let mut sink = 0;
    let rd = best(3, |_| sink ^= sum(&a));
    let c = best(3, |_| b.copy_from_slice(&a));
    std::hint::black_box((sink, &b));
    let mbps = |s: f64| (bytes as f64 / s / 1e6) as u64;
    HostBandwidth {
        write_mbps: mbps(w),
        read_mbps: mbps(rd),
        memcpy_mbps: mbps(c),
        bytes,
    }
}
