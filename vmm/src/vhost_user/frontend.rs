//! The vhost-user front-end of any device type (vhost-user spec, as in
//! QEMU's docs/interop/vhost-user.rst), on rust-vmm's `vhost` crate; what
//! differs between types is the [`Spec`] it is given.
//!
//! At connect: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM (MQ), SET_FEATURES, SET_MEM_TABLE (one region per guest
//! RAM region, each an fd and an offset into it) and GET_CONFIG when the
//! type's configuration comes from the back-end (a disk's capacity).
//! When the guest driver starts the device: SET_FEATURES with what it
//! acknowledged, then per queue SET_VRING_NUM/ADDR/BASE/KICK/CALL and
//! SET_VRING_ENABLE, then (without REPLY_ACK) GET_FEATURES as a barrier
//! so the rings run before the guest's next instruction, and one kick per
//! ring. A device reset stops the rings (GET_VRING_BASE).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::notifier::Notifier;
use devices::virtio::QueueConfig;
use memory::Backend;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::kinds::{ConfigFrom, Kind, Queues, Row, Spec};
use super::{BLK_CONFIG_NUM_QUEUES, BLK_CONFIG_SIZE_MAX, blk_features};
use crate::layout::ram_regions;

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit in the feature word,
/// never offered to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;
const VERSION_1: u64 = devices::virtio::features::VERSION_1;
/// Transport bits passed from the back-end to the guest: split rings only
/// (the rings start at index 0, which a packed ring's wrap counter breaks).
const TRANSPORT_FEATURES: u64 = VERSION_1
    | devices::virtio::features::RING_INDIRECT_DESC
    | devices::virtio::features::RING_EVENT_IDX
    | (1 << 24) // NOTIFY_ON_EMPTY
    | (1 << 35); // IN_ORDER

/// How long a back-end gets to answer the set-up at connect, and each later
/// request (starting or stopping the rings). Past it, the socket is shut
/// down: the request fails, the device is failed, the VM goes on.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);

/// Errors talking to a back-end; each names its socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vhost-user back-end {path}: cannot connect: {err}")]
    Connect { path: PathBuf, err: std::io::Error },
    #[error("vhost-user back-end {path}: {what} failed: {err}")]
    Request {
        path: PathBuf,
        what: &'static str,
        err: vhost::Error,
    },
    #[error("vhost-user back-end {path}: {reason}")]
    Unsuitable { path: PathBuf, reason: String },
    #[error(
        "guest RAM backend '{id}' ({kind}) is not shared fd-backed memory: a vhost-user \
         back-end cannot map it"
    )]
    PrivateRam { id: String, kind: &'static str },
    #[error("vhost-user back-end {path}: queue {queue}: {what} at {gpa:#x} is not in guest RAM")]
    QueueAddress {
        path: PathBuf,
        queue: u16,
        what: &'static str,
        gpa: u64,
    },
    #[error("vhost-user back-end {path}: {what}: {err}")]
    Io {
        path: PathBuf,
        what: &'static str,
        err: std::io::Error,
    },
}

/// One guest RAM region as the back-end maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    pub gpa: u64,
    pub size: u64,
    /// Where this process maps it (the vhost-user "user address").
    pub host: u64,
    pub fd: RawFd,
    /// Offset of the region in `fd`.
    pub fd_offset: u64,
}

impl MemRegion {
    /// The guest RAM regions of `backend` (split around the MMIO hole as
    /// [`ram_regions`] lays them out), all over its one fd.
    ///
    /// The fd and the mapping must outlive the front-end using them.
    pub fn from_ram(backend: &Backend) -> Result<Vec<MemRegion>, Error> {
        let fd = match backend.fd() {
            Some(fd) if backend.shared() => fd.as_raw_fd(),
            _ => {
                return Err(Error::PrivateRam {
                    id: backend.id().to_string(),
                    kind: backend.kind().qom_type(),
                });
            }
        };
        Ok(ram_regions(backend.size())
            .iter()
            .map(|r| MemRegion {
                gpa: r.gpa,
                size: r.size,
                host: backend.as_ptr() as u64 + r.backend_offset,
                fd,
                fd_offset: backend.fd_offset() + r.backend_offset,
            })
            .collect())
    }

    fn translate(regions: &[MemRegion], gpa: u64, len: u64) -> Option<u64> {
        regions.iter().find_map(|r| {
            let off = gpa.checked_sub(r.gpa)?;
            (off.checked_add(len)? <= r.size).then_some(r.host + off)
        })
    }
}

/// Bytes each ring takes for `size` descriptors (split virtqueue).
fn ring_lengths(size: u16) -> (u64, u64, u64) {
    let n = u64::from(size);
    (16 * n, 6 + 2 * n, 6 + 8 * n)
}

/// A connected, configured back-end of one device.
pub struct Link {
    fe: Frontend,
    path: PathBuf,
    spec: Spec,
    /// The back-end's virtio feature word (PROTOCOL_FEATURES included).
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    queues: u16,
    config: Vec<u8>,
    regions: Vec<MemRegion>,
    /// Queues given to the back-end since the last stop.
    started: Vec<u16>,
    hangup: Option<Watcher>,
    dead: Arc<AtomicBool>,
    deadline: Deadline,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("driver", &self.spec.row.driver)
            .field("path", &self.path)
            .field("features", &format_args!("{:#x}", self.backend_features))
            .field("queues", &self.queues)
            .finish()
    }
}

/// Protocol features we use when the back-end has them.
fn wanted_protocol() -> VhostUserProtocolFeatures {
    // INFLIGHT_SHMFD (resuming requests after a reconnect) is not asked
    // for: a back-end that dies fails its device (see Watcher).
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::RESET_DEVICE
}

impl Link {
    /// Connects to the back-end at `path` and runs the set-up up to the
    /// device configuration, for a device as `spec` describes it.
    /// `regions` is guest RAM.
    pub fn connect(path: &Path, regions: Vec<MemRegion>, spec: Spec) -> Result<Link, Error> {
        let sock = UnixStream::connect(path).map_err(|err| Error::Connect {
            path: path.to_path_buf(),
            err,
        })?;
        let watch = sock.try_clone().map_err(|err| Error::Io {
            path: path.to_path_buf(),
            what: "duplicating the socket",
            err,
        })?;
        let cut = sock.try_clone().map_err(|err| Error::Io {
            path: path.to_path_buf(),
            what: "duplicating the socket",
            err,
        })?;
        let dead = Arc::new(AtomicBool::new(false));
        let deadline = Deadline::spawn(cut, path.to_path_buf(), dead.clone())?;
        let fe = Frontend::from_stream(sock, u64::from(devices::virtio::MAX_QUEUES));
        let mut me = Link {
            fe,
            path: path.to_path_buf(),
            spec,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            queues: 1,
            config: Vec::new(),
            regions,
            started: Vec::new(),
            hangup: None,
            dead,
            deadline,
        };
        let armed = me.deadline.arm("the set-up at connect");
        let r = me.handshake();
        me.deadline.disarm(armed);
        r.map_err(|e| me.timed_out_or(e))?;
        me.hangup = Some(Watcher::spawn(
            watch,
            me.path.clone(),
            me.spec.row,
            me.dead.clone(),
        )?);
        Ok(me)
    }

    /// `e`, or what the deadline did, if it cut the socket.
    fn timed_out_or(&self, e: Error) -> Error {
        match self.deadline.cut_reason() {
            Some(reason) => self.unsuitable(reason),
            None => e,
        }
    }

    fn req<T>(&self, what: &'static str, r: vhost::Result<T>) -> Result<T, Error> {
        r.map_err(|err| Error::Request {
            path: self.path.clone(),
            what,
            err,
        })
    }

    fn unsuitable(&self, reason: impl Into<String>) -> Error {
        Error::Unsuitable {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn handshake(&mut self) -> Result<(), Error> {
        let from_backend = match self.spec.config {
            ConfigFrom::Backend(len) => Some(len),
            _ => None,
        };
        let r = self.fe.set_owner();
        self.req("SET_OWNER", r)?;
        let r = self.fe.get_features();
        self.backend_features = self.req("GET_FEATURES", r)?;
        if self.backend_features & VERSION_1 == 0 {
            return Err(self.unsuitable("it does not offer VIRTIO_F_VERSION_1"));
        }
        let mut backend_queues = 1;
        if self.backend_features & PROTOCOL_FEATURES != 0 {
            let r = self.fe.get_protocol_features();
            let offered = self.req("GET_PROTOCOL_FEATURES", r)?;
            if from_backend.is_some() && !offered.contains(VhostUserProtocolFeatures::CONFIG) {
                return Err(self.unsuitable(format!(
                    "it lacks the CONFIG protocol feature (a {} reads its configuration \
                     from the back-end)",
                    self.spec.row.driver
                )));
            }
            self.protocol = offered & wanted_protocol();
            let r = self.fe.set_protocol_features(self.protocol);
            self.req("SET_PROTOCOL_FEATURES", r)?;
            if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request is acknowledged: a refused one fails here, not later.
                self.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
                let r = self.fe.get_queue_num();
                backend_queues = self.req("GET_QUEUE_NUM", r)?;
            }
        } else if from_backend.is_some() {
            return Err(self.unsuitable(format!(
                "it does not offer VHOST_USER_F_PROTOCOL_FEATURES (a {} reads its \
                 configuration from the back-end)",
                self.spec.row.driver
            )));
        }
        let r = self
            .fe
            .set_features(VERSION_1 | (self.backend_features & PROTOCOL_FEATURES));
        self.req("SET_FEATURES", r)?;
        self.set_mem_table()?;
        self.config = match from_backend {
            Some(len) => {
                let r = self.fe.get_config(
                    0,
                    len,
                    VhostUserConfigFlags::WRITABLE,
                    &vec![0; len as usize],
                );
                self.req("GET_CONFIG", r)?.1
            }
            None => self.spec.local_config.clone(),
        };
        self.queues = self.queue_count(backend_queues)?;
        if self.spec.row.kind == Kind::Blk {
            self.config[BLK_CONFIG_NUM_QUEUES..BLK_CONFIG_NUM_QUEUES + 2]
                .copy_from_slice(&self.queues.to_le_bytes());
        }
        log::info!(
            "vhost-user back-end {} ({}): features {:#x}, protocol {:#x}, {} queue(s), \
             {} bytes of configuration",
            self.path.display(),
            self.spec.row.driver,
            self.backend_features,
            self.protocol.bits(),
            self.queues,
            self.config.len()
        );
        Ok(())
    }

    /// The queues the device gets. A block device takes at most what its
    /// configuration says (with VIRTIO_BLK_F_MQ), what the back-end serves
    /// and the user's num-queues; other types need all their queues served.
    fn queue_count(&self, backend_queues: u64) -> Result<u16, Error> {
        let max = u64::from(devices::virtio::MAX_QUEUES);
        match self.spec.queues {
            Queues::FromBlkConfig { max: user } => {
                let mut queues = u64::from(u16::from_le_bytes([
                    self.config[BLK_CONFIG_NUM_QUEUES],
                    self.config[BLK_CONFIG_NUM_QUEUES + 1],
                ]));
                if self.backend_features & blk_features::MQ == 0 || queues == 0 {
                    queues = 1;
                }
                queues = queues.min(backend_queues.max(1)).min(max);
                if let Some(m) = user {
                    queues = queues.min(u64::from(m));
                }
                Ok(queues as u16)
            }
            Queues::Fixed(n) => {
                let served = self.protocol.contains(VhostUserProtocolFeatures::MQ);
                if served && backend_queues < u64::from(n) {
                    return Err(self.unsuitable(format!(
                        "it serves {backend_queues} queue(s), the {} needs {n}",
                        self.spec.row.driver
                    )));
                }
                Ok(n)
            }
        }
    }

    fn set_mem_table(&mut self) -> Result<(), Error> {
        let table: Vec<VhostUserMemoryRegionInfo> = self
            .regions
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.gpa,
                memory_size: r.size,
                userspace_addr: r.host,
                mmap_offset: r.fd_offset,
                mmap_handle: r.fd,
            })
            .collect();
        let r = self.fe.set_mem_table(&table);
        self.req("SET_MEM_TABLE", r).map(drop)
    }

    /// The device configuration as the guest reads it.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Queues the device has.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// Features to offer the guest: the back-end's, less the vhost-user
    /// bit and what we do not support.
    pub fn guest_features(&self) -> u64 {
        guest_features(
            self.spec.row,
            self.backend_features,
            self.queues,
            &self.config,
        )
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Whether the back-end hung up.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Hands the driver's queues to the back-end: `kicks[q]` is written
    /// when the guest notifies queue q, the back-end writes `calls[q]` to
    /// interrupt it.
    pub fn start(
        &mut self,
        acked: u64,
        queues: &[QueueConfig],
        kicks: &[Notifier],
        calls: &[Notifier],
    ) -> Result<(), Error> {
        if self.is_dead() {
            return Err(self.unsuitable("it hung up or stopped answering earlier"));
        }
        let armed = self.deadline.arm("starting the rings");
        let r = self.start_rings(acked, queues, kicks, calls);
        self.deadline.disarm(armed);
        r.map_err(|e| self.timed_out_or(e))
    }

    fn start_rings(
        &mut self,
        acked: u64,
        queues: &[QueueConfig],
        kicks: &[Notifier],
        calls: &[Notifier],
    ) -> Result<(), Error> {
        let r = self.fe.set_features(acked | PROTOCOL_FEATURES);
        self.req("SET_FEATURES", r)?;
        for q in queues {
            let i = usize::from(q.index);
            let (Some(kick), Some(call)) = (kicks.get(i), calls.get(i)) else {
                return Err(self.unsuitable(format!("queue {} has no eventfds", q.index)));
            };
            let (dl, al, ul) = ring_lengths(q.size);
            let host = |what: &'static str, gpa: u64, len: u64| {
                MemRegion::translate(&self.regions, gpa, len).ok_or_else(|| Error::QueueAddress {
                    path: self.path.clone(),
                    queue: q.index,
                    what,
                    gpa,
                })
            };
            let ring = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host("descriptor table", q.desc, dl)?,
                avail_ring_addr: host("driver ring", q.driver, al)?,
                used_ring_addr: host("device ring", q.device, ul)?,
                log_addr: None,
            };
            let r = self.fe.set_vring_num(i, q.size);
            self.req("SET_VRING_NUM", r)?;
            let r = self.fe.set_vring_base(i, 0);
            self.req("SET_VRING_BASE", r)?;
            let r = self.fe.set_vring_addr(i, &ring);
            self.req("SET_VRING_ADDR", r)?;
            let r = self.fe.set_vring_kick(i, kick.eventfd());
            self.req("SET_VRING_KICK", r)?;
            let r = self.fe.set_vring_call(i, call.eventfd());
            self.req("SET_VRING_CALL", r)?;
            self.started.push(q.index);
        }
        for q in queues {
            let r = self.fe.set_vring_enable(usize::from(q.index), true);
            self.req("SET_VRING_ENABLE", r)?;
        }
        // The guest runs on when this returns, and a driver kicks right
        // after DRIVER_OK (Linux's virtio-rng queues its one request in
        // probe and waits for it). The rings must be enabled by then.
        self.sync()?;
        // A kick the back-end read before its SET_VRING_ENABLE (one the
        // guest sent before DRIVER_OK, already pending when the kick fd
        // was registered) was dropped: rust-vmm's back-ends discard kicks
        // on a disabled ring. One more kick per queue replays it; a kick
        // with nothing new on the ring is harmless.
        for q in queues {
            if let Some(kick) = kicks.get(usize::from(q.index))
                && let Err(err) = kick.signal()
            {
                return Err(Error::Io {
                    path: self.path.clone(),
                    what: "kicking a started ring",
                    err,
                });
            }
        }
        Ok(())
    }

    /// Returns once the back-end has processed every request sent so far.
    /// With REPLY_ACK each request already waited for its acknowledgement;
    /// without it (vhost-device-rng 0.1 offers only MQ) requests are
    /// fire-and-forget, so GET_FEATURES, which every back-end answers and
    /// which it handles after the requests before it, is the barrier (as
    /// QEMU does since 8.2 for SET_VRING_ENABLE).
    fn sync(&mut self) -> Result<(), Error> {
        if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            return Ok(());
        }
        let r = self.fe.get_features();
        self.req("GET_FEATURES (waiting for the rings to start)", r)
            .map(drop)
    }

    /// Stops every started ring (the driver reset the device).
    pub fn stop(&mut self) -> Result<(), Error> {
        let started = std::mem::take(&mut self.started);
        if self.is_dead() || started.is_empty() {
            return Ok(());
        }
        let armed = self.deadline.arm("stopping the rings");
        let r = self.stop_rings(&started);
        self.deadline.disarm(armed);
        r.map_err(|e| self.timed_out_or(e))
    }

    fn stop_rings(&mut self, started: &[u16]) -> Result<(), Error> {
        for &q in started {
            let r = self.fe.set_vring_enable(usize::from(q), false);
            self.req("SET_VRING_ENABLE", r)?;
            let r = self.fe.get_vring_base(usize::from(q));
            self.req("GET_VRING_BASE", r)?;
        }
        Ok(())
    }
}

/// Features to offer the guest of a `row` device whose back-end offers
/// `backend`, with `queues` queues and configuration `config`: the
/// transport bits we support and the type's device bits.
///
/// For a block device, SIZE_MAX with a size_max of 0 is dropped:
/// qemu-storage-daemon offers the bit with 0 (it has no segment limit),
/// and Linux then clamps every segment to 4096 bytes
/// ("blk_queue_max_segment_size: set to minimum 4096"), splitting large
/// requests; without the bit it uses its default.
fn guest_features(row: &Row, backend: u64, queues: u16, config: &[u8]) -> u64 {
    let mut f = backend & (TRANSPORT_FEATURES | row.device_features);
    if row.kind != Kind::Blk {
        return f;
    }
    if queues == 1 {
        f &= !blk_features::MQ;
    }
    let size_max = config
        .get(BLK_CONFIG_SIZE_MAX..BLK_CONFIG_SIZE_MAX + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if size_max == 0 {
        f &= !blk_features::SIZE_MAX;
    }
    f
}

/// A thread that waits for the back-end to hang up and reports it once.
struct Watcher {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn spawn(
        sock: UnixStream,
        path: PathBuf,
        row: &'static Row,
        dead: Arc<AtomicBool>,
    ) -> Result<Watcher, Error> {
        let io = |what, err| Error::Io {
            path: path.clone(),
            what,
            err,
        };
        // Shared, not dup'ed: dup(2) would drop O_CLOEXEC.
        let stop = Arc::new(
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|e| io("creating an eventfd", e))?,
        );
        let stop2 = stop.clone();
        let name = path.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-watch".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::sandbox::enter_worker();
                // Reported once: not again if the deadline already cut it.
                if wait_hangup(sock.as_raw_fd(), stop2.as_raw_fd()) && !dead.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "vhost-user back-end {} hung up; its {} stops answering, the guest keeps running",
                        name.display(),
                        row.noun
                    );
                    crate::qmp::control::device_gone(
                        row.driver.trim_end_matches("-pci"),
                        "vhost-user",
                        &name.display().to_string(),
                    );
                }
            })
            .map_err(|e| io("starting the watcher thread", e))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Default)]
struct DeadlineState {
    /// What is waited for and until when (None: nothing outstanding).
    armed: Option<(&'static str, Instant)>,
    /// Bumped by every `arm`, so a late cut never hits the next request.
    generation: u64,
    /// Why the socket was cut, once it was.
    cut: Option<String>,
    closed: bool,
}

#[derive(Debug, Default)]
struct DeadlineShared {
    state: Mutex<DeadlineState>,
    changed: Condvar,
}

/// A thread that shuts the back-end's socket down when a request is not
/// answered by [`REPLY_DEADLINE`], or when a stop signal (SIGTERM, SIGINT,
/// SIGHUP) arrives while one is outstanding: the `vhost` crate retries a
/// timed-out or interrupted receive forever, but a shut-down socket ends it.
struct Deadline {
    shared: Arc<DeadlineShared>,
    thread: Option<JoinHandle<()>>,
}

/// The ticket of one armed request.
struct Armed(u64);

impl Deadline {
    /// How often the thread looks for a stop signal while a request waits.
    const SIGNAL_POLL: Duration = Duration::from_millis(50);

    fn spawn(sock: UnixStream, path: PathBuf, dead: Arc<AtomicBool>) -> Result<Deadline, Error> {
        let shared = Arc::new(DeadlineShared::default());
        let s = shared.clone();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-deadline".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::sandbox::enter_worker();
                Deadline::watch(&s, &sock, &p, &dead)
            })
            .map_err(|err| Error::Io {
                path,
                what: "starting the deadline thread",
                err,
            })?;
        Ok(Deadline {
            shared,
            thread: Some(thread),
        })
    }

    fn watch(s: &DeadlineShared, sock: &UnixStream, path: &Path, dead: &AtomicBool) {
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.closed || st.cut.is_some() {
                return;
            }
            let reason = match st.armed {
                None => {
                    st = s.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                Some(_) if crate::signals::stop_signal().is_some() => {
                    Some("a stop signal arrived while it was being asked".to_string())
                }
                Some((what, until)) if Instant::now() >= until => Some(format!(
                    "no answer to {what} within {} s (stopped or stuck?)",
                    REPLY_DEADLINE.as_secs()
                )),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                let _ = sock.shutdown(std::net::Shutdown::Both);
                if !dead.swap(true, Ordering::Relaxed) {
                    log::error!(
                        "vhost-user back-end {}: {reason}; its device is failed, the guest keeps \
                         running",
                        path.display()
                    );
                }
                st.cut = Some(reason);
                return;
            }
            st = s
                .changed
                .wait_timeout(st, Deadline::SIGNAL_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn arm(&self, what: &'static str) -> Armed {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.generation += 1;
        st.armed = Some((what, Instant::now() + REPLY_DEADLINE));
        self.shared.changed.notify_all();
        Armed(st.generation)
    }

    fn disarm(&self, armed: Armed) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.generation == armed.0 {
            st.armed = None;
        }
    }

    /// Why the socket was cut, if it was.
    fn cut_reason(&self) -> Option<String> {
        let st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.cut.clone()
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
            self.shared.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Blocks until `sock` reports a hang-up (true) or `stop` is signalled
/// (false). Replies on the socket do not wake it: only POLLRDHUP is asked
/// for (POLLHUP and POLLERR are always reported).
fn wait_hangup(sock: RawFd, stop: RawFd) -> bool {
    // SAFETY: both fds stay open for the whole call: the socket clone and
    // the eventfd clone are owned by the calling thread.
    let (sock, stop) = unsafe { (BorrowedFd::borrow_raw(sock), BorrowedFd::borrow_raw(stop)) };
    let mut fds = [
        libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A back-end stopped mid-run (SIGSTOP) answers nothing: the request
    /// waiting for it is cut at the deadline, the device is marked dead and
    /// the reason says what was asked.
    #[test]
    fn a_request_nobody_answers_is_cut_at_the_deadline() {
        use std::io::Read;
        let (ours, _stopped_peer) = UnixStream::pair().expect("socketpair");
        let dead = Arc::new(AtomicBool::new(false));
        let d = Deadline::spawn(
            ours.try_clone().expect("dup"),
            PathBuf::from("/test/stopped.sock"),
            dead.clone(),
        )
        .expect("deadline thread");
        let armed = d.arm("a test request");
        let t0 = Instant::now();
        let mut buf = [0u8; 1];
        let n = (&ours).read(&mut buf).expect("read ends at the shutdown");
        d.disarm(armed);
        let took = t0.elapsed();
        assert_eq!(n, 0);
        assert!(took >= REPLY_DEADLINE, "{took:?}");
        assert!(took < REPLY_DEADLINE + Duration::from_secs(2), "{took:?}");
        assert!(dead.load(Ordering::Relaxed));
        let reason = d.cut_reason().expect("cut");
        assert!(reason.contains("no answer to a test request"), "{reason}");
    }

    #[test]
    fn an_answered_request_is_never_cut() {
        let (ours, _peer) = UnixStream::pair().expect("socketpair");
        let dead = Arc::new(AtomicBool::new(false));
        let d = Deadline::spawn(ours, PathBuf::from("/test/ok.sock"), dead.clone())
            .expect("deadline thread");
        for _ in 0..100 {
            let armed = d.arm("a quick request");
            d.disarm(armed);
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(!dead.load(Ordering::Relaxed));
        assert!(d.cut_reason().is_none());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn regions_split_around_the_hole_over_one_fd() {
        let cfg = crate::config::object::parse("memory-backend-memfd,id=m,size=3328M,reserve=off")
            .unwrap();
        let b = Backend::create(&cfg).unwrap();
        let r = MemRegion::from_ram(&b).unwrap();
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].gpa, 0);
        assert_eq!(r[1].gpa, crate::layout::FOUR_GIB);
        assert_eq!(r[0].size + r[1].size, b.size());
        assert_eq!(r[0].fd, r[1].fd);
        assert_eq!(r[1].fd_offset, r[0].size);
        assert_eq!(r[1].host, r[0].host + r[0].size);
        // Translation stays inside one region.
        let hole = crate::layout::MMIO_HOLE;
        assert_eq!(
            MemRegion::translate(&r, 0x1000, 16),
            Some(r[0].host + 0x1000)
        );
        assert_eq!(MemRegion::translate(&r, hole - 8, 16), None);
        assert_eq!(
            MemRegion::translate(&r, crate::layout::FOUR_GIB, 16),
            Some(r[1].host)
        );
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_ram_is_one_region_at_its_base() {
        let cfg = crate::config::object::parse("memory-backend-memfd,id=m,size=64M").unwrap();
        let b = Backend::create(&cfg).unwrap();
        let r = MemRegion::from_ram(&b).unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].gpa, r[0].size), (crate::layout::RAM_BASE, b.size()));
        assert_eq!(MemRegion::translate(&r, 0x1000, 16), None);
        assert_eq!(
            MemRegion::translate(&r, crate::layout::RAM_BASE + 0x1000, 16),
            Some(r[0].host + 0x1000)
        );
    }

    #[test]
    fn private_ram_is_refused() {
        let cfg = crate::config::object::parse("memory-backend-ram,id=r,size=16M").unwrap();
        let b = Backend::create(&cfg).unwrap();
        let msg = MemRegion::from_ram(&b).unwrap_err().to_string();
        assert!(
            msg.contains("'r' (memory-backend-ram)") && msg.contains("not shared"),
            "{msg}"
        );
    }

    #[test]
    fn guest_features_drop_what_we_or_the_config_cannot_honour() {
        // qemu-storage-daemon 10.0 with one queue: size_max 0, seg_max 126.
        let qsd = 0x1_7500_7e46u64;
        let blk = Kind::Blk.row();
        let mut cfg = vec![0u8; super::super::BLK_CONFIG_LEN as usize];
        cfg[12..16].copy_from_slice(&126u32.to_le_bytes());
        let f = guest_features(blk, qsd, 1, &cfg);
        assert_eq!(f & PROTOCOL_FEATURES, 0);
        assert_eq!(f & blk_features::CONFIG_WCE, 0);
        assert_eq!(f & blk_features::MQ, 0);
        assert_eq!(f & blk_features::SIZE_MAX, 0, "size_max 0 is no limit");
        assert_ne!(f & blk_features::SEG_MAX, 0);
        assert_ne!(f & VERSION_1, 0);
        // A real segment limit and several queues are passed on.
        cfg[BLK_CONFIG_SIZE_MAX..BLK_CONFIG_SIZE_MAX + 4].copy_from_slice(&65536u32.to_le_bytes());
        let f = guest_features(blk, qsd, 2, &cfg);
        assert_ne!(f & blk_features::SIZE_MAX, 0);
        assert_ne!(f & blk_features::MQ, 0);
        // Other types: transport bits and their own device bits only;
        // never a packed ring.
        let packed = devices::virtio::features::RING_PACKED;
        let all = u64::MAX;
        assert_eq!(
            guest_features(Kind::Fs.row(), all, 2, &[]),
            TRANSPORT_FEATURES,
            "virtio-fs passes no device bits"
        );
        assert_eq!(
            guest_features(Kind::Vsock.row(), all, 3, &[]) & !TRANSPORT_FEATURES,
            1 << 1
        );
        assert_eq!(guest_features(Kind::Generic.row(), all, 1, &[]) & packed, 0);
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_lengths(256), (4096, 518, 2054));
    }
}
