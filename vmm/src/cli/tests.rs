use std::path::PathBuf;

use memory::BackendKind;

use super::*;
use crate::config::{DeviceConfig, SerialMode};

fn parse_args(args: &[&str]) -> Result<Parsed, ParseOutcome> {
    parse(
        std::iter::once("shmvm")
            .chain(args.iter().copied())
            .map(OsString::from),
    )
}

fn cfg(args: &[&str]) -> Config {
    match parse_args(args) {
        Ok(p) => p.config,
        Err(e) => panic!("{args:?}: {e:?}"),
    }
}

fn err(args: &[&str]) -> String {
    match parse_args(args) {
        Err(ParseOutcome::Error(e)) => e.to_string(),
        other => panic!("expected an error for {args:?}, got {other:?}"),
    }
}

fn info(args: &[&str]) -> String {
    match parse_args(args) {
        Err(ParseOutcome::Info(t)) => t,
        other => panic!("expected help text for {args:?}, got {other:?}"),
    }
}

#[test]
fn qemu_style_command_line_parses() {
    let c = cfg(&[
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
    ]);
    assert_eq!(c.kernel, PathBuf::from("/k"));
    assert_eq!(c.initrd, Some(PathBuf::from("/i")));
    assert_eq!(c.cmdline, "a=1 b");
    assert_eq!(c.ram.id(), "ram0");
    assert_eq!(c.ram.kind(), BackendKind::Shm);
    assert_eq!(c.ram.size(), 64 << 20);
    assert!(c.objects.is_empty());
    assert_eq!((c.vcpus, c.smp.cpus, c.smp.cores), (2, 2, 2));
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
    let c = cfg(&["--kernel", "k"]);
    assert_eq!(c.ram.size(), crate::config::DEFAULT_RAM);
    assert_eq!(c.ram.kind(), BackendKind::Ram);
    assert_eq!(
        (c.vcpus, c.serial.clone(), c.boot),
        (1, SerialMode::Stdio, None)
    );
    assert!(!c.stdio.mux);
    let c = cfg(&[
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
    ]);
    assert_eq!(c.ram.size(), 256 << 20);
    assert_eq!(c.vcpus, 3);
    assert_eq!(c.serial, SerialMode::File(PathBuf::from("/tmp/x")));
    assert_eq!(c.boot, Some(BootProtocol::Linux64));
    // QEMU's isa-debug-exit default: port 0x501, 2 ports.
    let c = cfg(&["--kernel", "k", "--device", "isa-debug-exit"]);
    assert_eq!(
        c.devices,
        vec![DeviceConfig::DebugExit {
            iobase: 0x501,
            iosize: 2
        }]
    );
}

#[test]
fn repeated_scalars_keep_the_last_value() {
    let c = cfg(&[
        "-kernel", "a", "-kernel", "b", "-m", "64", "-m", "256M", "-append", "x", "-append",
        "-kernel", "-smp", "2", "-smp", "4",
    ]);
    assert_eq!(c.kernel, PathBuf::from("b"));
    assert_eq!(c.ram.size(), 256 << 20);
    assert_eq!(c.cmdline, "-kernel");
    assert_eq!(c.vcpus, 4);
    // Flags and shmvm's own single-valued options too: never "cannot be
    // used multiple times".
    let c = cfg(&[
        "-kernel",
        "k",
        "-nographic",
        "-nographic",
        "-mem-path",
        "/a",
        "-mem-path",
        "/dev/shm",
        "-mem-prealloc",
        "-mem-prealloc",
        "--boot",
        "pvh",
        "--boot",
        "linux64",
        "--sandbox",
        "on",
        "--sandbox",
        "off",
        "--stats",
        "--stats=json",
        "-pidfile",
        "/a",
        "-pidfile",
        "/b",
    ]);
    assert_eq!(c.boot, Some(BootProtocol::Linux64));
    assert!(!c.sandbox);
    assert_eq!(c.stats, StatsFormat::Json);
    assert_eq!(c.pidfile, Some(PathBuf::from("/b")));
    assert!(c.ram.prealloc());
}

#[test]
fn noop_options_change_nothing() {
    let base = cfg(&["-kernel", "k", "-serial", "stdio"]);
    for extra in [
        &["-display", "none"][..],
        &["-vga", "none"],
        &["-no-reboot"],
        &["-enable-kvm"],
        &["-accel", "kvm"],
        &["-accel", "kvm", "-accel", "tcg"],
        &["-machine", "accel=kvm"],
        &["-cpu", "host"],
        &["-cpu", "host,-arch-capabilities"],
        &["-nodefaults"],
        &["-no-user-config"],
        &["-name", "guest"],
        &["-M", "microvm"],
        &["-M", "pc"],
        &["-machine", "q35"],
        &["-boot", "c"],
        &["-net", "none"],
        &["-monitor", "none"],
        &["-snapshot"],
        &["-echr", "1"],
        &["-echr", "0x01"],
    ] {
        let mut args = vec!["-kernel", "k", "-serial", "stdio"];
        args.extend_from_slice(extra);
        let p = parse_args(&args).unwrap_or_else(|e| panic!("{extra:?}: {e:?}"));
        let c = p.config;
        assert_eq!(
            (
                &c.kernel, &c.cmdline, &c.ram, c.vcpus, c.smp, &c.serial, c.stdio, &c.devices,
                c.boot
            ),
            (
                &base.kernel,
                &base.cmdline,
                &base.ram,
                base.vcpus,
                base.smp,
                &base.serial,
                base.stdio,
                &base.devices,
                base.boot
            ),
            "{extra:?}"
        );
        if !extra
            .iter()
            .any(|a| a.starts_with("-M") || a.contains("machine"))
        {
            assert!(!p.noops.is_empty(), "{extra:?} is not reported at -v");
        }
    }
}

#[test]
fn nographic_makes_the_default_console_a_mux() {
    let c = cfg(&["-kernel", "k", "-nographic"]);
    assert_eq!((c.serial, c.stdio.mux), (SerialMode::Stdio, true));
    let c = cfg(&["-kernel", "k", "-nographic", "-serial", "stdio"]);
    assert!(!c.stdio.mux);
    let c = cfg(&["-kernel", "k", "-serial", "mon:stdio"]);
    assert!(c.stdio.mux);
}

#[test]
fn numa_memdev_and_mem_path() {
    let c = cfg(&[
        "-kernel",
        "k",
        "-m",
        "1G",
        "-object",
        "memory-backend-memfd,id=mem,size=1G,share=on",
        "-numa",
        "node,memdev=mem",
    ]);
    assert_eq!(
        (c.ram.id(), c.ram.kind(), c.ram_from_object),
        ("mem", BackendKind::Memfd, true)
    );
    let c = cfg(&[
        "-kernel",
        "k",
        "-m",
        "64",
        "-mem-path",
        "/dev/shm",
        "-mem-prealloc",
    ]);
    assert_eq!(c.ram.kind(), BackendKind::File);
    assert!(c.ram.prealloc() && !c.ram.share());
    assert_eq!(c.ram.size(), 64 << 20);
}

#[test]
fn each_error_is_one_line_naming_the_option() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "-kernel"),
        (&["-kernel", "k", "--bogus"], "--bogus"),
        (&["-kernel", "k", "-m", "lots"], "-m"),
        (&["-kernel", "k", "-m", "1"], "-m"),
        (&["-kernel", "k", "-smp", "0"], "-smp"),
        (&["-kernel", "k", "-smp", "sockets=2,cpus=3"], "-smp"),
        (&["-kernel", "k", "-serial", "tcp:1"], "-serial"),
        (&["-kernel", "k", "-device", "virtio-net"], "-device"),
        (
            &["-kernel", "k", "-device", "isa-debug-exit,iosize=9"],
            "-device",
        ),
        (
            &["-kernel", "k", "-device", "isa-debug-exit,port=1"],
            "-device",
        ),
        (
            &["-kernel", "k", "-machine", "memory-backend=nope"],
            "-machine",
        ),
        (&["-kernel", "k", "-machine", "accel=tcg"], "-machine"),
        (
            &[
                "-kernel",
                "k",
                "-object",
                "memory-backend-bogus,id=a,size=1M",
            ],
            "-object",
        ),
        (&["-kernel", "k", "--boot", "uefi"], "--boot"),
        (&["-kernel", "k", "-chardev", "socket,id=c"], "-chardev"),
        (&["-kernel", "k", "-numa", "node,memdev=x"], "-numa"),
        (
            &["-kernel", "k", "-nographic", "-drive", "file=a.img"],
            "-drive",
        ),
        (&["-kernel", "k", "-hda", "x"], "-hda"),
        (&["-kernel", "k", "-netdev", "user,id=n"], "-netdev"),
        (
            &[
                "-kernel",
                "k",
                "-object",
                "memory-backend-ram,id=a,size=64M",
                "-object",
                "memory-backend-ram,id=a,size=64M",
            ],
            "-object",
        ),
        (
            &[
                "-kernel",
                "k",
                "-m",
                "128",
                "-object",
                "memory-backend-ram,id=a,size=64M",
                "-machine",
                "memory-backend=a",
            ],
            "-m",
        ),
    ];
    for (args, option) in cases {
        let e = err(args);
        assert!(!e.contains('\n'), "{args:?}: multi-line error {e:?}");
        assert!(
            e.starts_with(option),
            "{args:?}: error {e:?} does not start with {option}"
        );
    }
}

#[test]
fn help_and_introspection() {
    let t = info(&["--help"]);
    assert!(t.contains("Examples:") && t.contains("-object"));
    assert!(info(&["-h"]).contains("Examples:"));
    assert!(info(&["-version"]).contains("git "));
    let t = info(&["-device", "help"]);
    for d in ["isa-debug-exit", "ivshmem-plain", "vhost-user-blk-pci"] {
        assert!(t.contains(d), "{t}");
    }
    let t = info(&["-device", "isa-debug-exit,help"]);
    assert!(
        t.contains("iobase") && t.contains("0x501") && t.contains("iosize"),
        "{t}"
    );
    let t = info(&["-object", "help"]);
    assert!(t.contains("memory-backend-shm"), "{t}");
    let t = info(&["-object", "memory-backend-file,help"]);
    assert!(t.contains("mem-path") && t.contains("share"), "{t}");
    let t = info(&["-machine", "help"]);
    assert!(t.contains("microvm") && t.contains("q35"), "{t}");
    let t = info(&["-M", "?"]);
    assert!(t.contains("microvm"), "{t}");
    let t = info(&["-chardev", "help"]);
    assert!(t.contains("stdio"), "{t}");
    // -cpu and -accel list what they accept, as QEMU's do.
    for a in [["-cpu", "help"], ["-cpu", "?"]] {
        let t = info(&a);
        assert!(
            t.starts_with("Available CPUs:") && t.contains("host"),
            "{t}"
        );
    }
    let t = info(&["-accel", "help"]);
    assert!(t.lines().any(|l| l == "kvm"), "{t}");
    assert_eq!(
        err(&["-cpu", "qemu64"]),
        "-cpu qemu64: not supported; shmvm gives the guest the host CPU; use -cpu host"
    );
    // An unknown type is an error (exit 2), not help text and exit 0.
    assert_eq!(
        err(&["-device", "nope,help"]),
        "-device nope,help: unknown type 'nope' (try -device help)"
    );
    assert!(err(&["-object", "memory-backend-nope,help"]).starts_with("-object "));
}

#[test]
fn readme_options_table_is_generated_from_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let begin = "<!-- options-table:begin (generated: cargo run -p vmm --bin shmvm-gen -- readme-table) -->\n";
    let end = "<!-- options-table:end -->";
    let start = readme
        .find(begin)
        .expect("README has the options-table markers")
        + begin.len();
    let stop = readme[start..].find(end).expect("end marker") + start;
    assert_eq!(
        &readme[start..stop],
        options::markdown_table(),
        "README's option table differs from the code: regenerate it with \
         `cargo run -p vmm --bin shmvm-gen -- readme-table`"
    );
}

#[test]
fn stats_formats() {
    assert_eq!(cfg(&["-kernel", "k"]).stats, StatsFormat::Off);
    assert_eq!(cfg(&["-kernel", "k", "--stats"]).stats, StatsFormat::Text);
    assert_eq!(
        cfg(&["-kernel", "k", "--stats=json"]).stats,
        StatsFormat::Json
    );
    assert!(err(&["-kernel", "k", "--stats=xml"]).contains("xml"));
}

#[test]
fn non_utf8_paths_pass_through() {
    use std::os::unix::ffi::OsStrExt;
    let k = std::ffi::OsStr::from_bytes(b"/tmp/k\xff");
    let p = parse([
        OsString::from("shmvm"),
        OsString::from("-kernel"),
        k.to_os_string(),
    ])
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.config.kernel.as_os_str(), k);
}

#[test]
fn snapshot_with_a_writable_drive_is_refused() {
    let drive = |ro: &str| format!("file=a.img,if=virtio,format=raw{ro}");
    let w = drive("");
    let e = parse_args(&["-kernel", "k", "-drive", &w, "-snapshot"]).unwrap_err();
    assert!(
        format!("{e:?}")
            .contains("option: \"-snapshot\", reason: \"shmvm writes -drive images in place"),
        "{e:?}"
    );
    let ro = drive(",readonly=on");
    assert!(parse_args(&["-kernel", "k", "-drive", &ro, "-snapshot"]).is_ok());
}

/// Words of a shell command line: whitespace-separated, with '...' and
/// "..." quoting (what the README's commands use).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(cur.take()),
            (None, c) => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    words
}

/// Every `shmvm` command in the README's code blocks, continuation lines
/// joined, shell comments and `&`-tails cut, a leading `host$ ` prompt
/// dropped.
fn readme_shmvm_commands(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        let Some(code) = line.strip_prefix("    ") else {
            out.extend(cur.take());
            continue;
        };
        let code = code.trim();
        let code = code.strip_prefix("host$").map_or(code, str::trim);
        let code = code.split(" # ").next().unwrap_or_default();
        let code = code.split(" & ").next().unwrap_or_default().trim();
        let (code, more) = match code.strip_suffix('\\') {
            Some(c) => (c.trim(), true),
            None => (code, false),
        };
        match cur.as_mut() {
            Some((_, c)) => {
                c.push(' ');
                c.push_str(code);
            }
            None if code.starts_with("shmvm ") => cur = Some((i + 1, code.to_string())),
            None => continue,
        }
        if !more {
            out.extend(cur.take());
        }
    }
    out.extend(cur);
    out
}

/// Every `shmvm` command the README shows parses to a configuration or to
/// help text, never to an option error: the README cannot claim a spelling
/// the binary refuses. (The "Running a VM" commands also boot the test
/// kernel: tests/tests/qemu_cli.rs, `kvm_every_readme_command_runs`.)
/// Placeholders: `...` is the rest of a command line (`-kernel k`);
/// `--restore DIR` needs a snapshot, so its error must be about DIR.
#[test]
fn every_readme_shmvm_command_parses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let commands = readme_shmvm_commands(&readme);
    assert!(commands.len() >= 15, "{commands:#?}");
    for (line, cmd) in &commands {
        let cmd = cmd
            .replace("-kernel ...", "-kernel k")
            .replace("...", "-kernel k");
        let words = shell_words(&cmd);
        assert_eq!(words[0], "shmvm");
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        match parse_args(&args) {
            Ok(_) | Err(ParseOutcome::Info(_)) => {}
            Err(ParseOutcome::Error(Error::Restore(msg)))
                if args.first() == Some(&"--restore") && msg.contains(args[1]) => {}
            Err(e) => panic!("README.md:{line}: `{cmd}`: {e:?}"),
        }
    }
}

#[test]
fn readme_command_extraction() {
    let text = "x\n    shmvm -kernel k \\\n        -m 1G   # c\n    shmvm ... -v &  kill $!\n    host$  shmvm -append 'a b'\n    make x\n";
    let c = readme_shmvm_commands(text);
    assert_eq!(
        c,
        [
            (2, "shmvm -kernel k -m 1G".to_string()),
            (4, "shmvm ... -v".to_string()),
            (5, "shmvm -append 'a b'".to_string())
        ]
    );
    assert_eq!(
        shell_words("shmvm -append 'a b' \"\""),
        ["shmvm", "-append", "a b", ""]
    );
}

#[test]
fn verbosity_is_known_before_parsing() {
    let v = |a: &[&str]| {
        let argv: Vec<OsString> = std::iter::once("shmvm")
            .chain(a.iter().copied())
            .map(OsString::from)
            .collect();
        verbosity(&argv)
    };
    assert_eq!(v(&["-kernel", "k", "-vv"]), 2);
    assert_eq!(v(&["-v", "--verbose", "-kernel", "k", "-v"]), 3);
    // A value is never an option: `-append -vvv` is a command line.
    assert_eq!(v(&["-append", "-vvv", "-kernel", "k"]), 0);
    assert_eq!(v(&["-kernel", "k"]), 0);
    assert_eq!(v(&["-bogus", "-v"]), 0);
}

/// The accelerator is the host's (KVM on Linux): another host's, alone or
/// before it, is refused in one line naming the option; `--sandbox=on`
/// stays the default where seccomp exists.
#[cfg(kvm)]
#[test]
fn only_the_hosts_accelerator_is_accepted() {
    for (args, want) in [
        (
            &["-accel", "hvf"][..],
            "-accel hvf: not supported; shmvm runs on KVM only; use -accel kvm",
        ),
        (
            &["-accel", "hvf", "-accel", "kvm"],
            "-accel hvf: not supported; shmvm runs on KVM only; use -accel kvm",
        ),
        (
            &["-machine", "accel=hvf"],
            "-machine: accel=hvf: shmvm runs on KVM only (accel=kvm)",
        ),
    ] {
        let mut a = vec!["-kernel", "k"];
        a.extend_from_slice(args);
        assert_eq!(err(&a), want, "{args:?}");
    }
    // A fallback after the host's accelerator is never reached.
    cfg(&["-kernel", "k", "-accel", "kvm", "-accel", "hvf"]);
    assert_eq!(
        info(&["-accel", "help"]),
        "Accelerators supported in QEMU binary:\nkvm\n"
    );
    assert!(cfg(&["-kernel", "k"]).sandbox);
    assert!(!cfg(&["-kernel", "k", "--sandbox=off"]).sandbox);
}
