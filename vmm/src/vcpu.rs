//! vCPU set-up (CPUID, MSRs, FPU, LAPIC, entry registers) and run loop.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
#[cfg(target_arch = "x86_64")]
use vm_memory::{Bytes, GuestAddress};

#[cfg(target_arch = "aarch64")]
use crate::arch::aarch64::NoCoalescing as SerialCoalescing;
#[cfg(target_arch = "x86_64")]
use crate::boot::{Entry, Topology, cpu};
#[cfg(target_arch = "x86_64")]
use crate::coalesce::SerialCoalescing;
use crate::exit::{Action, VmEnd, handle_exit};
#[cfg(target_arch = "x86_64")]
use crate::hv;
use crate::hv::Vcpu;
use crate::io::IoBuses;
use crate::signals;
#[cfg(target_os = "linux")]
use crate::signals::VcpuThreadGuard;

/// State every vCPU shares: whether the VM is stopping, and why; whether
/// it is paused (QMP `stop`).
#[derive(Debug, Default)]
pub struct VmState {
    stopping: AtomicBool,
    end: Mutex<Option<VmEnd>>,
    /// Fast check for the run loop; the truth is in `pause`.
    pause_requested: AtomicBool,
    /// Why the VM is paused ([`PauseReason`] as u8), while it is.
    pause_reason: AtomicU8,
    pause: Mutex<Pause>,
    parked_changed: Condvar,
    /// Guest time (QEMU's virtual clock): stands still while paused.
    guest_time: Mutex<GuestTime>,
}

/// Why the vCPUs are parked: QEMU's run states for a paused VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PauseReason {
    /// QMP `stop` (or a snapshot being saved): `paused`.
    Stop,
    /// A watchdog's `pause` action: `watchdog`.
    Watchdog,
    /// `-S`, until the first `cont`: `prelaunch`.
    Prelaunch,
}

/// Host monotonic time minus the time the VM spent paused.
#[derive(Debug)]
struct GuestTime {
    origin: Instant,
    paused_total: Duration,
    paused_since: Option<Instant>,
}

impl Default for GuestTime {
    fn default() -> Self {
        GuestTime {
            origin: Instant::now(),
            paused_total: Duration::ZERO,
            paused_since: None,
        }
    }
}

/// vCPUs running their loop, and how many of them are parked.
#[derive(Debug, Default)]
struct Pause {
    requested: bool,
    running: usize,
    parked: usize,
    /// A snapshot's request for every parked vCPU's state (snapshots are
    /// x86_64-only for now).
    #[cfg(target_arch = "x86_64")]
    save: Option<SaveRequest>,
}

#[cfg(target_arch = "x86_64")]
/// What a snapshot asks of the parked vCPUs: their state, read on their
/// own threads (each vCPU fd belongs to its thread).
#[derive(Debug)]
struct SaveRequest {
    /// MSR indices to try (KVM_GET_MSR_INDEX_LIST).
    msrs: Vec<u32>,
    done: Vec<Result<hv::VcpuState, String>>,
    /// The vCPUs (by id) that answered.
    answered: Vec<u8>,
}

/// How often a parked vCPU looks for a stop signal (signal handlers cannot
/// notify a condition variable).
const PARKED_POLL: Duration = Duration::from_millis(20);

impl VmState {
    /// Records why the VM ends (the first reason wins) and kicks all vCPUs.
    pub fn request_end(&self, end: VmEnd) {
        {
            let mut e = self.end.lock().unwrap_or_else(|p| p.into_inner());
            if e.is_none() {
                *e = Some(end);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        signals::kick_all();
        let _p = self.pause_lock();
        self.parked_changed.notify_all();
    }

    fn pause_lock(&self) -> std::sync::MutexGuard<'_, Pause> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn time_lock(&self) -> std::sync::MutexGuard<'_, GuestTime> {
        self.guest_time.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of a VM about to start; with `start_paused` (`-S`) its
    /// vCPUs park as they enter their loops, until `cont` (`prelaunch`).
    pub fn new(start_paused: bool) -> VmState {
        let s = VmState::default();
        if start_paused {
            // No vCPU runs yet: nothing to wait for.
            s.pause_for(PauseReason::Prelaunch, Duration::ZERO);
        }
        s
    }

    /// Guest time in nanoseconds since the VM was set up: the host's
    /// monotonic clock, standing still while the VM is paused (QMP
    /// `stop`, a snapshot being saved), as QEMU's virtual clock does.
    pub fn guest_ns(&self) -> u64 {
        let t = self.time_lock();
        let now = t.paused_since.unwrap_or_else(Instant::now);
        let ran = now
            .saturating_duration_since(t.origin)
            .saturating_sub(t.paused_total);
        u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Parks every vCPU outside KVM_RUN; returns once all are parked (or
    /// the VM stops, or `timeout` passes: false).
    pub fn pause(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        {
            let mut t = self.time_lock();
            t.paused_since.get_or_insert_with(Instant::now);
        }
        let mut p = self.pause_lock();
        p.requested = true;
        self.pause_requested.store(true, Ordering::SeqCst);
        signals::kick_all();
        while p.parked < p.running && !self.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .parked_changed
                .wait_timeout(p, left.min(PARKED_POLL))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            // A kick that raced with a vCPU entering KVM_RUN is caught by
            // immediate_exit; resend in case it came before registration.
            signals::kick_all();
        }
        true
    }

    /// Reads every vCPU's state while all are parked (after [`VmState::pause`]):
    /// each parked vCPU reads its own, ordered by vCPU id. `msrs` are the
    /// MSR indices to try.
    #[cfg(target_arch = "x86_64")]
    pub fn save_vcpus(
        &self,
        msrs: Vec<u32>,
        timeout: Duration,
    ) -> Result<Vec<hv::VcpuState>, String> {
        let deadline = Instant::now() + timeout;
        let mut p = self.pause_lock();
        if !p.requested || p.parked < p.running {
            return Err("the vCPUs are not paused (stop them first)".into());
        }
        let want = p.running;
        p.save = Some(SaveRequest {
            msrs,
            done: Vec::with_capacity(want),
            answered: Vec::with_capacity(want),
        });
        self.parked_changed.notify_all();
        loop {
            if p.save.as_ref().is_some_and(|r| r.done.len() >= want) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopping() {
                p.save = None;
                return Err("the vCPUs did not report their state in time".into());
            }
            p = self
                .parked_changed
                .wait_timeout(p, left.min(PARKED_POLL))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let done = p.save.take().map(|r| r.done).unwrap_or_default();
        let mut states = done.into_iter().collect::<Result<Vec<_>, _>>()?;
        states.sort_by_key(|s| s.id);
        Ok(states)
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        {
            let mut t = self.time_lock();
            if let Some(since) = t.paused_since.take() {
                t.paused_total += since.elapsed();
            }
        }
        let mut p = self.pause_lock();
        p.requested = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        self.pause_reason
            .store(PauseReason::Stop as u8, Ordering::SeqCst);
        self.parked_changed.notify_all();
    }

    /// Whether `stop` is in effect.
    pub fn paused(&self) -> bool {
        self.pause_requested.load(Ordering::SeqCst)
    }

    /// [`VmState::pause`] for `reason`, which the VM's run state names
    /// until it is resumed.
    pub fn pause_for(&self, reason: PauseReason, timeout: Duration) -> bool {
        self.pause_reason.store(reason as u8, Ordering::SeqCst);
        self.pause(timeout)
    }

    /// Why the VM is paused, if it is.
    pub fn pause_reason(&self) -> Option<PauseReason> {
        if !self.paused() {
            return None;
        }
        Some(match self.pause_reason.load(Ordering::SeqCst) {
            r if r == PauseReason::Watchdog as u8 => PauseReason::Watchdog,
            r if r == PauseReason::Prelaunch as u8 => PauseReason::Prelaunch,
            _ => PauseReason::Stop,
        })
    }

    /// Counts the calling vCPU in or out of the running set.
    fn vcpu_running(&self, running: bool) {
        let mut p = self.pause_lock();
        if running {
            p.running += 1;
        } else {
            p.running = p.running.saturating_sub(1);
        }
        self.parked_changed.notify_all();
    }

    /// Answers a snapshot's request for this parked vCPU's state, once.
    #[cfg(target_arch = "x86_64")]
    fn serve_save(&self, p: &mut Pause, vcpu: &mut Vcpu) {
        if let Some(req) = p.save.as_mut()
            && !req.answered.contains(&vcpu.id())
        {
            req.answered.push(vcpu.id());
            let r = save_one(vcpu, &req.msrs).map_err(|e| format!("vCPU {}: {e}", vcpu.id()));
            req.done.push(r);
            self.parked_changed.notify_all();
        }
    }

    /// Parks the calling vCPU while a pause is requested (and the VM is
    /// not stopping).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn park(&self, vcpu: &mut Vcpu) {
        let mut p = self.pause_lock();
        p.parked += 1;
        self.parked_changed.notify_all();
        while p.requested && !self.stopping() && signals::stop_signal().is_none() {
            #[cfg(target_arch = "x86_64")]
            self.serve_save(&mut p, vcpu);
            p = self
                .parked_changed
                .wait_timeout(p, PARKED_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        p.parked -= 1;
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Why the VM ends, if it does.
    pub fn end(&self) -> Option<VmEnd> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn take_end(&self) -> Option<VmEnd> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Configures `vcpu` (its id is its APIC ID in `topo`); the boot CPU also
/// gets the entry state (aarch64: `arch::aarch64::machine`). Returns the
/// CPUID it was given.
#[cfg(target_arch = "x86_64")]
pub fn configure(
    vcpu: &Vcpu,
    host: &hv::HostCpu,
    topo: &Topology,
    boot_cpu: bool,
    entry: Entry,
) -> Result<Vec<hv::CpuidEntry>, hv::Error> {
    let mut cpuid = host.cpuid.clone();
    crate::cpuid::for_vcpu_in(&mut cpuid, u32::from(vcpu.id()), topo, host.tsc_deadline);
    vcpu.set_cpuid(&cpuid)?;
    vcpu.set_msrs(&cpu::boot_msrs())?;
    vcpu.set_fpu(&cpu::fpu())?;
    let mut lapic = vcpu.lapic()?;
    cpu::lapic_lints(&mut lapic.regs);
    vcpu.set_lapic(&lapic)?;
    if boot_cpu {
        let s = cpu::sregs(vcpu.sregs()?, entry);
        vcpu.set_sregs(&s)?;
        vcpu.set_regs(&cpu::regs(entry))?;
    }
    Ok(cpuid)
}

/// One parked vCPU's state: a pending port or MMIO access is completed
/// first (KVM finishes it on the next KVM_RUN, which `immediate_exit`
/// makes return before any guest instruction), so the registers are
/// consistent.
#[cfg(target_arch = "x86_64")]
fn save_one(vcpu: &mut Vcpu, msrs: &[u32]) -> Result<hv::VcpuState, hv::Error> {
    vcpu.complete_pending_io()?;
    vcpu.save_state(msrs)
}

/// What every vCPU thread shares.
#[derive(Debug, Clone, Copy)]
pub struct Shared<'a> {
    pub io: &'a IoBuses,
    pub state: &'a VmState,
    pub mem: &'a GuestMemoryMmap,
    /// Console output KVM queues instead of exiting (coalesce.rs): its
    /// flush timer runs on vCPU 0; the queue drains through `io`'s hook.
    pub coalesced: Option<&'a SerialCoalescing>,
}

/// Runs `vcpu` until the VM stops, handling exits. `first_run` (vCPU 0
/// only) is called just before the first KVM_RUN.
pub fn run(mut vcpu: Vcpu, shared: Shared<'_>, first_run: Option<&dyn Fn()>) {
    let Shared {
        io,
        state,
        mem,
        coalesced,
    } = shared;
    // KVM's kick reaches this thread's kvm_run (HVF's needs no thread).
    #[cfg(target_os = "linux")]
    let _guard = VcpuThreadGuard::register(vcpu.immediate_exit_ptr());
    // vCPU 0 runs on the main thread, which takes the machine apart later.
    let kind = match first_run {
        Some(_) => crate::sandbox::ThreadKind::Main,
        None => crate::sandbox::ThreadKind::Vcpu,
    };
    if let Err(e) = crate::sandbox::enter(kind) {
        state.request_end(VmEnd::VcpuFailed(format!("vCPU {}: {e}", vcpu.id())));
        return;
    }
    let flushes = first_run.is_some();
    if flushes && let Some(c) = coalesced {
        c.start_flush_timer();
    }
    let mut first_run = first_run;
    #[cfg(target_arch = "x86_64")]
    let mut fault_logged = false;
    state.vcpu_running(true);
    loop {
        if state.stopping() {
            break;
        }
        if let Some(sig) = signals::stop_signal() {
            state.request_end(VmEnd::Signal(sig));
            break;
        }
        if state.paused() {
            // Queued console output reaches the UART before the pause.
            io.before_exit();
            state.park(&mut vcpu);
            continue;
        }
        if let Some(f) = first_run.take() {
            f();
        }
        let action = match vcpu.run() {
            Ok(exit) => {
                // Queued console writes come before this exit.
                io.before_exit();
                handle_exit(exit, io)
            }
            Err(e) => Action::End(VmEnd::VcpuFailed(e.to_string())),
        };
        match action {
            Action::Continue => {}
            Action::Interrupted => vcpu.clear_immediate_exit(),
            Action::End(VmEnd::InternalError { .. }) => {
                let (suberror, data) = vcpu.internal_error();
                let detail = describe_internal_error(&vcpu, mem, &data);
                state.request_end(VmEnd::InternalError { suberror, detail });
            }
            Action::End(end) => {
                if log::log_enabled!(log::Level::Info) {
                    log_registers(&vcpu);
                    #[cfg(target_arch = "x86_64")]
                    if end == VmEnd::TripleFault {
                        log_fault_state(&vcpu, "took the triple fault");
                        fault_logged = true;
                    }
                }
                state.request_end(end);
            }
        }
    }
    // The other vCPUs' state when one triple-faulted (-v): where they were.
    #[cfg(target_arch = "x86_64")]
    if log::log_enabled!(log::Level::Info)
        && state.end() == Some(VmEnd::TripleFault)
        && !fault_logged
    {
        log_fault_state(&vcpu, "was running when another vCPU triple-faulted");
    }
    state.vcpu_running(false);
    if flushes && let Some(c) = coalesced {
        c.stop_flush_timer();
    }
    io.before_exit();
}

/// "at PC 0x..." for the one-line report.
#[cfg(target_arch = "aarch64")]
fn describe_internal_error(vcpu: &Vcpu, _mem: &GuestMemoryMmap, data: &[u64]) -> String {
    match vcpu.pc() {
        Ok(pc) => format!("vCPU {} at PC {pc:#x}, data {data:x?}", vcpu.id()),
        Err(_) => format!("data {data:x?}"),
    }
}

#[cfg(target_arch = "aarch64")]
fn log_registers(vcpu: &Vcpu) {
    if let Ok(pc) = vcpu.pc() {
        log::info!("vCPU {}: pc={pc:#x}", vcpu.id());
    }
}

/// "at RIP 0x... bytes 0f c7 ..." for the one-line report; registers at -v.
#[cfg(target_arch = "x86_64")]
fn describe_internal_error(vcpu: &Vcpu, mem: &GuestMemoryMmap, data: &[u64]) -> String {
    let Ok(regs) = vcpu.regs() else {
        return format!("data {data:x?}");
    };
    let gpa = vcpu.translate(regs.rip).unwrap_or(regs.rip);
    let mut bytes = [0u8; 15];
    let code = match mem.read_slice(&mut bytes, GuestAddress(gpa)) {
        Ok(()) => bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "unreadable".into(),
    };
    log_registers(vcpu);
    format!(
        "vCPU {} at RIP {:#x} (GPA {gpa:#x}), instruction bytes {code}",
        vcpu.id(),
        regs.rip
    )
}

#[cfg(target_arch = "x86_64")]
fn log_registers(vcpu: &Vcpu) {
    if let (Ok(r), Ok(s)) = (vcpu.regs(), vcpu.sregs()) {
        log::info!(
            "vCPU {}: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            vcpu.id(),
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector
        );
    }
}

/// At -v, after a triple fault: the vCPU's whole state but the FPU and
/// MSRs (segments, descriptor tables, CR2, pending events, LAPIC
/// registers that matter for delivery), to tell a guest bug from a lost or
/// corrupted event. On AMD, KVM INITs the vCPU that took the shutdown
/// before it returns (the VMCB is undefined after a SHUTDOWN intercept):
/// its registers read back as the reset state (RIP 0xfff0), and only the
/// number and error code of the last exception KVM queued for it survive
/// in `events`. The other vCPUs' states are as they left KVM_RUN.
#[cfg(target_arch = "x86_64")]
fn log_fault_state(vcpu: &Vcpu, what: &str) {
    match vcpu.save_state(&[]) {
        Ok(st) => {
            let s = &st.sregs;
            log::info!(
                "vCPU {} {what}: mp_state={} regs={:x?}",
                vcpu.id(),
                st.mp_state,
                st.regs
            );
            log::info!(
                "vCPU {}: cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} apic_base={:#x} irq_bitmap={:x?} gdt={:x?} idt={:x?} cs={:x?} ss={:x?} tr={:x?}",
                vcpu.id(),
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.apic_base,
                s.interrupt_bitmap,
                s.gdt,
                s.idt,
                s.cs,
                s.ss,
                s.tr
            );
            log::info!("vCPU {}: events={:x?}", vcpu.id(), st.events);
            let reg = |off: usize| {
                let b = st.lapic.regs.get(off..off + 4).unwrap_or(&[0; 4]);
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            };
            // ISR, TMR and IRR: eight 32-bit words 16 bytes apart each.
            let words = |base: usize| (0..8).map(|i| reg(base + i * 16)).collect::<Vec<_>>();
            log::info!(
                "vCPU {}: lapic id={:#x} tpr={:#x} svr={:#x} isr={:x?} irr={:x?} lvtt={:#x} icr={:#x}",
                vcpu.id(),
                reg(0x20),
                reg(0x80),
                reg(0xf0),
                words(0x100),
                words(0x200),
                reg(0x320),
                reg(0x300)
            );
        }
        Err(e) => log::info!("vCPU {} {what}: state unreadable: {e}", vcpu.id()),
    }
}

/// Runs vCPUs 1.. on their own threads and vCPU 0 on the calling thread;
/// returns when all have stopped.
pub fn run_all(
    mut vcpus: Vec<Vcpu>,
    shared: Shared<'_>,
    first_run: &dyn Fn(),
) -> Result<(), std::io::Error> {
    let state = shared.state;
    if vcpus.is_empty() {
        return Ok(());
    }
    let bsp = vcpus.remove(0);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut spawn_error = None;
        for v in vcpus {
            let r = std::thread::Builder::new()
                .name(format!("vcpu{}", v.id()))
                .stack_size(256 << 10)
                .spawn_scoped(s, move || run(v, shared, None));
            match r {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Stop the vCPUs already started; do not run the BSP.
                    state.request_end(VmEnd::VcpuFailed(format!("cannot start vCPU thread: {e}")));
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        if spawn_error.is_none() {
            run(bsp, shared, Some(first_run));
        }
        for h in handles {
            if h.join().is_err() {
                state.request_end(VmEnd::VcpuFailed("vCPU thread panicked".into()));
            }
        }
        spawn_error.map_or(Ok(()), Err)
    })
}
