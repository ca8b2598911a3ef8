//! The real binary on a host file (`--path`), as the lab's L1 host process uses it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ivshmem-tool"))
        .args(args)
        .output()
        .expect("run ivshmem-tool")
}

struct TempRegion(PathBuf);

impl TempRegion {
    fn new(tag: &str, size: u64) -> Self {
        let p = std::env::temp_dir().join(format!("ivshmem-tool-cli-{}-{tag}", std::process::id()));
        let f = std::fs::File::create(&p).expect("create region file");
        f.set_len(size).expect("size region file");
        TempRegion(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempRegion {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn fill_then_verify_and_mismatch_exit_codes() {
    let r = TempRegion::new("fill", 1 << 20);
    let o = tool(&["--path", r.path(), "fill", "--seed", "7", "--offset", "4K"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = tool(&[
        "--path",
        r.path(),
        "verify",
        "--seed",
        "7",
        "--offset",
        "4K",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("verify ok: seed=0x7 offset=0x1000 len=0xff000"),
        "{}",
        text(&o)
    );
    let o = tool(&[
        "--path",
        r.path(),
        "verify",
        "--seed",
        "8",
        "--offset",
        "4K",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("verify FAILED"), "{}", text(&o));
    // The first 4 KiB were left alone.
    let o = tool(&["--path", r.path(), "verify", "--seed", "7", "--len", "4K"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn write_read_wait_and_info() {
    let r = TempRegion::new("mailbox", 8192);
    let o = tool(&["--path", r.path(), "write", "0", "HOSTRDY!"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = tool(&["--path", r.path(), "read", "0", "8", "--raw"]);
    assert_eq!(o.stdout, b"HOSTRDY!");
    let o = tool(&[
        "--path",
        r.path(),
        "wait",
        "0",
        "hex:484f5354",
        "--timeout-ms",
        "100",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = tool(&[
        "--path",
        r.path(),
        "wait",
        "0",
        "GUESTDN!",
        "--timeout-ms",
        "50",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("timed out"), "{}", text(&o));
    let o = tool(&["--path", r.path(), "info"]);
    assert!(
        text(&o).contains("source=file") && text(&o).contains("size=0x2000"),
        "{}",
        text(&o)
    );
}

#[test]
fn usage_and_runtime_errors() {
    let r = TempRegion::new("errors", 4096);
    // Usage errors: exit 2.
    assert_eq!(
        tool(&["--path", r.path(), "read", "0", "zz"]).status.code(),
        Some(2)
    );
    assert_eq!(
        tool(&["--path", r.path(), "--device", "00:02.0", "info"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        tool(&["--path", r.path(), "write", "0", "hex:abc"])
            .status
            .code(),
        Some(2)
    );
    // Runtime errors: exit 1 with one line naming the object.
    let o = tool(&["--path", r.path(), "read", "4090", "16"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("outside the region"), "{}", text(&o));
    let o = tool(&["--path", "/nonexistent/ivshmem", "info"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("/nonexistent/ivshmem"), "{}", text(&o));
    let empty = std::env::temp_dir().join(format!("ivshmem-tool-cli-{}-sysfs", std::process::id()));
    std::fs::create_dir_all(&empty).expect("empty sysfs dir");
    let o = tool(&["--sysfs", empty.to_str().expect("utf-8"), "list"]);
    let _ = std::fs::remove_dir(&empty);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no ivshmem device"), "{}", text(&o));
}

#[test]
fn the_test_kernels_protocols_host_side() {
    let r = TempRegion::new("protocols", 0x4000);
    // One party: its own slot is all there is to wait for.
    let o = tool(&["--path", r.path(), "slots", "0", "1", "--seed", "9"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("slots ok: slot=0 parties=1"),
        "{}",
        text(&o)
    );
    // No guest: the handshake names what it waited for.
    let o = tool(&["--path", r.path(), "handshake", "--timeout-ms", "50"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("handshake: timed out waiting for the guest's pattern"),
        "{}",
        text(&o)
    );
}
