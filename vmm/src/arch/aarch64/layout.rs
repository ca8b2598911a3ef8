//! The aarch64 guest-physical memory map (QEMU `virt`'s low addresses, so
//! guests and tools that know `virt` find familiar places). Everything
//! below RAM is MMIO; RAM starts at 1 GiB.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x0808_0000  GICv3 ITS (128 KiB; under HVF its MBI frame, 64 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU, up to 0x0900_0000)
//! 0x0900_0000  16550 UART (ns16550a, 8 byte registers, SPI 1)
//! 0x0901_0000  debug-exit (4 bytes: a write of v ends shmvm with (v << 1) | 1)
//! 0x1000_0000  PCI 32-bit BAR window (up to 0x3eff_0000)
//! 0x3f00_0000  PCI ECAM, bus 0 (1 MiB; pci-host-ecam-generic)
//! 0x4000_0000  RAM: kernel at +2 MiB, initrd and device tree at the top
//!   ...        PCI 64-bit BAR window (64 GiB), 1 GiB aligned above RAM
//! ```

/// Guest RAM's base.
pub const RAM_BASE: u64 = 0x4000_0000;
/// The highest guest-physical address KVM gives a VM by default (40-bit
/// IPA space): RAM must end below it.
pub const IPA_LIMIT: u64 = 1 << 40;

pub const GIC_DIST: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
pub const GIC_REDIST: u64 = 0x080a_0000;
/// Two 64 KiB frames (RD_base, SGI_base) per vCPU.
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// Interrupt IDs the GIC has: 32 private plus 96 SPIs.
pub const GIC_NR_IRQS: u32 = 128;
/// GSIs routed to SPIs (GSI n raises SPI n); MSI routes take the GSIs
/// after them.
pub const IRQCHIP_GSIS: u32 = GIC_NR_IRQS - 32;
/// The GICv3 ITS (GITS_CTLR..., GITS_TRANSLATER in its second 64 KiB
/// frame), where QEMU `virt` has it: MSIs from PCI devices.
pub const GIC_ITS: u64 = 0x0808_0000;
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// Where a GIC without an ITS (Hypervisor.framework's) has its MBI frame
/// (the "MSI region": a write of an INTID to SETSPI_NSR raises that SPI):
/// in the ITS's window, which such a machine does not otherwise use.
pub const GIC_MBI: u64 = GIC_ITS;
/// The SPIs set aside for MBIs (numbered from 0): the upper two thirds,
/// 64 MSI vectors in all; fixed lines (the UART's) stay below.
pub const MBI_FIRST_SPI: u32 = 32;
pub const MBI_SPIS: u32 = IRQCHIP_GSIS - MBI_FIRST_SPI;

pub const UART_ADDR: u64 = 0x0900_0000;
/// The UART's register window in the device tree (`reg`); the bus claims
/// the 8 registers.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's shared peripheral interrupt (INTID 32 + 1), as on `virt`.
pub const UART_SPI: u32 = 1;
// Fixed lines are below the MBIs' SPIs (HVF refuses to raise those).
const _: () = assert!(UART_SPI < MBI_FIRST_SPI);

/// The debug-exit register for test kernels (there is no port I/O on
/// arm64): a 1-4 byte write of `v` ends shmvm with exit code
/// `(v << 1) | 1`, as QEMU's isa-debug-exit does; reads see all-ones.
pub const DEBUG_EXIT_ADDR: u64 = 0x0901_0000;
pub const DEBUG_EXIT_SIZE: u64 = 4;

/// The PCI host bridge's configuration space (ECAM, bus 0 only), where
/// QEMU `virt` has its ECAM.
pub const PCI_ECAM: u64 = 0x3f00_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// 32-bit PCI BAR window (`virt`'s VIRT_PCIE_MMIO).
pub const PCI_MMIO32_START: u64 = 0x1000_0000;
pub const PCI_MMIO32_END: u64 = 0x3eff_0000;
/// Size of the 64-bit PCI BAR window above RAM (as on x86_64).
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
const GIB: u64 = 1 << 30;
/// Memory slots from this number on belong to memory-backed PCI BARs
/// (RAM is slot 0).
pub const PCI_BAR_FIRST_SLOT: u32 = 8;

/// Start of the 64-bit PCI BAR window: the first 1 GiB boundary at or
/// above the end of RAM.
pub fn pci_mmio64_start(ram_size: u64) -> u64 {
    (RAM_BASE + ram_size).div_ceil(GIB) * GIB
}

/// The architected timer's PPIs (INTID - 16): secure and non-secure
/// physical, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// arm64 Linux's COMMAND_LINE_SIZE (with its NUL).
pub const CMDLINE_MAX: u64 = 2048;

/// Where the kernel `Image` goes: RAM_BASE + 2 MiB (text_offset is 0 on
/// every kernel since 5.8; older images say otherwise in their header).
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// The device tree: at most 2 MiB (the kernel maps one 2 MiB block for
/// it), 2 MiB aligned at the top of RAM.
pub const FDT_MAX: u64 = 2 << 20;
/// The initrd's alignment: the largest page size (64 KiB), so 4, 16 and
/// 64 KiB page kernels all see it page-aligned.
pub const INITRD_ALIGN: u64 = 64 << 10;
/// Guest RAM size granule: a memory slot must be whole host pages, and the
/// largest arm64 page is 64 KiB (Apple silicon hosts use 16 KiB).
pub const RAM_GRANULE: u64 = 64 << 10;

/// One contiguous stretch of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest physical address.
    pub gpa: u64,
    /// Offset into the RAM backend's mapping.
    pub backend_offset: u64,
    pub size: u64,
}

/// RAM is one region at [`RAM_BASE`] (no hole on arm64).
pub fn ram_regions(ram_size: u64) -> Vec<RamRegion> {
    vec![RamRegion {
        gpa: RAM_BASE,
        backend_offset: 0,
        size: ram_size,
    }]
}

/// Why a RAM size does not fit this machine.
pub fn check_ram_size(ram_size: u64) -> Result<(), String> {
    if !ram_size.is_multiple_of(RAM_GRANULE) {
        return Err(format!(
            "{ram_size:#x} bytes is not a multiple of 64 KiB (the largest arm64 page size)"
        ));
    }
    if ram_size > IPA_LIMIT - RAM_BASE || pci_mmio64_start(ram_size) + PCI_MMIO64_SIZE > IPA_LIMIT {
        return Err(format!(
            "{ram_size:#x} bytes does not fit below the 1 TiB guest-physical limit with the 64 GiB PCI window above it"
        ));
    }
    Ok(())
}

/// Redistributor space for `vcpus` vCPUs.
pub fn gic_redist_size(vcpus: u8) -> u64 {
    u64::from(vcpus) * GIC_REDIST_SIZE_PER_CPU
}

/// The most vCPUs whose redistributors fit below the UART.
pub const MAX_VCPUS: u8 = ((UART_ADDR - GIC_REDIST) / GIC_REDIST_SIZE_PER_CPU) as u8;
// Every vCPU count the configuration accepts has its redistributor.
const _: () = assert!(MAX_VCPUS >= crate::config::MAX_VCPUS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_do_not_overlap_and_sit_below_ram() {
        let ranges = [
            (GIC_DIST, GIC_DIST_SIZE),
            (GIC_ITS, GIC_ITS_SIZE),
            (GIC_REDIST, gic_redist_size(MAX_VCPUS)),
            (UART_ADDR, UART_SIZE),
            (DEBUG_EXIT_ADDR, DEBUG_EXIT_SIZE),
            (PCI_MMIO32_START, PCI_MMIO32_END - PCI_MMIO32_START),
            (PCI_ECAM, PCI_ECAM_SIZE),
        ];
        for (i, a) in ranges.iter().enumerate() {
            assert!(a.0 + a.1 <= RAM_BASE);
            for b in &ranges[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} {b:x?}");
            }
        }
    }

    #[test]
    fn ram_sizes_must_suit_every_page_size() {
        assert!(check_ram_size(256 << 20).is_ok());
        // 16 KiB pages (Apple silicon) but not 64 KiB: refused.
        assert!(check_ram_size((256 << 20) + (16 << 10)).is_err());
        assert!(check_ram_size(IPA_LIMIT).is_err());
        assert_eq!(ram_regions(1 << 30)[0].gpa, RAM_BASE);
    }

    #[test]
    fn the_64_bit_pci_window_sits_above_ram_below_the_ipa_limit() {
        assert_eq!(pci_mmio64_start(256 << 20), 2 * GIB);
        assert_eq!(pci_mmio64_start(GIB), 2 * GIB);
        assert_eq!(pci_mmio64_start(GIB + (64 << 10)), 3 * GIB);
        let most = IPA_LIMIT - RAM_BASE - PCI_MMIO64_SIZE;
        assert!(check_ram_size(most).is_ok());
        assert_eq!(pci_mmio64_start(most) + PCI_MMIO64_SIZE, IPA_LIMIT);
        assert!(check_ram_size(most + RAM_GRANULE).is_err());
    }
}
