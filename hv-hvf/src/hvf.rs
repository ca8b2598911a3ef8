//! The calls into Hypervisor.framework: the boundary's `Vm` and `Vcpu`
//! over `applevisor` (VM, vCPUs, registers, kicks) and `applevisor-sys`
//! (`hv_vm_map` of the VMM's own guest RAM, `hv_gic_create` with its MSI
//! frame, `hv_gic_set_spi` and `hv_gic_send_msi` on a VM that already has
//! memory). aarch64 macOS only;
//! type-checked by `make check-portable`, never run (no Mac here).
//!
//! HVF binds a vCPU to the thread that created it. The boundary creates
//! vCPUs on the machine builder's thread and moves them to their own, so a
//! [`Vcpu`] here is a plain, movable description until its first `run`,
//! which creates the HVF vCPU on the calling thread (kept in a thread
//! local, destroyed on that thread when the `Vcpu` is dropped there or the
//! thread ends). A secondary CPU's first `run` waits for PSCI CPU_ON.

use std::cell::{Cell, RefCell};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

use aarch64_exits::hvf::HvfExit;
use aarch64_exits::psci::Call;
use applevisor::error::HypervisorError;
use applevisor::gic::GicRedistributorReg;
use applevisor::vcpu::{Reg, SysReg, Vcpu as HvVcpu, VcpuHandle};
use applevisor::vm::{GicDisabled, VirtualMachine, VirtualMachineInstance};
use applevisor_sys::{hv_error_t, hv_return_t};
use hv_boundary::aarch64::{CoreRegs, GicConfig, GsiRoute, MsiController, VcpuInit};
use hv_boundary::{IoEventAddr, VmExit};

use crate::gic::{MbiError, check_mbi, check_spi_range, spi_intid};
use crate::ioevent::{self, IoEvents};
use crate::memmap::{self, Change, MapError, MemoryMap, Region};
use crate::power::{self, Outcome, PowerTable, Wake};
use crate::relay::IrqRelay;
use crate::routing::{Lines, Routes, Target};
use crate::step::{self, Pending, Step};
use crate::wfi::{self, Timebase};

/// How long a waiting vCPU (powered off, or in WFI) sleeps before it looks
/// at why it runs again.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Errors from Hypervisor.framework calls, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Hypervisor.framework: {op} failed: {err}{hint}", hint = hint(*.err))]
    Hv {
        op: &'static str,
        err: HypervisorError,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(
        "vCPU {0}: used on a thread other than the one that first ran it (HVF binds a vCPU to its thread)"
    )]
    WrongThread(u8),
    #[error("the GICv3 needs SPIs up to {want}, Hypervisor.framework has {base}..{end}")]
    GicRange { want: u32, base: u32, end: u32 },
    #[error("starting the interrupt relay: {0}")]
    Relay(#[source] std::io::Error),
    #[error("vCPU {0}: this thread already runs another vCPU (HVF: one vCPU a thread)")]
    SharedThread(u8),
    #[error("ioeventfd at port {0:#x}: arm64 has no port I/O")]
    PioEvent(u64),
    #[error("no such interrupt line on GSI {gsi}")]
    NoLine { gsi: u32 },
    #[error("no such ioeventfd at {0:#x}")]
    NoIoEvent(u64),
    #[error(
        "GICv3 ITS at {0:#x}: Hypervisor.framework's GIC has no ITS (its MSIs are message-based SPIs)"
    )]
    NoIts(u64),
    #[error("GICv3 MSIs: {0}")]
    Mbi(#[from] MbiError),
}

impl Error {
    /// 2 when the host cannot run a VM at all (no entitlement, no
    /// hypervisor support: set-up the user fixes), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Hv {
                op: "hv_vm_create",
                err: HypervisorError::Denied | HypervisorError::Unsupported,
            } => 2,
            _ => 1,
        }
    }
}

fn hint(e: HypervisorError) -> &'static str {
    match e {
        HypervisorError::Denied => {
            "; the binary needs the com.apple.security.hypervisor entitlement (codesign --entitlements, README \"macOS and the BSDs\")"
        }
        HypervisorError::Unsupported => {
            "; Hypervisor.framework needs Apple silicon (and macOS 15 for the GIC)"
        }
        _ => "",
    }
}

fn hv(op: &'static str) -> impl FnOnce(HypervisorError) -> Error {
    move |err| Error::Hv { op, err }
}

/// A raw `applevisor-sys` call's result as the safe layer's error.
fn sys(op: &'static str, ret: hv_return_t) -> Result<(), Error> {
    if ret == hv_error_t::HV_SUCCESS as hv_return_t {
        Ok(())
    } else {
        Err(Error::Hv {
            op,
            err: HypervisorError::from(ret),
        })
    }
}

// The boundary's use: a `Vm` shared by every vCPU thread, a `Vcpu` moved
// to its own thread before it first runs.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    fn moved<T: Send>() {}
    shared::<Vm>();
    moved::<Vcpu>();
};

/// What the VM and its vCPUs share.
#[derive(Debug)]
struct Shared {
    instance: VirtualMachineInstance<GicDisabled>,
    power: PowerTable,
    /// Every started vCPU, for `hv_vcpus_exit`.
    handles: Mutex<Vec<VcpuHandle>>,
    gic: Mutex<Option<GicConfig>>,
    /// MMIO writes that only signal a notifier (ioeventfd).
    ioevents: Mutex<IoEvents>,
    /// What each GSI raises (KVM's routing table).
    routes: Mutex<Routes>,
}

impl Shared {
    fn handles(&self) -> MutexGuard<'_, Vec<VcpuHandle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_all(&self) {
        self.power.kick();
        let handles = self.handles();
        if let Err(e) = self.instance.vcpus_exit(&handles) {
            log::warn!("hv_vcpus_exit: {e}");
        }
    }
}

/// The process's one HVF VM (Hypervisor.framework has one per process).
#[derive(Debug)]
pub struct Vm {
    shared: Arc<Shared>,
    slots: Mutex<MemoryMap>,
    page: u64,
    lines: Mutex<Lines>,
    relay: Mutex<Option<IrqRelay>>,
}

impl Vm {
    /// Creates the VM (the host's default IPA size).
    pub fn new() -> Result<Vm, Error> {
        let instance = VirtualMachine::new().map_err(hv("hv_vm_create"))?;
        Ok(Vm {
            shared: Arc::new(Shared {
                instance,
                power: PowerTable::default(),
                handles: Mutex::new(Vec::new()),
                gic: Mutex::new(None),
                ioevents: Mutex::new(IoEvents::default()),
                routes: Mutex::new(Routes::default()),
            }),
            slots: Mutex::new(MemoryMap::default()),
            page: memmap::host_page_size(),
            lines: Mutex::new(Lines::default()),
            relay: Mutex::new(None),
        })
    }

    /// Sets memory slot `slot` to `[host, host + size)` at `gpa`, as the
    /// KVM backend does (size 0 deletes it); every address and the size
    /// must be host-page aligned.
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
        let r = Region {
            gpa,
            host: host as usize,
            size,
            readonly,
        };
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for c in slots.plan(slot, r, self.page)? {
            match c {
                Change::Unmap { gpa, size } => {
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    // SAFETY: unmaps a range this VM mapped; no host memory
                    // is touched.
                    sys("hv_vm_unmap", unsafe {
                        applevisor_sys::hv_vm_unmap(gpa, size)
                    })?
                }
                Change::Map(r) => {
                    let mut flags = applevisor_sys::HV_MEMORY_READ | applevisor_sys::HV_MEMORY_EXEC;
                    if !r.readonly {
                        flags |= applevisor_sys::HV_MEMORY_WRITE;
                    }
                    let size = usize::try_from(r.size).unwrap_or(usize::MAX);
                    // SAFETY: the caller guarantees `host` is a live mapping
                    // of `size` bytes for as long as the slot is set; the
                    // plan checked page alignment and overlaps.
                    sys("hv_vm_map", unsafe {
                        applevisor_sys::hv_vm_map(r.host as *const _, r.gpa, size, flags)
                    })?
                }
            }
        }
        slots.commit(slot, r);
        Ok(())
    }

    /// Describes vCPU `id` (created in HVF on the thread that first runs
    /// it). Its MPIDR is `power::mpidr(id)`.
    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, Error> {
        self.shared.power.add(id, id == 0);
        Ok(Vcpu {
            id,
            shared: self.shared.clone(),
            boot: Cell::new(None),
            owner: None,
            pending: None,
            buf: [0; 8],
            vtimer_masked: false,
            error: None,
        })
    }

    /// Creates the in-kernel GICv3 (macOS 15) with its distributor and
    /// redistributors where `cfg` puts them: before any vCPU runs, as HVF
    /// requires. The SPIs the machine uses must be in HVF's range. HVF's
    /// GIC has no ITS (one is refused); its MSIs are message-based SPIs:
    /// a frame (HVF's "MSI region") where the machine's
    /// [`MsiController::Mbi`] puts it, turning a write of an INTID into
    /// that SPI.
    pub fn create_gic(&self, cfg: &GicConfig) -> Result<(), Error> {
        let (base, count) = applevisor::gic::GicConfig::get_spi_interrupt_range()
            .map_err(hv("hv_gic_get_spi_interrupt_range"))?;
        check_spi_range(cfg.nr_irqs, base, count).map_err(|(want, base, end)| Error::GicRange {
            want,
            base,
            end,
        })?;
        let mbi = match cfg.msi {
            None => None,
            Some(MsiController::Its { addr }) => return Err(Error::NoIts(addr)),
            Some(MsiController::Mbi {
                addr,
                window,
                first_spi,
                count: n,
            }) => {
                let (size, align) = mbi_frame()?;
                let first = spi_intid(first_spi);
                check_mbi((addr, window), (size, align), (first, n), (base, count))?;
                Some((addr, first, n))
            }
        };
        // SAFETY: creates a configuration object, released below.
        let gc = unsafe { applevisor_sys::hv_gic_config_create() };
        let r = (|| {
            // SAFETY: `gc` is the live configuration object created above.
            sys("hv_gic_config_set_distributor_base", unsafe {
                applevisor_sys::hv_gic_config_set_distributor_base(gc, cfg.dist_addr)
            })?;
            // SAFETY: as above.
            sys("hv_gic_config_set_redistributor_base", unsafe {
                applevisor_sys::hv_gic_config_set_redistributor_base(gc, cfg.redist_addr)
            })?;
            if let Some((addr, first, n)) = mbi {
                // SAFETY: as above.
                sys("hv_gic_config_set_msi_region_base", unsafe {
                    applevisor_sys::hv_gic_config_set_msi_region_base(gc, addr)
                })?;
                // SAFETY: as above.
                sys("hv_gic_config_set_msi_interrupt_range", unsafe {
                    applevisor_sys::hv_gic_config_set_msi_interrupt_range(gc, first, n)
                })?;
            }
            // SAFETY: the VM exists (this `Vm` holds it) and no vCPU has
            // been created in HVF yet (they are created when they first run).
            sys("hv_gic_create", unsafe {
                applevisor_sys::hv_gic_create(gc)
            })
        })();
        // SAFETY: releases the object created above, used no more.
        unsafe { applevisor_sys::os_release(gc) };
        r?;
        *self.shared.gic.lock().unwrap_or_else(|e| e.into_inner()) = Some(*cfg);
        Ok(())
    }

    /// Nothing to do under HVF (KVM's CTRL_INIT): the GIC is complete once
    /// created.
    pub fn finalize_gic(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Replaces the interrupt routing table (KVM_SET_GSI_ROUTING's
    /// meaning): what each GSI's lines raise from now on.
    pub fn set_gsi_routing(&self, routes: &[GsiRoute]) -> Result<(), Error> {
        self.shared
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(routes);
        Ok(())
    }

    /// Connects an interrupt line (the read end of a device's notifier:
    /// a pipe off Linux; `key` is the caller's descriptor for it) to
    /// `gsi`: each write raises what the GSI routes to, like KVM's irqfd
    /// (an SPI as an edge, or an MSI). A line already signalled raises it
    /// at once (an MSI-X vector unmasked with its pending bit set).
    pub fn register_irq_line(&self, line: OwnedFd, gsi: u32, key: RawFd) -> Result<(), Error> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.add(key, gsi, line);
        self.restart_relay(&lines)
    }

    /// Undoes [`Vm::register_irq_line`] (KVM's irqfd deassign).
    pub fn unregister_irq_line(&self, gsi: u32, key: RawFd) -> Result<(), Error> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if !lines.remove(key, gsi) {
            return Err(Error::NoLine { gsi });
        }
        self.restart_relay(&lines)
    }

    /// Relays `lines` from now on: the old relay stops before the new one
    /// starts.
    fn restart_relay(&self, lines: &Lines) -> Result<(), Error> {
        let copies = lines.copies().map_err(Error::Relay)?;
        let shared = self.shared.clone();
        let mut relay = self.relay.lock().unwrap_or_else(|e| e.into_inner());
        relay.take();
        *relay =
            Some(IrqRelay::spawn(copies, move |gsi| raise(&shared, gsi)).map_err(Error::Relay)?);
        Ok(())
    }

    /// Makes guest writes to MMIO `addr` signal `notifier` (the write end
    /// of an eventfd or pipe; `key` is the caller's descriptor for it) in
    /// the vCPU thread instead of exiting to the VMM, with KVM's
    /// ioeventfd rules (`ioevent.rs`).
    pub fn register_ioevent(
        &self,
        notifier: OwnedFd,
        key: RawFd,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        let addr = mmio(addr)?;
        self.shared
            .ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(addr, datamatch, key, notifier);
        Ok(())
    }

    /// Undoes [`Vm::register_ioevent`] (same key, address and data match).
    pub fn unregister_ioevent(
        &self,
        key: RawFd,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        let a = mmio(addr)?;
        let removed = self
            .shared
            .ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(a, datamatch, key);
        if removed {
            Ok(())
        } else {
            Err(Error::NoIoEvent(a))
        }
    }

    /// Makes every vCPU leave `hv_vcpu_run` (and any wait for CPU_ON or
    /// an interrupt): the VMM's kick, instead of KVM's signal plus
    /// `immediate_exit`.
    pub fn kick_all(&self) {
        self.shared.kick_all();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.relay
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let slots = self.slots.get_mut().unwrap_or_else(|e| e.into_inner());
        for r in slots.regions() {
            let size = usize::try_from(r.size).unwrap_or(usize::MAX);
            // SAFETY: unmaps a range this VM mapped; no host memory is
            // touched.
            let _ = unsafe { applevisor_sys::hv_vm_unmap(r.gpa, size) };
        }
    }
}

/// HVF's MSI frame: its size and its base's alignment.
fn mbi_frame() -> Result<(u64, u64), Error> {
    let (mut size, mut align) = (0usize, 0usize);
    // SAFETY: writes one usize through a pointer to a live local.
    sys("hv_gic_get_msi_region_size", unsafe {
        applevisor_sys::hv_gic_get_msi_region_size(&mut size)
    })?;
    // SAFETY: as above.
    sys("hv_gic_get_msi_region_base_alignment", unsafe {
        applevisor_sys::hv_gic_get_msi_region_base_alignment(&mut align)
    })?;
    Ok((size as u64, align as u64))
}

/// The MMIO address of an ioevent (arm64 has no port I/O).
fn mmio(addr: IoEventAddr) -> Result<u64, Error> {
    match addr {
        IoEventAddr::Mmio(a) => Ok(a),
        IoEventAddr::Pio(p) => Err(Error::PioEvent(p)),
    }
}

/// Raises GSI `gsi`: pulses the SPI it routes to (an edge: level high,
/// then low) or sends its MSI, then wakes vCPUs sleeping in WFI. A
/// failure (an MSI the guest pointed somewhere else than the frame, say)
/// is logged the first time only: the guest can repeat it at will.
fn raise(shared: &Shared, gsi: u32) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let routes = shared.routes.lock().unwrap_or_else(|e| e.into_inner());
    routes.each_target(gsi, |t| {
        let r = match t {
            Target::Spi(intid) => [true, false].into_iter().try_for_each(|level| {
                // SAFETY: a plain call on the VM's GIC; no memory is passed.
                sys("hv_gic_set_spi", unsafe {
                    applevisor_sys::hv_gic_set_spi(intid, level)
                })
            }),
            // SAFETY: as above.
            Target::Msi { address, intid } => sys("hv_gic_send_msi", unsafe {
                applevisor_sys::hv_gic_send_msi(address, intid)
            }),
        };
        if let Err(e) = r
            && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            log::warn!("GSI {gsi} ({t:?}): {e} (further failures are not logged)");
        }
    });
    drop(routes);
    shared.power.kick();
}

thread_local! {
    /// The HVF vCPU this thread created (one per vCPU thread).
    static HV_VCPU: RefCell<Option<HvVcpu>> = const { RefCell::new(None) };
}

/// General registers x0..x30 as HVF numbers them.
const X: [Reg; 31] = [
    Reg::X0,
    Reg::X1,
    Reg::X2,
    Reg::X3,
    Reg::X4,
    Reg::X5,
    Reg::X6,
    Reg::X7,
    Reg::X8,
    Reg::X9,
    Reg::X10,
    Reg::X11,
    Reg::X12,
    Reg::X13,
    Reg::X14,
    Reg::X15,
    Reg::X16,
    Reg::X17,
    Reg::X18,
    Reg::X19,
    Reg::X20,
    Reg::X21,
    Reg::X22,
    Reg::X23,
    Reg::X24,
    Reg::X25,
    Reg::X26,
    Reg::X27,
    Reg::X28,
    Reg::X29,
    Reg::X30,
];

fn xreg(n: u8) -> Reg {
    X[usize::from(n.min(30))]
}

// The host counter and its timebase: Apple's documented `mach_time.h`
// calls (libSystem), declared here because libc's are deprecated in favour
// of a crate this project does not otherwise need.
#[repr(C)]
struct MachTimebaseInfo {
    numer: u32,
    denom: u32,
}

unsafe extern "C" {
    fn mach_absolute_time() -> u64;
    fn mach_timebase_info(info: *mut MachTimebaseInfo) -> libc::c_int;
}

/// The host counter's timebase (ticks to nanoseconds).
fn timebase() -> Timebase {
    let mut info = MachTimebaseInfo { numer: 1, denom: 1 };
    // SAFETY: writes the two fields of `info`, a live local of the C layout.
    let _ = unsafe { mach_timebase_info(&mut info) };
    Timebase {
        numer: info.numer,
        denom: info.denom,
    }
}

/// The host counter (the guest's virtual count plus its vtimer offset).
fn host_ticks() -> u64 {
    // SAFETY: reads the host's monotonic counter; no arguments.
    unsafe { mach_absolute_time() }
}

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    id: u8,
    shared: Arc<Shared>,
    /// The boot CPU's entry registers, set when it first runs.
    boot: Cell<Option<CoreRegs>>,
    /// The thread that created the HVF vCPU (its first `run`).
    owner: Option<ThreadId>,
    /// An exit the VMM handles: completed on the next `run`.
    pending: Option<Pending>,
    buf: [u8; 8],
    /// HVF masked the virtual timer when it fired; unmasked once the guest
    /// has dealt with it.
    vtimer_masked: bool,
    /// What the last internal error was.
    error: Option<String>,
}

impl Vcpu {
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Powers the vCPU on (the boot CPU) or leaves it off until CPU_ON.
    /// PSCI is always the VMM's under HVF.
    pub fn init(&self, _vm: &Vm, init: VcpuInit) -> Result<(), Error> {
        self.shared.power.set_initial(self.id, !init.powered_off);
        Ok(())
    }

    /// The boot CPU's entry registers (applied when it first runs, on its
    /// own thread).
    pub fn set_core_regs(&self, r: &CoreRegs) -> Result<(), Error> {
        self.boot.set(Some(*r));
        Ok(())
    }

    /// MPIDR_EL1: chosen by the VMM under HVF (`power::mpidr`), the
    /// device tree's `reg` for this CPU.
    pub fn mpidr(&self) -> Result<u64, Error> {
        Ok(power::mpidr(self.id))
    }

    /// The program counter (for reports); 0 before the vCPU first ran.
    pub fn pc(&self) -> Result<u64, Error> {
        if self.owner.is_none() {
            return Ok(self.boot.get().map_or(0, |b| b.pc));
        }
        self.with(|v| v.get_reg(Reg::PC).map_err(hv("hv_vcpu_get_reg")))
    }

    /// What the last `VmExit::InternalError` was: no KVM suberror here
    /// (0), the description in the report.
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        if let Some(e) = &self.error {
            log::error!("vCPU {}: {e}", self.id);
        }
        (0, Vec::new())
    }

    /// The description of the last internal error.
    pub fn internal_error_detail(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Nothing to clear: kicks go through [`Vm::kick_all`].
    pub fn clear_immediate_exit(&mut self) {}

    fn with<R>(&self, f: impl FnOnce(&HvVcpu) -> Result<R, Error>) -> Result<R, Error> {
        if self.owner != Some(std::thread::current().id()) {
            return Err(Error::WrongThread(self.id));
        }
        HV_VCPU.with_borrow(|v| match v {
            Some(v) => f(v),
            None => Err(Error::WrongThread(self.id)),
        })
    }

    /// Creates the HVF vCPU on this thread with its MPIDR and entry
    /// registers (x0 = `x0`, EL1h with interrupts masked).
    fn start(&mut self, pc: u64, x0: u64, pstate: u64) -> Result<(), Error> {
        if self.owner.is_none() {
            if HV_VCPU.with_borrow(Option::is_some) {
                return Err(Error::SharedThread(self.id));
            }
            let v = self
                .shared
                .instance
                .vcpu_create()
                .map_err(hv("hv_vcpu_create"))?;
            v.set_sys_reg(SysReg::MPIDR_EL1, power::mpidr(self.id))
                .map_err(hv("hv_vcpu_set_sys_reg (MPIDR_EL1)"))?;
            self.shared.handles().push(v.get_handle());
            HV_VCPU.set(Some(v));
            self.owner = Some(std::thread::current().id());
        }
        self.with(|v| {
            for (reg, val) in [(Reg::X0, x0), (Reg::CPSR, pstate), (Reg::PC, pc)] {
                v.set_reg(reg, val).map_err(hv("hv_vcpu_set_reg"))?;
            }
            Ok(())
        })
    }

    /// Enters the guest until an exit the VMM handles: MMIO, a system
    /// event, a kick. PSCI, WFI, the virtual timer and trapped system
    /// registers are handled here.
    pub fn run(&mut self) -> Result<VmExit<'_>, Error> {
        if !self.started_here()? {
            return Ok(VmExit::Interrupted);
        }
        self.complete_pending()?;
        loop {
            // HVF masked the timer when it fired; unmask it once the guest
            // has dealt with it (checked before every entry, as QEMU does).
            if self.vtimer_masked {
                self.maybe_unmask_vtimer()?;
            }
            let exit = self.with(|v| {
                v.run().map_err(hv("hv_vcpu_run"))?;
                Ok(HvfExit::new(&v.get_exit_info()))
            })?;
            match exit {
                HvfExit::Canceled => return Ok(VmExit::Interrupted),
                HvfExit::VtimerActivated => self.vtimer_fired()?,
                HvfExit::Unknown => {
                    self.error = Some("HVF exited for an unknown reason".into());
                    return Ok(VmExit::InternalError);
                }
                HvfExit::Exception {
                    exit,
                    pc_advance,
                    ipa,
                } => match step::step(exit, ipa, pc_advance) {
                    Step::MmioRead { addr, access } => {
                        self.pending = Some(Pending {
                            read: Some(access),
                            pc_advance,
                        });
                        let n = usize::from(access.size).min(8);
                        self.buf = [0; 8];
                        return Ok(VmExit::MmioRead {
                            addr,
                            data: &mut self.buf[..n],
                        });
                    }
                    Step::MmioWrite { addr, access } => {
                        let reg = if access.register == aarch64_exits::esr::ZERO_REGISTER {
                            0
                        } else {
                            self.with(|v| {
                                v.get_reg(xreg(access.register))
                                    .map_err(hv("hv_vcpu_get_reg"))
                            })?
                        };
                        let (b, n) = step::write_data(&access, reg);
                        if self.ioevent(addr, &b[..n]) {
                            self.advance(pc_advance)?;
                            continue;
                        }
                        self.buf = b;
                        self.pending = Some(Pending {
                            read: None,
                            pc_advance,
                        });
                        return Ok(VmExit::MmioWrite {
                            addr,
                            data: &self.buf[..n],
                        });
                    }
                    Step::Psci { pc_advance } => {
                        if let Some(exit) = self.psci(pc_advance)? {
                            return Ok(exit);
                        }
                    }
                    Step::WaitForInterrupt { pc_advance } => {
                        self.advance(pc_advance)?;
                        self.wait_for_interrupt()?;
                        return Ok(VmExit::Interrupted);
                    }
                    Step::Continue { pc_advance } => self.advance(pc_advance)?,
                    Step::SysRegZero {
                        register,
                        pc_advance,
                    } => {
                        if let Some(r) = register {
                            self.with(|v| v.set_reg(xreg(r), 0).map_err(hv("hv_vcpu_set_reg")))?;
                        }
                        self.advance(pc_advance)?;
                    }
                    Step::Fault(why) => {
                        self.error = Some(why);
                        return Ok(VmExit::InternalError);
                    }
                },
            }
        }
    }

    /// Whether the vCPU runs on this thread: the boot CPU starts at its
    /// entry the first time; a secondary waits (a slice at a time) for
    /// CPU_ON, and again after CPU_OFF.
    fn started_here(&mut self) -> Result<bool, Error> {
        if self.shared.power.started(self.id) {
            if self.owner.is_none() {
                let b = self.boot.get().unwrap_or(CoreRegs::linux_boot(0, 0));
                self.start(b.pc, b.x0, b.pstate)?;
            }
            return Ok(true);
        }
        match self.shared.power.wait_for_on(self.id, WAIT_SLICE) {
            Wake::Start { entry, context_id } => {
                self.pending = None;
                self.start(entry, context_id, CoreRegs::PSTATE_EL1H_MASKED)?;
                Ok(true)
            }
            Wake::Again => Ok(false),
        }
    }

    /// Signals the ioevent a write of `data` to `addr` matches, if any.
    fn ioevent(&self, addr: u64, data: &[u8]) -> bool {
        let events = self
            .shared
            .ioevents
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(fd) = events.find(addr, data) else {
            return false;
        };
        if let Err(e) = ioevent::signal(fd) {
            log::warn!("ioeventfd at {addr:#x}: {e}");
        }
        true
    }

    fn advance(&self, by: u64) -> Result<(), Error> {
        if by == 0 {
            return Ok(());
        }
        self.with(|v| {
            let pc = v.get_reg(Reg::PC).map_err(hv("hv_vcpu_get_reg"))?;
            v.set_reg(Reg::PC, pc.wrapping_add(by))
                .map_err(hv("hv_vcpu_set_reg"))
        })
    }

    /// Finishes the MMIO access the VMM handled since the last run.
    fn complete_pending(&mut self) -> Result<(), Error> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let c = p.complete(&self.buf);
        if let Some((reg, val)) = c.load {
            self.with(|v| v.set_reg(xreg(reg), val).map_err(hv("hv_vcpu_set_reg")))?;
        }
        self.advance(c.pc_advance)
    }

    /// A PSCI call: answered in x0, or a system event, or CPU_OFF.
    fn psci(&mut self, pc_advance: u64) -> Result<Option<VmExit<'static>>, Error> {
        let x = self.with(|v| {
            let mut x = [0u64; 4];
            for (i, r) in x.iter_mut().enumerate() {
                *r = v.get_reg(X[i]).map_err(hv("hv_vcpu_get_reg"))?;
            }
            Ok(x)
        })?;
        let call = Call::decode(x);
        log::debug!("vCPU {}: PSCI {call:?}", self.id);
        match self.shared.power.call(self.id, call) {
            Outcome::Return(x0) => {
                self.with(|v| v.set_reg(Reg::X0, x0).map_err(hv("hv_vcpu_set_reg")))?;
                self.advance(pc_advance)?;
                Ok(None)
            }
            Outcome::Event(e) => Ok(Some(VmExit::SystemEvent(e))),
            // Back to waiting for CPU_ON: the next run starts over.
            Outcome::Off => Ok(Some(VmExit::Interrupted)),
        }
    }

    /// HVF masked the timer as it fired: raise its PPI (pending in the
    /// redistributor of the in-kernel GIC) and keep it masked until the
    /// guest has dealt with it.
    fn vtimer_fired(&mut self) -> Result<(), Error> {
        self.vtimer_masked = true;
        if self
            .shared
            .gic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            self.with(|v| {
                v.set_redistributor_reg(GicRedistributorReg::ISPENDR0, 1 << VTIMER_PPI)
                    .map_err(hv("hv_gic_set_redistributor_reg (ISPENDR0)"))
            })?;
        }
        Ok(())
    }

    fn maybe_unmask_vtimer(&mut self) -> Result<(), Error> {
        let ctl = self.with(|v| {
            v.get_sys_reg(SysReg::CNTV_CTL_EL0)
                .map_err(hv("hv_vcpu_get_sys_reg (CNTV_CTL_EL0)"))
        })?;
        if !wfi::asserted(ctl) {
            self.with(|v| {
                v.set_vtimer_mask(false)
                    .map_err(hv("hv_vcpu_set_vtimer_mask"))
            })?;
            self.vtimer_masked = false;
        }
        Ok(())
    }

    /// WFI: sleep until the virtual timer's deadline or a kick.
    fn wait_for_interrupt(&mut self) -> Result<(), Error> {
        let (ctl, cval, offset) = self.with(|v| {
            let get = |r| v.get_sys_reg(r).map_err(hv("hv_vcpu_get_sys_reg"));
            Ok((
                get(SysReg::CNTV_CTL_EL0)?,
                get(SysReg::CNTV_CVAL_EL0)?,
                v.get_vtimer_offset()
                    .map_err(hv("hv_vcpu_get_vtimer_offset"))?,
            ))
        })?;
        let now = host_ticks().wrapping_sub(offset);
        let d = wfi::sleep_for(ctl, cval, now, timebase(), WAIT_SLICE);
        self.shared.power.sleep(d);
        Ok(())
    }
}

/// The EL1 virtual timer's PPI (INTID 27, the device tree's).
const VTIMER_PPI: u32 = 27;

impl Drop for Vcpu {
    fn drop(&mut self) {
        // The HVF vCPU is destroyed on its own thread: here if this is it,
        // else when that thread ends (its thread local).
        if self.owner == Some(std::thread::current().id()) {
            HV_VCPU.take();
        }
    }
}
