//! Embeds the git commit the binary is built from (`shmvm --version`).
//!
//! `SHMVM_GIT_COMMIT` in the environment wins (release builds from a
//! tarball); otherwise `git describe`. Cargo reruns this only when HEAD or
//! the branch it points to moves, so ordinary builds are not forced.
//!
//! Also the hypervisor backend the target has, as a cfg the source reads:
//! `kvm` on Linux (x86_64 and aarch64), `hvf` on macOS on Apple silicon
//! (Hypervisor.framework through `hv-hvf`), neither elsewhere (x86_64
//! macOS, the BSDs), where `shmvm` builds and says that the host has no
//! accelerator (README, "macOS and the BSDs"). Linux-only features that
//! are not the hypervisor (eventfd, epoll, seccomp, vhost-user) use
//! `target_os = "linux"` directly.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// `kvm`, `hvf` or neither, from the target (not the host building it).
fn backend_cfg() {
    println!("cargo::rustc-check-cfg=cfg(kvm)");
    println!("cargo::rustc-check-cfg=cfg(hvf)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    match (os.as_str(), arch.as_str()) {
        ("linux", _) => println!("cargo::rustc-cfg=kvm"),
        ("macos", "aarch64") => println!("cargo::rustc-cfg=hvf"),
        _ => {}
    }
}

fn main() {
    backend_cfg();
    println!("cargo:rerun-if-env-changed=SHMVM_GIT_COMMIT");
    let commit = std::env::var("SHMVM_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself (a branch switch), the branch's
    // ref file and packed-refs (a commit). Only paths that exist: cargo
    // reruns a script whose watched path is missing on every build.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &path])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    // Without any git file watched, cargo would rerun on every change in
    // the package; watch this script instead.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=SHMVM_GIT_COMMIT={commit}");
}
