//! The L1 side of the `powerdown` and `stopcont` actions: a plain QMP
//! client on the L2 VMM's `-qmp unix:PATH,server=on,wait=off` socket
//! (greeting, `qmp_capabilities`, then the commands), every read bounded
//! by a deadline. Events seen on the way are collected; the run's judge
//! checks them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use thiserror::Error;

use super::Console;

/// One QMP read or command.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the paused guest's console must stay quiet.
const QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("qmp connect {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("qmp i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("qmp: no reply within {0}s")]
    Timeout(u64),
    #[error("qmp: connection closed")]
    Closed,
    #[error("qmp: not JSON: {0}")]
    Json(String),
    #[error("qmp: {command} failed: {reply}")]
    Command { command: String, reply: String },
    #[error("{0}")]
    Check(String),
}

#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Event names, in arrival order.
    pub events: Vec<String>,
}

impl Qmp {
    /// Connects (retrying until the deadline: the socket appears while the
    /// VMM starts) and negotiates capabilities.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        source: e,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.set_write_timeout(Some(STEP_TIMEOUT))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = q.read(Instant::now() + STEP_TIMEOUT)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Check(format!("qmp: no greeting: {greeting}")));
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    /// One JSON line, or a timeout.
    fn read(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(_) if line.ends_with('\n') => {
                    return serde_json::from_str(line.trim())
                        .map_err(|e| QmpError::Json(format!("{e}: {}", line.trim())));
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                return Err(QmpError::Timeout(STEP_TIMEOUT.as_secs()));
            }
        }
    }

    /// Notes an event; true if the value was one.
    fn note_event(&mut self, v: &Value) -> bool {
        match v.get("event").and_then(Value::as_str) {
            Some(name) => {
                self.events.push(name.to_string());
                true
            }
            None => false,
        }
    }

    /// Sends a command and returns its `return` value (events that arrive
    /// before the reply are noted).
    pub fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        self.execute_with(command, json!({}))
    }

    /// [`Qmp::execute`] with `arguments`.
    pub fn execute_with(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let msg = json!({ "execute": command, "arguments": arguments, "id": command });
        self.writer.write_all(format!("{msg}\n").as_bytes())?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let v = self.read(deadline)?;
            if self.note_event(&v) {
                continue;
            }
            return match v.get("return") {
                Some(r) => Ok(r.clone()),
                None => Err(QmpError::Command {
                    command: command.into(),
                    reply: v.to_string(),
                }),
            };
        }
    }

    /// Reads events until `name` has been seen or the deadline passes.
    pub fn wait_event(&mut self, name: &str) -> Result<(), QmpError> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !self.events.iter().any(|e| e == name) {
            let v = self.read(deadline)?;
            self.note_event(&v);
        }
        Ok(())
    }

    /// Reads events until the VMM closes the socket (it exits) or the
    /// deadline passes; the close itself is not an error.
    pub(crate) fn drain(&mut self, within: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline) {
                Ok(v) => {
                    self.note_event(&v);
                }
                Err(QmpError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// `powerdown`: press the power button; the guest's init powers off on it.
pub(super) fn powerdown(sock: &Path) -> Result<Qmp, QmpError> {
    let mut q = Qmp::connect(sock)?;
    q.execute("system_powerdown")?;
    q.wait_event("POWERDOWN")?;
    Ok(q)
}

/// `stopcont`: stop, check paused and a quiet console, continue.
pub(crate) fn stopcont(sock: &Path, console: &Console) -> Result<Qmp, QmpError> {
    let mut q = Qmp::connect(sock)?;
    q.execute("stop")?;
    q.wait_event("STOP")?;
    let st = q.execute("query-status")?;
    let running = st.get("running").and_then(Value::as_bool);
    let status = st.get("status").and_then(Value::as_str).unwrap_or("");
    if running != Some(false) || status != "paused" {
        return Err(QmpError::Check(format!(
            "query-status after stop: {st} (want running=false status=paused)"
        )));
    }
    // Let bytes already in flight land, then the console must stay still.
    std::thread::sleep(Duration::from_millis(200));
    let before = console.text().len();
    std::thread::sleep(QUIET);
    let after = console.text().len();
    if after != before {
        return Err(QmpError::Check(format!(
            "the console grew by {} bytes while paused",
            after - before
        )));
    }
    q.execute("cont")?;
    q.wait_event("RESUME")?;
    let st = q.execute("query-status")?;
    if st.get("running").and_then(Value::as_bool) != Some(true) {
        return Err(QmpError::Check(format!(
            "query-status after cont: {st} (want running=true)"
        )));
    }
    Ok(q)
}

/// Whether `want` occur in `events` in this order (others may come
/// between); Err names both lists.
pub(crate) fn events_in_order(events: &[String], want: &[&str]) -> Result<(), String> {
    let mut it = events.iter();
    if want.iter().all(|w| it.any(|e| e == w)) {
        Ok(())
    } else {
        Err(format!(
            "QMP events {}, want {} in order",
            events.join(","),
            want.join(",")
        ))
    }
}
