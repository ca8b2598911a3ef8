//! The KVM lab runner (`make lab`; README, "The KVM lab"): one static binary
//! (`tests/src/bin/lab.rs`) with two halves.
//! - [`host`]: on the development machine, boots the L1 Linux under QEMU TCG
//!   with nested SVM, resumes unfinished scenarios in a fresh L1 after an L1
//!   death or hang (loudly), checks that every expected run reported, and
//!   prints one machine-readable line per run, a budget line and
//!   `N passed, N failed` last.
//! - [`l1`]: inside L1 (its init only mounts and execs it), boots the L2 of
//!   every scenario with every L2 VMM, plays the host side of the L2's
//!   ivshmem and disk protocols (and the doorbell scenario's ivshmem-server
//!   with its three guests), judges the L2's `LAB-RESULT` lines and
//!   prints one `LAB-SCENARIO` line per run.
//!
//! Scenarios are data: `tests/lab/scenarios`, one line each ([`scenario`]).

pub mod arm64;
pub mod arm64_testkernel;
pub mod host;
pub mod l1;
pub mod scenario;

use std::collections::HashMap;

/// The `key=value` fields of a line (later keys do not override earlier).
pub fn fields(line: &str) -> HashMap<&str, &str> {
    let mut m = HashMap::new();
    for w in line.split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            m.entry(k).or_insert(v);
        }
    }
    m
}

/// A run's tag: `NAME.VMM`.
pub fn tag(name: &str, vmm: scenario::Vmm) -> String {
    format!("{name}.{vmm}")
}
