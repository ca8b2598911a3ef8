//! The stdio console: host stdin into COM1, through QEMU's mux escapes when
//! the console is multiplexed (`-serial mon:stdio`, `-chardev stdio,mux=on`,
//! `-nographic`).
//!
//! QEMU's escapes (chardev/char-mux.c), escape character Ctrl-A:
//! `C-a h` (or `?`) lists them, `C-a x` ends the VM (exit 0), `C-a C-a`
//! sends one Ctrl-A to the guest, `C-a c` would switch to the monitor
//! (shmvm has none: it says so), `C-a s`/`b`/`t` are answered with a note.
//! Any other key after `C-a` is dropped, as QEMU does. [`Escapes`] is the
//! pure part (bytes in, actions out); [`attach`] wires it to stdin.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use devices::serial::Serial;

use crate::config::{SerialMode, StdioOptions};
use crate::exit::VmEnd;
use crate::vcpu::VmState;

/// QEMU's default escape character, Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// The key list `C-a h` prints (QEMU's wording, shmvm's answers).
pub const HELP: &str = "\r\n\
C-a h    print this help\r\n\
C-a x    exit emulator\r\n\
C-a s    save disk data back to file (if -snapshot): nothing to save in shmvm\r\n\
C-a t    toggle console timestamps: not supported by shmvm\r\n\
C-a b    send break (magic sysrq): not supported by shmvm\r\n\
C-a c    switch between console and monitor: shmvm has no monitor\r\n\
C-a C-a  sends C-a\r\n";

/// What one input byte asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Pass the byte to the guest.
    Send(u8),
    Help,
    Quit,
    Monitor,
    SaveDisk,
    Break,
    Timestamps,
    /// An escape was consumed (`C-a` itself, or an unknown key after it).
    Nothing,
}

/// The escape state machine.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Escapes {
    after_escape: bool,
}

impl Escapes {
    /// Feeds one input byte.
    pub fn feed(&mut self, b: u8) -> Action {
        if self.after_escape {
            self.after_escape = false;
            return match b {
                ESCAPE => Action::Send(ESCAPE),
                b'h' | b'?' => Action::Help,
                b'x' => Action::Quit,
                b'c' => Action::Monitor,
                b's' => Action::SaveDisk,
                b'b' => Action::Break,
                b't' => Action::Timestamps,
                _ => Action::Nothing,
            };
        }
        if b == ESCAPE {
            self.after_escape = true;
            return Action::Nothing;
        }
        Action::Send(b)
    }
}

/// What the console prints for an action (None: nothing).
pub fn message(a: Action) -> Option<&'static str> {
    match a {
        Action::Help => Some(HELP),
        Action::Quit => Some("\r\nshmvm: terminated (C-a x)\r\n"),
        Action::Monitor => Some("\r\nshmvm: no monitor (C-a c): shmvm has no monitor\r\n"),
        Action::Break => Some("\r\nshmvm: C-a b (break) is not supported\r\n"),
        Action::Timestamps => Some("\r\nshmvm: C-a t (timestamps) is not supported\r\n"),
        Action::SaveDisk | Action::Send(_) | Action::Nothing => None,
    }
}

/// Copies `bytes` into the UART's receive FIFO, waiting while it is full.
fn to_guest(serial: &Mutex<Serial>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let took = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(bytes)
            .unwrap_or(0);
        bytes = &bytes[took..];
        if !bytes.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

fn reader(serial: Arc<Mutex<Serial>>, state: Arc<VmState>, mux: bool) {
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    let mut esc = Escapes::default();
    let mut out = Vec::with_capacity(64);
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !mux {
            to_guest(&serial, &buf[..n]);
            continue;
        }
        out.clear();
        for &b in &buf[..n] {
            let a = esc.feed(b);
            match a {
                Action::Send(b) => out.push(b),
                _ => {
                    to_guest(&serial, &out);
                    out.clear();
                    if let Some(m) = message(a) {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(m.as_bytes());
                        let _ = o.flush();
                    }
                    if a == Action::Quit {
                        state.request_end(VmEnd::Poweroff);
                        return;
                    }
                }
            }
        }
        to_guest(&serial, &out);
    }
}

/// The console's hold on the terminal; restores it when dropped.
#[derive(Debug)]
pub struct Console {
    _raw: Option<crate::terminal::RawMode>,
}

/// For a stdio console: puts a terminal stdin into raw mode (Ctrl-C still
/// stops shmvm unless `signal=off`) and starts the thread that feeds stdin
/// to COM1, through the escapes when muxed. Nothing for other consoles.
pub fn attach(
    mode: &SerialMode,
    opts: StdioOptions,
    serial: Arc<Mutex<Serial>>,
    state: Arc<VmState>,
) -> Console {
    if *mode != SerialMode::Stdio {
        return Console { _raw: None };
    }
    let raw = crate::terminal::RawMode::enter(opts.signal);
    if crate::terminal::stdin_has_input() {
        let r = std::thread::Builder::new()
            .name("stdin".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::sandbox::enter_worker();
                reader(serial, state, opts.mux)
            });
        if let Err(e) = r {
            log::warn!("serial: no stdin input: {e}");
        }
    }
    Console { _raw: raw }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Vec<Action> {
        let mut e = Escapes::default();
        input.iter().map(|&b| e.feed(b)).collect()
    }

    #[test]
    fn plain_bytes_pass_through() {
        assert_eq!(
            run(b"ab\x03"),
            [Action::Send(b'a'), Action::Send(b'b'), Action::Send(3)]
        );
    }

    #[test]
    fn qemu_escapes() {
        assert_eq!(run(b"\x01x"), [Action::Nothing, Action::Quit]);
        assert_eq!(run(b"\x01h"), [Action::Nothing, Action::Help]);
        assert_eq!(run(b"\x01?"), [Action::Nothing, Action::Help]);
        assert_eq!(run(b"\x01\x01"), [Action::Nothing, Action::Send(1)]);
        assert_eq!(run(b"\x01c"), [Action::Nothing, Action::Monitor]);
        assert_eq!(run(b"\x01s\x01b\x01t")[1], Action::SaveDisk);
        // An unknown key after C-a is dropped, the next byte is plain again.
        assert_eq!(
            run(b"\x01zq"),
            [Action::Nothing, Action::Nothing, Action::Send(b'q')]
        );
        // x without C-a is just x.
        assert_eq!(run(b"x"), [Action::Send(b'x')]);
        // C-a C-a then x: a C-a for the guest, then a plain x.
        assert_eq!(
            run(b"\x01\x01x"),
            [Action::Nothing, Action::Send(1), Action::Send(b'x')]
        );
    }

    #[test]
    fn messages() {
        assert!(
            message(Action::Help)
                .unwrap()
                .contains("C-a x    exit emulator")
        );
        assert!(message(Action::Monitor).unwrap().contains("no monitor"));
        assert!(message(Action::Quit).unwrap().contains("terminated"));
        assert_eq!(message(Action::Send(b'a')), None);
    }
}
