//! What the HVF backend does with one decoded exception (`aarch64_exits::esr`):
//! the plain function the vCPU loop calls after `hv_vcpu_run`, and the
//! MMIO completion KVM does inside KVM_RUN and HVF leaves to the VMM (the
//! value of an MMIO read goes into its register, the PC moves past the
//! access, on the next run).

use aarch64_exits::esr::{Exit, MmioAccess, Wait, ZERO_REGISTER};

/// The backend's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Report an MMIO read of `access.size` bytes at `addr` to the VMM; the
    /// data it fills in is completed by [`Pending`] on the next run.
    MmioRead { addr: u64, access: MmioAccess },
    /// Report an MMIO write at `addr` of register `access.register` (its
    /// low `access.size` bytes: [`write_data`]).
    MmioWrite { addr: u64, access: MmioAccess },
    /// A PSCI (SMCCC) call in x0..x3; HVC leaves the PC past the call, SMC
    /// does not (`pc_advance`).
    Psci { pc_advance: u64 },
    /// WFI: sleep until the virtual timer fires or an interrupt comes.
    WaitForInterrupt { pc_advance: u64 },
    /// WFE and the rest: nothing to wait for here; go on.
    Continue { pc_advance: u64 },
    /// A trapped system register HVF left to the VMM (debug and OS lock
    /// registers): read as zero into `register` (none for XZR or a
    /// write), writes ignored, as QEMU's HVF does for registers it does
    /// not model.
    SysRegZero {
        register: Option<u8>,
        pc_advance: u64,
    },
    /// Nothing the backend can do: the vCPU reports an internal error
    /// with this description.
    Fault(String),
}

/// Decides what to do with `exit`, taken at IPA `ipa` (meaningful for
/// aborts); `pc_advance` is the trapped instruction's length where the PC
/// must move past it (`Syndrome::pc_advance`).
pub fn step(exit: Exit, ipa: u64, pc_advance: u64) -> Step {
    match exit {
        Exit::Mmio(access) if access.write => Step::MmioWrite { addr: ipa, access },
        Exit::Mmio(access) => Step::MmioRead { addr: ipa, access },
        Exit::Hvc { .. } | Exit::Smc { .. } => Step::Psci { pc_advance },
        Exit::Wait(Wait::Wfi | Wait::Wfit) => Step::WaitForInterrupt { pc_advance },
        Exit::Wait(Wait::Wfe | Wait::Wfet) => Step::Continue { pc_advance },
        Exit::SysReg(a) => Step::SysRegZero {
            register: (a.read && a.register != ZERO_REGISTER).then_some(a.register),
            pc_advance,
        },
        Exit::DataAbortNoSyndrome { dfsc, write } => Step::Fault(format!(
            "guest {} at IPA {ipa:#x} outside guest RAM with no syndrome to emulate it (DFSC {dfsc:#x}: a load/store pair, writeback or SIMD access to MMIO)",
            if write { "write" } else { "read" }
        )),
        Exit::InstructionAbort { ifsc } => Step::Fault(format!(
            "instruction fetch from IPA {ipa:#x} outside guest RAM (IFSC {ifsc:#x})"
        )),
        Exit::Brk { imm } => Step::Fault(format!("BRK #{imm:#x} with no debugger attached")),
        Exit::Unknown => Step::Fault("an exception HVF gave no class for".into()),
        Exit::Other { ec, iss } => {
            Step::Fault(format!("unhandled exception class {ec:#x} (ISS {iss:#x})"))
        }
    }
}

/// The bytes an MMIO write carries: the low `access.size` bytes of the
/// register (`reg` is its value; XZR reads as 0), little-endian.
pub fn write_data(access: &MmioAccess, reg: u64) -> ([u8; 8], usize) {
    let v = if access.register == ZERO_REGISTER {
        0
    } else {
        access.store_value(reg)
    };
    (v.to_le_bytes(), usize::from(access.size).min(8))
}

/// What is left of an exit once the VMM has handled it: a register to load
/// (an MMIO read) and the PC to move past the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub read: Option<MmioAccess>,
    pub pc_advance: u64,
}

/// The register writes that finish an exit, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// General register `x<n>` and its new value (none for XZR or a write).
    pub load: Option<(u8, u64)>,
    pub pc_advance: u64,
}

impl Pending {
    /// Finishes the access with the bytes the VMM filled in (little-endian,
    /// `access.size` of them).
    pub fn complete(&self, data: &[u8]) -> Completion {
        let load = self.read.and_then(|a| {
            let mut b = [0u8; 8];
            let n = data.len().min(8).min(usize::from(a.size));
            b[..n].copy_from_slice(&data[..n]);
            (a.register != ZERO_REGISTER).then(|| (a.register, a.load_value(u64::from_le_bytes(b))))
        });
        Completion {
            load,
            pc_advance: self.pc_advance,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aarch64_exits::esr::{Syndrome, SysReg, SysRegAccess};

    fn esr(ec: u64, iss: u64) -> u64 {
        ec << 26 | 1 << 25 | iss
    }

    /// A data abort with a valid syndrome: SAS, SSE, SRT, SF, WnR.
    fn dabt(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        esr(
            0x24,
            1 << 24
                | sas << 22
                | u64::from(sse) << 21
                | srt << 16
                | u64::from(sf) << 15
                | u64::from(wnr) << 6
                | 0b000111,
        )
    }

    fn decode(esr: u64, ipa: u64) -> Step {
        let s = Syndrome::new(esr);
        step(s.decode(), ipa, s.pc_advance())
    }

    #[test]
    fn an_mmio_read_completes_into_its_register_and_moves_the_pc() {
        // ldrsb w3, [uart]: one byte, sign-extended into a 32-bit register.
        let Step::MmioRead { addr, access } = decode(dabt(0, true, 3, false, false), 0x900_0005)
        else {
            panic!("not an MMIO read");
        };
        assert_eq!((addr, access.size), (0x900_0005, 1));
        let p = Pending {
            read: Some(access),
            pc_advance: 4,
        };
        assert_eq!(
            p.complete(&[0x80]),
            Completion {
                load: Some((3, 0xffff_ff80)),
                pc_advance: 4
            }
        );
        // ldr x30, [gicd]: eight bytes as they are.
        let Step::MmioRead { access, .. } = decode(dabt(3, false, 30, true, false), 0x800_0000)
        else {
            panic!("not an MMIO read");
        };
        let p = Pending {
            read: Some(access),
            pc_advance: 4,
        };
        assert_eq!(
            p.complete(&0x1122_3344_5566_7788u64.to_le_bytes()).load,
            Some((30, 0x1122_3344_5566_7788))
        );
        // A read into XZR loads nothing but still moves the PC.
        let Step::MmioRead { access, .. } = decode(dabt(2, false, 31, false, false), 0x1000) else {
            panic!("not an MMIO read");
        };
        let p = Pending {
            read: Some(access),
            pc_advance: 4,
        };
        assert_eq!(
            p.complete(&[1, 2, 3, 4]),
            Completion {
                load: None,
                pc_advance: 4
            }
        );
    }

    #[test]
    fn an_mmio_write_carries_the_registers_low_bytes() {
        let Step::MmioWrite { addr, access } = decode(dabt(1, false, 2, false, true), 0x901_0000)
        else {
            panic!("not an MMIO write");
        };
        assert_eq!(addr, 0x901_0000);
        let (b, n) = write_data(&access, 0xdead_beef_cafe_f00d);
        assert_eq!(&b[..n], &[0x0d, 0xf0]);
        // str wzr: zeros, whatever x31 (SP) holds.
        let Step::MmioWrite { access, .. } = decode(dabt(2, false, 31, false, true), 0x1000) else {
            panic!("not an MMIO write");
        };
        assert_eq!(write_data(&access, u64::MAX), ([0; 8], 4));
        // A write completes with the PC move only.
        let p = Pending {
            read: None,
            pc_advance: 4,
        };
        assert_eq!(p.complete(&[]).load, None);
    }

    #[test]
    fn calls_waits_system_registers_and_faults() {
        // HVC #0: PSCI, the PC already past it; SMC #0: moved by 4.
        assert_eq!(decode(esr(0x16, 0), 0), Step::Psci { pc_advance: 0 });
        assert_eq!(decode(esr(0x17, 0), 0), Step::Psci { pc_advance: 4 });
        assert_eq!(
            decode(esr(0x01, 0), 0),
            Step::WaitForInterrupt { pc_advance: 4 }
        );
        assert_eq!(decode(esr(0x01, 1), 0), Step::Continue { pc_advance: 4 });
        let read = Exit::SysReg(SysRegAccess {
            reg: SysReg::OSLAR_EL1,
            register: 5,
            read: true,
        });
        assert_eq!(
            step(read, 0, 4),
            Step::SysRegZero {
                register: Some(5),
                pc_advance: 4
            }
        );
        let write = Exit::SysReg(SysRegAccess {
            reg: SysReg::OSLAR_EL1,
            register: 5,
            read: false,
        });
        assert_eq!(
            step(write, 0, 4),
            Step::SysRegZero {
                register: None,
                pc_advance: 4
            }
        );
        // A data abort without a valid syndrome cannot be emulated.
        let Step::Fault(why) = decode(esr(0x24, 1 << 6 | 0b000111), 0x1234_0000) else {
            panic!("not a fault");
        };
        assert!(why.contains("guest write at IPA 0x12340000"), "{why}");
        let Step::Fault(why) = decode(esr(0x20, 0b000111), 0x8000_0000) else {
            panic!("not a fault");
        };
        assert!(
            why.contains("instruction fetch from IPA 0x80000000"),
            "{why}"
        );
        assert!(matches!(decode(esr(0x3c, 0x10), 0), Step::Fault(_)));
    }
}
