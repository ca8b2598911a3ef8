//! Host memory backends: QEMU's `memory-backend-ram`, `-file`, `-memfd` and `-shm`
//! behind one [`Backend`] type and one mmap path.
//!
//! This crate maps host memory and nothing more: it knows nothing of KVM. A VMM builds
//! its guest memory regions from [`Backend::as_ptr`] and [`Backend::size`], and hands
//! [`Backend::fd`] + [`Backend::fd_offset`] to any process that should map the same
//! memory.

mod backend;
mod config;
mod error;
pub mod hostmem;
mod prealloc;
mod size;
mod sys;
#[cfg(test)]
mod testutil;

pub use backend::{Backend, Existing};
pub use config::{
    BackendConfig, BackendKind, BackendProps, COMMON_OPTIONS, FileOptions, HostMemPolicy,
    KindOptions, MAX_HOST_NODES, MemfdOptions, OnOffAuto, ShmOptions, id_is_well_formed,
};
pub use error::Error;
pub use prealloc::PopulateMethod;
pub use size::{SizeError, parse_size};
