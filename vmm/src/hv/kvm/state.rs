//! Saving and restoring what KVM holds for a vCPU and for the VM, in the
//! boundary's own types (`x86.rs`). The order of the calls is KVM's
//! contract, as Firecracker and Cloud Hypervisor follow it:
//!
//! - save: MP state first (KVM_GET_MP_STATE accepts pending INIT/SIPI
//!   events, which changes LAPIC and vCPU state), then registers, XSAVE,
//!   XCRs, debug registers, LAPIC, MSRs, and the vCPU events last (reading
//!   the LAPIC may change what is pending);
//! - restore: CPUID first (it decides which MSRs and XSAVE features
//!   exist), MP state, registers, special registers (the APIC base), XSAVE,
//!   XCRs, debug registers, LAPIC (after SREGS: the APIC base; before the
//!   MSRs: the TSC-deadline MSR needs the LAPIC's timer mode), MSRs, and
//!   the vCPU events last.
//!
//! VM-wide: the PIT, the KVM clock (without KVM_CLOCK_TSC_STABLE, which
//! KVM_SET_CLOCK refuses) and the three irqchips.

#![allow(
    clippy::cast_possible_truncation,
    reason = "KVM's fields are fixed-width; the casts restore the same widths they were read from"
)]

use kvm_bindings::{
    KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs,
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_mp_state, kvm_msr_entry, kvm_pic_state,
    kvm_pit_channel_state, kvm_pit_state2, kvm_vcpu_events, kvm_xcr, kvm_xcrs, kvm_xsave,
};

use super::{Error, Vcpu, Vm, fpu_from, ioctl, lapic_from, regs_from, sregs_from};
use crate::hv::x86::{
    DebugRegs, IoapicState, MsrEntry, PendingException, PicState, PitChannel, PitState, VcpuEvents,
    VcpuState, VmIrqState, Xcr,
};

/// MSRs per KVM_GET_MSRS/KVM_SET_MSRS call (KVM_MAX_MSR_ENTRIES).
const MSR_CHUNK: usize = 256;

impl Vm {
    /// The in-kernel PICs, IOAPIC, PIT and the KVM clock.
    pub fn save_irq_state(&self) -> Result<VmIrqState, Error> {
        let pit = self.fd.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?;
        let clock = self.fd.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?;
        let mut chips = [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ]
        .map(|chip_id| kvm_irqchip {
            chip_id,
            ..Default::default()
        });
        for c in &mut chips {
            self.fd.get_irqchip(c).map_err(ioctl("KVM_GET_IRQCHIP"))?;
        }
        // SAFETY: KVM filled `pic` for the PIC chip ids and `ioapic` for the
        // IOAPIC id; every bit pattern is valid for these plain structs.
        let (master, slave, ioapic) =
            unsafe { (chips[0].chip.pic, chips[1].chip.pic, chips[2].chip.ioapic) };
        Ok(VmIrqState {
            pic_master: pic_from(&master),
            pic_slave: pic_from(&slave),
            ioapic: IoapicState {
                base_address: ioapic.base_address,
                ioregsel: ioapic.ioregsel,
                id: ioapic.id,
                irr: ioapic.irr,
                // SAFETY: `bits` covers the whole 64-bit entry.
                redirtbl: ioapic.redirtbl.map(|e| unsafe { e.bits }),
            },
            pit: PitState {
                channels: pit.channels.map(|c| pit_channel_from(&c)),
                flags: pit.flags,
            },
            clock: clock.clock,
            clock_flags: clock.flags,
        })
    }

    /// Writes back [`Vm::save_irq_state`]'s result (vCPUs not running).
    pub fn restore_irq_state(&self, s: &VmIrqState) -> Result<(), Error> {
        let pit = kvm_pit_state2 {
            channels: s.pit.channels.map(|c| pit_channel_to(&c)),
            flags: s.pit.flags,
            ..Default::default()
        };
        self.fd.set_pit2(&pit).map_err(ioctl("KVM_SET_PIT2"))?;
        let clock = kvm_clock_data {
            clock: s.clock,
            flags: s.clock_flags & !KVM_CLOCK_TSC_STABLE,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))?;
        let mut master = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        master.chip.pic = pic_to(&s.pic_master);
        let mut slave = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_SLAVE,
            ..Default::default()
        };
        slave.chip.pic = pic_to(&s.pic_slave);
        let mut ioapic = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        // SAFETY: writing the `ioapic` member of a zeroed union whose chip
        // id says IOAPIC; every field is then set below.
        let io = unsafe { &mut ioapic.chip.ioapic };
        io.base_address = s.ioapic.base_address;
        io.ioregsel = s.ioapic.ioregsel;
        io.id = s.ioapic.id;
        io.irr = s.ioapic.irr;
        for (e, bits) in io.redirtbl.iter_mut().zip(s.ioapic.redirtbl) {
            e.bits = bits;
        }
        for c in [&master, &slave, &ioapic] {
            self.fd.set_irqchip(c).map_err(ioctl("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}

impl Vcpu {
    /// Reads `indices` (at most [`MSR_CHUNK`]); KVM stops at the first
    /// one it cannot read, so fewer may come back.
    fn read_msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>, Error> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooMany {
            what: "MSRs",
            count: entries.len(),
        })?;
        let n = self.fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[..n.min(indices.len())]
            .iter()
            .map(|e| MsrEntry {
                index: e.index,
                data: e.data,
            })
            .collect())
    }

    /// Everything KVM holds for this (paused) vCPU; `msrs` from
    /// [`Vm::msrs_to_save`].
    pub fn save_state(&self, msrs: &[u32]) -> Result<VcpuState, Error> {
        let fd = &self.fd;
        let mp_state = fd.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
        let fpu = fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
        let xcrs = fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
        let dregs = fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
        // KVM_GET_MSRS stops at the first MSR it cannot read for this
        // vCPU: that one is skipped (as Cloud Hypervisor does), the rest read.
        let mut msr_values = Vec::with_capacity(msrs.len());
        for chunk in msrs.chunks(MSR_CHUNK) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let got = self.read_msrs(rest)?;
                let n = got.len();
                msr_values.extend(got);
                if let Some(skipped) = rest.get(n) {
                    log::debug!("vCPU {}: MSR {skipped:#x} not readable, not saved", self.id);
                }
                rest = rest.get(n + 1..).unwrap_or(&[]);
            }
        }
        let tsc_khz = fd.get_tsc_khz().unwrap_or(0);
        let events = fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        let nr = xcrs.nr_xcrs.min(xcrs.xcrs.len() as u32) as usize;
        Ok(VcpuState {
            id: self.id,
            // What the VMM set (KVM_GET_CPUID2 is not that on every host:
            // PVM reports the host's features there); the caller fills it.
            cpuid: Vec::new(),
            mp_state: mp_state.mp_state,
            regs: regs_from(regs),
            sregs: sregs_from(sregs),
            xsave: xsave.region.to_vec(),
            fpu: fpu_from(fpu),
            xcrs: xcrs.xcrs[..nr]
                .iter()
                .map(|x| Xcr {
                    xcr: x.xcr,
                    value: x.value,
                })
                .collect(),
            debug_regs: DebugRegs {
                db: dregs.db,
                dr6: dregs.dr6,
                dr7: dregs.dr7,
                flags: dregs.flags,
            },
            lapic: lapic_from(&lapic),
            msrs: msr_values,
            events: events_from(&events),
            tsc_khz,
        })
    }

    /// Writes `s` back into this freshly created vCPU, in KVM's order.
    pub fn restore_state(&self, s: &VcpuState) -> Result<(), Error> {
        let fd = &self.fd;
        self.set_cpuid(&s.cpuid)?;
        if s.tsc_khz != 0 && fd.get_tsc_khz().ok() != Some(s.tsc_khz) {
            fd.set_tsc_khz(s.tsc_khz)
                .map_err(ioctl("KVM_SET_TSC_KHZ"))?;
        }
        fd.set_mp_state(kvm_mp_state {
            mp_state: s.mp_state,
        })
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
        self.set_regs(&s.regs)?;
        self.set_sregs(&s.sregs)?;
        if s.xsave.is_empty() {
            self.set_fpu(&s.fpu)?;
        } else {
            let mut xsave = kvm_xsave::default();
            let n = s.xsave.len().min(xsave.region.len());
            xsave.region[..n].copy_from_slice(&s.xsave[..n]);
            // SAFETY: a 4 KiB kvm_xsave without a flexible-array tail: KVM
            // reads exactly the struct (KVM_SET_XSAVE, not XSAVE2).
            unsafe { fd.set_xsave(&xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        }
        if !s.xcrs.is_empty() {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: s.xcrs.len().min(16) as u32,
                ..Default::default()
            };
            for (d, x) in xcrs.xcrs.iter_mut().zip(&s.xcrs) {
                *d = kvm_xcr {
                    xcr: x.xcr,
                    reserved: 0,
                    value: x.value,
                };
            }
            fd.set_xcrs(&xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&kvm_debugregs {
            db: s.debug_regs.db,
            dr6: s.debug_regs.dr6,
            dr7: s.debug_regs.dr7,
            flags: s.debug_regs.flags,
            ..Default::default()
        })
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        self.set_lapic(&s.lapic)?;
        for chunk in s.msrs.chunks(MSR_CHUNK) {
            self.set_msrs(chunk)?;
        }
        fd.set_vcpu_events(&events_to(&s.events))
            .map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }
}

fn events_from(e: &kvm_vcpu_events) -> VcpuEvents {
    VcpuEvents {
        exception: PendingException {
            injected: e.exception.injected,
            nr: e.exception.nr,
            has_error_code: e.exception.has_error_code,
            pending: e.exception.pending,
            error_code: e.exception.error_code,
            has_payload: e.exception_has_payload,
            payload: e.exception_payload,
        },
        interrupt: [
            e.interrupt.injected,
            e.interrupt.nr,
            e.interrupt.soft,
            e.interrupt.shadow,
        ],
        nmi: [e.nmi.injected, e.nmi.pending, e.nmi.masked],
        sipi_vector: e.sipi_vector,
        flags: e.flags,
        smi: [
            e.smi.smm,
            e.smi.pending,
            e.smi.smm_inside_nmi,
            e.smi.latched_init,
        ],
        triple_fault_pending: e.triple_fault.pending,
    }
}

fn events_to(v: &VcpuEvents) -> kvm_vcpu_events {
    let mut e = kvm_vcpu_events {
        sipi_vector: v.sipi_vector,
        flags: v.flags,
        exception_has_payload: v.exception.has_payload,
        exception_payload: v.exception.payload,
        ..Default::default()
    };
    e.exception.injected = v.exception.injected;
    e.exception.nr = v.exception.nr;
    e.exception.has_error_code = v.exception.has_error_code;
    e.exception.pending = v.exception.pending;
    e.exception.error_code = v.exception.error_code;
    [
        e.interrupt.injected,
        e.interrupt.nr,
        e.interrupt.soft,
        e.interrupt.shadow,
    ] = v.interrupt;
    [e.nmi.injected, e.nmi.pending, e.nmi.masked] = v.nmi;
    [
        e.smi.smm,
        e.smi.pending,
        e.smi.smm_inside_nmi,
        e.smi.latched_init,
    ] = v.smi;
    e.triple_fault.pending = v.triple_fault_pending;
    e
}

/// Field-by-field copies both ways between a KVM struct and ours (the
/// same fields, no padding).
macro_rules! mirror {
    ($from:ident, $to:ident, $kvm:ident, $ours:ident, [$($f:ident),* $(,)?]) => {
        fn $from(k: &$kvm) -> $ours {
            $ours { $($f: k.$f),* }
        }

        fn $to(o: &$ours) -> $kvm {
            $kvm { $($f: o.$f),* }
        }
    };
}

mirror!(
    pic_from,
    pic_to,
    kvm_pic_state,
    PicState,
    [
        last_irr,
        irr,
        imr,
        isr,
        priority_add,
        irq_base,
        read_reg_select,
        poll,
        special_mask,
        init_state,
        auto_eoi,
        rotate_on_auto_eoi,
        special_fully_nested_mode,
        init4,
        elcr,
        elcr_mask,
    ]
);

mirror!(
    pit_channel_from,
    pit_channel_to,
    kvm_pit_channel_state,
    PitChannel,
    [
        count,
        latched_count,
        count_latched,
        status_latched,
        status,
        read_state,
        write_state,
        write_latch,
        rw_mode,
        mode,
        bcd,
        gate,
        count_load_time,
    ]
);
