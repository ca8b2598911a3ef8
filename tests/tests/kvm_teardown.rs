//! The VM's slow destruction in KVM happens in a helper process after shmvm
//! exits (vmm/src/teardown.rs). This test binary makes itself a child
//! subreaper, so the orphaned helper becomes its child: it can check that
//! the helper exists, is a separate process named `shmvm-teardown`, ends
//! on its own with status 0 and is reaped like any orphan, and that the
//! run left nothing behind. Needs /dev/kvm and the test kernel; kept in its
//! own test binary because a subreaper collects every orphan of the process.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};

use shmvm_tests::harness::{leftover_shm, require_kvm, shmvm_bin, testkernel};

/// Our children named `comm` (from /proc/<pid>/stat: ppid and comm).
fn children_named(comm: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if name == comm && ppid == Some(me.as_str()) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn kvm_teardown_helper_outlives_shmvm_and_is_reaped_as_orphan() {
    require_kvm();
    // SAFETY: prctl with an integer argument; affects only this process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
    let kernel = testkernel();
    // wait_with_output() (as Command::output()): returns once shmvm has
    // exited and both pipes are at EOF, so the helper must not hold shmvm's
    // stdout/stderr.
    let child = Command::new(shmvm_bin())
        .args(["-kernel", kernel.to_str().unwrap()])
        .args(["-object", "memory-backend-shm,id=ram0,size=64M"])
        .args(["-machine", "memory-backend=ram0"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(33),
        "guest did not pass\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shmvm: verdict=pass"), "{stdout}");
    // shmvm is reaped; its helper, orphaned, is now ours (alive or a zombie
    // until we wait for it: either way it is listed).
    let helpers = children_named("shmvm-teardown");
    assert_eq!(
        helpers.len(),
        1,
        "expected one teardown helper adopted by this subreaper, found {helpers:?}"
    );
    let mut status = 0;
    // SAFETY: waitpid on our own child, status written to a local.
    let r = unsafe { libc::waitpid(helpers[0], &mut status, libc::__WALL) };
    assert_eq!(
        r,
        helpers[0],
        "waitpid: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "helper ended with wait status {status:#x}"
    );
    assert!(children_named("shmvm-teardown").is_empty());
    // The named shm object was unlinked before the exit status was sent.
    let left = leftover_shm(pid);
    assert!(left.is_empty(), "leftover shm objects: {left:?}");
}
