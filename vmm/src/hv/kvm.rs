//! KVM implementation of the hypervisor boundary.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    CpuId, KVM_COALESCED_MMIO_PAGE_OFFSET, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, Msrs,
    kvm_coalesced_mmio, kvm_coalesced_mmio_ring, kvm_fpu, kvm_lapic_state, kvm_pit_config,
    kvm_regs, kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::FileOffset;
use vm_memory::mmap::MmapRegion;
use vmm_sys_util::eventfd::EventFd;

use super::VmExit;

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
    #[error("KVM: set {set} of {want} boot MSRs")]
    Msrs { set: usize, want: usize },
    #[error("KVM: cannot map the coalesced I/O ring: {0}")]
    RingMap(std::io::Error),
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

impl Error {
    /// Whether the host setup (not the VM) is at fault: exit status 2.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Open(_))
    }
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Ioctl { op, err }
}

/// What KVM can offer every vCPU on this host.
#[derive(Debug)]
pub struct HostCpu {
    /// The CPUID leaves KVM can expose (KVM_GET_SUPPORTED_CPUID).
    pub cpuid: CpuId,
    /// Whether KVM emulates the LAPIC TSC-deadline timer.
    pub tsc_deadline: bool,
}

impl HostCpu {
    fn from_kvm(kvm: &Kvm) -> Result<HostCpu, Error> {
        Ok(HostCpu {
            cpuid: kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?,
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

    /// Registers `[host, host + size)` as guest memory at `gpa` in `slot`.
    ///
    /// # Safety
    /// `host` must point to a mapping of at least `size` bytes that stays
    /// mapped for as long as this VM exists (the guest reads and writes it).
    pub unsafe fn add_memory(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
    ) -> Result<(), Error> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the caller guarantees the host range is a live mapping that
        // outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Sets memory slot `slot` to `[host, host + size)` at `gpa`, read-only
    /// for the guest when `readonly` (guest writes then exit as MMIO).
    /// Used for PCI BARs backed by memory, which move at run time.
    ///
    /// # Safety
    /// As [`Vm::add_memory`]: the host range stays mapped while the slot is set.
    pub unsafe fn set_memory_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: *mut u8,
        size: u64,
        readonly: bool,
    ) -> Result<(), Error> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: if readonly {
                kvm_bindings::KVM_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the caller guarantees the host range is a live mapping for
        // as long as the slot is set.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Deletes memory slot `slot` (a zero-sized region).
    pub fn remove_memory_slot(&self, slot: u32) -> Result<(), Error> {
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a zero-sized region maps no host memory; it deletes the slot.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Connects `evt` to the interrupt line `gsi` (irqfd).
    pub fn add_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("KVM_IRQFD"))
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

    /// The raw VM fd, for device wiring that needs KVM directly (ioeventfd).
    pub fn fd(&self) -> &VmFd {
        &self.fd
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

    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), Error> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))
    }

    pub fn set_msrs(&self, msrs: &Msrs) -> Result<(), Error> {
        let set = self.fd.set_msrs(msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        let want = msrs.as_slice().len();
        if set != want {
            return Err(Error::Msrs { set, want });
        }
        Ok(())
    }

    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<(), Error> {
        self.fd.set_fpu(fpu).map_err(ioctl("KVM_SET_FPU"))
    }

    pub fn lapic(&self) -> Result<kvm_lapic_state, Error> {
        self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))
    }

    pub fn set_lapic(&self, l: &kvm_lapic_state) -> Result<(), Error> {
        self.fd.set_lapic(l).map_err(ioctl("KVM_SET_LAPIC"))
    }

    pub fn regs(&self) -> Result<kvm_regs, Error> {
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    pub fn set_regs(&self, r: &kvm_regs) -> Result<(), Error> {
        self.fd.set_regs(r).map_err(ioctl("KVM_SET_REGS"))
    }

    pub fn sregs(&self) -> Result<kvm_sregs, Error> {
        self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    pub fn set_sregs(&self, s: &kvm_sregs) -> Result<(), Error> {
        self.fd.set_sregs(s).map_err(ioctl("KVM_SET_SREGS"))
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
                VcpuExit::SystemEvent(kind, _) => Raw::Done(VmExit::SystemEvent { kind }),
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
