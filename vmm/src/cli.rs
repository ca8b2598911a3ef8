//! Command line: clap with QEMU's spelling for the options QEMU users type.
//!
//! clap has no single-dash long options, so [`qemu_to_clap`] rewrites the
//! known QEMU forms (`-kernel`, `-append`, `-object`, ...) to their `--`
//! spelling first. [`Config::from_args`] turns the parsed options into typed
//! configuration and reports each problem as one line naming the option.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use memory::{BackendConfig, BackendKind};

/// Errors in the command line. Each renders as one line naming the option.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Clap(String),
    #[error("{option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
    /// Already names its option or device.
    #[error("{0}")]
    VhostUserBlk(String),
}

fn invalid(option: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        option,
        reason: reason.into(),
    }
}

const EXAMPLES: &str = "\
Examples:
  shmvm -kernel build/guest/testkernel -m 128M -device isa-debug-exit
  shmvm --kernel vmlinux --initrd initrd.cpio.gz --cmdline 'console=ttyS0 reboot=k' --smp 2
  shmvm -kernel testkernel -object memory-backend-shm,id=ram0,size=1G \\
        -machine memory-backend=ram0 -append 'shmvm.test=memtest'
  shmvm -kernel testkernel -object memory-backend-file,id=m,size=256M,mem-path=/tmp/guest.ram,share=on \\
        -machine memory-backend=m --serial file:/tmp/console.log

Exit status: 0 after a guest poweroff/reset, (v<<1)|1 after the guest writes v to
isa-debug-exit, 1 on a VM failure (triple fault, KVM error), 2 on a usage or
configuration error, 128+N after signal N.";

/// The raw command line as clap sees it.
#[derive(Debug, Parser)]
#[command(name = "shmvm", version, about = "A small KVM VMM with shareable guest RAM", after_help = EXAMPLES)]
pub struct Args {
    /// Kernel to boot: ELF (PVH note or 64-bit entry) or bzImage [QEMU: -kernel]
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk, passed as PVH module 0 or Linux initrd [QEMU: -initrd]
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [QEMU: -append]
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest RAM size (a memory-backend-ram), default unit MiB [QEMU: -m]
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// A memory backend: memory-backend-{ram,file,memfd,shm},id=ID,size=SIZE,... [QEMU: -object]
    #[arg(long, value_name = "PROPS")]
    pub object: Vec<String>,
    /// Machine properties; memory-backend=ID picks guest RAM [QEMU: -machine]
    #[arg(long, value_name = "PROPS")]
    pub machine: Vec<String>,
    /// Number of vCPUs (N or cpus=N) [QEMU: -smp]
    #[arg(long, value_name = "N")]
    pub smp: Option<String>,
    /// Serial console (COM1): stdio, file:PATH or none
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    pub serial: String,
    /// A device: isa-debug-exit[,iobase=0xf4][,iosize=4] or ivshmem-plain,memdev=ID[,addr=SLOT][,master=on|off] [QEMU: -device]
    #[arg(long, value_name = "PROPS")]
    pub device: Vec<String>,
    /// A character device: socket,id=ID,path=PATH (a vhost-user back-end) [QEMU: -chardev]
    #[arg(long, value_name = "PROPS")]
    pub chardev: Vec<String>,
    /// A vhost-user-blk-pci device: socket=PATH[,addr=SLOT][,num-queues=N]
    #[arg(long, value_name = "PROPS")]
    pub vhost_user_blk: Vec<String>,
    /// Boot protocol for an ELF kernel with a PVH note (default pvh)
    #[arg(long, value_enum)]
    pub boot: Option<BootProtocol>,
    /// Print per-device statistics when the VM ends: text, or one JSON line (--stats=json)
    #[arg(long, value_name = "FORMAT", num_args = 0..=1, default_missing_value = "text", require_equals = true)]
    pub stats: Option<StatsArg>,
    /// More logging (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--stats` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsArg {
    Text,
    Json,
}

/// How to enter the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootProtocol {
    /// 32-bit protected-mode entry with hvm_start_info (ELF note XEN_ELFNOTE_PHYS32_ENTRY)
    Pvh,
    /// 64-bit long-mode entry with a Linux zero page
    Linux64,
}

/// Where COM1's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    None,
}

/// Devices from `--device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    DebugExit {
        iobase: u16,
        iosize: u16,
    },
    /// `ivshmem-plain,memdev=ID[,addr=SLOT][,master=on|off]`
    IvshmemPlain(crate::ivshmem::IvshmemConfig),
    /// `vhost-user-blk-pci,chardev=ID` or `--vhost-user-blk socket=PATH`
    VhostUserBlk(crate::vhost_user_blk::VhostUserBlkConfig),
}

/// The validated configuration of one VM.
#[derive(Debug, Clone)]
pub struct Config {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// The backend that provides guest RAM.
    pub ram: BackendConfig,
    /// Whether `ram` came from `--object` (else from `-m` or the default).
    pub ram_from_object: bool,
    /// Every other `-object` backend (for devices such as ivshmem).
    pub objects: Vec<BackendConfig>,
    pub vcpus: u8,
    pub serial: SerialMode,
    pub devices: Vec<DeviceConfig>,
    pub boot: Option<BootProtocol>,
    pub stats: crate::stats::StatsFormat,
    pub verbose: u8,
}

/// Largest vCPU count: APIC IDs 0..N-1 plus the IOAPIC's ID fit in the MP
/// table's 8-bit IDs with room to spare, and test suites stay small.
pub const MAX_VCPUS: u8 = 64;
/// Id of the RAM backend `-m` creates (QEMU's name for it).
pub const DEFAULT_RAM_ID: &str = "pc.ram";
/// QEMU's default RAM size.
pub const DEFAULT_RAM: u64 = 128 << 20;

/// QEMU spellings rewritten to clap's: `-name` -> `--long`.
const QEMU_LONG: &[(&str, &str)] = &[
    ("-kernel", "--kernel"),
    ("-initrd", "--initrd"),
    ("-append", "--cmdline"),
    ("-object", "--object"),
    ("-machine", "--machine"),
    ("-M", "--machine"),
    ("-smp", "--smp"),
    ("-serial", "--serial"),
    ("-device", "--device"),
    ("-chardev", "--chardev"),
    ("-vhost-user-blk", "--vhost-user-blk"),
    ("-memory", "--memory"),
];

/// Options (in clap spelling) whose value is the next argument.
const TAKES_VALUE: &[&str] = &[
    "--kernel",
    "--initrd",
    "--cmdline",
    "--memory",
    "-m",
    "--object",
    "--machine",
    "--smp",
    "--serial",
    "--device",
    "--chardev",
    "--vhost-user-blk",
    "--boot",
];

/// Rewrites QEMU-style single-dash long options (also `-opt=value`) to the
/// `--` form. An option's value (the next argument) is never rewritten, so
/// `-append -kernel` passes "-kernel" as the command line.
pub fn qemu_to_clap<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut rest_verbatim = false;
    let mut value_next = false;
    for a in args {
        let s = match a.to_str() {
            Some(s) if !rest_verbatim && !value_next => s,
            _ => {
                value_next = false;
                out.push(a);
                continue;
            }
        };
        if s == "--" {
            rest_verbatim = true;
            out.push(a);
            continue;
        }
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let long = QEMU_LONG
            .iter()
            .find(|(q, _)| *q == name)
            .map_or(name, |(_, l)| *l);
        value_next = value.is_none() && TAKES_VALUE.contains(&long);
        out.push(match value {
            Some(v) if long != name => OsString::from(format!("{long}={v}")),
            None if long != name => OsString::from(long),
            _ => a,
        });
    }
    out
}

/// Parses a QEMU-style number: decimal or 0x-prefixed hex.
fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_serial(s: &str) -> Result<SerialMode, Error> {
    match s {
        "stdio" | "mon:stdio" => Ok(SerialMode::Stdio),
        "none" | "null" => Ok(SerialMode::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialMode::File(PathBuf::from(p))),
            _ => Err(invalid(
                "--serial",
                format!("'{s}' is not stdio, file:PATH or none"),
            )),
        },
    }
}

fn parse_device(s: &str) -> Result<DeviceConfig, Error> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or_default();
    match name {
        "isa-debug-exit" => {
            let mut iobase = u64::from(devices::debug_exit::DebugExit::DEFAULT_IOBASE);
            let mut iosize = u64::from(devices::debug_exit::DebugExit::DEFAULT_IOSIZE);
            for kv in parts {
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    invalid(
                        "--device",
                        format!("isa-debug-exit: '{kv}' is not key=value"),
                    )
                })?;
                let n = parse_num(v).ok_or_else(|| {
                    invalid(
                        "--device",
                        format!("isa-debug-exit: {k}='{v}' is not a number"),
                    )
                })?;
                match k {
                    "iobase" => iobase = n,
                    "iosize" => iosize = n,
                    _ => {
                        return Err(invalid(
                            "--device",
                            format!("isa-debug-exit: unknown property '{k}' (iobase, iosize)"),
                        ));
                    }
                }
            }
            if iosize == 0 || iosize > 4 || iobase + iosize > 0x1_0000 {
                return Err(invalid(
                    "--device",
                    format!(
                        "isa-debug-exit: iobase={iobase:#x},iosize={iosize} is not 1..4 ports below 0x10000"
                    ),
                ));
            }
            Ok(DeviceConfig::DebugExit {
                iobase: iobase as u16,
                iosize: iosize as u16,
            })
        }
        "ivshmem-plain" => {
            let props = s.split_once(',').map_or("", |(_, p)| p);
            crate::ivshmem::parse(props, 0)
                .map(DeviceConfig::IvshmemPlain)
                .map_err(|e| invalid("--device", e.to_string()))
        }
        "vhost-user-blk-pci" => {
            let props = s.split_once(',').map_or("", |(_, p)| p);
            crate::vhost_user_blk::config::parse_device(props)
                .map(DeviceConfig::VhostUserBlk)
                .map_err(|e| Error::VhostUserBlk(e.to_string()))
        }
        "" => Err(invalid("--device", "empty device name")),
        other => Err(invalid(
            "--device",
            format!(
                "unknown device '{other}' (known: isa-debug-exit, ivshmem-plain, vhost-user-blk-pci)"
            ),
        )),
    }
}

fn parse_smp(s: &str) -> Result<u8, Error> {
    let mut n = None;
    for (i, part) in s.split(',').enumerate() {
        let v = match part.split_once('=') {
            Some(("cpus", v)) => v,
            Some((k, _)) => {
                return Err(invalid(
                    "--smp",
                    format!("unsupported property '{k}' (only cpus=N)"),
                ));
            }
            None if i == 0 => part,
            None => return Err(invalid("--smp", format!("'{part}' is not key=value"))),
        };
        n = Some(v);
    }
    let v = n.unwrap_or_default();
    match v.parse::<u8>() {
        Ok(c) if (1..=MAX_VCPUS).contains(&c) => Ok(c),
        _ => Err(invalid(
            "--smp",
            format!("'{v}' is not a vCPU count between 1 and {MAX_VCPUS}"),
        )),
    }
}

/// `-m 512`, `-m 1G`, `-m size=1G`.
fn parse_memory(s: &str) -> Result<u64, Error> {
    let v = s.strip_prefix("size=").unwrap_or(s);
    if v.contains(',') {
        return Err(invalid(
            "-m",
            format!("'{s}': only a size is supported (no slots/maxmem)"),
        ));
    }
    let size = memory::parse_size(v, 1 << 20).map_err(|e| invalid("-m", format!("'{v}': {e}")))?;
    check_ram_size("-m", size)?;
    Ok(size)
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

/// Numbers the ivshmem devices and checks their memdevs against the
/// backends (see [`crate::ivshmem::check`]).
fn check_ivshmem(
    devices: &mut [DeviceConfig],
    ram: &BackendConfig,
    objects: &[BackendConfig],
) -> Result<(), Error> {
    let mut ivshmem = Vec::new();
    for d in devices.iter_mut() {
        if let DeviceConfig::IvshmemPlain(c) = d {
            c.index = ivshmem.len();
            ivshmem.push(c.clone());
        }
    }
    let memdevs: Vec<_> = objects
        .iter()
        .map(|o| crate::ivshmem::Memdev {
            id: o.id(),
            size: o.size(),
            share: o.share(),
        })
        .collect();
    crate::ivshmem::check(&ivshmem, ram.id(), &memdevs)
        .map_err(|e| invalid("--device", e.to_string()))
}

/// Adds the `--vhost-user-blk` devices, resolves `chardev=` references
/// against `--chardev` and checks guest RAM can be shared with back-ends.
fn check_vhost_user_blk(
    devices: &mut Vec<DeviceConfig>,
    short: &[String],
    chardevs: &[String],
    ram: &BackendConfig,
) -> Result<(), Error> {
    use crate::vhost_user_blk::config as vub;
    let err = |e: vub::Error| Error::VhostUserBlk(e.to_string());
    for s in short {
        devices.push(DeviceConfig::VhostUserBlk(
            vub::parse_short(s).map_err(err)?,
        ));
    }
    let chardevs = chardevs
        .iter()
        .map(|c| vub::parse_chardev(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let mut blk: Vec<&mut vub::VhostUserBlkConfig> = devices
        .iter_mut()
        .filter_map(|d| match d {
            DeviceConfig::VhostUserBlk(c) => Some(c),
            _ => None,
        })
        .collect();
    vub::resolve(&mut blk, &chardevs, ram).map_err(err)
}

impl Config {
    /// Parses a full argv (program name first), QEMU spellings included.
    pub fn from_args<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Config, ParseOutcome> {
        let args = Args::try_parse_from(qemu_to_clap(argv)).map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ParseOutcome::Info(e.to_string())
            }
            _ => {
                // clap renders a paragraph, then tips and usage: keep the
                // first paragraph, on one line.
                let text = e.to_string();
                let para: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                let line = para.join(" ");
                let line = line.strip_prefix("error: ").unwrap_or(&line);
                ParseOutcome::Error(Error::Clap(line.to_string()))
            }
        })?;
        Config::from_parsed(args).map_err(ParseOutcome::Error)
    }

    /// Validates parsed options into a configuration.
    pub fn from_parsed(args: Args) -> Result<Config, Error> {
        let mut objects = Vec::new();
        for o in &args.object {
            let cfg =
                BackendConfig::parse_object(o).map_err(|e| invalid("--object", e.to_string()))?;
            if objects.iter().any(|c: &BackendConfig| c.id() == cfg.id()) {
                return Err(invalid("--object", format!("duplicate id '{}'", cfg.id())));
            }
            objects.push(cfg);
        }
        let mut ram_id = None;
        for m in &args.machine {
            for kv in m.split(',') {
                match kv.split_once('=') {
                    Some(("memory-backend", id)) if !id.is_empty() => ram_id = Some(id.to_string()),
                    Some((k, _)) => {
                        return Err(invalid(
                            "--machine",
                            format!("unsupported property '{k}' (only memory-backend=ID)"),
                        ));
                    }
                    // A bare machine type (QEMU: -M microvm): we have one machine.
                    None if matches!(kv, "microvm" | "pc" | "q35" | "shmvm") => {}
                    None => return Err(invalid("--machine", format!("unknown machine '{kv}'"))),
                }
            }
        }
        let mem_size = args.memory.as_deref().map(parse_memory).transpose()?;
        let ram_from_object = ram_id.is_some();
        let ram = match ram_id {
            Some(id) => {
                let pos = objects.iter().position(|c| c.id() == id).ok_or_else(|| {
                    invalid(
                        "--machine",
                        format!("memory-backend '{id}' is not defined by any --object"),
                    )
                })?;
                let cfg = objects.remove(pos);
                if let Some(m) = mem_size
                    && m != cfg.size()
                {
                    return Err(invalid(
                        "-m",
                        format!(
                            "{m} bytes does not match memory-backend '{id}' size {}",
                            cfg.size()
                        ),
                    ));
                }
                check_ram_size("--object", cfg.size())?;
                cfg
            }
            None => BackendConfig::ram(DEFAULT_RAM_ID, mem_size.unwrap_or(DEFAULT_RAM)),
        };
        if ram.kind() == BackendKind::Ram && ram.share() {
            log::debug!(
                "guest RAM backend '{}' is shared anonymous memory",
                ram.id()
            );
        }
        let vcpus = args.smp.as_deref().map(parse_smp).transpose()?.unwrap_or(1);
        let serial = parse_serial(&args.serial)?;
        let mut devices = args
            .device
            .iter()
            .map(|d| parse_device(d))
            .collect::<Result<Vec<_>, _>>()?;
        check_ivshmem(&mut devices, &ram, &objects)?;
        check_vhost_user_blk(&mut devices, &args.vhost_user_blk, &args.chardev, &ram)?;
        let cmdline = args.cmdline.unwrap_or_default();
        if cmdline.contains('\0') {
            return Err(invalid("--cmdline", "contains a NUL byte"));
        }
        if cmdline.len() as u64 >= crate::layout::CMDLINE_MAX {
            return Err(invalid(
                "--cmdline",
                format!("{} bytes is too long", cmdline.len()),
            ));
        }
        Ok(Config {
            kernel: args.kernel,
            initrd: args.initrd,
            cmdline,
            ram_from_object,
            ram,
            objects,
            vcpus,
            serial,
            devices,
            boot: args.boot,
            stats: match args.stats {
                None => crate::stats::StatsFormat::Off,
                Some(StatsArg::Text) => crate::stats::StatsFormat::Text,
                Some(StatsArg::Json) => crate::stats::StatsFormat::Json,
            },
            verbose: args.verbose,
        })
    }
}

/// What parsing produced when it did not produce a configuration.
#[derive(Debug)]
pub enum ParseOutcome {
    /// `--help` / `--version` text: print it and exit 0.
    Info(String),
    Error(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ParseOutcome> {
        Config::from_args(
            std::iter::once("shmvm")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Err(ParseOutcome::Error(e)) => e.to_string(),
            other => panic!("expected an error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn rewrites_qemu_spellings_but_not_values() {
        let v = qemu_to_clap(
            [
                "shmvm", "-kernel", "k", "-append", "-kernel", "-smp=2", "-m", "64", "-serial",
                "none", "--", "-initrd",
            ]
            .map(OsString::from),
        );
        let v: Vec<_> = v.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            v,
            [
                "shmvm",
                "--kernel",
                "k",
                "--cmdline",
                "-kernel",
                "--smp=2",
                "-m",
                "64",
                "--serial",
                "none",
                "--",
                "-initrd"
            ]
        );
    }

    #[test]
    fn qemu_style_command_line_parses() {
        let c = parse(&[
            "-kernel",
            "/k",
            "-initrd",
            "/i",
            "-append",
            "a=1 b",
            "-object",
            "memory-backend-shm,id=ram0,size=64M",
            "-machine",
            "memory-backend=ram0",
            "-smp",
            "2",
            "-serial",
            "none",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-vv",
        ])
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "a=1 b");
        assert_eq!(c.ram.id(), "ram0");
        assert_eq!(c.ram.kind(), BackendKind::Shm);
        assert_eq!(c.ram.size(), 64 << 20);
        assert!(c.objects.is_empty());
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.serial, SerialMode::None);
        assert_eq!(
            c.devices,
            vec![DeviceConfig::DebugExit {
                iobase: 0xf4,
                iosize: 4
            }]
        );
        assert_eq!(c.verbose, 2);
    }

    #[test]
    fn defaults_and_long_forms() {
        let c = parse(&["--kernel", "k"]).unwrap();
        assert_eq!(c.ram.size(), DEFAULT_RAM);
        assert_eq!(c.ram.kind(), BackendKind::Ram);
        assert_eq!(
            (c.vcpus, c.serial.clone(), c.boot),
            (1, SerialMode::Stdio, None)
        );
        let c = parse(&[
            "--kernel",
            "k",
            "-m",
            "256",
            "--smp",
            "cpus=3",
            "--serial",
            "file:/tmp/x",
            "--boot",
            "linux64",
        ])
        .unwrap();
        assert_eq!(c.ram.size(), 256 << 20);
        assert_eq!(c.vcpus, 3);
        assert_eq!(c.serial, SerialMode::File(PathBuf::from("/tmp/x")));
        assert_eq!(c.boot, Some(BootProtocol::Linux64));
        let c = parse(&["--kernel", "k", "--device", "isa-debug-exit"]).unwrap();
        assert_eq!(
            c.devices,
            vec![DeviceConfig::DebugExit {
                iobase: 0xf4,
                iosize: 4
            }]
        );
    }

    #[test]
    fn each_error_is_one_line_naming_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--kernel"),
            (&["--kernel", "k", "--bogus"], "--bogus"),
            (&["--kernel", "k", "-m", "lots"], "-m"),
            (&["--kernel", "k", "-m", "1"], "-m"),
            (&["--kernel", "k", "--smp", "0"], "--smp"),
            (&["--kernel", "k", "--smp", "sockets=2"], "--smp"),
            (&["--kernel", "k", "--serial", "tcp:1"], "--serial"),
            (&["--kernel", "k", "--device", "virtio-net"], "--device"),
            (
                &["--kernel", "k", "--device", "isa-debug-exit,iosize=9"],
                "--device",
            ),
            (
                &["--kernel", "k", "--device", "isa-debug-exit,port=1"],
                "--device",
            ),
            (
                &["--kernel", "k", "--machine", "memory-backend=nope"],
                "--machine",
            ),
            (&["--kernel", "k", "--machine", "accel=kvm"], "--machine"),
            (
                &[
                    "--kernel",
                    "k",
                    "--object",
                    "memory-backend-bogus,id=a,size=1M",
                ],
                "--object",
            ),
            (&["--kernel", "k", "--boot", "uefi"], "--boot"),
            (&["--kernel", "k", "--chardev", "socket,id=c"], "--chardev"),
            (
                &[
                    "--kernel",
                    "k",
                    "--object",
                    "memory-backend-ram,id=a,size=64M",
                    "--object",
                    "memory-backend-ram,id=a,size=64M",
                ],
                "--object",
            ),
            (
                &[
                    "--kernel",
                    "k",
                    "-m",
                    "128",
                    "--object",
                    "memory-backend-ram,id=a,size=64M",
                    "--machine",
                    "memory-backend=a",
                ],
                "-m",
            ),
        ];
        for (args, option) in cases {
            let e = err(args);
            assert!(!e.contains('\n'), "{args:?}: multi-line error {e:?}");
            assert!(
                e.contains(option),
                "{args:?}: error {e:?} does not name {option}"
            );
        }
    }

    #[test]
    fn help_mentions_examples() {
        match parse(&["--help"]) {
            Err(ParseOutcome::Info(t)) => assert!(t.contains("Examples:") && t.contains("-object")),
            other => panic!("{other:?}"),
        }
    }
}
