//! Guest RAM: one memory backend's mapping viewed as vm-memory regions laid
//! out around the MMIO hole. Registering the regions with the hypervisor is
//! a separate step ([`GuestRam::register`]).

use memory::Backend;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::hv::Vm;
use crate::layout::{RamRegion, ram_regions};

/// Errors building or registering guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("memory-backend '{id}': readonly=on cannot be guest RAM")]
    ReadOnly { id: String },
    #[error("memory-backend '{id}': cannot describe guest RAM region at {gpa:#x}: {reason}")]
    Region {
        id: String,
        gpa: u64,
        reason: String,
    },
    #[error("memory-backend '{id}': {err}")]
    Register { id: String, err: crate::hv::Error },
}

/// Guest RAM. Field order matters: `mem` holds raw views of `backend`'s
/// mapping and is dropped first.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    regions: Vec<RamRegion>,
    backend: Backend,
}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("backend", &self.backend.id())
            .field("regions", &self.regions)
            .finish()
    }
}

impl Error {
    /// A read-only backend is the user's to fix (2); the rest is not (1).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::ReadOnly { .. } => 2,
            _ => 1,
        }
    }
}

impl GuestRam {
    /// Views `backend`'s whole mapping as guest RAM split around the hole.
    pub fn new(backend: Backend) -> Result<GuestRam, Error> {
        let id = backend.id().to_string();
        if backend.readonly() {
            return Err(Error::ReadOnly { id });
        }
        let regions = ram_regions(backend.size());
        let mut mmap_regions = Vec::with_capacity(regions.len());
        for r in &regions {
            let region_err = |reason: String| Error::Region {
                id: id.clone(),
                gpa: r.gpa,
                reason,
            };
            let size = usize::try_from(r.size).map_err(|e| region_err(e.to_string()))?;
            // SAFETY: `backend_offset + size` lies within the backend's
            // mapping (ram_regions splits exactly `backend.size()` bytes),
            // and the mapping outlives `mem`: both live in this struct and
            // `mem` is declared (so dropped) before `backend`. The region is
            // built as non-owning, so it never unmaps the backend's memory.
            let mapping = unsafe {
                MmapRegion::build_raw(
                    backend.as_ptr().add(r.backend_offset as usize),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    if backend.shared() {
                        libc::MAP_SHARED
                    } else {
                        libc::MAP_PRIVATE
                    },
                )
            }
            .map_err(|e| region_err(e.to_string()))?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(r.gpa))
                .ok_or_else(|| region_err("address overflow".into()))?;
            mmap_regions.push(region);
        }
        #[cfg(target_arch = "x86_64")]
        Self::small_pages_low(&backend, &id);
        let mem = GuestMemoryMmap::from_regions(mmap_regions).map_err(|e| Error::Region {
            id: id.clone(),
            gpa: 0,
            reason: e.to_string(),
        })?;
        Ok(GuestRam {
            mem,
            regions,
            backend,
        })
    }

    /// x86_64 keeps the first 2 MiB on small pages (real-mode structures);
    /// aarch64 has nothing there (RAM starts at 1 GiB).
    #[cfg(target_arch = "x86_64")]
    fn small_pages_low(backend: &Backend, id: &str) {
        let low = crate::layout::SMALL_PAGES_END.min(backend.size()) as usize;
        // SAFETY: [as_ptr, as_ptr + low) is inside the backend's mapping;
        // MADV_NOHUGEPAGE only changes how the kernel backs it, never its
        // contents or validity.
        let r = unsafe { libc::madvise(backend.as_ptr().cast(), low, libc::MADV_NOHUGEPAGE) };
        if r != 0 {
            log::debug!(
                "memory-backend '{id}': MADV_NOHUGEPAGE on low RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Tells the hypervisor about every region (slots 0, 1).
    pub fn register(&self, vm: &Vm) -> Result<(), Error> {
        for (slot, r) in self.regions.iter().enumerate() {
            // SAFETY: `backend_offset + size` is within the backend mapping,
            // which lives in `self`; the VMM keeps GuestRam alive until the
            // VM (and its vCPUs) are gone (see `Machine::finish`).
            let host = unsafe { self.backend.as_ptr().add(r.backend_offset as usize) };
            // SAFETY: as above, the mapping outlives the VM.
            unsafe { vm.set_memory_slot(slot as u32, r.gpa, host, r.size, false) }.map_err(
                |err| Error::Register {
                    id: self.backend.id().to_string(),
                    err,
                },
            )?;
        }
        Ok(())
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn size(&self) -> u64 {
        self.backend.size()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

/// While alive, this process's page faults get no transparent huge pages
/// (`prctl(PR_SET_THP_DISABLE)`), so the VMM writing a few KiB of kernel,
/// modules and boot data into guest RAM faults 4 KiB pages instead of
/// zeroing (and keeping resident) a 2 MiB page around each: a kernel
/// linked at 2 MiB with data at 4 MiB cost two huge pages, ~4 MiB of RSS.
/// The RAM keeps its MADV_HUGEPAGE advice: once this is dropped, the
/// guest's own faults get huge pages again wherever no small page sits in
/// the 2 MiB region yet.
#[derive(Debug)]
pub struct ThpPause {
    #[cfg(target_os = "linux")]
    restore: bool,
}

impl ThpPause {
    /// Transparent huge pages (and their prctl) are Linux's: nothing to
    /// pause elsewhere.
    #[cfg(not(target_os = "linux"))]
    pub fn new() -> ThpPause {
        ThpPause {}
    }

    #[cfg(target_os = "linux")]
    pub fn new() -> ThpPause {
        // SAFETY: PR_GET_THP_DISABLE takes no pointers and only reads a
        // flag of this process.
        let was = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        if was != 0 {
            // Already disabled (by whoever started us), or unknown: leave it.
            return ThpPause { restore: false };
        }
        // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets a flag of
        // this process that the kernel checks when it handles a fault.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            log::debug!(
                "PR_SET_THP_DISABLE while loading the kernel: {}",
                std::io::Error::last_os_error()
            );
        }
        ThpPause { restore: r == 0 }
    }
}

impl Default for ThpPause {
    fn default() -> Self {
        ThpPause::new()
    }
}

#[cfg(target_os = "linux")]
impl Drop for ThpPause {
    fn drop(&mut self) {
        if self.restore {
            // SAFETY: as in `new`: no pointers, one flag of this process.
            unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) };
        }
    }
}
