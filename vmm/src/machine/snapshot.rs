//! The machine's side of snapshots (format and memory: `crate::snapshot`):
//! what `x-shmvm-snapshot-save` reads from the paused machine, and the
//! steps the build pass takes instead of booting when it restores.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::i8042::I8042;
use devices::serial::Serial;
use devices::snapshot::Snapshot;
use memory::{Backend, BackendConfig};

use super::{Error, Machine};
use crate::config::{Config, DeviceConfig};
use crate::hv::CpuidEntry;
use crate::snapshot::{
    self, DeviceState, MemoryImage, MemorySource, PciFunctionState, Restore, State,
};

/// How long the parked vCPUs may take to report their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The device models' names in a snapshot.
const SERIAL: &str = "serial0";
const I8042_NAME: &str = "i8042";

/// What saving needs that the rest of the machine does not keep.
#[derive(Debug)]
pub(super) struct SnapshotParts {
    /// The command line that rebuilds this machine.
    pub argv: Vec<String>,
    /// Why this machine cannot be saved, when it cannot.
    pub refusal: Option<String>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The CPUID each vCPU (by id) was given.
    pub cpuids: Vec<(u8, Vec<CpuidEntry>)>,
    /// `--snapshot-on-signal DIR`.
    pub on_signal: Option<PathBuf>,
}

impl SnapshotParts {
    pub fn new(cfg: &Config, i8042: Arc<Mutex<I8042>>, cpuids: Vec<(u8, Vec<CpuidEntry>)>) -> Self {
        SnapshotParts {
            argv: cfg.argv.clone(),
            refusal: refusal(cfg),
            i8042,
            cpuids,
            on_signal: cfg.snapshot_on_signal.clone(),
        }
    }
}

/// The first device whose state a snapshot cannot carry, and why.
pub(crate) fn refusal(cfg: &Config) -> Option<String> {
    cfg.devices.iter().find_map(|d| match d {
        DeviceConfig::DebugExit { .. } | DeviceConfig::IvshmemPlain(_) => None,
        DeviceConfig::IvshmemDoorbell(c) => Some(format!(
            "-device {c}: its peer id and interrupt eventfds come from the ivshmem server; \
             reconnecting would make it a new peer, so it cannot be restored as it was"
        )),
        DeviceConfig::VhostUser(c) => Some(format!(
            "-device {c}: the vhost-user back-end holds the device's state (virtqueues, \
             requests in flight), which is not shmvm's to save"
        )),
        DeviceConfig::VirtioBlk(c) => Some(format!(
            "-device {c}: a built-in virtio device's queues are not saved yet"
        )),
        DeviceConfig::Watchdog(c) => Some(format!(
            "-device {c}: its timer is not saved yet"
        )),
        DeviceConfig::VirtioRng(_)
        | DeviceConfig::VirtioSerial(_)
        | DeviceConfig::VirtioSerialPort(_) => {
            Some("a built-in virtio device (virtio-rng-pci, virtio-serial-pci): its queues are not saved yet".into())
        }
        #[allow(
            unreachable_patterns,
            reason = "devices added later are refused until they save their state"
        )]
        _ => Some("a -device without snapshot support".to_string()),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The backend `cfg` describes: created, or, when restoring, mapped from
/// where the snapshot says its memory is (`ram`: guest RAM, mapped as
/// `--restore-ram` says).
pub(super) fn backend(
    cfg: &BackendConfig,
    option: &'static str,
    restore: Option<&Restore>,
    ram: bool,
) -> Result<Backend, Error> {
    let named = |err| Error::Backend {
        option,
        id: cfg.id().to_string(),
        err: Box::new(err),
    };
    let Some(r) = restore else {
        return Backend::create(cfg).map_err(named);
    };
    let image = r
        .state
        .memory
        .iter()
        .find(|m| m.id == cfg.id())
        .ok_or_else(|| {
            Error::Snapshot(snapshot::Error::Corrupt(format!(
                "no memory for backend '{}'",
                cfg.id()
            )))
        })?;
    if image.size != cfg.size() {
        return Err(Error::Snapshot(snapshot::Error::Corrupt(format!(
            "backend '{}' is {} bytes, its memory {}",
            cfg.id(),
            cfg.size(),
            image.size
        ))));
    }
    image.source.open(cfg, &r.dir, r.ram, ram).map_err(named)
}

/// What a save did, for the QMP reply.
#[derive(Debug)]
pub(super) struct Saved {
    pub referenced: usize,
    pub written: usize,
    pub state_ms: f64,
    pub total_ms: f64,
}

/// Files a failed save removes again.
#[derive(Debug, Default)]
struct Written {
    dir_created: Option<std::path::PathBuf>,
    files: Vec<std::path::PathBuf>,
    keep: bool,
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(d) = &self.dir_created {
            let _ = std::fs::remove_dir(d);
        }
    }
}

impl Machine {
    /// Writes the paused machine's snapshot into `dir` (created if
    /// missing; one that already holds a snapshot is refused). On failure
    /// nothing it wrote is left.
    pub(super) fn save_snapshot(&self, dir: &Path) -> Result<Saved, snapshot::Error> {
        let start = Instant::now();
        if !self.state.paused() {
            return Err(snapshot::Error::NotPaused);
        }
        if let Some(why) = &self.snap.refusal {
            return Err(snapshot::Error::Refused(why.clone()));
        }
        if dir.as_os_str().is_empty() {
            return Err(snapshot::Error::Refused("the path is empty".into()));
        }
        let mut written = Written::default();
        if !dir.exists() {
            std::fs::create_dir(dir)
                .map_err(snapshot::io(format!("creating {}", dir.display())))?;
            written.dir_created = Some(dir.to_path_buf());
        } else if dir.join(snapshot::STATE_FILE).exists() {
            return Err(snapshot::Error::Refused(format!(
                "{} already holds a snapshot",
                dir.display()
            )));
        }
        // Everything but memory contents first: "save time excluding RAM".
        let mut vcpus = self
            .state
            .save_vcpus(self.vm.msr_index_list()?, SAVE_TIMEOUT)
            .map_err(snapshot::Error::Vcpus)?;
        for v in &mut vcpus {
            if let Some((_, c)) = self.snap.cpuids.iter().find(|(id, _)| *id == v.id) {
                v.cpuid.clone_from(c);
            }
        }
        let vm = self.vm.save_irq_state()?;
        let devices = vec![
            DeviceState {
                name: SERIAL.into(),
                state: lock(&self.console.serial).save_state(),
            },
            DeviceState {
                name: I8042_NAME.into(),
                state: lock(&self.snap.i8042).save_state(),
            },
        ];
        let pci = self
            .pci
            .save_config()
            .into_iter()
            .map(|(slot, config)| PciFunctionState { slot, config })
            .collect();
        let state_ms = start.elapsed().as_secs_f64() * 1e3;
        let (mut referenced, mut images) = (0, 0);
        let mut memory = Vec::new();
        let backends = std::iter::once(self.ram.backend()).chain(self.objects.iter().map(|b| &**b));
        for b in backends {
            let source = match MemorySource::referenced(b)? {
                Some(s) => {
                    referenced += 1;
                    s
                }
                None => {
                    written.files.push(dir.join(format!("{}.ram", b.id())));
                    images += 1;
                    MemorySource::write_image(b, dir)?
                }
            };
            memory.push(MemoryImage {
                id: b.id().to_string(),
                size: b.config().size(),
                source,
            });
        }
        let state = State {
            shmvm_version: snapshot::SHMVM_VERSION.into(),
            argv: self.snap.argv.clone(),
            memory,
            vcpus,
            vm,
            devices,
            pci,
        };
        written.files.push(dir.join(snapshot::STATE_FILE));
        state.write(dir)?;
        written.keep = true;
        Ok(Saved {
            referenced,
            written: images,
            state_ms,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// How often the `--snapshot-on-signal` watcher looks for the signal.
const SIGNAL_POLL: Duration = Duration::from_millis(10);

impl Machine {
    /// `--snapshot-on-signal DIR`: waits (on its own thread, until the VM
    /// stops) for SIGUSR1, then stops the vCPUs, saves, and ends the VM
    /// (its referenced memory must not change any more). A failed save is
    /// logged and the VM runs on.
    pub(super) fn watch_snapshot_signal(&self, dir: &Path) {
        while !self.state.stopping() {
            std::thread::sleep(SIGNAL_POLL);
            if !crate::signals::take_snapshot_request() {
                continue;
            }
            if !self.state.pause(SAVE_TIMEOUT) {
                self.state.resume();
                log::error!("--snapshot-on-signal: the vCPUs did not stop in time");
                continue;
            }
            match self.save_snapshot(dir) {
                Ok(s) => {
                    eprintln!(
                        "shmvm: snapshot saved to {} ({:.3} ms, state {:.3} ms)",
                        dir.display(),
                        s.total_ms,
                        s.state_ms
                    );
                    self.state
                        .request_end(crate::exit::VmEnd::Monitor(crate::exit::MonitorEnd::Quit));
                    return;
                }
                Err(e) => {
                    log::error!("--snapshot-on-signal {}: {e}", dir.display());
                    self.state.resume();
                }
            }
        }
    }
}

/// The device models' saved bytes back in place (the build pass, right
/// after the legacy devices are placed).
pub(super) fn restore_devices(
    r: &Restore,
    serial: &Mutex<Serial>,
    i8042: &Mutex<I8042>,
) -> Result<(), Error> {
    for d in &r.state.devices {
        match d.name.as_str() {
            SERIAL => lock(serial).restore_state(&d.state),
            I8042_NAME => lock(i8042).restore_state(&d.state),
            other => {
                return Err(Error::Snapshot(snapshot::Error::Corrupt(format!(
                    "unknown device '{other}'"
                ))));
            }
        }
        .map_err(|e| Error::Snapshot(e.into()))?;
    }
    Ok(())
}

/// Checks that this host gives the saved vCPUs every CPU feature they had.
pub(super) fn check_host_cpu(
    r: &Restore,
    host: &crate::hv::HostCpu,
    topo: &crate::boot::Topology,
) -> Result<(), Error> {
    for v in &r.state.vcpus {
        let mut fresh = host.cpuid.clone();
        crate::cpuid::for_vcpu_in(&mut fresh, u32::from(v.id), topo, host.tsc_deadline);
        if let Some(why) = snapshot::missing_features(&v.cpuid, &fresh) {
            return Err(Error::Snapshot(snapshot::Error::Mismatch(why)));
        }
    }
    Ok(())
}
