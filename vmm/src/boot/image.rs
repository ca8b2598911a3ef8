//! Kernel images shmvm parses itself (32-bit ELF, Multiboot): what the
//! first bytes say, and loading file ranges into guest RAM. Every size and
//! offset an image claims is checked against the file's real length and
//! against guest RAM before anything is read, so a bad image costs one
//! error line, never a large allocation or a write outside RAM.

use std::fs::File;
use std::io::{Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::read_up_to;

/// Bytes of the image start read to recognise it: the Multiboot header
/// must lie in the first 8 KiB.
pub const HEAD_LEN: usize = 8192;

/// The first bytes of a kernel image and its real length.
#[derive(Debug, Clone)]
pub struct Head {
    pub bytes: Vec<u8>,
    pub file_len: u64,
}

impl Head {
    pub fn read(f: &mut File) -> std::io::Result<Head> {
        let file_len = f.metadata()?.len();
        let mut bytes = vec![0u8; HEAD_LEN];
        f.seek(SeekFrom::Start(0))?;
        let n = read_up_to(f, &mut bytes)?;
        bytes.truncate(n);
        f.seek(SeekFrom::Start(0))?;
        Ok(Head { bytes, file_len })
    }

    pub fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// ELF class (1 = 32-bit, 2 = 64-bit) when the image is ELF.
    pub fn elf_class(&self) -> Option<u8> {
        (self.bytes.len() >= 5 && self.bytes[..4] == *b"\x7fELF").then(|| self.bytes[4])
    }

    pub fn is_bzimage(&self) -> bool {
        self.bytes.get(0x202..0x206) == Some(b"HdrS")
    }
}

/// One piece of the image to place in guest RAM: `file_size` bytes from
/// `offset`, then zeros up to `mem_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub file_size: u64,
    pub paddr: u64,
    pub mem_size: u64,
}

impl Segment {
    /// End of the segment in guest RAM (exclusive), if it does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.paddr.checked_add(self.mem_size)
    }

    /// Checks the segment against the file and against the usable RAM
    /// `[floor, ram_end)`; the error says which bound it breaks.
    pub fn check(&self, file_len: u64, floor: u64, ram_end: u64) -> Result<(), String> {
        let what = format!(
            "segment at {:#x} ({:#x} bytes, {:#x} from the file at {:#x})",
            self.paddr, self.mem_size, self.file_size, self.offset
        );
        if self.file_size > self.mem_size {
            return Err(format!("{what}: more file bytes than memory bytes"));
        }
        match self.offset.checked_add(self.file_size) {
            Some(e) if e <= file_len => {}
            _ => {
                return Err(format!(
                    "{what}: runs past the end of the {file_len}-byte file"
                ));
            }
        }
        if self.paddr < floor {
            return Err(format!(
                "{what}: below {floor:#x}, where shmvm keeps its boot data"
            ));
        }
        match self.end() {
            Some(e) if e <= ram_end => Ok(()),
            _ => Err(format!("{what}: ends beyond guest RAM at {ram_end:#x}")),
        }
    }
}

/// Bytes zeroed per step by [`ensure_zero`].
const ZERO_CHUNK: usize = 4096;

/// Makes `[addr, addr + len)` read as zeros without writing pages that
/// already are zero: fresh anonymous guest RAM reads as zeros without
/// being faulted in, so a large bss costs no host memory.
pub fn ensure_zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), String> {
    let mut buf = [0u8; ZERO_CHUNK];
    let zeros = [0u8; ZERO_CHUNK];
    let mut at = addr;
    let end = addr.checked_add(len).ok_or("zero fill overflows")?;
    while at < end {
        let n = usize::try_from(end - at).map_or(ZERO_CHUNK, |r| r.min(ZERO_CHUNK));
        mem.read_slice(&mut buf[..n], GuestAddress(at))
            .map_err(|e| format!("reading guest RAM at {at:#x}: {e}"))?;
        if buf[..n].iter().any(|b| *b != 0) {
            mem.write_slice(&zeros[..n], GuestAddress(at))
                .map_err(|e| format!("zeroing guest RAM at {at:#x}: {e}"))?;
        }
        at += n as u64;
    }
    Ok(())
}

/// Loads checked segments: file bytes, then zeros (the bss).
pub fn load_segments(
    mem: &GuestMemoryMmap,
    f: &mut File,
    segments: &[Segment],
) -> Result<(), String> {
    for s in segments {
        if s.file_size > 0 {
            f.seek(SeekFrom::Start(s.offset))
                .map_err(|e| format!("seeking to {:#x}: {e}", s.offset))?;
            let n = usize::try_from(s.file_size).map_err(|e| e.to_string())?;
            mem.read_exact_volatile_from(GuestAddress(s.paddr), f, n)
                .map_err(|e| format!("reading the segment at {:#x}: {e}", s.paddr))?;
        }
        ensure_zero(mem, s.paddr + s.file_size, s.mem_size - s.file_size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_bounds() {
        let s = Segment {
            offset: 0x100,
            file_size: 0x100,
            paddr: 0x10_0000,
            mem_size: 0x1000,
        };
        assert_eq!(s.check(0x200, 0x10_0000, 0x20_0000), Ok(()));
        assert!(
            s.check(0x1ff, 0x10_0000, 0x20_0000)
                .unwrap_err()
                .contains("past the end")
        );
        assert!(
            s.check(0x200, 0x10_0001, 0x20_0000)
                .unwrap_err()
                .contains("below")
        );
        assert!(
            s.check(0x200, 0x10_0000, 0x10_0fff)
                .unwrap_err()
                .contains("beyond")
        );
        let big = Segment {
            file_size: 0x2000,
            ..s
        };
        assert!(
            big.check(u64::MAX, 0, u64::MAX)
                .unwrap_err()
                .contains("more file")
        );
        let wrap = Segment {
            offset: u64::MAX,
            ..s
        };
        assert!(wrap.check(u64::MAX, 0, u64::MAX).is_err());
        let wrap = Segment {
            paddr: u64::MAX - 1,
            ..s
        };
        assert!(wrap.check(0x200, 0, u64::MAX).is_err());
    }

    #[test]
    fn ensure_zero_clears_only_dirty_chunks() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xaa; 10], GuestAddress(0x2ffc)).unwrap();
        ensure_zero(&mem, 0x2000, 0x3000).unwrap();
        let mut b = [0xffu8; 0x3000];
        mem.read_slice(&mut b, GuestAddress(0x2000)).unwrap();
        assert!(b.iter().all(|x| *x == 0));
        assert!(ensure_zero(&mem, 0xf000, 0x2000).is_err());
    }
}
