//! Embeds the git commit the binary is built from (`shmvm --version`).
//!
//! `SHMVM_GIT_COMMIT` in the environment wins (release builds from a
//! tarball); otherwise `git describe`. Cargo reruns this only when HEAD or
//! the branch it points to moves, so ordinary builds are not forced.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
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
