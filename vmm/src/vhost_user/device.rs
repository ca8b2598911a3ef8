//! The owner of a vhost-user virtio-pci function (any device type): turns the driver's
//! transport events into back-end requests and KVM wiring.
//!
//! - Kicks: one eventfd per queue, registered with KVM as an ioeventfd on
//!   the queue's notify address (re-registered when the BAR moves) and
//!   handed to the back-end as its kick fd. A guest kick wakes the
//!   back-end with no exit to the VMM.
//! - Interrupts: one eventfd per queue (the back-end's call fd), an irqfd
//!   on the GSI that routes the queue's MSI-X vector. A masked vector has
//!   no irqfd; KVM delivers a call that arrived meanwhile when the irqfd is
//!   registered again (the eventfd stays readable), which is the pending
//!   bit's job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use devices::virtio::{
    MsixVector, NO_VECTOR, NotifyRegion, QueueConfig, TransportEvents, VirtioPci, VirtioPciConfig,
};
use memory::Backend;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::VhostUserConfig;
use super::frontend::{self, Link, MemRegion};
use crate::hv::{IoEventAddr, Vm};
use crate::interrupts::{self, Interrupts, MsiMessage, MsiVectors};
use crate::pci::{BarBacking, Pci, PciFunction, PciPlug, Placed};
use crate::stats::{Stats, VhostUserStats};

/// Errors creating a device; each names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{device}: {err}")]
    Frontend {
        device: String,
        err: frontend::Error,
    },
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
    #[error("{device}: creating eventfds: {err}")]
    EventFd { device: String, err: std::io::Error },
}

impl Error {
    /// 2 when the user can fix it on the command line (the socket, RAM
    /// that cannot be shared), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Frontend { .. } => 2,
            _ => 1,
        }
    }
}

/// What the device did, for `--stats`.
#[derive(Debug, Default)]
pub struct VhostUserDeviceStats {
    pub starts: AtomicU64,
    pub resets: AtomicU64,
    /// Kicks that exited to the VMM (no ioeventfd caught them).
    pub notify_exits: AtomicU64,
    pub msix_updates: AtomicU64,
    pub errors: AtomicU64,
}

/// The transport's owner.
pub struct VhostUser {
    name: String,
    frontend: Link,
    /// For the kick ioeventfds, which move with the BAR.
    vm: Weak<Vm>,
    /// One MSI vector per queue plus the configuration vector.
    msi: MsiVectors,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    vectors: Vec<MsixVector>,
    /// Queues the back-end runs.
    active: Vec<QueueConfig>,
    /// Per queue: the vector its call eventfd is attached to.
    irqfds: Vec<Option<u16>>,
    /// Where the kick eventfds are registered as ioeventfds.
    notify: Option<NotifyRegion>,
    acked: u64,
    stats: Arc<VhostUserDeviceStats>,
    /// `fail` lines: the guest drives the device into them, so rate-limited.
    warnings: devices::ratelimit::RateLimit,
}

impl std::fmt::Debug for VhostUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUser")
            .field("name", &self.name)
            .field("frontend", &self.frontend)
            .finish()
    }
}

/// A wired device: the PCI function and what `--stats` prints.
#[derive(Debug)]
pub struct Wired {
    pub name: String,
    pub slot: Option<u8>,
    pub device: Arc<Mutex<VirtioPci>>,
    pub stats: Arc<VhostUserDeviceStats>,
}

impl PciPlug for Wired {
    /// BAR0 holds the transport's registers.
    fn function(&self) -> PciFunction {
        PciFunction {
            name: self.name.clone(),
            slot: self.slot,
            device: self.device.clone(),
            bars: vec![(devices::virtio::BAR_INDEX, BarBacking::Registers)],
        }
    }

    fn add_stats(&self, _placed: &Placed, _pci: &Pci, stats: &mut Stats) {
        let t = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats();
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        stats.vhost_user.push(VhostUserStats {
            name: self.name.clone(),
            starts: n(&s.starts),
            resets: n(&s.resets),
            msix_updates: n(&s.msix_updates),
            errors: n(&s.errors),
            common_reads: t.common_reads,
            common_writes: t.common_writes,
            notify_exits: n(&s.notify_exits),
        });
    }
}

fn eventfds(n: u16) -> std::io::Result<Vec<EventFd>> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC))
        .collect()
}

/// Connects to the back-end of `cfg` with guest RAM `ram` and builds the
/// PCI function (not yet on a bus).
pub fn create(
    cfg: &VhostUserConfig,
    ram: &Backend,
    vm: &Arc<Vm>,
    interrupts: &Arc<Interrupts>,
) -> Result<Wired, Error> {
    let name = cfg.to_string();
    let fe = |err| Error::Frontend {
        device: name.clone(),
        err,
    };
    let regions = MemRegion::from_ram(ram).map_err(fe)?;
    let frontend = Link::connect(&cfg.socket, regions, cfg.kind.spec()).map_err(fe)?;
    let queues = frontend.queues();
    let msi = interrupts.vectors(queues + 1).map_err(|err| Error::Msi {
        device: name.clone(),
        err,
    })?;
    let efd = |err| Error::EventFd {
        device: name.clone(),
        err,
    };
    let transport = VirtioPciConfig {
        device_type: frontend.spec().virtio_id,
        features: frontend.guest_features(),
        queues,
        max_queue_size: frontend.spec().queue_size,
        device_config_len: frontend.config().len() as u32,
    };
    let stats = Arc::new(VhostUserDeviceStats::default());
    let owner = VhostUser {
        name: name.clone(),
        frontend,
        vm: Arc::downgrade(vm),
        msi,
        kicks: eventfds(queues).map_err(efd)?,
        calls: eventfds(queues).map_err(efd)?,
        vectors: Vec::new(),
        active: Vec::new(),
        irqfds: vec![None; usize::from(queues)],
        notify: None,
        acked: 0,
        stats: stats.clone(),
        warnings: Default::default(),
    };
    let device = VirtioPci::new(transport, Box::new(owner)).map_err(|err| Error::Transport {
        device: name.clone(),
        err,
    })?;
    Ok(Wired {
        name,
        slot: cfg.slot,
        device: Arc::new(Mutex::new(device)),
        stats,
    })
}

impl VhostUser {
    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        devices::warn_limited!(self.warnings, "{}: {what}: {e}", self.name);
    }

    /// The vector queue `q` should interrupt on now, if any.
    fn wanted_vector(&self, q: usize) -> Option<u16> {
        let queue = self.active.iter().find(|c| usize::from(c.index) == q)?;
        if queue.vector == NO_VECTOR {
            return None;
        }
        let v = self.vectors.get(usize::from(queue.vector))?;
        (!v.masked).then_some(queue.vector)
    }

    /// Attaches/detaches call eventfds so each queue interrupts on its
    /// vector while that vector is unmasked.
    fn sync_irqfds(&mut self) {
        for q in 0..self.irqfds.len() {
            let want = self.wanted_vector(q);
            if self.irqfds[q] == want {
                continue;
            }
            if let Some(old) = self.irqfds[q].take()
                && let Err(e) = self.msi.detach(&self.calls[q], old)
            {
                self.fail("removing an irqfd", e);
            }
            if let Some(vector) = want {
                match self.msi.attach(&self.calls[q], vector) {
                    Ok(()) => self.irqfds[q] = Some(vector),
                    Err(e) => self.fail("adding an irqfd", e),
                }
            }
        }
    }

    fn set_ioeventfds(&mut self, region: Option<NotifyRegion>) {
        let Some(vm) = self.vm.upgrade() else { return };
        if let Some(old) = self.notify.take() {
            for (q, kick) in self.kicks.iter().enumerate() {
                let addr = IoEventAddr::Mmio(old.queue_addr(q as u16));
                if let Err(e) = vm.unregister_ioeventfd(kick, addr, None) {
                    self.fail("removing an ioeventfd", e);
                }
            }
        }
        let Some(new) = region else { return };
        for (q, kick) in self.kicks.iter().enumerate() {
            let addr = IoEventAddr::Mmio(new.queue_addr(q as u16));
            if let Err(e) = vm.register_ioeventfd(kick, addr, None) {
                // Kicks then exit and reach `queue_notify`: slower, still right.
                self.fail("adding an ioeventfd", e);
            }
        }
        self.notify = Some(new);
    }
}

impl TransportEvents for VhostUser {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let cfg = self.frontend.config();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match cfg.get(start..start.saturating_add(data.len())) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing writable is offered (no CONFIG_WCE; vsock's and fs's
        // configurations are read-only).
        log::debug!(
            "{}: ignored config write at {offset:#x} ({data:x?})",
            self.name
        );
    }

    fn features_ok(&mut self, features: u64) -> Result<(), String> {
        self.acked = features;
        Ok(())
    }

    fn driver_ok(&mut self, queues: &[QueueConfig]) -> Result<(), String> {
        self.frontend
            .start(self.acked, queues, &self.kicks, &self.calls)
            .inspect_err(|_| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(|e| e.to_string())?;
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        self.active = queues.to_vec();
        self.sync_irqfds();
        let rings: Vec<String> = queues
            .iter()
            .map(|q| {
                format!(
                    "q{} size {} vector {} rings {:#x}/{:#x}/{:#x}",
                    q.index, q.size, q.vector, q.desc, q.driver, q.device
                )
            })
            .collect();
        log::info!(
            "{}: started {} queue(s): {}",
            self.name,
            queues.len(),
            rings.join(", ")
        );
        Ok(())
    }

    fn reset(&mut self) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.frontend.stop() {
            self.fail("stopping the back-end's rings", e);
        }
        self.active.clear();
        self.acked = 0;
        self.sync_irqfds();
    }

    fn msix_vector(&mut self, vector: u16, state: MsixVector) {
        self.stats.msix_updates.fetch_add(1, Ordering::Relaxed);
        let v = usize::from(vector);
        if self.vectors.len() <= v {
            let masked = MsixVector {
                address: 0,
                data: 0,
                masked: true,
            };
            self.vectors.resize(v + 1, masked);
        }
        self.vectors[v] = state;
        if !state.masked {
            let msg = MsiMessage {
                address: state.address,
                data: state.data,
            };
            if let Err(e) = self.msi.route(vector, Some(msg)) {
                self.fail("routing an MSI-X vector", e);
            }
        }
        self.sync_irqfds();
    }

    fn queue_notify(&mut self, queue: u16) {
        self.stats.notify_exits.fetch_add(1, Ordering::Relaxed);
        if let Some(k) = self.kicks.get(usize::from(queue))
            && let Err(e) = k.write(1)
        {
            self.fail("forwarding a kick", e);
        }
    }

    fn notify_region(&mut self, region: Option<NotifyRegion>) {
        self.set_ioeventfds(region);
    }
}
