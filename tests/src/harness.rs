//! Running the real `shmvm` binary with the test kernel, for the ivshmem
//! tests (several VMs and host peers at once, `--stats` lines on stderr).
//!
//! Prerequisites fail loudly (a panic naming what is missing): /dev/kvm,
//! the binary, the test kernel (see [`crate::vm`]).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use crate::vm::{repo_root, require_kvm, shmvm_bin, testkernel};

/// A unique name for this test process: `shmvm-test-<pid>-<tag>`.
pub fn unique(tag: &str) -> String {
    format!("shmvm-test-{}-{tag}", std::process::id())
}

/// Removes a file when dropped (test leftovers under /dev/shm).
#[derive(Debug)]
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A finished run: exit code and both outputs.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the test kernel's pass verdict (exit code 33).
    pub fn assert_pass(&self) {
        assert!(
            self.code == Some(33) && self.stdout.contains("shmvm: verdict=pass"),
            "guest did not pass (exit {:?})\n--- stdout\n{}--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
    }

    /// The first stdout line starting with `prefix`.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.stdout
            .lines()
            .chain(self.stderr.lines())
            .find(|l| l.trim_start().starts_with(prefix))
    }
}

/// `shmvm` with the test kernel, an exit device, no console input, and
/// `args` appended.
pub fn shmvm(args: &[&str]) -> Command {
    let mut c = Command::new(shmvm_bin());
    c.arg("-kernel").arg(testkernel());
    c.args([
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-serial",
        "stdio",
    ]);
    c.args(args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` up to `timeout`, killing it past that.
pub fn wait(child: Child, timeout: Duration) -> Run {
    let pid = child.id();
    let t0 = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        if let Ok(out) = rx.recv_timeout(Duration::from_millis(50)) {
            return Run::from(out.expect("collecting the child's output"));
        }
        if t0.elapsed() > timeout {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let out = rx
                .recv()
                .expect("child output after kill")
                .expect("child output");
            panic!(
                "timed out after {timeout:?}; output so far:\n{}",
                Run::from(out).stdout
            );
        }
    }
}

/// Runs to completion (60 s limit).
pub fn run(mut cmd: Command) -> Run {
    wait(
        cmd.spawn().expect("starting shmvm"),
        Duration::from_secs(60),
    )
}
