//! The HVF backend behind the boundary (macOS on Apple silicon): the crate
//! `hv-hvf` (Hypervisor.framework through `applevisor`), with the method
//! names of the KVM backend (`kvm_aarch64.rs`) where the two differ, so
//! the aarch64 machine and the shared vCPU loop read the same on both.
//! What KVM does with file descriptors the kernel watches, HVF does in
//! `hv-hvf`: an irqfd is the read end of a notifier's pipe that its relay
//! thread watches (`register_irq_line`) and raises through hv-hvf's copy
//! of KVM's routing table (`set_gsi_routing`: an SPI, or an MSI through
//! the GIC's MBI frame), an ioeventfd is matched in the vCPU thread
//! (`register_ioevent`), and a kick is `hv_vcpus_exit` ([`kick_all`]), not
//! a signal. A notifier is named by its descriptor number, as KVM's
//! deassign calls name the eventfd. Type-checked only: never run (README,
//! "macOS and the BSDs").

use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};

use devices::notifier::Notifier;

use super::IoEventAddr;

pub use hv_hvf::{Error, Vcpu};

/// The process's HVF VM.
#[derive(Debug)]
pub struct Vm(hv_hvf::Vm);

impl Deref for Vm {
    type Target = hv_hvf::Vm;

    fn deref(&self) -> &hv_hvf::Vm {
        &self.0
    }
}

/// The VM [`kick_all`] reaches (HVF has one VM a process).
static KICKED: Mutex<Option<Weak<Vm>>> = Mutex::new(None);

impl Vm {
    /// Creates the VM (Hypervisor.framework's `hv_vm_create`).
    pub fn new() -> Result<Vm, Error> {
        hv_hvf::Vm::new().map(Vm)
    }

    /// Makes `vm` the one [`kick_all`] kicks (the machine, once built).
    pub fn watch_kicks(vm: &Arc<Vm>) {
        *KICKED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(vm));
    }

    /// Connects `line` to `gsi` (GSI n is SPI n until a routing table
    /// says otherwise), as KVM's irqfd does: its read end, duplicated for
    /// `hv-hvf`'s relay thread, which raises the GSI on each signal.
    pub fn register_irqfd(&self, line: &Notifier, gsi: u32) -> Result<(), Error> {
        let fd = line.wait_fd().try_clone_to_owned().map_err(Error::Relay)?;
        self.0
            .register_irq_line(fd, gsi, line.wait_fd().as_raw_fd())
    }

    /// Undoes [`Vm::register_irqfd`].
    pub fn unregister_irqfd(&self, line: &Notifier, gsi: u32) -> Result<(), Error> {
        self.0.unregister_irq_line(gsi, line.wait_fd().as_raw_fd())
    }

    /// Makes guest writes to MMIO `addr` (only of `datamatch`, when
    /// given) signal `evt` in the vCPU thread instead of exiting.
    pub fn register_ioeventfd(
        &self,
        evt: &Notifier,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        let fd = evt.signal_fd().try_clone_to_owned().map_err(Error::Relay)?;
        self.0
            .register_ioevent(fd, evt.signal_fd().as_raw_fd(), addr, datamatch)
    }

    /// Undoes [`Vm::register_ioeventfd`] (same arguments).
    pub fn unregister_ioeventfd(
        &self,
        evt: &Notifier,
        addr: IoEventAddr,
        datamatch: Option<u32>,
    ) -> Result<(), Error> {
        self.0
            .unregister_ioevent(evt.signal_fd().as_raw_fd(), addr, datamatch)
    }

    /// Deletes memory slot `slot` (a PCI memory BAR the guest moved or
    /// turned off): KVM's rule, a slot set to size 0.
    pub fn remove_memory_slot(&self, slot: u32) -> Result<(), Error> {
        // SAFETY: a zero-sized slot maps no host memory; it deletes the slot.
        unsafe {
            self.0
                .set_memory_slot(slot, 0, std::ptr::null_mut(), 0, false)
        }
    }
}

/// Makes every vCPU of the VM leave `hv_vcpu_run` (and any wait): the
/// boundary's kick (KVM's is a signal plus `immediate_exit`, signals.rs).
/// Not async-signal-safe: called from threads, never from a handler.
pub fn kick_all() {
    let vm = KICKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Weak::upgrade);
    if let Some(vm) = vm {
        vm.0.kick_all();
    }
}
