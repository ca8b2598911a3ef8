//! `--restore DIR`: the command line of a restored machine is the one its
//! snapshot recorded, plus the host-side plumbing given now.

use std::ffi::OsString;
use std::path::Path;
#[cfg(all(target_arch = "x86_64", kvm))]
use std::sync::Arc;

use super::{Error, ParseOutcome, Parsed, RestoreRamArg};
#[cfg(all(target_arch = "x86_64", kvm))]
use crate::snapshot::{RamMode, Restore, State};

/// Options that are the host's plumbing, not the machine: a snapshot does
/// not record them, and a restore takes them from its own command line
/// (clap's long names; `-v` is separate).
const HOST_SIDE: &[&str] = &[
    "serial",
    "chardev",
    "mon",
    "qmp",
    "nographic",
    "stats",
    "pidfile",
    "sandbox",
    "snapshot-on-signal",
];

/// Options that only a restore takes.
const RESTORE: &[&str] = &["restore", "restore-ram"];

/// One normalized option: its clap long name (or `-v...`) and value, as
/// tokens.
fn options(args: &[String]) -> Vec<(String, Vec<String>)> {
    let cmd = super::command();
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(long) = a.strip_prefix("--") else {
            out.push((a.clone(), vec![a.clone()]));
            continue;
        };
        let name = long.split('=').next().unwrap_or(long);
        let takes_next = !long.contains('=')
            && cmd
                .get_arguments()
                .find(|x| x.get_long() == Some(name))
                .is_some_and(|x| x.get_action().takes_values() && !x.is_require_equals_set());
        let mut tokens = vec![a.clone()];
        if takes_next && let Some(v) = it.next() {
            tokens.push(v.clone());
        }
        out.push((name.to_string(), tokens));
    }
    out
}

/// The normalized command line a snapshot records: `args` (program name
/// first) without the host-side options.
pub fn machine_argv(args: &[OsString]) -> Vec<String> {
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    options(&args)
        .into_iter()
        .filter(|(name, _)| {
            !HOST_SIDE.contains(&name.as_str())
                && !RESTORE.contains(&name.as_str())
                && !name.starts_with("-v")
        })
        .flat_map(|(_, tokens)| tokens)
        .collect()
}

fn refused(msg: String) -> ParseOutcome {
    ParseOutcome::Error(Error::Restore(msg))
}

/// `--restore DIR` where snapshots do not exist yet (aarch64: its vCPU
/// state is not saved; hosts without KVM): refused, naming the option.
#[cfg(not(all(target_arch = "x86_64", kvm)))]
pub fn parse(
    dir: &Path,
    _ram: Option<RestoreRamArg>,
    _args: &[OsString],
) -> Result<Parsed, ParseOutcome> {
    Err(refused(format!(
        "--restore {}: snapshots are x86_64 KVM's only in this build (the aarch64 vCPU state is not saved yet)",
        dir.display()
    )))
}

#[cfg(all(target_arch = "x86_64", kvm))]
/// Parses a `--restore DIR` command line (`args`, normalized, program name
/// first): checks what else was given, reads and checks the snapshot, and
/// builds the saved machine's configuration with this line's plumbing.
pub fn parse(
    dir: &Path,
    ram: Option<RestoreRamArg>,
    args: &[OsString],
) -> Result<Parsed, ParseOutcome> {
    let given: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut plumbing = Vec::new();
    for (name, tokens) in options(&given) {
        if RESTORE.contains(&name.as_str()) {
            continue;
        }
        if !HOST_SIDE.contains(&name.as_str()) && !name.starts_with("-v") {
            // As the user spells it: QEMU's name where the option has one.
            let spelled = super::options::OPTIONS
                .iter()
                .find(|o| o.clap == name)
                .map_or(format!("--{name}"), |o| format!("-{}", o.name));
            return Err(refused(format!(
                "--restore {}: {spelled} cannot be given: the snapshot rebuilds the machine as \
                 it was saved; only -serial, -chardev, -mon, -qmp, -nographic, --stats, \
                 -pidfile, --sandbox, --snapshot-on-signal and -v go with --restore",
                dir.display()
            )));
        }
        plumbing.extend(tokens);
    }
    let state =
        State::read(dir).map_err(|e| refused(format!("--restore {}: {e}", dir.display())))?;
    let mut argv: Vec<OsString> = vec![args.first().cloned().unwrap_or_else(|| "shmvm".into())];
    argv.extend(state.argv.iter().map(OsString::from));
    argv.extend(plumbing.into_iter().map(OsString::from));
    let mut parsed = super::parse(argv).map_err(|e| match e {
        ParseOutcome::Error(e) => refused(format!(
            "--restore {}: the saved command line does not parse here: {e}",
            dir.display()
        )),
        info => info,
    })?;
    parsed.config.argv = state.argv.clone();
    parsed.config.restore = Some(Arc::new(Restore {
        dir: dir.to_path_buf(),
        state,
        ram: match ram {
            None | Some(RestoreRamArg::Shared) => RamMode::Shared,
            Some(RestoreRamArg::Clone) => RamMode::Clone,
        },
    }));
    Ok(parsed)
}

#[cfg(all(test, target_arch = "x86_64", kvm))]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::machine::snapshot_refusal as refusal;

    fn config(args: &[&str]) -> Config {
        let argv = ["shmvm", "-kernel", "k"].iter().chain(args).map(Into::into);
        match super::super::parse(argv) {
            Ok(p) => p.config,
            Err(e) => panic!("{args:?}: {e:?}"),
        }
    }

    #[test]
    fn devices_whose_state_is_a_peers_are_refused_by_name() {
        assert_eq!(refusal(&config(&["-device", "isa-debug-exit"])), None);
        let why = refusal(&config(&[
            "-chardev",
            "socket,id=ivs,path=/tmp/ivshmem.sock",
            "-device",
            "ivshmem-doorbell,chardev=ivs",
        ]))
        .expect("ivshmem-doorbell is refused");
        assert!(
            why.contains("ivshmem-doorbell") && why.contains("new peer"),
            "{why}"
        );
        let why = refusal(&config(&[
            "-object",
            "memory-backend-memfd,id=mem,size=64M,share=on",
            "-machine",
            "memory-backend=mem",
            "--vhost-user-blk",
            "socket=/tmp/vub.sock",
        ]))
        .expect("vhost-user-blk is refused");
        assert!(why.contains("vhost-user"), "{why}");
    }

    #[test]
    fn the_recorded_line_keeps_the_machine_and_drops_the_plumbing() {
        let args: Vec<OsString> = [
            "shmvm",
            "--kernel",
            "k",
            "--serial",
            "file:/x",
            "--stats=json",
            "-vv",
            "--memory",
            "64",
            "--qmp",
            "unix:/q,server=on,wait=off",
            "--nographic",
            "--smp",
            "2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            machine_argv(&args),
            ["--kernel", "k", "--memory", "64", "--smp", "2"]
        );
    }
}
