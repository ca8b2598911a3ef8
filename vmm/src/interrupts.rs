//! Message-signalled interrupts as a VM-level service any device uses.
//!
//! A device asks for a block of vectors ([`Interrupts::vectors`]); each
//! vector gets a GSI whose route (the MSI address and data the guest wrote
//! into the device's MSI-X table) the device sets as the guest changes it,
//! and an eventfd attached to that GSI (irqfd) raises it without an exit.
//! Devices never see the hypervisor: the service holds the VM.
//!
//! The hypervisor's routing call replaces the whole table, so the default
//! irqchip routes (x86: GSI 0-15 to both PICs and the IOAPIC, 16-23 to the
//! IOAPIC; aarch64: GSI n to SPI n) are always part of it; legacy
//! interrupts such as the UART's irqfd keep working. On aarch64 an MSI
//! also names its requester (the device ID the GICv3 ITS translates by):
//! the function's PCI BDF, which [`Requester`] carries from the PCI
//! placement to the routes.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use devices::notifier::Notifier;

use crate::hv::{GsiRoute, Vm};
use crate::layout::IRQCHIP_GSIS;

/// The hypervisor's limit on routes (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

/// Errors of the interrupt service.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no room for {0} more MSI vectors ({MAX_GSI} interrupt routes at most)")]
    Exhausted(u32),
    #[error("vector {vector} is not one of this device's {count}")]
    NoVector { vector: u16, count: u16 },
    #[error("the hypervisor refused the interrupt routes: {0}")]
    Routing(String),
    #[error("the hypervisor refused an irqfd on GSI {gsi}: {reason}")]
    Irqfd { gsi: u32, reason: String },
    #[error("the VM is shutting down")]
    Gone,
}

/// An MSI message: where the device writes, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

// The requester ID belongs to PCI (it is built on hosts without MSIs).
pub use crate::pci::Requester;

#[derive(Debug)]
struct Table {
    next: u32,
    /// GSI -> its MSI message and requester.
    msi: BTreeMap<u32, (MsiMessage, u32)>,
}

/// The interrupt routing of one VM.
#[derive(Debug)]
pub struct Interrupts {
    vm: Weak<Vm>,
    table: Mutex<Table>,
}

/// The routes the in-kernel irqchip starts with.
fn default_routes() -> Vec<GsiRoute> {
    GsiRoute::irqchip_defaults(IRQCHIP_GSIS)
}

fn table_routes(msi: &BTreeMap<u32, (MsiMessage, u32)>) -> Vec<GsiRoute> {
    let mut t = default_routes();
    t.extend(
        msi.iter()
            .map(|(&gsi, (m, devid))| GsiRoute::msi(gsi, m.address, m.data, *devid)),
    );
    t
}

impl Interrupts {
    /// The service for `vm`, which it holds weakly (devices own the
    /// service; the VM must be able to go first at teardown).
    pub fn new(vm: &Arc<Vm>) -> Arc<Interrupts> {
        Arc::new(Self::with_vm(Arc::downgrade(vm)))
    }

    fn with_vm(vm: Weak<Vm>) -> Interrupts {
        Interrupts {
            vm,
            table: Mutex::new(Table {
                next: IRQCHIP_GSIS,
                msi: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vm(&self) -> Result<Arc<Vm>, Error> {
        self.vm.upgrade().ok_or(Error::Gone)
    }

    /// Reserves `count` vectors for one device.
    pub fn vectors(self: &Arc<Self>, count: u16) -> Result<MsiVectors, Error> {
        let mut t = self.lock();
        let first = t.next;
        if first + u32::from(count) > MAX_GSI {
            return Err(Error::Exhausted(count.into()));
        }
        t.next += u32::from(count);
        Ok(MsiVectors {
            service: self.clone(),
            first_gsi: first,
            count,
            requester: Requester::default(),
        })
    }

    /// Routes `gsi` to `msg` from `devid` (or removes its route); the
    /// table is only rewritten when it changes.
    fn set_route(&self, gsi: u32, msg: Option<(MsiMessage, u32)>) -> Result<(), Error> {
        let mut t = self.lock();
        let changed = match msg {
            Some(m) => t.msi.insert(gsi, m) != Some(m),
            None => t.msi.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        self.vm()?
            .set_gsi_routing(&table_routes(&t.msi))
            .map_err(|e| Error::Routing(e.to_string()))
    }
}

/// A device's block of MSI vectors.
#[derive(Debug)]
pub struct MsiVectors {
    service: Arc<Interrupts>,
    first_gsi: u32,
    count: u16,
    requester: Requester,
}

impl MsiVectors {
    fn gsi(&self, vector: u16) -> Result<u32, Error> {
        if vector < self.count {
            Ok(self.first_gsi + u32::from(vector))
        } else {
            Err(Error::NoVector {
                vector,
                count: self.count,
            })
        }
    }

    /// Routes `vector` to the MSI message the guest programmed, or removes
    /// the route (`None`).
    pub fn route(&self, vector: u16, msg: Option<MsiMessage>) -> Result<(), Error> {
        let devid = self.requester.get();
        self.service
            .set_route(self.gsi(vector)?, msg.map(|m| (m, devid)))
    }

    /// Where the PCI layer writes the function's requester ID.
    pub fn requester(&self) -> Requester {
        self.requester.clone()
    }

    /// Makes a write to `evt` raise `vector` (irqfd). A write that came
    /// while it was detached is delivered on attaching (the eventfd stays
    /// readable): the MSI-X pending bit's job.
    pub fn attach(&self, evt: &Notifier, vector: u16) -> Result<(), Error> {
        let gsi = self.gsi(vector)?;
        self.service
            .vm()?
            .register_irqfd(evt, gsi)
            .map_err(|e| Error::Irqfd {
                gsi,
                reason: e.to_string(),
            })
    }

    /// Undoes [`MsiVectors::attach`].
    pub fn detach(&self, evt: &Notifier, vector: u16) -> Result<(), Error> {
        let gsi = self.gsi(vector)?;
        self.service
            .vm()?
            .unregister_irqfd(evt, gsi)
            .map_err(|e| Error::Irqfd {
                gsi,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn default_table_matches_the_irqchip_and_msi_routes_follow() {
        use crate::hv::IrqChip;
        let t = default_routes();
        assert_eq!(t.len(), 16 * 2 + 8);
        let gsi4: Vec<_> = t.iter().filter(|r| r.gsi() == 4).collect();
        assert_eq!(
            gsi4,
            [
                &GsiRoute::Irqchip {
                    gsi: 4,
                    chip: IrqChip::PicMaster,
                    pin: 4
                },
                &GsiRoute::Irqchip {
                    gsi: 4,
                    chip: IrqChip::Ioapic,
                    pin: 4
                }
            ]
        );
        let mut msi = BTreeMap::new();
        let m = MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x4041,
        };
        msi.insert(25, (m, 0x18));
        assert_eq!(
            table_routes(&msi).last(),
            Some(&GsiRoute::Msi {
                gsi: 25,
                address: 0x1_fee0_1000,
                data: 0x4041
            })
        );
    }

    #[test]
    fn vectors_start_after_the_irqchip_routes_and_are_bounded() {
        let s = Arc::new(Interrupts::with_vm(Weak::new()));
        let a = s.vectors(3).unwrap();
        let b = s.vectors(2).unwrap();
        let first = IRQCHIP_GSIS;
        assert_eq!((a.gsi(0), b.gsi(1)), (Ok(first), Ok(first + 4)));
        assert_eq!(
            default_routes().iter().map(GsiRoute::gsi).max(),
            Some(first - 1)
        );
        a.requester().set(0x18);
        assert_eq!(a.requester.get(), 0x18);
        assert_eq!(
            a.gsi(3),
            Err(Error::NoVector {
                vector: 3,
                count: 3
            })
        );
        assert_eq!(s.vectors(4096).unwrap_err(), Error::Exhausted(4096));
        // No VM: nothing to change is fine, a change is an error.
        assert_eq!(a.route(0, None), Ok(()));
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        assert_eq!(a.route(0, Some(m)), Err(Error::Gone));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kvm_accepts_routes_and_irqfds() {
        let vm = match Vm::new() {
            Ok(vm) => Arc::new(vm),
            Err(e) => panic!("this test needs /dev/kvm: {e}"),
        };
        // Routing needs the in-kernel irqchip.
        vm.add_irqchip(crate::layout::KVM_TSS).unwrap();
        let s = Interrupts::new(&vm);
        let v = s.vectors(2).unwrap();
        let m = |data| {
            Some(MsiMessage {
                address: 0xfee0_0000,
                data,
            })
        };
        v.route(0, m(0x4030)).unwrap();
        v.route(1, m(0x4031)).unwrap();
        v.route(0, None).unwrap();
        let e = Notifier::new().unwrap();
        v.attach(&e, 1).unwrap();
        v.detach(&e, 1).unwrap();
    }
}
