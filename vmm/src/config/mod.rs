//! The typed configuration of one VM, built from the option values a QEMU
//! command line carries. Every property list goes through the one keyval
//! parser ([`keyval`]); the result is typed structs only. Nothing here (or
//! below: boot, devices, the machine) knows about the command-line parser:
//! the CLI collects raw option values into an [`Input`] and calls
//! [`Config::build`].

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod chardev;
pub mod device;
pub mod keyval;
pub mod machine;
pub mod object;

use std::path::PathBuf;

use memory::{BackendConfig, BackendKind};

pub use chardev::{MonitorConfig, SerialMode, StdioOptions};
pub use device::DeviceConfig;
pub use machine::Topology;

pub use crate::stats::StatsFormat;

/// Largest vCPU count: APIC IDs 0..N-1 plus the IOAPIC's ID fit in the MP
/// table's 8-bit IDs with room to spare, and test suites stay small.
pub const MAX_VCPUS: u8 = 64;
/// Id of the RAM backend `-m` creates (QEMU's name for it).
pub const DEFAULT_RAM_ID: &str = "pc.ram";
/// QEMU's default RAM size.
pub const DEFAULT_RAM: u64 = 128 << 20;

/// How to enter the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 32-bit protected-mode entry with hvm_start_info (ELF note XEN_ELFNOTE_PHYS32_ENTRY)
    Pvh,
    /// 64-bit long-mode entry with a Linux zero page
    Linux64,
}

/// One property of a device, object or machine type, for `help` output and
/// for naming the known properties in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prop {
    pub name: &'static str,
    pub ty: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

impl Prop {
    pub const fn new(
        name: &'static str,
        ty: &'static str,
        default: &'static str,
        help: &'static str,
    ) -> Prop {
        Prop {
            name,
            ty,
            default,
            help,
        }
    }
}

/// A device, object or machine type and its properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: &'static str,
    pub help: &'static str,
    common: &'static [Prop],
    own: &'static [Prop],
}

impl TypeInfo {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        common: &'static [Prop],
        own: &'static [Prop],
    ) -> TypeInfo {
        TypeInfo {
            name,
            help,
            common,
            own,
        }
    }

    pub fn props(&self) -> impl Iterator<Item = &'static Prop> + use<> {
        self.common.iter().chain(self.own.iter())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.props().map(|p| p.name).collect()
    }

    /// `TYPE options:` and one line per property, QEMU's `-device T,help` shape.
    pub fn describe(&self) -> String {
        let mut s = format!("{} options:\n", self.name);
        for p in self.props() {
            let default = if p.default.is_empty() {
                String::new()
            } else {
                format!(" (default: {})", p.default)
            };
            s.push_str(&format!(
                "  {:<18} <{}>{default} - {}\n",
                p.name, p.ty, p.help
            ));
        }
        s
    }
}

/// Configuration errors; each renders as one line naming the option as the
/// user writes it in QEMU's spelling, and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
    /// A value shmvm does not have, naming the whole option as written
    /// (`-device ib700,id=watchdog0: unknown device 'ib700' ...`).
    #[error("{option} {spec}: {reason}")]
    Unsupported {
        option: &'static str,
        spec: String,
        reason: String,
    },
    #[error("{option} '{spec}': {source}")]
    KeyVal {
        option: &'static str,
        spec: String,
        #[source]
        source: keyval::Error,
    },
    #[error(transparent)]
    Object(#[from] object::Error),
    #[error("-device: {0}")]
    Ivshmem(#[from] crate::ivshmem::Error),
    #[error("-device: {0}")]
    IvshmemDoorbell(#[from] crate::ivshmem_doorbell::Error),
    #[error(transparent)]
    VhostUserBlk(#[from] crate::vhost_user::config::Error),
}

impl Error {
    /// Configuration errors are usage errors: exit status 2.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        option,
        reason: reason.into(),
    }
}

/// Parses `spec` as keyval for `option`, naming the option on error.
pub(crate) fn keyval(
    option: &'static str,
    spec: &str,
    implied: Option<&str>,
) -> Result<keyval::KeyVal, Error> {
    keyval::KeyVal::parse(spec, implied).map_err(|source| Error::KeyVal {
        option,
        spec: spec.to_string(),
        source,
    })
}

/// The raw option values of one command line, in QEMU's terms. Repeated
/// scalar options keep their last value (QEMU's rule); list options keep
/// every value in order.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    /// `-m` values (the last wins).
    pub memory: Vec<String>,
    pub objects: Vec<String>,
    pub machine: Vec<String>,
    /// `-smp` values (merged, later keys win).
    pub smp: Vec<String>,
    pub serial: Vec<String>,
    pub devices: Vec<String>,
    /// `-drive` values.
    pub drives: Vec<String>,
    /// `-snapshot` was given (a no-op without disks).
    pub snapshot: bool,
    pub chardevs: Vec<String>,
    pub numa: Vec<String>,
    /// `-mon chardev=ID` values: QMP on a listening socket chardev, else
    /// (a mux stdio) checked and noted.
    pub mon: Vec<String>,
    /// `-qmp unix:PATH,server=on,wait=off` values.
    pub qmp: Vec<String>,
    pub mem_path: Option<PathBuf>,
    pub mem_prealloc: bool,
    /// `-pidfile FILE`.
    pub pidfile: Option<PathBuf>,
    /// `--sandbox` (on unless `--sandbox=off` where seccomp exists, Linux;
    /// off elsewhere, and `--sandbox=on` refused there).
    pub sandbox: bool,
    /// `-nographic`: without `-serial`, the console is `mon:stdio` (QEMU's rule).
    pub nographic: bool,
    pub vhost_user_blk: Vec<String>,
    /// `-action` values (`-watchdog-action A` arrives as `watchdog=A`).
    pub actions: Vec<String>,
    pub boot: Option<BootProtocol>,
    pub stats: StatsFormat,
    pub verbose: u8,
}

/// The snapshot a `--restore` machine comes from. Snapshots are x86_64-only
/// for now (the aarch64 vCPU state is not saved yet): there it is a type
/// with no values, so `restore` is always None.
#[cfg(all(target_arch = "x86_64", kvm))]
pub type Restoring = std::sync::Arc<crate::snapshot::Restore>;
#[cfg(not(all(target_arch = "x86_64", kvm)))]
pub type Restoring = std::convert::Infallible;

/// The validated configuration of one VM.
#[derive(Debug, Clone)]
pub struct Config {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// The backend that provides guest RAM.
    pub ram: BackendConfig,
    /// Whether `ram` came from `-object` (`-machine memory-backend=` or
    /// `-numa node,memdev=`), else from `-m`/`-mem-path` or the default.
    pub ram_from_object: bool,
    /// Every other `-object` backend (for devices such as ivshmem).
    pub objects: Vec<BackendConfig>,
    /// vCPUs started at boot (`smp.cpus`).
    pub vcpus: u8,
    /// The CPU topology from `-smp`, QEMU's defaults filled in.
    pub smp: Topology,
    pub serial: SerialMode,
    /// How `-serial stdio` (or a stdio chardev) treats the terminal.
    pub stdio: StdioOptions,
    pub devices: Vec<DeviceConfig>,
    /// What an expired watchdog does (`-watchdog-action`, `-action watchdog=`).
    pub watchdog_action: crate::watchdog::WatchdogAction,
    pub boot: Option<BootProtocol>,
    /// `--stats[=text|json]`.
    pub stats: StatsFormat,
    pub verbose: u8,
    /// `-pidfile FILE`: written by the binary at start, removed at exit.
    pub pidfile: Option<PathBuf>,
    /// Threads enter the sandbox (sandbox.rs) after start-up.
    pub sandbox: bool,
    /// QMP sockets (`-qmp`, `-mon` on a `-chardev socket,server=on`).
    pub monitors: Vec<MonitorConfig>,
    /// The normalized command line (program name excluded) that a
    /// snapshot records to rebuild this machine (set by the CLI).
    pub argv: Vec<String>,
    /// `--restore DIR`: the snapshot the build pass restores instead of
    /// booting the kernel.
    pub restore: Option<Restoring>,
    /// `--snapshot-on-signal DIR`: SIGUSR1 saves a snapshot to DIR, then
    /// the VM ends.
    pub snapshot_on_signal: Option<PathBuf>,
    /// `-S`: the vCPUs wait for QMP `cont` (set by the CLI).
    pub start_paused: bool,
}

fn check_ram_size(option: &'static str, size: u64) -> Result<(), Error> {
    // The boot structures live in the first MiB and the kernel above it.
    const MIN: u64 = 16 << 20;
    if size < MIN {
        return Err(invalid(
            option,
            format!("guest RAM of {size} bytes is below the 16 MiB minimum"),
        ));
    }
    if !size.is_multiple_of(4096) {
        return Err(invalid(
            option,
            format!("guest RAM of {size} bytes is not a multiple of 4 KiB"),
        ));
    }
    Ok(())
}

impl Config {
    /// Validates the option values into a configuration.
    pub fn build(input: Input) -> Result<Config, Error> {
        let kernel = input.kernel.clone().ok_or_else(|| {
            invalid(
                "-kernel",
                "required: shmvm boots a kernel directly (-kernel PATH), it has no firmware or disks",
            )
        })?;
        let mut objects: Vec<BackendConfig> = Vec::new();
        for o in &input.objects {
            let cfg = object::parse(o)?;
            if objects.iter().any(|c| c.id() == cfg.id()) {
                return Err(invalid("-object", format!("duplicate id '{}'", cfg.id())));
            }
            objects.push(cfg);
        }
        let m = machine::parse_machine(&input.machine)?;
        let numa_memdev = machine::parse_numa(&input.numa)?;
        let mem_size = machine::parse_memory(&input.memory)?;
        let (ram_id, ram_option) = match (m.memory_backend, numa_memdev) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "-numa",
                    format!("memdev={b} and -machine memory-backend={a} name different backends"),
                ));
            }
            (Some(a), _) => (Some(a), "-machine"),
            (None, Some(b)) => (Some(b), "-numa"),
            (None, None) => (None, "-m"),
        };
        let ram_from_object = ram_id.is_some();
        let ram = match ram_id {
            Some(id) => {
                if input.mem_path.is_some() {
                    return Err(invalid(
                        "-mem-path",
                        format!("guest RAM is already the backend '{id}' ({ram_option})"),
                    ));
                }
                let pos = objects.iter().position(|c| c.id() == id).ok_or_else(|| {
                    invalid(
                        ram_option,
                        format!("memory backend '{id}' is not defined by any -object"),
                    )
                })?;
                let mut cfg = objects.remove(pos);
                if let Some(m) = mem_size
                    && m != cfg.size()
                {
                    return Err(invalid(
                        "-m",
                        format!(
                            "{m} bytes does not match memory backend '{id}' size {}",
                            cfg.size()
                        ),
                    ));
                }
                check_ram_size("-object", cfg.size())?;
                if input.mem_prealloc {
                    cfg.set_prealloc(true);
                }
                cfg
            }
            None => machine::default_ram(
                mem_size.unwrap_or(DEFAULT_RAM),
                input.mem_path.as_deref(),
                input.mem_prealloc,
            )?,
        };
        if ram.kind() == BackendKind::Ram && ram.share() {
            log::debug!(
                "guest RAM backend '{}' is shared anonymous memory",
                ram.id()
            );
        }
        let smp = machine::parse_smp(&input.smp)?;
        let serial = chardev::resolve_serial(
            &input.serial,
            &input.chardevs,
            &input.mon,
            &input.qmp,
            input.nographic,
        )?;
        let drives = input
            .drives
            .iter()
            .map(|d| crate::virtio::config::parse_drive(d))
            .collect::<Result<Vec<_>, _>>()?;
        if input.snapshot && drives.iter().any(|d| !d.readonly) {
            return Err(invalid(
                "-snapshot",
                "shmvm writes -drive images in place (no temporary overlay): drop -snapshot, \
                 add readonly=on, or give the guest a copy of the image",
            ));
        }
        let mut devices = input
            .devices
            .iter()
            .map(|d| device::parse_with(d, &drives))
            .collect::<Result<Vec<_>, _>>()?;
        device::check_drives(&mut devices, &drives)?;
        device::check_serial(&mut devices, &input.chardevs, &serial.listeners)?;
        device::check_ivshmem(&mut devices, &ram, &objects)?;
        let sockets = device::check_ivshmem_doorbell(&mut devices, &serial.sockets)?;
        device::check_vhost_user(&mut devices, &input.vhost_user_blk, &sockets, &ram)?;
        let watchdog_action = crate::watchdog::parse_actions(&input.actions)?;
        let cmdline = input.append.unwrap_or_default();
        if cmdline.contains('\0') {
            return Err(invalid("-append", "contains a NUL byte"));
        }
        if cmdline.len() as u64 >= crate::layout::CMDLINE_MAX {
            return Err(invalid(
                "-append",
                format!("{} bytes is too long", cmdline.len()),
            ));
        }
        Ok(Config {
            kernel,
            initrd: input.initrd,
            cmdline,
            ram_from_object,
            ram,
            objects,
            vcpus: smp.cpus,
            smp,
            serial: serial.mode,
            stdio: serial.stdio,
            devices,
            watchdog_action,
            boot: input.boot,
            stats: input.stats,
            pidfile: input.pidfile,
            verbose: input.verbose,
            sandbox: input.sandbox,
            monitors: serial.monitors,
            argv: Vec::new(),
            restore: None,
            snapshot_on_signal: None,
            start_paused: false,
        })
    }
}

#[cfg(test)]
mod keyval_proptests;
#[cfg(test)]
mod tests;
