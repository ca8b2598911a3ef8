//! The `rootfs` scenarios: a stock kernel whose root filesystem is a
//! directory of L1 served by virtiofsd, booted as virtme-ng boots one
//! (`rootfstype=virtiofs root=ROOTFS`, guest RAM in a shared memfd on a NUMA
//! node, `vhost-user-fs-pci`, the result on a `virtserialport` named
//! `virtme.ret` behind a file chardev). The directory holds busybox and
//! `tests/lab/rootfs-init` as `/sbin/init`; the L2 initramfs loads the
//! virtio-fs modules, mounts the tag and switches to it. The init runs
//! `uname -r` and writes `rc=.. uname=.. token=..` to the port; L1 reads
//! the file after the VM ends.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::judge::Judgement;
use super::{Console, result};
use crate::lab::fields;

/// The virtio-fs tag of the root, virtme-ng's.
pub(super) const ROOT_TAG: &str = "ROOTFS";
/// The port the guest writes its result to, virtme-ng's.
pub(super) const RET_PORT: &str = "virtme.ret";
/// The root's init: busybox sh, run from L1's directory.
const ROOT_INIT: &str = include_str!("../../../lab/rootfs-init");

/// The root directory, its virtiofsd and the port's file, for one run.
pub(super) struct RootDir {
    dir: PathBuf,
    ret: PathBuf,
    token: String,
    virtiofsd: Option<Child>,
    error: Option<String>,
}

/// Makes `root` a minimal root filesystem: L1's static busybox, the init
/// and the mount points the init uses.
fn populate(root: &Path) -> std::io::Result<()> {
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let init = root.join("sbin/init");
    fs::write(&init, ROOT_INIT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
}

impl RootDir {
    /// Prepares the directory and starts virtiofsd on it; returns it, the
    /// VMM's device arguments and the kernel command line's additions.
    pub(super) fn start(
        tag: &str,
        token: &str,
        console: &Console,
    ) -> (RootDir, Vec<String>, String) {
        let dir = PathBuf::from(format!("/tmp/lab-rootfs-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let sock = dir.join("fs.sock");
        let ret = dir.join("ret");
        let mut r = RootDir {
            dir: dir.clone(),
            ret: ret.clone(),
            token: token.to_string(),
            virtiofsd: None,
            error: None,
        };
        if let Err(e) = populate(&root) {
            r.error = Some(format!("preparing the root {}: {e}", root.display()));
        } else {
            let child = Command::new("virtiofsd")
                .arg("--socket-path")
                .arg(&sock)
                .arg("--shared-dir")
                .arg(&root)
                .args(["--sandbox", "none", "--cache", "never"])
                .stdin(Stdio::null())
                .stdout(console.sink())
                .stderr(console.sink())
                .spawn();
            match child {
                Ok(mut c) => {
                    for _ in 0..100 {
                        if sock.exists() || !matches!(c.try_wait(), Ok(None)) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if !sock.exists() {
                        r.error = Some(format!("virtiofsd did not create {}", sock.display()));
                    }
                    r.virtiofsd = Some(c);
                }
                Err(e) => r.error = Some(format!("virtiofsd did not start: {e}")),
            }
        }
        let args = [
            "-chardev".to_string(),
            format!("socket,id=rootfs,path={}", sock.display()),
            "-device".into(),
            format!("vhost-user-fs-pci,chardev=rootfs,tag={ROOT_TAG}"),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("file,id=ret,path={}", ret.display()),
            "-device".into(),
            format!("virtserialport,name={RET_PORT},chardev=ret"),
        ]
        .to_vec();
        let append = format!(
            " rootfstype=virtiofs root={ROOT_TAG} rw init=/sbin/init lab.retport={RET_PORT}"
        );
        (r, args, append)
    }

    /// Stops virtiofsd (after the VM ended).
    pub(super) fn stop(&mut self) {
        if let Some(mut c) = self.virtiofsd.take() {
            // SAFETY: kill(2) with SIGTERM on our own, not yet reaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// The switch to the virtio-fs root, the root init's report and the
    /// port's file: the command's result, from the guest's root.
    pub(super) fn judge(&self, console: &str, j: &mut Judgement) {
        if let Some(e) = &self.error {
            j.fail(e.clone());
        }
        let sw = result(console, "switch-root")
            .map(fields)
            .unwrap_or_default();
        j.want(
            sw.get("root") == Some(&ROOT_TAG) && !sw.contains_key("mounted"),
            || {
                format!(
                    "the L2 initramfs did not mount virtio-fs tag {ROOT_TAG} (modules failed: {})",
                    sw.get("failed").copied().unwrap_or("?")
                )
            },
        );
        let res = result(console, "rootfs").map(fields).unwrap_or_default();
        let get = |k: &str| res.get(k).copied().unwrap_or("");
        j.want(!res.is_empty(), || {
            "no stage=rootfs line: the root's /sbin/init did not run".into()
        });
        let want_root = format!("{ROOT_TAG}:virtiofs");
        j.want(get("root") == want_root, || {
            format!("the guest's / is '{}', want {want_root}", get("root"))
        });
        // L2 boots L1's own kernel.
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let release = release.trim();
        j.want(get("uname") == release, || {
            format!(
                "the guest's uname -r is '{}', want '{release}'",
                get("uname")
            )
        });
        let got = fs::read_to_string(&self.ret).unwrap_or_default();
        let want = format!("rc=0 uname={release} token={}\n", self.token);
        j.want(got == want, || {
            format!(
                "{RET_PORT} ({}) holds {got:?}, want {want:?} (guest port {})",
                self.ret.display(),
                get("port")
            )
        });
        j.report("root", get("root"));
    }
}

impl Drop for RootDir {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
