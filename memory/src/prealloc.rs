//! Preallocation: fault in every page of a mapping, in parallel, before a guest runs.
//!
//! Where the kernel has MADV_POPULATE_WRITE (Linux 5.14+), each thread populates its
//! share of the range with one madvise call; a page that cannot be backed (no huge
//! pages left, file system full) makes madvise fail with an error instead of raising
//! SIGBUS. Without it, the fallback first makes sure the backing store exists (the
//! mapping is anonymous, or fallocate allocated the file range) and only then touches
//! one byte per page, so the touch loop cannot fault either.

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys::{self, Mapping};

/// QEMU's cap on preallocation threads.
const MAX_THREADS: usize = 16;
/// QEMU starts no extra thread for less than this much memory.
const MIN_BYTES_PER_THREAD: usize = 64 << 20;

/// How the pages were faulted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopulateMethod {
    /// madvise(MADV_POPULATE_WRITE / _READ).
    Madvise,
    /// fallocate (for shared files) and a touch loop.
    Touch,
}

/// The number of threads QEMU would use: at most `requested`, the CPU count, 16 and
/// the page count, and one per 64 MiB.
pub(crate) fn thread_count(requested: u32, page: usize, len: usize) -> usize {
    let pages = len / page.max(1);
    (requested as usize)
        .min(sys::online_cpus())
        .min(MAX_THREADS)
        .min(pages)
        .min((len / MIN_BYTES_PER_THREAD).max(1))
        .max(1)
}

/// Backing store of a mapping, for the fallback path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backing<'a> {
    /// The fd and the offset of the mapping in it.
    pub fd: BorrowedFd<'a>,
    pub offset: u64,
    /// MAP_SHARED: the pages live in the file, so the file range must be allocated.
    pub shared: bool,
}

/// Populates the whole mapping with `threads` threads (capped as QEMU caps them).
pub(crate) fn prealloc(
    m: &Mapping,
    page: usize,
    threads: u32,
    write: bool,
    backing: Option<Backing<'_>>,
) -> io::Result<PopulateMethod> {
    #[cfg(target_os = "linux")]
    let method = if sys::populate_supported() {
        PopulateMethod::Madvise
    } else {
        PopulateMethod::Touch
    };
    #[cfg(not(target_os = "linux"))]
    let method = PopulateMethod::Touch;
    match prealloc_with(m, page, threads, write, backing, method) {
        // Some special mappings refuse MADV_POPULATE_*; touching works for them.
        Err(e) if method == PopulateMethod::Madvise && e.raw_os_error() == Some(libc::EINVAL) => {
            log::debug!("prealloc: MADV_POPULATE refused ({e}); touching pages instead");
            prealloc_with(m, page, threads, write, backing, PopulateMethod::Touch)?;
            Ok(PopulateMethod::Touch)
        }
        r => r.map(|()| method),
    }
}

/// [`prealloc`] with the method chosen by the caller (tests use it to cover both).
pub(crate) fn prealloc_with(
    m: &Mapping,
    page: usize,
    threads: u32,
    write: bool,
    backing: Option<Backing<'_>>,
    method: PopulateMethod,
) -> io::Result<()> {
    let len = m.len();
    if method == PopulateMethod::Touch
        && let Some(b) = backing.filter(|b| b.shared)
    {
        match sys::allocate(b.fd, b.offset, len as u64) {
            Ok(()) => {}
            // macOS and OpenBSD have no posix_fallocate at all (QEMU only
            // touches there too): nothing to warn about.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                if cfg!(any(target_os = "linux", target_os = "freebsd")) {
                    log::warn!(
                        "prealloc: the file system can't fallocate; touching pages without it"
                    );
                }
            }
            Err(e) => return Err(e),
        }
    }
    let n = thread_count(threads, page, len);
    let pages = len / page;
    let per_thread = pages / n;
    let extra = pages % n;
    let mut chunks = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let count = per_thread + usize::from(i < extra);
        chunks.push((start * page, count * page));
        start += count;
    }
    let work = |(off, chunk_len): (usize, usize)| -> io::Result<()> {
        match method {
            #[cfg(target_os = "linux")]
            PopulateMethod::Madvise => sys::populate(m, off, chunk_len, write),
            #[cfg(not(target_os = "linux"))]
            PopulateMethod::Madvise => Err(io::Error::from_raw_os_error(libc::ENOSYS)),
            PopulateMethod::Touch => {
                sys::touch(m, off, chunk_len, page, write);
                Ok(())
            }
        }
    };
    if n == 1 {
        return work(chunks[0]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks[1..]
            .iter()
            .map(|&c| s.spawn(move || work(c)))
            .collect();
        let mut result = work(chunks[0]);
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("prealloc thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::{AsFd, OwnedFd};

    use super::*;
    use crate::sys::MapRequest;

    const PAGE: usize = 4096;

    /// A memfd of `file_len` bytes mapped shared over `map_len` bytes.
    fn memfd_mapping(file_len: u64, map_len: usize, seal: bool) -> (OwnedFd, Mapping) {
        let fd = sys::memfd_create("prealloc-test", libc::MFD_ALLOW_SEALING).expect("memfd");
        sys::ftruncate(fd.as_fd(), file_len).expect("ftruncate");
        if seal {
            sys::add_seals(fd.as_fd(), libc::F_SEAL_GROW).expect("seal");
        }
        let m = sys::map(&MapRequest {
            len: map_len,
            align: 0,
            writable: true,
            shared: true,
            noreserve: false,
            fd: Some((fd.as_fd(), 0)),
        })
        .expect("map");
        (fd, m)
    }

    #[test]
    fn thread_count_follows_qemu() {
        let cpus = sys::online_cpus();
        assert_eq!(thread_count(1, PAGE, 4 << 30), 1);
        assert_eq!(thread_count(2, PAGE, 4 << 30), 2.min(cpus));
        assert_eq!(thread_count(64, PAGE, 4 << 30), 16.min(cpus));
        // Less than 128 MiB: one thread per 64 MiB.
        assert_eq!(thread_count(8, PAGE, 100 << 20), 1);
        // Never more threads than pages.
        assert_eq!(thread_count(8, 1 << 30, 1 << 30), 1);
    }

    #[test]
    fn both_methods_populate_everything() {
        let len = 130 << 20;
        for method in [PopulateMethod::Madvise, PopulateMethod::Touch] {
            let (fd, m) = memfd_mapping(len as u64, len, false);
            assert_eq!(sys::resident_pages(&m, 0, len).expect("mincore"), 0);
            let backing = Backing {
                fd: fd.as_fd(),
                offset: 0,
                shared: true,
            };
            prealloc_with(&m, PAGE, 2, true, Some(backing), method).expect("prealloc");
            assert_eq!(
                sys::resident_pages(&m, 0, len).expect("mincore"),
                len / PAGE,
                "{method:?}"
            );
        }
        let anon = sys::map(&MapRequest {
            len,
            align: 0,
            writable: true,
            shared: false,
            noreserve: false,
            fd: None,
        })
        .expect("anon");
        prealloc_with(&anon, PAGE, 2, true, None, PopulateMethod::Touch).expect("touch");
        assert_eq!(
            sys::resident_pages(&anon, 0, len).expect("mincore"),
            len / PAGE
        );
    }

    /// A mapping that reaches past the end of a sealed memfd: touching its last pages
    /// would raise SIGBUS. Both methods must return an error instead (and this test
    /// process must still be alive to check it).
    #[test]
    fn unbackable_pages_are_an_error_not_sigbus() {
        for method in [PopulateMethod::Madvise, PopulateMethod::Touch] {
            let (fd, m) = memfd_mapping(PAGE as u64, 4 * PAGE, true);
            let backing = Backing {
                fd: fd.as_fd(),
                offset: 0,
                shared: true,
            };
            let e = prealloc_with(&m, PAGE, 1, true, Some(backing), method)
                .expect_err("populating past the end of the file");
            assert!(
                matches!(e.raw_os_error(), Some(libc::EFAULT | libc::EPERM)),
                "{method:?}: {e}"
            );
        }
    }
}
