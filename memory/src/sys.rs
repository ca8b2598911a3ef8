//! Safe wrappers over the system calls the backends make. Apart from the page-touching
//! loop in `prealloc`, all of the crate's `unsafe` is in this file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::ptr;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

/// The host's base page size.
pub(crate) fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // POSIX requires _SC_PAGESIZE, and no guess is right everywhere (16 KiB
    // on Apple silicon, 4 KiB or 64 KiB on arm64 Linux).
    u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .expect("sysconf(_SC_PAGESIZE) gives the page size")
}

/// Number of online CPUs.
pub(crate) fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A mapped address range, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    addr: usize,
    len: usize,
}

// SAFETY: a Mapping is an address range owned by this value; it holds no thread-bound
// state, and every access to the memory goes through raw pointers whose users are
// responsible for synchronisation (as with any shared guest memory).
unsafe impl Send for Mapping {}
// SAFETY: see Send; &Mapping only hands out the address.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: [addr, addr+len) was mapped by `map` and is owned by this value only.
        let ret = unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        if ret != 0 {
            log::error!(
                "munmap({:#x}, {:#x}) failed: {}",
                self.addr,
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

/// What to map.
#[derive(Debug)]
pub(crate) struct MapRequest<'a> {
    pub len: usize,
    /// Alignment of the address (a power of two; <= page size means none).
    pub align: usize,
    pub writable: bool,
    pub shared: bool,
    pub noreserve: bool,
    /// File and offset, or None for anonymous memory.
    pub fd: Option<(BorrowedFd<'a>, u64)>,
}

/// mmap(2) with an aligned address.
pub(crate) fn map(req: &MapRequest<'_>) -> io::Result<Mapping> {
    let page = host_page_size() as usize;
    let align = req.align.max(page);
    let prot = if req.writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let mut flags = if req.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    if req.noreserve {
        #[cfg(target_os = "linux")]
        {
            flags |= libc::MAP_NORESERVE;
        }
    }
    let (fd, offset) = match req.fd {
        Some((fd, off)) => (fd.as_raw_fd(), off),
        None => {
            flags |= libc::MAP_ANONYMOUS;
            (-1, 0)
        }
    };
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    let reserve_len = req
        .len
        .checked_add(align - page)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // Reserve address space big enough to hold an aligned range, then map over it.
    // SAFETY: a fresh PROT_NONE anonymous mapping at a kernel-chosen address touches
    // no existing memory.
    let reserve = unsafe {
        libc::mmap(
            ptr::null_mut(),
            reserve_len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve_flag(),
            -1,
            0,
        )
    };
    if reserve == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = reserve as usize;
    let reservation = Mapping {
        addr: base,
        len: reserve_len,
    };
    let aligned = base.next_multiple_of(align);
    // SAFETY: [aligned, aligned+len) lies inside `reservation`, which we own; MAP_FIXED
    // replaces only that part of it.
    let addr = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            req.len,
            prot,
            flags | libc::MAP_FIXED,
            fd,
            offset,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error()); // `reservation` unmaps everything
    }
    std::mem::forget(reservation);
    let head = aligned - base;
    let tail = base + reserve_len - (aligned + req.len);
    if head > 0 {
        drop(Mapping {
            addr: base,
            len: head,
        });
    }
    if tail > 0 {
        drop(Mapping {
            addr: aligned + req.len,
            len: tail,
        });
    }
    Ok(Mapping {
        addr: aligned,
        len: req.len,
    })
}

fn noreserve_flag() -> libc::c_int {
    #[cfg(target_os = "linux")]
    {
        libc::MAP_NORESERVE
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// madvise(2) over a whole mapping.
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
pub(crate) fn madvise(m: &Mapping, advice: libc::c_int) -> io::Result<()> {
    madvise_range(m.addr, m.len, advice)
}

#[cfg(any(target_os = "linux", target_os = "freebsd"))]
fn madvise_range(addr: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: callers pass a range inside a mapping they own; the advice values used
    // here (merge, dump, huge pages, populate, FreeBSD's nocore) do not discard data.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) }).map(|_| ())
}

/// Whether the kernel knows MADV_POPULATE_WRITE (Linux 5.14+).
#[cfg(target_os = "linux")]
pub(crate) fn populate_supported() -> bool {
    // A zero-length madvise succeeds for every advice the kernel knows.
    // SAFETY: a zero-length range touches no memory.
    unsafe { libc::madvise(ptr::null_mut(), 0, libc::MADV_POPULATE_WRITE) == 0 }
}

/// Faults in [addr, addr+len) of mapping `m` with MADV_POPULATE_WRITE (or _READ for a
/// read-only mapping). Fails with an error where touching would have raised SIGBUS.
#[cfg(target_os = "linux")]
pub(crate) fn populate(m: &Mapping, start: usize, len: usize, write: bool) -> io::Result<()> {
    assert!(start.checked_add(len).is_some_and(|end| end <= m.len));
    let advice = if write {
        libc::MADV_POPULATE_WRITE
    } else {
        libc::MADV_POPULATE_READ
    };
    loop {
        match madvise_range(m.addr + start, len, advice) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// Touches one byte per `step` in [start, start+len) of `m`, keeping its value.
///
/// Only for ranges whose backing store is known to exist (anonymous memory, or a file
/// range that fallocate has allocated), so the accesses cannot raise SIGBUS.
pub(crate) fn touch(m: &Mapping, start: usize, len: usize, step: usize, write: bool) {
    assert!(start.checked_add(len).is_some_and(|end| end <= m.len));
    let mut off = start;
    while off < start + len {
        let p = (m.addr + off) as *mut u8;
        // SAFETY: p is inside the mapping `m`, which stays mapped while borrowed; the
        // byte is written back with the value just read, so concurrent readers of the
        // shared memory see no change (QEMU's touch loop does the same).
        unsafe {
            let v = ptr::read_volatile(p);
            if write {
                ptr::write_volatile(p, v);
            }
        }
        off += step;
    }
}

/// mincore(2): how many of the pages of [start, start+len) of `m` are resident.
#[cfg(not(target_os = "openbsd"))]
pub(crate) fn resident_pages(m: &Mapping, start: usize, len: usize) -> io::Result<usize> {
    assert!(start.checked_add(len).is_some_and(|end| end <= m.len));
    let page = host_page_size() as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: the range is inside a mapping we own and `vec` has one byte per page.
    cvt(unsafe {
        libc::mincore(
            (m.addr + start) as *mut libc::c_void,
            len,
            vec.as_mut_ptr().cast(),
        )
    })?;
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count())
}

/// OpenBSD removed mincore(2) (6.5): residency is unknown there.
#[cfg(target_os = "openbsd")]
pub(crate) fn resident_pages(m: &Mapping, start: usize, len: usize) -> io::Result<usize> {
    let _ = (m, start, len);
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// memfd_create(2) with MFD_CLOEXEC added.
#[cfg(target_os = "linux")]
pub(crate) fn memfd_create(name: &str, flags: libc::c_uint) -> io::Result<OwnedFd> {
    let name = cstring(name.as_bytes())?;
    // SAFETY: name is a valid C string; the returned fd is new and owned by us.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_CLOEXEC) })?;
    // SAFETY: fd was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// F_ADD_SEALS.
#[cfg(target_os = "linux")]
pub(crate) fn add_seals(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd with an int argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(|_| ())
}

/// F_GET_SEALS.
#[cfg(target_os = "linux")]
pub(crate) fn get_seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: fcntl on a valid fd, no pointer argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

/// shm_open(3) with O_CLOEXEC (the O_EXCL etc. flags come from the caller).
pub(crate) fn shm_open(name: &str, oflag: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let name = cstring(name.as_bytes())?;
    // macOS declares shm_open variadic (the mode is promoted to an unsigned int);
    // the others take a mode_t.
    #[cfg(target_os = "macos")]
    let mode = libc::c_uint::from(mode);
    // SAFETY: name is a valid C string; the returned fd is new and owned by us.
    let fd = cvt(unsafe { libc::shm_open(name.as_ptr(), oflag | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// shm_unlink(3).
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    let name = cstring(name.as_bytes())?;
    // SAFETY: name is a valid C string.
    cvt(unsafe { libc::shm_unlink(name.as_ptr()) }).map(|_| ())
}

/// ftruncate(2).
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: ftruncate on a valid fd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }).map(|_| ())
}

/// What an open file is (the type bits of `st_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileType {
    Regular,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
    Directory,
    Other,
}

/// What [`fstat`] tells of an open file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileStat {
    pub size: u64,
    pub kind: FileType,
}

/// fstat(2): size and type of an open file.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st points to writable memory of the right size.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled st.
    let st = unsafe { st.assume_init() };
    // mode_t is u16 on macOS and u32 elsewhere: compared as mode_t.
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileType::Regular,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFIFO => FileType::Fifo,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFDIR => FileType::Directory,
        _ => FileType::Other,
    };
    Ok(FileStat {
        size: u64::try_from(st.st_size).unwrap_or(0),
        kind,
    })
}

/// The page size of the file system holding `fd` (the huge page size on hugetlbfs).
pub(crate) fn fd_page_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: st points to writable memory of the right size.
        cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
        // SAFETY: fstatfs succeeded, so it filled st.
        let st = unsafe { st.assume_init() };
        // The field's type differs between libcs.
        #[allow(clippy::unnecessary_cast)]
        let hugetlbfs = st.f_type as i64 == libc::HUGETLBFS_MAGIC as i64;
        if hugetlbfs {
            return Ok(st.f_bsize as u64);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
    Ok(host_page_size())
}

/// An unnamed temporary file in `dir`: O_TMPFILE where the file system has it, else
/// mkstemp + unlink at once. Mode 0600.
pub(crate) fn unlinked_temp_file(dir: &Path, prefix: &str) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = cstring(dir.as_os_str().as_bytes())?;
        // SAFETY: c is a valid C string; the returned fd is new and owned by us.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just returned by the kernel and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
        ) {
            return Err(e);
        }
    }
    let mut template = dir
        .join(format!("{prefix}.XXXXXX"))
        .into_os_string()
        .into_vec();
    template.push(0);
    // SAFETY: template is a NUL-terminated, writable buffer ending in XXXXXX.
    let fd = cvt(unsafe { libc::mkstemp(template.as_mut_ptr().cast()) })?;
    // SAFETY: fd was just returned by the kernel and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: template is still the NUL-terminated path mkstemp filled in.
    cvt(unsafe { libc::unlink(template.as_ptr().cast()) })?;
    Ok(fd)
}

/// fallocate(2) mode 0 (allocate): makes sure the backing store of a file range exists.
pub(crate) fn allocate(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: fallocate on a valid fd, no pointers.
        cvt(unsafe { libc::fallocate(fd.as_raw_fd(), 0, off, len) }).map(|_| ())
    }
    #[cfg(target_os = "freebsd")]
    {
        // SAFETY: posix_fallocate on a valid fd, no pointers.
        match unsafe { libc::posix_fallocate(fd.as_raw_fd(), off, len) } {
            0 => Ok(()),
            // FreeBSD answers EINVAL where the file system can't (ZFS).
            libc::EINVAL => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
    // No posix_fallocate on macOS and OpenBSD (and QEMU allocates nothing there
    // either: it touches the pages).
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        let _ = (fd, off, len);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
}

/// Frees the backing store of a file range (discard-data).
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let off =
            libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: fallocate on a valid fd, no pointers.
        cvt(unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        })
        .map(|_| ())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, offset, len);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
}

/// mbind(2) over a whole mapping. `nodes` are node numbers below 128.
#[cfg(target_os = "linux")]
pub(crate) fn mbind(
    m: &Mapping,
    mode: libc::c_int,
    nodes: &[u32],
    flags: libc::c_uint,
) -> io::Result<()> {
    // 129 bits: the kernel drops the last bit of maxnode (QEMU passes maxnode + 1 too).
    let mut mask = [0 as libc::c_ulong; 3];
    let bits = libc::c_ulong::BITS;
    let mut maxnode = 0;
    for &n in nodes {
        mask[(n / bits) as usize] |= 1 << (n % bits);
        maxnode = maxnode.max(n + 1);
    }
    // SAFETY: the range is a mapping we own; mask holds at least maxnode + 1 bits.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            m.addr,
            m.len,
            mode,
            mask.as_ptr(),
            libc::c_ulong::from(maxnode + 1),
            flags,
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// 64 random bits (for shm names); not cryptographic, only unlikely to collide.
pub(crate) fn random_u64() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut v = 0u64;
        // SAFETY: writes at most 8 bytes into v.
        let n = unsafe { libc::getrandom((&raw mut v).cast(), 8, libc::GRND_NONBLOCK) };
        if n == 8 {
            return v;
        }
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// The raw value of an optional fd, for logging.
pub(crate) fn raw(fd: Option<&OwnedFd>) -> RawFd {
    fd.map_or(-1, |f| f.as_raw_fd())
}

/// Clears O_NONBLOCK on `fd` (files are opened non-blocking so a FIFO or a
/// device never blocks the open; regular files then get blocking I/O back).
pub(crate) fn clear_nonblock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd, no pointer argument.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: fcntl on a valid fd with an int argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })
        .map(|_| ())
}

/// flock(2) with LOCK_EX | LOCK_NB: `Ok(true)` when taken, `Ok(false)` when
/// another open file description holds it.
pub(crate) fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock on a valid fd, no pointer argument.
    match cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `fd` is on tmpfs (its pages are memory, not a disk's page cache).
pub(crate) fn fd_on_tmpfs(fd: BorrowedFd<'_>) -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: st points to writable memory of the right size.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: fstatfs succeeded, so it filled st.
        let st = unsafe { st.assume_init() };
        // The field's type differs between libcs.
        #[allow(clippy::unnecessary_cast)]
        return st.f_type as i64 == libc::TMPFS_MAGIC as i64;
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        false
    }
}
