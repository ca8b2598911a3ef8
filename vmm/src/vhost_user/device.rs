//! The owner of a vhost-user virtio-pci function (any device type): turns the driver's
//! transport events into back-end requests and KVM wiring.
//!
//! Kicks and interrupts are [`QueueWiring`]'s (shared with the built-in
//! virtio devices): one kick eventfd per queue as an ioeventfd on its
//! notify address, handed to the back-end as its kick fd, and one call
//! eventfd per queue (the back-end's call fd) as an irqfd on the queue's
//! MSI-X vector while it is unmasked. A guest kick wakes the back-end and
//! its call interrupts the guest with no exit to the VMM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::notifier::Notifier;
use devices::virtio::{
    MsixVector, NotifyRegion, QueueConfig, TransportEvents, VirtioPci, VirtioPciConfig,
};
use memory::Backend;

use super::VhostUserConfig;
use super::frontend::{self, Link, MemRegion};
use crate::hv::Vm;
use crate::interrupts::{self, Interrupts};
use crate::pci::{Pci, PciFunction, PciPlug, Placed};
use crate::stats::{Stats, VhostUserStats};
use crate::virtio::wiring::QueueWiring;

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
    pub errors: Arc<AtomicU64>,
}

/// The transport's owner.
pub struct VhostUser {
    name: String,
    frontend: Link,
    /// The back-end's kick and call eventfds as ioeventfds and irqfds.
    wiring: QueueWiring,
    acked: u64,
    stats: Arc<VhostUserDeviceStats>,
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
    pub qdev_id: Option<String>,
    pub device: Arc<Mutex<VirtioPci>>,
    pub stats: Arc<VhostUserDeviceStats>,
    pub requester: crate::interrupts::Requester,
}

impl PciPlug for Wired {
    /// BAR0 holds the transport's registers.
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

fn notifiers(n: u16) -> std::io::Result<Vec<Notifier>> {
    (0..n).map(|_| Notifier::new()).collect()
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
    let requester = msi.requester();
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
    let wiring = QueueWiring::new(
        name.clone(),
        Arc::downgrade(vm),
        msi,
        notifiers(queues).map_err(efd)?,
        notifiers(queues).map_err(efd)?,
        stats.errors.clone(),
    );
    let owner = VhostUser {
        name: name.clone(),
        frontend,
        wiring,
        acked: 0,
        stats: stats.clone(),
    };
    let device = VirtioPci::new(transport, Box::new(owner))
        .map_err(|err| Error::Transport {
            device: name.clone(),
            err,
        })?
        .with_name(name.clone());
    Ok(Wired {
        name,
        slot: cfg.slot,
        qdev_id: cfg.id.clone(),
        device: Arc::new(Mutex::new(device)),
        stats,
        requester,
    })
}

impl TransportEvents for VhostUser {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        crate::virtio::wiring::read_config(self.frontend.config(), offset, data);
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
            .start(self.acked, queues, self.wiring.kicks(), self.wiring.calls())
            .inspect_err(|_| {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(|e| e.to_string())?;
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        self.wiring.set_active(queues);
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
            self.wiring.fail("stopping the back-end's rings", e);
        }
        self.wiring.set_active(&[]);
        self.acked = 0;
    }

    fn msix_vector(&mut self, vector: u16, state: MsixVector) {
        self.stats.msix_updates.fetch_add(1, Ordering::Relaxed);
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
