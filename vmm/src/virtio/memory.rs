//! Guest RAM as the built-in virtio devices reach it: vm-memory's volatile
//! copies and atomic accesses over the same mapping KVM uses.

use std::sync::atomic::Ordering;

use devices::virtio::queue::{GuestMemory, MemoryError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A view of guest RAM for device workers. It holds the regions, not the
/// backend: the machine stops every worker (dropping its devices) before
/// it unmaps RAM (`Machine::finish`).
#[derive(Debug, Clone)]
pub struct Ram(pub GuestMemoryMmap);

fn err(gpa: u64, len: usize) -> MemoryError {
    MemoryError {
        gpa,
        len: len as u64,
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| err(gpa, buf.len()))
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.0
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| err(gpa, buf.len()))
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| {
            gpa.checked_add(len).is_some()
                && vm_memory::GuestMemoryBackend::check_range(&self.0, GuestAddress(gpa), l)
        })
    }

    fn load_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        self.0
            .load(GuestAddress(gpa), Ordering::Acquire)
            .map_err(|_| err(gpa, 2))
    }

    fn store_u16(&self, gpa: u64, value: u16) -> Result<(), MemoryError> {
        self.0
            .store(value, GuestAddress(gpa), Ordering::Release)
            .map_err(|_| err(gpa, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_the_hole_or_past_the_top_are_not_ram() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x20000), 0x10000),
        ])
        .unwrap();
        let ram = Ram(mem);
        assert!(ram.contains(0, 0x10000));
        assert!(ram.contains(0x20000, 0x10000));
        assert!(!ram.contains(0xff00, 0x200), "spans the hole");
        assert!(!ram.contains(0x2ff00, 0x200), "past the top");
        assert!(!ram.contains(u64::MAX - 1, 4), "wraps");
        ram.write(0x20010, b"abcd").unwrap();
        let mut b = [0u8; 4];
        ram.read(0x20010, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        ram.store_u16(0x2, 0xbeef).unwrap();
        assert_eq!(ram.load_u16(0x2), Ok(0xbeef));
        assert_eq!(
            ram.read(0xfffe, &mut b),
            Err(MemoryError {
                gpa: 0xfffe,
                len: 4
            })
        );
    }
}
