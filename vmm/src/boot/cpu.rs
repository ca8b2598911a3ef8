//! Initial CPU state for the two entry modes: 32-bit protected mode (PVH)
//! and 64-bit long mode with identity page tables (Linux 64-bit entry),
//! plus the boot MSRs, FPU and local APIC setup every vCPU gets.

use crate::hv::{Fpu, MsrEntry, Regs, Segment, SpecialRegs};

use crate::layout::{
    BOOT_GDT, BOOT_IDT, BOOT_STACK, MULTIBOOT_INFO, PD, PDPT, PML4, PVH_START_INFO, ZERO_PAGE,
};

/// How vCPU 0 enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { rip: u64 },
    /// 64-bit long mode, identity paging, RSI = boot_params.
    Linux64 { rip: u64 },
    /// Linux's 32-bit boot protocol (a bzImage without the 64-bit entry,
    /// i386 kernels): 32-bit protected mode, paging off, CS 0x10 / DS 0x18,
    /// ESI = boot_params, EBP = EDI = EBX = 0.
    Linux32 { rip: u64 },
    /// 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = the
    /// Multiboot information structure.
    Multiboot { rip: u64 },
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT descriptor flags (access byte in bits 0-7, G/DB/L/AVL in 12-15).
const CODE64: u16 = 0xa09b;
const CODE32: u16 = 0xc09b;
const DATA: u16 = 0xc093;
const TSS64: u16 = 0x808b;
const TSS32: u16 = 0x008b;

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (f, b, l) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((b & 0xff00_0000) << 32)
        | ((f & 0xf0ff) << 40)
        | ((l & 0x000f_0000) << 32)
        | ((b & 0x00ff_ffff) << 16)
        | (l & 0xffff)
}

fn segment(index: u16, flags: u16, base: u32, limit: u32) -> Segment {
    let g = (flags >> 15) & 1;
    Segment {
        base: u64::from(base),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: g as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
    }
}

fn code_flags(e: Entry) -> (u16, u16) {
    match e {
        Entry::Pvh { .. } | Entry::Multiboot { .. } | Entry::Linux32 { .. } => (CODE32, TSS32),
        Entry::Linux64 { .. } => (CODE64, TSS64),
    }
}

/// GDT slots: the Linux 64-bit boot protocol wants __BOOT_CS = 0x10 and
/// __BOOT_DS = 0x18 (boot.rst); PVH leaves selectors unspecified.
const CODE_INDEX: u16 = 2;
const DATA_INDEX: u16 = 3;
const TSS_INDEX: u16 = 4;
/// Number of GDT entries written at [`BOOT_GDT`].
pub const GDT_ENTRIES: usize = 5;

/// The boot GDT (null, unused, code, data, TSS) as written to [`BOOT_GDT`].
pub fn gdt(e: Entry) -> [u64; GDT_ENTRIES] {
    let (code, tss) = code_flags(e);
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(tss, 0, 0xfffff),
    ]
}

/// Identity page tables for the first 1 GiB (2 MiB pages): PML4, PDPT, PD,
/// one 4 KiB page each, as bytes to write at [`PML4`].
pub fn page_tables() -> Vec<u8> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_2M: u64 = 0x80;
    let mut v = vec![0u8; 3 * 4096];
    v[..8].copy_from_slice(&(PDPT | PRESENT_RW).to_le_bytes());
    v[4096..4104].copy_from_slice(&(PD | PRESENT_RW).to_le_bytes());
    for i in 0..512u64 {
        let at = 8192 + 8 * i as usize;
        v[at..at + 8].copy_from_slice(&((i << 21) | PRESENT_RW | PAGE_2M).to_le_bytes());
    }
    debug_assert_eq!(PDPT, PML4 + 4096);
    v
}

/// Special registers for vCPU 0's entry, starting from KVM's reset values.
pub fn sregs(mut s: SpecialRegs, e: Entry) -> SpecialRegs {
    let (code, tss) = code_flags(e);
    s.cs = segment(CODE_INDEX, code, 0, 0xfffff);
    let data = segment(DATA_INDEX, DATA, 0, 0xfffff);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(TSS_INDEX, tss, 0, 0xfffff);
    s.gdt.base = BOOT_GDT;
    s.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    s.idt.base = BOOT_IDT;
    s.idt.limit = 7;
    match e {
        Entry::Pvh { .. } | Entry::Multiboot { .. } | Entry::Linux32 { .. } => {
            s.cr0 = CR0_PE | CR0_ET;
            s.cr4 = 0;
            s.efer = 0;
        }
        Entry::Linux64 { .. } => {
            s.cr3 = PML4;
            s.cr4 = CR4_PAE;
            s.cr0 = CR0_PE | CR0_ET | CR0_PG;
            s.efer = EFER_LME | EFER_LMA;
        }
    }
    s
}

/// General registers for vCPU 0's entry.
pub fn regs(e: Entry) -> Regs {
    let mut r = Regs {
        rflags: 0x2,
        ..Default::default()
    };
    match e {
        Entry::Pvh { rip } => {
            r.rip = rip;
            r.rbx = PVH_START_INFO;
        }
        Entry::Linux64 { rip } => {
            r.rip = rip;
            r.rsp = BOOT_STACK;
            r.rbp = BOOT_STACK;
            r.rsi = ZERO_PAGE;
        }
        Entry::Linux32 { rip } => {
            r.rip = rip;
            r.rsi = ZERO_PAGE;
        }
        Entry::Multiboot { rip } => {
            r.rip = rip;
            r.rax = u64::from(super::multiboot::BOOTLOADER_MAGIC);
            r.rbx = MULTIBOOT_INFO;
        }
    }
    r
}

/// x87/SSE state at reset as Linux expects it.
pub fn fpu() -> Fpu {
    Fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Boot MSR values: syscall MSRs cleared, fast strings on, MTRRs default WB.
pub fn boot_msrs() -> Vec<MsrEntry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| MsrEntry { index, data })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(regs: &mut [u8], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    b.copy_from_slice(&regs[offset..offset + 4]);
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    regs[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
}

/// Local APIC: LINT0 delivers the 8259's ExtINT, LINT1 delivers NMI.
pub fn lapic_lints(regs: &mut [u8]) {
    set_delivery_mode(regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(regs, APIC_LVT1, APIC_MODE_NMI);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_architectural_encodings() {
        assert_eq!(gdt(Entry::Linux64 { rip: 0 })[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt(Entry::Linux64 { rip: 0 })[3], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt(Entry::Pvh { rip: 0 })[2], 0x00cf_9b00_0000_ffff);
        let s = sregs(SpecialRegs::default(), Entry::Linux64 { rip: 0 });
        let cs = s.cs;
        let got = (cs.selector, cs.l, cs.db, cs.g, cs.type_, cs.limit);
        assert_eq!(got, (0x10, 1, 0, 1, 0xb, 0xffff_ffff));
        assert_eq!(
            (s.ds.selector, s.ss.selector, s.es.selector),
            (0x18, 0x18, 0x18)
        );
        assert!(BOOT_GDT + 8 * GDT_ENTRIES as u64 <= BOOT_IDT);
    }

    #[test]
    fn long_mode_state_and_identity_map() {
        let e = Entry::Linux64 { rip: 0x100_0000 };
        let s = sregs(SpecialRegs::default(), e);
        assert_eq!(
            (s.cr3, s.efer & EFER_LMA, s.cr0 & CR0_PG),
            (PML4, EFER_LMA, CR0_PG)
        );
        let r = regs(e);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE, 2));
        let pt = page_tables();
        let pd =
            |i: usize| u64::from_le_bytes(pt[8192 + 8 * i..8192 + 8 * i + 8].try_into().unwrap());
        assert_eq!(pd(0), 0x83);
        assert_eq!(pd(511), (511 << 21) | 0x83);
        let p = Entry::Pvh { rip: 0x10_0000 };
        let s = sregs(SpecialRegs::default(), p);
        assert_eq!((s.cr0, s.efer, s.cs.db, s.cs.l), (CR0_PE | CR0_ET, 0, 1, 0));
        assert_eq!(regs(p).rbx, PVH_START_INFO);
        let l = Entry::Linux32 { rip: 0x10_0000 };
        let s = sregs(SpecialRegs::default(), l);
        let (cs, ds) = (s.cs, s.ds);
        assert_eq!(
            (s.cr0, s.efer, cs.selector, cs.db, cs.l, ds.selector),
            (CR0_PE | CR0_ET, 0, 0x10, 1, 0, 0x18)
        );
        let r = regs(l);
        assert_eq!(
            (r.rip, r.rsi, r.rbx, r.rbp, r.rdi),
            (0x10_0000, ZERO_PAGE, 0, 0, 0)
        );
        let m = Entry::Multiboot { rip: 0x10_0000 };
        let s = sregs(SpecialRegs::default(), m);
        let cs = s.cs;
        assert_eq!(
            (s.cr0, s.efer, cs.db, cs.l, cs.base, cs.limit),
            (CR0_PE | CR0_ET, 0, 1, 0, 0, 0xffff_ffff)
        );
        assert_eq!((s.ds.db, s.ds.limit, s.ss.base), (1, 0xffff_ffff, 0));
        let r = regs(m);
        assert_eq!(
            (r.rip, r.rax, r.rbx, r.rflags),
            (0x10_0000, 0x2bad_b002, MULTIBOOT_INFO, 2)
        );
    }

    #[test]
    fn lapic_lint_modes() {
        let mut regs = [0u8; 1024];
        regs[APIC_LVT0 + 2] = 1; // mask bit 16 set: must survive
        lapic_lints(&mut regs);
        assert_eq!(regs[APIC_LVT0 + 1], 0x7);
        assert_eq!(regs[APIC_LVT0 + 2], 1);
        assert_eq!(regs[APIC_LVT1 + 1], 0x4);
    }
}
