//! A separate host process for the ivshmem end-to-end tests: opens the
//! region the way any host program would and plays the host side of the
//! test kernel's protocols.
//!
//!   shm-peer handshake REGION [TIMEOUT_MS]
//!   shm-peer slots REGION SLOT PARTIES SEED [TIMEOUT_MS]
//!   shm-peer fnv1a64 FILE      (the test kernel's initrd hash, 0x%016x)
//!
//! REGION is a file path (/dev/shm/NAME) or `shm:/NAME` (shm_open). Prints
//! one line; exit 0 on success, 1 on a protocol failure, 2 on bad usage.

use std::process::ExitCode;
use std::time::Duration;

use shmvm_tests::shm::{self, Region};

fn num(s: Option<&String>, default: Option<u64>) -> Option<u64> {
    match s {
        Some(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        None => default,
    }
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "usage: shm-peer handshake REGION [TIMEOUT_MS] | slots REGION SLOT PARTIES SEED [TIMEOUT_MS] | fnv1a64 FILE"
        );
        ExitCode::from(2)
    };
    let (Some(cmd), Some(spec)) = (a.first(), a.get(1)) else {
        return usage();
    };
    if cmd == "fnv1a64" {
        return match std::fs::read(spec) {
            Ok(data) => {
                println!("{:#018x}", protocol::fnv1a64(&data));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shm-peer: cannot read {spec}: {e}");
                ExitCode::from(1)
            }
        };
    }
    let timeout_arg = if cmd == "slots" { 5 } else { 2 };
    let Some(timeout) = num(a.get(timeout_arg), Some(20_000)) else {
        return usage();
    };
    let timeout = Duration::from_millis(timeout);
    let region = match Region::open_wait(spec, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shm-peer: cannot open {spec}: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cmd.as_str() {
        "handshake" => shm::handshake(&region, timeout).map(|n| format!("handshake ok bytes={n}")),
        "slots" => {
            let (Some(me), Some(parties), Some(seed)) = (
                num(a.get(2), None),
                num(a.get(3), None),
                num(a.get(4), None),
            ) else {
                return usage();
            };
            shm::slots(&region, me, parties, seed, timeout)
                .map(|()| format!("slots ok slot={me} parties={parties}"))
        }
        _ => return usage(),
    };
    match result {
        Ok(line) => {
            println!("shm-peer: {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shm-peer: {cmd} failed: {e}");
            ExitCode::from(1)
        }
    }
}
