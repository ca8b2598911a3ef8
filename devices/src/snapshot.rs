//! Saving and restoring a device model's guest-visible state.
//!
//! A device writes its state as bytes in its own small fixed layout (no
//! serialization framework here); the VMM stores the bytes in the
//! snapshot under the device's name, and the snapshot format's version
//! covers every layout. Devices with no state of their own (ACPI sleep
//! control, debug-exit) have nothing to save; PCI functions' config space
//! is saved and replayed by the VMM through the root's config path.

/// What a restore found wrong with saved bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{device}: saved state ({len} bytes) is not valid: {why}")]
pub struct StateError {
    pub device: &'static str,
    pub len: usize,
    pub why: &'static str,
}

/// A device model whose state a snapshot carries.
pub trait Snapshot {
    /// The device's state, in its own layout.
    fn save_state(&self) -> Vec<u8>;
    /// Puts back what [`Snapshot::save_state`] returned (the device was
    /// just created, no vCPU runs).
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError>;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::BusDevice;
    use crate::i8042::I8042;
    use crate::notifier::Notifier;
    use crate::serial::Serial;

    fn serial() -> Serial {
        Serial::new(Notifier::new().unwrap(), Box::new(std::io::sink()))
    }

    fn rd(d: &mut dyn BusDevice, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn serial_registers_and_pending_input_survive() {
        let mut a = serial();
        a.write(3, &[0x1b]); // LCR: 8 bits, even parity
        a.write(7, &[0x5a]); // scratch
        a.write(1, &[0x01]); // IER: receive interrupts
        a.enqueue_input(b"hi").unwrap();
        let saved = a.save_state();
        let mut b = serial();
        b.restore_state(&saved).unwrap();
        assert_eq!(b.save_state(), saved);
        assert_eq!(rd(&mut b, 3), 0x1b);
        assert_eq!(rd(&mut b, 7), 0x5a);
        assert_eq!(rd(&mut b, 0), b'h');
        assert_eq!(rd(&mut b, 0), b'i');
        let err = b.restore_state(&[1, 2]).unwrap_err();
        assert_eq!(err.device, "serial");
    }

    #[test]
    fn i8042_pending_command_survives() {
        let hook: crate::debug_exit::ExitHook = Arc::new(|_| {});
        let mut a = I8042::new(hook.clone());
        a.write(4, &[0x60]); // write config next
        a.write(0, &[0x47]);
        a.write(4, &[0x20]); // read config pending
        let saved = a.save_state();
        let mut b = I8042::new(hook);
        b.restore_state(&saved).unwrap();
        assert_eq!(rd(&mut b, 0), 0x47);
        assert!(b.restore_state(&[0; 4]).is_err());
    }
}
