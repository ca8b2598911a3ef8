//! virtio-blk (spec 5.2) on a raw image: a regular file or a block device.
//!
//! Requests: IN (read), OUT (write), FLUSH (fdatasync), GET_ID (the
//! serial), WRITE_ZEROES (zeros written, one segment of at most 32 MiB). Each is a header (type, reserved, sector) in the readable
//! part, data, and a status byte, the last writable one. A request that
//! does not fit that shape, reaches past the end of the disk, writes a
//! read-only disk or moves a partial sector is answered IOERR; an unknown
//! type UNSUPP. A chain the queue finds bad (a loop, outside RAM) breaks
//! the device (NEEDS_RESET), as in QEMU.
//!
//! Data goes through a bounce buffer aligned for O_DIRECT (`cache=none`).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::device::{Queues, VirtioDevice, memory_broken};
use super::queue::{Chain, GuestMemory, QueueError};

/// Feature bits (spec 5.2.3).
pub mod features {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types (spec 5.2.6).
pub mod request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Largest WRITE_ZEROES range (sectors) and segments per request we
/// advertise: 32 MiB, one segment.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 65536;
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Bytes of one WRITE_ZEROES segment (sector, num_sectors, flags).
const SEGMENT: u64 = 16;

/// Status byte values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const SECTOR: u64 = 512;
/// Bytes of `struct virtio_blk_config` we present (up to and including
/// write_zeroes_may_unmap and its padding, what Linux reads).
pub const CONFIG_LEN: usize = 60;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
const HEADER: u64 = 16;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest data transfer of one request: past it, IOERR (Linux sends at
/// most max_sectors_kb, 1280 KiB by default).
pub const MAX_REQUEST: u64 = 32 << 20;
/// Bounce buffer: one piece of a request at a time.
const CHUNK: usize = 1 << 20;
/// O_DIRECT's strictest buffer alignment.
const ALIGN: usize = 4096;

/// What the device did, for `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub get_ids: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Requests answered IOERR or UNSUPP, bad chains included.
    pub errors: u64,
}

/// The image and how it is used.
#[derive(Debug)]
pub struct BlockConfig {
    pub file: File,
    pub readonly: bool,
    /// GET_ID's answer (at most 20 bytes; zero-padded).
    pub serial: Vec<u8>,
}

/// A virtio block device.
pub struct Block {
    file: File,
    /// In bytes, a whole number of sectors (a trailing partial sector is
    /// not visible, as in QEMU).
    capacity: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    bounce: Vec<u8>,
    stats: BlockStats,
    /// Failed flushes, one line per guest request otherwise.
    warnings: crate::ratelimit::RateLimit,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity)
            .field("readonly", &self.readonly)
            .field("stats", &self.stats)
            .finish()
    }
}

/// How a request ended: the status and the bytes written to the chain.
struct Done {
    status: u8,
    written: u32,
}

impl Done {
    fn status(status: u8) -> Done {
        Done { status, written: 0 }
    }
}

impl Block {
    /// A device on `cfg.file`, whose size is its capacity.
    pub fn new(cfg: BlockConfig) -> std::io::Result<Block> {
        use std::io::{Seek, SeekFrom};
        let mut file = cfg.file;
        // A block device's metadata says 0 bytes: seek to its end.
        let size = file.seek(SeekFrom::End(0))?;
        let mut id = [0u8; ID_LEN];
        let n = cfg.serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&cfg.serial[..n]);
        Ok(Block {
            file,
            capacity: size / SECTOR * SECTOR,
            readonly: cfg.readonly,
            id,
            bounce: vec![0; CHUNK + ALIGN],
            stats: BlockStats::default(),
            warnings: Default::default(),
        })
    }

    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The data range `[offset, offset + len)` of the disk, if inside it
    /// and whole sectors.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len)?;
        (len.is_multiple_of(SECTOR) && end <= self.capacity && len <= MAX_REQUEST).then_some(offset)
    }

    /// Moves `len` data bytes between the chain and the disk at `offset`
    /// (`to_disk`: a write), a bounce-buffer piece at a time.
    fn transfer(
        &mut self,
        chain: &Chain,
        mem: &dyn GuestMemory,
        q: u16,
        offset: u64,
        len: u64,
        to_disk: bool,
    ) -> Result<Done, QueueError> {
        let Block { file, bounce, .. } = self;
        // The aligned part of the bounce buffer.
        let start = bounce.as_ptr().align_offset(ALIGN).min(ALIGN);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let buf = &mut bounce[start..start + n];
            let at = offset + done;
            let r = if to_disk {
                chain
                    .read_at(mem, HEADER + done, buf)
                    .map_err(|e| memory_broken(q, e))?;
                file.write_all_at(buf, at)
            } else {
                file.read_exact_at(buf, at)
            };
            if let Err(e) = r {
                let what = if to_disk { "write" } else { "read" };
                log::debug!("virtio-blk: {what} of {n} bytes at {at}: {e}");
                return Ok(Done::status(S_IOERR));
            }
            if !to_disk {
                chain
                    .write_at(mem, done, buf)
                    .map_err(|e| memory_broken(q, e))?;
            }
            done += n as u64;
        }
        if to_disk {
            self.stats.writes += 1;
            self.stats.write_bytes += len;
            Ok(Done::status(S_OK))
        } else {
            self.stats.reads += 1;
            self.stats.read_bytes += len;
            Ok(Done {
                status: S_OK,
                written: len as u32,
            })
        }
    }

    /// WRITE_ZEROES: each segment's sectors become zeros (written, never
    /// unmapped: write_zeroes_may_unmap is 0, so the UNMAP flag is a hint
    /// we may ignore).
    fn write_zeroes(
        &mut self,
        chain: &Chain,
        mem: &dyn GuestMemory,
        q: u16,
        len: u64,
    ) -> Result<Done, QueueError> {
        if len == 0
            || !len.is_multiple_of(SEGMENT)
            || len / SEGMENT > u64::from(MAX_WRITE_ZEROES_SEG)
        {
            return Ok(Done::status(S_IOERR));
        }
        let mut ranges = Vec::new();
        for i in 0..len / SEGMENT {
            let mut seg = [0u8; SEGMENT as usize];
            chain
                .read_at(mem, HEADER + i * SEGMENT, &mut seg)
                .map_err(|e| memory_broken(q, e))?;
            let mut s8 = [0u8; 8];
            s8.copy_from_slice(&seg[..8]);
            let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            let bytes = u64::from(sectors) * SECTOR;
            // Only the UNMAP flag (bit 0) is defined.
            match self.range(u64::from_le_bytes(s8), bytes) {
                Some(offset) if flags & !1 == 0 && sectors <= MAX_WRITE_ZEROES_SECTORS => {
                    ranges.push((offset, bytes));
                }
                _ => return Ok(Done::status(S_IOERR)),
            }
        }
        let Block { file, bounce, .. } = self;
        let start = bounce.as_ptr().align_offset(ALIGN).min(ALIGN);
        bounce[start..start + CHUNK].fill(0);
        for (offset, bytes) in ranges {
            let mut done = 0;
            while done < bytes {
                let n = (bytes - done).min(CHUNK as u64) as usize;
                if let Err(e) = file.write_all_at(&bounce[start..start + n], offset + done) {
                    log::debug!(
                        "virtio-blk: write-zeroes of {n} bytes at {}: {e}",
                        offset + done
                    );
                    return Ok(Done::status(S_IOERR));
                }
                done += n as u64;
            }
            self.stats.write_bytes += bytes;
        }
        self.stats.writes += 1;
        Ok(Done::status(S_OK))
    }

    /// Serves one well-formed chain: its status goes to the last writable
    /// byte, which the caller checked exists.
    fn request(
        &mut self,
        chain: &Chain,
        mem: &dyn GuestMemory,
        q: u16,
    ) -> Result<Done, QueueError> {
        if chain.readable_len() < HEADER {
            return Ok(Done::status(S_IOERR));
        }
        let mut h = [0u8; HEADER as usize];
        chain
            .read_at(mem, 0, &mut h)
            .map_err(|e| memory_broken(q, e))?;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&h[8..]);
        let sector = u64::from_le_bytes(s);
        // The data: the writable bytes before the status, or the readable
        // ones after the header.
        let data_in = chain.writable_len() - 1;
        let data_out = chain.readable_len() - HEADER;
        match kind {
            request::IN => match self.range(sector, data_in) {
                Some(offset) => self.transfer(chain, mem, q, offset, data_in, false),
                None => Ok(Done::status(S_IOERR)),
            },
            request::OUT if self.readonly => Ok(Done::status(S_IOERR)),
            request::OUT => match self.range(sector, data_out) {
                Some(offset) => self.transfer(chain, mem, q, offset, data_out, true),
                None => Ok(Done::status(S_IOERR)),
            },
            request::FLUSH => {
                self.stats.flushes += 1;
                match self.file.sync_data() {
                    Ok(()) => Ok(Done::status(S_OK)),
                    Err(e) => {
                        crate::warn_limited!(self.warnings, "virtio-blk: flush failed: {e}");
                        Ok(Done::status(S_IOERR))
                    }
                }
            }
            request::WRITE_ZEROES if self.readonly => Ok(Done::status(S_IOERR)),
            request::WRITE_ZEROES => self.write_zeroes(chain, mem, q, data_out),
            request::GET_ID => {
                self.stats.get_ids += 1;
                let n = (data_in as usize).min(ID_LEN);
                chain
                    .write_at(mem, 0, &self.id[..n])
                    .map_err(|e| memory_broken(q, e))?;
                Ok(Done {
                    status: S_OK,
                    written: n as u32,
                })
            }
            _ => Ok(Done::status(S_UNSUPP)),
        }
    }

    /// Completes a chain: the status byte (if the chain has somewhere to
    /// put it) and the used element.
    fn complete(
        &mut self,
        queues: &mut Queues,
        q: u16,
        chain: &Chain,
        done: Done,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        if done.status != S_OK {
            self.stats.errors += 1;
        }
        let mut written = 0;
        let room = chain.writable_len();
        if room > 0 {
            chain
                .write_at(mem, room - 1, &[done.status])
                .map_err(|e| memory_broken(q, e))?;
            written = done.written + 1;
        }
        queues.add_used(q, chain.head, written, mem)
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        super::TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.readonly { features::RO } else { 0 };
        features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH
            | features::WRITE_ZEROES
            | super::features::RING_INDIRECT_DESC
            | ro
    }

    fn queue_count(&self) -> u16 {
        1
    }

    fn max_queue_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&(self.capacity / SECTOR).to_le_bytes());
        // seg_max: the header and the status take a descriptor each.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c[48..52].copy_from_slice(&MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_WRITE_ZEROES_SEG.to_le_bytes());
        // write_zeroes_may_unmap (56): 0, zeros are written.
        c
    }

    fn kick(
        &mut self,
        q: u16,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        while let Some(chain) = queues.pop(q, mem)? {
            let done = if chain.writable_len() == 0 {
                // Nowhere for a status: completed empty.
                Done::status(S_IOERR)
            } else {
                self.request(&chain, mem, q)?
            };
            self.complete(queues, q, &chain, done, mem)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "blk_tests.rs"]
mod tests;
