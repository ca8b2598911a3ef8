//! Host terminal handling for `--serial stdio`: whether stdin is worth
//! reading, and raw mode (no line buffering, no echo) while the VM runs when
//! stdin is a terminal. Ctrl-C still stops the VMM (ISIG stays on) unless
//! the console asks for `signal=off` (then it goes to the guest).

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

/// Whether stdin can deliver input: a terminal, pipe, socket or file, but
/// not /dev/null (so benchmarks and tests spawn no reader thread).
pub fn stdin_has_input() -> bool {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return true;
    }
    match std::fs::metadata("/proc/self/fd/0") {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            !(t.is_char_device() || t.is_block_device())
        }
        Err(_) => false,
    }
}

/// Restores the terminal's settings when dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Puts a terminal stdin into raw mode; None when stdin is no terminal.
    /// `signal`: Ctrl-C and friends still raise signals (QEMU's `signal=on`).
    pub fn enter(signal: bool) -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let fd = stdin.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is stdin, open for the life of the process; `t` is a
        // valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::IEXTEN);
        if !signal {
            t.c_lflag &= !libc::ISIG;
        }
        t.c_iflag &= !(libc::IXON | libc::ICRNL);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `t` is a termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}
