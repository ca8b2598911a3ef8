//! The VM's GSI routing table: KVM's default irqchip routes plus one MSI
//! route per MSI-X vector a device uses, so an irqfd on that GSI raises
//! the guest's MSI directly.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the default routes
//! (GSI 0-15 to both PICs and the IOAPIC, 16-23 to the IOAPIC: what
//! KVM_CREATE_IRQCHIP installs) are always part of it; legacy interrupts
//! such as the serial port's irqfd on GSI 4 keep working.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KvmIrqRouting, kvm_irq_routing_entry,
};

use crate::hv::Vm;
use crate::layout::IOAPIC_PINS;

/// KVM's limit on routes (KVM_MAX_IRQ_ROUTES).
const MAX_GSI: u32 = 4096;

/// Errors changing the routing table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("no room for {0} more MSI routes (KVM allows {MAX_GSI} GSIs)")]
    Exhausted(u32),
    #[error("KVM_SET_GSI_ROUTING failed: {0}")]
    Set(String),
    #[error("the VM is shutting down")]
    Gone,
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = address as u32;
    e.u.msi.address_hi = (address >> 32) as u32;
    e.u.msi.data = data;
    e
}

/// The routes KVM_CREATE_IRQCHIP sets up on x86.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..u32::from(IOAPIC_PINS) {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(irqchip(gsi, chip, gsi % 8));
        }
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

#[derive(Debug)]
struct Inner {
    next: u32,
    /// GSI -> (address, data) of its MSI route.
    msi: BTreeMap<u32, (u64, u32)>,
}

/// The routing table of one VM. Held weakly on the VM: devices own it.
#[derive(Debug)]
pub struct GsiRouter {
    vm: Weak<Vm>,
    inner: Mutex<Inner>,
}

impl GsiRouter {
    pub fn new(vm: Weak<Vm>) -> Self {
        GsiRouter {
            vm,
            inner: Mutex::new(Inner {
                next: u32::from(IOAPIC_PINS),
                msi: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `n` consecutive GSIs for MSI routes; returns the first.
    pub fn allocate(&self, n: u32) -> Result<u32, Error> {
        let mut inner = self.lock();
        let first = inner.next;
        if first + n > MAX_GSI {
            return Err(Error::Exhausted(n));
        }
        inner.next += n;
        Ok(first)
    }

    /// Routes `gsi` to the MSI (`address`, `data`), or removes its route.
    /// The table is only rewritten when it changes.
    pub fn set_msi(&self, gsi: u32, route: Option<(u64, u32)>) -> Result<(), Error> {
        let mut inner = self.lock();
        let changed = match route {
            Some(r) => inner.msi.insert(gsi, r) != Some(r),
            None => inner.msi.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let vm = self.vm.upgrade().ok_or(Error::Gone)?;
        let table = Self::table(&inner.msi);
        let routing =
            KvmIrqRouting::from_entries(&table).map_err(|e| Error::Set(format!("{e:?}")))?;
        vm.fd()
            .set_gsi_routing(&routing)
            .map_err(|e| Error::Set(e.to_string()))
    }

    fn table(msi_routes: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
        let mut t = default_routes();
        t.extend(msi_routes.iter().map(|(&g, &(a, d))| msi(g, a, d)));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_matches_kvm_and_msi_routes_follow() {
        let t = default_routes();
        assert_eq!(t.len(), 16 * 2 + 8);
        // GSI 4 (COM1): PIC master pin 4 and IOAPIC pin 4.
        let gsi4: Vec<(u32, u32)> = t
            .iter()
            .filter(|e| e.gsi == 4)
            // SAFETY: irqchip is the member these entries were built with.
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert_eq!(gsi4, [(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]);
        let mut routes = BTreeMap::new();
        routes.insert(25, (0x1_fee0_1000u64, 0x4041));
        let t = GsiRouter::table(&routes);
        let last = t.last().unwrap();
        assert_eq!((last.gsi, last.type_), (25, KVM_IRQ_ROUTING_MSI));
        // SAFETY: msi is the member this entry was built with.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
    }

    #[test]
    fn allocation_starts_after_the_ioapic_and_is_bounded() {
        let r = GsiRouter::new(Weak::new());
        assert_eq!(r.allocate(3), Ok(24));
        assert_eq!(r.allocate(2), Ok(27));
        assert_eq!(r.allocate(MAX_GSI), Err(Error::Exhausted(MAX_GSI)));
        // No VM: nothing to change, or an error when a change is needed.
        assert_eq!(r.set_msi(24, None), Ok(()));
        assert_eq!(r.set_msi(24, Some((0xfee0_0000, 0x30))), Err(Error::Gone));
    }

    #[test]
    fn kvm_accepts_the_table_needs_kvm() {
        let vm = match Vm::new() {
            Ok(vm) => std::sync::Arc::new(vm),
            Err(e) => panic!("this test needs /dev/kvm: {e}"),
        };
        // GSI routing needs the in-kernel irqchip.
        vm.add_irqchip(crate::layout::KVM_TSS).unwrap();
        let r = GsiRouter::new(std::sync::Arc::downgrade(&vm));
        let g = r.allocate(2).unwrap();
        r.set_msi(g, Some((0xfee0_0000, 0x4030))).unwrap();
        r.set_msi(g + 1, Some((0xfee0_1000, 0x4031))).unwrap();
        r.set_msi(g, None).unwrap();
        // An irqfd on a routed GSI is accepted.
        let e = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        vm.add_irqfd(&e, g + 1).unwrap();
    }
}
