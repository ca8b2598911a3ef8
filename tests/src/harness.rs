//! Running the real `shmvm` binary with the test kernel from tests.
//!
//! Prerequisites fail loudly (a panic naming what is missing): /dev/kvm,
//! the release binary (`make build`), the test kernel (`make testkernel`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn must_exist(p: PathBuf, what: &str, hint: &str) -> PathBuf {
    assert!(p.is_file(), "{what} not found at {} ({hint})", p.display());
    p
}

/// `SHMVM_BIN`, else `shmvm` next to the running test's profile directory
/// (target/release/deps/.. -> target/release/shmvm), else target/release.
pub fn shmvm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHMVM_BIN") {
        return must_exist(PathBuf::from(p), "SHMVM_BIN", "set it to the shmvm binary");
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(|d| d.join("shmvm")))
        .filter(|p| p.is_file());
    let p = beside.unwrap_or_else(|| repo_root().join("target/release/shmvm"));
    must_exist(
        p,
        "the shmvm binary",
        "run `make build` or cargo build --release -p vmm",
    )
}

/// `SHMVM_TESTKERNEL`, else build/guest/testkernel.
pub fn testkernel() -> PathBuf {
    let p = std::env::var_os("SHMVM_TESTKERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build/guest/testkernel"));
    must_exist(p, "the test kernel", "run `make testkernel`")
}

/// Panics unless /dev/kvm can be opened read-write.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs /dev/kvm: {e}");
    }
}

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
    c.args(["-device", "isa-debug-exit", "-serial", "stdio"]);
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
