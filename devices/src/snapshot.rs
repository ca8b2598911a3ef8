//! Saving and restoring a device model's guest-visible state.
//!
//! A device writes its state as bytes in its own small fixed layout (no
//! serialization framework here); the VMM stores the bytes in the
//! snapshot under the device's name, and the snapshot format's version
//! covers every layout. Devices with no state of their own (ACPI sleep
//! control, debug-exit) have nothing to save; PCI functions' config space
//! is saved and replayed by the VMM through the root's config path.

/// What a restore found wrong with saved bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{device}: saved state ({len} bytes) is not valid: {why}")]
pub struct StateError {
    pub device: &'static str,
    pub len: usize,
    pub why: &'static str,
}

/// A device model whose state a snapshot carries.
pub trait Snapshot {
    /// The device's state, in its own layout.
    fn save_state(&self) -> Vec<u8>;
    /// Puts back what [`Snapshot::save_state`] returned (the device was
    /// just created, no vCPU runs).
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError>;
}
