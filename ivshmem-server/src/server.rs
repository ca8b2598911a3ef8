//! The server: one shared memory region, one Unix socket, one eventfd per
//! vector per connected peer, and the messages of QEMU's `ivshmem-server`
//! in the same order.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use memory::{Backend, BackendConfig, BackendProps, FileOptions, KindOptions, ShmOptions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::protocol::{self, MAX_VECTORS, PROTOCOL_VERSION};

/// QEMU's defaults.
pub const DEFAULT_SOCKET: &str = "/tmp/ivshmem_socket";
pub const DEFAULT_SHM_NAME: &str = "ivshmem";
pub const DEFAULT_SIZE: u64 = 4 << 20;
pub const DEFAULT_VECTORS: u16 = 1;
pub const DEFAULT_PID_FILE: &str = "/var/run/ivshmem-server.pid";
/// A peer that does not take a message within this long is dropped (the
/// server never blocks on one peer).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the loop looks at the stop flag.
const TICK_MS: i32 = 100;
const LISTENER: u64 = u64::MAX;

/// Where the shared memory lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmSource {
    /// `-M NAME`: a POSIX shm object (a leading '/' is added if missing).
    Name(String),
    /// `-m PATH`: a new file (or, as QEMU does, an unlinked temporary file
    /// when PATH is a directory, e.g. on hugetlbfs).
    Path(PathBuf),
}

/// What the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub socket: PathBuf,
    pub shm: ShmSource,
    pub size: u64,
    pub vectors: u16,
    /// Leave the shm object or file behind at exit.
    pub keep: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            socket: DEFAULT_SOCKET.into(),
            shm: ShmSource::Name(DEFAULT_SHM_NAME.into()),
            size: DEFAULT_SIZE,
            vectors: DEFAULT_VECTORS,
            keep: false,
        }
    }
}

/// Why the server cannot start. Each is one line naming the option.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("-l {0}: the size must be a power of two of at least 4 KiB (a PCI BAR's size)")]
    Size(u64),
    #[error("-n {0}: the number of vectors must be 1..={MAX_VECTORS}")]
    Vectors(u16),
    #[error("-m {0}: the file already exists (remove it, or name a new file or a directory)")]
    ShmFileExists(PathBuf),
    #[error("-m {path}: {err}")]
    ShmFile { path: PathBuf, err: io::Error },
    #[error("shared memory: {0}")]
    Shm(#[from] memory::Error),
    #[error("-S {0}: another server is listening there")]
    SocketInUse(PathBuf),
    #[error("-S {path}: {err}")]
    Socket { path: PathBuf, err: io::Error },
    #[error("epoll: {0}")]
    Epoll(io::Error),
}

#[derive(Debug)]
struct Client {
    id: u16,
    stream: UnixStream,
    vectors: Vec<EventFd>,
}

/// A running server (not yet serving until [`Server::run`]).
#[derive(Debug)]
pub struct Server {
    cfg: ServerConfig,
    listener: UnixListener,
    shm: Backend,
    /// The file this server created for `-m`, removed at exit unless kept.
    created_file: Option<PathBuf>,
    clients: Vec<Client>,
    next_id: u16,
    epoll: Epoll,
}

fn shm_name(n: &str) -> String {
    if n.starts_with('/') {
        n.to_string()
    } else {
        format!("/{n}")
    }
}

/// mode 0600 whatever the umask.
fn chmod_600(file: &File) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(0o600))
}

/// A shared backend of `size` bytes with the type-specific `opts`.
fn backend_config(size: u64, opts: KindOptions) -> Result<BackendConfig, memory::Error> {
    let props = BackendProps {
        size: Some(size),
        share: Some(true),
        ..BackendProps::default()
    };
    BackendConfig::from_props("ivshmem", props, opts)
}

fn create_shm(cfg: &ServerConfig) -> Result<(Backend, Option<PathBuf>), ServerError> {
    match &cfg.shm {
        ShmSource::Name(n) => {
            let c = backend_config(
                cfg.size,
                KindOptions::Shm(ShmOptions {
                    name: Some(shm_name(n)),
                    keep: cfg.keep,
                    reclaim: false,
                }),
            )?;
            let b = Backend::create(&c)?;
            if let Some(fd) = b.fd() {
                let f = fd.try_clone_to_owned().map(File::from);
                if let Err(e) = f.and_then(|f| chmod_600(&f)) {
                    log::warn!("can't set mode 0600 on shm object {}: {e}", shm_name(n));
                }
            }
            Ok((b, None))
        }
        ShmSource::Path(p) => {
            let c = backend_config(
                cfg.size,
                KindOptions::File(FileOptions {
                    mem_path: Some(p.clone()),
                    ..FileOptions::default()
                }),
            )?;
            if p.is_dir() {
                return Ok((Backend::create(&c)?, None));
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
                .map_err(|err| match err.kind() {
                    io::ErrorKind::AlreadyExists => ServerError::ShmFileExists(p.clone()),
                    _ => ServerError::ShmFile {
                        path: p.clone(),
                        err,
                    },
                })?;
            let created = p.clone();
            let fail = |err| {
                let _ = std::fs::remove_file(&created);
                err
            };
            chmod_600(&f).map_err(|err| {
                fail(ServerError::ShmFile {
                    path: p.clone(),
                    err,
                })
            })?;
            let b = Backend::create(&c).map_err(|e| fail(e.into()))?;
            Ok((b, Some(created)))
        }
    }
}

/// Binds `path`, replacing a stale socket nobody listens on.
fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |err| ServerError::Socket {
        path: path.to_path_buf(),
        err,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    UnixListener::bind(path).map_err(err)
}

impl Server {
    /// Creates the shared memory and listens on the socket.
    pub fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        if !cfg.size.is_power_of_two() || cfg.size < 4096 {
            return Err(ServerError::Size(cfg.size));
        }
        if cfg.vectors == 0 || cfg.vectors > MAX_VECTORS {
            return Err(ServerError::Vectors(cfg.vectors));
        }
        let (shm, created_file) = create_shm(&cfg)?;
        let listener = match bind(&cfg.socket) {
            Ok(l) => l,
            Err(e) => {
                if let Some(p) = &created_file {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        let epoll = Epoll::new().map_err(ServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(ServerError::Epoll)?;
        log::info!(
            "ivshmem-server: {} bytes of shared memory ({}), {} vector(s), listening on {}",
            cfg.size,
            match &cfg.shm {
                ShmSource::Name(n) => format!("shm {}", shm_name(n)),
                ShmSource::Path(p) => format!("file {}", p.display()),
            },
            cfg.vectors,
            cfg.socket.display()
        );
        Ok(Server {
            cfg,
            listener,
            shm,
            created_file,
            clients: Vec::new(),
            next_id: 0,
            epoll,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.cfg.socket
    }

    /// The shared memory, as the server maps it.
    pub fn shm(&self) -> &Backend {
        &self.shm
    }

    /// Ids of the connected peers, in connection order.
    pub fn peers(&self) -> Vec<u16> {
        self.clients.iter().map(|c| c.id).collect()
    }

    /// Serves until `stop` is set (checked every 100 ms).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::default(); 16];
        while !stop.load(Ordering::SeqCst) {
            let n = match self.epoll.wait(TICK_MS, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Epoll(e)),
            };
            for ev in &events[..n] {
                if ev.data() == LISTENER {
                    self.accept();
                } else if let Ok(id) = u16::try_from(ev.data()) {
                    self.on_client_readable(id);
                }
            }
        }
        Ok(())
    }

    /// The next free id after the last one given, wrapping (QEMU's
    /// allocation: ids are not reused until they wrap).
    fn allocate_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.clients.iter().any(|c| c.id == id) {
                return Some(id);
            }
        }
        None
    }

    fn accept(&mut self) {
        let stream = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("ivshmem-server: accept: {e}");
                return;
            }
        };
        if let Err(e) = stream.set_write_timeout(Some(SEND_TIMEOUT)) {
            log::warn!("ivshmem-server: new peer: {e}");
            return;
        }
        let Some(id) = self.allocate_id() else {
            log::warn!("ivshmem-server: no free peer id (65536 peers connected)");
            return;
        };
        let vectors: io::Result<Vec<EventFd>> = (0..self.cfg.vectors)
            .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect();
        let vectors = match vectors {
            Ok(v) => v,
            Err(e) => {
                log::warn!("ivshmem-server: eventfds for a new peer: {e}");
                return;
            }
        };
        let new = Client {
            id,
            stream,
            vectors,
        };
        if let Err(e) = self.introduce(&new) {
            log::warn!("ivshmem-server: peer {id} dropped during setup: {e}");
            // Others may have been told about it: tell them it left.
            self.announce_gone(id);
            return;
        }
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            new.stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::HANG_UP, u64::from(id)),
        ) {
            log::warn!("ivshmem-server: watching peer {id}: {e}");
            self.announce_gone(id);
            return;
        }
        log::info!("ivshmem-server: peer {id} connected");
        self.clients.push(new);
    }

    /// QEMU's order: version, id, shm; the new peer to the others; the
    /// others to the new peer; the new peer to itself.
    fn introduce(&mut self, new: &Client) -> io::Result<()> {
        let none: Option<&File> = None;
        protocol::send(&new.stream, PROTOCOL_VERSION, none)?;
        protocol::send(&new.stream, i64::from(new.id), none)?;
        let shm = self
            .shm
            .fd()
            .ok_or_else(|| io::Error::other("the shared memory has no fd"))?;
        protocol::send(&new.stream, -1, Some(&shm))?;
        let mut dead = Vec::new();
        for other in &self.clients {
            for v in &new.vectors {
                if let Err(e) = protocol::send(&other.stream, i64::from(new.id), Some(v)) {
                    log::warn!("ivshmem-server: peer {}: {e}; dropping it", other.id);
                    dead.push(other.id);
                    break;
                }
            }
        }
        for other in &self.clients {
            for v in &other.vectors {
                protocol::send(&new.stream, i64::from(other.id), Some(v))?;
            }
        }
        for v in &new.vectors {
            protocol::send(&new.stream, i64::from(new.id), Some(v))?;
        }
        for id in dead {
            self.remove(id);
        }
        Ok(())
    }

    fn on_client_readable(&mut self, id: u16) {
        // Peers send nothing; data or a hang-up both end the peer, as in
        // QEMU's server.
        if let Some(c) = self.clients.iter().find(|c| c.id == id) {
            let mut b = [0u8; 64];
            let _ = (&c.stream).read(&mut b);
        }
        log::info!("ivshmem-server: peer {id} left");
        self.remove(id);
    }

    fn remove(&mut self, id: u16) {
        if let Some(i) = self.clients.iter().position(|c| c.id == id) {
            let c = self.clients.remove(i);
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.announce_gone(id);
    }

    fn announce_gone(&mut self, id: u16) {
        let none: Option<&File> = None;
        let mut dead = Vec::new();
        for other in &self.clients {
            if let Err(e) = protocol::send(&other.stream, i64::from(id), none) {
                log::warn!("ivshmem-server: peer {}: {e}; dropping it", other.id);
                dead.push(other.id);
            }
        }
        for d in dead {
            self.remove(d);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // As QEMU's server closes: the peers are freed in connection order,
        // each socket closed and the remaining peers told it left, so a
        // peer's last messages are the same whichever server it talks to.
        while !self.clients.is_empty() {
            let c = self.clients.remove(0);
            let id = c.id;
            drop(c);
            self.announce_gone(id);
        }
        if let Err(e) = std::fs::remove_file(&self.cfg.socket) {
            log::warn!("can't remove {}: {e}", self.cfg.socket.display());
        }
        if let Some(p) = self.created_file.take()
            && !self.cfg.keep
            && let Err(e) = std::fs::remove_file(&p)
        {
            log::warn!("can't remove {}: {e}", p.display());
        }
        // A named shm object is unlinked by the backend unless kept.
    }
}
