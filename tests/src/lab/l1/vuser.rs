//! The `vuser` scenarios: L1 runs three real vhost-user back-ends for one
//! shmvm guest: virtiofsd over a directory (the guest mounts it with
//! `mount -t virtiofs labfs`, runs the script L1 put there and writes a
//! file back, which L1 reads after the VM ends), vhost-device-vsock (the
//! guest's vsock driver binds to it) and vhost-device-rng (the guest reads
//! /dev/hwrng from it). The `fsbench` scenarios run virtiofsd alone, for
//! QEMU and shmvm alike (a fresh one per run, same options): the guest
//! measures the mount with `ivshmem-tool fsbench` and L1 checks the tree
//! it left behind.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::judge::Judgement;
use super::{Console, result};
use crate::lab::fields;

/// The tag the guest mounts (`lab.vuser` in guest/initramfs/init).
const FS_TAG: &str = "labfs";
/// The guest's vsock CID, set on vhost-device-vsock's command line.
const GUEST_CID: u32 = 3;

/// virtiofsd's cache mode in the fsbench runs (its default), the same for
/// both VMMs.
pub(super) const FSBENCH_CACHE: &str = "auto";
/// Small files in the fsbench tree (1-16 KiB each) and its large file.
const FSBENCH_FILES: u32 = 256;
const FSBENCH_BIG: &str = "16M";
/// Runs of each fsbench step (the median is reported).
const FSBENCH_RUNS: u32 = 3;

/// What the back-ends are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Set {
    /// virtiofsd, vhost-device-vsock and vhost-device-rng (extra vuser).
    All,
    /// virtiofsd alone; the guest runs fsbench with this seed.
    FsBench { seed: u64 },
}

/// The back-ends of one run.
pub(super) struct Backends {
    set: Set,
    dir: PathBuf,
    token: String,
    children: Vec<(&'static str, Child)>,
    pub(super) error: Option<String>,
    /// What the host side of the vsock exchange got back (None: not tried).
    vsock_reply: Option<Result<String, String>>,
}

impl Backends {
    /// Starts the back-ends of `set` for run `tag`; returns them and the
    /// VMM arguments of their devices (the same spelling for QEMU and shmvm).
    pub(super) fn start(
        tag: &str,
        token: &str,
        console: &Console,
        set: Set,
    ) -> (Backends, Vec<String>) {
        let dir = PathBuf::from(format!("/tmp/lab-vu-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        let shared = dir.join("shared");
        let mut b = Backends {
            set,
            dir: dir.clone(),
            token: token.to_string(),
            children: Vec::new(),
            error: None,
            vsock_reply: None,
        };
        let script = format!("echo ran-from-host-{token}\n");
        if let Err(e) =
            fs::create_dir_all(&shared).and_then(|()| fs::write(shared.join("hello.sh"), script))
        {
            b.error = Some(format!("preparing {}: {e}", shared.display()));
            return (b, Vec::new());
        }
        let fs_sock = dir.join("fs.sock");
        let vsock_sock = dir.join("vsock.sock");
        let rng_prefix = dir.join("rng.sock");
        let rng_sock = dir.join("rng.sock0");
        let cache = match set {
            Set::All => "never",
            Set::FsBench { .. } => FSBENCH_CACHE,
        };
        let mut virtiofsd = Command::new("virtiofsd");
        virtiofsd
            .arg("--socket-path")
            .arg(&fs_sock)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none", "--cache", cache]);
        let mut vsock = Command::new("vhost-device-vsock");
        vsock.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vsock_sock.display(),
            dir.join("vm.vsock").display()
        ));
        let mut rng = Command::new("vhost-device-rng");
        rng.arg("--socket-path").arg(&rng_prefix);
        let mut backends = vec![("virtiofsd", virtiofsd, &fs_sock)];
        if set == Set::All {
            backends.push(("vhost-device-vsock", vsock, &vsock_sock));
            backends.push(("vhost-device-rng", rng, &rng_sock));
        }
        for (name, mut cmd, sock) in backends {
            match cmd
                .stdin(Stdio::null())
                .stdout(console.sink())
                .stderr(console.sink())
                .spawn()
            {
                Ok(mut c) => {
                    for _ in 0..100 {
                        if sock.exists() || !matches!(c.try_wait(), Ok(None)) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if !sock.exists() && b.error.is_none() {
                        b.error = Some(format!("{name} did not create {}", sock.display()));
                    }
                    b.children.push((name, c));
                }
                Err(e) => {
                    b.error.get_or_insert(format!("{name} did not start: {e}"));
                }
            }
        }
        let sock = |p: &PathBuf| p.display().to_string();
        let mut args = vec![
            "-chardev".to_string(),
            format!("socket,id=vufs,path={}", sock(&fs_sock)),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=vufs,tag={FS_TAG}"),
        ];
        if let Set::FsBench { .. } = set {
            return (b, args);
        }
        args.extend([
            "-chardev".into(),
            format!("socket,id=vuvsock,path={}", sock(&vsock_sock)),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vuvsock".into(),
            "-chardev".into(),
            format!("socket,id=vurng,path={}", sock(&rng_sock)),
            "-device".into(),
            "vhost-user-rng-pci,chardev=vurng".into(),
        ]);
        (b, args)
    }

    /// The guest's kernel command line parameter of an fsbench run.
    pub(super) fn fsbench_param(&self) -> Option<String> {
        match self.set {
            Set::All => None,
            Set::FsBench { seed } => Some(format!(
                " lab.fsbench={seed}:{FSBENCH_FILES}:{FSBENCH_BIG}:{FSBENCH_RUNS}"
            )),
        }
    }

    /// Once the guest listens on vsock port 1234: connect through
    /// vhost-device-vsock's unix socket (`CONNECT 1234` / `OK ...`), send a
    /// line, read the guest's echo. Bounded by socket timeouts.
    pub(super) fn vsock_exchange(&mut self, console: &Console) {
        if self.vsock_reply.is_some() {
            return;
        }
        let line = format!("ping-{}", self.token);
        let r = (|| -> std::io::Result<String> {
            use std::io::{BufRead, BufReader, Write};
            let s = std::os::unix::net::UnixStream::connect(self.dir.join("vm.vsock"))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            (&s).write_all(b"CONNECT 1234\n")?;
            let mut rd = BufReader::new(&s);
            let mut ok = String::new();
            rd.read_line(&mut ok)?;
            if !ok.starts_with("OK ") {
                return Ok(format!("no OK from the back-end: {ok:?}"));
            }
            (&s).write_all(format!("{line}\n").as_bytes())?;
            let mut back = String::new();
            rd.read_line(&mut back)?;
            Ok(back.trim_end().to_string())
        })();
        let r = r.map_err(|e| e.to_string());
        console.append(&format!("LAB-L1 vsock exchange: {r:?}"));
        self.vsock_reply = Some(r);
    }

    /// Stops the back-ends (after the VM ended).
    pub(super) fn stop(&mut self) {
        for (_, c) in &mut self.children {
            // SAFETY: kill(2) with SIGTERM on our own, not yet reaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// The guest's report and what it left in the shared directory.
    pub(super) fn judge(&self, console: &str, j: &mut Judgement) {
        if let Some(e) = &self.error {
            j.fail(e.clone());
        }
        match self.set {
            Set::All => self.judge_all(console, j),
            Set::FsBench { seed } => self.judge_fsbench(seed, console, j),
        }
    }

    /// fsbench: the guest's walk of its last tree, L1's walk of the same
    /// tree in the shared directory and the generator must agree; the
    /// rates go on the run's line.
    fn judge_fsbench(&self, seed: u64, console: &str, j: &mut Judgement) {
        let res = result(console, "fsbench").map(fields).unwrap_or_default();
        let get = |k: &str| res.get(k).copied().unwrap_or("");
        j.want(get("mounted") == "1", || {
            format!("the guest could not mount virtiofs tag {FS_TAG}")
        });
        j.want(res.contains_key("sum"), || {
            "the guest's fsbench did not run".into()
        });
        j.report("cache", FSBENCH_CACHE);
        j.report_rates(
            &res,
            &["create_fps", "read_fps", "seq_write_MBps", "seq_read_MBps"],
        );
        j.report("clocksource", get("clocksource"));
        j.report("fs_runs", get("runs"));
        if !res.contains_key("sum") {
            return;
        }
        // The guest names its tree under its mount point /mnt/host.
        let tree = get("tree").strip_prefix("/mnt/host/").unwrap_or("");
        let host = self.dir.join("shared").join(tree);
        let (seed, files) = (seed.to_string(), FSBENCH_FILES.to_string());
        let mut args = vec!["fstree", "--seed", &seed, "--files", &files];
        let h = host.to_string_lossy();
        if !tree.is_empty() {
            args.extend(["--dir", &h]);
        }
        let l1 = match super::tool(&args) {
            Ok(out) => out,
            Err(e) => {
                j.fail(format!("L1's fstree of {}: {e}", host.display()));
                return;
            }
        };
        let l1 = fields(&l1);
        let want = l1.get("expected_sum").copied().unwrap_or("?");
        j.want(get("sum") == want && get("files") == files, || {
            format!(
                "the guest read back {} files with sum {}, want {files} with the generator's {want}",
                get("files"),
                get("sum")
            )
        });
        j.want(l1.get("sum") == Some(&want), || {
            format!(
                "L1 found the tree '{}' in the shared directory with sum {}, want {want}",
                host.display(),
                l1.get("sum").copied().unwrap_or("- (no tree)")
            )
        });
    }

    /// vuser: the modules, the host's script, the guest's file, hwrng, vsock.
    fn judge_all(&self, console: &str, j: &mut Judgement) {
        let res = result(console, "vuser").map(fields).unwrap_or_default();
        let get = |k: &str| res.get(k).copied().unwrap_or("");
        j.want(!res.is_empty(), || {
            "no stage=vuser line from the guest".into()
        });
        j.want(get("failed").is_empty(), || {
            format!("vhost-user modules did not load: {}", get("failed"))
        });
        j.want(get("fs") == "1", || {
            format!("the guest could not mount virtiofs tag {FS_TAG}")
        });
        let ran = format!("ran-from-host-{}", self.token);
        j.want(get("ran") == ran, || {
            format!("the host's script gave '{}', want '{ran}'", get("ran"))
        });
        let wrote = fs::read_to_string(self.dir.join("shared/from-guest.txt")).unwrap_or_default();
        j.want(wrote.trim() == self.token, || {
            format!(
                "the guest's file in the shared directory holds '{}', want the token",
                wrote.trim()
            )
        });
        j.want(
            get("rng") == "virtio_rng.0" && get("rng_bytes") == "64",
            || {
                format!(
                    "hwrng: current '{}', {} bytes read (want virtio_rng.0, 64)",
                    get("rng"),
                    get("rng_bytes")
                )
            },
        );
        j.want(
            get("rng_distinct").parse::<u32>().unwrap_or(0) > 100,
            || {
                format!(
                    "256 hwrng bytes had only {} distinct values",
                    get("rng_distinct")
                )
            },
        );
        j.want(get("vsock") == "1", || {
            "the guest's virtio vsock driver did not bind to the vhost-user-vsock device".into()
        });
        let ping = format!("ping-{}", self.token);
        j.want(
            self.vsock_reply.as_ref() == Some(&Ok(ping.clone())) && get("echo") == ping,
            || {
                format!(
                    "vsock: L1 got back {:?}, the guest echoed '{}' (want '{ping}' both ways)",
                    self.vsock_reply,
                    get("echo")
                )
            },
        );
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
