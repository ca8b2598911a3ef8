//! A host mapping of a shared region, opened the way any host process would
//! (a file under /dev/shm, or a named POSIX shm object via `shm_open`), and
//! the host halves of the test kernel's protocols over it. The protocols
//! themselves (layouts, patterns, states) are the protocol crate's
//! (`guest/protocol`), shared with the test kernel.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

pub use protocol::Error;

/// A shared mapping of a whole file or shm object.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
    _fd: OwnedFd,
}

impl Region {
    /// Maps the file at `path` (e.g. /dev/shm/NAME) shared, read-write.
    pub fn open_file(path: &Path) -> io::Result<Region> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Region::map(OwnedFd::from(f))
    }

    /// Opens the POSIX shm object `name` ("/NAME") with `shm_open`.
    pub fn open_shm(name: &str) -> io::Result<Region> {
        let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `c` is a valid NUL-terminated string; the result is checked.
        let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by shm_open and is owned by nobody else.
        Region::map(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens a region named `spec`: `shm:/NAME` or a file path.
    pub fn open(spec: &str) -> io::Result<Region> {
        match spec.strip_prefix("shm:") {
            Some(name) => Region::open_shm(name),
            None => Region::open_file(Path::new(spec)),
        }
    }

    /// Retries `open` until the object exists with a non-zero size.
    pub fn open_wait(spec: &str, timeout: Duration) -> io::Result<Region> {
        let t0 = Instant::now();
        loop {
            match Region::open(spec) {
                Ok(r) => return Ok(r),
                Err(e) if t0.elapsed() > timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn map(fd: OwnedFd) -> io::Result<Region> {
        // SAFETY: fstat on a valid fd into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(st.st_size).unwrap_or(0);
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "region is empty",
            ));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            ptr: ptr.cast(),
            len,
            _fd: fd,
        })
    }

    pub fn len(&self) -> u64 {
        self.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The aligned `T` at byte offset `off`; panics outside the region
    /// (a test bug: the protocols check offsets they read from it).
    fn word<T>(&self, off: u64) -> *mut T {
        let n = std::mem::size_of::<T>() as u64;
        assert!(
            off.is_multiple_of(n) && off.checked_add(n).is_some_and(|e| e <= self.len as u64),
            "offset {off:#x} outside the region"
        );
        // SAFETY: off + n <= len (checked): the pointer stays in the mapping,
        // which is page aligned, so `off` aligned to n is aligned for T.
        unsafe { self.ptr.add(off as usize).cast::<T>() }
    }

    pub fn rd32(&self, off: u64) -> u32 {
        protocol::Shared::read32(self, off)
    }

    pub fn rd64(&self, off: u64) -> u64 {
        protocol::Shared::read64(self, off)
    }
}

/// Volatile accesses: another process or VM writes the region concurrently.
impl protocol::Shared for Region {
    fn size(&self) -> u64 {
        self.len as u64
    }
    fn read32(&self, off: u64) -> u32 {
        // SAFETY: `word` returns an aligned pointer into the live mapping.
        unsafe { std::ptr::read_volatile(self.word(off)) }
    }
    fn write32(&self, off: u64, v: u32) {
        // SAFETY: as read32; the mapping is PROT_WRITE.
        unsafe { std::ptr::write_volatile(self.word(off), v) }
    }
    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as read32.
        unsafe { std::ptr::read_volatile(self.word(off)) }
    }
    fn write64(&self, off: u64, v: u64) {
        // SAFETY: as write32.
        unsafe { std::ptr::write_volatile(self.word(off), v) }
    }
}

// SAFETY: the mapping is owned by the Region and only accessed through
// volatile reads/writes, which are fine from any thread.
unsafe impl Send for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The protocols' clock: a deadline, polled every 200 us.
#[derive(Debug)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now() + timeout)
    }
}

impl protocol::Clock for Deadline {
    fn expired(&mut self) -> bool {
        Instant::now() > self.0
    }
    fn pause(&mut self) {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The host half of the handshake ([`protocol::host_handshake`]).
pub fn handshake(r: &Region, timeout: Duration) -> Result<u64, Error> {
    protocol::host_handshake(r, &mut Deadline::after(timeout))
}

/// One party of the slots protocol ([`protocol::slots`]).
pub fn slots(r: &Region, me: u64, parties: u64, seed: u64, timeout: Duration) -> Result<(), Error> {
    protocol::slots(r, me, parties, seed, &mut Deadline::after(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Shared;

    #[test]
    fn two_mappings_of_one_file_see_each_others_words() {
        let p = std::env::temp_dir().join(format!("shmvm-shm-test-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(0x2000).unwrap();
        let (a, b) = (
            Region::open_file(&p).unwrap(),
            Region::open(p.to_str().unwrap()).unwrap(),
        );
        std::fs::remove_file(&p).unwrap();
        a.write64(0x1ff8, 0x1122_3344_5566_7788);
        b.write32(4, 0xabcd);
        assert_eq!(
            (b.rd64(0x1ff8), a.rd32(4), a.len()),
            (0x1122_3344_5566_7788, 0xabcd, 0x2000)
        );
    }
}
