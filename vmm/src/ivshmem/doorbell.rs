//! `-device ivshmem-doorbell`: the model (`devices::ivshmem_doorbell`) as a
//! PCI function connected to an ivshmem server.
//!
//! - Sending: every (peer, vector) the server announced is one ioeventfd on
//!   BAR0's Doorbell register with datamatch `(peer << 16) | vector`,
//!   registered again whenever BAR0 moves. A guest's ring signals the
//!   peer's eventfd inside the kernel: no exit. A ring nothing matches (an
//!   absent peer or vector, ioeventfd=off) exits to the model, which writes
//!   the eventfd itself or counts the ring as ignored.
//! - Receiving: this peer's own eventfds are irqfds on its MSI-X vectors'
//!   routes while the vector is unmasked; a masked vector is detached and
//!   its eventfd stays readable, so the ring is delivered on unmask (the
//!   pending bit's job).
//! - A thread reads the server's socket for peers that join and leave, and
//!   updates the ioeventfds. Trouble at run time is a rate-limited warning
//!   and a dead doorbell for that peer, never a crash.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::ivshmem::{MEMORY_BAR, REGISTER_BAR};
use devices::ivshmem_doorbell::{DoorbellEvents, IvshmemDoorbell, MSIX_BAR, doorbell_value};
use devices::notifier::Notifier;
use devices::pci::msix::MsixVector;
use ivshmem_server::protocol::{self, Change, PeerTable, ProtocolError};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::hv::{IoEventAddr, Vm};
use crate::interrupts::{Interrupts, MsiMessage, MsiVectors, Requester};
use crate::ivshmem_doorbell::DoorbellConfig;
use crate::pci::{BarBacking, HostRegion, Pci, PciFunction, PciPlug, Placed};
use crate::ratelimit::RateLimit;
use crate::stats::{DoorbellStats, Stats};

/// The whole handshake with the server must fit in this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After the first own eventfd, how long to wait for the rest.
const OWN_VECTORS_QUIET: Duration = Duration::from_millis(500);
/// How often the notice thread looks at its stop flag.
const NOTICE_TICK_MS: i32 = 100;

/// Errors creating the device; each one line naming it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{device}: can't connect to the ivshmem server at {socket}: {err}")]
    Connect {
        device: String,
        socket: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{device}: ivshmem server {socket}: {err}")]
    Protocol {
        device: String,
        socket: String,
        #[source]
        err: ProtocolError,
    },
    #[error("{device}: mapping the server's shared memory ({size} bytes): {err}")]
    Map {
        device: String,
        size: u64,
        err: String,
    },
    #[error("{device}: {err}")]
    Model {
        device: String,
        #[source]
        err: devices::ivshmem_doorbell::Error,
    },
    #[error("{device}: {err}")]
    Msi {
        device: String,
        #[source]
        err: crate::interrupts::Error,
    },
    #[error("{device}: watching the server's socket: {err}")]
    Thread {
        device: String,
        #[source]
        err: std::io::Error,
    },
}

impl Error {
    /// 2 for what the user fixes (the server, its size and vectors), 1
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Connect { .. } | Error::Protocol { .. } | Error::Model { .. } => 2,
            Error::Map { .. } | Error::Msi { .. } | Error::Thread { .. } => 1,
        }
    }
}

/// What the device did beyond its register counters.
#[derive(Debug, Default)]
struct Counters {
    peers_joined: AtomicU64,
    peers_left: AtomicU64,
    /// Rings that exited and were delivered by writing the eventfd.
    rings_forwarded: AtomicU64,
    /// Rings of an absent peer or vector.
    rings_ignored: AtomicU64,
    msix_updates: AtomicU64,
    errors: AtomicU64,
}

/// State shared by the vCPU path (through the model's owner) and the
/// notice thread. Lock order: device, then this; the thread takes only this.
struct Shared {
    name: String,
    vm: Weak<Vm>,
    msi: MsiVectors,
    id: u16,
    vectors: u16,
    ioeventfd: bool,
    table: PeerTable,
    doorbell_at: Option<u64>,
    /// (peer, vector) with an ioeventfd at `doorbell_at`.
    registered: BTreeSet<(u16, u16)>,
    /// Own vectors: last MSI-X state and whether the eventfd is attached.
    msix: Vec<MsixVector>,
    attached: Vec<bool>,
    counters: Arc<Counters>,
    warnings: RateLimit,
}

impl Shared {
    /// Counts an error and logs it, rate-limited.
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.log_limited(what);
    }

    fn log_limited(&self, what: std::fmt::Arguments<'_>) {
        if let Some(dropped) = self.warnings.allow() {
            log::warn!("{}: {what}{}", self.name, RateLimit::suffix(dropped));
        }
    }

    /// Peer `peer`'s eventfd for `vector` as a notifier. KVM matches the
    /// eventfd, not the descriptor: a duplicate registers and unregisters.
    fn doorbell(&self, peer: u16, vector: u16) -> Option<std::io::Result<Notifier>> {
        let evt = self.table.peers.get(&peer)?.get(usize::from(vector))?;
        Some(evt.try_clone().map(Notifier::from))
    }

    fn register(&mut self, peer: u16, vector: u16) {
        let (Some(addr), true) = (self.doorbell_at, self.ioeventfd) else {
            return;
        };
        let Some(vm) = self.vm.upgrade() else { return };
        let Some(evt) = self.doorbell(peer, vector) else {
            return;
        };
        let value = Some(doorbell_value(peer, vector));
        match evt.and_then(|evt| {
            vm.register_ioeventfd(&evt, IoEventAddr::Mmio(addr), value)
                .map_err(std::io::Error::other)
        }) {
            Ok(()) => {
                self.registered.insert((peer, vector));
            }
            // The ring then exits and is forwarded: slower, still right.
            Err(e) => self.warn(format_args!(
                "ioeventfd for peer {peer} vector {vector}: {e}"
            )),
        }
    }

    fn unregister(&mut self, peer: u16, vector: u16) {
        if !self.registered.remove(&(peer, vector)) {
            return;
        }
        let (Some(addr), Some(vm)) = (self.doorbell_at, self.vm.upgrade()) else {
            return;
        };
        let value = Some(doorbell_value(peer, vector));
        if let Some(evt) = self.doorbell(peer, vector)
            && let Err(e) = evt.and_then(|evt| {
                vm.unregister_ioeventfd(&evt, IoEventAddr::Mmio(addr), value)
                    .map_err(std::io::Error::other)
            })
        {
            self.warn(format_args!(
                "removing the ioeventfd of peer {peer} vector {vector}: {e}"
            ));
        }
    }

    fn all_doorbells(&self) -> Vec<(u16, u16)> {
        self.table
            .peers
            .iter()
            .flat_map(|(&p, v)| (0..v.len()).filter_map(move |i| Some((p, u16::try_from(i).ok()?))))
            .collect()
    }

    fn moved(&mut self, addr: Option<u64>) {
        let old: Vec<_> = self.registered.iter().copied().collect();
        for (p, v) in old {
            self.unregister(p, v);
        }
        self.doorbell_at = addr;
        for (p, v) in self.all_doorbells() {
            self.register(p, v);
        }
    }

    /// Attaches or detaches own vector `v`'s eventfd to match its state.
    fn sync_irqfd(&mut self, v: u16) {
        let i = usize::from(v);
        let want = self.msix.get(i).is_some_and(|s| !s.masked);
        if self.attached.get(i).copied() == Some(want) {
            return;
        }
        let Some(evt) = self.doorbell(self.id, v) else {
            return;
        };
        let r = evt.map_err(|e| e.to_string()).and_then(|evt| {
            if want {
                self.msi.attach(&evt, v)
            } else {
                self.msi.detach(&evt, v)
            }
            .map_err(|e| e.to_string())
        });
        match r {
            Ok(()) => {
                if let Some(a) = self.attached.get_mut(i) {
                    *a = want;
                }
            }
            Err(e) => self.warn(format_args!("irqfd for vector {v}: {e}")),
        }
    }

    fn msix_vector(&mut self, v: u16, state: MsixVector) {
        self.counters.msix_updates.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = self.msix.get_mut(usize::from(v)) {
            *s = state;
        }
        if !state.masked {
            let msg = MsiMessage {
                address: state.address,
                data: state.data,
            };
            if let Err(e) = self.msi.route(v, Some(msg)) {
                self.warn(format_args!("routing MSI-X vector {v}: {e}"));
            }
        }
        self.sync_irqfd(v);
    }

    /// A ring that exited (no ioeventfd matched).
    fn ring(&mut self, peer: u16, vector: u16) {
        let evt = self
            .table
            .peers
            .get(&peer)
            .and_then(|v| v.get(usize::from(vector)));
        match evt {
            Some(e) => match e.write(1) {
                Ok(()) => {
                    self.counters
                        .rings_forwarded
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => self.warn(format_args!("ringing peer {peer} vector {vector}: {err}")),
            },
            None => {
                // A guest mistake, not the VMM's: counted, logged rate-limited.
                self.counters.rings_ignored.fetch_add(1, Ordering::Relaxed);
                self.log_limited(format_args!(
                    "the guest rang peer {peer} vector {vector}, which does not exist; ignored"
                ));
            }
        }
    }

    /// A message from the server after the handshake.
    fn notice(&mut self, msg: protocol::Message) {
        let n = match protocol::notice(msg) {
            Ok(n) => n,
            Err(e) => return self.warn(format_args!("ivshmem server: {e}; ignored")),
        };
        let gone = match &n {
            protocol::Notice::Gone { peer } => Some(*peer),
            protocol::Notice::Vector { .. } => None,
        };
        if let Some(peer) = gone {
            let n = self.table.peers.get(&peer).map_or(0, Vec::len);
            for v in 0..n {
                if let Ok(v) = u16::try_from(v) {
                    self.unregister(peer, v);
                }
            }
        }
        match self.table.apply(n, Some(usize::from(self.vectors))) {
            Ok(Change::Joined(p)) => {
                self.counters.peers_joined.fetch_add(1, Ordering::Relaxed);
                log::info!("{}: peer {p} joined", self.name);
                self.register(p, 0);
            }
            Ok(Change::Vector(p, v)) => {
                if let Ok(v) = u16::try_from(v) {
                    self.register(p, v);
                }
            }
            Ok(Change::Left(p)) => {
                self.counters.peers_left.fetch_add(1, Ordering::Relaxed);
                log::info!("{}: peer {p} left", self.name);
                crate::qmp::control::device_gone(&self.name, "ivshmem", &format!("peer {p}"));
            }
            Ok(Change::UnknownLeft(p)) => {
                log::debug!("{}: leave notice for unknown peer {p}", self.name);
            }
            // A dead doorbell for that peer (vector): the rest keep working.
            Err(e) => self.warn(format_args!(
                "ivshmem server: {e}; that doorbell stays dead"
            )),
        }
    }
}

/// The model's owner: forwards to the shared state.
struct Owner(Arc<Mutex<Shared>>);

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl DoorbellEvents for Owner {
    fn msix_vector(&mut self, vector: u16, state: MsixVector) {
        lock(&self.0).msix_vector(vector, state);
    }
    fn doorbell_moved(&mut self, addr: Option<u64>) {
        lock(&self.0).moved(addr);
    }
    fn doorbell(&mut self, peer: u16, vector: u16) {
        lock(&self.0).ring(peer, vector);
    }
}

/// One ivshmem-doorbell device, connected.
pub struct Doorbell {
    name: String,
    slot: Option<u8>,
    qdev_id: Option<String>,
    id: u16,
    vectors: u16,
    shm: Arc<MmapRegion>,
    device: Arc<Mutex<IvshmemDoorbell>>,
    shared: Arc<Mutex<Shared>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requester: Requester,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish()
    }
}

impl Doorbell {
    /// Connects to the server of `cfg`, reads the handshake and builds the
    /// PCI function (not yet on a bus).
    pub fn connect(
        cfg: &DoorbellConfig,
        vm: &Arc<Vm>,
        interrupts: &Arc<Interrupts>,
    ) -> Result<Doorbell, Error> {
        let name = cfg.to_string();
        let socket = cfg.socket.display().to_string();
        let stream = UnixStream::connect(&cfg.socket).map_err(|err| Error::Connect {
            device: name.clone(),
            socket: socket.clone(),
            err,
        })?;
        let setup = protocol::handshake(
            &stream,
            Some(usize::from(cfg.vectors)),
            Instant::now() + CONNECT_TIMEOUT,
            OWN_VECTORS_QUIET,
        )
        .map_err(|err| Error::Protocol {
            device: name.clone(),
            socket: socket.clone(),
            err,
        })?;
        let size = setup.shm.metadata().map(|m| m.len()).unwrap_or(0);
        let model_err = |err| Error::Model {
            device: name.clone(),
            err,
        };
        if !size.is_power_of_two() || size < 4096 {
            return Err(model_err(devices::ivshmem_doorbell::Error::Size(size)));
        }
        let map_err = |err: String| Error::Map {
            device: name.clone(),
            size,
            err,
        };
        let len = usize::try_from(size).map_err(|_| map_err("too large".into()))?;
        let shm = MmapRegion::from_file(FileOffset::new(setup.shm, 0), len)
            .map_err(|e| map_err(e.to_string()))?;
        let msi = interrupts.vectors(cfg.vectors).map_err(|err| Error::Msi {
            device: name.clone(),
            err,
        })?;
        let requester = msi.requester();
        let counters = Arc::new(Counters::default());
        let masked = MsixVector {
            address: 0,
            data: 0,
            masked: true,
        };
        let others = setup.table.peers.keys().filter(|&&p| p != setup.id).count();
        let shared = Arc::new(Mutex::new(Shared {
            name: name.clone(),
            vm: Arc::downgrade(vm),
            msi,
            id: setup.id,
            vectors: cfg.vectors,
            ioeventfd: cfg.ioeventfd,
            table: setup.table,
            doorbell_at: None,
            registered: BTreeSet::new(),
            msix: vec![masked; usize::from(cfg.vectors)],
            attached: vec![false; usize::from(cfg.vectors)],
            counters: counters.clone(),
            warnings: RateLimit::default(),
        }));
        counters
            .peers_joined
            .fetch_add(others as u64, Ordering::Relaxed);
        let device =
            IvshmemDoorbell::new(setup.id, cfg.vectors, size, Box::new(Owner(shared.clone())))
                .map_err(model_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            let tname = format!("ivshmem-db{}", cfg.index);
            std::thread::Builder::new()
                .name(tname)
                .spawn(move || {
                    crate::sandbox::enter_worker();
                    watch_server(&stream, &shared, &stop)
                })
                .map_err(|err| Error::Thread {
                    device: name.clone(),
                    err,
                })?
        };
        log::info!(
            "{name}: peer {} of server {socket}, {size} bytes, {} vector(s), {others} other peer(s)",
            setup.id,
            cfg.vectors
        );
        Ok(Doorbell {
            requester,
            name,
            slot: cfg.slot,
            qdev_id: cfg.id.clone(),
            id: setup.id,
            vectors: cfg.vectors,
            shm: Arc::new(shm),
            device: Arc::new(Mutex::new(device)),
            shared,
            counters,
            stop,
            thread: Some(thread),
        })
    }
}

/// The notice thread: peers joining and leaving until the server goes or
/// the VM ends.
fn watch_server(stream: &UnixStream, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let name = lock(shared).name.clone();
    let epoll = match Epoll::new().and_then(|e| {
        e.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .map(|()| e)
    }) {
        Ok(e) => e,
        Err(e) => {
            log::warn!("{name}: can't watch the ivshmem server ({e}); peers stay as they are");
            return;
        }
    };
    let mut ev = [EpollEvent::default(); 1];
    while !stop.load(Ordering::SeqCst) {
        match epoll.wait(NOTICE_TICK_MS, &mut ev) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("{name}: watching the ivshmem server: {e}; peers stay as they are");
                return;
            }
        }
        let deadline = Some(Instant::now() + Duration::from_secs(1));
        match protocol::recv(stream, deadline, "sending a notice") {
            Ok(msg) => lock(shared).notice(msg),
            Err(ProtocolError::Closed(_)) => {
                log::warn!(
                    "{name}: the ivshmem server closed the connection; peers stay as they are"
                );
                return;
            }
            Err(e @ (ProtocolError::Partial(_) | ProtocolError::Io(..))) => {
                log::warn!("{name}: ivshmem server: {e}; peers stay as they are");
                return;
            }
            Err(e) => lock(shared).warn(format_args!("ivshmem server: {e}")),
        }
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::warn!("{}: the server thread panicked", self.name);
        }
    }
}

impl PciPlug for Doorbell {
    fn function(&self) -> PciFunction {
        let region = HostRegion {
            host: self.shm.as_ptr(),
            size: self.shm.len() as u64,
            readonly: false,
            owner: self.shm.clone(),
        };
        PciFunction {
            name: self.name.clone(),
            slot: self.slot,
            qdev_id: self.qdev_id.clone(),
            device: self.device.clone(),
            bars: vec![
                (REGISTER_BAR, BarBacking::Registers),
                (MSIX_BAR, BarBacking::Registers),
                (MEMORY_BAR, BarBacking::Memory(region)),
            ],
            requester: Some(self.requester.clone()),
        }
    }

    fn add_stats(&self, placed: &Placed, pci: &Pci, stats: &mut Stats) {
        let d = self
            .device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats();
        let s = lock(&self.shared);
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        stats.ivshmem_doorbell.push(DoorbellStats {
            name: self.name.clone(),
            pci: placed.address.to_string(),
            id: self.id,
            vectors: self.vectors,
            peers: s.table.peers.keys().filter(|&&p| p != self.id).count() as u64,
            peers_joined: n(&c.peers_joined),
            peers_left: n(&c.peers_left),
            ioeventfds: s.registered.len() as u64,
            irqfds: s.attached.iter().filter(|&&a| a).count() as u64,
            doorbell_exits: d.doorbell_exits,
            rings_forwarded: n(&c.rings_forwarded),
            rings_ignored: n(&c.rings_ignored),
            msix_updates: n(&c.msix_updates),
            errors: n(&c.errors),
            bar0_reads: d.bar0_reads,
            bar0_writes: d.bar0_writes,
            bar2_addr: pci.bar_address(placed.address, MEMORY_BAR),
            bar2_exits: d.bar2_exits,
        });
    }
}
