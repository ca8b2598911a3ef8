//! Small ring-3 jobs used by several modules (copying, hashing, memtest),
//! and the parts of `main::boot_job` that read the boot information.

use crate::Global;
use crate::bootinfo::{INFO, kernel_range};
use crate::params::PARAMS;
use crate::ranges::Ranges;
use protocol::{fnv1a64, memtest_pattern};

/// Copies the NUL-terminated string at `src` (at most `max` bytes) to `dst`;
/// returns its length. Ring 3.
pub fn copy_cstr(dst: u64, src: u64, max: u64) -> u64 {
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

/// FNV-1a 64 over `len` bytes at `addr`.
pub extern "C" fn fnv1a_job(addr: u64, len: u64, _: u64) -> u64 {
    // SAFETY: the caller passes a mapped RAM range (the initrd).
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    fnv1a64(bytes)
}

/// Fills a page directory at `pd` with 512 2-MiB pages starting at `base`.
pub extern "C" fn fill_pd(pd: u64, base: u64, _: u64) -> u64 {
    for i in 0..512u64 {
        // SAFETY: `pd` is a free page of the kernel's page-directory pool.
        unsafe { core::ptr::write_volatile((pd + 8 * i) as *mut u64, (base + (i << 21)) | 0x87) }
    }
    0
}

pub static FREE: Global<Ranges> = Global::new(Ranges::EMPTY);

/// Computes `FREE`: usable RAM minus the kernel and the initrd. Ring 3.
pub fn free_ranges() {
    // SAFETY: CPL0 is suspended; sole user of these statics.
    let (info, out) = unsafe { (&*INFO.ptr(), &mut *FREE.ptr()) };
    let holes = [
        kernel_range(),
        (info.initrd_start, info.initrd_start + info.initrd_size),
    ];
    out.compute(&info.e820[..info.e820_len], &holes);
}

/// Parses the saved command line into `PARAMS`. Ring 3.
pub fn parse_cmdline() {
    // SAFETY: CPL0 is suspended; nothing else holds references to these.
    unsafe {
        let info = &*INFO.ptr();
        (*PARAMS.ptr()).parse(&info.cmdline[..info.cmdline_len]);
    }
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
        for &(s, t) in free.as_slice() {
            let mut a = s;
            while a < t {
                core::ptr::write_volatile(a as *mut u64, memtest_pattern(a, seed));
                a += 8;
            }
        }
        for &(s, t) in free.as_slice() {
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
