//! The typed statistics shmvm prints at VM end with `--stats=json`: one
//! stderr line, a JSON object beginning with `{"shmvm_stats":1,`. Tests,
//! the benches and the lab runner read fields of these structs, never log
//! text. Unknown fields are ignored, so the VMM may add counters.

use serde::Deserialize;
use thiserror::Error;

/// How the statistics line starts (the schema version is part of it).
pub const PREFIX: &str = "{\"shmvm_stats\":1,";

#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    /// Every device on the port and MMIO buses, BAR registers included.
    pub buses: Vec<BusDevice>,
    pub unclaimed: Unclaimed,
    /// Console write coalescing, when the serial console has it.
    pub console: Option<Console>,
    pub ivshmem: Vec<Ivshmem>,
    pub vhost_user: Vec<VhostUser>,
    /// Built-in virtio devices (absent in older binaries' lines).
    #[serde(default)]
    pub virtio: Vec<Virtio>,
    /// Guest-triggered log lines asked for, and those the rate limit left
    /// out (absent in older binaries' lines).
    #[serde(default)]
    pub guest_log_lines: u64,
    #[serde(default)]
    pub guest_log_suppressed: u64,
    /// i6300esb watchdogs (absent in older binaries' lines).
    #[serde(default)]
    pub watchdog: Vec<Watchdog>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Watchdog {
    pub name: String,
    pub pci: String,
    pub action: String,
    pub pings: u64,
    pub stage1_expiries: u64,
    pub fired: u64,
    pub locked_writes: u64,
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Virtio {
    pub name: String,
    pub starts: u64,
    pub resets: u64,
    pub broken: u64,
    pub errors: u64,
    pub notify_exits: u64,
    pub requests: u64,
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
    pub flushes: u64,
    pub device_errors: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BusDevice {
    pub name: String,
    /// "pio" or "mmio".
    pub bus: String,
    /// Where the device sits; null for a BAR the guest left unmapped.
    pub base: Option<u64>,
    pub len: Option<u64>,
    pub reads: u64,
    pub writes: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Unclaimed {
    pub pio: u64,
    pub mmio: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Console {
    /// Transmit writes KVM queued instead of exiting.
    pub coalesced_writes: u64,
    /// Whether queueing was still on at the end (off for good once the
    /// guest enabled the transmit interrupt or loopback).
    pub coalescing_on: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Ivshmem {
    pub name: String,
    pub pci: String,
    pub memdev: String,
    /// Where the guest put BAR2, if it assigned it.
    pub bar2_addr: Option<u64>,
    pub bar2_maps: u64,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar0_reads: u64,
    pub bar0_writes: u64,
    pub bar0_bad: u64,
    pub bar2_exits: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VhostUser {
    pub name: String,
    pub starts: u64,
    pub resets: u64,
    pub msix_updates: u64,
    pub errors: u64,
    pub common_reads: u64,
    pub common_writes: u64,
    pub notify_exits: u64,
}

/// Why no statistics could be read from an output.
#[derive(Debug, Error)]
pub enum StatsError {
    #[error("no --stats=json line (starting with {PREFIX}) in the output")]
    Missing,
    #[error("{0} --stats=json lines in the output, want exactly one")]
    Several(usize),
    #[error("the --stats=json line does not parse: {0}")]
    Json(#[from] serde_json::Error),
}

impl Stats {
    /// The one statistics line in `output` (a VMM's stderr, or a console
    /// log with stderr in it), parsed. Carriage returns are ignored.
    pub fn from_output(output: &str) -> Result<Stats, StatsError> {
        let mut lines = output
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with(PREFIX));
        let line = lines.next().ok_or(StatsError::Missing)?;
        let more = lines.count();
        if more > 0 {
            return Err(StatsError::Several(more + 1));
        }
        Ok(serde_json::from_str(line)?)
    }

    /// The bus device named `name`, if any.
    pub fn device(&self, name: &str) -> Option<&BusDevice> {
        self.buses.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"shmvm_stats":1,"buses":[{"name":"serial0","bus":"pio","base":1016,"len":8,"reads":3,"writes":40},{"name":"ivshmem-plain #0 bar2 exits","bus":"mmio","base":null,"len":null,"reads":0,"writes":0}],"unclaimed":{"pio":1,"mmio":0},"console":{"coalesced_writes":37},"ivshmem":[{"name":"ivshmem-plain #0","pci":"00:03.0","memdev":"sh","bar2_addr":null,"bar2_maps":0,"config_reads":5,"config_writes":2,"bar0_reads":0,"bar0_writes":0,"bar0_bad":0,"bar2_exits":0}],"vhost_user":[],"later":"ignored"}"#;

    #[test]
    fn reads_the_one_line_among_others() {
        let out = format!("shmvm: a warning\n{LINE}\r\nanother line\n");
        let s = Stats::from_output(&out).expect("parses");
        assert_eq!(s.device("serial0").map(|d| d.writes), Some(40));
        assert_eq!(
            s.device("ivshmem-plain #0 bar2 exits").map(|d| d.base),
            Some(None)
        );
        assert_eq!(s.unclaimed.pio, 1);
        assert_eq!(s.console.map(|c| c.coalesced_writes), Some(37));
        assert_eq!(s.ivshmem[0].bar2_addr, None);
        assert!(s.vhost_user.is_empty());
    }

    #[test]
    fn missing_repeated_and_broken_lines_are_errors() {
        assert!(matches!(
            Stats::from_output("nothing"),
            Err(StatsError::Missing)
        ));
        let two = format!("{LINE}\n{LINE}\n");
        assert!(matches!(
            Stats::from_output(&two),
            Err(StatsError::Several(2))
        ));
        let e = Stats::from_output("{\"shmvm_stats\":1,\"buses\":7}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the --stats=json line does not parse")
        );
    }
}
