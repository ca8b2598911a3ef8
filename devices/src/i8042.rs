//! Minimal i8042 keyboard controller: enough for a guest to reset the machine
//! (command 0xfe on the command port), which is how Linux `reboot=k` and the
//! test kernel's fallback end a VM.

use crate::bus::BusDevice;
use crate::debug_exit::{ExitHook, GuestExit};

/// Ports 0x60 (data) .. 0x64 (status/command), as one 5-port range.
pub struct I8042 {
    hook: ExitHook,
    /// Last command written, so a "read controller config" (0x20) can answer.
    pending: Option<u8>,
    /// Controller configuration byte.
    config: u8,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const DATA: u64 = 0;
const COMMAND: u64 = 4;
const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_RESET_CPU: u8 = 0xfe;
/// Status bit: output buffer full (data waiting at port 0x60).
const STATUS_OBF: u8 = 0x01;
/// Status bit: system flag (self-test passed).
const STATUS_SYS: u8 = 0x04;

impl I8042 {
    /// Base port and number of ports.
    pub const BASE: u16 = 0x60;
    pub const PORTS: u64 = 5;

    pub fn new(hook: ExitHook) -> Self {
        I8042 {
            hook,
            pending: None,
            config: 0,
        }
    }
}

/// Layout: whether a command is pending, the command, the config byte.
impl crate::snapshot::Snapshot for I8042 {
    fn save_state(&self) -> Vec<u8> {
        vec![
            u8::from(self.pending.is_some()),
            self.pending.unwrap_or(0),
            self.config,
        ]
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), crate::snapshot::StateError> {
        let &[has, cmd, config] = state else {
            return Err(crate::snapshot::StateError {
                device: "i8042",
                len: state.len(),
                why: "not 3 bytes",
            });
        };
        self.pending = (has != 0).then_some(cmd);
        self.config = config;
        Ok(())
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            COMMAND => {
                let obf = if self.pending == Some(CMD_READ_CONFIG) {
                    STATUS_OBF
                } else {
                    0
                };
                STATUS_SYS | obf
            }
            DATA if self.pending == Some(CMD_READ_CONFIG) => {
                self.pending = None;
                self.config
            }
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            COMMAND if v == CMD_RESET_CPU => (self.hook)(GuestExit::Reset),
            COMMAND => self.pending = Some(v),
            DATA if self.pending == Some(CMD_WRITE_CONFIG) => {
                self.pending = None;
                self.config = v;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reset_command_reports_reset_and_config_round_trips() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut k = I8042::new(Arc::new(move |e| s.lock().unwrap().push(e)));
        let mut b = [0u8];
        k.read(COMMAND, &mut b);
        assert_eq!(b[0] & 0x02, 0, "input buffer never full");
        k.write(COMMAND, &[CMD_WRITE_CONFIG]);
        k.write(DATA, &[0x45]);
        k.write(COMMAND, &[CMD_READ_CONFIG]);
        k.read(COMMAND, &mut b);
        assert_eq!(b[0] & STATUS_OBF, STATUS_OBF);
        k.read(DATA, &mut b);
        assert_eq!(b[0], 0x45);
        assert!(seen.lock().unwrap().is_empty());
        k.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestExit::Reset]);
    }
}
