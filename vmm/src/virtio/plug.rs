//! The built-in virtio devices as PCI functions: their worker threads,
//! MSI-X vectors and queue notifications (both machines: MSIs through
//! `interrupts.rs`, on aarch64 to the GICv3 ITS).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use devices::notifier::Notifier;
use devices::virtio::device::VirtioDevice;
use devices::virtio::queue::QueueError;
use devices::virtio::worker::Worker;
use devices::virtio::{
    MsixVector, NotifyRegion, QueueConfig, TransportEvents, VirtioPci, VirtioPciConfig,
};

use super::config;
use super::wiring::{self, QueueWiring};
use crate::hv::Vm;
use crate::interrupts::{self, Interrupts, Requester};
use crate::pci::{Pci, PciFunction, PciPlug, Placed};
use crate::stats::{Stats, VirtioStats};

/// Errors creating a device; each names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{device}: {err}")]
    Msi {
        device: String,
        err: interrupts::Error,
    },
    #[error("{device}: {err}")]
    Transport {
        device: String,
        err: devices::virtio::Error,
    },
    #[error("{device}: starting its worker thread: {err}")]
    Worker { device: String, err: std::io::Error },
    #[error("{option}: {err}")]
    Open {
        option: String,
        #[source]
        err: std::io::Error,
    },
}

impl Error {
    /// 2 for a file the user named that cannot be used, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Open { .. } => 2,
            _ => 1,
        }
    }
}

/// What the transport's owner did, for `--stats`.
#[derive(Debug, Default)]
pub struct OwnerStats {
    pub starts: AtomicU64,
    pub resets: AtomicU64,
    /// Kicks that exited to the VMM (no ioeventfd caught them).
    pub notify_exits: AtomicU64,
    /// Times the device broke (a bad ring or chain: NEEDS_RESET).
    pub broken: AtomicU64,
    /// Wiring failures (ioeventfds, irqfds, routes).
    pub errors: Arc<AtomicU64>,
}

/// A device model's own counters in the shared statistics shape.
pub trait Counted {
    /// (requests, bytes to the guest, bytes from the guest, flushes, errors)
    fn counters(&self) -> DeviceCounters;
}

/// See [`Counted`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCounters {
    pub requests: u64,
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
    pub flushes: u64,
    pub errors: u64,
}

impl Counted for devices::virtio::blk::Block {
    fn counters(&self) -> DeviceCounters {
        let s = self.stats();
        DeviceCounters {
            requests: s.reads + s.writes + s.flushes + s.get_ids,
            bytes_to_guest: s.read_bytes,
            bytes_from_guest: s.write_bytes,
            flushes: s.flushes,
            errors: s.errors,
        }
    }
}

impl Counted for devices::virtio::rng::Rng {
    fn counters(&self) -> DeviceCounters {
        let s = self.stats();
        DeviceCounters {
            requests: s.requests,
            bytes_to_guest: s.bytes,
            errors: s.errors,
            ..DeviceCounters::default()
        }
    }
}

/// The transport's owner: turns the driver's events into worker calls
/// and KVM wiring.
struct Owner<D: VirtioDevice> {
    name: String,
    worker: Weak<Worker<D>>,
    config: Vec<u8>,
    /// Over clones of the worker's eventfds.
    wiring: QueueWiring,
    stats: Arc<OwnerStats>,
}

impl<D: VirtioDevice> TransportEvents for Owner<D> {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        wiring::read_config(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: ignored config write at {offset:#x} ({data:x?})",
            self.name
        );
    }

    fn features_ok(&mut self, features: u64) -> Result<(), String> {
        if let Some(w) = self.worker.upgrade() {
            w.set_features(features);
        }
        Ok(())
    }

    fn driver_ok(&mut self, queues: &[QueueConfig]) -> Result<(), String> {
        let w = self.worker.upgrade().ok_or("the device is stopping")?;
        w.activate(queues).map_err(|e| {
            self.stats.broken.fetch_add(1, Ordering::Relaxed);
            e.to_string()
        })?;
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        self.wiring.set_active(queues);
        log::debug!("{}: started {} queue(s)", self.name, queues.len());
        Ok(())
    }

    fn reset(&mut self) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = self.worker.upgrade() {
            w.reset();
        }
        self.wiring.set_active(&[]);
        // A call the worker signalled before the reset is not for the
        // next driver.
        for c in self.wiring.calls() {
            c.take().ok();
        }
    }

    fn msix_vector(&mut self, vector: u16, state: MsixVector) {
        self.wiring.msix_vector(vector, state);
    }

    fn queue_notify(&mut self, queue: u16) {
        self.stats.notify_exits.fetch_add(1, Ordering::Relaxed);
        self.wiring.kick(queue);
    }

    fn notify_region(&mut self, region: Option<NotifyRegion>) {
        self.wiring.notify_region(region);
    }
}

/// A wired built-in device: the PCI function, its worker (stopped, after
/// serving what the guest made available, when this is dropped) and its
/// statistics.
pub struct Wired<D: VirtioDevice + Counted> {
    pub name: String,
    pub slot: Option<u8>,
    pub qdev_id: Option<String>,
    pub device: Arc<Mutex<VirtioPci>>,
    worker: Arc<Worker<D>>,
    stats: Arc<OwnerStats>,
    requester: Requester,
}

impl<D: VirtioDevice + Counted> std::fmt::Debug for Wired<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wired").field("name", &self.name).finish()
    }
}

impl<D: VirtioDevice + Counted> PciPlug for Wired<D> {
    fn function(&self) -> PciFunction {
        crate::virtio::wiring::function(
            &self.name,
            self.slot,
            self.qdev_id.clone(),
            &self.device,
            &self.requester,
        )
    }

    fn add_stats(&self, _placed: &Placed, _pci: &Pci, stats: &mut Stats) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.stats;
        let c = self.worker.with_device(Counted::counters);
        stats.virtio.push(VirtioStats {
            name: self.name.clone(),
            starts: n(&s.starts),
            resets: n(&s.resets),
            broken: n(&s.broken),
            errors: n(&s.errors),
            notify_exits: n(&s.notify_exits),
            requests: c.requests,
            bytes_to_guest: c.bytes_to_guest,
            bytes_from_guest: c.bytes_from_guest,
            flushes: c.flushes,
            device_errors: c.errors,
        });
    }
}

/// Starts `device`'s worker over guest RAM `mem` and builds its PCI
/// function `name` (not yet on a bus).
pub fn create<D: VirtioDevice + Counted>(
    name: String,
    slot: Option<u8>,
    qdev_id: Option<String>,
    device: D,
    mem: Arc<dyn devices::virtio::queue::GuestMemory>,
    vm: &Arc<Vm>,
    interrupts: &Arc<Interrupts>,
) -> Result<Wired<D>, Error> {
    let queues = device.queue_count();
    let transport = VirtioPciConfig {
        device_type: device.device_type(),
        features: device.features(),
        queues,
        max_queue_size: device.max_queue_size(),
        device_config_len: device.config().len() as u32,
    };
    let config = device.config();
    let msi = interrupts.vectors(queues + 1).map_err(|err| Error::Msi {
        device: name.clone(),
        err,
    })?;
    let requester = msi.requester();
    // The transport to mark NEEDS_RESET when the worker finds the rings
    // broken; set once the transport exists.
    let pci: Arc<OnceLock<Weak<Mutex<VirtioPci>>>> = Arc::new(OnceLock::new());
    let stats = Arc::new(OwnerStats::default());
    let on_broken = {
        let (pci, stats, name) = (pci.clone(), stats.clone(), name.clone());
        let warnings = devices::ratelimit::RateLimit::default();
        Box::new(move |e: &QueueError| {
            stats.broken.fetch_add(1, Ordering::Relaxed);
            devices::warn_limited!(warnings, "{name}: {e}; the device needs a reset");
            if let Some(d) = pci.get().and_then(Weak::upgrade) {
                d.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_needs_reset();
            }
        })
    };
    let worker = Worker::spawn(
        format!("virtio-{}", device.device_type()),
        device,
        mem,
        crate::sandbox::enter_worker,
        on_broken,
    )
    .map_err(|err| Error::Worker {
        device: name.clone(),
        err,
    })?;
    let worker = Arc::new(worker);
    let clone = |fds: &[Notifier]| -> std::io::Result<Vec<Notifier>> {
        fds.iter().map(Notifier::try_clone).collect()
    };
    let efd = |err| Error::Worker {
        device: name.clone(),
        err,
    };
    let wiring = QueueWiring::new(
        name.clone(),
        Arc::downgrade(vm),
        msi,
        clone(worker.kicks()).map_err(efd)?,
        clone(worker.calls()).map_err(efd)?,
        stats.errors.clone(),
    );
    let owner = Owner {
        name: name.clone(),
        worker: Arc::downgrade(&worker),
        config,
        wiring,
        stats: stats.clone(),
    };
    let device = VirtioPci::new(transport, Box::new(owner))
        .map_err(|err| Error::Transport {
            device: name.clone(),
            err,
        })?
        .with_name(name.clone());
    let device = Arc::new(Mutex::new(device));
    pci.set(Arc::downgrade(&device)).ok();
    Ok(Wired {
        name,
        slot,
        qdev_id,
        device,
        worker,
        stats,
        requester,
    })
}

/// `cache=none`'s open flag: O_DIRECT, or where the host has none (macOS,
/// OpenBSD) O_DSYNC, which is how QEMU approximates it there.
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
const NO_CACHE: libc::c_int = libc::O_DIRECT;
#[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
const NO_CACHE: libc::c_int = libc::O_DSYNC;

/// Opens a drive's image: read-only or read-write, [`NO_CACHE`] for
/// `cache=none`, never blocking (a FIFO is refused), a regular file or a
/// block device only.
fn open_image(cfg: &config::DriveConfig) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let err = |err| Error::Open {
        option: format!("-drive {}", cfg.spec),
        err,
    };
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if cfg.cache == config::Cache::Direct {
        flags |= NO_CACHE;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!cfg.readonly)
        .custom_flags(flags)
        .open(&cfg.file)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) && cfg.cache == config::Cache::Direct {
                std::io::Error::other(format!(
                    "{}: cache=none needs O_DIRECT, which its file system refuses (tmpfs does): \
                     use cache=writeback",
                    cfg.file.display()
                ))
            } else {
                std::io::Error::new(e.kind(), format!("{}: {e}", cfg.file.display()))
            }
        })
        .map_err(err)?;
    let t = f.metadata().map_err(err)?.file_type();
    if !t.is_file() && !t.is_block_device() {
        return Err(err(std::io::Error::other(format!(
            "{}: not a regular file or a block device",
            cfg.file.display()
        ))));
    }
    Ok(f)
}

/// A virtio-blk-pci device on its drive's image.
pub fn blk(
    cfg: &config::BlkConfig,
    mem: Arc<dyn devices::virtio::queue::GuestMemory>,
    vm: &Arc<Vm>,
    interrupts: &Arc<Interrupts>,
) -> Result<Wired<devices::virtio::blk::Block>, Error> {
    use devices::virtio::blk::{Block, BlockConfig};
    let file = open_image(&cfg.drive)?;
    let block = Block::new(BlockConfig {
        file,
        readonly: cfg.drive.readonly,
        serial: cfg.serial.clone().unwrap_or_default().into_bytes(),
    })
    .map_err(|err| Error::Open {
        option: format!("-drive {}", cfg.drive.spec),
        err,
    })?;
    create(
        cfg.to_string(),
        cfg.slot,
        cfg.id.clone(),
        block,
        mem,
        vm,
        interrupts,
    )
}

/// A virtio-rng-pci device reading the host kernel's CSPRNG.
pub fn rng(
    cfg: &config::RngConfig,
    mem: Arc<dyn devices::virtio::queue::GuestMemory>,
    vm: &Arc<Vm>,
    interrupts: &Arc<Interrupts>,
) -> Result<Wired<devices::virtio::rng::Rng>, Error> {
    let source = std::fs::File::open("/dev/urandom").map_err(|err| Error::Open {
        option: "-device virtio-rng-pci".into(),
        err,
    })?;
    let rng = devices::virtio::rng::Rng::new(source);
    create(
        "virtio-rng-pci".into(),
        cfg.slot,
        cfg.id.clone(),
        rng,
        mem,
        vm,
        interrupts,
    )
}

impl Counted for devices::virtio::console::Console {
    fn counters(&self) -> DeviceCounters {
        let s = self.stats();
        DeviceCounters {
            requests: s.writes + s.control_in,
            bytes_to_guest: s.bytes_in,
            bytes_from_guest: s.bytes_out,
            errors: s.errors,
            ..DeviceCounters::default()
        }
    }
}

/// Opens a port's sink: stdout, a file (created or truncated, as QEMU's
/// file chardev), or nothing.
fn open_sink(sink: &config::PortSink, what: &str) -> Result<Box<dyn std::io::Write + Send>, Error> {
    use std::os::fd::AsFd;
    let err = |err| Error::Open {
        option: what.to_string(),
        err,
    };
    Ok(match sink {
        config::PortSink::Stdout => Box::new(std::fs::File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(err)?,
        )),
        config::PortSink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(|e| {
                    err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", p.display()),
                    ))
                })?,
        ),
        config::PortSink::Null => Box::new(std::io::sink()),
        config::PortSink::Listen(_) => unreachable!("a socket port is opened by port_socket"),
    })
}

/// A virtio-serial-pci device with its ports.
pub fn serial(
    cfg: &config::SerialConfig,
    mem: Arc<dyn devices::virtio::queue::GuestMemory>,
    vm: &Arc<Vm>,
    interrupts: &Arc<Interrupts>,
) -> Result<Wired<devices::virtio::console::Console>, Error> {
    use devices::virtio::console::{Console, PortConfig};
    let mut ports = Vec::new();
    for p in &cfg.ports {
        let kind = if p.console {
            "virtconsole"
        } else {
            "virtserialport"
        };
        let what = format!("-device {kind},chardev={}", p.chardev);
        let (sink, input) = match &p.sink {
            config::PortSink::Listen(path) => {
                let (sink, input) = super::port_socket::start(path, &what)?;
                (
                    Box::new(sink) as Box<dyn std::io::Write + Send>,
                    Some(input),
                )
            }
            other => (open_sink(other, &what)?, None),
        };
        ports.push(PortConfig {
            nr: p.nr.unwrap_or(0),
            console: p.console,
            name: p.name.clone(),
            sink,
            input,
        });
    }
    let console = Console::new(ports, cfg.max_ports);
    create(
        cfg.to_string(),
        cfg.slot,
        cfg.id.clone(),
        console,
        mem,
        vm,
        interrupts,
    )
}
