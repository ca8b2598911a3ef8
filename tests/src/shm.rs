//! The host side of the test kernel's ivshmem protocols (see
//! guest/testkernel/README.md and src/ivshmem.rs there, the reference for
//! the patterns): a shared region opened the way any host process would
//! (a file under /dev/shm, or a named POSIX shm object via `shm_open`), the
//! two-pattern handshake, and the multi-party slots.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

pub const HDR_MAGIC: usize = 0x00;
pub const HDR_STATE: usize = 0x08;
pub const HDR_SEED: usize = 0x10;
pub const HDR_DATA_OFF: usize = 0x18;
pub const HDR_DATA_LEN: usize = 0x20;
pub const MAGIC: u32 = 0x564D_4853;
pub const STATE_GUEST_WROTE: u32 = 1;
pub const STATE_HOST_WROTE: u32 = 2;
pub const STATE_GUEST_OK: u32 = 3;
pub const STATE_GUEST_BAD: u32 = 4;
pub const STATE_HOST_BAD: u32 = 5;
pub const SLOT_SIZE: usize = 0x1000;
pub const SLOT_MAGIC: u64 = 0x544F_4C53_564D_4853;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Pattern P1 (the guest's) at byte offset `o` of the region.
pub fn p1(o: u64, seed: u64) -> u64 {
    o.wrapping_mul(GOLDEN) ^ seed
}

/// Pattern P2 (the host's).
pub fn p2(o: u64, seed: u64) -> u64 {
    !p1(o, seed)
}

/// Slot word `i` of party `n`.
pub fn slot_word(seed: u64, n: u64, i: u64) -> u64 {
    (seed ^ ((n + 1) << 32) ^ i).wrapping_mul(GOLDEN)
}

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

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: usize, n: usize) {
        assert!(
            off.is_multiple_of(n) && off + n <= self.len,
            "offset {off:#x} outside the region"
        );
    }

    pub fn rd32(&self, off: usize) -> u32 {
        self.check(off, 4);
        // SAFETY: in bounds and aligned (checked); the mapping lives in self.
        // Volatile: another process or VM writes it concurrently.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    pub fn wr32(&self, off: usize, v: u32) {
        self.check(off, 4);
        // SAFETY: as rd32.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }

    pub fn rd64(&self, off: usize) -> u64 {
        self.check(off, 8);
        // SAFETY: as rd32.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u64>()) }
    }

    pub fn wr64(&self, off: usize, v: u64) {
        self.check(off, 8);
        // SAFETY: as rd32.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u64>(), v) }
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

fn wait_for(
    what: &str,
    deadline: Instant,
    mut done: impl FnMut() -> Option<Result<(), String>>,
) -> Result<(), String> {
    loop {
        if let Some(r) = done() {
            return r;
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The host half of the handshake: wait for the guest's P1, verify it,
/// write P2, wait for the guest's verdict. Returns the data length checked.
pub fn handshake(r: &Region, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    wait_for("the guest's pattern (state 1)", deadline, || {
        (r.rd32(HDR_MAGIC) == MAGIC && r.rd32(HDR_STATE) == STATE_GUEST_WROTE).then_some(Ok(()))
    })?;
    fence(Ordering::Acquire);
    let seed = r.rd64(HDR_SEED);
    let (off, len) = (r.rd64(HDR_DATA_OFF), r.rd64(HDR_DATA_LEN));
    let end = off
        .checked_add(len)
        .filter(|&e| e <= r.len() as u64 && off.is_multiple_of(8));
    let Some(end) = end else {
        r.wr32(HDR_STATE, STATE_HOST_BAD);
        return Err(format!(
            "bad header: data at {off:#x}+{len:#x} in a {:#x} region",
            r.len()
        ));
    };
    for o in (off..end).step_by(8) {
        let (got, want) = (r.rd64(o as usize), p1(o, seed));
        if got != want {
            r.wr32(HDR_STATE, STATE_HOST_BAD);
            return Err(format!(
                "P1 mismatch at {o:#x}: got {got:#x}, want {want:#x}"
            ));
        }
    }
    for o in (off..end).step_by(8) {
        r.wr64(o as usize, p2(o, seed));
    }
    fence(Ordering::Release);
    r.wr32(HDR_STATE, STATE_HOST_WROTE);
    wait_for("the guest's verdict (state 3)", deadline, || {
        match r.rd32(HDR_STATE) {
            STATE_GUEST_OK => Some(Ok(())),
            STATE_GUEST_BAD => Some(Err("the guest saw a P2 mismatch".to_string())),
            _ => None,
        }
    })?;
    Ok(len)
}

/// One party of the slots protocol: write slot `me`, wait until all
/// `parties` slots are written, verify every one.
pub fn slots(
    r: &Region,
    me: u64,
    parties: u64,
    seed: u64,
    timeout: Duration,
) -> Result<(), String> {
    if parties == 0 || me >= parties || parties as usize * SLOT_SIZE > r.len() {
        return Err(format!(
            "bad slot {me} of {parties} for a {:#x} region",
            r.len()
        ));
    }
    let deadline = Instant::now() + timeout;
    let base = me as usize * SLOT_SIZE;
    for i in 4..(SLOT_SIZE / 8) as u64 {
        r.wr64(base + 8 * i as usize, slot_word(seed, me, i));
    }
    r.wr64(base + 8, me);
    r.wr64(base + 16, parties);
    r.wr64(base + 24, seed);
    fence(Ordering::Release);
    r.wr64(base, SLOT_MAGIC);
    for n in 0..parties {
        let s = n as usize * SLOT_SIZE;
        wait_for(&format!("slot {n}"), deadline, || {
            (r.rd64(s) == SLOT_MAGIC && r.rd64(s + 8) == n && r.rd64(s + 24) == seed)
                .then_some(Ok(()))
        })?;
        fence(Ordering::Acquire);
        if r.rd64(s + 16) != parties {
            return Err(format!(
                "slot {n} says {} parties, not {parties}",
                r.rd64(s + 16)
            ));
        }
        for i in 4..(SLOT_SIZE / 8) as u64 {
            let (got, want) = (r.rd64(s + 8 * i as usize), slot_word(seed, n, i));
            if got != want {
                return Err(format!("slot {n} word {i}: got {got:#x}, want {want:#x}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_region(len: u64) -> (std::path::PathBuf, Region) {
        let p = std::env::temp_dir().join(format!("shmvm-shm-test-{}-{len}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        let r = Region::open_file(&p).unwrap();
        (p, r)
    }

    #[test]
    fn handshake_against_a_simulated_guest_thread() {
        let (p, host) = temp_region(0x4000);
        let guest = Region::open_file(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let seed = 0x1234;
        let t = std::thread::spawn(move || {
            guest.wr64(HDR_SEED, seed);
            guest.wr64(HDR_DATA_OFF, 0x1000);
            guest.wr64(HDR_DATA_LEN, 0x3000);
            for o in (0x1000..0x4000u64).step_by(8) {
                guest.wr64(o as usize, p1(o, seed));
            }
            guest.wr32(HDR_MAGIC, MAGIC);
            guest.wr32(HDR_STATE, STATE_GUEST_WROTE);
            while guest.rd32(HDR_STATE) != STATE_HOST_WROTE {
                std::hint::spin_loop();
            }
            let ok = (0x1000..0x4000u64)
                .step_by(8)
                .all(|o| guest.rd64(o as usize) == p2(o, seed));
            guest.wr32(HDR_STATE, if ok { STATE_GUEST_OK } else { STATE_GUEST_BAD });
        });
        assert_eq!(handshake(&host, Duration::from_secs(10)), Ok(0x3000));
        t.join().unwrap();
    }

    #[test]
    fn handshake_reports_a_wrong_pattern() {
        let (p, r) = temp_region(0x2000);
        std::fs::remove_file(&p).unwrap();
        r.wr64(HDR_DATA_OFF, 0x1000);
        r.wr64(HDR_DATA_LEN, 0x1000);
        r.wr32(HDR_MAGIC, MAGIC);
        r.wr32(HDR_STATE, STATE_GUEST_WROTE);
        let e = handshake(&r, Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("P1 mismatch at 0x1000"), "{e}");
        assert_eq!(r.rd32(HDR_STATE), STATE_HOST_BAD);
    }

    #[test]
    fn slots_time_out_naming_the_missing_party() {
        let (p, r) = temp_region(0x4000);
        let other = Region::open_file(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let e = slots(&r, 0, 2, 7, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e, "timed out waiting for slot 1");
        let t = std::thread::spawn(move || slots(&other, 1, 2, 7, Duration::from_secs(5)));
        slots(&r, 0, 2, 7, Duration::from_secs(5)).unwrap();
        t.join().unwrap().unwrap();
    }
}
