//! Snapshot and restore with the real binary and the test kernel's
//! `snapcount` mode (it counts and checksums 4 MiB of RAM round by round;
//! every total depends on every earlier round): saved mid-run over QMP
//! (`stop`, `x-shmvm-snapshot-save`), the VMM killed, then restored with
//! `--restore`, the guest must reach the total computed here natively.
//! Needs /dev/kvm.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use shmvm_tests::harness::{self as vm, RemoveOnDrop, TempDir};
use shmvm_tests::lab::l1::qmp::Qmp;
use shmvm_tests::shm::Region;

/// About 2 ms a round on the PVM host: a run takes ~1.2 s, the save
/// comes at round ~16-20.
const ROUNDS: u64 = 600;
const MIB: u64 = 4;
/// The test kernel's default seed.
const SEED: u64 = 0x5eed;
/// Progress line after which the VM is stopped and saved (every 8 rounds).
const SAVE_AFTER: &str = "shmvm: snapcount round=16 ";

fn append() -> String {
    format!("shmvm.test=snapcount shmvm.rounds={ROUNDS} shmvm.snap_mib={MIB}")
}

/// The total an uninterrupted guest prints, computed the same way here.
fn expected_total() -> String {
    let mut words: Vec<u64> = (0..(MIB << 20) / 8)
        .map(|i| protocol::snapcount_init(i, SEED))
        .collect();
    let mut total = 0;
    for round in 1..=ROUNDS {
        total = protocol::snapcount_fold(total, protocol::snapcount_round(&mut words, round));
    }
    format!("{total:016x}")
}

/// The `total=` of the guest's `snapcount done` line.
fn done_total(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("shmvm: snapcount done "))
        .and_then(|l| l.split("total=").nth(1))
        .map(|t| t.trim().trim_start_matches("0x").to_string())
}

/// A running VM whose stdout is collected as it comes.
struct Live {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Live {
    fn start(mut cmd: Command) -> Live {
        cmd.stderr(Stdio::null());
        Live::start_keeping_stderr(cmd)
    }

    /// [`Live::start`] with stderr as `cmd` says (piped: read at the end).
    fn start_keeping_stderr(mut cmd: Command) -> Live {
        cmd.stdout(Stdio::piped());
        let mut child = vm::spawn(cmd);
        let stdout = child.stdout.take().expect("piped stdout");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut s = sink.lock().expect("output lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Live { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().expect("output lock").clone()
    }

    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.text().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "shmvm ended ({status}) before {needle:?}; output:\n{}",
                    self.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within 60 s; output:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots the snapcount guest with `args`, stops it after round 16 and
/// saves it to `dir` over QMP; the VMM is then killed (SIGKILL: nothing
/// of it cleans up). Returns the QMP reply and the output up to the save.
fn save_mid_run(
    tmp: &TempDir,
    dir: &Path,
    append: &str,
    args: &[&str],
) -> (serde_json::Value, String) {
    let sock = tmp.0.join("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut cmd = vm::with_testkernel(&["-qmp", &qmp, "-append", append]);
    cmd.args(args);
    let mut live = Live::start(cmd);
    let mut q = Qmp::connect(&sock).expect("QMP connect");
    live.wait_for(SAVE_AFTER);
    q.execute("stop").expect("stop");
    let reply = q
        .execute_with("x-shmvm-snapshot-save", json!({"path": dir}))
        .expect("x-shmvm-snapshot-save");
    let out = live.text();
    live.kill();
    assert!(
        done_total(&out).is_none(),
        "the guest finished before the snapshot: make ROUNDS larger\n{out}"
    );
    (reply, out)
}

fn restore(dir: &Path, extra: &[&str]) -> Command {
    let mut c = vm::command(&["--restore"]);
    c.arg(dir).args(["-serial", "stdio"]).args(extra);
    c
}

/// The one RAM image a snapshot wrote.
fn ram_image(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .expect("the snapshot directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "ram"))
        .expect("a RAM image in the snapshot")
}

/// `--restore dir` run to its end.
fn restored(dir: &Path) -> vm::Run {
    vm::wait(vm::spawn(restore(dir, &[])), Duration::from_secs(60))
}

/// Checks a restored run: it went on (no new boot), passed, and reached
/// the uninterrupted total.
fn assert_resumed(r: &vm::Run, want: &str) {
    r.assert_pass();
    assert!(
        !r.stdout.contains("shmvm: entry="),
        "the restored guest booted again:\n{}",
        r.stdout
    );
    assert_eq!(done_total(&r.stdout).as_deref(), Some(want), "{}", r.stdout);
}

#[test]
fn kvm_snapshot_in_named_shm_restores_and_twenty_clones_reach_the_same_total() {
    vm::require_kvm();
    let want = expected_total();
    let tmp = TempDir::new("snap-shm");
    let dir = tmp.0.join("snap");
    let name = format!("/{}", vm::unique("snap-ram"));
    let _shm = RemoveOnDrop(Path::new("/dev/shm").join(&name[1..]));
    let object = format!("memory-backend-shm,id=ram,size=64M,name={name},keep=on");
    let (reply, _) = save_mid_run(
        &tmp,
        &dir,
        &append(),
        &["-object", &object, "-machine", "memory-backend=ram"],
    );
    assert_eq!(reply["memory-referenced"], 1, "{reply}");
    assert_eq!(reply["memory-written"], 0, "{reply}");
    assert!(!dir.join("ram.ram").exists(), "RAM in shm was copied");

    // 20 clones at once, copy-on-write over the one saved memory.
    let before =
        std::fs::read(Path::new("/dev/shm").join(&name[1..])).expect("read the shm object");
    let clones: Vec<Child> = (0..20)
        .map(|_| vm::spawn(restore(&dir, &["--restore-ram", "clone"])))
        .collect();
    for c in clones {
        let r = vm::wait(c, Duration::from_secs(120));
        assert_resumed(&r, &want);
    }
    let after = std::fs::read(Path::new("/dev/shm").join(&name[1..])).expect("read the shm object");
    assert!(before == after, "a clone wrote the snapshot's memory");

    // The same memory, shared: the saved VM goes on where it stopped.
    let r = restored(&dir);
    assert_resumed(&r, &want);
}

#[test]
fn kvm_snapshot_of_anonymous_ram_is_written_sparsely_and_restores() {
    vm::require_kvm();
    let want = expected_total();
    let tmp = TempDir::new("snap-anon");
    let dir = tmp.0.join("snap");
    let (reply, _) = save_mid_run(&tmp, &dir, &append(), &["-m", "128"]);
    assert_eq!(reply["memory-written"], 1, "{reply}");
    let image = ram_image(&dir);
    let meta = std::fs::metadata(&image).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.len(), 128 << 20);
    assert!(
        meta.blocks() * 512 < 32 << 20,
        "the image of a mostly empty 128 MiB guest takes {} bytes",
        meta.blocks() * 512
    );
    let r = restored(&dir);
    assert_resumed(&r, &want);
    // Restoring does not change the snapshot: a second restore agrees.
    let r = restored(&dir);
    assert_resumed(&r, &want);
}

#[test]
fn kvm_snapshot_with_ivshmem_plain_still_shares_with_a_host_process() {
    vm::require_kvm();
    let want = expected_total();
    let tmp = TempDir::new("snap-ivshmem");
    let dir = tmp.0.join("snap");
    let name = format!("/{}", vm::unique("snap-ivshmem"));
    let _shm = RemoveOnDrop(Path::new("/dev/shm").join(&name[1..]));
    let object = format!("memory-backend-shm,id=hostmem,size=1M,name={name},keep=on");
    let append = format!(
        "shmvm.test=snapcount-ivshmem shmvm.rounds={ROUNDS} shmvm.snap_mib={MIB} shmvm.timeout_ms=30000"
    );
    save_mid_run(
        &tmp,
        &dir,
        &append,
        &[
            "-m",
            "64",
            "-object",
            &object,
            "-device",
            "ivshmem-plain,memdev=hostmem",
        ],
    );
    let region = Region::open_shm(&name).expect("open the ivshmem object");
    let child = vm::spawn(restore(&dir, &[]));
    // The host peer: wait for the restored guest's total, answer it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while region.rd64(protocol::SNAP_FLAG_OFF) != protocol::SNAP_GUEST_DONE {
        assert!(
            Instant::now() < deadline,
            "the restored guest never wrote to ivshmem"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = region.rd64(protocol::SNAP_TOTAL_OFF);
    assert_eq!(format!("{total:016x}"), want);
    let answer = 0x1234_5678_9abc_def0u64;
    protocol::Shared::write64(&region, protocol::SNAP_HOST_OFF, answer);
    let r = vm::wait(child, Duration::from_secs(60));
    assert_resumed(&r, &want);
    assert!(
        r.stdout
            .contains(&format!("shmvm: snapcount ivshmem host=0x{answer:016x}")),
        "{}",
        r.stdout
    );
}

/// The files of a good snapshot, to damage.
fn saved(tmp: &TempDir) -> std::path::PathBuf {
    let dir = tmp.0.join("snap");
    save_mid_run(tmp, &dir, &append(), &["-m", "64"]);
    dir
}

#[test]
fn kvm_damaged_or_mismatched_snapshots_are_refused_in_one_line() {
    vm::require_kvm();
    let tmp = TempDir::new("snap-bad");
    let dir = saved(&tmp);
    let state = dir.join("state");
    let good = std::fs::read(&state).unwrap();
    let image = ram_image(&dir);

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    std::fs::write(&state, &flipped).unwrap();
    let r = vm::refused(restore(&dir, &[]), "checksum");
    assert!(r.stderr.contains("--restore"), "{}", r.stderr);
    assert!(vm::leftover_shm(r.pid).is_empty());

    std::fs::write(&state, &good[..good.len() - 100]).unwrap();
    vm::refused(restore(&dir, &[]), "truncated");

    let mut version = good.clone();
    version[8] = 0x7f;
    std::fs::write(&state, &version).unwrap();
    vm::refused(restore(&dir, &[]), "format version");

    std::fs::write(&state, b"not a snapshot at all, but long enough").unwrap();
    vm::refused(restore(&dir, &[]), "magic");

    std::fs::write(&state, &good).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.set_len(16 << 20).unwrap();
    vm::refused(restore(&dir, &[]), "truncated");

    vm::refused(restore(&tmp.0.join("missing"), &[]), "missing");
    vm::refused(restore(&dir, &["-m", "128"]), "-m cannot be given");
    vm::refused(
        vm::command(&["--restore-ram", "clone", "-kernel", "k"]),
        "--restore-ram",
    );
}

#[test]
fn kvm_snapshot_save_refusals_name_the_reason() {
    vm::require_kvm();
    let tmp = TempDir::new("snap-refuse");
    let sock = tmp.0.join("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let name = format!("/{}", vm::unique("snap-nokeep"));
    let _shm = RemoveOnDrop(Path::new("/dev/shm").join(&name[1..]));
    let object = format!("memory-backend-shm,id=ram,size=64M,name={name}");
    let append = append();
    let mut live = Live::start(vm::with_testkernel(&[
        "-qmp",
        &qmp,
        "-append",
        &append,
        "-object",
        &object,
        "-machine",
        "memory-backend=ram",
    ]));
    live.wait_for("shmvm: snapcount start");
    let mut q = Qmp::connect(&sock).expect("QMP connect");
    let dir = tmp.0.join("snap");
    let err = q
        .execute_with("x-shmvm-snapshot-save", json!({"path": dir}))
        .expect_err("saving a running VM");
    assert!(err.to_string().contains("not paused"), "{err}");
    q.execute("stop").expect("stop");
    let err = q
        .execute_with("x-shmvm-snapshot-save", json!({"path": dir}))
        .expect_err("RAM that is unlinked at exit");
    assert!(err.to_string().contains("keep=on"), "{err}");
    assert!(!dir.exists(), "a refused save left {}", dir.display());
    live.kill();
}

#[test]
fn kvm_snapshot_on_signal_saves_ends_and_restores() {
    vm::require_kvm();
    let want = expected_total();
    let tmp = TempDir::new("snap-signal");
    let dir = tmp.0.join("snap");
    let append = append();
    let mut cmd = vm::with_testkernel(&["-m", "64", "-append", &append]);
    cmd.arg("--snapshot-on-signal").arg(&dir);
    cmd.stderr(Stdio::piped());
    let mut live = Live::start_keeping_stderr(cmd);
    live.wait_for(SAVE_AFTER);
    // SAFETY: kill(2) on our own live child; no memory involved.
    unsafe { libc::kill(live.child.id() as i32, libc::SIGUSR1) };
    let r = vm::wait(live.child, Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("snapshot saved to"), "{}", r.stderr);
    let out = live.out.lock().expect("output lock").clone();
    assert!(
        done_total(&out).is_none(),
        "the guest finished first:\n{out}"
    );
    let r = restored(&dir);
    assert_resumed(&r, &want);
}
