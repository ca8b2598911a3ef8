//! ioeventfd without KVM: guest MMIO writes that only signal a notifier
//! (a virtio queue's doorbell) are matched in the vCPU thread and signal
//! it there, without going out to the VMM's buses, as KVM's ioeventfd
//! does in the kernel. KVM's matching rules: with a data match the write
//! must be 4 bytes of exactly that value; without, any write to the
//! address matches.

use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};

#[derive(Debug)]
struct Entry {
    addr: u64,
    datamatch: Option<u32>,
    /// The caller's descriptor number for the notifier (what it names
    /// to remove it, as KVM's deassign names the eventfd).
    key: RawFd,
    notifier: OwnedFd,
}

/// The registered MMIO ioevents.
#[derive(Debug, Default)]
pub struct IoEvents {
    entries: Vec<Entry>,
}

impl IoEvents {
    /// Registers `notifier` (the write end of an eventfd or pipe, the
    /// caller's `key`) for writes to `addr`.
    pub fn add(&mut self, addr: u64, datamatch: Option<u32>, key: RawFd, notifier: OwnedFd) {
        self.entries.push(Entry {
            addr,
            datamatch,
            key,
            notifier,
        });
    }

    /// Undoes [`IoEvents::add`] (same address, data match and key);
    /// whether there was such a registration.
    pub fn remove(&mut self, addr: u64, datamatch: Option<u32>, key: RawFd) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.addr == addr && e.datamatch == datamatch && e.key == key));
        self.entries.len() != before
    }

    /// The notifier a write of `data` (little-endian) to `addr` signals.
    pub fn find(&self, addr: u64, data: &[u8]) -> Option<&OwnedFd> {
        let value = <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes);
        self.entries
            .iter()
            .find(|e| {
                e.addr == addr
                    && match e.datamatch {
                        None => true,
                        Some(v) => value == Some(v),
                    }
            })
            .map(|e| &e.notifier)
    }
}

/// Signals a notifier: an 8-byte 1, what an eventfd needs and a pipe
/// takes as well (its reader drains whatever is there).
pub fn signal(notifier: &OwnedFd) -> std::io::Result<()> {
    let mut f = std::fs::File::from(notifier.try_clone()?);
    match f.write_all(&1u64.to_ne_bytes()) {
        // A full pipe is already signalled.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_match_by_address_and_data_as_kvm_does() {
        let (mut r_any, w_any) = std::io::pipe().expect("pipe");
        let (_r_q1, w_q1) = std::io::pipe().expect("pipe");
        let mut ev = IoEvents::default();
        ev.add(0x1000_3000, Some(1), 5, w_q1.into());
        ev.add(0x1000_4000, None, 6, w_any.into());
        // Data match: 4 bytes of exactly that value.
        assert!(ev.find(0x1000_3000, &1u32.to_le_bytes()).is_some());
        assert!(ev.find(0x1000_3000, &2u32.to_le_bytes()).is_none());
        assert!(ev.find(0x1000_3000, &[1, 0]).is_none());
        assert!(ev.find(0x1000_3000, &1u64.to_le_bytes()).is_none());
        // No data match: any write to the address.
        let fd = ev.find(0x1000_4000, &[7]).expect("matched");
        assert!(ev.find(0x1000_4004, &[7]).is_none());
        // Signalling writes something the reader sees.
        signal(fd).expect("signal");
        let mut b = [0u8; 8];
        r_any.read_exact(&mut b).expect("read");
        assert_eq!(u64::from_ne_bytes(b), 1);
        // Removed by what registered it: writes then exit to the VMM.
        assert!(!ev.remove(0x1000_3000, Some(2), 5));
        assert!(!ev.remove(0x1000_3000, Some(1), 6));
        assert!(ev.remove(0x1000_3000, Some(1), 5));
        assert!(ev.find(0x1000_3000, &1u32.to_le_bytes()).is_none());
        assert!(ev.find(0x1000_4000, &[7]).is_some());
    }
}
