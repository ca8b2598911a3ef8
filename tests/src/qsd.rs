//! Real vhost-user back-ends as child processes, for tests of the
//! front-end: `qemu-storage-daemon` (qemu-utils) exporting an image file
//! as a vhost-user-blk back-end, `virtiofsd`, `vhost-device-vsock` and
//! `vhost-device-rng` (crates.io, installed by scripts/vhost-backends.sh).
//! Each serves one unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running back-end; killed on drop.
#[derive(Debug)]
pub struct Qsd {
    child: Child,
    pub sock: PathBuf,
}

/// Another name for [`Qsd`]: any back-end, not only the storage daemon.
pub type VhostBackend = Qsd;

impl Qsd {
    /// Serves `img` (which must exist) on `sock`, waiting until the socket
    /// is there. Panics, naming the package, when the daemon is missing.
    pub fn start(img: &Path, sock: &Path) -> Qsd {
        let mut c = Command::new("qemu-storage-daemon");
        c.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                img.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                sock.display()
            ));
        Qsd::spawn(c, sock, "apt-get install qemu-utils")
    }

    /// `virtiofsd` sharing `dir` on `sock` (no sandbox: the tests run
    /// where namespaces may be unavailable).
    pub fn virtiofsd(dir: &Path, sock: &Path) -> Qsd {
        let mut c = Command::new("virtiofsd");
        c.arg("--socket-path")
            .arg(sock)
            .arg("--shared-dir")
            .arg(dir)
            .args(["--sandbox", "none", "--cache", "never"]);
        Qsd::spawn(c, sock, "make deps")
    }

    /// `vhost-device-rng` reading /dev/urandom, on `PREFIX0` (it numbers
    /// its sockets after the prefix it is given).
    pub fn rng(prefix: &Path) -> Qsd {
        let mut c = Command::new("vhost-device-rng");
        c.arg("--socket-path").arg(prefix);
        let sock = PathBuf::from(format!("{}0", prefix.display()));
        Qsd::spawn(c, &sock, "make deps")
    }

    /// `vhost-device-vsock` on `sock` for a guest with CID `cid`, whose
    /// host side is the unix socket `uds` (Firecracker's hybrid vsock:
    /// connect and write `CONNECT PORT\n`).
    pub fn vsock(sock: &Path, cid: u64, uds: &Path) -> Qsd {
        let mut c = Command::new("vhost-device-vsock");
        c.arg("--vm").arg(format!(
            "guest-cid={cid},socket={},uds-path={}",
            sock.display(),
            uds.display()
        ));
        Qsd::spawn(c, sock, "make deps")
    }

    /// Starts `cmd` and waits for it to create `sock`; panics naming how
    /// to install the program when it is missing.
    pub fn spawn(mut cmd: Command, sock: &Path, install: &str) -> Qsd {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs {name} ({install}): {e}"));
        let mut q = Qsd {
            child,
            sock: sock.to_path_buf(),
        };
        let t = Instant::now();
        while !q.sock.exists() {
            if t.elapsed() > Duration::from_secs(20) || matches!(q.child.try_wait(), Ok(Some(_))) {
                q.kill();
                panic!("{name} did not create {}", q.sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    /// Kills the back-end (as a crash would) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        self.kill();
    }
}
