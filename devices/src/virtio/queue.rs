//! A split virtqueue (virtio spec 2.7) as a device sees it: descriptor
//! chains popped from the available ring, their heads put in the used ring.
//!
//! Everything the driver wrote is checked before use: the available index
//! may run at most a queue size ahead, a head and every `next` must be in
//! the table, a chain (indirect tables included) holds at most as many
//! descriptors as the queue has (so a loop ends there), an indirect table
//! is a whole number of descriptors in RAM and holds no indirect entry,
//! readable descriptors come before writable ones, and every buffer lies in
//! guest RAM. A chain or ring that breaks these rules is a [`QueueError`],
//! after which the device needs a reset (QEMU's `virtio_error`): the
//! driver is broken, and nothing it put in the rings can be trusted. A
//! well-formed request the device cannot serve (past the end of a disk,
//! say) is the device's to answer with an error status.
//!
//! Guest memory is reached through [`GuestMemory`], which the VMM
//! implements over its mapping (and tests over a vector).
//!
//! Our own rather than rust-vmm's `virtio-queue`: it would bring vm-memory
//! into this crate for ~300 lines of ring walking, and its chains borrow
//! the memory, which does not fit a worker that owns its queues.

use std::sync::atomic::{Ordering, fence};

use super::QueueConfig;

/// Errors reaching guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes at guest address {gpa:#x} are not in guest RAM")]
pub struct MemoryError {
    pub gpa: u64,
    pub len: u64,
}

/// Guest physical memory as a device reaches it. Implementations are
/// shared by the vCPUs (which write the rings concurrently), so the ring
/// indices go through [`GuestMemory::load_u16`] and
/// [`GuestMemory::store_u16`], which are single atomic accesses.
pub trait GuestMemory: Send + Sync {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError>;
    /// Whether `[gpa, gpa + len)` is all guest RAM.
    fn contains(&self, gpa: u64, len: u64) -> bool;
    fn load_u16(&self, gpa: u64) -> Result<u16, MemoryError>;
    fn store_u16(&self, gpa: u64, value: u16) -> Result<(), MemoryError>;
}

/// Descriptor flags (spec 2.7.5).
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver wants no used-buffer interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const DESC_SIZE: u64 = 16;

/// Errors that break the whole queue: the device needs a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue}: {what} at {gpa:#x} is not aligned or not in guest RAM")]
    Ring {
        queue: u16,
        what: &'static str,
        gpa: u64,
    },
    #[error("queue {queue}: available index {avail} is {ahead} entries ahead (queue size {size})")]
    AvailIndex {
        queue: u16,
        avail: u16,
        ahead: u16,
        size: u16,
    },
    #[error("queue {queue}: head {head} is outside the table (size {size})")]
    Head { queue: u16, head: u16, size: u16 },
    #[error("queue {queue}: {err}")]
    Memory { queue: u16, err: MemoryError },
    #[error("queue {queue}: used element for head {head} that is not in flight")]
    NotInFlight { queue: u16, head: u16 },
    #[error("queue {queue}: chain at head {head}: {err}")]
    Chain {
        queue: u16,
        head: u16,
        err: ChainError,
    },
}

/// Why one chain cannot be used; the device completes it with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("more than {0} descriptors (a loop?)")]
    TooLong(u16),
    #[error("next descriptor {next} is outside the table (size {size})")]
    Next { next: u16, size: u16 },
    #[error("indirect table of {len} bytes at {addr:#x}")]
    IndirectTable { addr: u64, len: u32 },
    #[error("an indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect descriptor with NEXT set")]
    IndirectNext,
    #[error("a readable descriptor after a writable one")]
    ReadAfterWrite,
    #[error("buffer of {len} bytes at {addr:#x} is not in guest RAM")]
    Buffer { addr: u64, len: u32 },
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (else device-readable).
    pub writable: bool,
}

/// A checked descriptor chain: readable buffers first, then writable ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descriptors: Vec<Descriptor>,
}

/// The device side of one split virtqueue. Plain state: the next entries
/// to read and write; the rings live in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitQueue {
    cfg: QueueConfig,
    next_avail: u16,
    next_used: u16,
    /// Heads popped and not yet used (a head used twice would corrupt the
    /// driver's free list).
    in_flight: Vec<bool>,
}

impl SplitQueue {
    /// A queue over the rings of `cfg`, checked to be aligned and in RAM.
    pub fn new(cfg: QueueConfig, mem: &dyn GuestMemory) -> Result<SplitQueue, QueueError> {
        let n = u64::from(cfg.size);
        // Spec 2.7: descriptor table 16-byte, driver ring 2-byte, device
        // ring 4-byte aligned; sizes with the event fields.
        for (what, gpa, align, len) in [
            ("descriptor table", cfg.desc, 16, DESC_SIZE * n),
            ("driver ring", cfg.driver, 2, 6 + 2 * n),
            ("device ring", cfg.device, 4, 6 + 8 * n),
        ] {
            if cfg.size == 0 || !gpa.is_multiple_of(align) || !mem.contains(gpa, len) {
                return Err(QueueError::Ring {
                    queue: cfg.index,
                    what,
                    gpa,
                });
            }
        }
        Ok(SplitQueue {
            cfg,
            next_avail: 0,
            next_used: 0,
            in_flight: vec![false; usize::from(cfg.size)],
        })
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub fn index(&self) -> u16 {
        self.cfg.index
    }

    fn mem_err(&self, err: MemoryError) -> QueueError {
        QueueError::Memory {
            queue: self.cfg.index,
            err,
        }
    }

    /// The next available chain, if the driver made one available.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, QueueError> {
        let size = self.cfg.size;
        let avail = mem
            .load_u16(self.cfg.driver + 2)
            .map_err(|e| self.mem_err(e))?;
        let ahead = avail.wrapping_sub(self.next_avail);
        if ahead == 0 {
            return Ok(None);
        }
        if ahead > size {
            return Err(QueueError::AvailIndex {
                queue: self.cfg.index,
                avail,
                ahead,
                size,
            });
        }
        // The ring entry and the descriptors were written before the index.
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % size);
        let head = mem
            .load_u16(self.cfg.driver + 4 + 2 * slot)
            .map_err(|e| self.mem_err(e))?;
        if head >= size || self.in_flight[usize::from(head)] {
            return Err(QueueError::Head {
                queue: self.cfg.index,
                head,
                size,
            });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight[usize::from(head)] = true;
        match self.walk(mem, head)? {
            Ok(descriptors) => Ok(Some(Chain { head, descriptors })),
            Err(err) => Err(QueueError::Chain {
                queue: self.cfg.index,
                head,
                err,
            }),
        }
    }

    fn read_desc(
        &self,
        mem: &dyn GuestMemory,
        table: u64,
        i: u16,
    ) -> Result<(u64, u32, u16, u16), MemoryError> {
        let mut d = [0u8; 16];
        mem.read(table + DESC_SIZE * u64::from(i), &mut d)?;
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[o..o + 8]);
            u64::from_le_bytes(b)
        };
        Ok((
            u64_at(0),
            u32::from_le_bytes([d[8], d[9], d[10], d[11]]),
            u16::from_le_bytes([d[12], d[13]]),
            u16::from_le_bytes([d[14], d[15]]),
        ))
    }

    /// The descriptors of the chain at `head`. The outer error is the
    /// ring's (memory the queue was checked to have went away); the inner
    /// one the chain's.
    #[allow(clippy::type_complexity)]
    fn walk(
        &self,
        mem: &dyn GuestMemory,
        head: u16,
    ) -> Result<Result<Vec<Descriptor>, ChainError>, QueueError> {
        let size = self.cfg.size;
        let mut out = Vec::new();
        let (mut table, mut table_size, mut i) = (self.cfg.desc, size, head);
        let mut indirect = false;
        let mut seen_write = false;
        loop {
            if out.len() >= usize::from(size) {
                return Ok(Err(ChainError::TooLong(size)));
            }
            let (addr, len, flags, next) = match self.read_desc(mem, table, i) {
                Ok(d) => d,
                // The indirect table was checked; the main one too.
                Err(e) => return Err(self.mem_err(e)),
            };
            if flags & DESC_F_INDIRECT != 0 {
                if indirect {
                    return Ok(Err(ChainError::NestedIndirect));
                }
                if flags & DESC_F_NEXT != 0 {
                    return Ok(Err(ChainError::IndirectNext));
                }
                let entries = u64::from(len) / DESC_SIZE;
                if len == 0
                    || !u64::from(len).is_multiple_of(DESC_SIZE)
                    || entries > u64::from(size)
                    || !mem.contains(addr, u64::from(len))
                {
                    return Ok(Err(ChainError::IndirectTable { addr, len }));
                }
                indirect = true;
                (table, table_size, i) = (addr, entries as u16, 0);
                continue;
            }
            let writable = flags & DESC_F_WRITE != 0;
            if seen_write && !writable {
                return Ok(Err(ChainError::ReadAfterWrite));
            }
            seen_write |= writable;
            if !mem.contains(addr, u64::from(len)) {
                return Ok(Err(ChainError::Buffer { addr, len }));
            }
            out.push(Descriptor {
                addr,
                len,
                writable,
            });
            if flags & DESC_F_NEXT == 0 {
                return Ok(Ok(out));
            }
            if next >= table_size {
                return Ok(Err(ChainError::Next {
                    next,
                    size: table_size,
                }));
            }
            i = next;
        }
    }

    /// Puts `head` in the used ring, `len` bytes written to it.
    pub fn add_used(
        &mut self,
        mem: &dyn GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        match self.in_flight.get_mut(usize::from(head)) {
            Some(f) if *f => *f = false,
            _ => {
                return Err(QueueError::NotInFlight {
                    queue: self.cfg.index,
                    head,
                });
            }
        }
        let slot = u64::from(self.next_used % self.cfg.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(self.cfg.device + 4 + 8 * slot, &elem)
            .map_err(|e| self.mem_err(e))?;
        self.next_used = self.next_used.wrapping_add(1);
        // The element before the index that publishes it.
        fence(Ordering::Release);
        mem.store_u16(self.cfg.device + 2, self.next_used)
            .map_err(|e| self.mem_err(e))
    }

    /// Whether the driver wants an interrupt for used buffers now (it may
    /// suppress them while it polls).
    pub fn wants_interrupt(&self, mem: &dyn GuestMemory) -> bool {
        // Our index store before reading its flag (spec 2.7.7.2).
        fence(Ordering::SeqCst);
        mem.load_u16(self.cfg.driver)
            .map_or(true, |f| f & AVAIL_F_NO_INTERRUPT == 0)
    }
}

impl Chain {
    /// Bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.descriptors
            .iter()
            .filter(|d| !d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.descriptors
            .iter()
            .filter(|d| d.writable)
            .map(|d| u64::from(d.len))
            .sum()
    }

    /// Guest ranges of the readable (or writable) bytes `[offset, offset + len)`.
    fn ranges(&self, writable: bool, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let (mut skip, mut left) = (offset, len);
        for d in self.descriptors.iter().filter(|d| d.writable == writable) {
            if left == 0 {
                break;
            }
            let dl = u64::from(d.len);
            if skip >= dl {
                skip -= dl;
                continue;
            }
            let n = (dl - skip).min(left);
            out.push((d.addr + skip, n));
            skip = 0;
            left -= n;
        }
        out
    }

    /// Fills `buf` from the readable bytes starting at `offset`; the chain
    /// must have them (check [`Chain::readable_len`]).
    pub fn read_at(
        &self,
        mem: &dyn GuestMemory,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), MemoryError> {
        let mut at = 0;
        for (gpa, n) in self.ranges(false, offset, buf.len() as u64) {
            let n = n as usize;
            mem.read(gpa, &mut buf[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    /// Writes `buf` to the writable bytes starting at `offset`; the chain
    /// must have room (check [`Chain::writable_len`]).
    pub fn write_at(
        &self,
        mem: &dyn GuestMemory,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), MemoryError> {
        let mut at = 0;
        for (gpa, n) in self.ranges(true, offset, buf.len() as u64) {
            let n = n as usize;
            mem.write(gpa, &buf[at..at + n])?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
pub(crate) mod tests;
