//! Command line: QEMU's spelling and meaning, by contract.
//!
//! [`options::normalize`] applies the option table (class 1: as QEMU, class
//! 2: no-op, class 3: refused) and rewrites QEMU's single-dash options into
//! clap's `--long` form; clap parses that; [`crate::config::Config::build`]
//! turns the values into typed configuration. `-device help` and friends
//! are answered from the configuration layer's property tables.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod options;
mod restore;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};

use crate::config::{self, BootProtocol, Config, Input, StatsFormat};

/// Errors in the command line. Each renders as one line naming the option.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Clap(String),
    #[error(transparent)]
    Option(#[from] options::Error),
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("{0}")]
    Restore(String),
    /// `-device TYPE,help` for a type shmvm does not have.
    #[error("{0} {1}: unknown type '{2}' (try {0} help)")]
    HelpType(&'static str, String, String),
    #[error("--sandbox=on: not available on this host (the sandbox is Linux's seccomp)")]
    NoSandbox,
}

/// `--sandbox`: on unless turned off, where it exists (Linux's seccomp);
/// elsewhere off, and asking for it is an error.
fn sandbox(arg: Option<OnOffArg>) -> Result<bool, Error> {
    match arg {
        Some(OnOffArg::Off) => Ok(false),
        _ if cfg!(target_os = "linux") => Ok(true),
        None => Ok(false),
        Some(_) => Err(Error::NoSandbox),
    }
}

impl Error {
    /// Usage and configuration errors: exit status 2.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

const EXAMPLES: &str = "\
Examples:
  shmvm -kernel build/guest/testkernel -m 128M -device isa-debug-exit,iobase=0xf4,iosize=4
  shmvm -kernel vmlinux -initrd initrd.cpio.gz -append 'console=ttyS0 reboot=k' -smp 2 -nographic
  shmvm -kernel testkernel -object memory-backend-shm,id=ram0,size=1G \\
        -machine memory-backend=ram0 -append 'shmvm.test=memtest'
  shmvm -kernel bzImage -m 1G -object memory-backend-memfd,id=mem,size=1G,share=on \\
        -numa node,memdev=mem -chardev socket,id=c0,path=/tmp/vhost.sock \\
        -device vhost-user-blk-pci,chardev=c0
  shmvm -device help | -device isa-debug-exit,help | -object help | -machine help

QEMU options shmvm does not need (-display none, -no-reboot, -enable-kvm,
-cpu host, ...) are accepted and listed at -v; options it cannot honour
(-drive, -netdev, -bios, ...) are refused naming the shmvm way. The full
table is in the README and the man page.

Exit status: 0 after a guest poweroff/reset (or C-a x), (v<<1)|1 after the
guest writes v to isa-debug-exit, 1 on a VM failure (triple fault, KVM
error), 2 on a usage or configuration error (also: /dev/kvm missing or not
accessible), 128+N after signal N.";

/// The version line: crate version and the git commit built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SHMVM_GIT_COMMIT"),
    ")"
);

/// The command line as clap sees it after [`options::normalize`].
#[derive(Debug, Parser)]
#[command(
    name = "shmvm",
    version = VERSION,
    about = "A small KVM VMM with shareable guest RAM and QEMU's command line",
    after_help = EXAMPLES,
    // QEMU: a repeated option is never an error; the last one wins.
    args_override_self = true
)]
pub struct Args {
    /// Kernel to boot: 64-bit or 32-bit ELF (PVH note or 64-bit entry), bzImage, Multiboot v1 [QEMU: -kernel]
    #[arg(long, value_name = "PATH")]
    pub kernel: Vec<PathBuf>,
    /// Initial ramdisk (PVH module 0, Linux initrd) or Multiboot modules `file args,file2` [QEMU: -initrd]
    #[arg(long, value_name = "PATH")]
    pub initrd: Vec<PathBuf>,
    /// Kernel command line [QEMU: -append]
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cmdline: Vec<String>,
    /// Guest RAM size, default unit MiB; the last wins [QEMU: -m]
    #[arg(short = 'm', long, value_name = "SIZE", allow_negative_numbers = true)]
    pub memory: Vec<String>,
    /// A memory backend: memory-backend-{ram,file,memfd,shm},id=ID,size=SIZE,... [QEMU: -object]
    #[arg(long, value_name = "PROPS")]
    pub object: Vec<String>,
    /// Machine type and properties; memory-backend=ID picks guest RAM [QEMU: -machine, -M]
    #[arg(long, value_name = "PROPS")]
    pub machine: Vec<String>,
    /// vCPUs and topology: N,sockets=S,cores=C,threads=T,maxcpus=M [QEMU: -smp]
    #[arg(long, value_name = "PROPS", allow_negative_numbers = true)]
    pub smp: Vec<String>,
    /// One NUMA node whose memdev is guest RAM: node,memdev=ID [QEMU: -numa]
    #[arg(long, value_name = "PROPS")]
    pub numa: Vec<String>,
    /// Guest RAM in a file under DIR [QEMU: -mem-path]
    #[arg(long, value_name = "DIR")]
    pub mem_path: Vec<PathBuf>,
    /// Preallocate guest RAM [QEMU: -mem-prealloc]
    #[arg(long)]
    pub mem_prealloc: bool,
    /// Serial console (COM1): stdio, mon:stdio, chardev:ID, file:PATH or none [QEMU: -serial]
    #[arg(long, value_name = "DEV")]
    pub serial: Vec<String>,
    /// No display; without -serial the console is mon:stdio [QEMU: -nographic]
    #[arg(long)]
    pub nographic: bool,
    /// A device: isa-debug-exit, ivshmem-plain, vhost-user-{blk,fs,vsock,rng,device}-pci (TYPE,help lists properties) [QEMU: -device]
    #[arg(long, value_name = "PROPS")]
    pub device: Vec<String>,
    /// A raw disk image: file=IMG,if=virtio|none,format=raw[,id=ID][,readonly=on][,cache=none] [QEMU: -drive]
    #[arg(long, value_name = "PROPS")]
    pub drive: Vec<String>,
    /// A character device: socket, stdio, file, null [QEMU: -chardev]
    #[arg(long, value_name = "PROPS")]
    pub chardev: Vec<String>,
    /// A monitor: chardev=ID,mode=control on a -chardev socket,server=on is QMP; on a mux chardev accepted without a monitor [QEMU: -mon]
    #[arg(long, value_name = "PROPS")]
    pub mon: Vec<String>,
    /// A QMP monitor socket: unix:PATH,server=on,wait=off [QEMU: -qmp]
    #[arg(long, value_name = "DEV")]
    pub qmp: Vec<String>,
    /// Write the process id to FILE (removed at exit) [QEMU: -pidfile]
    #[arg(long, value_name = "FILE")]
    pub pidfile: Vec<PathBuf>,
    /// What happens on a guest reset, shutdown, or watchdog expiry: watchdog=ACTION (reset, shutdown, poweroff, pause, debug, none, inject-nmi); reboot=shutdown, shutdown=poweroff [QEMU: -action, -watchdog-action]
    #[arg(long, value_name = "PROPS")]
    pub action: Vec<String>,
    /// A vhost-user-blk-pci device: socket=PATH[,addr=SLOT][,num-queues=N]
    #[arg(long, value_name = "PROPS")]
    pub vhost_user_blk: Vec<String>,
    /// Boot protocol for an ELF kernel with a PVH note (default pvh)
    #[arg(long, value_enum)]
    pub boot: Option<BootArg>,
    /// Print per-device statistics when the VM ends: text, or one JSON line (--stats=json)
    #[arg(
        long,
        value_name = "FORMAT",
        num_args = 0..=1,
        default_missing_value = "text",
        require_equals = true
    )]
    pub stats: Option<StatsArg>,
    /// Seccomp filters per thread kind, no_new_privs, no capabilities after start-up (default on)
    #[arg(long, value_name = "on|off", value_enum)]
    pub sandbox: Option<OnOffArg>,
    /// Restore the snapshot in DIR (made by QMP x-shmvm-snapshot-save) instead of booting; only -serial, -chardev, -mon, -qmp, -nographic, --stats, -pidfile, --sandbox, -v go with it
    #[arg(long, value_name = "DIR")]
    pub restore: Vec<PathBuf>,
    /// How --restore maps guest RAM: shared (the saved memory itself, default) or clone (copy-on-write: many VMs from one snapshot)
    #[arg(long, value_enum, value_name = "MODE")]
    pub restore_ram: Option<RestoreRamArg>,
    /// On SIGUSR1: stop the VM, save a snapshot to DIR (as QMP x-shmvm-snapshot-save), and end (exit 0)
    #[arg(long, value_name = "DIR")]
    pub snapshot_on_signal: Vec<PathBuf>,
    /// Start with the vCPUs stopped until QMP cont; needs -qmp or -mon [QEMU: -S]
    #[arg(long = "S")]
    pub start_paused: bool,
    /// More logging (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOffArg {
    On,
    Off,
}

/// `--restore-ram`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RestoreRamArg {
    Shared,
    Clone,
}

/// `--stats` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsArg {
    Text,
    Json,
}

/// `--boot`, clap's spelling of [`BootProtocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootArg {
    /// 32-bit protected-mode entry with hvm_start_info (ELF note XEN_ELFNOTE_PHYS32_ENTRY)
    Pvh,
    /// 64-bit long-mode entry with a Linux zero page
    Linux64,
}

impl From<BootArg> for BootProtocol {
    fn from(b: BootArg) -> BootProtocol {
        match b {
            BootArg::Pvh => BootProtocol::Pvh,
            BootArg::Linux64 => BootProtocol::Linux64,
        }
    }
}

/// What parsing produced when it did not produce a configuration.
#[derive(Debug)]
pub enum ParseOutcome {
    /// `--help`, `--version` or `help` text: print it and exit 0.
    Info(String),
    Error(Error),
}

impl From<Error> for ParseOutcome {
    fn from(e: Error) -> ParseOutcome {
        ParseOutcome::Error(e)
    }
}

/// The clap command (for the man page and completions).
pub fn command() -> clap::Command {
    Args::command()
}

/// A parsed command line: the configuration and the no-op options given.
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    /// Each no-op option as written, with why (logged at `-v`).
    pub noops: Vec<String>,
}

fn clap_error(e: clap::Error) -> ParseOutcome {
    match e.kind() {
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
    }
}

/// An error message as one line: control characters a user put in an
/// argument or a path (a newline, an escape sequence) are shown escaped, so
/// every error stays one line on stderr and cannot drive the terminal.
pub fn one_line(msg: &str) -> String {
    let msg = msg.trim_end_matches('\n');
    if !msg.chars().any(char::is_control) {
        return msg.to_string();
    }
    msg.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses a full argv (program name first): QEMU's spellings, the option
/// table, then the configuration.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Parsed, ParseOutcome> {
    let n = options::normalize(argv).map_err(Error::from)?;
    if let Some(text) = n.help {
        return Err(ParseOutcome::Info(text));
    }
    let args = Args::try_parse_from(&n.args).map_err(clap_error)?;
    if let Some(text) = introspect(&args)? {
        return Err(ParseOutcome::Info(text));
    }
    let run = RunOptions {
        snapshot_on_signal: args.snapshot_on_signal.last().cloned(),
        start_paused: args.start_paused,
    };
    if let Some(dir) = args.restore.last() {
        let mut parsed = restore::parse(dir, args.restore_ram, &n.args)?;
        run_options(&mut parsed.config, run)?;
        return Ok(parsed);
    }
    if args.restore_ram.is_some() {
        return Err(ParseOutcome::Error(Error::Restore(
            "--restore-ram: only with --restore DIR".into(),
        )));
    }
    let input = Input {
        kernel: args.kernel.last().cloned(),
        initrd: args.initrd.last().cloned(),
        append: args.cmdline.last().cloned(),
        memory: args.memory,
        objects: args.object,
        machine: args.machine,
        smp: args.smp,
        serial: args.serial,
        devices: args.device,
        chardevs: args.chardev,
        drives: args.drive,
        numa: args.numa,
        mon: args.mon,
        qmp: args.qmp,
        mem_path: args.mem_path.last().cloned(),
        mem_prealloc: args.mem_prealloc,
        pidfile: args.pidfile.last().cloned(),
        nographic: args.nographic,
        vhost_user_blk: args.vhost_user_blk,
        actions: args.action,
        boot: args.boot.map(BootProtocol::from),
        stats: match args.stats {
            None => StatsFormat::Off,
            Some(StatsArg::Text) => StatsFormat::Text,
            Some(StatsArg::Json) => StatsFormat::Json,
        },
        verbose: args.verbose,
        sandbox: sandbox(args.sandbox)?,
        snapshot: n
            .noops
            .iter()
            .any(|o| o.trim_start_matches('-').starts_with("snapshot:")),
    };
    let mut config = Config::build(input).map_err(Error::from)?;
    config.argv = restore::machine_argv(&n.args);
    run_options(&mut config, run)?;
    Ok(Parsed {
        config,
        noops: n.noops,
    })
}

/// The options of [`run_options`], taken from the arguments.
struct RunOptions {
    snapshot_on_signal: Option<PathBuf>,
    start_paused: bool,
}

/// What a booted and a restored machine both take: `--snapshot-on-signal`
/// and `-S` (which needs a monitor: nothing else could start the VM).
fn run_options(config: &mut Config, run: RunOptions) -> Result<(), Error> {
    config.snapshot_on_signal = run.snapshot_on_signal;
    config.start_paused = run.start_paused;
    if config.start_paused && config.monitors.is_empty() {
        return Err(config::invalid(
            "-S",
            "needs a QMP monitor (-qmp or -mon) to continue the VM",
        )
        .into());
    }
    Ok(())
}

/// The `-v` count of a command line (0 when it does not parse), so that
/// logging is set up before parsing: what the configuration layer says
/// while it parses (`-machine accel=kvm:tcg: ... no-op`) reaches `-v`.
pub fn verbosity(argv: &[OsString]) -> u8 {
    options::normalize(argv.iter().cloned())
        .map_or(0, |n| u8::try_from(n.verbose).unwrap_or(u8::MAX))
}

/// Whether a property list asks for help: `help`, `?`, or `TYPE,help`.
fn wants_help(v: &str) -> Option<Option<&str>> {
    let mut parts = v.split(',');
    let first = parts.next().unwrap_or_default();
    if first == "help" || first == "?" {
        return Some(None);
    }
    parts
        .any(|p| p == "help" || p == "?")
        .then_some(Some(first.strip_prefix("driver=").unwrap_or(first)))
}

fn list(title: &str, types: &[config::TypeInfo]) -> String {
    let mut s = format!("{title}\n");
    for t in types {
        s.push_str(&format!("  {:<22} {}\n", t.name, t.help));
    }
    s
}

/// `OPTION TYPE,help`: the type's properties; an unknown type is an error
/// (QEMU: "Device 'TYPE' not found", exit 1), never help text and exit 0.
fn describe(
    option: &'static str,
    value: &str,
    ty: &str,
    types: &[config::TypeInfo],
) -> Result<String, Error> {
    match types.iter().find(|t| t.name == ty) {
        Some(t) => Ok(t.describe()),
        None => Err(Error::HelpType(option, value.to_string(), ty.to_string())),
    }
}

/// `-device help`, `-device TYPE,help`, `-object help`, `-object TYPE,help`,
/// `-machine help`, `-chardev help`: the text to print, if asked.
fn introspect(a: &Args) -> Result<Option<String>, Error> {
    let groups: [(&str, &[String], &[config::TypeInfo], &str); 4] = [
        ("-device", &a.device, config::device::TYPES, "Devices:"),
        ("-object", &a.object, config::object::TYPES, "Objects:"),
        (
            "-machine",
            &a.machine,
            config::machine::MACHINES,
            "Supported machines are:",
        ),
        (
            "-chardev",
            &a.chardev,
            config::chardev::TYPES,
            "Available chardev backend types:",
        ),
    ];
    for (option, values, types, title) in groups {
        for v in values {
            match wants_help(v) {
                Some(None) => return Ok(Some(list(title, types))),
                Some(Some(ty)) => return describe(option, v, ty, types).map(Some),
                None => {}
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
