//! Port I/O, CPUID, TSC, the CPL0 setup (TSS, IDT) and ring-3 jobs.

use core::arch::asm;

use crate::{boot, console};

#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

/// `rep outsb`: writes `bytes` to `port`, one byte access each, in order.
/// One instruction for the whole run: on PVM hosts, where every CPL0
/// instruction is emulated (~1 us each), this saves the per-byte loop.
/// (KVM still exits to the VMM once per byte: its emulator does `outs`
/// one element at a time.)
#[inline(always)]
pub fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: reads `bytes.len()` bytes from `bytes` (RSI, RCX count);
    // direction flag is clear (cld at entry, never set).
    unsafe {
        asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        )
    }
}

#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

#[inline(always)]
pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as outb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

#[inline(always)]
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid only writes the named registers (rbx is saved by hand).
    unsafe {
        asm!("mov {t:r}, rbx", "cpuid", "xchg {t:r}, rbx", t = out(reg) b,
             inout("eax") leaf => a, inout("ecx") sub => c, out("edx") d,
             options(nomem, nostack, preserves_flags))
    }
    [a, b, c, d]
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads a counter (CR4.TSD is clear, so ring 3 may too).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

#[inline(always)]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Flushes the whole TLB (reloads CR3).
#[inline(always)]
pub fn flush_tlb() {
    // SAFETY: CR3 is rewritten with its own value.
    unsafe { asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack, preserves_flags)) }
}

pub fn halt_forever() -> ! {
    loop {
        // SAFETY: interrupts are off; hlt just stops this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Current privilege level (0 at CPL0, 3 inside a ring-3 job).
#[inline(always)]
pub fn cpl() -> u16 {
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    cs & 3
}

/// An interrupt gate (DPL 0) to `handler` in the kernel code segment.
fn gate(handler: u64) -> [u64; 2] {
    [
        (handler & 0xFFFF)
            | (u64::from(boot::KERNEL_CS) << 16)
            | (0x8E << 40)
            | (((handler >> 16) & 0xFFFF) << 48),
        handler >> 32,
    ]
}

pub fn set_gate(v: usize, handler: u64) {
    let [lo, hi] = gate(handler);
    // SAFETY: v < IDT_SIZE (indexing checks it); one CPU, and the IDT is
    // only written here, at CPL0 or in a ring-3 job, never while a gate
    // being written can be taken.
    unsafe {
        let idt = &raw mut boot::boot_idt;
        (*idt)[2 * v] = lo;
        (*idt)[2 * v + 1] = hi;
    }
}

/// Loads the TSS and IDT (exceptions; #UD doubles as the ring-3 return).
/// CPL0 sets up only what the ring-3 return path needs (TSS, #UD gate);
/// the other gates are filled by a ring-3 job.
pub fn init() {
    // SAFETY: single CPU, interrupts off; the descriptors written here are
    // the static GDT/TSS/IDT from boot.rs, which nothing else touches.
    unsafe {
        let tss = &raw const boot::boot_tss as u64;
        let gdt = &raw mut boot::boot_gdt;
        (*gdt)[5] = 103 | ((tss & 0xFF_FFFF) << 16) | (0x89 << 40) | (((tss >> 24) & 0xFF) << 56);
        (*gdt)[6] = tss >> 32;
        asm!("ltr ax", in("ax") boot::TSS_SEL, options(nostack, preserves_flags));
    }
    set_gate(boot::UD_VECTOR, boot::user_return as *const () as u64);
    // SAFETY: the IDT is valid: the #UD gate is set, the others are still
    // empty (no exception is expected before the job below fills them).
    unsafe {
        asm!("lidt [{}]", in(reg) &raw const boot::boot_idt_ptr, options(nostack, preserves_flags));
    }
    user(exception_gates_job, 0, 0, 0);
    console::render_in_ring3();
}

/// Ring-3 job: the exception gates, all but #UD (set by `init`: this job
/// returns through it). The IDT is user-accessible like all memory.
extern "C" fn exception_gates_job(_: u64, _: u64, _: u64) -> u64 {
    let stubs = &raw const boot::isr_stubs as u64;
    for v in (0..boot::IDT_ENTRIES).filter(|&v| v != boot::UD_VECTOR) {
        set_gate(v, stubs + 16 * v as u64);
    }
    0
}

/// Runs `f(a, b, c)` in ring 3 (native speed on PVM) and returns its result,
/// then writes out the lines the job rendered (`say!` in ring 3). CPL0 only:
/// not re-entrant.
pub fn user(f: extern "C" fn(u64, u64, u64) -> u64, a: u64, b: u64, c: u64) -> u64 {
    // SAFETY: `init` set up the TSS and the #UD gate; every page is mapped
    // user-accessible, and `f` is a plain function of this image.
    let r = unsafe { boot::user_call(f as usize, a, b, c) };
    console::flush();
    r
}
