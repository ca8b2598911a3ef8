//! [`Backend`]: a mapped host memory backend.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{
    BackendConfig, BackendKind, FileOptions, KindOptions, MemfdOptions, OnOffAuto, ShmOptions,
};
use crate::error::Error;
use crate::prealloc::{self, Backing, PopulateMethod};
use crate::sys::{self, FileType, MapRequest, Mapping};

/// Mappings of 2 MiB or more are 2 MiB aligned, so transparent huge pages can back them
/// (QEMU_VMALLOC_ALIGN on x86_64).
const DEFAULT_ALIGN: u64 = 2 << 20;

/// How many random names to try before giving up on an anonymous shm object.
const SHM_NAME_ATTEMPTS: u32 = 100;

/// How often to retry opening a `mem-path` that another process creates and
/// removes between our open and our create.
const MEM_PATH_ATTEMPTS: u32 = 16;

/// A host memory backend, mapped into this process.
///
/// Dropping it unmaps the memory and closes the fd; a named shm object is unlinked
/// unless `keep=on`; a file created for it stays (its data is the point), a temporary
/// file in a directory disappears with the fd.
#[derive(Debug)]
pub struct Backend {
    cfg: BackendConfig,
    map: Mapping,
    fd: Option<OwnedFd>,
    fd_offset: u64,
    shared: bool,
    readonly: bool,
    page_size: u64,
    shm_name: Option<String>,
    populated: Option<PopulateMethod>,
    /// The `mem-path` file this backend created (it stays when dropped; the VMM
    /// removes it when a later start-up step fails).
    created_file: Option<PathBuf>,
}

/// Undoes the name-creating steps of a failed `create` (a new file, a named shm
/// object) so nothing is left behind.
#[derive(Debug, Default)]
struct Leftovers {
    file: Option<PathBuf>,
    shm: Option<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(p) = self.file.take()
            && let Err(e) = std::fs::remove_file(&p)
        {
            log::warn!("can't remove {}: {e}", p.display());
        }
        if let Some(n) = self.shm.take()
            && let Err(e) = sys::shm_unlink(&n)
        {
            log::warn!("can't unlink shm object {n}: {e}");
        }
    }
}

/// The memory source before it is mapped.
#[derive(Debug)]
struct Source {
    fd: Option<OwnedFd>,
    fd_offset: u64,
    /// Mapping length: size rounded up to the page size.
    len: u64,
    page_size: u64,
    align: u64,
    writable: bool,
}

fn round_up(v: u64, to: u64) -> Option<u64> {
    v.checked_next_multiple_of(to)
}

impl Backend {
    /// Creates and maps the backend described by `cfg` (validating it first). On error
    /// nothing is left behind: no mapping, no fd, no new file, no shm name.
    pub fn create(cfg: &BackendConfig) -> Result<Backend, Error> {
        cfg.validate()?;
        let ctx = Ctx { cfg };
        // Memory-backed kinds are checked before anything is created; a file
        // once it is open (only one on tmpfs uses memory).
        if cfg.prealloc() && !matches!(cfg.kind_options(), KindOptions::File(_)) {
            ctx.check_room(cfg.size())?;
        }
        let mut leftovers = Leftovers::default();
        let src = match cfg.kind_options() {
            KindOptions::Ram => ctx.ram_source()?,
            KindOptions::File(f) => ctx.file_source(f, &mut leftovers)?,
            KindOptions::Memfd(m) => ctx.memfd_source(m)?,
            KindOptions::Shm(s) => ctx.shm_source(s, &mut leftovers)?,
        };
        if !cfg.reserve() {
            ctx.check_noreserve(&src)?;
        }
        if cfg.prealloc()
            && src.page_size == sys::host_page_size()
            && let (KindOptions::File(_), Some(fd)) = (cfg.kind_options(), &src.fd)
            && sys::fd_on_tmpfs(fd.as_fd())
        {
            ctx.check_room(src.len)?;
        }
        let len = usize::try_from(src.len).map_err(|_| {
            ctx.invalid(
                "size",
                format!("size={} does not fit in memory", cfg.size()),
            )
        })?;
        let align = usize::try_from(src.align).unwrap_or(usize::MAX);
        let map = sys::map(&MapRequest {
            len,
            align,
            writable: src.writable,
            shared: cfg.share(),
            noreserve: !cfg.reserve(),
            fd: src.fd.as_ref().map(|fd| (fd.as_fd(), src.fd_offset)),
        })
        .map_err(|e| {
            if src.page_size == sys::host_page_size() {
                ctx.os("size", format!("can't map {} bytes", src.len), e)
            } else {
                let option = if cfg.kind() == BackendKind::Memfd {
                    "hugetlb"
                } else {
                    "mem-path"
                };
                let op = format!(
                    "can't map {} bytes of {} KiB huge pages (enough reserved? see \
                     HugePages_Free in /proc/meminfo)",
                    src.len,
                    src.page_size >> 10
                );
                ctx.os(option, op, e)
            }
        })?;
        ctx.advise(&map, src.page_size);
        #[cfg(target_os = "linux")]
        if !cfg.host_nodes().is_empty() {
            ctx.bind(&map)?;
        }
        let populated = if cfg.prealloc() {
            let backing = src.fd.as_ref().map(|fd| Backing {
                fd: fd.as_fd(),
                offset: src.fd_offset,
                shared: cfg.share(),
            });
            let method = prealloc::prealloc(
                &map,
                src.page_size as usize,
                cfg.prealloc_threads(),
                src.writable,
                backing,
            )
            .map_err(|e| ctx.os("prealloc", "preallocating memory failed".to_string(), e))?;
            Some(method)
        } else {
            None
        };
        // Success: a created file stays; a named shm object now belongs to the Backend.
        let created_file = leftovers.file.take();
        let shm_name = leftovers.shm.take();
        Ok(Backend {
            cfg: cfg.clone(),
            map,
            fd: src.fd,
            fd_offset: src.fd_offset,
            shared: cfg.share(),
            readonly: !src.writable,
            page_size: src.page_size,
            shm_name,
            populated,
            created_file,
        })
    }

    /// Backend id.
    pub fn id(&self) -> &str {
        self.cfg.id()
    }
    /// Backend type.
    pub fn kind(&self) -> BackendKind {
        self.cfg.kind()
    }
    /// Host address of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }
    /// Size of the mapping: the configured size rounded up to the page size.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }
    /// MAP_SHARED: another process mapping [`Backend::fd`] sees this memory.
    pub fn shared(&self) -> bool {
        self.shared
    }
    /// The mapping is read-only (file backend with `rom` in effect).
    pub fn readonly(&self) -> bool {
        self.readonly
    }
    /// The fd behind the mapping, when there is one.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }
    /// Offset of the mapping in [`Backend::fd`].
    pub fn fd_offset(&self) -> u64 {
        self.fd_offset
    }
    /// The configuration this backend was created from.
    pub fn config(&self) -> &BackendConfig {
        &self.cfg
    }
    /// Page size backing the mapping (a huge page size for hugetlb).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }
    /// The name of a named shm object (`name=`), while it exists.
    pub fn shm_name(&self) -> Option<&str> {
        self.shm_name.as_deref()
    }
    /// How prealloc faulted the pages in, if it ran.
    pub fn populate_method(&self) -> Option<PopulateMethod> {
        self.populated
    }
    /// The memfd seals (F_GET_SEALS) of the backing fd, if there is one.
    #[cfg(target_os = "linux")]
    pub fn seals(&self) -> Option<io::Result<i32>> {
        self.fd.as_ref().map(|fd| sys::get_seals(fd.as_fd()))
    }
    /// The `mem-path` file this backend created, if it created one (a directory's
    /// unlinked temporary file has no name and is not reported).
    pub fn created_file(&self) -> Option<&Path> {
        self.created_file.as_deref()
    }

    /// How many base pages of the mapping are resident (mincore(2)).
    pub fn resident_pages(&self) -> io::Result<usize> {
        sys::resident_pages(&self.map, 0, self.map.len())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let KindOptions::File(f) = self.cfg.kind_options()
            && f.discard_data
            && self.shared
            && let Some(fd) = &self.fd
            && let Err(e) = sys::punch_hole(fd.as_fd(), self.fd_offset, self.map.len() as u64)
        {
            log::warn!("file backend '{}': discard-data: {e}", self.cfg.id());
        }
        if let KindOptions::Shm(s) = self.cfg.kind_options()
            && let Some(name) = self.shm_name.take()
            && !s.keep
            && let Err(e) = sys::shm_unlink(&name)
        {
            log::warn!("shm backend '{}': can't unlink {name}: {e}", self.cfg.id());
        }
        log::debug!(
            "{} backend '{}': unmapping, fd {}",
            self.kind(),
            self.id(),
            sys::raw(self.fd.as_ref())
        );
        // `map` then `fd` drop here: munmap, then close.
    }
}

/// Whether the kernel would ignore MAP_NORESERVE: it only matters for private (or
/// shared anonymous) writable mappings of base pages, and for those it is ignored when
/// `overcommit_memory` is 2.
fn noreserve_ignored(
    overcommit_memory: Option<&str>,
    hugetlb: bool,
    writable: bool,
    shared_fd: bool,
) -> bool {
    let accountable = !hugetlb && writable && !shared_fd;
    accountable && overcommit_memory.map(str::trim) == Some("2")
}

/// The name of an anonymous shm object (unlinked as soon as it is open): at most
/// 30 bytes for any pid, within macOS's limit of 31 (PSHMNAMLEN) on every host.
fn anonymous_shm_name(pid: u32, random: u64) -> String {
    format!("/shmvm-{pid}-{:012x}", random & 0xffff_ffff_ffff)
}

/// Error helpers and the per-type steps of `create`.
struct Ctx<'a> {
    cfg: &'a BackendConfig,
}

impl Ctx<'_> {
    fn invalid(&self, option: &str, reason: String) -> Error {
        Error::Invalid {
            kind: self.cfg.kind(),
            id: self.cfg.id().to_string(),
            option: option.to_string(),
            reason,
        }
    }

    fn os(&self, option: &str, op: String, source: io::Error) -> Error {
        Error::Os {
            kind: self.cfg.kind(),
            id: self.cfg.id().to_string(),
            option: option.to_string(),
            op,
            source,
        }
    }

    /// A memfd name (shown in /proc/PID/maps) from the id, within the kernel's limit.
    #[cfg(target_os = "linux")]
    fn memfd_name(&self, prefix: &str) -> String {
        let mut name = format!("{prefix}{}", self.cfg.id());
        name.truncate(200);
        name
    }

    /// A writable mapping of a whole object (anonymous memory, a memfd, an
    /// shm object) from its start, aligned as QEMU aligns RAM.
    fn whole_mapping(&self, fd: Option<OwnedFd>, len: u64, page: u64) -> Source {
        Source {
            fd,
            fd_offset: 0,
            len,
            page_size: page,
            align: self.default_align(len, page),
            writable: true,
        }
    }

    fn default_align(&self, len: u64, page: u64) -> u64 {
        if len >= DEFAULT_ALIGN {
            DEFAULT_ALIGN.max(page)
        } else {
            page
        }
    }

    fn len_for_page(&self, page: u64) -> Result<u64, Error> {
        let size = self.cfg.size();
        if size < page {
            return Err(self.invalid(
                "size",
                format!("size={size:#x} is smaller than the page size {page:#x}"),
            ));
        }
        round_up(size, page)
            .ok_or_else(|| self.invalid("size", format!("size={size:#x} is too large")))
    }

    /// An fd-backed anonymous object for `ram,share=on`.
    fn shared_anonymous_fd(&self, len: u64) -> Result<OwnedFd, Error> {
        #[cfg(target_os = "linux")]
        let fd = sys::memfd_create(&self.memfd_name("shmvm-ram-"), 0)
            .map_err(|e| self.os("share", "memfd_create".to_string(), e))?;
        #[cfg(not(target_os = "linux"))]
        let fd = self.anonymous_shm()?;
        sys::ftruncate(fd.as_fd(), len)
            .map_err(|e| self.os("size", format!("can't size the memory to {len} bytes"), e))?;
        Ok(fd)
    }

    fn ram_source(&self) -> Result<Source, Error> {
        let page = sys::host_page_size();
        let len = self.len_for_page(page)?;
        let fd = if self.cfg.share() {
            Some(self.shared_anonymous_fd(len)?)
        } else {
            None
        };
        Ok(self.whole_mapping(fd, len, page))
    }

    fn file_source(&self, f: &FileOptions, leftovers: &mut Leftovers) -> Result<Source, Error> {
        let Some(path) = f.mem_path.as_deref() else {
            return Err(self.invalid("mem-path", "mem-path is required".to_string()));
        };
        let (fd, fresh) = self.open_mem_path(path, f.readonly, leftovers)?;
        let page = sys::fd_page_size(fd.as_fd())
            .map_err(|e| self.os("mem-path", format!("can't statfs '{}'", path.display()), e))?;
        if !f.align.is_multiple_of(page) {
            return Err(self.invalid(
                "align",
                format!(
                    "align={:#x} must be a multiple of the page size {page:#x}",
                    f.align
                ),
            ));
        }
        if !f.offset.is_multiple_of(page) {
            return Err(self.invalid(
                "offset",
                format!(
                    "offset={:#x} must be a multiple of the page size {page:#x}",
                    f.offset
                ),
            ));
        }
        let len = self.len_for_page(page)?;
        let end = f
            .offset
            .checked_add(len)
            .ok_or_else(|| self.invalid("offset", "offset plus size overflows".to_string()))?;
        let stat = sys::fstat(fd.as_fd())
            .map_err(|e| self.os("mem-path", format!("can't stat '{}'", path.display()), e))?;
        let (file_size, regular) = (stat.size, stat.kind == FileType::Regular);
        // A new (or empty) file is sized; an existing one is used as it is, never
        // truncated: its contents are the point of a file backend.
        if fresh || (regular && file_size == 0 && !f.readonly) {
            sys::ftruncate(fd.as_fd(), end).map_err(|e| {
                self.os(
                    "size",
                    format!("can't size '{}' to {end} bytes", path.display()),
                    e,
                )
            })?;
        } else if regular && file_size < end {
            return Err(self.invalid(
                "mem-path",
                format!(
                    "mem-path '{}' is {file_size} bytes, too small for offset {:#x} plus size {len:#x}",
                    path.display(),
                    f.offset
                ),
            ));
        }
        let rom = match f.rom {
            OnOffAuto::On => true,
            OnOffAuto::Off => false,
            OnOffAuto::Auto => f.readonly,
        };
        let align = if f.align != 0 {
            f.align.max(page)
        } else {
            self.default_align(len, page)
        };
        Ok(Source {
            fd: Some(fd),
            fd_offset: f.offset,
            len,
            page_size: page,
            align,
            writable: !rom,
        })
    }

    /// Opens `mem-path`: an existing file as is, a missing one created with mode 0600
    /// (recorded in `leftovers` until success), a directory as an unlinked temporary
    /// file. Returns the fd and whether the file is new.
    fn open_mem_path(
        &self,
        path: &Path,
        readonly: bool,
        leftovers: &mut Leftovers,
    ) -> Result<(OwnedFd, bool), Error> {
        let shown = path.display();
        if path.is_dir() {
            if readonly {
                return Err(self.invalid(
                    "readonly",
                    format!(
                        "readonly=on needs an existing file, but mem-path '{shown}' is a directory"
                    ),
                ));
            }
            let prefix = format!("shmvm-{}", self.cfg.id());
            let fd = sys::unlinked_temp_file(path, &prefix).map_err(|e| {
                self.os(
                    "mem-path",
                    format!("can't create a temporary file in '{shown}'"),
                    e,
                )
            })?;
            return Ok((fd, true));
        }
        // An existing file is opened as it is (symbolic links followed, as QEMU
        // does); a new one is created with O_EXCL, which never follows a link. The
        // open never blocks (O_NONBLOCK: a FIFO would wait for a writer), and only
        // regular files and block devices are used.
        for _ in 0..MEM_PATH_ATTEMPTS {
            match OpenOptions::new()
                .read(true)
                .write(!readonly)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
            {
                Ok(file) => return Ok((self.usable_mem_path(path, file.into())?, false)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !readonly => {}
                Err(e) => {
                    return Err(self.os("mem-path", format!("can't open '{shown}'"), e));
                }
            }
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(path)
            {
                Ok(file) => {
                    leftovers.file = Some(path.to_path_buf());
                    return Ok((file.into(), true));
                }
                // A dangling symbolic link: the open finds nothing, O_EXCL finds the
                // link. Never created through (nor retried forever).
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && path.symlink_metadata().is_ok_and(|m| m.is_symlink()) =>
                {
                    return Err(self.invalid(
                        "mem-path",
                        format!(
                            "mem-path '{shown}' is a dangling symbolic link (shmvm does not \
                             create files through links)"
                        ),
                    ));
                }
                // Someone created it between our two opens: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(self.os("mem-path", format!("can't create '{shown}'"), e));
                }
            }
        }
        Err(self.os(
            "mem-path",
            format!("'{shown}' keeps appearing and disappearing"),
            io::Error::from_raw_os_error(libc::EAGAIN),
        ))
    }

    /// Checks that an opened `mem-path` is a regular file or a block device (not a
    /// FIFO, socket or character device) and gives it blocking I/O back.
    fn usable_mem_path(&self, path: &Path, fd: OwnedFd) -> Result<OwnedFd, Error> {
        let shown = path.display();
        let stat = sys::fstat(fd.as_fd())
            .map_err(|e| self.os("mem-path", format!("can't stat '{shown}'"), e))?;
        let kind = match stat.kind {
            FileType::Regular | FileType::BlockDevice => None,
            FileType::Fifo => Some("a FIFO"),
            FileType::CharDevice => Some("a character device"),
            FileType::Socket => Some("a socket"),
            FileType::Directory | FileType::Other => Some("not a regular file"),
        };
        if let Some(kind) = kind {
            return Err(self.invalid(
                "mem-path",
                format!(
                    "mem-path '{shown}' is {kind}: it must be a regular file, a block device \
                     or a directory"
                ),
            ));
        }
        sys::clear_nonblock(fd.as_fd())
            .map_err(|e| self.os("mem-path", format!("can't use '{shown}'"), e))?;
        Ok(fd)
    }

    #[cfg(target_os = "linux")]
    fn memfd_source(&self, m: &MemfdOptions) -> Result<Source, Error> {
        let mut flags = 0;
        if m.seal {
            flags |= libc::MFD_ALLOW_SEALING;
        }
        if m.hugetlb {
            flags |= libc::MFD_HUGETLB;
            if m.hugetlbsize != 0 {
                let kib = m.hugetlbsize / 1024;
                if !Path::new(&format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB")).exists() {
                    return Err(self.invalid(
                        "hugetlbsize",
                        format!(
                            "hugetlbsize={}: the host has no huge pages of that size (see /sys/kernel/mm/hugepages)",
                            m.hugetlbsize
                        ),
                    ));
                }
                flags |= m.hugetlbsize.trailing_zeros() << libc::MFD_HUGE_SHIFT;
            }
        }
        let option = if m.hugetlb { "hugetlb" } else { "seal" };
        let fd = sys::memfd_create(&self.memfd_name("shmvm-"), flags)
            .map_err(|e| self.os(option, "memfd_create".to_string(), e))?;
        let page =
            sys::fd_page_size(fd.as_fd()).map_err(|e| self.os(option, "fstatfs".to_string(), e))?;
        let len = self.len_for_page(page)?;
        sys::ftruncate(fd.as_fd(), len)
            .map_err(|e| self.os("size", format!("can't size the memfd to {len} bytes"), e))?;
        if m.seal {
            sys::add_seals(
                fd.as_fd(),
                libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
            )
            .map_err(|e| self.os("seal", "can't seal the memfd".to_string(), e))?;
        }
        Ok(self.whole_mapping(Some(fd), len, page))
    }

    #[cfg(not(target_os = "linux"))]
    fn memfd_source(&self, _m: &MemfdOptions) -> Result<Source, Error> {
        Err(self.invalid("qom-type", crate::config::MEMFD_UNSUPPORTED.to_string()))
    }

    /// shm_open a fresh random name with O_EXCL and mode 0, unlink it at once.
    fn anonymous_shm(&self) -> Result<OwnedFd, Error> {
        self.anonymous_shm_named(|| anonymous_shm_name(std::process::id(), sys::random_u64()))
    }

    /// [`Ctx::anonymous_shm`] with the name source given (tests pass clashing names).
    fn anonymous_shm_named(&self, mut next_name: impl FnMut() -> String) -> Result<OwnedFd, Error> {
        for _ in 0..SHM_NAME_ATTEMPTS {
            let name = next_name();
            match sys::shm_open(&name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0) {
                Ok(fd) => {
                    sys::shm_unlink(&name).map_err(|e| {
                        self.os("share", format!("can't unlink shm object {name}"), e)
                    })?;
                    return Ok(fd);
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(self.os("share", "can't create a shm object".to_string(), e)),
            }
        }
        Err(self.os(
            "share",
            format!("no free shm name after {SHM_NAME_ATTEMPTS} attempts"),
            io::Error::from_raw_os_error(libc::EEXIST),
        ))
    }

    /// Creates the named object `name` and takes an exclusive flock(2) on it,
    /// held as long as the backend's fd is open: the kernel drops it when this
    /// process dies in any way (SIGKILL too). So a clash tells a live object (its
    /// lock is held) from a stale one (left by a killed shmvm: nobody holds it),
    /// and `reclaim=on` replaces only the stale kind.
    fn named_shm(&self, name: &str, reclaim: bool) -> Result<OwnedFd, Error> {
        let create = || sys::shm_open(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600);
        let fd = match create() {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let held = sys::shm_open(name, libc::O_RDONLY, 0)
                    .and_then(|old| sys::try_lock_exclusive(old.as_fd()).map(|took| !took));
                match held {
                    Ok(true) => {
                        return Err(self.invalid(
                            "name",
                            format!(
                                "name={name}: a shm object with that name already exists and is in \
                                 use by a running shmvm (pick another name)"
                            ),
                        ));
                    }
                    Ok(false) if reclaim => {
                        log::warn!(
                            "{} backend '{}': name={name}: replacing a stale shm object (no \
                             running shmvm held it)",
                            self.cfg.kind(),
                            self.cfg.id()
                        );
                        sys::shm_unlink(name).map_err(|e| {
                            self.os(
                                "reclaim",
                                format!("can't remove stale shm object {name}"),
                                e,
                            )
                        })?;
                        create().map_err(|e| {
                            self.os("name", format!("can't create shm object {name}"), e)
                        })?
                    }
                    Ok(false) => {
                        return Err(self.invalid(
                            "name",
                            format!(
                                "name={name}: a shm object with that name already exists and no \
                                 running shmvm holds it (stale: left by one that was killed, or \
                                 made by another program): remove it, or add reclaim=on to \
                                 replace it"
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(self.os(
                            "name",
                            format!("a shm object {name} exists and can't be inspected"),
                            e,
                        ));
                    }
                }
            }
            Err(e) => return Err(self.os("name", format!("can't create shm object {name}"), e)),
        };
        match sys::try_lock_exclusive(fd.as_fd()) {
            Ok(true) => {}
            Ok(false) => log::warn!("shm object {name}: already locked by another process"),
            Err(e) => log::warn!("shm object {name}: can't lock it: {e}"),
        }
        Ok(fd)
    }

    fn shm_source(&self, s: &ShmOptions, leftovers: &mut Leftovers) -> Result<Source, Error> {
        let page = sys::host_page_size();
        let len = self.len_for_page(page)?;
        let fd = match &s.name {
            None => self.anonymous_shm()?,
            Some(name) => {
                let fd = self.named_shm(name, s.reclaim)?;
                leftovers.shm = Some(name.clone());
                fd
            }
        };
        sys::ftruncate(fd.as_fd(), len).map_err(|e| {
            self.os(
                "size",
                format!("can't size the shm object to {len} bytes"),
                e,
            )
        })?;
        Ok(self.whole_mapping(Some(fd), len, page))
    }

    /// merge, dump and transparent huge pages; failures here only cost performance
    /// or dump size, so they are logged, as QEMU ignores them. Where the host has
    /// no such advice (KSM and THP are Linux's; FreeBSD keeps memory out of core
    /// dumps with MADV_NOCORE, macOS and OpenBSD cannot), it is skipped, as QEMU
    /// skips it (its qemu_madvise fails and nobody looks).
    fn advise(&self, map: &Mapping, page: u64) {
        #[cfg(any(target_os = "linux", target_os = "freebsd"))]
        let advice = |a: libc::c_int, what: &str| {
            if let Err(e) = sys::madvise(map, a) {
                log::warn!(
                    "{} backend '{}': {what}: {e}",
                    self.cfg.kind(),
                    self.cfg.id()
                );
            }
        };
        #[cfg(target_os = "linux")]
        {
            if self.cfg.merge() {
                advice(libc::MADV_MERGEABLE, "merge=on (MADV_MERGEABLE)");
            }
            if !self.cfg.dump() {
                advice(libc::MADV_DONTDUMP, "dump=off (MADV_DONTDUMP)");
            }
            if page == sys::host_page_size() {
                advice(libc::MADV_HUGEPAGE, "MADV_HUGEPAGE");
            }
        }
        #[cfg(target_os = "freebsd")]
        {
            let _ = page;
            if !self.cfg.dump() {
                advice(libc::MADV_NOCORE, "dump=off (MADV_NOCORE)");
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
        {
            let _ = (map, page);
            if !self.cfg.dump() {
                log::debug!(
                    "{} backend '{}': dump=off: this host can't keep memory out of core dumps",
                    self.cfg.kind(),
                    self.cfg.id()
                );
            }
        }
    }

    /// reserve=off (MAP_NORESERVE) only changes anything for private, writable mappings
    /// of base pages, and the kernel ignores it for those when overcommit_memory is 2:
    /// refuse it there instead of silently reserving everything (as QEMU does).
    /// Refuses `prealloc=on` of more than the host can give (hostmem.rs): one
    /// line instead of an OOM kill half way.
    fn check_room(&self, len: u64) -> Result<(), Error> {
        match crate::hostmem::available() {
            Some(a) if len > a.bytes => Err(self.invalid(
                "prealloc",
                format!(
                    "prealloc=on needs {len} bytes ({} MiB) but the host has only {} MiB \
                     available ({})",
                    len >> 20,
                    a.bytes >> 20,
                    a.source
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_noreserve(&self, src: &Source) -> Result<(), Error> {
        let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").ok();
        let hugetlb = src.page_size != sys::host_page_size();
        let shared_fd = self.cfg.share() && src.fd.is_some();
        if noreserve_ignored(overcommit.as_deref(), hugetlb, src.writable, shared_fd) {
            return Err(self.invalid(
                "reserve",
                "reserve=off has no effect while /proc/sys/vm/overcommit_memory is 2 \
                 (the kernel reserves all memory regardless)"
                    .to_string(),
            ));
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    fn bind(&self, map: &Mapping) -> Result<(), Error> {
        use crate::config::HostMemPolicy;
        const MPOL_PREFERRED_MANY: libc::c_int = 5;
        const MPOL_MF_STRICT: libc::c_uint = 1;
        let nodes = self.cfg.host_nodes();
        let policy = self.cfg.policy();
        let mode = match policy {
            HostMemPolicy::Default => libc::MPOL_DEFAULT,
            HostMemPolicy::Preferred if nodes.len() > 1 => MPOL_PREFERRED_MANY,
            HostMemPolicy::Preferred => libc::MPOL_PREFERRED,
            HostMemPolicy::Bind => libc::MPOL_BIND,
            HostMemPolicy::Interleave => libc::MPOL_INTERLEAVE,
        };
        let mut r = sys::mbind(map, mode, nodes, MPOL_MF_STRICT);
        if mode == MPOL_PREFERRED_MANY
            && r.as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // Kernels before 5.15 only prefer one node.
            r = sys::mbind(map, libc::MPOL_PREFERRED, nodes, MPOL_MF_STRICT);
        }
        r.map_err(|e| {
            self.os(
                "host-nodes",
                format!("can't bind memory to host NUMA nodes {nodes:?} with policy {policy:?}"),
                e,
            )
        })
    }
}

// The host tests are written against Linux (/dev/shm, /proc, memfd); they run
// in CI on Linux only. What a macOS or BSD host refuses is tested through
// `BackendConfig::validate_for` in config.rs.
#[cfg(all(test, target_os = "linux"))]
#[path = "backend_tests.rs"]
mod tests;

#[cfg(test)]
mod name_tests {
    #[test]
    fn anonymous_shm_names_fit_the_macos_limit() {
        // PSHMNAMLEN: 31 bytes with the leading slash, for any pid.
        for (pid, random) in [
            (0, 0),
            (u32::MAX, u64::MAX),
            (4_194_304, 0x0123_4567_89ab_cdef),
        ] {
            let name = super::anonymous_shm_name(pid, random);
            assert!(name.len() <= 31, "{name}: {} bytes", name.len());
            assert!(
                name.starts_with("/shmvm-") && !name[1..].contains('/'),
                "{name}"
            );
        }
        assert_ne!(
            super::anonymous_shm_name(1, 1),
            super::anonymous_shm_name(1, 2)
        );
    }
}
