//! ACPI hardware-reduced sleep control/status registers (ACPI 6, 4.8.3.7):
//! one I/O port the FADT names as SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
//! A guest entering S5 (Linux `poweroff`) writes SLP_TYP=5 with SLP_EN.

use crate::bus::BusDevice;
use crate::debug_exit::{ExitHook, GuestExit};

/// SLP_EN: bit 5 of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP: bits 2-4.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// The S5 sleep type the DSDT's `\_S5` package advertises.
pub const S5_SLEEP_TYPE: u8 = 5;

/// The sleep control (write) / status (read) register.
pub struct AcpiSleep {
    hook: ExitHook,
}

impl std::fmt::Debug for AcpiSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiSleep").finish_non_exhaustive()
    }
}

impl AcpiSleep {
    /// One byte-wide port.
    pub const PORTS: u64 = 1;

    pub fn new(hook: ExitHook) -> Self {
        AcpiSleep { hook }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS (bit 7) clear, nothing to report.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let sleep_type = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if v & SLP_EN != 0 && sleep_type == S5_SLEEP_TYPE {
            (self.hook)(GuestExit::Poweroff);
        } else {
            log::debug!("acpi: sleep control write {v:#x} ignored (only S5 is supported)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_with_slp_en_powers_off_and_other_states_are_ignored() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut d = AcpiSleep::new(Arc::new(move |e| s.lock().unwrap().push(e)));
        d.write(0, &[S5_SLEEP_TYPE << SLP_TYP_SHIFT]); // no SLP_EN
        d.write(0, &[(3 << SLP_TYP_SHIFT) | SLP_EN]); // S3
        assert!(seen.lock().unwrap().is_empty());
        d.write(0, &[(S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN]);
        assert_eq!(*seen.lock().unwrap(), vec![GuestExit::Poweroff]);
        assert_eq!(GuestExit::Poweroff.exit_code(), 0);
        let mut b = [0xffu8];
        d.read(0, &mut b);
        assert_eq!(b, [0]);
    }
}
