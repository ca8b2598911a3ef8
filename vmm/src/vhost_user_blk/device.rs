//! The owner of a vhost-user-blk virtio-pci function: turns the driver's
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
    MsixVector, NO_VECTOR, NotifyRegion, QueueConfig, TYPE_BLOCK, TransportEvents, VirtioPci,
    VirtioPciConfig,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use memory::Backend;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::frontend::{self, BlkFrontend, MemRegion};
use super::msi::{self, GsiRouter};
use super::{BLK_CONFIG_LEN, VhostUserBlkConfig};
use crate::hv::Vm;

/// Descriptors per queue the driver may use at most.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Errors creating a device; each names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{device}: {err}")]
    Frontend {
        device: String,
        err: frontend::Error,
    },
    #[error("{device}: {err}")]
    Msi { device: String, err: msi::Error },
    #[error("{device}: {err}")]
    Transport {
        device: String,
        err: devices::virtio::Error,
    },
    #[error("{device}: creating eventfds: {err}")]
    EventFd { device: String, err: std::io::Error },
}

impl Error {
    /// Whether the user can fix it on the command line (socket, RAM).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Frontend { .. })
    }
}

/// What the device did, for `--stats`.
#[derive(Debug, Default)]
pub struct VhostUserBlkStats {
    pub starts: AtomicU64,
    pub resets: AtomicU64,
    /// Kicks that exited to the VMM (no ioeventfd caught them).
    pub notify_exits: AtomicU64,
    pub msix_updates: AtomicU64,
    pub errors: AtomicU64,
}

/// The transport's owner.
pub struct VhostUserBlk {
    name: String,
    frontend: BlkFrontend,
    vm: Weak<Vm>,
    router: Arc<GsiRouter>,
    /// MSI-X vector v is routed on GSI `gsi_base + v`.
    gsi_base: u32,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    vectors: Vec<MsixVector>,
    /// Queues the back-end runs.
    active: Vec<QueueConfig>,
    /// Per queue: the GSI its call eventfd is an irqfd on.
    irqfds: Vec<Option<u32>>,
    /// Where the kick eventfds are registered as ioeventfds.
    notify: Option<NotifyRegion>,
    acked: u64,
    stats: Arc<VhostUserBlkStats>,
}

impl std::fmt::Debug for VhostUserBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserBlk")
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
    pub stats: Arc<VhostUserBlkStats>,
}

impl Wired {
    /// The function as the PCI root takes it: BAR0 holds registers.
    pub fn pci_function(&self) -> crate::pci::PciFunction {
        crate::pci::PciFunction {
            name: self.name.clone(),
            slot: self.slot,
            device: self.device.clone(),
            register_bars: vec![devices::virtio::BAR_INDEX],
        }
    }

    pub fn report(&self) -> String {
        let t = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats();
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "  {}: started {} times, {} resets, {} MSI-X updates, {} errors; common cfg {} reads, \
             {} writes; notify exits {} (0 with ioeventfds)\n",
            self.name,
            n(&s.starts),
            n(&s.resets),
            n(&s.msix_updates),
            n(&s.errors),
            t.common_reads,
            t.common_writes,
            n(&s.notify_exits),
        )
    }
}

fn eventfds(n: u16) -> std::io::Result<Vec<EventFd>> {
    (0..n).map(|_| EventFd::new(EFD_NONBLOCK)).collect()
}

/// Creates every vhost-user-blk device of `devices` (connecting to their
/// back-ends), sharing one GSI routing table.
pub fn create_all(
    devices: &[crate::config::DeviceConfig],
    ram: &Backend,
    vm: &Arc<Vm>,
) -> Result<Vec<Wired>, Error> {
    let mut router = None;
    let mut wired = Vec::new();
    for d in devices {
        if let crate::config::DeviceConfig::VhostUserBlk(cfg) = d {
            let router = router.get_or_insert_with(|| Arc::new(GsiRouter::new(Arc::downgrade(vm))));
            wired.push(create(cfg, ram, vm, router)?);
        }
    }
    Ok(wired)
}

/// Connects to the back-end of `cfg` with guest RAM `ram` and builds the
/// PCI function (not yet on a bus).
pub fn create(
    cfg: &VhostUserBlkConfig,
    ram: &Backend,
    vm: &Arc<Vm>,
    router: &Arc<GsiRouter>,
) -> Result<Wired, Error> {
    let name = cfg.to_string();
    let fe = |err| Error::Frontend {
        device: name.clone(),
        err,
    };
    let regions = MemRegion::from_ram(ram).map_err(fe)?;
    let frontend = BlkFrontend::connect(&cfg.socket, regions, cfg.num_queues).map_err(fe)?;
    let queues = frontend.queues();
    let gsi_base = router
        .allocate(u32::from(queues) + 1)
        .map_err(|err| Error::Msi {
            device: name.clone(),
            err,
        })?;
    let efd = |err| Error::EventFd {
        device: name.clone(),
        err,
    };
    let transport = VirtioPciConfig {
        device_type: TYPE_BLOCK,
        features: frontend.guest_features(),
        queues,
        max_queue_size: MAX_QUEUE_SIZE,
        device_config_len: BLK_CONFIG_LEN,
    };
    let stats = Arc::new(VhostUserBlkStats::default());
    let owner = VhostUserBlk {
        name: name.clone(),
        frontend,
        vm: Arc::downgrade(vm),
        router: router.clone(),
        gsi_base,
        kicks: eventfds(queues).map_err(efd)?,
        calls: eventfds(queues).map_err(efd)?,
        vectors: Vec::new(),
        active: Vec::new(),
        irqfds: vec![None; usize::from(queues)],
        notify: None,
        acked: 0,
        stats: stats.clone(),
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

impl VhostUserBlk {
    fn fail(&self, what: &str, e: impl std::fmt::Display) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        log::warn!("{}: {what}: {e}", self.name);
    }

    /// The GSI queue `q` should interrupt on now, if any.
    fn wanted_irq(&self, q: usize) -> Option<u32> {
        let queue = self.active.iter().find(|c| usize::from(c.index) == q)?;
        if queue.vector == NO_VECTOR {
            return None;
        }
        let v = self.vectors.get(usize::from(queue.vector))?;
        (!v.masked).then_some(self.gsi_base + u32::from(queue.vector))
    }

    /// Registers/unregisters irqfds so each queue interrupts on the GSI of
    /// its vector while that vector is unmasked.
    fn sync_irqfds(&mut self) {
        let Some(vm) = self.vm.upgrade() else { return };
        for q in 0..self.irqfds.len() {
            let want = self.wanted_irq(q);
            if self.irqfds[q] == want {
                continue;
            }
            if let Some(old) = self.irqfds[q].take()
                && let Err(e) = vm.fd().unregister_irqfd(&self.calls[q], old)
            {
                self.fail("removing an irqfd", e);
            }
            if let Some(gsi) = want {
                match vm.fd().register_irqfd(&self.calls[q], gsi) {
                    Ok(()) => self.irqfds[q] = Some(gsi),
                    Err(e) => self.fail("adding an irqfd", e),
                }
            }
        }
    }

    fn set_ioeventfds(&mut self, region: Option<NotifyRegion>) {
        let Some(vm) = self.vm.upgrade() else { return };
        if let Some(old) = self.notify.take() {
            for (q, kick) in self.kicks.iter().enumerate() {
                let addr = IoEventAddress::Mmio(old.queue_addr(q as u16));
                if let Err(e) = vm.fd().unregister_ioevent(kick, &addr, NoDatamatch) {
                    self.fail("removing an ioeventfd", e);
                }
            }
        }
        let Some(new) = region else { return };
        for (q, kick) in self.kicks.iter().enumerate() {
            let addr = IoEventAddress::Mmio(new.queue_addr(q as u16));
            if let Err(e) = vm.fd().register_ioevent(kick, &addr, NoDatamatch) {
                // Kicks then exit and reach `queue_notify`: slower, still right.
                self.fail("adding an ioeventfd", e);
            }
        }
        self.notify = Some(new);
    }
}

impl TransportEvents for VhostUserBlk {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let cfg = self.frontend.config();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match cfg.get(start..start.saturating_add(data.len())) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing writable is offered (no CONFIG_WCE).
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
            let gsi = self.gsi_base + u32::from(vector);
            if let Err(e) = self.router.set_msi(gsi, Some((state.address, state.data))) {
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
