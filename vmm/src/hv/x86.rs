//! x86 vCPU and interrupt-routing state in the boundary's own types: what
//! boot sets up and what a snapshot saves. Field names follow the
//! architecture (and so KVM's structures), so code reads the same; the
//! conversions live in the accelerator's module.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use serde::{Deserialize, Serialize};

/// One CPUID leaf (`function`, sub-leaf `index`) and its four registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LapicState {
    #[serde(with = "byte_array")]
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

    /// The routes the in-kernel irqchip starts with on x86 for `pins`
    /// IOAPIC pins: GSI 0-15 to both PICs and the IOAPIC, the rest to the
    /// IOAPIC (a routing table replaces them, so it keeps them).
    pub fn irqchip_defaults(pins: u32) -> Vec<GsiRoute> {
        let mut v = Vec::new();
        for gsi in 0..pins {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    IrqChip::PicMaster
                } else {
                    IrqChip::PicSlave
                };
                v.push(GsiRoute::Irqchip {
                    gsi,
                    chip,
                    pin: gsi % 8,
                });
            }
            v.push(GsiRoute::Irqchip {
                gsi,
                chip: IrqChip::Ioapic,
                pin: gsi,
            });
        }
        v
    }

    /// An MSI route (x86 MSIs carry no requester ID: `_devid` is unused).
    pub fn msi(gsi: u32, address: u64, data: u32, _devid: u32) -> GsiRoute {
        GsiRoute::Msi { gsi, address, data }
    }
}

/// Debug registers DR0-3, DR6, DR7 (KVM_GET_DEBUGREGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DebugRegs {
    pub db: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
    pub flags: u64,
}

/// One extended control register (XCR0 is the only one today).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Xcr {
    pub xcr: u32,
    pub value: u64,
}

/// A pending or injected exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PendingException {
    pub injected: u8,
    pub nr: u8,
    pub has_error_code: u8,
    pub pending: u8,
    pub error_code: u32,
    pub has_payload: u8,
    pub payload: u64,
}

/// Exceptions, interrupts, NMIs and SMIs in flight on a vCPU
/// (KVM_GET_VCPU_EVENTS): what a paused vCPU was about to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VcpuEvents {
    pub exception: PendingException,
    /// Interrupt: injected, vector, soft, interrupt shadow.
    pub interrupt: [u8; 4],
    /// NMI: injected, pending, masked.
    pub nmi: [u8; 3],
    pub sipi_vector: u32,
    pub flags: u32,
    /// SMI: smm, pending, smm_inside_nmi, latched_init.
    pub smi: [u8; 4],
    pub triple_fault_pending: u8,
}

/// Everything the hypervisor holds for one vCPU, in the order it is read.
/// A snapshot stores one per vCPU; [`crate::hv::Vcpu::restore_state`]
/// writes it back in the order the hypervisor needs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's id (its APIC ID).
    pub id: u8,
    /// The CPUID the VMM gave the vCPU (the VMM's record: not every
    /// hypervisor reads back what was set).
    pub cpuid: Vec<CpuidEntry>,
    pub mp_state: u32,
    pub regs: Regs,
    pub sregs: SpecialRegs,
    /// The XSAVE area as the hypervisor lays it out (4 KiB, legacy area
    /// first); empty when only the FXSAVE view (`fpu`) is available.
    pub xsave: Vec<u32>,
    pub fpu: Fpu,
    pub xcrs: Vec<Xcr>,
    pub debug_regs: DebugRegs,
    pub lapic: LapicState,
    pub msrs: Vec<MsrEntry>,
    pub events: VcpuEvents,
    /// The TSC frequency the guest saw, in kHz (0: unknown).
    pub tsc_khz: u32,
}

/// One i8259 PIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PicState {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: u8,
    pub poll: u8,
    pub special_mask: u8,
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    pub init4: u8,
    pub elcr: u8,
    pub elcr_mask: u8,
}

/// The IOAPIC: registers and its 24 redirection entries (raw 64-bit form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IoapicState {
    pub base_address: u64,
    pub ioregsel: u32,
    pub id: u32,
    pub irr: u32,
    pub redirtbl: [u64; 24],
}

/// One i8254 channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PitChannel {
    pub count: u32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: u8,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: u8,
    pub gate: u8,
    pub count_load_time: i64,
}

/// The i8254 PIT (KVM_GET_PIT2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PitState {
    pub channels: [PitChannel; 3],
    pub flags: u32,
}

/// What the hypervisor holds for the VM as a whole: the in-kernel
/// interrupt controllers, the PIT and the paravirtual clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmIrqState {
    pub pic_master: PicState,
    pub pic_slave: PicState,
    pub ioapic: IoapicState,
    pub pit: PitState,
    /// kvmclock in ns, and its flags (KVM_GET_CLOCK).
    pub clock: u64,
    pub clock_flags: u32,
}

/// serde for `[u8; N]` past serde's 32-element arrays: a byte sequence.
mod byte_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let v: Vec<u8> = Vec::deserialize(d)?;
        let len = v.len();
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(len, &"the register page's size"))
    }
}
