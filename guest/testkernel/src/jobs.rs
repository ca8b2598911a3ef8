//! Small ring-3 jobs used by several modules (copying, hashing, memtest).

use crate::Global;
use crate::bootinfo::{E820_RAM, INFO, kernel_range};

/// Copies the NUL-terminated string at `src` (at most `max` bytes) to `dst`;
/// returns its length.
pub extern "C" fn copy_cstr(dst: u64, src: u64, max: u64) -> u64 {
    let mut n = 0;
    while n < max {
        // SAFETY: src/dst are mapped (identity map, user-accessible); dst has
        // room for `max` bytes (caller's buffer).
        unsafe {
            let c = core::ptr::read_volatile((src + n) as *const u8);
            if c == 0 {
                break;
            }
            core::ptr::write_volatile((dst + n) as *mut u8, c);
        }
        n += 1;
    }
    n
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 over `len` bytes at `addr`.
pub extern "C" fn fnv1a_job(addr: u64, len: u64, _: u64) -> u64 {
    let mut h = FNV_OFFSET;
    // SAFETY: the caller passes a mapped RAM range (the initrd).
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Fills a page directory at `pd` with 512 2-MiB pages starting at `base`.
pub extern "C" fn fill_pd(pd: u64, base: u64, _: u64) -> u64 {
    for i in 0..512u64 {
        // SAFETY: `pd` is a free page of the kernel's page-directory pool.
        unsafe { core::ptr::write_volatile((pd + 8 * i) as *mut u64, (base + (i << 21)) | 0x87) }
    }
    0
}

pub const MAX_RANGES: usize = 256;

/// Usable RAM minus the kernel image and the initrd.
pub struct Ranges {
    pub r: [(u64, u64); MAX_RANGES],
    pub n: usize,
    pub bytes: u64,
    /// Highest usable RAM address (exclusive).
    pub top: u64,
}

pub static FREE: Global<Ranges> = Global::new(Ranges {
    r: [(0, 0); MAX_RANGES],
    n: 0,
    bytes: 0,
    top: 0,
});

/// Ring-3 job: computes `FREE` from the e820 map (8-byte aligned ranges).
pub extern "C" fn free_ranges_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of these statics.
    let (info, out) = unsafe { (&*INFO.ptr(), &mut *FREE.ptr()) };
    let (k0, k1) = kernel_range();
    let holes = [
        (k0, k1),
        (info.initrd_start, info.initrd_start + info.initrd_size),
    ];
    out.n = 0;
    out.bytes = 0;
    out.top = 0;
    for e in &info.e820[..info.e820_len] {
        if e.kind != E820_RAM || e.end <= e.start {
            continue;
        }
        out.top = out.top.max(e.end);
        // Split [start, end) around the holes (at most 3 pieces).
        let mut pieces = [(e.start, e.end), (0, 0), (0, 0)];
        let mut np = 1;
        for &(h0, h1) in &holes {
            if h1 <= h0 {
                continue;
            }
            let mut next = [(0u64, 0u64); 3];
            let mut nn = 0;
            for &(s, t) in &pieces[..np] {
                if h1 <= s || h0 >= t {
                    next[nn] = (s, t);
                    nn += 1;
                    continue;
                }
                if s < h0 {
                    next[nn] = (s, h0);
                    nn += 1;
                }
                if h1 < t && nn < 3 {
                    next[nn] = (h1, t);
                    nn += 1;
                }
            }
            pieces = next;
            np = nn;
        }
        for &(s, t) in &pieces[..np] {
            let (s, t) = ((s + 7) & !7, t & !7);
            if t > s && out.n < MAX_RANGES {
                out.r[out.n] = (s, t);
                out.n += 1;
                out.bytes += t - s;
            }
        }
    }
    0
}

/// Memtest pattern: the value stored at physical address `a`.
#[inline(always)]
pub fn memtest_pattern(a: u64, seed: u64) -> u64 {
    a ^ seed ^ 0xA5A5_A5A5_5A5A_5A5A
}

pub struct MemtestResult {
    pub failed_at: u64,
    pub got: u64,
    pub want: u64,
}

pub static MEMTEST: Global<MemtestResult> = Global::new(MemtestResult {
    failed_at: 0,
    got: 0,
    want: 0,
});

/// Ring-3 job: writes the pattern over every `FREE` range, then verifies
/// all of them. Returns 0 (ok) or 1 (see `MEMTEST`).
pub extern "C" fn memtest_job(seed: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; FREE lists RAM not used by the kernel,
    // mapped user-accessible by the caller.
    unsafe {
        let free = &*FREE.ptr();
        for &(s, t) in &free.r[..free.n] {
            let mut a = s;
            while a < t {
                core::ptr::write_volatile(a as *mut u64, memtest_pattern(a, seed));
                a += 8;
            }
        }
        for &(s, t) in &free.r[..free.n] {
            let mut a = s;
            while a < t {
                let v = core::ptr::read_volatile(a as *const u64);
                let want = memtest_pattern(a, seed);
                if v != want {
                    let r = &mut *MEMTEST.ptr();
                    r.failed_at = a;
                    r.got = v;
                    r.want = want;
                    return 1;
                }
                a += 8;
            }
        }
    }
    0
}
