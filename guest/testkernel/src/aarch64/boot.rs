//! The arm64 entry (Linux `Image` header, Documentation/arch/arm64/booting.rst;
//! linked for RAM_BASE + text_offset = 0x4000_0000, where shmvm puts it:
//! the code is not position-independent, so flags bit 3 stays clear),
//! the secondary CPUs' entry for PSCI CPU_ON, per-CPU stacks and the
//! exception vectors. The VMM enters at the header's first word at EL1
//! with the MMU and caches off, DAIF masked, x0 = the device tree. The MMU
//! stays off: every data access is Device-nGnRnE, so the target is built
//! with strict alignment and without FP/SIMD (`aarch64-unknown-none-softfloat`),
//! and no exclusive (atomic) instruction is used.

/// Bytes of stack per CPU (the boot CPU's and each secondary's).
pub const STACK_SIZE: u64 = 16 * 1024;
/// CPUs the kernel has stacks and mailboxes for (boot CPU included).
pub const MAX_CPUS: usize = 8;

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _head
_head:
    b       primary_entry           // code0: branch past the header
    .long   0                       // code1
    .quad   0                       // text_offset: at the 2 MiB-aligned base
    .quad   __image_size            // image_size: file plus .bss and stacks
    .quad   0x2                     // flags: little-endian, 4 KiB pages, near DRAM's base
    .quad   0, 0, 0                 // reserved
    .ascii  "ARM\x64"               // magic
    .long   0                       // PE header offset: none

primary_entry:
    mov     x19, x0
    // Not where it was linked: nothing but this position-independent code
    // can run; say so through the debug-exit register (exit code 39).
    adr     x1, _head
    ldr     x2, =_head
    cmp     x1, x2
    b.eq    0f
    mov     x1, #{misplaced}
    ldr     x2, ={debug_exit}
    str     w1, [x2]
    b       .
0:
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  ldr     x1, =vectors
    msr     vbar_el1, x1
    isb
    ldr     x1, =__stacks
    add     sp, x1, #{stack}
    mov     x0, x19
    bl      {kmain}
3:  wfe
    b       3b

    // PSCI CPU_ON's entry: x0 = the context id, the CPU's index.
    .global secondary_entry
secondary_entry:
    mov     x19, x0
    ldr     x1, =vectors
    msr     vbar_el1, x1
    isb
    ldr     x1, =__stacks
    add     x2, x19, #1
    mov     x3, #{stack}
    mul     x2, x2, x3
    add     sp, x1, x2
    mov     x0, x19
    bl      {secondary}
4:  wfe
    b       4b

    // 16 vectors of 0x80 bytes: the handler gets the vector's index.
    .section .text.vectors, "ax"
    .balign 2048
vectors:
    .set    n, 0
    .rept   16
    .balign 0x80
    mov     x0, #n
    b       exception_common
    .set    n, n + 1
    .endr
exception_common:
    bl      {exception}
5:  wfe
    b       5b
"#,
    kmain = sym super::kmain,
    secondary = sym super::secondary_main,
    exception = sym super::exception_handler,
    stack = const STACK_SIZE,
    misplaced = const super::EXIT_MISPLACED,
    debug_exit = const super::DEBUG_EXIT,
);

unsafe extern "C" {
    /// PSCI CPU_ON's entry point (above).
    pub fn secondary_entry();
    pub static __kernel_start: u8;
    pub static __kernel_end: u8;
}

/// Per-CPU stacks, not loaded (the linker script's `.stack`).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".stack.cpus")]
static mut __stacks: [u8; STACK_SIZE as usize * MAX_CPUS] = [0; STACK_SIZE as usize * MAX_CPUS];

/// [start, end) of the loaded kernel with its .bss and stacks.
pub fn kernel_range() -> (u64, u64) {
    (
        core::ptr::addr_of!(__kernel_start) as u64,
        core::ptr::addr_of!(__kernel_end) as u64,
    )
}
