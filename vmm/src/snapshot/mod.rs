//! Snapshots: a paused machine's state in a directory, and the machine
//! rebuilt from it (`--restore DIR`).
//!
//! A snapshot directory holds:
//! - `state`: the header of `format.rs` and the [`State`] as JSON: the
//!   shmvm version, the command line that rebuilds the machine, every
//!   vCPU's and the VM's hypervisor state (`hv/x86.rs`), the device
//!   models' bytes (`devices::snapshot`), each PCI function's
//!   configuration space, and where each memory backend's contents are;
//! - `ID.ram` for each memory backend whose memory is not already in a
//!   named shm object or a shared file: its contents, written sparsely
//!   (zero pages are holes).
//!
//! Memory in a named shm object (`memory-backend-shm,name=`) or a shared
//! file (`memory-backend-file,share=on,mem-path=FILE`) is referenced, not
//! copied (QEMU's `x-ignore-shared`): the snapshot is valid as long as
//! nothing writes that memory (the saved VM stays paused or quits).
//!
//! The machine-side parts (what is read from the running machine, and
//! the restore variant of the build pass) are in `machine/snapshot.rs`.

pub mod format;
pub mod memory;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hv::{CpuidEntry, VcpuState, VmIrqState};

pub use memory::MemorySource;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";

/// This build's version, recorded in every snapshot and required to match.
pub const SHMVM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors saving or loading a snapshot; each line says what and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {err}")]
    Io {
        what: String,
        #[source]
        err: std::io::Error,
    },
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("snapshot does not match: {0}")]
    Mismatch(String),
    #[error("cannot snapshot: {0}")]
    Refused(String),
    #[error("the VM is not paused: stop it first (QMP stop)")]
    NotPaused,
    #[error("vCPU state: {0}")]
    Vcpus(String),
    #[error(transparent)]
    Hypervisor(#[from] crate::hv::Error),
    #[error(transparent)]
    Device(#[from] devices::snapshot::StateError),
}

impl Error {
    /// 2 for a snapshot that cannot be used as given (missing, corrupt,
    /// from another build or host), 1 for a failure while doing the work.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Corrupt(_) | Error::Mismatch(_) | Error::Refused(_) | Error::Io { .. } => 2,
            Error::NotPaused | Error::Vcpus(_) | Error::Hypervisor(_) | Error::Device(_) => 1,
        }
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
}

/// One memory backend's contents: where they are, for the backend `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryImage {
    pub id: String,
    pub size: u64,
    pub source: MemorySource,
}

/// A device model's bytes (`devices::snapshot::Snapshot`), by its bus name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub name: String,
    pub state: Vec<u8>,
}

/// One PCI function's configuration space (256 bytes), by slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunctionState {
    pub slot: u8,
    pub config: Vec<u8>,
}

/// Everything a snapshot holds but memory contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub shmvm_version: String,
    /// The saved VM's normalized command line (program name excluded),
    /// without the host-side plumbing a restore gives anew (serial
    /// output, monitors, chardevs, statistics, pidfile, sandbox, `-v`).
    pub argv: Vec<String>,
    /// Guest RAM first, then the other `-object` backends.
    pub memory: Vec<MemoryImage>,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmIrqState,
    pub devices: Vec<DeviceState>,
    pub pci: Vec<PciFunctionState>,
}

/// How a restored guest's RAM is mapped (`--restore-ram`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamMode {
    /// The referenced memory itself (MAP_SHARED): the restored VM goes on
    /// where the saved one stopped. RAM the snapshot copied is mapped
    /// copy-on-write (the snapshot never changes).
    #[default]
    Shared,
    /// A private copy-on-write mapping of the saved memory (MAP_PRIVATE):
    /// many VMs start from one snapshot, none changes it.
    Clone,
}

/// A snapshot read and checked, ready for the build pass to restore.
#[derive(Debug)]
pub struct Restore {
    pub dir: PathBuf,
    pub state: State,
    pub ram: RamMode,
}

impl State {
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::Refused(format!("cannot encode the state: {e}")))?;
        format::write_atomically(&dir.join(STATE_FILE), &format::encode(&json))
            .map_err(io(format!("writing {}", dir.join(STATE_FILE).display())))
    }

    /// A state file's bytes, checked (header, checksum, shmvm version, at
    /// least one vCPU and some RAM). Untrusted input: the fuzz target
    /// `snapshot_state` (fuzz/) drives it.
    pub fn parse(bytes: &[u8]) -> Result<State, Error> {
        let payload = format::decode(bytes)?;
        let state: State = serde_json::from_slice(payload)
            .map_err(|e| Error::Corrupt(format!("the state does not parse: {e}")))?;
        if state.shmvm_version != SHMVM_VERSION {
            return Err(Error::Mismatch(format!(
                "made by shmvm {}, this is shmvm {SHMVM_VERSION}",
                state.shmvm_version
            )));
        }
        if state.vcpus.is_empty() || state.memory.is_empty() {
            return Err(Error::Corrupt("no vCPUs or no guest RAM".into()));
        }
        Ok(state)
    }

    /// Reads and checks `dir`'s state file: header, checksum, shmvm
    /// version, and that every memory image it names is there.
    pub fn read(dir: &Path) -> Result<State, Error> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        let state = State::parse(&bytes)?;
        for m in &state.memory {
            m.source.check(dir, m.size)?;
        }
        Ok(state)
    }
}

/// The CPUID leaves whose feature bits a restored guest may rely on.
const FEATURE_LEAVES: &[(u32, u32)] = &[
    (0x1, 0),
    (0x7, 0),
    (0x7, 1),
    (0xd, 1),
    (0x8000_0001, 0),
    (0x8000_0007, 0),
    (0x8000_0008, 0),
];

/// Feature bits the saved vCPU had that this host would not give a fresh
/// one (`fresh`: what shmvm sets up for the same vCPU here): the guest may
/// be using them, so the snapshot cannot run here.
pub fn missing_features(saved: &[CpuidEntry], fresh: &[CpuidEntry]) -> Option<String> {
    let find = |set: &[CpuidEntry], f: u32, i: u32| {
        set.iter()
            .find(|e| e.function == f && e.index == i)
            .copied()
            .unwrap_or_default()
    };
    for &(f, i) in FEATURE_LEAVES {
        let (s, h) = (find(saved, f, i), find(fresh, f, i));
        // Leaf 1 EBX is the APIC ID and counts; leaf 0x80000008 EAX is
        // address widths: only flag registers are compared there.
        let regs: &[(&str, u32, u32)] = match (f, i) {
            (0x1, 0) => &[("ecx", s.ecx, h.ecx), ("edx", s.edx, h.edx)],
            (0x8000_0008, 0) => &[("ebx", s.ebx, h.ebx)],
            (0xd, 1) => &[("eax", s.eax, h.eax)],
            _ => &[
                ("ebx", s.ebx, h.ebx),
                ("ecx", s.ecx, h.ecx),
                ("edx", s.edx, h.edx),
            ],
        };
        for &(name, sv, hv) in regs {
            let missing = sv & !hv;
            if missing != 0 {
                return Some(format!(
                    "the snapshot's CPU has features this host lacks (CPUID {f:#x}.{i} {name} bits {missing:#x})"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, ecx: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            ecx,
            ..CpuidEntry::default()
        }
    }

    fn state(dir: &Path) -> State {
        std::fs::write(dir.join("ram.ram"), vec![0u8; 8192]).unwrap();
        State {
            shmvm_version: SHMVM_VERSION.into(),
            argv: vec!["--kernel".into(), "k".into()],
            memory: vec![MemoryImage {
                id: "ram".into(),
                size: 8192,
                source: MemorySource::Image {
                    file: "ram.ram".into(),
                },
            }],
            vcpus: vec![VcpuState::default()],
            vm: VmIrqState::default(),
            devices: vec![],
            pci: vec![],
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shmvm-snap-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn a_written_state_reads_back_and_another_version_is_refused() {
        let dir = temp_dir("version");
        let s = state(&dir);
        s.write(&dir).unwrap();
        assert_eq!(State::read(&dir).unwrap(), s);
        let other = State {
            shmvm_version: "0.0.1".into(),
            ..s.clone()
        };
        other.write(&dir).unwrap();
        let e = State::read(&dir).unwrap_err();
        assert!(e.to_string().contains("made by shmvm 0.0.1"), "{e}");
        assert_eq!(e.exit_code(), 2);
        // A memory image shorter than the backend is refused before use.
        s.write(&dir).unwrap();
        std::fs::write(dir.join("ram.ram"), [0u8; 10]).unwrap();
        let e = State::read(&dir).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let escape = State {
            memory: vec![MemoryImage {
                source: MemorySource::Image {
                    file: "../x".into(),
                },
                ..s.memory[0].clone()
            }],
            ..s
        };
        escape.write(&dir).unwrap();
        assert!(State::read(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fewer_host_features_are_named() {
        let fresh = [leaf(1, 0b0110)];
        assert_eq!(missing_features(&[leaf(1, 0b0100)], &fresh), None);
        let why = missing_features(&[leaf(1, 0b1100)], &fresh).unwrap();
        assert!(why.contains("CPUID 0x1.0 ecx bits 0x8"), "{why}");
    }
}
