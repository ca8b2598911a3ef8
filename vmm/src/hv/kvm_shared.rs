//! KVM plumbing both architectures' backends (`kvm.rs`, `kvm_aarch64.rs`)
//! use the same way: memory slots, ioeventfds, MSI routing entries, the
//! routing table.
//! Each backend maps the errors onto its own `Error`.

use kvm_bindings::{
    KVM_IRQ_ROUTING_MSI, KVM_MEM_READONLY, KvmIrqRouting, kvm_irq_routing_entry,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::IoEventAddr;

/// KVM_SET_USER_MEMORY_REGION: slot `slot` maps `[host, host + size)` at
/// `gpa` (read-only for the guest when `readonly`); a `size` of 0 deletes
/// the slot.
///
/// # Safety
/// Unless `size` is 0, `host` must point to a mapping of at least `size`
/// bytes that stays mapped while the slot is set.
pub(super) unsafe fn memory_slot(
    fd: &VmFd,
    slot: u32,
    gpa: u64,
    host: *mut u8,
    size: u64,
    readonly: bool,
) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: if readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: the caller guarantees the host range is a live mapping for as
    // long as the slot is set; a zero-sized region maps nothing.
    unsafe { fd.set_user_memory_region(region) }
}

/// Whether an ioeventfd is added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Assign {
    Add,
    Remove,
}

/// KVM_IOEVENTFD: guest writes to `addr` (only of `datamatch`, when given)
/// signal `evt` instead of exiting, or no longer do.
pub(super) fn ioeventfd(
    fd: &VmFd,
    evt: &EventFd,
    addr: IoEventAddr,
    datamatch: Option<u32>,
    assign: Assign,
) -> Result<(), kvm_ioctls::Error> {
    let a = match addr {
        IoEventAddr::Pio(p) => IoEventAddress::Pio(p),
        IoEventAddr::Mmio(m) => IoEventAddress::Mmio(m),
    };
    match (assign, datamatch) {
        (Assign::Add, Some(v)) => fd.register_ioevent(evt, &a, v),
        (Assign::Add, None) => fd.register_ioevent(evt, &a, NoDatamatch),
        (Assign::Remove, Some(v)) => fd.unregister_ioevent(evt, &a, v),
        (Assign::Remove, None) => fd.unregister_ioevent(evt, &a, NoDatamatch),
    }
}

/// An MSI routing entry for `gsi` (the caller adds flags such as a
/// device ID).
pub(super) fn msi_entry(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
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

/// Why a routing table was not set.
#[derive(Debug)]
pub(super) enum RoutingError {
    /// More entries than the table holds.
    TooMany(usize),
    Ioctl(kvm_ioctls::Error),
}

/// KVM_SET_GSI_ROUTING with `entries` as the whole table.
pub(super) fn set_gsi_routing(
    fd: &VmFd,
    entries: &[kvm_irq_routing_entry],
) -> Result<(), RoutingError> {
    let table =
        KvmIrqRouting::from_entries(entries).map_err(|_| RoutingError::TooMany(entries.len()))?;
    fd.set_gsi_routing(&table).map_err(RoutingError::Ioctl)
}
