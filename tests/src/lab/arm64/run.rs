//! One L2 run in the arm64 L1 with either VMM: its command line (the
//! aarch64 shmvm, or the reference QEMU with KVM on the same kernel and
//! initramfs), its start, and the time from its start to the guest's
//! `L2-INIT` line, taken as the line comes out of the VMM's pipe (the
//! x86 lab's `init_s`: VMM start to the L2's init, as seen from L1).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::scenario::{Backend, Scenario, Vmm};

pub const SHMVM: &str = "/usr/bin/shmvm";
/// Debian's arm64 qemu-system-aarch64 with its libraries
/// (tests/lab/arm64/fetch-qemu.sh).
pub const QEMU: &str = "/usr/bin/qemu-system-aarch64";
const L2_KERNEL: &str = "/lab/vmlinuz";
const L2_INITRD: &str = "/lab/l2.cpio.gz";
/// The guest's first line from its init.
pub const INIT_PREFIX: &str = "L2-INIT ";

/// The VMM's binary in L1.
pub fn binary(vmm: Vmm) -> &'static str {
    match vmm {
        Vmm::Qemu => QEMU,
        Vmm::Shmvm => SHMVM,
    }
}

/// The guest's RAM options for a scenario's backend (QEMU's spelling,
/// which both VMMs take). QEMU's `-m` must match a backend's size, so it
/// gets both; shmvm takes the backend alone.
pub fn ram_args(s: &Scenario, vmm: Vmm) -> Vec<String> {
    let size = &s.mem.text;
    let object = match s.backend {
        Backend::Ram => return vec!["-m".into(), size.clone()],
        Backend::Memfd => format!("memory-backend-memfd,id=ram0,size={size}"),
        Backend::Shm => format!("memory-backend-shm,id=ram0,size={size}"),
        Backend::FileTmpfs | Backend::FileDisk => format!(
            "memory-backend-file,id=ram0,size={size},mem-path={},share=on",
            ram_file(s, vmm)
        ),
    };
    let mut args = match vmm {
        Vmm::Qemu => vec!["-m".to_string(), size.clone()],
        Vmm::Shmvm => Vec::new(),
    };
    args.extend([
        "-object".into(),
        object,
        "-machine".into(),
        "memory-backend=ram0".into(),
    ]);
    args
}

/// The file behind a file-backed guest RAM (removed after the run).
pub fn ram_file(s: &Scenario, vmm: Vmm) -> String {
    format!("/dev/shm/{}.ram", super::super::tag(&s.name, vmm))
}

/// The whole command line of a run: the VMM's machine and console (the
/// 16550 `ttyS0` of shmvm's machine, the PL011 `ttyAMA0` of QEMU's `virt`),
/// the lab kernel and initramfs, `append` after the console, `smp` vCPUs,
/// the RAM and the run's devices.
pub fn command(s: &Scenario, vmm: Vmm, append: &str, devices: Vec<String>) -> Vec<String> {
    let mut cmd: Vec<String> = vec![binary(vmm).into()];
    let console = match vmm {
        Vmm::Qemu => {
            cmd.extend(
                [
                    "-accel",
                    "kvm",
                    "-cpu",
                    "host",
                    "-M",
                    "virt,gic-version=3",
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                    "-no-reboot",
                ]
                .map(String::from),
            );
            "ttyAMA0"
        }
        Vmm::Shmvm => {
            cmd.push("-nographic".into());
            "ttyS0"
        }
    };
    cmd.extend(
        [
            "-kernel",
            L2_KERNEL,
            "-initrd",
            L2_INITRD,
            "-smp",
            &s.smp.to_string(),
            "-append",
            &format!("console={console} {append}"),
        ]
        .map(String::from),
    );
    cmd.extend(ram_args(s, vmm));
    cmd.extend(devices);
    cmd
}

/// What one run did.
pub struct Outcome {
    /// The VMM's exit code; None: killed at the time limit.
    pub rc: Option<i32>,
    /// The guest's console and the VMM's messages.
    pub console: String,
    /// VMM start to the guest's `L2-INIT` line.
    pub init: Option<Duration>,
    /// VMM start to its exit.
    pub wall: Duration,
}

/// Runs `cmd` with stdin closed, its stdout and stderr in `console_path`,
/// for at most `limit`; a line beginning with `prefix` on its stdout is
/// timed as it arrives.
pub fn execute(cmd: &[String], console_path: &str, limit: Duration) -> Result<Outcome, String> {
    let (bin, args) = cmd.split_first().ok_or("empty command")?;
    // Both streams append: neither overwrites what the other wrote.
    let append = || {
        OpenOptions::new()
            .append(true)
            .open(console_path)
            .map_err(|e| format!("{console_path}: {e}"))
    };
    File::create(console_path).map_err(|e| format!("{console_path}: {e}"))?;
    let (err, mut out) = (append()?, append()?);
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    // The reader ends at the pipe's end: when the VMM has exited or was killed.
    let reader = std::thread::spawn(move || {
        let mut init = None;
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if init.is_none() && line.starts_with(INIT_PREFIX.as_bytes()) {
                init = Some(start.elapsed());
            }
            let _ = out.write_all(&line).and_then(|()| out.write_all(b"\n"));
        }
        init
    });
    let rc = wait_with_timeout(&mut child, limit);
    let wall = start.elapsed();
    let init = reader.join().unwrap_or(None);
    let console = fs::read(console_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(Outcome {
        rc,
        console,
        init,
        wall,
    })
}

/// The child's exit code (128 + signal), or None after killing it at `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st.code().or(st.signal().map(|n| 128 + n)).unwrap_or(128)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::scenario;

    fn scenario(line: &str) -> Scenario {
        scenario::parse("t", line).unwrap().remove(0)
    }

    #[test]
    fn both_vmms_get_the_same_guest_and_their_own_machine() {
        let s = scenario("a memfd 256M 2 poweroff - -");
        let q = command(
            &s,
            Vmm::Qemu,
            "quiet lab.name=a",
            vec!["-device".into(), "x".into()],
        );
        let m = command(
            &s,
            Vmm::Shmvm,
            "quiet lab.name=a",
            vec!["-device".into(), "x".into()],
        );
        assert_eq!(q[0], QEMU);
        assert_eq!(m[0], SHMVM);
        let after = |c: &[String], k: &str| {
            c.iter()
                .position(|a| a == k)
                .map(|i| c[i + 1].clone())
                .unwrap()
        };
        for k in ["-kernel", "-initrd", "-smp", "-object", "-device"] {
            assert_eq!(after(&q, k), after(&m, k), "{k}");
        }
        assert_eq!(after(&q, "-append"), "console=ttyAMA0 quiet lab.name=a");
        assert_eq!(after(&m, "-append"), "console=ttyS0 quiet lab.name=a");
        assert_eq!(after(&q, "-M"), "virt,gic-version=3");
        assert_eq!(after(&q, "-accel"), "kvm");
        assert_eq!(after(&q, "-m"), "256M");
        assert!(!m.contains(&"-m".to_string()));
        let r = scenario("a ram 256M 1 poweroff - -");
        assert_eq!(ram_args(&r, Vmm::Shmvm), ["-m", "256M"]);
        assert_eq!(ram_args(&r, Vmm::Qemu), ["-m", "256M"]);
        let shm = scenario("a shm 256M 1 poweroff - -");
        assert_eq!(
            ram_args(&shm, Vmm::Shmvm)[1],
            "memory-backend-shm,id=ram0,size=256M"
        );
        let f = scenario("f file-tmpfs 256M 1 poweroff - -");
        assert!(ram_args(&f, Vmm::Qemu)[3].contains("mem-path=/dev/shm/f.qemu.ram"));
    }

    #[test]
    fn the_init_line_is_timed_as_it_arrives_and_the_console_kept() {
        let path = std::env::temp_dir().join(format!("arm64-run-{}.log", std::process::id()));
        let path = path.display().to_string();
        let cmd: Vec<String> = [
            "sh",
            "-c",
            "echo boot; echo oops >&2; sleep 0.3; echo 'L2-INIT uptime=1'; sleep 0.3; exit 3",
        ]
        .map(String::from)
        .to_vec();
        let o = execute(&cmd, &path, Duration::from_secs(30)).unwrap();
        assert_eq!(o.rc, Some(3));
        let init = o.init.unwrap();
        assert!(
            init >= Duration::from_millis(300) && init < o.wall,
            "{init:?} {:?}",
            o.wall
        );
        for l in ["boot", "oops", "L2-INIT uptime=1"] {
            assert!(o.console.lines().any(|c| c == l), "{l} in {:?}", o.console);
        }
        let slow = ["sleep", "30"].map(String::from).to_vec();
        let o = execute(&slow, &path, Duration::from_millis(200)).unwrap();
        assert_eq!((o.rc, o.init), (None, None));
        assert!(execute(&["/nonexistent".to_string()], &path, Duration::from_secs(1)).is_err());
        let _ = fs::remove_file(&path);
    }
}
