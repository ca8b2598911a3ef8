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
}
