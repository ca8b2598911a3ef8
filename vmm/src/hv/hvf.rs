//! The HVF backend behind the boundary (macOS on Apple silicon): the crate
//! `hv-hvf` (Hypervisor.framework through `applevisor`), with the method
//! names of the KVM backend (`kvm_aarch64.rs`) where the two differ, so
//! the aarch64 machine and the shared vCPU loop read the same on both.
//! What KVM does with file descriptors the kernel watches, HVF does in
//! `hv-hvf`: an interrupt line is the read end of a pipe that its relay
//! thread watches (`register_irq_line`), an ioeventfd is matched in the
//! vCPU thread (`register_ioevent`), and a kick is `hv_vcpus_exit`
//! ([`kick_all`]), not a signal. Type-checked only: never run (README,
//! "macOS and the BSDs").

use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};

use devices::notifier::Notifier;

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

    /// Connects an interrupt line to SPI `spi`, as KVM's irqfd does: the
    /// read end of a device's notifier (a pipe here), duplicated for
    /// `hv-hvf`'s relay thread, which raises the SPI on each write.
    pub fn register_irqfd(&self, line: &Notifier, spi: u32) -> Result<(), Error> {
        let fd = line.wait_fd().try_clone_to_owned().map_err(Error::Relay)?;
        self.0.register_irq_line(fd, spi)
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
