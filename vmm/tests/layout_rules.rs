//! The structure rules of docs/DESIGN.md, checked on the source tree so
//! they cannot erode quietly:
//! - only `vmm/src/hv/` talks to KVM (no `kvm_bindings`/`kvm_ioctls`
//!   anywhere else in the VMM);
//! - `devices/` and `memory/` never import the VMM;
//! - `aarch64-exits/` and `hv-boundary/` have no `unsafe`; `devices/`'s
//!   is in `notifier.rs` (an eventfd's descriptor borrowed) and
//!   `poller/poll.rs` (poll(2));
//!   `memory/`'s is in `sys.rs` (and test helpers); `hv-hvf/`'s in
//!   `hvf.rs` (Hypervisor.framework), `relay.rs` (poll, fcntl) and
//!   `memmap.rs` (sysconf).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the vmm crate lives in the repository root")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for e in entries {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p, text));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {}", dir.display());
    out
}

/// Lines of `text` (outside comments) containing any of `needles`.
fn hits(text: &str, needles: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn violations(dir: &str, needles: &[&str], allowed: impl Fn(&Path) -> bool) -> Vec<String> {
    let root = repo();
    sources(&root.join(dir))
        .into_iter()
        .filter(|(p, _)| !allowed(p.strip_prefix(&root).unwrap_or(p)))
        .flat_map(|(p, text)| {
            hits(&text, needles)
                .into_iter()
                .map(move |l| format!("{}: {}", p.display(), l.trim()))
        })
        .collect()
}

#[test]
fn only_hv_talks_to_kvm() {
    let v = violations("vmm/src", &["kvm_bindings", "kvm_ioctls"], |p| {
        p.starts_with("vmm/src/hv")
    });
    assert!(
        v.is_empty(),
        "KVM used outside vmm/src/hv/:\n{}",
        v.join("\n")
    );
}

#[test]
fn devices_and_memory_never_import_the_vmm() {
    for dir in ["devices/src", "memory/src"] {
        let v = violations(dir, &[" vmm::", "(vmm::", "use vmm;"], |_| false);
        assert!(v.is_empty(), "{dir} imports the VMM:\n{}", v.join("\n"));
    }
}

#[test]
fn unsafe_stays_where_it_is_documented() {
    let v = violations("devices/src", &["unsafe"], |p| {
        p.ends_with("devices/src/notifier.rs") || p.ends_with("devices/src/poller/poll.rs")
    });
    assert!(
        v.is_empty(),
        "unsafe in devices/ outside notifier.rs, poller/poll.rs:\n{}",
        v.join("\n")
    );
    for dir in ["aarch64-exits/src", "hv-boundary/src"] {
        let v = violations(dir, &["unsafe"], |_| false);
        assert!(v.is_empty(), "unsafe in {dir}:\n{}", v.join("\n"));
    }
    let v = violations("hv-hvf/src", &["unsafe"], |p| {
        ["hvf.rs", "relay.rs", "memmap.rs"]
            .iter()
            .any(|f| p.ends_with(f))
    });
    assert!(
        v.is_empty(),
        "unsafe in hv-hvf/ outside hvf.rs, relay.rs, memmap.rs:\n{}",
        v.join("\n")
    );
    let v = violations("memory/src", &["unsafe"], |p| {
        ["sys.rs", "testutil.rs", "backend_tests.rs"]
            .iter()
            .any(|f| p.ends_with(f))
    });
    assert!(
        v.is_empty(),
        "unsafe in memory/ outside sys.rs:\n{}",
        v.join("\n")
    );
}

#[test]
fn the_checks_see_a_violation() {
    // The scanner itself: a line that uses KVM is found, a comment is not.
    let text = "// kvm_bindings in a comment\nuse kvm_bindings::kvm_regs;\n";
    assert_eq!(
        hits(text, &["kvm_bindings"]),
        ["use kvm_bindings::kvm_regs;"]
    );
}

#[test]
fn only_the_binary_reads_the_command_line() {
    // The CLI collects option values into config::Input; nothing below it
    // (config, boot, devices, the machine, QMP) imports it.
    let v = violations("vmm/src", &["crate::cli", "super::cli", "vmm::cli"], |p| {
        p.starts_with("vmm/src/cli") || p.ends_with("main.rs") || p.starts_with("vmm/src/bin")
    });
    assert!(v.is_empty(), "the CLI imported below it:\n{}", v.join("\n"));
}

#[test]
fn property_lists_go_through_the_one_keyval_parser() {
    // A hand-written `key=value` loop below the CLI is a second parser with
    // its own rules for commas, flags and booleans. (The CLI's classifier in
    // cli/ only recognises values it drops as no-ops; test code may split.)
    let root = repo();
    let v: Vec<String> = sources(&root.join("vmm/src"))
        .into_iter()
        .filter(|(p, _)| {
            let p = p.strip_prefix(&root).unwrap_or(p);
            !p.starts_with("vmm/src/cli")
                && !p.ends_with("config/keyval.rs")
                && !p.ends_with("tests.rs")
        })
        .flat_map(|(p, text)| {
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            hits(code, &["split_once('=')", "split(',')"])
                .into_iter()
                .map(move |l| format!("{}: {}", p.display(), l.trim()))
        })
        .collect();
    assert!(
        v.is_empty(),
        "property lists parsed outside config/keyval.rs:\n{}",
        v.join("\n")
    );
}
