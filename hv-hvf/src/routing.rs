//! KVM's interrupt routing without KVM: which interrupt a GSI raises, and
//! which notifiers are connected to which GSI (KVM's irqfds). The VMM's
//! interrupt service programs both through the same calls it makes on
//! KVM (`set_gsi_routing`, `register_irqfd`, `unregister_irqfd`); the
//! relay thread (`relay.rs`) looks a GSI up here each time one of its
//! notifiers is written. Pure bookkeeping, tested everywhere.

use std::collections::BTreeMap;
use std::os::fd::{OwnedFd, RawFd};

use hv_boundary::aarch64::GsiRoute;

use crate::gic::spi_intid;

/// What raising a GSI does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Pulses the SPI with this INTID (`hv_gic_set_spi`).
    Spi(u32),
    /// Sends the MSI the guest programmed: `intid` written to `address`
    /// (`hv_gic_send_msi`; the MBI frame's SETSPI_NSR).
    Msi { address: u64, intid: u32 },
}

/// The routing table: before the VMM sets one, GSI n raises SPI n (KVM's
/// default on arm64); once set, it is the whole table, as on KVM.
#[derive(Debug, Default)]
pub struct Routes {
    table: Option<BTreeMap<u32, Vec<Target>>>,
}

impl Routes {
    /// Replaces the table with `routes` (KVM_SET_GSI_ROUTING's meaning).
    /// An MSI's requester ID is dropped: an MBI frame does not translate
    /// by device.
    pub fn set(&mut self, routes: &[GsiRoute]) {
        let mut table: BTreeMap<u32, Vec<Target>> = BTreeMap::new();
        for r in routes {
            let t = match *r {
                GsiRoute::Spi { spi, .. } => Target::Spi(spi_intid(spi)),
                GsiRoute::Msi { address, data, .. } => Target::Msi {
                    address,
                    intid: data,
                },
            };
            table.entry(r.gsi()).or_default().push(t);
        }
        self.table = Some(table);
    }

    /// Calls `raise` with what raising `gsi` does (not at all for a GSI
    /// without a route). No allocation: the relay calls it per interrupt.
    pub fn each_target(&self, gsi: u32, mut raise: impl FnMut(Target)) {
        match &self.table {
            None => raise(Target::Spi(spi_intid(gsi))),
            Some(t) => t.get(&gsi).into_iter().flatten().copied().for_each(raise),
        }
    }
}

/// One connected notifier: its read end (what the relay polls), the GSI
/// it raises, and the caller's key for it (the descriptor number of the
/// caller's own copy, which KVM's irqfd deassign would name).
#[derive(Debug)]
pub struct Line {
    pub key: RawFd,
    pub gsi: u32,
    pub fd: OwnedFd,
}

/// The connected notifiers.
#[derive(Debug, Default)]
pub struct Lines(Vec<Line>);

impl Lines {
    /// Connects `fd` (keyed `key`) to `gsi`; a second connection of the
    /// same key to the same GSI replaces the first (KVM refuses it; the
    /// effect, one line, is the same).
    pub fn add(&mut self, key: RawFd, gsi: u32, fd: OwnedFd) {
        self.remove(key, gsi);
        self.0.push(Line { key, gsi, fd });
    }

    /// Disconnects `key` from `gsi`; whether it was connected.
    pub fn remove(&mut self, key: RawFd, gsi: u32) -> bool {
        let before = self.0.len();
        self.0.retain(|l| !(l.key == key && l.gsi == gsi));
        self.0.len() != before
    }

    /// Each line's read end (duplicated, for a relay thread) and GSI.
    pub fn copies(&self) -> std::io::Result<Vec<(OwnedFd, u32)>> {
        self.0
            .iter()
            .map(|l| l.fd.try_clone().map(|fd| (fd, l.gsi)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Routes {
        fn targets(&self, gsi: u32) -> Vec<Target> {
            let mut v = Vec::new();
            self.each_target(gsi, |t| v.push(t));
            v
        }
    }

    #[test]
    fn before_a_table_gsi_n_is_spi_n() {
        let r = Routes::default();
        assert_eq!(r.targets(1), [Target::Spi(33)]);
    }

    #[test]
    fn a_table_replaces_the_default_and_carries_msis() {
        let mut r = Routes::default();
        r.set(&[
            GsiRoute::Spi { gsi: 1, spi: 1 },
            GsiRoute::msi(96, 0x0808_0040, 70, 0x18),
        ]);
        assert_eq!(r.targets(1), [Target::Spi(33)]);
        assert_eq!(
            r.targets(96),
            [Target::Msi {
                address: 0x0808_0040,
                intid: 70
            }]
        );
        // Not in the table: no interrupt (KVM's meaning), not SPI 2.
        assert_eq!(r.targets(2), []);
        // A new table is the whole table.
        r.set(&[GsiRoute::msi(96, 0x0808_0040, 71, 0x18)]);
        assert_eq!(r.targets(1), []);
        assert_eq!(
            r.targets(96),
            [Target::Msi {
                address: 0x0808_0040,
                intid: 71
            }]
        );
    }

    #[test]
    fn lines_are_keyed_by_the_callers_descriptor_and_gsi() {
        let fd = || OwnedFd::from(std::io::pipe().expect("pipe").0);
        let mut l = Lines::default();
        l.add(7, 96, fd());
        l.add(7, 97, fd());
        l.add(8, 96, fd());
        // Again on the same GSI: still one line.
        l.add(7, 96, fd());
        let gsis = |l: &Lines| {
            let mut g: Vec<u32> = l.copies().unwrap().iter().map(|c| c.1).collect();
            g.sort();
            g
        };
        assert_eq!(gsis(&l), [96, 96, 97]);
        assert!(l.remove(7, 96));
        assert!(!l.remove(7, 96));
        assert!(!l.remove(9, 97));
        assert_eq!(gsis(&l), [96, 97]);
    }
}
