//! `qemu-storage-daemon` (qemu-utils) exporting an image file as a
//! vhost-user-blk back-end on a unix socket, for tests of the front-end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running back-end; killed on drop.
#[derive(Debug)]
pub struct Qsd {
    child: Child,
    pub sock: PathBuf,
}

impl Qsd {
    /// Serves `img` (which must exist) on `sock`, waiting until the socket
    /// is there. Panics, naming the package, when the daemon is missing.
    pub fn start(img: &Path, sock: &Path) -> Qsd {
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={}",
                img.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                sock.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs qemu-storage-daemon (apt-get install qemu-utils): {e}")
            });
        let mut q = Qsd {
            child,
            sock: sock.to_path_buf(),
        };
        let t = Instant::now();
        while !q.sock.exists() {
            if t.elapsed() > Duration::from_secs(20) || matches!(q.child.try_wait(), Ok(Some(_))) {
                q.kill();
                panic!("qemu-storage-daemon did not create {}", q.sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    /// The daemon's pid (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
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
