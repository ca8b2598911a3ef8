//! The ACPI power button: the GED register block on the MMIO bus and its
//! interrupt (the ACPI side is `boot/power_button.rs`'s SSDT, always in
//! the tables). Placed when QMP `system_powerdown` first presses it (the
//! guest reads the register only after the interrupt); a Linux guest then
//! powers off through ACPI S5.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use devices::ged::{self, Ged};
use devices::notifier::Notifier;

use crate::hv::Vm;
use crate::io::{BusKind, IoBuses};
use crate::layout::{GED_ADDR, GED_IRQ};

/// The VMM's side of the button.
#[derive(Debug)]
pub struct PowerButton {
    pending: Arc<AtomicU32>,
    irq: Notifier,
}

impl PowerButton {
    /// Puts the GED at [`GED_ADDR`] with its interrupt on [`GED_IRQ`]. None
    /// (with a warning) if the hypervisor or the bus refuse: the VM runs
    /// on without a power button.
    pub fn place(vm: &Vm, io: &IoBuses) -> Option<PowerButton> {
        let dev = Ged::new();
        let pending = dev.pending();
        let r = Notifier::new().map_err(|e| e.to_string()).and_then(|irq| {
            vm.register_irqfd(&irq, GED_IRQ)
                .map_err(|e| e.to_string())?;
            io.add(BusKind::Mmio, "ged", dev, GED_ADDR, ged::LEN)
                .map_err(|e| e.to_string())?;
            Ok(irq)
        });
        match r {
            Ok(irq) => Some(PowerButton { pending, irq }),
            Err(e) => {
                log::warn!("no ACPI power button: {e}");
                None
            }
        }
    }

    /// Presses the button: the event bit, then the interrupt.
    pub fn press(&self) -> std::io::Result<()> {
        self.pending
            .fetch_or(ged::EVENT_POWER_BUTTON, Ordering::SeqCst);
        self.irq.signal()
    }
}

/// The button as the machine keeps it: placed at its first press (nothing
/// reads the GED before its interrupt, and boot does not pay for it), by
/// whoever presses first: QMP `system_powerdown` or a watchdog whose
/// action is `shutdown`.
#[derive(Debug)]
pub struct LazyButton {
    vm: Weak<Vm>,
    io: Weak<IoBuses>,
    button: OnceLock<Option<PowerButton>>,
}

/// Why a press did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PressError {
    #[error("this machine has no ACPI power button")]
    NoButton,
    #[error("cannot press the power button: {0}")]
    Press(#[source] std::io::Error),
}

impl LazyButton {
    pub fn new(vm: &Arc<Vm>, io: &Arc<IoBuses>) -> Self {
        LazyButton {
            vm: Arc::downgrade(vm),
            io: Arc::downgrade(io),
            button: OnceLock::new(),
        }
    }

    /// Places the button if it is not yet, and presses it.
    pub fn press(&self) -> Result<(), PressError> {
        let button = self.button.get_or_init(|| {
            let (vm, io) = (self.vm.upgrade()?, self.io.upgrade()?);
            PowerButton::place(&vm, &io)
        });
        button
            .as_ref()
            .ok_or(PressError::NoButton)?
            .press()
            .map_err(PressError::Press)
    }
}
