//! What the devices did, as one typed structure with two renderings: text
//! for people (`--stats`) and one JSON line for programs (`--stats=json`),
//! which the tests and the lab read instead of scraping the text.
//!
//! The JSON line starts with `{"shmvm_stats":1,` (the format version), so
//! a reader finds it among other stderr lines by that prefix.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use serde::Serialize;

/// The current JSON format version.
pub const FORMAT_VERSION: u32 = 1;

/// How `--stats` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatsFormat {
    /// Nothing (but `-v` still logs the text form).
    #[default]
    Off,
    Text,
    Json,
}

/// One device on the port or MMIO bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusStats {
    pub name: String,
    /// "pio" or "mmio".
    pub bus: &'static str,
    /// Where it decodes at the end; `None` for a BAR that does not.
    pub base: Option<u64>,
    pub len: Option<u64>,
    pub reads: u64,
    pub writes: u64,
}

/// Accesses that exited and that no device claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Unclaimed {
    pub pio: u64,
    pub mmio: u64,
}

/// Console output queued by the hypervisor instead of exiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConsoleStats {
    pub coalesced_writes: u64,
    /// Whether queuing was still on at the end (off once the guest gave
    /// transmit side effects).
    pub coalescing_on: bool,
}

/// One ivshmem device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IvshmemStats {
    pub name: String,
    /// PCI address, `00:SS.F`.
    pub pci: String,
    pub memdev: String,
    /// BAR2's guest-physical address at the end, if it decodes.
    pub bar2_addr: Option<u64>,
    /// How often BAR2 was mapped (1 + moves).
    pub bar2_maps: u64,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar0_reads: u64,
    pub bar0_writes: u64,
    pub bar0_bad: u64,
    /// BAR2 accesses that reached the VMM (0 while it is a memory slot).
    pub bar2_exits: u64,
}

/// One ivshmem-doorbell device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoorbellStats {
    pub name: String,
    pub pci: String,
    /// This peer's id (IVPosition).
    pub id: u16,
    pub vectors: u16,
    /// Other peers known at the end.
    pub peers: u64,
    pub peers_joined: u64,
    pub peers_left: u64,
    /// (peer, vector) doorbells registered as ioeventfds at the end.
    pub ioeventfds: u64,
    /// Own vectors attached as irqfds at the end.
    pub irqfds: u64,
    /// Doorbell writes that exited to the VMM (0 with ioeventfds: rings
    /// then never leave the kernel, and are not counted anywhere).
    pub doorbell_exits: u64,
    /// Exited rings the VMM delivered itself.
    pub rings_forwarded: u64,
    /// Exited rings of an absent peer or vector.
    pub rings_ignored: u64,
    pub msix_updates: u64,
    pub errors: u64,
    pub bar0_reads: u64,
    pub bar0_writes: u64,
    pub bar2_addr: Option<u64>,
    pub bar2_exits: u64,
}

/// One vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VhostUserStats {
    pub name: String,
    pub starts: u64,
    pub resets: u64,
    pub msix_updates: u64,
    pub errors: u64,
    pub common_reads: u64,
    pub common_writes: u64,
    /// Queue kicks that exited to the VMM (0 with ioeventfds).
    pub notify_exits: u64,
}

/// One built-in virtio device (virtio-blk, virtio-serial, virtio-rng).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtioStats {
    pub name: String,
    pub starts: u64,
    pub resets: u64,
    /// Times the device found its rings broken and needed a reset.
    pub broken: u64,
    /// Wiring failures (ioeventfds, irqfds, MSI routes).
    pub errors: u64,
    /// Queue kicks that exited to the VMM (0 with ioeventfds).
    pub notify_exits: u64,
    pub requests: u64,
    /// Bytes the device wrote to the guest (disk reads, entropy, console
    /// input) and read from it (disk writes, console output).
    pub bytes_to_guest: u64,
    pub bytes_from_guest: u64,
    pub flushes: u64,
    /// Requests answered with an error status.
    pub device_errors: u64,
}

/// One i6300esb watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchdogStats {
    pub name: String,
    pub pci: String,
    /// `-watchdog-action`.
    pub action: &'static str,
    /// Reloads while enabled.
    pub pings: u64,
    pub stage1_expiries: u64,
    /// Times stage 2 ran out and the action was performed.
    pub fired: u64,
    /// Preload and reload writes without the unlock sequence (ignored).
    pub locked_writes: u64,
    /// Whether the guest had it enabled at the end.
    pub enabled: bool,
}

/// Everything, at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub shmvm_stats: u32,
    pub buses: Vec<BusStats>,
    pub unclaimed: Unclaimed,
    pub console: Option<ConsoleStats>,
    /// Guest console bytes dropped because the reader of stdout (or the
    /// serial file) did not keep up: a vCPU never waits for it.
    pub console_dropped_bytes: u64,
    /// Guest-triggered log lines (warnings about BAR moves, virtio and
    /// vhost-user mistakes, unclaimed accesses at debug level): how many
    /// there were and how many the rate limit left out of the log.
    pub guest_log_lines: u64,
    pub guest_log_suppressed: u64,
    pub ivshmem: Vec<IvshmemStats>,
    pub ivshmem_doorbell: Vec<DoorbellStats>,
    pub vhost_user: Vec<VhostUserStats>,
    pub virtio: Vec<VirtioStats>,
    pub watchdog: Vec<WatchdogStats>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            shmvm_stats: FORMAT_VERSION,
            buses: Vec::new(),
            unclaimed: Unclaimed::default(),
            console: None,
            console_dropped_bytes: 0,
            guest_log_lines: 0,
            guest_log_suppressed: 0,
            ivshmem: Vec::new(),
            ivshmem_doorbell: Vec::new(),
            vhost_user: Vec::new(),
            virtio: Vec::new(),
            watchdog: Vec::new(),
        }
    }
}

fn opt_hex(v: Option<u64>) -> String {
    v.map_or_else(|| "unmapped".to_string(), |a| format!("{a:#x}"))
}

impl Stats {
    /// One line of JSON (no newline).
    pub fn json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"shmvm_stats_error\":\"{e}\"}}"))
    }

    /// The human form: a heading, one line per device summary, then the
    /// bus counters.
    pub fn text(&self) -> String {
        let mut out = String::from("shmvm: device statistics\n");
        if let Some(c) = &self.console {
            out.push_str(&format!(
                "  serial0 transmit writes queued by KVM, without an exit: {} ({})\n",
                c.coalesced_writes,
                if c.coalescing_on {
                    "still on at the end"
                } else {
                    "off once the guest enabled the transmit interrupt or loopback"
                }
            ));
        }
        if self.console_dropped_bytes > 0 {
            out.push_str(&format!(
                "  serial0 output dropped (the reader did not keep up): {} bytes\n",
                self.console_dropped_bytes
            ));
        }
        if self.guest_log_suppressed > 0 {
            out.push_str(&format!(
                "  guest-triggered log lines: {}, {} left out by the rate limit\n",
                self.guest_log_lines, self.guest_log_suppressed
            ));
        }
        for d in &self.ivshmem {
            out.push_str(&format!(
                "  {} ({}, memdev '{}'): bar2 at {}, mapped {} times; config {} reads, {} writes; \
                 bar0 {} reads, {} writes, {} bad; bar2 exits {}\n",
                d.name,
                d.pci,
                d.memdev,
                opt_hex(d.bar2_addr),
                d.bar2_maps,
                d.config_reads,
                d.config_writes,
                d.bar0_reads,
                d.bar0_writes,
                d.bar0_bad,
                d.bar2_exits,
            ));
        }
        for d in &self.ivshmem_doorbell {
            out.push_str(&format!(
                "  {} ({}): peer {}, {} vector(s); {} other peers ({} joined, {} left); \
                 {} ioeventfds, {} irqfds; doorbell exits {} (0 with ioeventfds), {} forwarded, \
                 {} ignored; {} MSI-X updates, {} errors; bar2 at {}, exits {}\n",
                d.name,
                d.pci,
                d.id,
                d.vectors,
                d.peers,
                d.peers_joined,
                d.peers_left,
                d.ioeventfds,
                d.irqfds,
                d.doorbell_exits,
                d.rings_forwarded,
                d.rings_ignored,
                d.msix_updates,
                d.errors,
                opt_hex(d.bar2_addr),
                d.bar2_exits,
            ));
        }
        for v in &self.vhost_user {
            out.push_str(&format!(
                "  {}: started {} times, {} resets, {} MSI-X updates, {} errors; common cfg {} reads, \
                 {} writes; notify exits {} (0 with ioeventfds)\n",
                v.name,
                v.starts,
                v.resets,
                v.msix_updates,
                v.errors,
                v.common_reads,
                v.common_writes,
                v.notify_exits,
            ));
        }
        for v in &self.virtio {
            out.push_str(&format!(
                "  {}: started {} times, {} resets, broken {} times, {} errors; {} requests \
                 ({} errors), {} bytes to the guest, {} from it, {} flushes; notify exits {} \
                 (0 with ioeventfds)\n",
                v.name,
                v.starts,
                v.resets,
                v.broken,
                v.errors,
                v.requests,
                v.device_errors,
                v.bytes_to_guest,
                v.bytes_from_guest,
                v.flushes,
                v.notify_exits,
            ));
        }
        for w in &self.watchdog {
            out.push_str(&format!(
                "  {} ({}): action {}; {} pings, stage 1 ran out {} times, fired {} times; \
                 {} writes without the unlock sequence; {} at the end\n",
                w.name,
                w.pci,
                w.action,
                w.pings,
                w.stage1_expiries,
                w.fired,
                w.locked_writes,
                if w.enabled { "enabled" } else { "disabled" },
            ));
        }
        for b in &self.buses {
            let bus = if b.bus == "pio" { "" } else { "mmio " };
            out.push_str(&format!(
                "  {} ({bus}{}): {} reads, {} writes\n",
                b.name,
                opt_hex(b.base),
                b.reads,
                b.writes
            ));
        }
        out.push_str(&format!(
            "  unclaimed: {} port accesses, {} MMIO accesses\n",
            self.unclaimed.pio, self.unclaimed.mmio
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        Stats {
            buses: vec![BusStats {
                name: "serial0".into(),
                bus: "pio",
                base: Some(0x3f8),
                len: Some(8),
                reads: 3,
                writes: 4,
            }],
            unclaimed: Unclaimed { pio: 1, mmio: 2 },
            console: Some(ConsoleStats {
                coalesced_writes: 9,
                coalescing_on: true,
            }),
            ivshmem: vec![IvshmemStats {
                name: "ivshmem-plain #0".into(),
                pci: "00:03.0".into(),
                memdev: "sh".into(),
                bar2_addr: None,
                bar2_maps: 1,
                config_reads: 5,
                config_writes: 6,
                bar0_reads: 7,
                bar0_writes: 8,
                bar0_bad: 0,
                bar2_exits: 0,
            }],
            ..Stats::default()
        }
    }

    #[test]
    fn json_is_one_line_with_the_version_first() {
        let j = sample().json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"shmvm_stats\":1,\"buses\":[{\"name\":\"serial0\",\"bus\":\"pio\",\"base\":1016,\"len\":8,\"reads\":3,\"writes\":4}]"), "{j}");
        assert!(j.contains("\"bar2_addr\":null"), "{j}");
        assert!(j.contains("\"vhost_user\":[]"), "{j}");
    }

    #[test]
    fn text_names_every_item() {
        let t = sample().text();
        assert!(t.contains("  serial0 (0x3f8): 3 reads, 4 writes\n"), "{t}");
        assert!(
            t.contains("unclaimed: 1 port accesses, 2 MMIO accesses"),
            "{t}"
        );
        assert!(
            t.contains("without an exit: 9 (still on at the end)"),
            "{t}"
        );
        assert!(
            t.contains("ivshmem-plain #0 (00:03.0, memdev 'sh'): bar2 at unmapped, mapped 1 times"),
            "{t}"
        );
    }
}
