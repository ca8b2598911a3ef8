//! The KVM lab runner (README, "The KVM lab"; tests/src/lab):
//!
//!   lab host --dir build/lab --scenarios tests/lab/scenarios
//!       on the development machine (`make lab`): boots L1, resumes after
//!       an L1 death, reports; exit 0 only if every expected run passed
//!   lab l1 /lab/scenarios
//!       inside L1, exec'd by its init: runs and judges every scenario
//!   lab host-arm64 --dir DIR --scenarios FILE
//!       the arm64 lab on the development machine (`make lab-arm64`)
//!   lab l1-arm64 /lab/scenarios
//!       inside the arm64 L1 (the runner built for aarch64)
//!   lab check FILE
//!       parses a scenario table and lists its runs
//!   lab check-vng FILE
//!       prints `yes` if a scenario of the table runs virtme-ng (its L1
//!       then carries vng: `make lab` passes VNG_VENV to build-l1.sh), else `no`
//!
//! Built static (`make lab-tools`): the same binary runs on the host and in
//! the L1 initramfs. Exit status 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;

use shmvm_tests::lab::{self, scenario};

const USAGE: &str = "usage: lab host --dir DIR --scenarios FILE | lab l1 SCENARIOS | lab check[-vng] SCENARIOS\n       lab host-arm64 --dir DIR --scenarios FILE | lab l1-arm64 SCENARIOS";

fn usage(why: &str) -> ExitCode {
    eprintln!("lab: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("l1") => match args.get(1) {
            Some(f) => lab::l1::main(&PathBuf::from(f)),
            None => usage("l1 needs the scenario file"),
        },
        Some("l1-arm64") => match args.get(1) {
            Some(f) => lab::arm64::l1_main(&PathBuf::from(f)),
            None => usage("l1-arm64 needs the scenario file"),
        },
        Some(cmd @ ("check" | "check-vng")) => {
            let Some(f) = args.get(1) else {
                return usage(&format!("{cmd} needs the scenario file"));
            };
            let parsed = std::fs::read_to_string(f)
                .map_err(|e| format!("{f}: {e}"))
                .and_then(|t| scenario::parse(f, &t).map_err(|e| e.to_string()));
            match parsed {
                Ok(all) if cmd == "check-vng" => {
                    let vng = all.iter().any(|s| s.extra.vng);
                    println!("{}", if vng { "yes" } else { "no" });
                    ExitCode::SUCCESS
                }
                Ok(all) => {
                    for s in &all {
                        for v in [scenario::Vmm::Qemu, scenario::Vmm::Shmvm] {
                            if s.runs_with(v) {
                                println!("{}", lab::tag(&s.name, v));
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(half @ ("host" | "host-arm64")) => {
            let (mut dir, mut scenarios) = (None, None);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match (a.as_str(), it.next()) {
                    ("--dir", Some(v)) => dir = Some(PathBuf::from(v)),
                    ("--scenarios", Some(v)) => scenarios = Some(PathBuf::from(v)),
                    _ => return usage(&format!("bad argument {a}")),
                }
            }
            let (Some(dir), Some(scenarios)) = (dir, scenarios) else {
                return usage("host needs --dir and --scenarios");
            };
            if half == "host-arm64" {
                return match lab::arm64::host_main(&dir, &scenarios) {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(e) => {
                        println!("lab-arm64: FAIL: {e}");
                        println!("0 passed, 0 failed");
                        ExitCode::FAILURE
                    }
                };
            }
            match lab::host::main(&dir, &scenarios) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    println!("lab: FAIL: {e}");
                    println!("0 passed, 0 failed");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage("which half?"),
    }
}
