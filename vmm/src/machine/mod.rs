//! The machine: built from a [`Config`] in one pass ([`Machine::build`]),
//! run to its end ([`Machine::run`]), taken apart in order.
//!
//! Every device plugs in one of two ways:
//! - legacy devices at fixed ports: [`legacy`]'s table;
//! - PCI functions: a [`PciPlug`] per `-device`, placed by [`Pci::build`]'s
//!   one loop with typed BARs (registers or host memory).

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod control;
pub use crate::ivshmem::doorbell as ivshmem_doorbell;
pub use crate::ivshmem::plug as ivshmem;
pub mod legacy;
pub mod power_button;
mod snapshot;

/// Why a configuration cannot be snapshotted (tests of the CLI's side).
#[cfg(test)]
pub(crate) use snapshot::refusal as snapshot_refusal;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::debug_exit::ExitHook;
use devices::notifier::Notifier;
use devices::serial::Serial;
use memory::Backend;

use crate::boot::{self, BootFiles, BootSpec};
use crate::coalesce::SerialCoalescing;
use crate::config::{Config, DeviceConfig, SerialMode, StdioOptions};
use crate::console_out;
use crate::exit::VmEnd;
use crate::guest_ram::{self, GuestRam};
use crate::hv::{self, Vm};
use crate::interrupts::Interrupts;
use crate::io::IoBuses;
use crate::layout;
use crate::pci::{Pci, PciPlug};
use crate::stats::{Stats, StatsFormat};
use crate::vcpu::{self, VmState};
use crate::vhost_user;

/// Errors building or running the machine. Each knows its exit class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{option}: {err}")]
    Backend {
        option: &'static str,
        id: String,
        #[source]
        err: Box<memory::Error>,
    },
    #[error("-device: memdev '{id}' is not defined by any -object")]
    NoObject { id: String },
    #[error(transparent)]
    Ram(#[from] guest_ram::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Hypervisor(#[from] hv::Error),
    #[error(transparent)]
    Console(#[from] console_out::OutputError),
    #[error("serial: {0}")]
    Serial(#[from] devices::serial::Error),
    #[error(transparent)]
    Legacy(#[from] legacy::Error),
    #[error("starting vCPU threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error(transparent)]
    Signals(#[from] crate::signals::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::Error),
    #[error("{err}; memdev '{memdev}' ({size:#x} bytes) is too large for it")]
    MemdevTooLarge {
        memdev: String,
        size: u64,
        #[source]
        err: Box<crate::pci::Error>,
    },
    #[error(transparent)]
    Pci(#[from] crate::pci::Error),
    #[error(transparent)]
    Ivshmem(#[from] ivshmem::Error),
    #[error(transparent)]
    VhostUser(#[from] vhost_user::device::Error),
    #[error(transparent)]
    Monitor(#[from] crate::qmp::server::Error),
    #[error(transparent)]
    IvshmemDoorbell(#[from] ivshmem_doorbell::Error),
    #[error(transparent)]
    Virtio(#[from] crate::virtio::Error),
    #[error(transparent)]
    Watchdog(#[from] crate::watchdog::Error),
    #[error("--restore: {0}")]
    Snapshot(#[from] crate::snapshot::Error),
    #[error("--restore: PCI configuration: {0}")]
    RestorePci(String),
}

impl Error {
    /// 2 for anything the user can fix on the command line, 1 otherwise;
    /// each part's error says which it is.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Backend { .. }
            | Error::MemdevTooLarge { .. }
            | Error::NoObject { .. }
            | Error::Ivshmem(_) => 2,
            Error::Console(e) => e.exit_code(),
            Error::Ram(e) => e.exit_code(),
            Error::Boot(e) => e.exit_code(),
            Error::Hypervisor(e) => e.exit_code(),
            Error::Legacy(e) => e.exit_code(),
            Error::Pci(e) => e.exit_code(),
            Error::VhostUser(e) => e.exit_code(),
            Error::Monitor(e) => e.exit_code(),
            Error::IvshmemDoorbell(e) => e.exit_code(),
            Error::Virtio(e) => e.exit_code(),
            Error::Watchdog(e) => e.exit_code(),
            Error::Snapshot(e) => e.exit_code(),
            Error::RestorePci(_) => 2,
            Error::Serial(_) | Error::Threads(_) | Error::Signals(_) | Error::Sandbox(_) => 1,
        }
    }
}

/// Milestones for `-v` timing output.
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Timeline {
    pub fn new(start: Instant) -> Self {
        Timeline {
            start,
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        self.marks.push((what, self.start.elapsed()));
    }

    /// Logs every mark at info level.
    fn log(&self) {
        if !log::log_enabled!(log::Level::Info) {
            return;
        }
        let mut prev = Duration::ZERO;
        for (what, at) in &self.marks {
            let (ms, delta) = (at.as_secs_f64() * 1e3, (*at - prev).as_secs_f64() * 1e3);
            log::info!("startup: {ms:8.3} ms (+{delta:.3}) {what}");
            prev = *at;
        }
        log::info!(
            "startup: first KVM_RUN at {:.3} ms",
            self.start.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// The console UART and what feeds and drains it.
#[derive(Debug)]
struct Console {
    serial: Arc<Mutex<Serial>>,
    mode: SerialMode,
    stdio: StdioOptions,
    /// Holds a reference to the VM: dropped before it.
    coalesced: Option<Arc<SerialCoalescing>>,
    /// Output the reader did not take in time (None: `-serial none`).
    dropped: Option<console_out::Dropped>,
}

/// A built machine. Field order is not drop order: [`Machine::finish`]
/// takes it apart (devices, then memory, then the VM off the exit path).
#[derive(Debug)]
pub struct Machine {
    vm: Arc<Vm>,
    ram: GuestRam,
    /// Backends from `-object` not used as RAM (for devices such as ivshmem).
    objects: Vec<Arc<Backend>>,
    plugs: Vec<Box<dyn PciPlug>>,
    pci: Pci,
    io: Arc<IoBuses>,
    state: Arc<VmState>,
    console: Console,
    vcpus: Vec<hv::Vcpu>,
    snap: snapshot::SnapshotParts,
    /// The ACPI power button, placed at its first press (QMP, a watchdog).
    power_button: Arc<power_button::LazyButton>,
}

/// A BAR that does not fit the windows, when it is an ivshmem device's BAR2:
/// the message also names the memdev and its size (what the user can change).
fn name_the_memdev(err: crate::pci::Error, cfg: &Config, objects: &[Arc<Backend>]) -> Error {
    if let crate::pci::Error::NoRoom { device, .. } = &err {
        for d in &cfg.devices {
            if let DeviceConfig::IvshmemPlain(c) = d
                && c.to_string() == *device
                && let Some(b) = objects.iter().find(|b| b.id() == c.memdev)
            {
                return Error::MemdevTooLarge {
                    memdev: c.memdev.clone(),
                    size: b.size(),
                    err: Box::new(err),
                };
            }
        }
    }
    Error::Pci(err)
}

/// What a watchdog's actions need of this machine: the power button
/// (`shutdown`) and NMIs (`inject-nmi`). The VM is held weakly: the
/// watchdog's thread never keeps it alive past the machine.
fn watchdog_hooks(vm: &Arc<Vm>, button: &Arc<power_button::LazyButton>) -> crate::watchdog::Hooks {
    let button = button.clone();
    let vm = Arc::downgrade(vm);
    crate::watchdog::Hooks {
        power_button: Box::new(move || button.press().map_err(|e| e.to_string())),
        inject_nmi: Box::new(move || match vm.upgrade() {
            Some(vm) => vm.inject_nmi().map_err(|e| e.to_string()),
            None => Err("the VM is shutting down".into()),
        }),
    }
}

/// Guest RAM as the built-in virtio devices' workers reach it.
fn virtio_ram(ram: &GuestRam) -> Arc<dyn devices::virtio::queue::GuestMemory> {
    Arc::new(crate::virtio::memory::Ram(ram.mem().clone()))
}

/// `mem-path` files this start-up created: removed when it fails (dropped
/// before [`CreatedFiles::keep`]), so a failed start leaves nothing behind.
#[derive(Debug, Default)]
struct CreatedFiles(Vec<std::path::PathBuf>);

impl CreatedFiles {
    fn note(&mut self, b: &Backend) {
        if let Some(p) = b.created_file() {
            self.0.push(p.to_path_buf());
        }
    }

    /// Start-up succeeded: the files stay (their data is the point).
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            match std::fs::remove_file(p) {
                Ok(()) => log::debug!("removed {} (created by this failed start)", p.display()),
                Err(e) => log::warn!("can't remove {}: {e}", p.display()),
            }
        }
    }
}

/// The backend `id` among the `-object`s (the configuration layer checked
/// that it exists and is not guest RAM).
fn object(objects: &[Arc<Backend>], id: &str) -> Result<Arc<Backend>, Error> {
    objects
        .iter()
        .find(|b| b.id() == id)
        .cloned()
        .ok_or_else(|| Error::NoObject { id: id.to_string() })
}

impl Machine {
    /// Builds the machine `cfg` describes, up to vCPUs ready to run.
    pub fn build(cfg: &Config, t: &mut Timeline) -> Result<Machine, Error> {
        // A restore rebuilds the saved machine in this same pass: memory
        // mapped from the snapshot instead of created, no kernel loaded,
        // vCPU and device state written back instead of set up for boot.
        let restore = cfg.restore.as_deref();
        // Every user-named file is opened before anything is created.
        let mut files = match restore {
            None => Some(BootFiles::open(&cfg.kernel, cfg.initrd.as_deref())?),
            Some(_) => None,
        };
        let ram_option = if cfg.ram_from_object {
            "--object"
        } else {
            "-m"
        };
        // mem-path files created from here on go again if a later step fails.
        let mut created = CreatedFiles::default();
        let ram_backend = snapshot::backend(&cfg.ram, ram_option, restore, true)?;
        created.note(&ram_backend);
        let ram = GuestRam::new(ram_backend)?;
        let objects = cfg
            .objects
            .iter()
            .map(|o| {
                let b = snapshot::backend(o, "--object", restore, false)?;
                created.note(&b);
                Ok(Arc::new(b))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        t.mark("memory backend(s) created and mapped");

        let vm = Arc::new(Vm::new()?);
        t.mark("open /dev/kvm + KVM_CREATE_VM");
        // Memory slots, irqchip and PIT each wait inside KVM (SRCU grace
        // periods, the PIT's kernel thread). Overlapping them from two
        // threads was measured no faster (they serialize on KVM's locks).
        ram.register(&vm)?;
        t.mark("guest RAM registered (memory slots)");
        vm.add_irqchip(layout::KVM_TSS)?;
        t.mark("in-kernel irqchip (PIC, IOAPIC, LAPICs)");
        vm.add_pit()?;
        t.mark("in-kernel PIT");
        let spec = BootSpec {
            kernel: &cfg.kernel,
            initrd: cfg.initrd.as_deref(),
            cmdline: &cfg.cmdline,
            protocol: cfg.boot,
            vcpus: cfg.vcpus,
        };
        let topo = boot::Topology {
            sockets: cfg.smp.sockets,
            cores: cfg.smp.cores,
            threads: cfg.smp.threads,
        };
        let entry = match files.as_mut() {
            Some(files) => {
                let loaded = boot::load_with(ram.mem(), ram.size(), &spec, &topo, files)?;
                log::info!("entry {:?}, initrd {:x?}", loaded.entry, loaded.initrd);
                t.mark("kernel + boot data loaded");
                Some(loaded.entry)
            }
            None => None,
        };

        let state = Arc::new(VmState::new(cfg.start_paused));
        let io = Arc::new(IoBuses::new());
        let hook: ExitHook = {
            let state = state.clone();
            Arc::new(move |e| state.request_end(VmEnd::Guest(e)))
        };
        let (out, console_dropped) = console_out::serial_output(&cfg.serial)?;
        let serial = Serial::new(Notifier::new().map_err(devices::serial::Error::Irq)?, out);
        vm.register_irqfd(serial.irq(), layout::COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = legacy::place(&io, &serial, &hook)?;
        if let Some(r) = restore {
            snapshot::restore_devices(r, &serial, &i8042)?;
        }
        t.mark("legacy devices");

        // ~0.5 ms on PVM: ~70 CPUID instructions in the host kernel, each
        // trapping to the host's own hypervisor (~7 us). On a helper thread
        // it was measured no faster (first KVM_RUN median 1.21 vs 1.21 ms,
        // 2x40 interleaved runs). So: in order.
        let host = vm.host_cpu()?;
        t.mark("KVM_GET_SUPPORTED_CPUID");
        if let Some(r) = restore {
            snapshot::check_host_cpu(r, &host, &topo)?;
        }
        let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
        let mut cpuids = Vec::with_capacity(cfg.vcpus.into());
        for index in 0..cfg.vcpus {
            // The in-kernel LAPIC's ID is the vCPU's id: the topology's
            // APIC ID (load_with checked that each fits below 0xfe).
            let apic_id = u8::try_from(topo.apic_id(index)).unwrap_or(u8::MAX);
            let v = vm.create_vcpu(apic_id)?;
            let cpuid = match (restore, entry) {
                (Some(r), _) => {
                    let saved =
                        r.state
                            .vcpus
                            .iter()
                            .find(|s| s.id == apic_id)
                            .ok_or_else(|| {
                                crate::snapshot::Error::Corrupt(format!(
                                    "no state for vCPU {apic_id}"
                                ))
                            })?;
                    v.restore_state(saved)?;
                    saved.cpuid.clone()
                }
                (None, Some(entry)) => vcpu::configure(&v, &host, &topo, index == 0, entry)?,
                (None, None) => unreachable!("a boot always loads a kernel"),
            };
            cpuids.push((apic_id, cpuid));
            vcpus.push(v);
        }
        t.mark("vCPUs created and configured");
        let coalesced = vcpus.first().and_then(|v| {
            SerialCoalescing::start(&vm, v, &serial, layout::COM1_PORT).map(Arc::new)
        });
        if let Some(c) = &coalesced {
            io.set_hook(c.clone());
        }
        t.mark("console output coalescing");

        let interrupts = Interrupts::new(&vm);
        let power_button = Arc::new(power_button::LazyButton::new(&vm, &io));
        let mut plugs: Vec<Box<dyn PciPlug>> = Vec::new();
        let mut debug_exits = Vec::new();
        for d in &cfg.devices {
            match d {
                DeviceConfig::DebugExit { iobase, iosize } => {
                    debug_exits.push(legacy::DebugExitPorts {
                        iobase: *iobase,
                        iosize: *iosize,
                    });
                }
                DeviceConfig::IvshmemPlain(c) => plugs.push(Box::new(ivshmem::Ivshmem::new(
                    c,
                    object(&objects, &c.memdev)?,
                )?)),
                DeviceConfig::IvshmemDoorbell(c) => plugs.push(Box::new(
                    ivshmem_doorbell::Doorbell::connect(c, &vm, &interrupts)?,
                )),
                DeviceConfig::VhostUser(c) => plugs.push(Box::new(vhost_user::device::create(
                    c,
                    ram.backend(),
                    &vm,
                    &interrupts,
                )?)),
                DeviceConfig::VirtioBlk(c) => plugs.push(Box::new(crate::virtio::blk(
                    c,
                    virtio_ram(&ram),
                    &vm,
                    &interrupts,
                )?)),
                DeviceConfig::VirtioRng(c) => plugs.push(Box::new(crate::virtio::rng(
                    c,
                    virtio_ram(&ram),
                    &vm,
                    &interrupts,
                )?)),
                DeviceConfig::VirtioSerial(c) => plugs.push(Box::new(crate::virtio::serial(
                    c,
                    virtio_ram(&ram),
                    &vm,
                    &interrupts,
                )?)),
                DeviceConfig::Watchdog(c) => plugs.push(Box::new(crate::watchdog::Watchdog::new(
                    c,
                    cfg.watchdog_action,
                    &state,
                    watchdog_hooks(&vm, &power_button),
                )?)),
                // Moved into its virtio-serial-pci by the configuration.
                DeviceConfig::VirtioSerialPort(_) => {}
            }
        }
        let host = crate::pci::PciHost {
            config: crate::pci::ConfigAccess::Ports,
            windows: devices::pci::BarWindows {
                io: Some(layout::PCI_IO_START..layout::PCI_IO_END),
                mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_END,
                mmio64: {
                    let start = layout::pci_mmio64_start(cfg.ram.size());
                    Some(start..start + layout::PCI_MMIO64_SIZE)
                },
            },
            first_slot: layout::PCI_BAR_FIRST_SLOT,
        };
        let functions: Vec<_> = plugs.iter().map(|p| p.function()).collect();
        let slots: Arc<dyn crate::pci::MemorySlots> = vm.clone();
        let pci = Pci::build(&slots, &io, &functions, &host)
            .map_err(|err| name_the_memdev(err, cfg, &objects))?;
        legacy::place_debug_exits(&io, &hook, &debug_exits)?;
        t.mark("PCI root and devices");
        if let Some(r) = restore {
            let saved: Vec<_> = r
                .state
                .pci
                .iter()
                .map(|f| (f.slot, f.config.clone()))
                .collect();
            pci.restore_config(&saved).map_err(Error::RestorePci)?;
            vm.restore_irq_state(&r.state.vm)?;
            t.mark("PCI configuration, irqchips, PIT and clock restored");
        }
        created.keep();
        Ok(Machine {
            vm,
            ram,
            objects,
            plugs,
            pci,
            io,
            state,
            console: Console {
                serial,
                mode: cfg.serial.clone(),
                stdio: cfg.stdio,
                coalesced,
                dropped: console_dropped,
            },
            vcpus,
            snap: snapshot::SnapshotParts::new(cfg, i8042, cpuids),
            power_button,
        })
    }

    /// What every device did so far.
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            buses: self.io.bus_stats(),
            unclaimed: self.io.unclaimed_counts(),
            console: self.console.coalesced.as_ref().map(|c| c.stats()),
            console_dropped_bytes: self.console.dropped.as_ref().map_or(0, |d| d.bytes()),
            guest_log_lines: crate::ratelimit::totals().0,
            guest_log_suppressed: crate::ratelimit::totals().1,
            ..Stats::default()
        };
        for (plug, placed) in self.plugs.iter().zip(self.pci.placed()) {
            plug.add_stats(placed, &self.pci, &mut s);
        }
        s
    }

    /// Runs the vCPUs until the VM ends (serving `monitor`'s clients
    /// meanwhile), prints the statistics as asked, and takes the machine
    /// apart.
    pub fn run(
        mut self,
        t: &Timeline,
        stats: StatsFormat,
        monitor: Option<crate::qmp::Server>,
    ) -> Result<VmEnd, Error> {
        let c = &self.console;
        let _console =
            crate::serial_mux::attach(&c.mode, c.stdio, c.serial.clone(), self.state.clone());
        let vcpus = std::mem::take(&mut self.vcpus);
        let shared = vcpu::Shared {
            io: &self.io,
            state: &self.state,
            mem: self.ram.mem(),
            coalesced: self.console.coalesced.as_deref(),
        };
        let mon = crate::control::Monitor::new(&self, vcpus.len(), monitor.as_ref());
        let ran = std::thread::scope(|s| {
            mon.spawn(s, monitor);
            if let Some(dir) = self.snap.on_signal.as_deref() {
                let m = &self;
                let r = std::thread::Builder::new()
                    .name("snapshot".into())
                    .stack_size(256 << 10)
                    .spawn_scoped(s, move || {
                        crate::sandbox::enter_worker();
                        m.watch_snapshot_signal(dir);
                    });
                if let Err(e) = r {
                    log::error!("--snapshot-on-signal: cannot start its thread: {e}");
                }
            }
            let ran = vcpu::run_all(vcpus, shared, &|| t.log());
            mon.finished(&self.state);
            ran
        });
        self.console
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush_output();
        if let Some(d) = &self.console.dropped {
            d.settle(console_out::DRAIN_DEADLINE);
        }
        ran.map_err(Error::Threads)?;
        let end = self
            .state
            .take_end()
            .unwrap_or(VmEnd::VcpuFailed("stopped without a reason".into()));
        match stats {
            StatsFormat::Json => eprintln!("{}", self.stats().json()),
            StatsFormat::Text => eprint!("{}", self.stats().text()),
            StatsFormat::Off if log::log_enabled!(log::Level::Info) => {
                eprint!("{}", self.stats().text());
            }
            StatsFormat::Off => {}
        }
        log::info!(
            "VM ended after {:.3} ms: {end:?}",
            t.start.elapsed().as_secs_f64() * 1e3
        );
        self.finish();
        Ok(end)
    }

    /// Takes the machine apart once the vCPUs are gone: devices (vhost-user
    /// back-ends see their disconnect), then the backends (named shm
    /// unlinked, file data in place), then the VM itself, whose slow
    /// destruction in KVM happens off our exit path (teardown.rs). KVM is
    /// fine with slot memory unmapped before the VM goes: no vCPU runs, and
    /// a normal process exit also unmaps memory (exit_mm) before closing fds
    /// (exit_files).
    fn finish(self) {
        let Machine {
            vm,
            ram,
            objects,
            plugs,
            pci,
            io,
            state,
            console,
            vcpus,
            snap,
            power_button,
        } = self;
        // The helper starts on another CPU while the rest goes.
        let handoff = crate::teardown::begin(&vm);
        drop((console, pci, plugs, io, state, vcpus, snap, power_button));
        drop((ram, objects));
        if Arc::strong_count(&vm) > 1 {
            log::debug!("teardown: VM still shared, closed by its last holder");
        }
        handoff.complete(move || drop(vm));
    }
}

/// Builds the VM `cfg` describes, runs it, and says how it ended.
pub fn run(cfg: &Config, start: Instant) -> Result<VmEnd, Error> {
    let mut t = Timeline::new(start);
    crate::signals::install()?;
    if cfg.snapshot_on_signal.is_some() {
        crate::signals::install_snapshot()?;
    }
    crate::sandbox::set_enabled(cfg.sandbox);
    // Before the machine: a path that cannot be a socket fails first.
    let monitor = crate::qmp::Server::new(&cfg.monitors)?;
    let m = match Machine::build(cfg, &mut t) {
        Ok(m) => m,
        // A stop signal during start-up (a back-end's handshake cut short by
        // it, say) ends the VM as the signal, not as a configuration error.
        Err(e) => match crate::signals::stop_signal() {
            Some(sig) => {
                log::info!("start-up stopped by signal {sig}: {e}");
                return Ok(VmEnd::Signal(sig));
            }
            None => return Err(e),
        },
    };
    // Start-up is over. The main thread drops its capabilities and enters
    // its seccomp filter when it starts running vCPU 0: the vCPU filter,
    // which denies everything the main one does and more (installing a
    // filter costs ~0.15 ms here, so once, not stacked). Every thread
    // started before that (the QMP server's, the stdin reader, the other
    // vCPUs, device workers) enters its own.
    m.run(&t, cfg.stats, monitor)
}
