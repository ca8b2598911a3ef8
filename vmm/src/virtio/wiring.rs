//! The KVM side of a virtio-pci function whose queues someone else serves
//! (a built-in device's worker thread, or a vhost-user back-end): one
//! kick eventfd per queue registered as an ioeventfd on the queue's notify
//! address (moved with the BAR), and one call eventfd per queue attached
//! as an irqfd to the GSI of the queue's MSI-X vector while that vector is
//! unmasked. A call that came while the vector was masked is delivered
//! when the irqfd is attached again (the eventfd stays readable): the
//! pending bit's job. Neither kicks nor interrupts pass through the VMM.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::notifier::Notifier;
use devices::virtio::{MsixVector, NO_VECTOR, NotifyRegion, QueueConfig};

use crate::hv::{IoEventAddr, Vm};
use crate::interrupts::{MsiMessage, MsiVectors};

/// The eventfds of a function's queues and where they are wired.
#[derive(Debug)]
pub struct QueueWiring {
    name: String,
    vm: Weak<Vm>,
    /// One MSI vector per queue plus the configuration vector.
    msi: MsiVectors,
    kicks: Vec<Notifier>,
    calls: Vec<Notifier>,
    vectors: Vec<MsixVector>,
    /// The queues running now (their vectors).
    active: Vec<QueueConfig>,
    /// Per queue: the vector its call eventfd is attached to.
    irqfds: Vec<Option<u16>>,
    /// Where the kick eventfds are registered as ioeventfds.
    notify: Option<NotifyRegion>,
    /// Wiring failures, counted for `--stats`.
    errors: std::sync::Arc<AtomicU64>,
    msix_updates: u64,
    /// The guest drives these paths: rate-limited.
    warnings: devices::ratelimit::RateLimit,
}

impl QueueWiring {
    /// Wiring for `kicks.len()` queues (`calls` as many) of the function
    /// `name`; failures are counted in `errors`.
    pub fn new(
        name: String,
        vm: Weak<Vm>,
        msi: MsiVectors,
        kicks: Vec<Notifier>,
        calls: Vec<Notifier>,
        errors: std::sync::Arc<AtomicU64>,
    ) -> QueueWiring {
        let queues = kicks.len();
        QueueWiring {
            name,
            vm,
            msi,
            kicks,
            calls,
            vectors: Vec::new(),
            active: Vec::new(),
            irqfds: vec![None; queues],
            notify: None,
            errors,
            msix_updates: 0,
            warnings: Default::default(),
        }
    }

    pub fn kicks(&self) -> &[Notifier] {
        &self.kicks
    }

    pub fn calls(&self) -> &[Notifier] {
        &self.calls
    }

    /// MSI-X table writes seen.
    pub fn msix_updates(&self) -> u64 {
        self.msix_updates
    }

    /// Logs (rate-limited) and counts a failure.
    pub fn fail(&self, what: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        devices::warn_limited!(self.warnings, "{}: {what}: {e}", self.name);
    }

    /// The driver started `queues` (empty: it reset the device).
    pub fn set_active(&mut self, queues: &[QueueConfig]) {
        self.active = queues.to_vec();
        self.sync_irqfds();
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

    /// MSI-X vector `vector` now delivers `state` (or is masked).
    pub fn msix_vector(&mut self, vector: u16, state: MsixVector) {
        self.msix_updates += 1;
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

    /// A kick that exited (no ioeventfd caught it): passed on.
    pub fn kick(&self, queue: u16) {
        if let Some(k) = self.kicks.get(usize::from(queue))
            && let Err(e) = k.signal()
        {
            self.fail("forwarding a kick", e);
        }
    }

    /// The notification region moved: the ioeventfds move with it.
    pub fn notify_region(&mut self, region: Option<NotifyRegion>) {
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
                // Kicks then exit and reach `kick`: slower, still right.
                self.fail("adding an ioeventfd", e);
            }
        }
        self.notify = Some(new);
    }
}

/// A virtio-pci function as the PCI layer places it: its registers in BAR0
/// (built-in and vhost-user devices alike).
pub fn function(
    name: &str,
    slot: Option<u8>,
    qdev_id: Option<String>,
    device: &std::sync::Arc<std::sync::Mutex<devices::virtio::VirtioPci>>,
    requester: &crate::interrupts::Requester,
) -> crate::pci::PciFunction {
    crate::pci::PciFunction {
        name: name.to_string(),
        slot,
        qdev_id,
        device: device.clone(),
        bars: vec![(
            devices::virtio::BAR_INDEX,
            crate::pci::BarBacking::Registers,
        )],
        requester: Some(requester.clone()),
    }
}

/// A driver's read of device configuration `config` at `offset`: the
/// bytes, or zeros past its end.
pub fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match config.get(start..start.saturating_add(data.len())) {
        Some(bytes) => data.copy_from_slice(bytes),
        None => data.fill(0),
    }
}
