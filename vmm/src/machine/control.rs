//! The x86_64 machine as the monitor sees it ([`crate::control`]): its
//! power button is the ACPI GED, and it can save snapshots.

use serde_json::json;

use crate::control::Controlled;
use crate::qmp::control::Reply;
use crate::stats::Stats;
use crate::vcpu::VmState;

use super::Machine;

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

    fn press_power_button(&self) -> Result<(), String> {
        self.power_button.press().map_err(|e| e.to_string())
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
