//! The GICv3's interrupt numbering between the machine and
//! Hypervisor.framework: the machine numbers SPIs from 0 (KVM's irqfd, the
//! device tree), the GIC and `hv_gic_set_spi` by INTID (SPI n is INTID
//! 32 + n); HVF's GIC has a fixed SPI range the machine's must fit in.

/// INTIDs below this are private to a CPU (SGIs, PPIs).
pub const FIRST_SPI_INTID: u32 = 32;

/// The GIC's INTID of SPI `spi`.
pub fn spi_intid(spi: u32) -> u32 {
    FIRST_SPI_INTID + spi
}

/// Whether a GIC with `nr_irqs` interrupt IDs (32 private plus the SPIs,
/// the boundary's `GicConfig::nr_irqs`) fits HVF's SPI INTIDs `base ..
/// base + count`; else the highest INTID the machine wants and HVF's range.
pub fn check_spi_range(nr_irqs: u32, base: u32, count: u32) -> Result<(), (u32, u32, u32)> {
    let end = base.saturating_add(count);
    if nr_irqs <= FIRST_SPI_INTID {
        return Ok(());
    }
    let want = nr_irqs - 1;
    if base > FIRST_SPI_INTID || want >= end {
        return Err((want, base, end));
    }
    Ok(())
}

/// Why HVF's MBI frame (its "MSI region", `size` bytes, its base aligned
/// to `align`) cannot go where the machine put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MbiError {
    #[error(
        "the MSI frame at {addr:#x} must be aligned to {align:#x} bytes and fit in {window:#x}, Hypervisor.framework's is {size:#x}"
    )]
    Frame {
        addr: u64,
        window: u64,
        size: u64,
        align: u64,
    },
    #[error(
        "the MSIs' INTIDs {first}..{end} are not in Hypervisor.framework's SPIs {base}..{spi_end}"
    )]
    Intids {
        first: u32,
        end: u32,
        base: u32,
        spi_end: u32,
    },
}

/// Checks an MBI frame at `addr` in a `window` against HVF's frame `size`
/// and base alignment `align`, and its INTIDs `first .. first + count`
/// against HVF's SPI INTIDs `base .. base + spis`.
pub fn check_mbi(
    (addr, window): (u64, u64),
    (size, align): (u64, u64),
    (first, count): (u32, u32),
    (base, spis): (u32, u32),
) -> Result<(), MbiError> {
    if align == 0 || addr % align != 0 || size > window {
        return Err(MbiError::Frame {
            addr,
            window,
            size,
            align,
        });
    }
    let end = first.saturating_add(count);
    let spi_end = base.saturating_add(spis);
    if first < base || end > spi_end || count == 0 {
        return Err(MbiError::Intids {
            first,
            end,
            base,
            spi_end,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spis_start_at_intid_32() {
        assert_eq!(spi_intid(0), 32);
        assert_eq!(spi_intid(1), 33);
    }

    #[test]
    fn the_machines_spis_must_fit_hvfs_range() {
        // 96 SPIs (INTIDs 32..127) in a range of 988 from 32: fine.
        assert_eq!(check_spi_range(128, 32, 988), Ok(()));
        assert_eq!(check_spi_range(128, 32, 96), Ok(()));
        // One short, or starting late: refused, naming the numbers.
        assert_eq!(check_spi_range(128, 32, 95), Err((127, 32, 127)));
        assert_eq!(check_spi_range(128, 64, 1000), Err((127, 64, 1064)));
        // No SPIs at all: nothing to fit.
        assert_eq!(check_spi_range(32, 64, 0), Ok(()));
    }

    #[test]
    fn the_mbi_frame_must_be_aligned_fit_its_window_and_use_hvfs_spis() {
        let frame = (0x0808_0000, 0x2_0000);
        let spis = (32, 988);
        assert_eq!(
            check_mbi(frame, (0x1_0000, 0x1_0000), (64, 64), spis),
            Ok(())
        );
        // Misaligned, or bigger than the window the machine left.
        assert!(matches!(
            check_mbi(frame, (0x1_0000, 0x10_0000), (64, 64), spis),
            Err(MbiError::Frame { .. })
        ));
        assert!(matches!(
            check_mbi(frame, (0x4_0000, 0x1_0000), (64, 64), spis),
            Err(MbiError::Frame { .. })
        ));
        // INTIDs outside HVF's SPIs, or none.
        assert_eq!(
            check_mbi(frame, (0x1_0000, 0x1_0000), (64, 64), (32, 64)),
            Err(MbiError::Intids {
                first: 64,
                end: 128,
                base: 32,
                spi_end: 96
            })
        );
        assert!(check_mbi(frame, (0x1_0000, 0x1_0000), (64, 0), spis).is_err());
    }
}
