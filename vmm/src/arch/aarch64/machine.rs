//! The aarch64 machine: built from a [`Config`] in one pass, run to its end
//! with the shared vCPU loop, taken apart in the same order as on x86_64
//! (devices, memory, then the VM off the exit path).
//!
//! Build order (KVM's rules): memory slots; vCPUs created and initialized
//! (KVM_ARM_VCPU_INIT: PSCI 0.2, secondaries powered off); the GICv3
//! created, placed and initialized after them; the UART's irqfd once the
//! GIC exists; the PCI root (ECAM) with its functions, placed by the one
//! PCI path shared with x86_64 (`pci.rs`); the device tree from the vCPUs'
//! MPIDRs; the boot CPU's registers.
//!
//! Under HVF (macOS on Apple silicon, `hv/hvf.rs`) the same order builds
//! the same machine, with what that host has: the UART's line is a pipe
//! that `hv-hvf` relays to the GIC's SPI, the GIC has no ITS (MSIs, the
//! virtio devices' included, go through its MBI frame), vhost-user and
//! ivshmem-doorbell are refused (eventfd is their protocol), there is no
//! seccomp sandbox, and the VM is closed in place.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::debug_exit::{DebugExit, ExitHook};
use devices::notifier::Notifier;
use devices::serial::Serial;
use memory::Backend;
use vm_memory::{Bytes, GuestAddress};

use super::{fdt, image, layout};
use crate::config::{Config, DeviceConfig};
use crate::console_out;
use crate::control::{Controlled, Monitor};
use crate::exit::VmEnd;
use crate::guest_ram::{self, GuestRam};
use crate::hv::{self, CoreRegs, GicConfig, MsiController, VcpuInit, Vm};
use crate::interrupts::Interrupts;
use crate::io::{BusKind, IoBuses};
#[cfg(target_os = "linux")]
use crate::ivshmem::doorbell::Doorbell;
use crate::ivshmem::plug::Ivshmem;
use crate::pci::{ConfigAccess, MemorySlots, Pci, PciHost, PciPlug};
use crate::qmp::control::Reply;
use crate::stats::{Stats, StatsFormat};
use crate::vcpu::{self, VmState};
use devices::pci::BarWindows;

/// Errors building or running the aarch64 machine. Each knows its exit
/// class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{option}: {err}")]
    Backend {
        option: &'static str,
        #[source]
        err: Box<memory::Error>,
    },
    #[error("{option}: guest RAM of {detail}")]
    RamSize {
        option: &'static str,
        detail: String,
    },
    #[error("{option} {path}: {err}")]
    File {
        option: &'static str,
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("-kernel {path}: {err}")]
    Image {
        path: String,
        #[source]
        err: image::Error,
    },
    #[error("{0} is not supported on aarch64 yet (README, \"Architectures\")")]
    Unsupported(String),
    #[error("-device: memdev '{id}' is not defined by any -object")]
    NoObject { id: String },
    #[error(transparent)]
    Ivshmem(#[from] crate::ivshmem::plug::Error),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    IvshmemDoorbell(#[from] crate::ivshmem::doorbell::Error),
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    VhostUser(#[from] crate::vhost_user::device::Error),
    #[error(transparent)]
    Pci(#[from] crate::pci::Error),
    #[error(transparent)]
    Virtio(#[from] crate::virtio::Error),
    #[error(transparent)]
    Ram(#[from] guest_ram::Error),
    #[error(transparent)]
    Hypervisor(#[from] hv::Error),
    #[error(transparent)]
    Fdt(#[from] fdt::Error),
    #[error("guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("{device} at {addr:#x}: {err}")]
    Bus {
        device: &'static str,
        addr: u64,
        #[source]
        err: devices::bus::Error,
    },
    #[error(transparent)]
    Console(#[from] console_out::OutputError),
    #[error("serial: {0}")]
    Serial(#[from] devices::serial::Error),
    #[error("starting vCPU threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error(transparent)]
    Signals(#[from] crate::signals::Error),
    #[error(transparent)]
    Monitor(#[from] crate::qmp::server::Error),
    #[error("{0} is not available on this host (README, \"macOS and the BSDs\")")]
    NotOnHost(String),
}

impl Error {
    /// 2 for anything the user can fix on the command line, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Backend { .. }
            | Error::RamSize { .. }
            | Error::File { .. }
            | Error::Image { .. }
            | Error::Unsupported(_)
            | Error::NotOnHost(_)
            | Error::NoObject { .. }
            | Error::Ivshmem(_) => 2,
            #[cfg(target_os = "linux")]
            Error::IvshmemDoorbell(e) => e.exit_code(),
            #[cfg(target_os = "linux")]
            Error::VhostUser(e) => e.exit_code(),
            Error::Pci(e) => e.exit_code(),
            Error::Virtio(e) => e.exit_code(),
            Error::Console(e) => e.exit_code(),
            Error::Ram(e) => e.exit_code(),
            Error::Hypervisor(e) => e.exit_code(),
            Error::Monitor(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// What this machine does not have yet: refused up front with exit code 2
/// rather than ignored.
fn refuse_unsupported(cfg: &Config) -> Result<(), Error> {
    for d in &cfg.devices {
        // Linux's alone: vhost-user shares memfd RAM through the vhost
        // crate; ivshmem-doorbell's protocol is one eventfd per peer and
        // vector.
        if cfg!(not(target_os = "linux"))
            && matches!(
                d,
                DeviceConfig::VhostUser(_) | DeviceConfig::IvshmemDoorbell(_)
            )
        {
            return Err(Error::NotOnHost(format!("-device {}", device_kind(d))));
        }
        match d {
            DeviceConfig::DebugExit { .. } => {
                return Err(Error::Unsupported(
                    "-device isa-debug-exit (no port I/O: the debug-exit register is always at MMIO 0x9010000)"
                        .into(),
                ));
            }
            DeviceConfig::Watchdog(_) => {
                return Err(Error::Unsupported("-device i6300esb".into()));
            }
            _ => {}
        }
    }
    if cfg.boot.is_some() {
        return Err(Error::Unsupported(
            "--boot (aarch64 boots a Linux Image)".into(),
        ));
    }
    Ok(())
}

/// The `-device` name of `d`, for messages.
fn device_kind(d: &DeviceConfig) -> &'static str {
    match d {
        DeviceConfig::DebugExit { .. } => "isa-debug-exit",
        DeviceConfig::IvshmemPlain(_) => "ivshmem-plain",
        DeviceConfig::IvshmemDoorbell(_) => "ivshmem-doorbell",
        DeviceConfig::VhostUser(_) => "vhost-user-*-pci",
        DeviceConfig::VirtioBlk(_) => "virtio-blk-pci",
        DeviceConfig::VirtioRng(_) => "virtio-rng-pci",
        DeviceConfig::VirtioSerial(_) | DeviceConfig::VirtioSerialPort(_) => "virtio-serial-pci",
        DeviceConfig::Watchdog(_) => "i6300esb",
    }
}

/// The PCI functions `cfg` asks for: ivshmem-plain with the `-object`
/// backend it shares (the configuration layer checked every `memdev=`),
/// ivshmem-doorbell connected to its server, vhost-user devices connected
/// to their back-ends over guest RAM's fd, the built-in virtio devices;
/// MSI-X vectors from `interrupts` (routed through the ITS).
fn pci_plugs(
    cfg: &Config,
    objects: &[Arc<Backend>],
    ram: &GuestRam,
    vm: &Arc<Vm>,
    interrupts: &Arc<Interrupts>,
) -> Result<Vec<Box<dyn PciPlug>>, Error> {
    let mem = || -> Arc<dyn devices::virtio::queue::GuestMemory> {
        Arc::new(crate::virtio::memory::Ram(ram.mem().clone()))
    };
    let mut plugs: Vec<Box<dyn PciPlug>> = Vec::new();
    for d in &cfg.devices {
        match d {
            DeviceConfig::IvshmemPlain(c) => {
                let memdev = objects
                    .iter()
                    .find(|b| b.id() == c.memdev)
                    .cloned()
                    .ok_or_else(|| Error::NoObject {
                        id: c.memdev.clone(),
                    })?;
                plugs.push(Box::new(Ivshmem::new(c, memdev)?));
            }
            #[cfg(target_os = "linux")]
            DeviceConfig::IvshmemDoorbell(c) => {
                plugs.push(Box::new(Doorbell::connect(c, vm, interrupts)?))
            }
            #[cfg(target_os = "linux")]
            DeviceConfig::VhostUser(c) => plugs.push(Box::new(crate::vhost_user::device::create(
                c,
                ram.backend(),
                vm,
                interrupts,
            )?)),
            DeviceConfig::VirtioBlk(c) => {
                plugs.push(Box::new(crate::virtio::blk(c, mem(), vm, interrupts)?))
            }
            DeviceConfig::VirtioRng(c) => {
                plugs.push(Box::new(crate::virtio::rng(c, mem(), vm, interrupts)?))
            }
            DeviceConfig::VirtioSerial(c) => {
                plugs.push(Box::new(crate::virtio::serial(c, mem(), vm, interrupts)?))
            }
            // Refused up front (refuse_unsupported), or moved into its
            // virtio-serial-pci by the configuration.
            _ => {}
        }
    }
    Ok(plugs)
}

/// Bus 0 on ECAM with the windows of `layout.rs`.
fn pci_host(ram_size: u64) -> PciHost {
    let mmio64 = layout::pci_mmio64_start(ram_size);
    PciHost {
        config: ConfigAccess::Ecam {
            base: layout::PCI_ECAM,
        },
        windows: BarWindows {
            io: None,
            mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_END,
            mmio64: Some(mmio64..mmio64 + layout::PCI_MMIO64_SIZE),
        },
        first_slot: layout::PCI_BAR_FIRST_SLOT,
    }
}

fn open(option: &'static str, path: &Path) -> Result<(File, u64), Error> {
    let err = |err| Error::File {
        option,
        path: path.display().to_string(),
        err,
    };
    let f = File::open(path).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::other("is not a regular file")));
    }
    Ok((f, meta.len()))
}

/// The kernel, initrd and device tree in guest RAM; returns the boot CPU's
/// entry point and the tree's address.
fn load(
    cfg: &Config,
    ram: &GuestRam,
    kernel: (File, u64),
    initrd: Option<(File, u64)>,
    mpidrs: &[u64],
    msi: MsiController,
) -> Result<(u64, u64), Error> {
    let path = cfg.kernel.display().to_string();
    let file_err = |path: &str| {
        let path = path.to_string();
        move |err| Error::File {
            option: "-kernel",
            path,
            err,
        }
    };
    let (mut kf, klen) = kernel;
    let mut hdr = [0u8; image::HEADER_LEN];
    kf.read_exact(&mut hdr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Image {
                path: path.clone(),
                err: image::Error::NotImage,
            }
        } else {
            file_err(&path)(e)
        }
    })?;
    let h = image::parse_header(&hdr, klen).map_err(|err| Error::Image {
        path: path.clone(),
        err,
    })?;
    let p =
        image::place(&h, initrd.as_ref().map(|i| i.1), ram.size()).map_err(|err| Error::Image {
            path: path.clone(),
            err,
        })?;
    log::info!("arm64 Image: {h:?}, placed {p:x?}");
    kf.seek(SeekFrom::Start(0)).map_err(file_err(&path))?;
    let klen_usize = usize::try_from(klen).unwrap_or(usize::MAX);
    ram.mem()
        .read_exact_volatile_from(GuestAddress(p.kernel), &mut kf, klen_usize)?;
    let mut initrd_range = None;
    if let (Some((mut f, len)), Some(at)) = (initrd, p.initrd) {
        let ipath = cfg
            .initrd
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        ram.mem()
            .read_exact_volatile_from(GuestAddress(at), &mut f, len_usize)
            .map_err(|e| Error::File {
                option: "-initrd",
                path: ipath,
                err: std::io::Error::other(e.to_string()),
            })?;
        initrd_range = Some((at, at + len));
    }
    let blob = fdt::build(&fdt::Spec {
        ram_size: ram.size(),
        mpidrs,
        cmdline: &cfg.cmdline,
        initrd: initrd_range,
        msi: Some(msi),
    })?;
    ram.mem().write_slice(&blob, GuestAddress(p.fdt))?;
    Ok((p.kernel, p.fdt))
}

/// The parts of a running machine the monitor and the statistics read.
struct Running<'a> {
    state: &'a VmState,
    ram: &'a GuestRam,
    objects: &'a [Arc<Backend>],
    plugs: &'a [Box<dyn PciPlug>],
    pci: &'a Pci,
    io: &'a IoBuses,
    dropped: Option<&'a console_out::Dropped>,
}

impl Running<'_> {
    fn stats(&self) -> Stats {
        let mut stats = Stats {
            buses: self.io.bus_stats(),
            unclaimed: self.io.unclaimed_counts(),
            console_dropped_bytes: self.dropped.map_or(0, |d| d.bytes()),
            guest_log_lines: crate::ratelimit::totals().0,
            guest_log_suppressed: crate::ratelimit::totals().1,
            ..Stats::default()
        };
        for (plug, placed) in self.plugs.iter().zip(self.pci.placed()) {
            plug.add_stats(placed, self.pci, &mut stats);
        }
        stats
    }
}

impl Controlled for Running<'_> {
    fn state(&self) -> &VmState {
        self.state
    }

    fn backends(&self) -> Vec<&Backend> {
        std::iter::once(self.ram.backend())
            .chain(self.objects.iter().map(|b| &**b))
            .collect()
    }

    fn pci(&self) -> &Pci {
        self.pci
    }

    fn stats(&self) -> Stats {
        Running::stats(self)
    }

    /// No power button on this machine yet: QEMU `virt` gives a device-tree
    /// guest a gpio-keys key on a PL061 GPIO controller, which shmvm does
    /// not model.
    fn press_power_button(&self) -> Result<(), String> {
        Err(
            "system_powerdown is not supported on aarch64 yet: the machine has no power \
             button (QEMU virt's gpio-keys on a PL061 is not modelled; README, \"Architectures\")"
                .into(),
        )
    }

    fn snapshot_save(&self, _path: &str) -> Reply {
        Err(
            "x-shmvm-snapshot-save is not supported on aarch64 yet: the arm64 vCPU and \
             GIC state are not saved (README, \"Architectures\")"
                .into(),
        )
    }
}

/// Builds the VM `cfg` describes, runs it, and says how it ended.
pub fn run(cfg: &Config, start: Instant) -> Result<VmEnd, Error> {
    crate::signals::install()?;
    crate::sandbox::set_enabled(cfg.sandbox);
    refuse_unsupported(cfg)?;
    // Before the machine: a path that cannot be a socket fails first.
    let monitor = crate::qmp::Server::new(&cfg.monitors)?;
    let ram_option = if cfg.ram_from_object {
        "--object"
    } else {
        "-m"
    };
    layout::check_ram_size(cfg.ram.size()).map_err(|detail| Error::RamSize {
        option: ram_option,
        detail,
    })?;
    // Every user-named file is opened before anything is created.
    let kernel = open("-kernel", &cfg.kernel)?;
    let initrd = cfg
        .initrd
        .as_deref()
        .map(|p| open("-initrd", p))
        .transpose()?;
    let backend = Backend::create(&cfg.ram).map_err(|err| Error::Backend {
        option: ram_option,
        err: Box::new(err),
    })?;
    let ram = GuestRam::new(backend)?;
    let objects = cfg
        .objects
        .iter()
        .map(|o| {
            Backend::create(o)
                .map(Arc::new)
                .map_err(|err| Error::Backend {
                    option: "--object",
                    err: Box::new(err),
                })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let vm = Arc::new(Vm::new()?);
    // HVF's kick reaches the VM, not a thread (hv/hvf.rs).
    #[cfg(hvf)]
    Vm::watch_kicks(&vm);
    ram.register(&vm)?;

    let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
    let mut mpidrs = Vec::with_capacity(cfg.vcpus.into());
    for index in 0..cfg.vcpus {
        let v = vm.create_vcpu(index)?;
        v.init(
            &vm,
            VcpuInit {
                psci_0_2: true,
                powered_off: index != 0,
            },
        )?;
        mpidrs.push(v.mpidr()?);
        vcpus.push(v);
    }
    // KVM's GIC has an ITS for the MSIs; HVF's has message-based SPIs.
    let msi = if cfg!(kvm) {
        MsiController::Its {
            addr: layout::GIC_ITS,
        }
    } else {
        MsiController::Mbi {
            addr: layout::GIC_MBI,
            window: layout::GIC_ITS_SIZE,
            first_spi: layout::MBI_FIRST_SPI,
            count: layout::MBI_SPIS,
        }
    };
    vm.create_gic(&GicConfig {
        dist_addr: layout::GIC_DIST,
        redist_addr: layout::GIC_REDIST,
        nr_irqs: layout::GIC_NR_IRQS,
        msi: Some(msi),
    })?;
    vm.finalize_gic()?;
    let plugs = pci_plugs(cfg, &objects, &ram, &vm, &Interrupts::new(&vm))?;

    let state = Arc::new(VmState::new(cfg.start_paused));
    let io = Arc::new(IoBuses::new());
    let hook: ExitHook = {
        let state = state.clone();
        Arc::new(move |e| state.request_end(VmEnd::Guest(e)))
    };
    let (out, dropped) = console_out::serial_output(&cfg.serial)?;
    let serial = Serial::new(Notifier::new().map_err(devices::serial::Error::Irq)?, out);
    vm.register_irqfd(serial.irq(), layout::UART_SPI)?;
    let serial = Arc::new(Mutex::new(serial));
    io.add_shared(
        BusKind::Mmio,
        "serial0",
        serial.clone(),
        layout::UART_ADDR,
        Serial::PORTS,
    )
    .map_err(|err| Error::Bus {
        device: "serial0",
        addr: layout::UART_ADDR,
        err,
    })?;
    io.add(
        BusKind::Mmio,
        "debug-exit",
        DebugExit::new(hook),
        layout::DEBUG_EXIT_ADDR,
        layout::DEBUG_EXIT_SIZE,
    )
    .map_err(|err| Error::Bus {
        device: "debug-exit",
        addr: layout::DEBUG_EXIT_ADDR,
        err,
    })?;

    let functions: Vec<_> = plugs.iter().map(|p| p.function()).collect();
    let slots: Arc<dyn MemorySlots> = vm.clone();
    let pci = Pci::build(&slots, &io, &functions, &pci_host(ram.size()))?;

    let (entry, fdt_addr) = load(cfg, &ram, kernel, initrd, &mpidrs, msi)?;
    vcpus[0].set_core_regs(&CoreRegs::linux_boot(entry, fdt_addr))?;
    log::info!(
        "startup: {:.3} ms to the first KVM_RUN",
        start.elapsed().as_secs_f64() * 1e3
    );

    let _console = crate::serial_mux::attach(&cfg.serial, cfg.stdio, serial.clone(), state.clone());
    let shared = vcpu::Shared {
        io: &io,
        state: &state,
        mem: ram.mem(),
        coalesced: None,
    };
    let running = Running {
        state: &state,
        ram: &ram,
        objects: &objects,
        plugs: &plugs,
        pci: &pci,
        io: &io,
        dropped: dropped.as_ref(),
    };
    let mon = Monitor::new(&running, vcpus.len(), monitor.as_ref());
    let ran = std::thread::scope(|s| {
        mon.spawn(s, monitor);
        let ran = vcpu::run_all(vcpus, shared, &|| {});
        mon.finished(&state);
        ran
    });
    serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .flush_output();
    if let Some(d) = &dropped {
        d.settle(console_out::DRAIN_DEADLINE);
    }
    ran.map_err(Error::Threads)?;
    let end = state
        .take_end()
        .unwrap_or(VmEnd::VcpuFailed("stopped without a reason".into()));
    let stats = running.stats();
    // The monitor's control borrows the parts taken apart below.
    drop(mon);
    match cfg.stats {
        StatsFormat::Json => eprintln!("{}", stats.json()),
        StatsFormat::Text => eprint!("{}", stats.text()),
        StatsFormat::Off => {}
    }
    log::info!(
        "VM ended after {:.3} ms: {end:?}",
        start.elapsed().as_secs_f64() * 1e3
    );
    drop((serial, pci, plugs, io, state));
    drop(ram);
    drop(objects);
    #[cfg(kvm)]
    match Arc::try_unwrap(vm) {
        Ok(vm) => crate::teardown::detach(vm),
        Err(vm) => drop(vm),
    }
    // HVF's VM is destroyed in place (no fd for a helper to hold).
    #[cfg(hvf)]
    drop(vm);
    Ok(end)
}
