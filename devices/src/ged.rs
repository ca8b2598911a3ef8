//! ACPI Generic Event Device (ACPI0013): how a hardware-reduced platform
//! signals events. One 32-bit register of pending event bits, cleared by
//! reading it; the VMM sets a bit and raises the GED's interrupt, and the
//! guest's `_EVT` method reads the register and notifies (the power
//! button: `Notify(PWRB, 0x80)`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bus::BusDevice;

/// Event bit: the power button was pressed.
pub const EVENT_POWER_BUTTON: u32 = 1 << 0;
/// Size of the register block.
pub const LEN: u64 = 4;

/// The register block the guest reads.
#[derive(Debug, Default)]
pub struct Ged {
    pending: Arc<AtomicU32>,
}

impl Ged {
    pub fn new() -> Self {
        Ged::default()
    }

    /// The pending bits, for the VMM's side (set them, then interrupt).
    pub fn pending(&self) -> Arc<AtomicU32> {
        self.pending.clone()
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            let v = self.pending.swap(0, Ordering::SeqCst);
            data.copy_from_slice(&v.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_clears_the_pending_bits() {
        let mut g = Ged::new();
        g.pending().fetch_or(EVENT_POWER_BUTTON, Ordering::SeqCst);
        let mut b = [0u8; 4];
        g.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), EVENT_POWER_BUTTON);
        g.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        let mut one = [0xffu8; 1];
        g.read(1, &mut one);
        assert_eq!(one, [0]);
    }
}
