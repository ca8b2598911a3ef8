//! x86 vCPU and interrupt-routing state in the boundary's own types: what
//! boot sets up and what a snapshot saves. Field names follow the
//! architecture (and so KVM's structures), so code reads the same; the
//! conversions live in the accelerator's module.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

/// One CPUID leaf (`function`, sub-leaf `index`) and its four registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Accelerator flags: whether `index` matters (KVM_CPUID_FLAG_*).
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// One model-specific register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden descriptor part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// Pending external interrupt, one bit per vector.
    pub interrupt_bitmap: [u64; 4],
}

/// x87 and SSE state (the legacy FXSAVE view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fpu {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

/// The local APIC's register page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LapicState {
    pub regs: [u8; 1024],
}

impl Default for LapicState {
    fn default() -> Self {
        LapicState { regs: [0; 1024] }
    }
}

/// The interrupt controller an irqchip route targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    PicMaster,
    PicSlave,
    Ioapic,
}

/// One entry of the VM's interrupt routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsiRoute {
    /// `gsi` raises `pin` of `chip`.
    Irqchip { gsi: u32, chip: IrqChip, pin: u32 },
    /// `gsi` sends the message-signalled interrupt (`address`, `data`).
    Msi { gsi: u32, address: u64, data: u32 },
}

impl GsiRoute {
    pub fn gsi(&self) -> u32 {
        match *self {
            GsiRoute::Irqchip { gsi, .. } | GsiRoute::Msi { gsi, .. } => gsi,
        }
    }
}
