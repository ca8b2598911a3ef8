//! The `vng` scenarios: virtme-ng itself drives the L2 VMM in L1. The L1
//! image carries vng (Debian's python3.11, vng's packages, its static guest
//! init, virtiofsd, kmod, udev; `tests/lab/build-l1.sh`, `VNG_VENV`) and
//! the lab kernel installed as `/boot/vmlinuz-VERSION` with
//! `/lib/modules/VERSION`. The runner calls
//!   vng --disable-microvm --busybox /bin/busybox --run /boot/vmlinuz-VERSION
//!       --qemu /usr/bin/VMM --exec 'uname -r; exit 7'
//! (on failure once more with `--verbose`, whose boot console goes to the
//! run's console): vng builds its initramfs with the virtio-fs and virtio-pci
//! modules, starts virtiofsd on L1's `/`, and runs the VMM with its own
//! command line; the guest's root is L1's `/` over virtio-fs, its init is
//! vng's `virtme-ng-init`, the command's output comes back on the
//! `virtme.stdout` port and its status on `virtme.ret`. The run passes when
//! vng returns 7 and printed the kernel's release and nothing else.
//! `--busybox` spares vng a `file -L` on busybox (no `file` in L1); the
//! machine is QEMU's pc (`--disable-microvm`: shmvm has no virtio-mmio).

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Console, Judgement, Outcome, RUN_TIMEOUT, Runner, Verdict, exit_code};
use crate::lab::scenario::{Scenario, Vmm};

/// What the guest runs, and the status vng must return.
const EXEC: &str = "uname -r; exit 7";
const WANT_RC: i32 = 7;
const VNG: &str = "/usr/bin/vng";

/// vng's arguments for `vmm`, with the kernel of release `release`.
fn args(vmm: Vmm, release: &str) -> Vec<String> {
    let bin = match vmm {
        Vmm::Qemu => "/usr/bin/qemu-system-x86_64",
        Vmm::Shmvm => "/usr/bin/shmvm",
    };
    [
        "--disable-microvm",
        "--busybox",
        "/bin/busybox",
        "--run",
        &format!("/boot/vmlinuz-{release}"),
        "--qemu",
        bin,
        "--exec",
        EXEC,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs vng with `args` in its own process group (vng starts virtme-run,
/// which starts virtiofsd and the VMM: a timeout kills them all), its
/// stdout in `out` and its stderr in the console. Returns the exit status
/// and the elapsed time, or why it did not end by itself.
fn vng(args: &[String], out: &Path, console: &Console) -> (i32, Duration, Option<String>) {
    let start = Instant::now();
    console.append(&format!("LAB-RUN vng {}", args.join(" ")));
    let child = File::create(out).and_then(|stdout| {
        Command::new(VNG)
            .args(args)
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(console.sink())
            .process_group(0)
            .spawn()
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return (
                -1,
                start.elapsed(),
                Some(format!("{VNG} did not start: {e}")),
            );
        }
    };
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return (exit_code(st), start.elapsed(), None);
        }
        if start.elapsed() > RUN_TIMEOUT {
            // SAFETY: kill(2) on the process group our child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let rc = child.wait().map(exit_code).unwrap_or(-1);
            let why = format!("vng still running after {}s", RUN_TIMEOUT.as_secs());
            return (rc, start.elapsed(), Some(why));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(super) fn run(runner: &mut Runner, s: &Scenario, vmm: Vmm, tag: &str) -> Verdict {
    let console = Console {
        path: format!("/tmp/lab/{tag}.log").into(),
    };
    let _ = File::create(&console.path);
    let out_path = Path::new("/tmp/lab").join(format!("{tag}.stdout"));
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim().to_string();
    let mut j = Judgement::default();
    let a = args(vmm, &release);

    let (rc, elapsed, why) = vng(&a, &out_path, &console);
    let printed = fs::read_to_string(&out_path).unwrap_or_default();
    console.append(&format!("LAB-VNG stdout: {printed:?}"));
    if let Some(w) = &why {
        j.fail(w.clone());
    }
    j.want(rc == WANT_RC, || {
        format!("vng returned {rc}, want {WANT_RC} (the guest's exit status)")
    });
    j.want(printed.trim_end() == release, || {
        format!(
            "vng printed {:?}, want the guest's uname -r {release:?}",
            printed.trim_end()
        )
    });
    j.report("vng_rc", rc.to_string());
    j.report("vng_s", super::secs(elapsed));
    if !j.fails.is_empty() {
        // The boot console says why: the same run once more, verbose.
        let mut v = vec!["--verbose".to_string()];
        v.extend(a);
        let (rc, _, _) = vng(&v, &out_path, &console);
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        console.append(&format!("LAB-VNG verbose run rc={rc}:\n{text}"));
    }
    let _ = fs::remove_file(&out_path);
    let out = Outcome {
        rc,
        why,
        t_init: None,
        t_kill: None,
        end: elapsed,
        qmp: None,
    };
    let text = console.text();
    runner.report(s, vmm, tag, &out, &j, &text)
}
