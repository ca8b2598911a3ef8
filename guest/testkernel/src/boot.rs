//! Entry stubs, the static GDT/TSS/page tables, exception stubs and the
//! ring-3 call gate.
//!
//! Everything that can be computed by the assembler or linker is static data,
//! so CPL0 (emulated at ~1 us per instruction on PVM) runs only a few dozen
//! instructions before `kmain`.
//!
//! Selectors: 0x08 kernel code64, 0x10 kernel data, 0x18 user data (0x1b),
//! 0x20 user code64 (0x23), 0x28 TSS.
//!
//! Ring-3 jobs return to CPL0 through an exception: `ud2` at the known
//! address `user_exit`, which the #UD entry recognises. On the PVM host,
//! `syscall` from ring 3 entered LSTAR with CS still 0x23 (the next `out`
//! faulted) and `int 0x80`/`int 0x81` from ring 3 raised #UD, while
//! exceptions are delivered through the IDT and TSS.RSP0 correctly.

use core::arch::global_asm;

/// Entry kind passed to `kmain` in EDI.
pub const ENTRY_PVH: u32 = 1;

pub const KERNEL_CS: u16 = 0x08;
pub const TSS_SEL: u16 = 0x28;

unsafe extern "C" {
    /// `user_call(f, a, b, c)`: runs `f(a, b, c)` in ring 3 on the user stack
    /// and returns its result once `f` returns (via `ud2` at `user_exit`).
    pub fn user_call(f: usize, a: u64, b: u64, c: u64) -> u64;
    pub fn user_return();
    pub static isr_stubs: u8;
    pub static mut boot_gdt: [u64; 7];
    pub static mut boot_tss: [u8; 104];
    pub static mut boot_idt: [u64; 2 * IDT_SIZE];
    /// RFLAGS a ring-3 job starts with (0x2; 0x202 lets interrupts in).
    pub static mut user_rflags: u64;
    pub static boot_idt_ptr: [u8; 10];
    pub static mut boot_pdpt: [u64; 512];
    pub static mut pd_pool: [[u64; 512]; PD_POOL];
    pub static __kernel_start: u8;
    pub static __kernel_end: u8;
}

/// IDT entries with exception stubs: the 32 exceptions.
pub const IDT_ENTRIES: usize = 32;
/// IDT size: every vector, so device interrupts (doorbell.rs) have gates.
pub const IDT_SIZE: usize = 256;
/// #UD: also the ring-3 return path.
pub const UD_VECTOR: usize = 6;

/// Page directories available for 2 MiB mappings above 4 GiB when the CPU
/// has no 1 GiB pages (each maps 1 GiB).
pub const PD_POOL: usize = 64;

// PVH note: XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen", 32-bit entry address.
global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4
"#
);

// Entry stubs.
global_asm!(
    r#"
    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov esi, ebx
    mov edi, 1
    mov eax, 0x620
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x101
    wrmsr
    mov eax, cr0
    and eax, 0x9FFFFFFB
    or eax, 0x80000023
    mov cr0, eax
    lgdt [boot_gdt_ptr]
    .byte 0xEA
    .long long_entry
    .word 0x08

    .code64
    .global linux64_start
linux64_start:
    cli
    cld
    mov edi, 2
    mov rax, cr4
    or eax, 0x620
    mov cr4, rax
    mov rax, cr0
    and eax, 0x9FFFFFFB
    or eax, 0x80000023
    mov cr0, rax
    mov eax, offset boot_pml4
    mov cr3, rax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x101
    wrmsr
    lgdt [rip + boot_gdt_ptr]
    push 0x08
    lea rax, [rip + long_entry]
    push rax
    .byte 0x48, 0xCB

long_entry:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    lea rsp, [rip + boot_stack_top]
    mov edi, edi
    mov esi, esi
    call kmain
2:
    cli
    hlt
    jmp 2b
"#
);

// GDT, TSS, IDT and the identity page tables (0-4 GiB, 2 MiB pages,
// user-accessible so ring-3 jobs can reach RAM and BARs).
global_asm!(
    r#"
    .section .data.boot, "aw"
    .balign 16
    .global boot_gdt
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00CFF2000000FFFF
    .quad 0x00AFFA000000FFFF
    .quad 0
    .quad 0
boot_gdt_end:
    .balign 16
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .balign 16
    .global boot_tss
boot_tss:
    .long 0
    .quad int_stack_top
    .fill 88, 1, 0
    .word 104

    .balign 16
    .global boot_idt
boot_idt:
    .fill 2 * 256, 8, 0
    .global boot_idt_ptr
boot_idt_ptr:
    .word 256 * 16 - 1
    .quad boot_idt
    .global user_rflags
user_rflags:
    .quad 2

    .section .data.pagetables, "aw"
    .balign 4096
    .global boot_pml4
boot_pml4:
    .quad boot_pdpt + 0x7
    .fill 511, 8, 0
    .global boot_pdpt
boot_pdpt:
    .quad boot_pd + 0x0007
    .quad boot_pd + 0x1007
    .quad boot_pd + 0x2007
    .quad boot_pd + 0x3007
    .fill 508, 8, 0
boot_pd:
    .set pde, 0x87
    .rept 2048
    .quad pde
    .set pde, pde + 0x200000
    .endr

    .section .stack, "aw", @nobits
    .balign 4096
    .global pd_pool
pd_pool:
    .skip 64 * 4096
    .balign 16
    .skip 65536
    .global boot_stack_top
boot_stack_top:
    .skip 32768
int_stack_top:
    .skip 65536
    .global user_stack_top
user_stack_top:
    .skip 64
user_saved_rsp:
    .skip 8
"#
);

// Exception stubs: 16 bytes apart; each pushes (error code, vector).
global_asm!(
    r#"
    .macro ISR_NOERR n
    .balign 16
    push 0
    push \n
    jmp isr_common
    .endm
    .macro ISR_ERR n
    .balign 16
    push \n
    jmp isr_common
    .endm

    .section .text, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR 8
    ISR_NOERR 9
    ISR_ERR 10
    ISR_ERR 11
    ISR_ERR 12
    ISR_ERR 13
    ISR_ERR 14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR 17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR 21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR 29
    ISR_ERR 30
    ISR_NOERR 31
isr_common:
    mov rdi, rsp
    and rsp, -16
    call exception_handler
3:
    cli
    hlt
    jmp 3b
"#
);

// Ring-3 calls: iretq into the job, `ud2` back.
global_asm!(
    r#"
    .section .text, "ax"
    .global user_call
user_call:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + user_saved_rsp], rsp
    mov rax, rdi
    mov rdi, rsi
    mov rsi, rdx
    mov rdx, rcx
    push 0x1b
    lea r11, [rip + user_stack_top]
    push r11
    push qword ptr [rip + user_rflags]
    push 0x23
    lea r11, [rip + user_trampoline]
    push r11
    iretq
user_trampoline:
    call rax
    mov rdi, rax
user_exit:
    ud2

    // #UD entry: a `ud2` at user_exit from ring 3 ends a job; anything
    // else goes to the generic exception stub.
    .global user_return
user_return:
    lea r11, [rip + user_exit]
    cmp [rsp], r11
    jne 4f
    test byte ptr [rsp + 8], 3
    jz 4f
    mov rsp, [rip + user_saved_rsp]
    mov rax, rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
4:
    jmp isr_stubs + 16 * 6
"#
);
