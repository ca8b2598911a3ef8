//! KVM implementation of the hypervisor boundary.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use devices::notifier::Notifier;
use kvm_bindings::{
    CpuId, KVM_COALESCED_MMIO_PAGE_OFFSET, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, Msrs,
    kvm_coalesced_mmio, kvm_coalesced_mmio_ring, kvm_cpuid_entry2, kvm_dtable, kvm_fpu,
    kvm_irq_routing_entry, kvm_lapic_state, kvm_msr_entry, kvm_pit_config, kvm_regs, kvm_segment,
    kvm_sregs,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::FileOffset;
use vm_memory::mmap::MmapRegion;

use super::kvm_shared::{Assign, RoutingError, ioeventfd, memory_slot, msi_entry, set_gsi_routing};
use super::x86::{
    CpuidEntry, DescriptorTable, Fpu, GsiRoute, IrqChip, LapicState, MsrEntry, Regs, Segment,
    SpecialRegs,
};
use super::{IoEventAddr, SystemEvent, VmExit};

mod state;

/// Errors from KVM calls, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("/dev/kvm: {0}{hint}", hint = open_hint(.0))]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("KVM: {op} failed: {err}")]
    Ioctl {
        op: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("KVM: KVM_SET_MSRS set {set} of {want} MSRs")]
    Msrs { set: usize, want: usize },
    #[error("KVM: cannot map the coalesced I/O ring: {0}")]
    RingMap(std::io::Error),
    #[error("KVM: {what}: {count} entries is more than KVM takes")]
    TooMany { what: &'static str, count: usize },
}

impl Error {
    /// 2 when /dev/kvm cannot be opened (missing, or no permission: a
    /// set-up the user fixes), 1 for anything KVM refuses later.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Open(_) | Error::ApiVersion(_) => 2,
            _ => 1,
        }
    }
}

/// The usual fix for a /dev/kvm that does not open.
fn open_hint(e: &kvm_ioctls::Error) -> &'static str {
    match e.errno() {
        libc::EACCES | libc::EPERM => {
            "; add your user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again)"
        }
        libc::ENOENT | libc::ENXIO | libc::ENODEV => {
            "; KVM is not available: load kvm_intel or kvm_amd, or enable virtualization in the firmware"
        }
        _ => "",
    }
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Ioctl { op, err }
}

/// What KVM can offer every vCPU on this host.
#[derive(Debug, Clone)]
pub struct HostCpu {
    /// The CPUID leaves KVM can expose (KVM_GET_SUPPORTED_CPUID).
    pub cpuid: Vec<CpuidEntry>,
    /// Whether KVM emulates the LAPIC TSC-deadline timer.
    pub tsc_deadline: bool,
}

impl HostCpu {
    fn from_kvm(kvm: &Kvm) -> Result<HostCpu, Error> {
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(HostCpu {
            cpuid: cpuid.as_slice().iter().map(|e| cpuid_from(*e)).collect(),
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        })
    }
}

/// A KVM VM: the system fd (for capabilities and CPUID) plus the VM fd.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm and creates an empty VM.
    pub fn new() -> Result<Vm, Error> {
        let kvm = Kvm::new().map_err(Error::Open)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(Error::ApiVersion(v));
        }
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        Ok(Vm { kvm, fd })
    }

    /// Adds the in-kernel PIC + IOAPIC + LAPICs; `tss_addr` is 3 pages of
    /// guest-physical space KVM may use (Intel). Must precede vCPU creation.
    pub fn add_irqchip(&self, tss_addr: u64) -> Result<(), Error> {
        self.fd
            .set_tss_address(tss_addr as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(ioctl("KVM_CREATE_IRQCHIP"))
    }

    /// Adds the in-kernel i8254 PIT (needs the irqchip; any time before the
    /// first KVM_RUN).
    pub fn add_pit(&self) -> Result<(), Error> {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))
    }

    /// What KVM offers vCPUs on this host (KVM_GET_SUPPORTED_CPUID and the
    /// TSC-deadline capability).
    pub fn host_cpu(&self) -> Result<HostCpu, Error> {
        HostCpu::from_kvm(&self.kvm)
    }

    /// Sets memory slot `slot` to `[host, host + size)` at `gpa`, read-only
    /// for the guest when `readonly` (guest writes then exit as MMIO). The
    /// one memory-slot API: guest RAM and memory BARs (which move at run
    /// time) alike.
    ///
    /// # Safety
    /// `host` must point to a mapping of at least `size` bytes that stays
    /// mapped while the slot is set (the guest reads and writes it).
    pub unsafe fn set_memory_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
        readonly: bool,
    ) -> Result<(), Error> {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { memory_slot(&self.fd, slot, gpa, host, size, readonly) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Deletes memory slot `slot` (a zero-sized region).
    pub fn remove_memory_slot(&self, slot: u32) -> Result<(), Error> {
        // SAFETY: a zero-sized region maps no host memory; it deletes the slot.
        unsafe { memory_slot(&self.fd, slot, 0, std::ptr::null_mut(), 0, false) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Connects `evt` to the interrupt line `gsi` (irqfd): a write to it
    /// raises `gsi` without an exit.
    pub fn register_irqfd(&self, evt: &Notifier, gsi: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(evt.eventfd(), gsi)
            .map_err(ioctl("KVM_IRQFD"))
    }

    /// Sends an NMI to every vCPU, as QEMU's `inject-nmi` does on x86: one
    /// MSI to the broadcast destination (0xff) with NMI delivery, which
    /// KVM's LAPICs take in xAPIC and x2APIC mode alike.
    pub fn inject_nmi(&self) -> Result<(), Error> {
        const MSI_BROADCAST: u32 = 0xfee0_0000 | (0xff << 12);
        const DELIVERY_NMI: u32 = 4 << 8;
        let msi = kvm_bindings::kvm_msi {
            address_lo: MSI_BROADCAST,
            data: DELIVERY_NMI,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(drop)
            .map_err(ioctl("KVM_SIGNAL_MSI"))
    }

    /// Undoes [`Vm::register_irqfd`].
    pub fn unregister_irqfd(&self, evt: &Notifier, gsi: u32) -> Result<(), Error> {
        self.fd
            .unregister_irqfd(evt.eventfd(), gsi)
            .map_err(ioctl("KVM_IRQFD (deassign)"))
    }

    /// Makes guest writes to `addr` (of `len` bytes when `datamatch` is
    /// given, then only writes of that value) signal `evt` instead of
    /// exiting (ioeventfd).
    pub fn register_ioeventfd(
        &self,
        evt: &Notifier,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        ioeventfd(&self.fd, evt.eventfd(), addr, datamatch, Assign::Add)
            .map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_ioeventfd`] (same arguments).
    pub fn unregister_ioeventfd(
        &self,
        evt: &Notifier,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        ioeventfd(&self.fd, evt.eventfd(), addr, datamatch, Assign::Remove)
            .map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }

    /// The MSR indices KVM can save for a vCPU (KVM_GET_MSR_INDEX_LIST);
    /// [`Vcpu::save_state`] drops those it cannot read.
    pub fn msr_index_list(&self) -> Result<Vec<u32>, Error> {
        self.kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))
    }

    /// Replaces the VM's whole interrupt routing table.
    pub fn set_gsi_routing(&self, routes: &[GsiRoute]) -> Result<(), Error> {
        let entries: Vec<kvm_irq_routing_entry> = routes.iter().map(route_to_kvm).collect();
        set_gsi_routing(&self.fd, &entries).map_err(|e| match e {
            RoutingError::TooMany(count) => Error::TooMany {
                what: "GSI routes",
                count,
            },
            RoutingError::Ioctl(err) => ioctl("KVM_SET_GSI_ROUTING")(err),
        })
    }

    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, Error> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        Ok(Vcpu { fd, id })
    }

    /// Lets guest writes to ports `[port, port + len)` complete without an
    /// exit: KVM appends them to the VM's [`CoalescedRing`] instead, and the
    /// VMM replays them later, in order. Reads still exit. Returns false
    /// when KVM cannot coalesce port I/O (KVM_CAP_COALESCED_PIO).
    pub fn coalesce_pio(&self, port: u16, len: u32) -> Result<bool, Error> {
        if !self.kvm.check_extension(Cap::CoalescedPio) {
            return Ok(false);
        }
        self.fd
            .register_coalesced_mmio(IoEventAddress::Pio(port.into()), len)
            .map_err(ioctl("KVM_REGISTER_COALESCED_MMIO"))?;
        Ok(true)
    }

    /// Undoes [`Vm::coalesce_pio`]: from its return on, writes to the
    /// ports exit again (entries already in the ring stay there).
    pub fn uncoalesce_pio(&self, port: u16, len: u32) -> Result<(), Error> {
        self.fd
            .unregister_coalesced_mmio(IoEventAddress::Pio(port.into()), len)
            .map_err(ioctl("KVM_UNREGISTER_COALESCED_MMIO"))
    }

    /// The VM fd, for the teardown hand-off only (teardown.rs passes its
    /// last reference to a helper process).
    pub fn teardown_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn route_to_kvm(r: &GsiRoute) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi: r.gsi(),
        ..Default::default()
    };
    match *r {
        GsiRoute::Irqchip { chip, pin, .. } => {
            e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
            e.u.irqchip.irqchip = match chip {
                IrqChip::PicMaster => KVM_IRQCHIP_PIC_MASTER,
                IrqChip::PicSlave => KVM_IRQCHIP_PIC_SLAVE,
                IrqChip::Ioapic => KVM_IRQCHIP_IOAPIC,
            };
            e.u.irqchip.pin = pin;
        }
        GsiRoute::Msi { gsi, address, data } => e = msi_entry(gsi, address, data),
    }
    e
}

/// The field-for-field conversions between one of KVM's structs and the
/// boundary's own: `$from` reads KVM's, `$to` builds KVM's with its padding
/// and reserved fields zeroed.
macro_rules! mirror {
    ($from:ident, $to:ident, $kvm:ty, $ours:ident { $($f:ident),* $(,)? }) => {
        fn $from(k: $kvm) -> $ours {
            $ours { $($f: k.$f),* }
        }

        fn $to(o: &$ours) -> $kvm {
            let mut k = <$kvm>::default();
            $(k.$f = o.$f;)*
            k
        }
    };
}

mirror! { cpuid_from, cpuid_to, kvm_cpuid_entry2, CpuidEntry {
    function, index, flags, eax, ebx, ecx, edx,
} }
mirror! { regs_from, regs_to, kvm_regs, Regs {
    rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags,
} }
mirror! { segment_from, segment_to, kvm_segment, Segment {
    base, limit, selector, type_, present, dpl, db, s, l, g, avl, unusable,
} }
mirror! { dtable_from, dtable_to, kvm_dtable, DescriptorTable { base, limit } }
mirror! { fpu_from, fpu_to, kvm_fpu, Fpu {
    fpr, fcw, fsw, ftwx, last_opcode, last_ip, last_dp, xmm, mxcsr,
} }

fn sregs_from(s: kvm_sregs) -> SpecialRegs {
    SpecialRegs {
        cs: segment_from(s.cs),
        ds: segment_from(s.ds),
        es: segment_from(s.es),
        fs: segment_from(s.fs),
        gs: segment_from(s.gs),
        ss: segment_from(s.ss),
        tr: segment_from(s.tr),
        ldt: segment_from(s.ldt),
        gdt: dtable_from(s.gdt),
        idt: dtable_from(s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
        interrupt_bitmap: s.interrupt_bitmap,
    }
}

fn sregs_to(s: &SpecialRegs) -> kvm_sregs {
    kvm_sregs {
        cs: segment_to(&s.cs),
        ds: segment_to(&s.ds),
        es: segment_to(&s.es),
        fs: segment_to(&s.fs),
        gs: segment_to(&s.gs),
        ss: segment_to(&s.ss),
        tr: segment_to(&s.tr),
        ldt: segment_to(&s.ldt),
        gdt: dtable_to(&s.gdt),
        idt: dtable_to(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
        interrupt_bitmap: s.interrupt_bitmap,
    }
}

fn lapic_from(l: &kvm_lapic_state) -> LapicState {
    LapicState {
        regs: l.regs.map(|b| b as u8),
    }
}

fn lapic_to(l: &LapicState) -> kvm_lapic_state {
    kvm_lapic_state {
        regs: l.regs.map(|b| b as std::ffi::c_char),
    }
}

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

impl Vcpu {
    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), Error> {
        let kvm: Vec<kvm_cpuid_entry2> = entries.iter().map(cpuid_to).collect();
        let cpuid = CpuId::from_entries(&kvm).map_err(|_| Error::TooMany {
            what: "CPUID entries",
            count: kvm.len(),
        })?;
        self.fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))
    }

    pub fn set_msrs(&self, entries: &[MsrEntry]) -> Result<(), Error> {
        let kvm: Vec<kvm_msr_entry> = entries
            .iter()
            .map(|e| kvm_msr_entry {
                index: e.index,
                data: e.data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&kvm).map_err(|_| Error::TooMany {
            what: "MSRs",
            count: kvm.len(),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        let want = entries.len();
        if set != want {
            return Err(Error::Msrs { set, want });
        }
        Ok(())
    }

    pub fn fpu(&self) -> Result<Fpu, Error> {
        self.fd
            .get_fpu()
            .map(fpu_from)
            .map_err(ioctl("KVM_GET_FPU"))
    }

    pub fn set_fpu(&self, fpu: &Fpu) -> Result<(), Error> {
        self.fd.set_fpu(&fpu_to(fpu)).map_err(ioctl("KVM_SET_FPU"))
    }

    pub fn lapic(&self) -> Result<LapicState, Error> {
        self.fd
            .get_lapic()
            .map(|l| lapic_from(&l))
            .map_err(ioctl("KVM_GET_LAPIC"))
    }

    pub fn set_lapic(&self, l: &LapicState) -> Result<(), Error> {
        self.fd
            .set_lapic(&lapic_to(l))
            .map_err(ioctl("KVM_SET_LAPIC"))
    }

    pub fn regs(&self) -> Result<Regs, Error> {
        self.fd
            .get_regs()
            .map(regs_from)
            .map_err(ioctl("KVM_GET_REGS"))
    }

    pub fn set_regs(&self, r: &Regs) -> Result<(), Error> {
        self.fd.set_regs(&regs_to(r)).map_err(ioctl("KVM_SET_REGS"))
    }

    pub fn sregs(&self) -> Result<SpecialRegs, Error> {
        self.fd
            .get_sregs()
            .map(sregs_from)
            .map_err(ioctl("KVM_GET_SREGS"))
    }

    pub fn set_sregs(&self, s: &SpecialRegs) -> Result<(), Error> {
        self.fd
            .set_sregs(&sregs_to(s))
            .map_err(ioctl("KVM_SET_SREGS"))
    }

    /// Guest-physical address of a guest-virtual one, if mapped.
    pub fn translate(&self, gva: u64) -> Option<u64> {
        self.fd
            .translate_gva(gva)
            .ok()
            .filter(|t| t.valid != 0)
            .map(|t| t.physical_address)
    }

    /// Address of this vCPU's shared `kvm_run` area's `immediate_exit`
    /// byte, which a signal handler on this vCPU's thread sets to make a
    /// racing KVM_RUN return at once.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit as *mut u8
    }

    pub fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Completes a port or MMIO access the last exit left pending (KVM
    /// finishes it on the next KVM_RUN) without running guest code:
    /// KVM_RUN with `immediate_exit` set. Needed before reading state to
    /// save (KVM's API documentation: the state is consistent only then).
    pub fn complete_pending_io(&mut self) -> Result<(), Error> {
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() != libc::EINTR && e.errno() != libc::EAGAIN => Err(Error::Ioctl {
                op: "KVM_RUN (immediate exit)",
                err: e,
            }),
            _ => Ok(()),
        }
    }

    /// Maps the VM's coalesced-I/O ring (one per VM; any vCPU's fd
    /// reaches it) for [`Vm::coalesce_pio`].
    pub fn coalesced_ring(&self) -> Result<CoalescedRing, Error> {
        CoalescedRing::map(&self.fd)
    }

    /// Suberror and data words of the last KVM_EXIT_INTERNAL_ERROR.
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        let run = self.fd.get_kvm_run();
        // SAFETY: only called after KVM_RUN reported KVM_EXIT_INTERNAL_ERROR,
        // which makes `internal` the active member of the exit union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        (internal.suberror, internal.data[..n].to_vec())
    }

    /// Enters the guest until the next exit.
    pub fn run(&mut self) -> Result<VmExit<'_>, Error> {
        // Two steps: kvm-ioctls' exit borrows the vCPU, and port I/O also
        // needs the element size from `kvm_run`, which kvm-ioctls does not
        // report (a `rep insb` of 4 and an `inl` both give 4 bytes). So the
        // exit is first turned into owned values (data as pointer + length),
        // ending the borrow, and the data slices are rebuilt after.
        let raw = match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => Raw::IoIn(port, data.as_mut_ptr(), data.len()),
                VcpuExit::IoOut(port, data) => Raw::IoOut(port, data.as_ptr(), data.len()),
                VcpuExit::MmioRead(addr, data) => {
                    Raw::MmioRead(addr, data.as_mut_ptr(), data.len())
                }
                VcpuExit::MmioWrite(addr, data) => Raw::MmioWrite(addr, data.as_ptr(), data.len()),
                VcpuExit::Hlt => Raw::Done(VmExit::Hlt),
                VcpuExit::Shutdown => Raw::Done(VmExit::Shutdown),
                VcpuExit::SystemEvent(kind, _) => Raw::Done(VmExit::SystemEvent(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                    KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                    KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                    other => SystemEvent::Other(other),
                })),
                VcpuExit::InternalError => Raw::Done(VmExit::InternalError),
                VcpuExit::FailEntry(reason, _) => Raw::Done(VmExit::FailEntry { reason }),
                VcpuExit::Intr => Raw::Done(VmExit::Interrupted),
                other => Raw::Done(VmExit::Other(format!("{other:?}"))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Raw::Done(VmExit::Interrupted)
            }
            Err(e) => {
                return Err(Error::Ioctl {
                    op: "KVM_RUN",
                    err: e,
                });
            }
        };
        Ok(match raw {
            Raw::IoIn(port, ptr, len) => {
                let size = self.io_size();
                // SAFETY: pointer and length of kvm-ioctls' slice for this
                // exit: the PIO data area of this vCPU's kvm_run mapping,
                // which lives as long as `self.fd`, and the returned borrow
                // of `self` keeps it (and other users) away. `io_size` read
                // the kvm_run struct only; the data lies past it (at
                // `io.data_offset`, one page in).
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                VmExit::IoIn { port, size, data }
            }
            Raw::IoOut(port, ptr, len) => {
                let size = self.io_size();
                // SAFETY: as for IoIn.
                let data = unsafe { std::slice::from_raw_parts(ptr, len) };
                VmExit::IoOut { port, size, data }
            }
            Raw::MmioRead(addr, ptr, len) => {
                // SAFETY: kvm-ioctls' slice for this exit (`mmio.data` in
                // this vCPU's kvm_run mapping), not touched since; the
                // returned borrow of `self` keeps it valid and unique.
                let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                VmExit::MmioRead { addr, data }
            }
            Raw::MmioWrite(addr, ptr, len) => {
                // SAFETY: as for MmioRead.
                let data = unsafe { std::slice::from_raw_parts(ptr, len) };
                VmExit::MmioWrite { addr, data }
            }
            Raw::Done(exit) => exit,
        })
    }

    /// Bytes per element of the last port I/O exit (1, 2 or 4).
    fn io_size(&mut self) -> usize {
        // SAFETY: only called right after KVM_RUN reported KVM_EXIT_IO,
        // which makes `io` the active member of the exit union.
        usize::from(unsafe { self.fd.get_kvm_run().__bindgen_anon_1.io.size })
    }
}

/// A vCPU exit with its data as raw parts (see [`Vcpu::run`]).
enum Raw {
    IoIn(u16, *mut u8, usize),
    IoOut(u16, *const u8, usize),
    MmioRead(u64, *mut u8, usize),
    MmioWrite(u64, *const u8, usize),
    Done(VmExit<'static>),
}

/// One port write KVM stored in the coalesced ring instead of exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalescedWrite {
    pub port: u16,
    /// The bytes written: 1, 2 or 4 of them.
    pub data: [u8; 4],
    pub len: usize,
}

impl CoalescedWrite {
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// The VM's coalesced-I/O ring page, shared by every vCPU thread.
///
/// kvm-ioctls offers a reader too, but it is tied to one `&mut VcpuFd`
/// (held for the duration of an exit) and reads the kernel's producer index
/// as plain memory. Here the page has its own mapping (vm-memory's, from a
/// duplicate of the vCPU fd), the indices are read and written atomically
/// (KVM publishes an entry, then `last`; we read `last`, then the entry, and
/// hand the slot back through `first`), and a lock makes draining and
/// replaying one step, so writes reach devices in ring order even when
/// several vCPUs drain.
#[derive(Debug)]
pub struct CoalescedRing {
    page: MmapRegion,
    lock: Mutex<()>,
}

impl CoalescedRing {
    fn map(vcpu: &VcpuFd) -> Result<CoalescedRing, Error> {
        // SAFETY: sysconf has no preconditions.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| Error::RingMap(std::io::Error::last_os_error()))?;
        // SAFETY: the vCPU fd is open for the duration of this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(vcpu.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(Error::RingMap)?;
        let at = u64::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as u64;
        let page = MmapRegion::build(
            Some(FileOffset::new(File::from(fd), at)),
            page_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(|e| Error::RingMap(std::io::Error::other(e)))?;
        Ok(CoalescedRing {
            page,
            lock: Mutex::new(()),
        })
    }

    /// Slots in the ring (KVM_COALESCED_MMIO_MAX).
    fn slots(&self) -> u32 {
        let header = std::mem::size_of::<kvm_coalesced_mmio_ring>();
        ((self.page.size() - header) / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `first` (offset 0) and `last` (offset 4) are aligned u32s
        // in the mapped page, which lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.page.as_ptr().add(offset).cast()) }
    }

    /// Hands every port write in the ring to `replay`, oldest first, and
    /// frees the slots. Returns how many there were. MMIO entries cannot
    /// occur (only port zones are registered) and are skipped.
    pub fn drain(&self, mut replay: impl FnMut(CoalescedWrite)) -> usize {
        let (first, last) = (self.index(0), self.index(4));
        // Every exit drains: most find the ring empty, without the lock.
        if first.load(Ordering::Relaxed) == last.load(Ordering::Acquire) {
            return 0;
        }
        let _serial = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let slots = self.slots();
        let mut at = first.load(Ordering::Relaxed);
        let end = last.load(Ordering::Acquire);
        if end >= slots || at >= slots {
            return 0;
        }
        let mut n = 0;
        while at != end {
            // SAFETY: `at` < slots, so the slot lies inside the page, after
            // the 8-byte header; KVM filled it before publishing `last`
            // (Acquire above) and does not touch it until `first` passes it.
            let e: kvm_coalesced_mmio = unsafe {
                let base = self.page.as_ptr().add(8);
                std::ptr::read_volatile(base.cast::<kvm_coalesced_mmio>().add(at as usize))
            };
            // SAFETY: the union's two members are both u32.
            let pio = unsafe { e.__bindgen_anon_1.pio } != 0;
            let len = (e.len as usize).min(4);
            if pio && len > 0 {
                let mut data = [0u8; 4];
                data[..len].copy_from_slice(&e.data[..len]);
                replay(CoalescedWrite {
                    port: e.phys_addr as u16,
                    data,
                    len,
                });
                n += 1;
            }
            at = (at + 1) % slots;
        }
        first.store(at, Ordering::Release);
        n
    }
}
