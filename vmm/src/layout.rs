//! The guest physical memory map and port map, in one place.
//!
//! ```text
//! 0x0000_0000  real-mode IVT + BDA (left alone)
//! 0x0000_0500  boot GDT, then IDT                 (64-bit / PVH entry)
//! 0x0000_6000  PVH hvm_start_info, module list, memory map (or Multiboot's)
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  boot stack top (64-bit entry)
//! 0x0000_9000  PML4, PDPT, PD: 1 GiB identity map with 2 MiB pages
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0003_0000  Multiboot module strings (up to 64 KiB)
//! 0x0009_fc00  EBDA (reserved from here to 1 MiB)
//! 0x000f_0000  BIOS area: MP floating pointer + MP configuration table
//! 0x0010_0000  kernel (ELF p_paddr / bzImage code32_start), then RAM
//!   ...        initrd: page aligned, as high as allowed in RAM below 3 GiB
//! 0xc000_0000  32-bit MMIO hole: PCI BAR window up to the IOAPIC
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB (whatever did not fit below the hole)
//!   ...        64-bit PCI BAR window, 1 GiB aligned above the end of RAM
//! ```

/// Start of the boot GDT (5 entries) used for 64-bit and PVH entry.
pub const BOOT_GDT: u64 = 0x500;
/// Start of the (empty) boot IDT.
pub const BOOT_IDT: u64 = 0x540;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list (the initrd is module 0).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x6100;
/// Multiboot information structure, memory map and module list (in the
/// PVH page: a kernel is entered by one protocol only).
pub const MULTIBOOT_INFO: u64 = 0x6000;
pub const MULTIBOOT_MMAP: u64 = 0x6100;
pub const MULTIBOOT_MODS: u64 = 0x6800;
/// Module list entries that fit between [`MULTIBOOT_MODS`] and the zero page.
pub const MULTIBOOT_MAX_MODS: usize = 128;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page tables for the 64-bit entry.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Kernel command line and its maximum size (with the NUL).
pub const CMDLINE: u64 = 0x2_0000;
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Multiboot module strings and the boot loader name, after the command line.
pub const MULTIBOOT_STRINGS: u64 = CMDLINE + CMDLINE_MAX;
pub const MULTIBOOT_STRINGS_MAX: u64 = 0x1_0000;
/// Extended BIOS data area: RAM below it is usable, from it to 1 MiB reserved.
pub const EBDA: u64 = 0x9_fc00;
/// MP floating pointer and table, in the BIOS area guests scan
/// (0xF0000-0xFFFFF; 64 KiB leaves room for any vCPU count).
pub const MPTABLE: u64 = 0xf_0000;
/// End of the reserved legacy area below 1 MiB.
pub const HIMEM: u64 = 0x10_0000;

/// Guest RAM below this address (boot structures, the MP table, small
/// kernels at 1 MiB) is kept on small host pages: a transparent huge page
/// there would cost 2 MiB of host memory for a few KiB the guest touches.
pub const SMALL_PAGES_END: u64 = 2 << 20;

/// The 32-bit MMIO hole: guest RAM never sits in `[MMIO_HOLE, 4 GiB)`.
pub const MMIO_HOLE: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// 32-bit PCI BAR window: from the hole's start to the IOAPIC.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE;
pub const PCI_MMIO32_END: u64 = IOAPIC_ADDR;
/// IOAPIC and local APIC (architectural defaults).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS needs 3 pages of guest-physical space that is not RAM.
pub const KVM_TSS: u64 = 0xfffb_d000;
/// Size of the 64-bit PCI BAR window that starts above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;
/// I/O port window for PCI I/O BARs.
pub const PCI_IO_START: u64 = 0xc000;
pub const PCI_IO_END: u64 = 0x1_0000;
/// Memory slots from this number on belong to memory-backed PCI BARs (one
/// per ivshmem device); guest RAM uses the slots below.
pub const PCI_BAR_FIRST_SLOT: u32 = 8;

/// ACPI tables (RSDP first), in the BIOS area guests scan for the RSDP.
pub const ACPI_TABLES: u64 = 0xe_0000;

/// Ports.
pub const COM1_PORT: u16 = 0x3f8;
/// ACPI sleep control/status register (hardware-reduced ACPI).
pub const ACPI_SLEEP_PORT: u16 = 0x3c0;
pub const COM1_IRQ: u32 = 4;
/// ACPI Generic Event Device (the power button): its register (MMIO,
/// above the IOAPIC, where no BAR goes) and interrupt (ISA IRQ 5, free).
pub const GED_ADDR: u64 = 0xfed0_0000;
pub const GED_IRQ: u32 = 5;
pub const I8042_PORT: u16 = 0x60;
/// PCI configuration mechanism #1 (CONFIG_ADDRESS 0xcf8, CONFIG_DATA 0xcfc).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
pub const PCI_CONFIG_PORTS: u64 = 8;

/// Number of IOAPIC pins KVM's in-kernel IOAPIC provides.
pub const IOAPIC_PINS: u8 = 24;
/// GSIs the in-kernel irqchip routes (one per IOAPIC pin); MSI routes
/// take the GSIs after them.
pub const IRQCHIP_GSIS: u32 = IOAPIC_PINS as u32;

/// One contiguous stretch of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest physical address.
    pub gpa: u64,
    /// Offset into the RAM backend's mapping.
    pub backend_offset: u64,
    pub size: u64,
}

/// Splits `ram_size` bytes of RAM around the MMIO hole: up to 3 GiB at 0,
/// the rest at 4 GiB. Both regions are views of one backend mapping.
pub fn ram_regions(ram_size: u64) -> Vec<RamRegion> {
    let low = ram_size.min(MMIO_HOLE);
    let mut v = vec![RamRegion {
        gpa: 0,
        backend_offset: 0,
        size: low,
    }];
    if ram_size > MMIO_HOLE {
        v.push(RamRegion {
            gpa: FOUR_GIB,
            backend_offset: low,
            size: ram_size - low,
        });
    }
    v
}

/// End (exclusive) of RAM below the hole.
pub fn low_ram_end(ram_size: u64) -> u64 {
    ram_size.min(MMIO_HOLE)
}

/// Start of the 64-bit PCI BAR window: the first 1 GiB boundary at or above
/// both 4 GiB and the end of RAM.
pub fn pci_mmio64_start(ram_size: u64) -> u64 {
    let end = ram_regions(ram_size).last().map_or(0, |r| r.gpa + r.size);
    end.max(FOUR_GIB).next_multiple_of(1 << 30)
}

/// E820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry as both the Linux e820 table and PVH memmap see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map the guest is told: RAM below the EBDA, the reserved
/// legacy area, RAM from 1 MiB to the hole, RAM above 4 GiB.
pub fn memory_map(ram_size: u64) -> Vec<MemMapEntry> {
    let low = low_ram_end(ram_size);
    let mut v = vec![
        MemMapEntry {
            addr: 0,
            size: EBDA,
            kind: E820_RAM,
        },
        MemMapEntry {
            addr: EBDA,
            size: HIMEM - EBDA,
            kind: E820_RESERVED,
        },
    ];
    if low > HIMEM {
        v.push(MemMapEntry {
            addr: HIMEM,
            size: low - HIMEM,
            kind: E820_RAM,
        });
    }
    if ram_size > MMIO_HOLE {
        v.push(MemMapEntry {
            addr: FOUR_GIB,
            size: ram_size - MMIO_HOLE,
            kind: E820_RAM,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region_and_map_skips_legacy_hole() {
        let r = ram_regions(64 << 20);
        assert_eq!(
            r,
            vec![RamRegion {
                gpa: 0,
                backend_offset: 0,
                size: 64 << 20
            }]
        );
        let m = memory_map(64 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[2],
            MemMapEntry {
                addr: HIMEM,
                size: (64 << 20) - HIMEM,
                kind: E820_RAM
            }
        );
        let usable: u64 = m
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(usable, (64 << 20) - (HIMEM - EBDA));
    }

    #[test]
    fn large_ram_splits_around_the_hole() {
        let size = 3584 << 20; // 3.5 GiB
        let r = ram_regions(size);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            RamRegion {
                gpa: 0,
                backend_offset: 0,
                size: MMIO_HOLE
            }
        );
        assert_eq!(
            r[1],
            RamRegion {
                gpa: FOUR_GIB,
                backend_offset: MMIO_HOLE,
                size: 512 << 20
            }
        );
        let m = memory_map(size);
        assert_eq!(
            m.last(),
            Some(&MemMapEntry {
                addr: FOUR_GIB,
                size: 512 << 20,
                kind: E820_RAM
            })
        );
        assert_eq!(pci_mmio64_start(size), 5 << 30);
        assert_eq!(pci_mmio64_start(64 << 20), FOUR_GIB);
        const { assert!(PCI_MMIO32_END > PCI_MMIO32_START && KVM_TSS > LAPIC_ADDR) };
    }
}
