//! QEMU-compatible `isa-debug-exit` port and the guest-initiated VM endings
//! that legacy devices report.
//!
//! A guest write of value `v` asks the VMM to end with exit code
//! `(v << 1) | 1`, so a test kernel's verdict becomes the process status.

use std::sync::Arc;

use crate::bus::BusDevice;

/// Why the guest asked the machine to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// Keyboard-controller CPU reset (i8042 command 0xfe).
    Reset,
    /// ACPI S5 (soft off) through the sleep control register.
    Poweroff,
    /// A write of `value` to the debug-exit port.
    DebugExit { value: u32 },
}

impl GuestExit {
    /// The VMM process exit code for this ending.
    pub fn exit_code(self) -> i32 {
        match self {
            GuestExit::Reset | GuestExit::Poweroff => 0,
            // QEMU truncates the same way: the status byte is what survives.
            GuestExit::DebugExit { value } => ((value << 1) | 1) as i32 & 0xff,
        }
    }
}

/// Called by a device, on the vCPU thread that made the access, when the guest
/// asks for the VM to end.
pub type ExitHook = Arc<dyn Fn(GuestExit) + Send + Sync>;

/// The isa-debug-exit device.
pub struct DebugExit {
    hook: ExitHook,
}

impl std::fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugExit").finish_non_exhaustive()
    }
}

impl DebugExit {
    /// QEMU's isa-debug-exit defaults are iobase=0x501,iosize=2; shmvm
    /// defaults to what test kernels (and most QEMU command lines) use.
    pub const DEFAULT_IOBASE: u16 = 0xf4;
    pub const DEFAULT_IOSIZE: u16 = 4;

    pub fn new(hook: ExitHook) -> Self {
        DebugExit { hook }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        (self.hook)(GuestExit::DebugExit {
            value: u32::from_le_bytes(v),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn write_reports_value_and_qemu_exit_code() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut d = DebugExit::new(Arc::new(move |e| s.lock().unwrap().push(e)));
        d.write(0, &[0x10]);
        d.write(0, &[0x11, 0, 0, 0]);
        let got = seen.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                GuestExit::DebugExit { value: 0x10 },
                GuestExit::DebugExit { value: 0x11 }
            ]
        );
        assert_eq!(got[0].exit_code(), 33);
        assert_eq!(got[1].exit_code(), 35);
        assert_eq!(GuestExit::Reset.exit_code(), 0);
    }
}
