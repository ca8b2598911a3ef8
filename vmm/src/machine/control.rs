//! The x86_64 machine as the monitor sees it ([`crate::control`]): its
//! power button is the ACPI GED, and it can save snapshots.

use serde_json::json;

use crate::control::{Controlled, PowerKey};
use crate::qmp::control::Reply;
use crate::stats::Stats;
use crate::vcpu::VmState;

use super::Machine;
use super::power_button::PowerButton;

impl PowerKey for PowerButton {
    fn press(&self) -> std::io::Result<()> {
        PowerButton::press(self)
    }
}

impl Controlled for Machine {
    fn state(&self) -> &VmState {
        &self.state
    }

    fn backends(&self) -> Vec<&memory::Backend> {
        std::iter::once(self.ram.backend())
            .chain(self.objects.iter().map(|b| &**b))
            .collect()
    }

    fn pci(&self) -> &crate::pci::Pci {
        &self.pci
    }

    fn stats(&self) -> Stats {
        Machine::stats(self)
    }

    fn power_button(&self) -> Result<Box<dyn PowerKey>, String> {
        PowerButton::place(&self.vm, &self.io)
            .map(|b| Box::new(b) as Box<dyn PowerKey>)
            .ok_or_else(|| "this machine has no ACPI power button".into())
    }

    fn snapshot_save(&self, path: &str) -> Reply {
        let saved = self
            .save_snapshot(std::path::Path::new(path))
            .map_err(|e| format!("x-shmvm-snapshot-save {path}: {e}"))?;
        log::info!(
            "snapshot saved to {path}: state in {:.3} ms, {:.3} ms in all",
            saved.state_ms,
            saved.total_ms
        );
        Ok(json!({
            "memory-referenced": saved.referenced,
            "memory-written": saved.written,
            "state-ms": saved.state_ms,
            "total-ms": saved.total_ms,
        }))
    }
}
