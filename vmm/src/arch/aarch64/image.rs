//! The arm64 Linux `Image` header and where the kernel, initrd and device
//! tree go in RAM (Linux `Documentation/arch/arm64/booting.rst`): pure
//! functions, so every rule is unit-tested on any host.

use super::layout::{FDT_MAX, INITRD_ALIGN, KERNEL_ALIGN, RAM_BASE};

/// "ARM\x64", little-endian, at byte 56.
const MAGIC: u32 = 0x644d_5241;
pub const HEADER_LEN: usize = 64;

/// Errors reading or placing the image; each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "is not an arm64 Linux Image (no \"ARM\\x64\" magic at byte 56; compressed vmlinuz.gz and ELF vmlinux are not loaded)"
    )]
    NotImage,
    #[error("is a big-endian arm64 Image (only little-endian kernels run)")]
    BigEndian,
    #[error("text_offset {0:#x} is not below 2 MiB")]
    TextOffset(u64),
    #[error("needs {need:#x} bytes of RAM for kernel, initrd and device tree; -m gives {have:#x}")]
    TooSmall { need: u64, have: u64 },
}

/// The kernel page size an Image says it was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    Unspecified,
    K4,
    K16,
    K64,
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Where the image goes above a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies once running (file plus BSS).
    pub image_size: u64,
    pub page_size: PageSize,
}

fn le64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads the 64-byte header of a file of `file_len` bytes.
pub fn parse_header(b: &[u8; HEADER_LEN], file_len: u64) -> Result<Header, Error> {
    let magic = u32::from_le_bytes([b[56], b[57], b[58], b[59]]);
    if magic != MAGIC {
        return Err(Error::NotImage);
    }
    let (text_offset, image_size, flags) = (le64(b, 8), le64(b, 16), le64(b, 24));
    // image_size 0: a kernel older than 3.17, whose text_offset was 0x80000.
    if image_size == 0 {
        return Ok(Header {
            text_offset: 0x8_0000,
            image_size: file_len,
            page_size: PageSize::Unspecified,
        });
    }
    if flags & 1 != 0 {
        return Err(Error::BigEndian);
    }
    if text_offset >= KERNEL_ALIGN {
        return Err(Error::TextOffset(text_offset));
    }
    let page_size = match (flags >> 1) & 3 {
        1 => PageSize::K4,
        2 => PageSize::K16,
        3 => PageSize::K64,
        _ => PageSize::Unspecified,
    };
    Ok(Header {
        text_offset,
        image_size: image_size.max(file_len),
        page_size,
    })
}

/// Where everything goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The kernel's load address and entry point.
    pub kernel: u64,
    /// The initrd's start, when there is one.
    pub initrd: Option<u64>,
    /// The device tree's address (passed in x0).
    pub fdt: u64,
}

const fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

const fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

/// The kernel at RAM_BASE + text_offset (RAM_BASE is 2 MiB aligned), the
/// device tree in the last 2 MiB-aligned 2 MiB of RAM, the initrd right
/// below it (64 KiB aligned: page-aligned for every page size).
pub fn place(h: &Header, initrd_len: Option<u64>, ram_size: u64) -> Result<Placement, Error> {
    let kernel = RAM_BASE + h.text_offset;
    let kernel_end = align_up(kernel + h.image_size, INITRD_ALIGN);
    let initrd_need = initrd_len.map_or(0, |l| align_up(l, INITRD_ALIGN));
    let need = (kernel_end - RAM_BASE) + initrd_need + FDT_MAX + KERNEL_ALIGN;
    let ram_end = RAM_BASE + ram_size;
    let too_small = Error::TooSmall {
        need,
        have: ram_size,
    };
    if ram_size < need {
        return Err(too_small);
    }
    let fdt = align_down(ram_end - FDT_MAX, KERNEL_ALIGN);
    let initrd = match initrd_len {
        Some(l) => {
            let at = align_down(fdt - l, INITRD_ALIGN);
            if at < kernel_end {
                return Err(too_small);
            }
            Some(at)
        }
        None => None,
    };
    Ok(Placement {
        kernel,
        initrd,
        fdt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&flags.to_le_bytes());
        b[56..60].copy_from_slice(&MAGIC.to_le_bytes());
        b
    }

    #[test]
    fn header_fields_and_page_sizes() {
        let h = parse_header(&header(0, 0x200_0000, 0b1010), 0x180_0000).unwrap();
        assert_eq!(h.text_offset, 0);
        assert_eq!(h.image_size, 0x200_0000);
        assert_eq!(h.page_size, PageSize::K4);
        let h = parse_header(&header(0, 0x100_0000, 0b0100), 0x80_0000).unwrap();
        assert_eq!(h.page_size, PageSize::K16);
        let h = parse_header(&header(0, 0x100_0000, 0b0110), 0x80_0000).unwrap();
        assert_eq!(h.page_size, PageSize::K64);
        // Pre-3.17: image_size 0 means text_offset 0x80000 and the file size.
        let h = parse_header(&header(0, 0, 0), 0x50_0000).unwrap();
        assert_eq!((h.text_offset, h.image_size), (0x8_0000, 0x50_0000));
    }

    #[test]
    fn bad_headers_are_named() {
        let mut b = header(0, 0x100_0000, 0);
        b[56] = 0;
        assert_eq!(parse_header(&b, 1), Err(Error::NotImage));
        assert_eq!(
            parse_header(&header(0, 0x100_0000, 1), 1),
            Err(Error::BigEndian)
        );
        assert_eq!(
            parse_header(&header(0x20_0000, 0x100_0000, 0), 1),
            Err(Error::TextOffset(0x20_0000))
        );
    }

    #[test]
    fn placement_is_aligned_and_ordered() {
        let h = parse_header(&header(0, 0x2b0_0000, 0b1010), 0x200_0000).unwrap();
        let p = place(&h, Some(0x123_4567), 256 << 20).unwrap();
        assert_eq!(p.kernel, RAM_BASE);
        assert_eq!(p.fdt % (2 << 20), 0);
        assert!(p.fdt + FDT_MAX <= RAM_BASE + (256 << 20));
        let initrd = p.initrd.unwrap();
        assert_eq!(initrd % (64 << 10), 0);
        assert!(initrd >= RAM_BASE + 0x2b0_0000);
        assert!(initrd + 0x123_4567 <= p.fdt);
        // A text_offset keeps the 2 MiB-aligned base.
        let h = parse_header(&header(0x8_0000, 0x100_0000, 0), 0x100_0000).unwrap();
        assert_eq!(
            place(&h, None, 64 << 20).unwrap().kernel,
            RAM_BASE + 0x8_0000
        );
    }

    #[test]
    fn too_little_ram_is_refused_with_both_sizes() {
        let h = parse_header(&header(0, 0x2b0_0000, 0), 0x200_0000).unwrap();
        let e = place(&h, Some(64 << 20), 64 << 20).unwrap_err();
        assert!(
            matches!(e, Error::TooSmall { have, .. } if have == 64 << 20),
            "{e}"
        );
    }
}
