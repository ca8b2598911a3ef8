//! ESR_EL2, the exception syndrome of a guest exit (Arm ARM D24.2.42):
//! EC in bits 31:26 says what trapped, IL (bit 25) the instruction length,
//! ISS (bits 24:0) the details. HVF hands it over raw
//! (`hv_vcpu_exit_exception_t.syndrome`), with the faulting guest physical
//! address beside it (`physical_address`, for a data abort).

/// Exception classes this VMM handles (the rest are [`Exit::Other`]).
mod ec {
    pub const UNKNOWN: u8 = 0x00;
    pub const WFX: u8 = 0x01;
    pub const HVC64: u8 = 0x16;
    pub const SMC64: u8 = 0x17;
    pub const SYSREG: u8 = 0x18;
    pub const INSN_ABORT_LOWER: u8 = 0x20;
    pub const DATA_ABORT_LOWER: u8 = 0x24;
    pub const BRK64: u8 = 0x3c;
}

/// One decoded exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A load or store the hypervisor could not satisfy from RAM: MMIO (or a
    /// guest bug), at the IPA the hypervisor reports beside the syndrome.
    Mmio(MmioAccess),
    /// A data abort without a valid instruction syndrome (ISV = 0: a load or
    /// store pair, writeback, SIMD): the access can't be emulated from the
    /// syndrome alone.
    DataAbortNoSyndrome { dfsc: u8, write: bool },
    /// An instruction fetch from an address with no memory.
    InstructionAbort { ifsc: u8 },
    /// HVC #imm (the PSCI conduit of QEMU's `virt`): the call is in x0..x3.
    Hvc { imm: u16 },
    /// SMC #imm trapped to the hypervisor.
    Smc { imm: u16 },
    /// WFI or WFE (with or without a timeout: WFIT, WFET).
    Wait(Wait),
    /// An MSR, MRS or system instruction that traps (EC 0x18).
    SysReg(SysRegAccess),
    /// BRK #imm in the guest (a debugger's breakpoint, or a guest panic).
    Brk { imm: u16 },
    /// An instruction the hardware could not classify (EC 0: often an UNDEF).
    Unknown,
    /// Any other class: EC and ISS as they came.
    Other { ec: u8, iss: u32 },
}

/// Which wait instruction trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Wfi,
    Wfe,
    /// WFI with a timeout (FEAT_WFxT).
    Wfit,
    /// WFE with a timeout (FEAT_WFxT).
    Wfet,
}

/// A trapped load or store with a valid syndrome (ISV = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioAccess {
    /// Bytes accessed: 1, 2, 4 or 8 (SAS).
    pub size: u8,
    /// The guest register: Xt / Wt, 0..=30; 31 is the zero register (a
    /// store writes 0, a load's value goes nowhere).
    pub register: u8,
    pub write: bool,
    /// A load sign-extends the value to the register's width (SSE).
    pub sign_extend: bool,
    /// The register is 64 bits wide (Xt); otherwise 32 (Wt) and its upper
    /// half becomes 0 on a load (SF).
    pub reg64: bool,
    /// A load-acquire or store-release (AR): ordering the VMM keeps by
    /// handling the access before the vCPU runs on.
    pub acquire_release: bool,
}

/// The zero register's number in an instruction's Rt field.
pub const ZERO_REGISTER: u8 = 31;

impl MmioAccess {
    /// The value a load leaves in the register, from the `size` bytes the
    /// device returned (little endian, in the low bits of `data`): sign- or
    /// zero-extended to the access width, then to 32 or 64 bits.
    pub fn load_value(&self, data: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        let mut v = if bits >= 64 {
            data
        } else {
            data & ((1u64 << bits) - 1)
        };
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if self.reg64 { v } else { v & 0xffff_ffff }
    }

    /// The `size` bytes a store writes, from the register's value (`0` for
    /// the zero register is the caller's, who reads no register then).
    pub fn store_value(&self, reg: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        if bits >= 64 {
            reg
        } else {
            reg & ((1u64 << bits) - 1)
        }
    }
}

/// Direction and encoding of a trapped system register access (ISS for
/// EC 0x18): op0, op1, CRn, CRm, op2 as in `S3_0_C1_C0_0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysRegAccess {
    pub reg: SysReg,
    /// Rt, 0..=30 (31: the zero register).
    pub register: u8,
    /// MRS (the guest reads the register into Rt); else MSR.
    pub read: bool,
}

/// A system register's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SysReg {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
}

impl SysReg {
    /// Some registers a VMM meets first (Arm ARM names).
    pub const CNTP_CTL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 1);
    pub const CNTP_CVAL_EL0: SysReg = SysReg::new(3, 3, 14, 2, 2);
    pub const ICC_SGI1R_EL1: SysReg = SysReg::new(3, 0, 12, 11, 5);
    pub const OSLAR_EL1: SysReg = SysReg::new(2, 0, 1, 0, 4);
    pub const OSDLR_EL1: SysReg = SysReg::new(2, 0, 1, 3, 4);

    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> SysReg {
        SysReg {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }
}

impl std::fmt::Display for SysReg {
    /// The generic name an assembler accepts: `S3_0_C1_C0_0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S{}_{}_C{}_C{}_{}",
            self.op0, self.op1, self.crn, self.crm, self.op2
        )
    }
}

/// A syndrome split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syndrome {
    pub ec: u8,
    /// The trapped instruction is 32 bits long (always, for an AArch64 guest).
    pub il32: bool,
    pub iss: u32,
}

impl Syndrome {
    pub fn new(esr: u64) -> Syndrome {
        Syndrome {
            ec: ((esr >> 26) & 0x3f) as u8,
            il32: esr & (1 << 25) != 0,
            iss: (esr & 0x1ff_ffff) as u32,
        }
    }

    /// The exit this syndrome describes.
    pub fn decode(&self) -> Exit {
        let iss = self.iss;
        let bit = |n: u32| iss & (1 << n) != 0;
        let field = |lo: u32, len: u32| ((iss >> lo) & ((1 << len) - 1)) as u8;
        match self.ec {
            ec::DATA_ABORT_LOWER if bit(24) => Exit::Mmio(MmioAccess {
                size: 1 << field(22, 2),
                register: field(16, 5),
                write: bit(6),
                sign_extend: bit(21),
                reg64: bit(15),
                acquire_release: bit(14),
            }),
            ec::DATA_ABORT_LOWER => Exit::DataAbortNoSyndrome {
                dfsc: field(0, 6),
                write: bit(6),
            },
            ec::INSN_ABORT_LOWER => Exit::InstructionAbort { ifsc: field(0, 6) },
            ec::HVC64 => Exit::Hvc {
                imm: (iss & 0xffff) as u16,
            },
            ec::SMC64 => Exit::Smc {
                imm: (iss & 0xffff) as u16,
            },
            ec::WFX => Exit::Wait(match iss & 3 {
                0 => Wait::Wfi,
                1 => Wait::Wfe,
                2 => Wait::Wfit,
                _ => Wait::Wfet,
            }),
            ec::SYSREG => Exit::SysReg(SysRegAccess {
                reg: SysReg {
                    op0: field(20, 2),
                    op2: field(17, 3),
                    op1: field(14, 3),
                    crn: field(10, 4),
                    crm: field(1, 4),
                },
                register: field(5, 5),
                read: bit(0),
            }),
            ec::BRK64 => Exit::Brk {
                imm: (iss & 0xffff) as u16,
            },
            ec::UNKNOWN => Exit::Unknown,
            ec => Exit::Other { ec, iss },
        }
    }

    /// How many bytes the PC moves once the exit is handled: past the
    /// trapping instruction for an access, a wait or an SMC (their
    /// preferred return address is the instruction itself); 0 for an HVC,
    /// whose return address is already the next instruction, and for what
    /// the VMM does not emulate (aborts, BRK: the guest sees them again or
    /// gets an exception injected).
    pub fn pc_advance(&self) -> u64 {
        let len = if self.il32 { 4 } else { 2 };
        match self.decode() {
            Exit::Mmio(_) | Exit::SysReg(_) | Exit::Wait(_) | Exit::Smc { .. } => len,
            _ => 0,
        }
    }
}

/// Decodes a raw ESR_EL2 value.
pub fn decode(esr: u64) -> Exit {
    Syndrome::new(esr).decode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EC, IL = 1 and ISS into an ESR value.
    fn esr(ec: u32, iss: u32) -> u64 {
        u64::from(ec << 26 | 1 << 25 | iss)
    }

    /// A data abort syndrome with ISV = 1.
    fn dabt(sas: u32, sse: bool, srt: u32, sf: bool, ar: bool, wnr: bool) -> u64 {
        let iss = 1 << 24
            | sas << 22
            | u32::from(sse) << 21
            | srt << 16
            | u32::from(sf) << 15
            | u32::from(ar) << 14
            | u32::from(wnr) << 6
            | 0b000111; // translation fault, level 3
        esr(0x24, iss)
    }

    #[test]
    fn data_aborts_decode_size_register_direction_and_extension() {
        // str w1, [x0]: 4 bytes from W1.
        let e = decode(dabt(2, false, 1, false, false, true));
        assert_eq!(
            e,
            Exit::Mmio(MmioAccess {
                size: 4,
                register: 1,
                write: true,
                sign_extend: false,
                reg64: false,
                acquire_release: false,
            })
        );
        // ldrsb x3, [x0]: 1 byte sign-extended into X3.
        let Exit::Mmio(a) = decode(dabt(0, true, 3, true, false, false)) else {
            panic!("not MMIO");
        };
        assert_eq!(
            (a.size, a.register, a.write, a.sign_extend, a.reg64),
            (1, 3, false, true, true)
        );
        assert_eq!(a.load_value(0x80), 0xffff_ffff_ffff_ff80);
        assert_eq!(a.load_value(0x7f), 0x7f);
        // Only the accessed byte counts.
        assert_eq!(a.load_value(0x1234_5680), 0xffff_ffff_ffff_ff80);
        // ldrsh w5, [x0]: sign-extended to 32 bits, upper half zero.
        let Exit::Mmio(a) = decode(dabt(1, true, 5, false, false, false)) else {
            panic!("not MMIO");
        };
        assert_eq!(a.load_value(0x8000), 0xffff_8000);
        // ldr x30, [x0]: 8 bytes as they are.
        let Exit::Mmio(a) = decode(dabt(3, false, 30, true, false, false)) else {
            panic!("not MMIO");
        };
        assert_eq!((a.size, a.register), (8, 30));
        assert_eq!(a.load_value(u64::MAX), u64::MAX);
        // ldr w2: zero-extended, never sign-extended.
        let Exit::Mmio(a) = decode(dabt(2, false, 2, false, false, false)) else {
            panic!("not MMIO");
        };
        assert_eq!(a.load_value(0xdead_beef_8000_0000), 0x8000_0000);
        // stlr x0 from the zero register: a release store of 8 bytes.
        let Exit::Mmio(a) = decode(dabt(3, false, 31, true, true, true)) else {
            panic!("not MMIO");
        };
        assert!(a.acquire_release && a.write && a.register == ZERO_REGISTER);
        // strh: the low two bytes of the register.
        let Exit::Mmio(a) = decode(dabt(1, false, 4, false, false, true)) else {
            panic!("not MMIO");
        };
        assert_eq!(a.store_value(0x1122_3344_5566_7788), 0x7788);
    }

    #[test]
    fn data_abort_without_syndrome_is_not_emulated() {
        // ISV = 0 (ldp x0, x1, [x2]), write = 0, translation fault level 2.
        let s = Syndrome::new(esr(0x24, 0b000110));
        assert_eq!(
            s.decode(),
            Exit::DataAbortNoSyndrome {
                dfsc: 0b000110,
                write: false
            }
        );
        assert_eq!(s.pc_advance(), 0);
    }

    #[test]
    fn hvc_and_smc_carry_their_immediate_and_move_the_pc_differently() {
        let hvc = Syndrome::new(esr(0x16, 0));
        assert_eq!(hvc.decode(), Exit::Hvc { imm: 0 });
        assert_eq!(hvc.pc_advance(), 0, "ELR is past the HVC already");
        let smc = Syndrome::new(esr(0x17, 0x1234));
        assert_eq!(smc.decode(), Exit::Smc { imm: 0x1234 });
        assert_eq!(smc.pc_advance(), 4, "a trapped SMC returns to itself");
    }

    #[test]
    fn waits_decode_all_four_kinds() {
        for (ti, w) in [
            (0, Wait::Wfi),
            (1, Wait::Wfe),
            (2, Wait::Wfit),
            (3, Wait::Wfet),
        ] {
            let s = Syndrome::new(esr(0x01, 1 << 24 | ti));
            assert_eq!(s.decode(), Exit::Wait(w));
            assert_eq!(s.pc_advance(), 4);
        }
    }

    #[test]
    fn sysreg_traps_decode_the_encoding_and_direction() {
        // mrs x7, cntp_ctl_el0: op0 3, op2 1, op1 3, CRn 14, Rt 7, CRm 2, read.
        let iss = 3 << 20 | 1 << 17 | 3 << 14 | 14 << 10 | 7 << 5 | 2 << 1 | 1;
        let s = Syndrome::new(esr(0x18, iss));
        assert_eq!(
            s.decode(),
            Exit::SysReg(SysRegAccess {
                reg: SysReg::CNTP_CTL_EL0,
                register: 7,
                read: true
            })
        );
        assert_eq!(s.pc_advance(), 4);
        assert_eq!(SysReg::CNTP_CTL_EL0.to_string(), "S3_3_C14_C2_1");
        // msr icc_sgi1r_el1, x0: a write.
        let iss = 3 << 20 | 5 << 17 | 12 << 10 | 11 << 1;
        assert_eq!(
            decode(esr(0x18, iss)),
            Exit::SysReg(SysRegAccess {
                reg: SysReg::ICC_SGI1R_EL1,
                register: 0,
                read: false
            })
        );
        // msr oslar_el1, x1 (op0 2: a debug register).
        let iss = 2 << 20 | 4 << 17 | 1 << 10 | 1 << 5;
        let Exit::SysReg(a) = decode(esr(0x18, iss)) else {
            panic!("not a sysreg trap");
        };
        assert_eq!((a.reg, a.register, a.read), (SysReg::OSLAR_EL1, 1, false));
    }

    #[test]
    fn other_classes_keep_their_bits() {
        assert_eq!(
            decode(esr(0x20, 0x0f)),
            Exit::InstructionAbort { ifsc: 0x0f }
        );
        assert_eq!(decode(esr(0x3c, 0x800)), Exit::Brk { imm: 0x800 });
        assert_eq!(decode(0), Exit::Unknown);
        // SVE access trap (EC 0x19) is not ours.
        assert_eq!(
            decode(esr(0x19, 0x42)),
            Exit::Other {
                ec: 0x19,
                iss: 0x42
            }
        );
        assert_eq!(Syndrome::new(esr(0x19, 0)).pc_advance(), 0);
        // A 16-bit instruction (IL = 0) moves the PC by 2.
        let s = Syndrome::new(0x01 << 26);
        assert_eq!((s.il32, s.pc_advance()), (false, 2));
    }
}
