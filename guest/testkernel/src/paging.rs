//! Extends the boot identity map (0-4 GiB, 2 MiB pages) to higher physical
//! addresses: 1 GiB pages when CPUID has pdpe1gb, else page directories from
//! a static pool filled in ring 3.

use crate::boot::{PD_POOL, boot_pdpt, pd_pool};
use crate::{Global, cpu, jobs};

static NEXT_PD: Global<usize> = Global::new(0);
/// 0: not probed, 1: no 1 GiB pages, 2: 1 GiB pages.
static GB_PAGES: Global<u8> = Global::new(0);

fn has_gb_pages() -> bool {
    // SAFETY: single CPU, CPL0 only.
    unsafe {
        let g = GB_PAGES.ptr();
        if *g == 0 {
            let max = cpu::cpuid(0x8000_0000, 0)[0];
            let yes = max >= 0x8000_0001 && cpu::cpuid(0x8000_0001, 0)[3] & (1 << 26) != 0;
            *g = if yes { 2 } else { 1 };
        }
        *g == 2
    }
}

/// Identity-maps [start, end) (user-accessible, writable). Only the first
/// 512 GiB can be mapped.
pub fn ensure_mapped(start: u64, end: u64) -> Result<(), &'static str> {
    if end <= start {
        return Ok(());
    }
    let (g0, g1) = (start >> 30, (end - 1) >> 30);
    if g1 >= 512 {
        return Err("address_above_512g");
    }
    let mut changed = false;
    for g in g0..=g1 {
        // SAFETY: single CPU; the PDPT is the live one, entries are only
        // added for unmapped gigabytes, then the TLB is flushed.
        unsafe {
            let pdpt = &raw mut boot_pdpt;
            if (*pdpt)[g as usize] & 1 != 0 {
                continue;
            }
            if has_gb_pages() {
                (*pdpt)[g as usize] = (g << 30) | 0x87;
            } else {
                let next = NEXT_PD.ptr();
                if *next >= PD_POOL {
                    return Err("out_of_page_directories");
                }
                let pd = (&raw mut pd_pool) as u64 + 4096 * *next as u64;
                *next += 1;
                cpu::user(jobs::fill_pd, pd, g << 30, 0);
                (*pdpt)[g as usize] = pd | 0x7;
            }
        }
        changed = true;
    }
    if changed {
        cpu::flush_tlb();
    }
    Ok(())
}
