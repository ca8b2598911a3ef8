//! Where a snapshot's memory is: referenced in place (a named shm object,
//! a shared file) or written into the snapshot directory, sparsely.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memory::{Backend, BackendConfig, Existing, KindOptions};
use serde::{Deserialize, Serialize};

use super::{Error, RamMode, io};

/// Where one backend's contents are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum MemorySource {
    /// The named shm object itself (`memory-backend-shm,name=,keep=on`).
    Shm { name: String },
    /// The file itself (`memory-backend-file,share=on,mem-path=FILE`),
    /// from `offset`.
    File { path: PathBuf, offset: u64 },
    /// A file in the snapshot directory, written by the save.
    Image { file: String },
}

/// Bytes compared at a time when looking for zero pages to skip.
const PAGE: usize = 4096;
/// Bytes copied out of guest memory at a time.
const CHUNK: usize = 1 << 20;

impl MemorySource {
    /// Where `b`'s contents can be found again after this process ends:
    /// in place when the memory outlives it (a named shm object with
    /// `keep=on`, a shared file that is not discarded), else None (to
    /// be written out).
    pub fn referenced(b: &Backend) -> Result<Option<MemorySource>, Error> {
        Ok(match b.config().kind_options() {
            KindOptions::Shm(s) => match (&s.name, s.keep) {
                (Some(name), true) => Some(MemorySource::Shm { name: name.clone() }),
                (Some(name), false) => {
                    return Err(Error::Refused(format!(
                        "memory-backend-shm '{}' (name={name}) has keep=off: the object is \
                         unlinked when this shmvm exits, and the snapshot would refer to it; \
                         use keep=on",
                        b.id()
                    )));
                }
                (None, _) => None,
            },
            KindOptions::File(f) if b.shared() && !f.discard_data && b.created_file().is_none() => {
                match f.mem_path.as_deref() {
                    Some(p) if p.is_file() => Some(MemorySource::File {
                        path: std::fs::canonicalize(p)
                            .map_err(io(format!("mem-path {}", p.display())))?,
                        offset: f.offset,
                    }),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Writes `b`'s memory to `dir/ID.ram`, skipping zero pages (they stay
    /// holes: SEEK_HOLE finds them, `du` does not count them).
    pub fn write_image(b: &Backend, dir: &Path) -> Result<MemorySource, Error> {
        let file = format!("{}.ram", b.id());
        let path = dir.join(&file);
        let what = || format!("writing {}", path.display());
        let f = std::fs::File::create(&path).map_err(io(what()))?;
        let size = b.size();
        f.set_len(size).map_err(io(what()))?;
        let len = usize::try_from(size).unwrap_or(0);
        // SAFETY: the backend's mapping is `size` bytes and stays mapped
        // while `b` lives; a VolatileSlice only copies out of it (other
        // processes sharing the memory may write it: volatile reads).
        let mem = unsafe { vm_memory::VolatileSlice::new(b.as_ptr(), len) };
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0;
        while at < len {
            let n = CHUNK.min(len - at);
            let chunk = mem
                .subslice(at, n)
                .map_err(|e| Error::Refused(format!("reading memory '{}': {e}", b.id())))?;
            chunk.copy_to(&mut buf[..n]);
            // Runs of non-zero pages, each one write; zero pages stay holes.
            let mut i = 0;
            while i < n {
                let page_end = (i + PAGE).min(n);
                if buf[i..page_end].iter().all(|&x| x == 0) {
                    i = page_end;
                    continue;
                }
                let mut run_end = page_end;
                while run_end < n {
                    let next = (run_end + PAGE).min(n);
                    if buf[run_end..next].iter().all(|&x| x == 0) {
                        break;
                    }
                    run_end = next;
                }
                f.write_all_at(&buf[i..run_end], (at + i) as u64)
                    .map_err(io(what()))?;
                i = run_end;
            }
            at += n;
        }
        f.sync_all().map_err(io(what()))?;
        Ok(MemorySource::Image { file })
    }

    /// Checks, before anything is created, that the memory is there and
    /// large enough.
    pub fn check(&self, dir: &Path, size: u64) -> Result<(), Error> {
        let (path, offset) = match self {
            MemorySource::Shm { name } => (PathBuf::from(format!("/dev/shm{name}")), 0),
            MemorySource::File { path, offset } => (path.clone(), *offset),
            MemorySource::Image { file } => {
                if file.contains('/') {
                    return Err(Error::Corrupt(format!("memory image name '{file}'")));
                }
                (dir.join(file), 0)
            }
        };
        let have = std::fs::metadata(&path)
            .map_err(io(format!("guest memory {}", path.display())))?
            .len();
        if have < offset.saturating_add(size) {
            return Err(Error::Corrupt(format!(
                "guest memory {} is truncated: {have} bytes, the snapshot needs {}",
                path.display(),
                offset.saturating_add(size)
            )));
        }
        Ok(())
    }

    /// Maps this memory for backend `cfg` of a restored machine: RAM as
    /// `mode` says, a device's memory (`ram == false`) shared when
    /// referenced (sharing it is the point); an image is always mapped
    /// copy-on-write.
    pub fn open(
        &self,
        cfg: &BackendConfig,
        dir: &Path,
        mode: RamMode,
        ram: bool,
    ) -> Result<Backend, memory::Error> {
        let private = ram && mode == RamMode::Clone;
        match self {
            MemorySource::Shm { name } => Backend::open_existing(cfg, Existing::Shm(name), private),
            MemorySource::File { path, offset } => Backend::open_existing(
                cfg,
                Existing::File {
                    path,
                    offset: *offset,
                },
                private,
            ),
            MemorySource::Image { file } => Backend::open_existing(
                cfg,
                Existing::File {
                    path: &dir.join(file),
                    offset: 0,
                },
                true,
            ),
        }
    }
}
