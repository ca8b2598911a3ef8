//! The command-line contract, in one table: every option a QEMU x86_64
//! command line can carry is either done as QEMU does it (class 1), accepted
//! as a no-op because it changes nothing for shmvm (class 2, said at `-v`),
//! or refused in one line naming the option as written and the shmvm way
//! (class 3). [`normalize`] applies the table to argv before clap sees it;
//! the README's option table is generated from it ([`markdown_table`]) and
//! a test keeps the two equal.

use std::ffi::OsString;

/// What shmvm does with an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// What QEMU does, with QEMU's defaults.
    Same,
    /// Nothing: it changes nothing for shmvm (logged at `-v`).
    NoOp,
    /// Refused, naming the shmvm way.
    Refused,
    /// shmvm's own option (no QEMU equivalent).
    Own,
}

/// One option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opt {
    /// The name without dashes, as QEMU spells it (`-name` and `--name` both work).
    pub name: &'static str,
    /// The value's name; None for a flag.
    pub value: Option<&'static str>,
    pub class: Class,
    /// Class 1 and own options: clap's long name.
    pub clap: &'static str,
    /// Class 2 options with values: the values that are no-ops (a trailing
    /// `*` matches a prefix); any other value is refused with `refusal`.
    /// Empty: every value is a no-op.
    pub noop_values: &'static [&'static str],
    /// Class 1/own: what it does; class 2: why it is a no-op; class 3: the
    /// shmvm way.
    pub text: &'static str,
    /// Class 2 options whose other values are refused: why, and the way.
    pub refusal: &'static str,
}

const fn same(
    name: &'static str,
    value: Option<&'static str>,
    clap: &'static str,
    text: &'static str,
) -> Opt {
    Opt {
        name,
        value,
        class: Class::Same,
        clap,
        noop_values: &[],
        text,
        refusal: "",
    }
}

const fn own(name: &'static str, value: Option<&'static str>, text: &'static str) -> Opt {
    Opt {
        name,
        value,
        class: Class::Own,
        clap: name,
        noop_values: &[],
        text,
        refusal: "",
    }
}

const fn noop(name: &'static str, value: Option<&'static str>, text: &'static str) -> Opt {
    Opt {
        name,
        value,
        class: Class::NoOp,
        clap: "",
        noop_values: &[],
        text,
        refusal: "",
    }
}

const fn noop_if(
    name: &'static str,
    value: &'static str,
    noop_values: &'static [&'static str],
    text: &'static str,
    refusal: &'static str,
) -> Opt {
    Opt {
        name,
        value: Some(value),
        class: Class::NoOp,
        clap: "",
        noop_values,
        text,
        refusal,
    }
}

const fn refused(name: &'static str, value: Option<&'static str>, text: &'static str) -> Opt {
    Opt {
        name,
        value,
        class: Class::Refused,
        clap: "",
        noop_values: &[],
        text,
        refusal: "",
    }
}

const DISKS: &str = "use -drive file=IMG,if=virtio,format=raw, or -device vhost-user-blk-pci";
const NO_MONITOR: &str = "shmvm has no monitor but QMP (-qmp) and no gdb stub";

/// Every option, in the order the README lists them.
pub const OPTIONS: &[Opt] = &[
    // Class 1: what QEMU does.
    same(
        "kernel",
        Some("PATH"),
        "kernel",
        "the kernel: 64-bit ELF (PVH note or 64-bit entry), 32-bit ELF (PVH note), bzImage, Multiboot v1",
    ),
    same(
        "initrd",
        Some("PATH"),
        "initrd",
        "initial ramdisk (PVH module 0 or Linux initrd); for Multiboot, QEMU's module list `file args,file2` (`,,` = comma)",
    ),
    same(
        "append",
        Some("STR"),
        "cmdline",
        "kernel command line, taken verbatim (even `-append -kernel`)",
    ),
    same(
        "m",
        Some("[size=]SIZE"),
        "memory",
        "guest RAM (default 128M, unit MiB); the last -m wins; no slots/maxmem",
    ),
    same(
        "smp",
        Some("[cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M]"),
        "smp",
        "vCPUs and topology, QEMU's defaulting; at most 64",
    ),
    same(
        "machine",
        Some("[type=]TYPE[,memory-backend=ID][,accel=kvm]"),
        "machine",
        "shmvm, microvm, q35, pc (all mean shmvm's machine); memory-backend picks guest RAM; `-machine help`",
    ),
    same("M", Some("TYPE[,...]"), "machine", "same as -machine"),
    same(
        "object",
        Some("memory-backend-{ram,file,memfd,shm},id=ID,size=SIZE,..."),
        "object",
        "a memory backend, QEMU's properties and defaults; `-object help`",
    ),
    same(
        "numa",
        Some("node,memdev=ID"),
        "numa",
        "one NUMA node whose memdev is guest RAM (QEMU's vhost-user recipe)",
    ),
    same(
        "mem-path",
        Some("DIR"),
        "mem-path",
        "guest RAM in a file under DIR (memory-backend-file, share=off)",
    ),
    same(
        "mem-prealloc",
        None,
        "mem-prealloc",
        "preallocate guest RAM (prealloc=on)",
    ),
    same(
        "device",
        Some("TYPE[,PROP=V...]"),
        "device",
        "isa-debug-exit (iobase=0x501,iosize=2 by default), ivshmem-plain, ivshmem-doorbell, vhost-user-{blk,fs,vsock,rng,device}-pci, virtio-blk-pci, virtio-rng-pci, virtio-serial-pci with virtconsole / virtserialport, i6300esb; `-device help`",
    ),
    same(
        "drive",
        Some("file=IMG,if=virtio|none,format=raw[,id=ID][,readonly=on][,cache=none]"),
        "drive",
        "a raw disk image: if=virtio is a virtio-blk-pci device, if=none one for -device virtio-blk-pci,drive=ID; cache=none is O_DIRECT",
    ),
    same(
        "chardev",
        Some("BACKEND,id=ID[,...]"),
        "chardev",
        "socket (a vhost-user back-end or an ivshmem server; server=on,wait=off: a QMP monitor or a virtserialport), stdio[,mux=on][,signal=off], file, null; `-chardev help`",
    ),
    same(
        "serial",
        Some("DEV"),
        "serial",
        "COM1: stdio, mon:stdio (Ctrl-A escapes: C-a x quits, C-a h help), chardev:ID, file:PATH, none; a second -serial only none",
    ),
    same(
        "mon",
        Some("chardev=ID[,mode=control]"),
        "mon",
        "QMP on a -chardev socket,id=ID,path=PATH,server=on,wait=off; on a mux chardev accepted, with no monitor behind it (C-a c says so)",
    ),
    same(
        "qmp",
        Some("unix:PATH,server=on,wait=off"),
        "qmp",
        "a QMP monitor socket (mode 0600, several clients; also server,nowait); README \"A QMP monitor\"",
    ),
    same(
        "nographic",
        None,
        "nographic",
        "no display (shmvm has none); without -serial the console is mon:stdio, as in QEMU",
    ),
    same(
        "pidfile",
        Some("FILE"),
        "pidfile",
        "shmvm's pid written to FILE at start, removed at exit",
    ),
    same(
        "version",
        None,
        "version",
        "the version and the git commit it was built from",
    ),
    same(
        "watchdog-action",
        Some("ACTION"),
        "action",
        "what an expired -device i6300esb does: reset (default; ends shmvm, as -no-reboot), shutdown (ACPI power button), poweroff, pause, debug, none, inject-nmi",
    ),
    same(
        "action",
        Some("watchdog=ACTION[,reboot=shutdown][,shutdown=poweroff]"),
        "action",
        "watchdog= as -watchdog-action (the last of either wins); reboot=shutdown and shutdown=poweroff are shmvm's behaviour, other keys and values refused",
    ),
    same("help", None, "help", "this help (also -h)"),
    // shmvm's own.
    own(
        "vhost-user-blk",
        Some("socket=PATH[,addr=SLOT][,num-queues=N]"),
        "a vhost-user-blk-pci device on a back-end's socket (short form)",
    ),
    own(
        "boot",
        Some("pvh|linux64"),
        "how to enter an ELF kernel with a PVH note (default pvh); QEMU's -boot ORDER is a no-op",
    ),
    own(
        "sandbox",
        Some("on|off"),
        "seccomp filters per thread kind, no_new_privs, capabilities dropped after start-up \
         (default on; Linux only: off and refused elsewhere; README \"Security model\")",
    ),
    own(
        "stats",
        None,
        "per-device statistics on stderr when the VM ends; --stats=json: one JSON line (schema: vmm/src/stats.rs)",
    ),
    own(
        "restore",
        Some("DIR"),
        "restore the snapshot in DIR (QMP x-shmvm-snapshot-save) instead of booting; only the \
         host-side options (-serial, -chardev, -mon, -qmp, -nographic, --stats, -pidfile, \
         --sandbox, -v) go with it (docs/SNAPSHOT.md)",
    ),
    own(
        "restore-ram",
        Some("shared|clone"),
        "how --restore maps guest RAM: shared, the saved memory itself (default), or clone, a \
         private copy-on-write mapping (many VMs from one snapshot)",
    ),
    own(
        "snapshot-on-signal",
        Some("DIR"),
        "for scripts: on SIGUSR1 the VM is stopped, saved to DIR (as QMP x-shmvm-snapshot-save) \
         and ends, exit 0; a failed save is logged and the VM goes on",
    ),
    own(
        "verbose",
        None,
        "-v: info (including every no-op option), -vv debug, -vvv trace",
    ),
    // Class 2: no-ops.
    noop_if(
        "display",
        "none",
        &["none"],
        "no display: shmvm has none",
        "shmvm has no display; use -display none or -nographic",
    ),
    noop_if(
        "vga",
        "none",
        &["none"],
        "no VGA: shmvm has none",
        "shmvm has no graphics; use -vga none",
    ),
    noop(
        "no-reboot",
        None,
        "a guest reset ends shmvm: its only behaviour",
    ),
    noop(
        "enable-kvm",
        None,
        "KVM is shmvm's only accelerator on Linux (refused on macOS: -accel hvf)",
    ),
    noop_if(
        "accel",
        "kvm[,...]",
        &[],
        "the host's accelerator, shmvm's only one: kvm on Linux (hvf[,...] on macOS on Apple silicon); later -accel fallbacks (tcg, ...) are never reached",
        "shmvm runs on the host's accelerator only: -accel kvm on Linux, -accel hvf on macOS",
    ),
    noop_if(
        "cpu",
        "host[,+feat,-feat...]",
        &["host", "host,*", "max", "max,*"],
        "the vCPU model is the host's, as -cpu host",
        "shmvm gives the guest the host CPU; use -cpu host",
    ),
    noop(
        "bios",
        Some("FILE"),
        "shmvm boots -kernel directly: no firmware runs (QEMU's would load the same kernel)",
    ),
    noop("L", Some("DIR"), "shmvm loads no firmware files"),
    noop(
        "nodefaults",
        None,
        "shmvm creates no default devices beyond COM1",
    ),
    noop("no-user-config", None, "shmvm reads no configuration files"),
    noop("name", Some("NAME"), "the VM name is not used"),
    noop("no-hpet", None, "shmvm has no HPET"),
    noop(
        "snapshot",
        None,
        "nothing to discard without writable -drive images; with one, refused (shmvm writes images in place)",
    ),
    noop_if(
        "monitor",
        "none",
        &["none", "null", "/dev/null"],
        "no monitor",
        NO_MONITOR,
    ),
    noop(
        "msg",
        Some("timestamp=on|off"),
        "formats QEMU's own messages; shmvm's log has timestamps at -v",
    ),
    noop_if(
        "net",
        "none",
        &["none"],
        "no network",
        "shmvm has no network devices",
    ),
    noop_if(
        "nic",
        "none",
        &["none"],
        "no network",
        "shmvm has no network devices",
    ),
    noop_if(
        "parallel",
        "none",
        &["none"],
        "no parallel port",
        "shmvm has no parallel port",
    ),
    noop_if(
        "rtc",
        "base=utc[,...]",
        &["base=utc*"],
        "the guest clock is UTC",
        "shmvm's guest clock is UTC; use -rtc base=utc or drop it",
    ),
    noop_if(
        "echr",
        "1",
        // QEMU reads the value with strtol(.., 0): 1 in any base is Ctrl-A,
        // its default (virtme-ng's interactive line passes `-echr 1`).
        &["1", "01", "0x1", "0x01", "0X1", "0X01"],
        "the mux escape key is Ctrl-A (1), QEMU's default",
        "the mux escape key is always Ctrl-A; use -echr 1 or drop it",
    ),
    // Class 3: refused.
    refused("hda", Some("FILE"), DISKS),
    refused("hdb", Some("FILE"), DISKS),
    refused("hdc", Some("FILE"), DISKS),
    refused("hdd", Some("FILE"), DISKS),
    refused("cdrom", Some("FILE"), DISKS),
    refused("fda", Some("FILE"), DISKS),
    refused("fdb", Some("FILE"), DISKS),
    refused("blockdev", Some("..."), DISKS),
    refused(
        "pflash",
        Some("FILE"),
        "shmvm boots -kernel directly, without firmware",
    ),
    refused("netdev", Some("..."), "shmvm has no network devices"),
    refused(
        "virtfs",
        Some("..."),
        "shmvm has no 9p; share memory with -object memory-backend-shm and ivshmem-plain",
    ),
    refused(
        "fsdev",
        Some("..."),
        "shmvm has no 9p; share memory with -object memory-backend-shm and ivshmem-plain",
    ),
    refused("qmp-pretty", Some("DEV"), NO_MONITOR),
    refused("gdb", Some("DEV"), NO_MONITOR),
    refused("s", None, NO_MONITOR),
    same(
        "S",
        None,
        "S",
        "start with the vCPUs stopped (query-status: prelaunch) until QMP cont; needs -qmp or -mon",
    ),
    refused(
        "daemonize",
        None,
        "run shmvm in the background from the shell or a service manager",
    ),
    refused("incoming", Some("URI"), "shmvm has no migration"),
    refused(
        "loadvm",
        Some("NAME"),
        "shmvm has no named snapshots in disk images; its snapshots are directories: --restore DIR",
    ),
    refused("no-shutdown", None, "shmvm exits when the guest shuts down"),
    refused("usb", None, "shmvm has no USB"),
    refused("usbdevice", Some("DEV"), "shmvm has no USB"),
    refused("vnc", Some("DISPLAY"), "shmvm has no display"),
    refused("spice", Some("..."), "shmvm has no display"),
    refused("audiodev", Some("..."), "shmvm has no audio"),
    refused("dtb", Some("FILE"), "x86 guests take no device tree"),
    refused("acpitable", Some("..."), "shmvm writes its own ACPI tables"),
    refused("smbios", Some("..."), "shmvm has no SMBIOS tables"),
    refused("fw_cfg", Some("..."), "shmvm has no fw_cfg"),
    refused(
        "icount",
        Some("..."),
        "KVM runs guests natively: no instruction counting",
    ),
    refused(
        "global",
        Some("..."),
        "set the property on the -device itself",
    ),
    refused(
        "readconfig",
        Some("FILE"),
        "give the options on the command line",
    ),
    refused("D", Some("FILE"), "use -v for shmvm's log (on stderr)"),
    refused("d", Some("ITEMS"), "use -v for shmvm's log (on stderr)"),
    refused(
        "trace",
        Some("..."),
        "use -vv or -vvv for shmvm's debug log",
    ),
    refused(
        "overcommit",
        Some("..."),
        "use the memory backend's properties (prealloc, reserve)",
    ),
];

/// Finds the table row for a name given without dashes.
pub fn find(name: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.name == name)
}

fn value_is_noop(o: &Opt, value: &str) -> bool {
    o.noop_values.is_empty()
        || o.noop_values.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => value == *p,
        })
}

/// An option refused in one line, naming the option as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}: not supported; {1}")]
    Refused(String, &'static str),
    #[error("{0} {1}: not supported; {2}")]
    RefusedValue(String, String, &'static str),
    #[error("{0}: unknown option{1}")]
    Unknown(String, String),
    #[error("{0}: needs a value ({1})")]
    NoValue(String, &'static str),
    #[error("{0} {1}: {2}")]
    BadValue(String, String, String),
    #[error("'{0}': a bare argument is a disk image for QEMU (-hda); not supported; {DISKS}")]
    Bare(String),
}

/// What [`normalize`] made of argv.
#[derive(Debug, Default)]
pub struct Normalized {
    /// clap-ready arguments (`--long value`), program name first.
    pub args: Vec<OsString>,
    /// The no-op options given, as written, with the reason (for `-v`).
    pub noops: Vec<String>,
    /// How many `-v` (`-vv` counts 2, `--verbose` 1).
    pub verbose: usize,
    /// `-cpu help` or `-accel help`: the text to print instead of running.
    pub help: Option<String>,
}

/// `-cpu help`: the models shmvm accepts (QEMU lists its own here).
const CPU_HELP: &str = "Available CPUs:
  host                   the host CPU as the hypervisor exposes it (shmvm's only model)
  max                    accepted: means host
";

/// `-accel help`: shmvm's accelerator on this host, in QEMU's format.
const ACCEL_HELP: &str = match crate::hv::HOST_ACCEL {
    Some(_) if cfg!(target_os = "linux") => "Accelerators supported in QEMU binary:\nkvm\n",
    Some(_) => "Accelerators supported in QEMU binary:\nhvf\n",
    None => "Accelerators supported in QEMU binary:\n",
};

/// The closest known option name, for "did you mean" (edit distance <= 2).
fn suggest(name: &str) -> String {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    OPTIONS
        .iter()
        .filter(|o| o.class != Class::Refused && o.name.len() > 1)
        .map(|o| (distance(name, o.name), o.name))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| format!(" (did you mean -{n}?)"))
        .unwrap_or_default()
}

/// Why an accelerator other than the host's is refused, on this host.
const ACCEL_REFUSAL: &str = match crate::hv::HOST_ACCEL {
    Some(_) if cfg!(target_os = "linux") => "shmvm runs on KVM only; use -accel kvm",
    Some(_) => "shmvm runs on Hypervisor.framework only on macOS; use -accel hvf",
    None => {
        "no accelerator is available on this host (shmvm runs on KVM on Linux, HVF on macOS on Apple silicon)"
    }
};

/// Applies the table to argv (program name first): class 1 and own
/// options become clap's `--long value` (a value is never read as an
/// option), no-ops are dropped and remembered, refusals fail.
pub fn normalize<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Normalized, Error> {
    let mut out = Normalized::default();
    let mut args = argv.into_iter();
    out.args.extend(args.next());
    let mut host_accel_seen = false;
    while let Some(a) = args.next() {
        let Some(s) = a.to_str().map(str::to_owned) else {
            return Err(Error::Bare(a.to_string_lossy().into_owned()));
        };
        if !s.starts_with('-') || s == "-" {
            return Err(Error::Bare(s));
        }
        // -v, -vv, -vvv: shmvm's verbosity (QEMU has no -v).
        if s.len() > 1 && s[1..].chars().all(|c| c == 'v') {
            out.verbose += s.len() - 1;
            out.args.push(a);
            continue;
        }
        let body = s.strip_prefix("--").unwrap_or(&s[1..]);
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let name = match name {
            "h" | "?" => "help",
            "V" => "version",
            "memory" => "m",
            "cmdline" => "append",
            n => n,
        };
        let Some(opt) = find(name) else {
            return Err(Error::Unknown(s.clone(), suggest(name)));
        };
        out.verbose += usize::from(opt.name == "verbose" && inline.is_none());
        // The raw value (a path need not be UTF-8), and its text for checks.
        let mut raw_value = || -> Result<OsString, Error> {
            match &inline {
                Some(v) => Ok(OsString::from(v)),
                None => args
                    .next()
                    .ok_or_else(|| Error::NoValue(s.clone(), opt.value.unwrap_or("VALUE"))),
            }
        };
        match opt.class {
            Class::Same | Class::Own => {
                match (&inline, opt.value) {
                    // A flag with an inline value (--stats=json): clap checks it.
                    (Some(v), None) => {
                        out.args.push(OsString::from(format!("--{}={v}", opt.clap)));
                        continue;
                    }
                    _ => out.args.push(OsString::from(format!("--{}", opt.clap))),
                }
                if opt.value.is_some() {
                    let raw = raw_value()?;
                    let v = raw.to_string_lossy().into_owned();
                    // QEMU's -boot (boot order) shares the name with shmvm's --boot.
                    if opt.name == "boot" && !matches!(v.as_str(), "pvh" | "linux64") {
                        out.args.pop();
                        if v.split(',').all(|p| {
                            p.chars().all(|c| "abcdnop".contains(c))
                                || [
                                    "order=",
                                    "once=",
                                    "menu=",
                                    "strict=",
                                    "splash",
                                    "reboot-timeout=",
                                ]
                                .iter()
                                .any(|k| p.starts_with(k))
                        }) {
                            out.noops.push(format!(
                                "{s} {v}: no-op (QEMU's boot order; shmvm boots -kernel directly)"
                            ));
                            continue;
                        }
                        return Err(Error::RefusedValue(
                            s,
                            v,
                            "is not pvh or linux64 (shmvm's --boot) nor a QEMU boot order",
                        ));
                    }
                    // -watchdog-action A is QEMU's -action watchdog=A.
                    if opt.name == "watchdog-action" {
                        let v = raw.to_string_lossy();
                        if !crate::watchdog::WatchdogAction::is_name(&v) {
                            return Err(Error::BadValue(
                                s,
                                v.into_owned(),
                                crate::watchdog::not_an_action(),
                            ));
                        }
                        let mut v = OsString::from("watchdog=");
                        v.push(&raw);
                        out.args.push(v);
                        continue;
                    }
                    out.args.push(raw);
                }
            }
            Class::NoOp if opt.name == "enable-kvm" && crate::hv::HOST_ACCEL != Some("kvm") => {
                return Err(Error::Refused(s, ACCEL_REFUSAL));
            }
            Class::NoOp => {
                let written = match opt.value {
                    Some(_) => {
                        let v = raw_value()?.to_string_lossy().into_owned();
                        if v == "help" || v == "?" {
                            match opt.name {
                                "cpu" => out.help = Some(CPU_HELP.into()),
                                "accel" => out.help = Some(ACCEL_HELP.into()),
                                _ => {}
                            }
                            if out.help.is_some() {
                                continue;
                            }
                        }
                        let ok = if opt.name == "accel" {
                            // QEMU tries each -accel in order: a fallback after
                            // the host's accelerator is never used.
                            let host = v.split(',').next() == crate::hv::HOST_ACCEL;
                            let ok = host || host_accel_seen;
                            host_accel_seen |= host;
                            ok
                        } else {
                            value_is_noop(opt, &v)
                        };
                        if !ok {
                            let why = match opt.name {
                                "accel" => ACCEL_REFUSAL,
                                _ => opt.refusal,
                            };
                            return Err(Error::RefusedValue(s, v, why));
                        }
                        format!("{s} {v}")
                    }
                    None => s.clone(),
                };
                out.noops.push(format!("{written}: no-op ({})", opt.text));
            }
            Class::Refused => return Err(Error::Refused(s, opt.text)),
        }
    }
    Ok(out)
}

fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The README's options table (between its `options-table` markers).
pub fn markdown_table() -> String {
    let mut t = String::from("| Option | Class | What shmvm does |\n| --- | --- | --- |\n");
    for o in OPTIONS {
        let dash = if o.class == Class::Own { "--" } else { "-" };
        let name = match (o.name, o.value) {
            ("verbose", _) => "-v, --verbose".to_string(),
            ("stats", _) => "--stats[=text|json]".to_string(),
            ("help", _) => "-h, -help".to_string(),
            (n, Some(v)) => format!("{dash}{n} {v}"),
            (n, None) => format!("{dash}{n}"),
        };
        let (class, text) = match o.class {
            Class::Same => ("1: as QEMU", o.text.to_string()),
            Class::Own => ("shmvm's own", o.text.to_string()),
            Class::NoOp if o.refusal.is_empty() => ("2: no-op", o.text.to_string()),
            Class::NoOp => (
                "2: no-op",
                format!("{}; other values refused: {}", o.text, o.refusal),
            ),
            Class::Refused => ("3: refused", format!("not supported; {}", o.text)),
        };
        t.push_str(&format!(
            "| `{}` | {class} | {} |\n",
            escape_cell(&name),
            escape_cell(&text)
        ));
    }
    t
}

/// The table as plain text lines (the man page's section).
pub fn plain_table() -> String {
    markdown_table()
        .lines()
        .skip(2)
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').replace("\\|", "|"))
                .collect();
            format!(
                "{}\n    [{}] {}\n",
                cells[0],
                cells[1],
                cells[2..].join(" ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Result<Vec<String>, String> {
        normalize(
            std::iter::once("shmvm")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
        .map(|n| {
            n.args
                .iter()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_unique() {
        for (i, o) in OPTIONS.iter().enumerate() {
            assert!(!OPTIONS[..i].iter().any(|p| p.name == o.name), "{}", o.name);
        }
    }

    #[test]
    fn values_are_never_options() {
        assert_eq!(
            norm(&[
                "-kernel", "k", "-append", "-kernel", "--smp=2", "-m", "64", "-M", "q35"
            ])
            .unwrap(),
            [
                "--kernel",
                "k",
                "--cmdline",
                "-kernel",
                "--smp",
                "2",
                "--memory",
                "64",
                "--machine",
                "q35"
            ]
        );
    }

    #[test]
    fn watchdog_action_is_action_watchdog() {
        assert_eq!(
            norm(&["-watchdog-action", "pause", "-action", "reboot=shutdown"]).unwrap(),
            ["--action", "watchdog=pause", "--action", "reboot=shutdown"]
        );
    }

    #[test]
    fn noops_are_dropped() {
        let n = normalize(
            [
                "shmvm",
                "-nographic",
                "-display",
                "none",
                "-vga",
                "none",
                "-no-reboot",
                "-enable-kvm",
                "-accel",
                "kvm",
                "-accel",
                "tcg",
                "-cpu",
                "host,-arch-capabilities",
                "-nodefaults",
                "-no-user-config",
                "-name",
                "x",
                "-boot",
                "c",
                "-vv",
            ]
            .map(OsString::from),
        )
        .unwrap();
        let args: Vec<_> = n
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["shmvm", "--nographic", "-vv"]);
        assert_eq!(n.noops.len(), 11, "{:?}", n.noops);
    }

    #[test]
    fn refusals_name_the_whole_option() {
        for (args, want) in [
            (
                vec!["-hda", "x"],
                "-hda: not supported; use -drive file=IMG,if=virtio,format=raw",
            ),
            (vec!["--hda", "x"], "--hda: not supported"),
            (
                vec!["-display", "gtk"],
                "-display gtk: not supported; shmvm has no display",
            ),
            (
                vec!["-accel", "tcg"],
                "-accel tcg: not supported; shmvm runs on KVM only",
            ),
            (vec!["-cpu", "qemu64"], "-cpu qemu64: not supported"),
            (
                vec!["-nographi"],
                "-nographi: unknown option (did you mean -nographic?)",
            ),
            (vec!["-frobnicate"], "-frobnicate: unknown option"),
            (vec!["disk.img"], "'disk.img': a bare argument"),
            (vec!["-kernel"], "-kernel: needs a value (PATH)"),
            (vec!["--boot", "efi"], "--boot efi: not supported"),
            (
                vec!["-watchdog-action", "reboot"],
                "-watchdog-action reboot: not a watchdog action (reset, shutdown",
            ),
            (
                vec!["-echr", "0x14"],
                "-echr 0x14: not supported; the mux escape key is always Ctrl-A",
            ),
        ] {
            let e = norm(&args).unwrap_err();
            assert!(e.starts_with(want), "{args:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
