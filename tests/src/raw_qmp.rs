//! A few lines of QMP over a plain socket, for tests whose guest is their
//! own (the library-driven checks are tests/qmp/qmp_check.py).

use std::time::Duration;

/// A few lines of QMP over a plain socket (no library), for tests that
/// need a guest of their own.
#[derive(Debug)]
pub struct RawQmp {
    stream: std::os::unix::net::UnixStream,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl RawQmp {
    /// Starts shmvm on `kernel` (16 MiB, no console) with `args` and a QMP
    /// socket at `sock`, and connects to it with capabilities negotiated.
    pub fn start(
        kernel: &str,
        sock: &std::path::Path,
        args: &[&str],
    ) -> (std::process::Child, RawQmp) {
        let child = std::process::Command::new(crate::harness::shmvm_bin())
            .args(["-kernel", kernel, "-m", "16", "-serial", "none"])
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn shmvm");
        let mut q = RawQmp::connect(sock);
        q.negotiate().expect("negotiate");
        (child, q)
    }

    pub fn connect(path: &std::path::Path) -> RawQmp {
        let t0 = std::time::Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("{path:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut q = RawQmp { stream, reader };
        assert!(q.line().contains("\"QMP\""));
        q
    }

    pub fn negotiate(&mut self) -> std::io::Result<()> {
        let r = self.try_ask(r#"{"execute":"qmp_capabilities"}"#)?;
        assert!(r.contains("\"return\""), "{r}");
        Ok(())
    }

    pub fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("read a QMP line");
        l
    }

    /// Sends `msg`; returns the first line that is not an event.
    pub fn ask(&mut self, msg: &str) -> String {
        self.try_ask(msg).expect("QMP exchange")
    }

    pub fn try_ask(&mut self, msg: &str) -> std::io::Result<String> {
        use std::io::{BufRead, Write};
        // One write: the server acts on a complete object at once (quit
        // closes the socket), so a separate newline write could fail.
        self.stream.write_all(format!("{msg}\n").as_bytes())?;
        loop {
            let mut l = String::new();
            if self.reader.read_line(&mut l)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if !l.contains("\"event\"") {
                return Ok(l);
            }
        }
    }
}
