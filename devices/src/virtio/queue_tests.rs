//! The queue driven as a driver would, and as a broken or hostile one
//! would: loops, chains longer than the queue, buffers outside RAM,
//! indices that run ahead.

use std::sync::{Arc, Mutex};

use super::*;

/// Guest RAM as a vector: addresses `[0, len)`.
#[derive(Debug)]
pub(crate) struct VecMemory(pub Mutex<Vec<u8>>);

impl VecMemory {
    pub fn new(len: usize) -> VecMemory {
        VecMemory(Mutex::new(vec![0; len]))
    }

    fn range(&self, gpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError {
            gpa,
            len: len as u64,
        };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.0.lock().unwrap().len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl GuestMemory for VecMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.0.lock().unwrap()[r]);
        Ok(())
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, buf.len())?;
        self.0.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        usize::try_from(len)
            .ok()
            .is_some_and(|l| self.range(gpa, l).is_ok())
    }
    fn load_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn store_u16(&self, gpa: u64, value: u16) -> Result<(), MemoryError> {
        self.write(gpa, &value.to_le_bytes())
    }
}

/// Shared with a worker thread in the worker's tests.
impl<T: GuestMemory + ?Sized> GuestMemory for Arc<T> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(gpa, buf)
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        (**self).write(gpa, buf)
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        (**self).contains(gpa, len)
    }
    fn load_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        (**self).load_u16(gpa)
    }
    fn store_u16(&self, gpa: u64, value: u16) -> Result<(), MemoryError> {
        (**self).store_u16(gpa, value)
    }
}

pub(crate) const RAM: usize = 4 << 20;
pub(crate) const DESC: u64 = 0x1000;
pub(crate) const AVAIL: u64 = 0x2000;
pub(crate) const USED: u64 = 0x3000;
/// Where tests put buffers.
pub(crate) const DATA: u64 = 0x10000;

/// The driver side: writes descriptors and the available ring, reads the
/// used ring.
#[derive(Debug)]
pub(crate) struct Driver {
    pub mem: Arc<VecMemory>,
    pub size: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Driver {
    pub fn new(size: u16) -> Driver {
        Driver {
            mem: Arc::new(VecMemory::new(RAM)),
            size,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn config(&self, index: u16) -> QueueConfig {
        QueueConfig {
            index,
            size: self.size,
            vector: 0,
            desc: DESC,
            driver: AVAIL,
            device: USED,
        }
    }

    pub fn queue(&self) -> SplitQueue {
        SplitQueue::new(self.config(0), &self.mem).unwrap()
    }

    pub fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + 16 * u64::from(i), &d).unwrap();
    }

    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(DESC, i, addr, len, flags, next);
    }

    /// Makes `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem.store_u16(AVAIL + 4 + 2 * slot, head).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.store_u16(AVAIL + 2, self.avail_idx).unwrap();
    }

    /// Chains `bufs` (address, length, writable) from descriptor `first`
    /// on and makes the chain available.
    pub fn chain(&mut self, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == bufs.len();
            let flags = if w { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.desc(i, addr, len, flags, i + 1);
        }
        self.publish(first);
    }

    /// The used elements the device added since the last call.
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.mem.load_u16(USED + 2).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let mut e = [0u8; 8];
            self.mem.read(USED + 4 + 8 * slot, &mut e).unwrap();
            out.push((
                u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.store_u16(AVAIL, flags).unwrap();
    }

    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem.store_u16(AVAIL + 2, idx).unwrap();
    }
}

fn bad(p: Result<Option<Chain>, QueueError>) -> ChainError {
    match p {
        Err(QueueError::Chain { err, .. }) => err,
        other => panic!("expected a bad chain, got {other:?}"),
    }
}

#[test]
fn chains_come_out_in_order_and_go_back_used() {
    let mut d = Driver::new(8);
    let mut q = d.queue();
    assert_eq!(q.pop(&d.mem).unwrap(), None);
    d.chain(0, &[(DATA, 16, false), (DATA + 16, 512, true)]);
    d.chain(2, &[(DATA + 0x1000, 4, true)]);
    let Some(c) = q.pop(&d.mem).unwrap() else {
        panic!()
    };
    assert_eq!(c.head, 0);
    assert_eq!((c.readable_len(), c.writable_len()), (16, 512));
    let Some(c2) = q.pop(&d.mem).unwrap() else {
        panic!()
    };
    assert_eq!(c2.descriptors.len(), 1);
    assert_eq!(q.pop(&d.mem).unwrap(), None);
    q.add_used(&d.mem, 2, 4).unwrap();
    q.add_used(&d.mem, 0, 512).unwrap();
    assert_eq!(d.used(), [(2, 4), (0, 512)]);
    // Used twice: refused, the ring untouched.
    assert!(matches!(
        q.add_used(&d.mem, 0, 1),
        Err(QueueError::NotInFlight { head: 0, .. })
    ));
    assert_eq!(d.used(), []);
}

#[test]
fn reads_and_writes_span_descriptors() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.mem.write(DATA, b"abc").unwrap();
    d.mem.write(DATA + 0x100, b"defg").unwrap();
    d.chain(
        0,
        &[
            (DATA, 3, false),
            (DATA + 0x100, 4, false),
            (DATA + 0x200, 2, true),
            (DATA + 0x300, 5, true),
        ],
    );
    let Some(c) = q.pop(&d.mem).unwrap() else {
        panic!()
    };
    let mut buf = [0u8; 5];
    c.read_at(&d.mem, 1, &mut buf).unwrap();
    assert_eq!(&buf, b"bcdef");
    c.write_at(&d.mem, 1, b"XYZ").unwrap();
    let mut out = [0u8; 2];
    d.mem.read(DATA + 0x300, &mut out).unwrap();
    assert_eq!(&out, b"YZ");
    d.mem.read(DATA + 0x201, &mut out[..1]).unwrap();
    assert_eq!(out[0], b'X');
}

#[test]
fn a_looping_chain_is_bad_not_endless() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.desc(0, DATA, 8, DESC_F_NEXT, 1);
    d.desc(1, DATA, 8, DESC_F_NEXT, 0);
    d.publish(0);
    assert_eq!(bad(q.pop(&d.mem)), ChainError::TooLong(4));
    // The head can still be completed.
    q.add_used(&d.mem, 0, 0).unwrap();
    assert_eq!(d.used(), [(0, 0)]);
}

#[test]
fn a_chain_longer_than_the_queue_is_bad() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    // Four descriptors chained in a table of four, the last pointing back.
    for i in 0..4 {
        d.desc(i, DATA, 1, DESC_F_NEXT, (i + 1) % 4);
    }
    d.publish(0);
    assert_eq!(bad(q.pop(&d.mem)), ChainError::TooLong(4));
}

#[test]
fn next_outside_the_table_is_bad() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.desc(0, DATA, 8, DESC_F_NEXT, 9);
    d.publish(0);
    assert_eq!(bad(q.pop(&d.mem)), ChainError::Next { next: 9, size: 4 });
}

#[test]
fn buffers_outside_ram_are_bad() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.chain(0, &[(RAM as u64 - 4, 8, true)]);
    d.chain(1, &[(u64::MAX - 2, 8, false)]);
    assert_eq!(
        bad(q.pop(&d.mem)),
        ChainError::Buffer {
            addr: RAM as u64 - 4,
            len: 8
        }
    );
    assert!(matches!(bad(q.pop(&d.mem)), ChainError::Buffer { .. }));
}

#[test]
fn readable_after_writable_is_bad() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.chain(0, &[(DATA, 8, true), (DATA + 8, 8, false)]);
    assert_eq!(bad(q.pop(&d.mem)), ChainError::ReadAfterWrite);
}

#[test]
fn indirect_tables() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    let table = DATA + 0x8000;
    d.desc_at(table, 0, DATA, 16, DESC_F_NEXT, 1);
    d.desc_at(table, 1, DATA + 16, 4, DESC_F_WRITE, 0);
    d.desc(0, table, 32, DESC_F_INDIRECT, 0);
    d.publish(0);
    let Some(c) = q.pop(&d.mem).unwrap() else {
        panic!()
    };
    assert_eq!((c.readable_len(), c.writable_len()), (16, 4));

    // A loop inside the table, an indirect inside an indirect, a table
    // that is not a whole number of descriptors, or outside RAM, or with
    // more entries than the queue, or with NEXT on the indirect entry.
    d.desc_at(table, 1, DATA, 4, DESC_F_NEXT, 0);
    d.desc(1, table, 32, DESC_F_INDIRECT, 0);
    d.publish(1);
    assert_eq!(bad(q.pop(&d.mem)), ChainError::TooLong(4));
    d.desc_at(table, 1, table, 32, DESC_F_INDIRECT, 0);
    d.publish(1);
    // Head 1 is in flight: complete it first.
    q.add_used(&d.mem, 1, 0).unwrap();
    assert_eq!(bad(q.pop(&d.mem)), ChainError::NestedIndirect);
    q.add_used(&d.mem, 1, 0).unwrap();
    for (len, addr, flags) in [
        (20, table, DESC_F_INDIRECT),
        (32, RAM as u64 - 16, DESC_F_INDIRECT),
        (16 * 5, table, DESC_F_INDIRECT),
        (0, table, DESC_F_INDIRECT),
    ] {
        d.desc(1, addr, len, flags, 0);
        d.publish(1);
        assert_eq!(bad(q.pop(&d.mem)), ChainError::IndirectTable { addr, len });
        q.add_used(&d.mem, 1, 0).unwrap();
    }
    d.desc(1, table, 32, DESC_F_INDIRECT | DESC_F_NEXT, 2);
    d.publish(1);
    assert_eq!(bad(q.pop(&d.mem)), ChainError::IndirectNext);
}

#[test]
fn an_index_running_ahead_or_a_bad_head_breaks_the_queue() {
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.set_avail_idx(5);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::AvailIndex { ahead: 5, .. })
    ));
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.publish(7);
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::Head { head: 7, .. })
    ));
    // A head made available twice before it was used.
    let mut d = Driver::new(4);
    let mut q = d.queue();
    d.chain(0, &[(DATA, 1, true)]);
    d.publish(0);
    assert!(q.pop(&d.mem).unwrap().is_some());
    assert!(matches!(
        q.pop(&d.mem),
        Err(QueueError::Head { head: 0, .. })
    ));
}

#[test]
fn rings_outside_ram_or_misaligned_are_refused() {
    let d = Driver::new(4);
    let mut cfg = d.config(0);
    cfg.device = RAM as u64 - 8;
    assert!(matches!(
        SplitQueue::new(cfg, &d.mem),
        Err(QueueError::Ring {
            what: "device ring",
            ..
        })
    ));
    let mut cfg = d.config(0);
    cfg.desc = DESC + 8;
    assert!(matches!(
        SplitQueue::new(cfg, &d.mem),
        Err(QueueError::Ring {
            what: "descriptor table",
            ..
        })
    ));
}

#[test]
fn indices_wrap_around() {
    let mut d = Driver::new(2);
    let mut q = d.queue();
    for n in 0..70_000u32 {
        d.chain(0, &[(DATA, 4, true)]);
        let Some(c) = q.pop(&d.mem).unwrap() else {
            panic!("at {n}")
        };
        q.add_used(&d.mem, c.head, n).unwrap();
        assert_eq!(d.used(), [(0, n)]);
    }
}

#[test]
fn interrupt_suppression_follows_the_driver_flag() {
    let d = Driver::new(2);
    let q = d.queue();
    assert!(q.wants_interrupt(&d.mem));
    d.set_avail_flags(AVAIL_F_NO_INTERRUPT);
    assert!(!q.wants_interrupt(&d.mem));
}
