//! A shared mapping of an ivshmem BAR2 (`resource2`) or of a host file, and
//! the bulk operations on it. All of this tool's `unsafe` lives here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::pattern::{self, Checker, Mismatch};

/// Mapping or addressing a region failed.
#[derive(Debug, Error)]
pub enum RegionError {
    #[error("{what} is empty (size 0): nothing to map")]
    Empty { what: String },
    #[error("{what} is {size:#x} bytes, too large to map on this host")]
    TooLarge { what: String, size: u64 },
    #[error("cannot map {what} ({size:#x} bytes): {source}")]
    Map {
        what: String,
        size: u64,
        source: std::io::Error,
    },
    #[error("range {offset:#x}+{len:#x} is outside the region of {size:#x} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

/// Throughput of one bench direction.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Bytes moved in total.
    pub bytes: u64,
    /// Wall time taken.
    pub elapsed: Duration,
    /// Full passes over the range.
    pub passes: u32,
}

impl Throughput {
    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A `MAP_SHARED` read/write mapping of a whole file.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    // Kept open for the lifetime of the mapping (resource2 needs no more, but
    // it documents ownership).
    _file: File,
}

impl Region {
    /// Maps `size` bytes of `file` shared and writable. `what` names the
    /// object in errors (a BDF or a path).
    pub fn map(file: File, size: u64, what: &str) -> Result<Self, RegionError> {
        if size == 0 {
            return Err(RegionError::Empty {
                what: what.to_string(),
            });
        }
        let len = usize::try_from(size).map_err(|_| RegionError::TooLarge {
            what: what.to_string(),
            size,
        })?;
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL), of a file
        // descriptor we own; no existing memory is affected. The result is
        // checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RegionError::Map {
                what: what.to_string(),
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| RegionError::Map {
            what: what.to_string(),
            size,
            source: std::io::Error::other("mmap returned NULL"),
        })?;
        Ok(Self {
            ptr,
            len,
            _file: file,
        })
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> u64 {
        self.len as u64
    }

    /// Checks that `offset..offset+len` lies inside the region; returns it as usizes.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(usize, usize), RegionError> {
        let err = || RegionError::OutOfRange {
            offset,
            len,
            size: self.len as u64,
        };
        let end = offset.checked_add(len).ok_or_else(err)?;
        if end > self.len as u64 {
            return Err(err());
        }
        // Both fit: they are <= self.len, a usize.
        Ok((offset as usize, len as usize))
    }

    /// Copies bytes out of the region (volatile, byte by byte: another
    /// party may be writing concurrently).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), RegionError> {
        let (off, len) = self.check_range(offset, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate().take(len) {
            // SAFETY: off + i < off + len <= self.len, checked above; the
            // mapping is live for &self.
            *b = unsafe { ptr::read_volatile(self.ptr.as_ptr().add(off + i)) };
        }
        Ok(())
    }

    /// Copies bytes into the region (volatile, byte by byte).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), RegionError> {
        let (off, len) = self.check_range(offset, data.len() as u64)?;
        for (i, &b) in data.iter().enumerate().take(len) {
            // SAFETY: off + i < off + len <= self.len, checked above; the
            // mapping is live for &self and writable (PROT_WRITE).
            unsafe { ptr::write_volatile(self.ptr.as_ptr().add(off + i), b) };
        }
        Ok(())
    }

    /// Splits `offset..offset+len` into an unaligned head, a run of aligned
    /// 8-byte words (first word index, count), and an unaligned tail.
    fn split(offset: usize, len: usize) -> (usize, usize, usize) {
        let head = ((8 - offset % 8) % 8).min(len);
        let words = (len - head) / 8;
        let tail = len - head - 8 * words;
        (head, words, tail)
    }

    /// Writes the pattern for `seed` over the range.
    pub fn fill_pattern(&self, seed: u64, offset: u64, len: u64) -> Result<(), RegionError> {
        let (off, n) = self.check_range(offset, len)?;
        let (head, words, tail) = Self::split(off, n);
        let mut bytes = vec![0u8; head.max(tail)];
        pattern::fill(seed, offset, &mut bytes[..head]);
        self.write(offset, &bytes[..head])?;
        let first = (off + head) / 8;
        let base = self.ptr.as_ptr().cast::<u64>();
        for i in 0..words {
            let v = pattern::word(seed, (first + i) as u64);
            // SAFETY: word first+i covers bytes 8*(first+i) .. +8, all inside
            // off..off+n (checked); the mapping is page aligned so the u64 is aligned.
            unsafe { ptr::write_volatile(base.add(first + i), v) };
        }
        let tail_off = (off + head + 8 * words) as u64;
        pattern::fill(seed, tail_off, &mut bytes[..tail]);
        self.write(tail_off, &bytes[..tail])
    }

    /// Checks the range against the pattern for `seed`.
    pub fn verify_pattern(
        &self,
        seed: u64,
        offset: u64,
        len: u64,
    ) -> Result<Option<Mismatch>, RegionError> {
        let (off, n) = self.check_range(offset, len)?;
        let (head, words, tail) = Self::split(off, n);
        let mut checker = Checker::default();
        let mut bytes = vec![0u8; head.max(tail)];
        self.read(offset, &mut bytes[..head])?;
        checker.check(seed, offset, &bytes[..head]);
        let first = (off + head) / 8;
        let base = self.ptr.as_ptr().cast::<u64>();
        const CHUNK: usize = 4096;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut i = 0;
        while i < words {
            chunk.clear();
            let n = CHUNK.min(words - i);
            for j in 0..n {
                // SAFETY: as in fill_pattern: an aligned word inside the checked range.
                chunk.push(unsafe { ptr::read_volatile(base.add(first + i + j)) });
            }
            checker.check_words(seed, 8 * (first + i) as u64, &chunk);
            i += n;
        }
        let tail_off = (off + head + 8 * words) as u64;
        self.read(tail_off, &mut bytes[..tail])?;
        checker.check(seed, tail_off, &bytes[..tail]);
        Ok(checker.finish())
    }

    /// Measures write and read bandwidth over the range (aligned to 8 bytes
    /// inward): at least one pass each, repeated until `min_time` has passed.
    pub fn bench(
        &self,
        offset: u64,
        len: u64,
        min_time: Duration,
    ) -> Result<(Throughput, Throughput), RegionError> {
        let (off, n) = self.check_range(offset, len)?;
        let (head, words, _) = Self::split(off, n);
        let first = (off + head) / 8;
        let base = self.ptr.as_ptr().cast::<u64>();
        let run = |f: &mut dyn FnMut(u64)| {
            let start = Instant::now();
            let mut passes = 0u32;
            while passes == 0 || start.elapsed() < min_time {
                f(u64::from(passes));
                passes += 1;
            }
            Throughput {
                bytes: 8 * words as u64 * u64::from(passes),
                elapsed: start.elapsed(),
                passes,
            }
        };
        let write = run(&mut |pass| {
            for i in 0..words {
                // SAFETY: an aligned word inside the checked range.
                unsafe { ptr::write_volatile(base.add(first + i), pass ^ i as u64) };
            }
        });
        let mut sink = 0u64;
        let read = run(&mut |_| {
            for i in 0..words {
                // SAFETY: an aligned word inside the checked range.
                sink = sink.wrapping_add(unsafe { ptr::read_volatile(base.add(first + i)) });
            }
        });
        std::hint::black_box(sink);
        Ok((write, read))
    }
}

impl Region {
    /// The aligned `T` at `off`, for the protocol crate's word accesses.
    /// Panics outside the region or unaligned (the [`protocol::Shared`]
    /// contract: the protocols check offsets they read from the region).
    fn word_ptr<T>(&self, off: u64) -> *mut T {
        let size = std::mem::size_of::<T>();
        let ok = off.is_multiple_of(size as u64)
            && off
                .checked_add(size as u64)
                .is_some_and(|end| end <= self.len as u64);
        assert!(
            ok,
            "word at {off:#x} outside the region of {:#x} bytes",
            self.len
        );
        // SAFETY: off + size <= self.len (checked), so the result points into
        // the mapping; the mapping is page aligned, so off aligned to size is too.
        unsafe { self.ptr.as_ptr().add(off as usize).cast::<T>() }
    }
}

/// The test kernel's protocols (`ivshmem-tool handshake`, `slots`) run over
/// the mapping with volatile word accesses.
impl protocol::Shared for Region {
    fn size(&self) -> u64 {
        self.len as u64
    }
    fn read32(&self, off: u64) -> u32 {
        // SAFETY: word_ptr returns an aligned pointer inside the live mapping.
        unsafe { ptr::read_volatile(self.word_ptr(off)) }
    }
    fn write32(&self, off: u64, v: u32) {
        // SAFETY: as read32; the mapping is writable (PROT_WRITE).
        unsafe { ptr::write_volatile(self.word_ptr(off), v) }
    }
    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as read32.
        unsafe { ptr::read_volatile(self.word_ptr(off)) }
    }
    fn write64(&self, off: u64, v: u64) {
        // SAFETY: as write32.
        unsafe { ptr::write_volatile(self.word_ptr(off), v) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    fn temp_region(size: u64) -> (Region, File) {
        let path =
            std::env::temp_dir().join(format!("ivshmem-tool-test-{}-{size}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        std::fs::remove_file(&path).expect("unlink temp file");
        f.set_len(size).expect("size temp file");
        let other = f.try_clone().expect("dup");
        (Region::map(f, size, "temp").expect("map temp file"), other)
    }

    #[test]
    fn split_covers_range() {
        for off in 0..17 {
            for len in 0..40 {
                let (h, w, t) = Region::split(off, len);
                assert_eq!(h + 8 * w + t, len);
                if w > 0 {
                    assert_eq!((off + h) % 8, 0);
                }
                assert!(t < 8 || w == 0);
            }
        }
    }

    #[test]
    fn fill_verify_unaligned_range_and_file_content() {
        let (r, mut f) = temp_region(8192);
        r.fill_pattern(77, 3, 5000).expect("fill");
        assert_eq!(r.verify_pattern(77, 3, 5000).expect("verify"), None);
        assert_eq!(
            r.verify_pattern(77, 100, 17).expect("verify sub-range"),
            None
        );
        // The bytes reached the file (MAP_SHARED) exactly where the pattern says.
        let mut buf = vec![0u8; 5010];
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_exact(&mut buf).expect("read file");
        let mut want = vec![0u8; 5000];
        pattern::fill(77, 3, &mut want);
        assert_eq!(&buf[3..5003], &want[..]);
        assert_eq!(&buf[..3], &[0, 0, 0]);
        assert_eq!(&buf[5003..], &[0u8; 7]);
    }

    #[test]
    fn verify_reports_first_bad_byte() {
        let (r, _f) = temp_region(4096);
        r.fill_pattern(1, 0, 4096).expect("fill");
        r.write(1000, &[!pattern::byte_at(1, 1000)])
            .expect("corrupt");
        let m = r
            .verify_pattern(1, 0, 4096)
            .expect("verify")
            .expect("mismatch");
        assert_eq!((m.first_offset, m.count), (1000, 1));
        assert!(r.verify_pattern(2, 0, 64).expect("verify").is_some());
    }

    #[test]
    fn read_write_roundtrip_and_bounds() {
        let (r, _f) = temp_region(4096);
        r.write(4090, b"abcdef").expect("write at end");
        let mut b = [0u8; 6];
        r.read(4090, &mut b).expect("read");
        assert_eq!(&b, b"abcdef");
        assert!(matches!(
            r.write(4091, b"abcdef"),
            Err(RegionError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.read(u64::MAX, &mut b),
            Err(RegionError::OutOfRange { .. })
        ));
        assert!(r.fill_pattern(0, 0, 4097).is_err());
    }

    #[test]
    fn bench_moves_bytes() {
        let (r, _f) = temp_region(1 << 16);
        let (w, rd) = r
            .bench(0, 1 << 16, Duration::from_millis(1))
            .expect("bench");
        assert!(w.passes >= 1 && rd.passes >= 1);
        assert_eq!(w.bytes, (1 << 16) * u64::from(w.passes));
        assert!(w.mb_per_s() > 0.0 && rd.mb_per_s() > 0.0);
    }

    #[test]
    fn empty_file_is_an_error() {
        let path = std::env::temp_dir().join(format!("ivshmem-tool-empty-{}", std::process::id()));
        let f = File::create(&path).expect("temp file");
        std::fs::remove_file(&path).expect("unlink");
        assert!(matches!(
            Region::map(f, 0, "x"),
            Err(RegionError::Empty { .. })
        ));
    }
}
