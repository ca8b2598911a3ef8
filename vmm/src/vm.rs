//! Building the machine from a [`Config`] and running it to its end.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::acpi_pm::AcpiSleep;
use devices::debug_exit::{DebugExit, ExitHook};
use devices::i8042::I8042;
use devices::serial::{IrqEvent, Serial};
use memory::Backend;

use crate::boot::{self, BootFiles, BootSpec};
use crate::coalesce::SerialCoalescing;
use crate::config::{Config, DeviceConfig, SerialMode};
use crate::exit::VmEnd;
use crate::guest_ram::{self, GuestRam};
use crate::hv::{self, Vm};
use crate::io::{BusKind, IoBuses};
use crate::layout;
use crate::vcpu::{self, VmState};

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{option}: {err}")]
    Backend {
        option: &'static str,
        id: String,
        err: Box<memory::Error>,
    },
    #[error(transparent)]
    Ram(#[from] guest_ram::Error),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Hypervisor(#[from] hv::Error),
    #[error("--serial file:{path}: {err}")]
    SerialFile { path: String, err: std::io::Error },
    #[error("serial: {0}")]
    Serial(#[from] devices::serial::Error),
    #[error("--device {name}: {err}")]
    DevicePlacement {
        name: String,
        err: devices::bus::Error,
    },
    #[error("starting vCPU threads: {0}")]
    Threads(std::io::Error),
    #[error(transparent)]
    Signals(#[from] crate::signals::Error),
    #[error(transparent)]
    Pci(#[from] crate::pci::Error),
    #[error(transparent)]
    VhostUserBlk(#[from] crate::vhost_user_blk::device::Error),
}

impl Error {
    /// 2 for anything the user can fix on the command line, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Backend { .. } | Error::SerialFile { .. } | Error::DevicePlacement { .. } => 2,
            Error::Ram(guest_ram::Error::ReadOnly { .. }) => 2,
            Error::Pci(crate::pci::Error::Ivshmem { .. } | crate::pci::Error::Slot { .. }) => 2,
            Error::Pci(crate::pci::Error::Assign(_)) => 2,
            Error::VhostUserBlk(e) if e.is_config() => 2,
            Error::Hypervisor(e) if e.is_config() => 2,
            Error::Boot(boot::Error::Write { .. }) => 1,
            Error::Boot(_) => 2,
            _ => 1,
        }
    }
}

/// Milestones for `-v` timing output.
#[derive(Debug)]
struct Timeline {
    start: Instant,
    marks: Vec<(&'static str, std::time::Duration)>,
}

impl Timeline {
    fn mark(&mut self, what: &'static str) {
        self.marks.push((what, self.start.elapsed()));
    }
}

/// A running machine. Field order is drop order: vCPUs and the VM go before
/// the RAM they map, which goes before the other backends.
struct Machine {
    vm: Arc<Vm>,
    ram: GuestRam,
    /// Backends from `-object` not used as RAM (for devices such as ivshmem).
    _objects: Vec<Arc<Backend>>,
    pci: crate::pci::Pci,
    vhost_user_blk: Vec<crate::vhost_user_blk::Wired>,
    io: Arc<IoBuses>,
    state: Arc<VmState>,
    /// Holds a reference to the VM: dropped before it.
    coalesced: Option<SerialCoalescing>,
}

fn serial_output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match mode {
        // Unbuffered: every byte the guest sends is visible at once.
        SerialMode::Stdio => Box::new(File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::SerialFile {
                    path: "stdout".into(),
                    err: e,
                })?,
        )),
        SerialMode::File(p) => Box::new(File::create(p).map_err(|err| Error::SerialFile {
            path: p.display().to_string(),
            err,
        })?),
        SerialMode::None => Box::new(std::io::sink()),
    })
}

fn create_backend(cfg: &memory::BackendConfig, option: &'static str) -> Result<Backend, Error> {
    Backend::create(cfg).map_err(|err| Error::Backend {
        option,
        id: cfg.id().to_string(),
        err: Box::new(err),
    })
}

/// A built machine, its vCPUs (not yet running) and the console UART.
type Built = (Machine, Vec<hv::Vcpu>, Arc<Mutex<Serial>>);

fn build(cfg: &Config, t: &mut Timeline) -> Result<Built, Error> {
    let mut files = BootFiles::open(&cfg.kernel, cfg.initrd.as_deref())?;
    let ram = GuestRam::new(create_backend(
        &cfg.ram,
        if cfg.ram_from_object {
            "--object"
        } else {
            "-m"
        },
    )?)?;
    let objects = cfg
        .objects
        .iter()
        .map(|o| create_backend(o, "--object").map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    t.mark("memory backend(s) created and mapped");

    let vm = Arc::new(Vm::new()?);
    t.mark("open /dev/kvm + KVM_CREATE_VM");
    // Memory slots, irqchip and PIT each wait inside KVM (SRCU grace
    // periods, the PIT's kernel thread). Overlapping them from two threads
    // was measured no faster (they serialize on KVM's locks), so: in order.
    ram.register(&vm)?;
    t.mark("guest RAM registered (memory slots)");
    let (loaded, vcpus, serial, io, state) = build_rest(cfg, &vm, &ram, &mut files, t)?;
    log::info!("entry {:?}, initrd {:x?}", loaded.entry, loaded.initrd);
    let coalesced = match vcpus.first() {
        Some(v) => SerialCoalescing::start(&vm, v, &serial, layout::COM1_PORT),
        None => None,
    };
    t.mark("console output coalescing");
    let vhost_user_blk =
        crate::vhost_user_blk::device::create_all(&cfg.devices, ram.backend(), &vm)?;
    let pci = build_pci(cfg, &vm, &io, &objects, &vhost_user_blk)?;
    t.mark("PCI root, ivshmem and vhost-user-blk devices");
    Ok((
        Machine {
            vm,
            ram,
            _objects: objects,
            pci,
            vhost_user_blk,
            io,
            state,
            coalesced,
        },
        vcpus,
        serial,
    ))
}

/// The PCI root with every `-device ivshmem-plain` (its memdev's backend
/// as BAR2), BARs placed in the layout's windows.
fn build_pci(
    cfg: &Config,
    vm: &Arc<Vm>,
    io: &Arc<IoBuses>,
    objects: &[Arc<Backend>],
    vhost_user_blk: &[crate::vhost_user_blk::Wired],
) -> Result<crate::pci::Pci, Error> {
    let mut ivshmem = Vec::new();
    for d in &cfg.devices {
        if let DeviceConfig::IvshmemPlain(c) = d {
            // The CLI checked that the memdev exists (and is not guest RAM).
            if let Some(b) = objects.iter().find(|b| b.id() == c.memdev) {
                ivshmem.push((c, b.clone()));
            }
        }
    }
    let windows = devices::pci::BarWindows {
        io: Some(layout::PCI_IO_START..layout::PCI_IO_END),
        mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_END,
        mmio64: {
            let start = layout::pci_mmio64_start(cfg.ram.size());
            Some(start..start + layout::PCI_MMIO64_SIZE)
        },
    };
    let slots: Arc<dyn crate::pci::MemorySlots> = vm.clone();
    Ok(crate::pci::Pci::build(
        &slots,
        io,
        &ivshmem,
        &vhost_user_blk
            .iter()
            .map(crate::vhost_user_blk::Wired::pci_function)
            .collect::<Vec<_>>(),
        &windows,
        layout::PCI_BAR_FIRST_SLOT,
    )?)
}

/// What [`build_rest`] produces.
type Rest = (
    boot::Loaded,
    Vec<hv::Vcpu>,
    Arc<Mutex<Serial>>,
    Arc<IoBuses>,
    Arc<VmState>,
);

/// Everything after KVM_CREATE_VM except the memory slots: irqchip, kernel
/// loading, devices, vCPUs.
fn build_rest(
    cfg: &Config,
    vm: &Vm,
    ram: &GuestRam,
    files: &mut BootFiles,
    t: &mut Timeline,
) -> Result<Rest, Error> {
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
    let loaded = boot::load(ram.mem(), ram.size(), &spec, files)?;
    t.mark("kernel + boot data loaded");

    let state = Arc::new(VmState::default());
    let io = Arc::new(IoBuses::new());
    let serial = wire_devices(cfg, vm, &io, &state)?;
    t.mark("devices");

    // ~0.5 ms on PVM: ~70 CPUID instructions in the host kernel, each
    // trapping to the host's own hypervisor (~7 us). On a helper thread
    // started right after KVM_CREATE_VM, overlapping the steps above, it
    // was measured no faster, on a quiet host too (first KVM_RUN median
    // 1.21 vs 1.21 ms, 2x40 interleaved runs; the main thread stalls while
    // the query runs). So: in order.
    let host = vm.host_cpu()?;
    t.mark("KVM_GET_SUPPORTED_CPUID");
    let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
    for id in 0..cfg.vcpus {
        let v = vm.create_vcpu(id)?;
        vcpu::configure(&v, &host.cpuid, host.tsc_deadline, cfg.vcpus, loaded.entry)?;
        vcpus.push(v);
    }
    t.mark("vCPUs created and configured");
    Ok((loaded, vcpus, serial, io, state))
}

/// COM1, the i8042 and the `--device`s on the port bus.
fn wire_devices(
    cfg: &Config,
    vm: &Vm,
    io: &IoBuses,
    state: &Arc<VmState>,
) -> Result<Arc<Mutex<Serial>>, Error> {
    let hook: ExitHook = {
        let state = state.clone();
        Arc::new(move |e| state.request_end(VmEnd::Guest(e)))
    };
    let serial_out = serial_output(&cfg.serial)?;
    let serial = Arc::new(Mutex::new(Serial::new(IrqEvent::new()?, serial_out)));
    let irq = serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .irq()
        .eventfd()
        .try_clone();
    let irq = irq.map_err(|e| Error::Serial(devices::serial::Error::EventFd(e)))?;
    vm.add_irqfd(&irq, layout::COM1_IRQ)?;
    let place = |name: &str| {
        let name = name.to_string();
        move |err| Error::DevicePlacement { name, err }
    };
    let com1 = (layout::COM1_PORT.into(), Serial::PORTS);
    io.add_shared(
        BusKind::Pio,
        "serial0 (0x3f8)",
        serial.clone(),
        com1.0,
        com1.1,
    )
    .map_err(place("serial"))?;
    let sleep = (layout::ACPI_SLEEP_PORT.into(), AcpiSleep::PORTS);
    io.add(
        BusKind::Pio,
        "acpi-sleep (0x3c0)",
        AcpiSleep::new(hook.clone()),
        sleep.0,
        sleep.1,
    )
    .map_err(place("acpi-sleep"))?;
    let kbd = (layout::I8042_PORT.into(), I8042::PORTS);
    io.add(
        BusKind::Pio,
        "i8042 (0x60)",
        I8042::new(hook.clone()),
        kbd.0,
        kbd.1,
    )
    .map_err(place("i8042"))?;
    for d in &cfg.devices {
        match d {
            DeviceConfig::DebugExit { iobase, iosize } => {
                let name = format!("isa-debug-exit ({iobase:#x})");
                let dev = DebugExit::new(hook.clone());
                io.add(BusKind::Pio, &name, dev, (*iobase).into(), (*iosize).into())
                    .map_err(place("isa-debug-exit"))?;
            }
            // Wired by build_pci, together on the PCI root.
            DeviceConfig::IvshmemPlain(_) | DeviceConfig::VhostUserBlk(_) => {}
        }
    }
    Ok(serial)
}

/// Builds the VM described by `cfg`, runs it, and says how it ended.
pub fn run(cfg: &Config, start: Instant) -> Result<VmEnd, Error> {
    let mut t = Timeline {
        start,
        marks: Vec::new(),
    };
    crate::signals::install()?;
    let (m, vcpus, serial) = build(cfg, &mut t)?;
    let _console =
        crate::serial_mux::attach(&cfg.serial, cfg.stdio, serial.clone(), m.state.clone());
    let first_run = || {
        if log::log_enabled!(log::Level::Info) {
            let mut prev = std::time::Duration::ZERO;
            for (what, at) in &t.marks {
                let (ms, delta) = (at.as_secs_f64() * 1e3, (*at - prev).as_secs_f64() * 1e3);
                log::info!("startup: {ms:8.3} ms (+{delta:.3}) {what}");
                prev = *at;
            }
            log::info!(
                "startup: first KVM_RUN at {:.3} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
    };
    let shared = vcpu::Shared {
        io: &m.io,
        state: &m.state,
        mem: m.ram.mem(),
        coalesced: m.coalesced.as_ref(),
    };
    let ran = vcpu::run_all(vcpus, shared, &first_run);
    serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush_output();
    ran.map_err(Error::Threads)?;
    let end = m
        .state
        .take_end()
        .unwrap_or(VmEnd::VcpuFailed("stopped without a reason".into()));
    if cfg.stats || log::log_enabled!(log::Level::Info) {
        let vhost: String = m.vhost_user_blk.iter().map(|d| d.report()).collect();
        let coalesced = m.coalesced.as_ref().map(|c| c.report()).unwrap_or_default();
        eprint!(
            "shmvm: device statistics\n{}{coalesced}{}{vhost}",
            m.io.report(),
            m.pci.report()
        );
    }
    log::info!(
        "VM ended after {:.3} ms: {end:?}",
        start.elapsed().as_secs_f64() * 1e3
    );
    finish(m);
    Ok(end)
}

/// Takes the machine apart once the vCPUs are gone: devices (vhost-user
/// back-ends see their disconnect), then the backends (named shm unlinked,
/// file data in place), then the VM itself, whose slow destruction in KVM
/// happens off our exit path (teardown.rs). KVM is fine with slot memory
/// unmapped before the VM goes: no vCPU runs, and a normal process exit
/// also unmaps memory (exit_mm) before closing fds (exit_files).
fn finish(m: Machine) {
    let Machine {
        vm,
        ram,
        _objects,
        pci,
        vhost_user_blk,
        io,
        state,
        coalesced,
    } = m;
    drop((coalesced, pci, vhost_user_blk, io, state));
    drop((ram, _objects));
    match Arc::try_unwrap(vm) {
        Ok(vm) => crate::teardown::detach(vm),
        Err(vm) => {
            log::debug!("teardown: VM still shared, closing it here");
            drop(vm);
        }
    }
}
