//! `machine` on a host without a hypervisor backend (x86_64 macOS, the
//! BSDs): the command line is parsed and checked as everywhere, then the
//! run ends with one line and exit code 2 (README, "macOS and the BSDs").

use std::time::Instant;

use crate::config::Config;
use crate::exit::VmEnd;

/// Why no VM runs here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no accelerator is available on this host: shmvm runs VMs with KVM on Linux and with HVF on macOS on Apple silicon"
    )]
    NoAccelerator,
}

impl Error {
    /// 2: the host cannot run a VM (a set-up the user changes).
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Refuses to run: this build has no hypervisor backend.
pub fn run(_cfg: &Config, _start: Instant) -> Result<VmEnd, Error> {
    Err(Error::NoAccelerator)
}
