//! The device tree the aarch64 machine hands its kernel (rust-vmm
//! `vm-fdt`): memory, CPUs with PSCI, the GICv3, the architected timer,
//! the UART, the debug-exit register, the PCI host bridge (generic ECAM,
//! MSIs through the GICv3 ITS, or its message-based SPIs where the GIC
//! has no ITS),
//! and `chosen` (command line, initrd, console). Addresses and interrupts
//! come from `layout.rs` only.

use hv_boundary::aarch64::MsiController;
use vm_fdt::FdtWriter;

use super::layout;

/// The GIC's phandle (every interrupt names it through the root's
/// `interrupt-parent`).
const GIC_PHANDLE: u32 = 1;
/// The ITS's phandle (the PCI host bridge's `msi-map` names it).
const ITS_PHANDLE: u32 = 2;
/// Requester IDs the PCI host bridge maps to ITS device IDs (one bus).
const PCI_RIDS: u32 = 0x100;
/// Interrupt specifier cells: type, number, flags.
const GIC_SPI: u32 = 0;
/// The INTID of SPI 0.
const FIRST_SPI_INTID: u32 = 32;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// The virtual GIC's maintenance interrupt (PPI 9), as QEMU's `virt`.
const GIC_MAINTENANCE_PPI: u32 = 9;
/// The 16550's input clock (the PC's 1.8432 MHz: divisor 1 = 115200 baud).
const UART_CLOCK_HZ: u32 = 1_843_200;

/// PCI address space codes (the first cell of a `ranges` child address,
/// IEEE 1275 PCI binding): 32-bit and 64-bit memory.
const PCI_SPACE_MEM32: u32 = 0x0200_0000;
const PCI_SPACE_MEM64: u32 = 0x0300_0000;

fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

fn lo(v: u64) -> u32 {
    v as u32
}

/// One `ranges` entry: PCI memory at the same CPU address (identity).
fn pci_range(space: u32, start: u64, size: u64) -> [u32; 7] {
    [
        space,
        hi(start),
        lo(start),
        hi(start),
        lo(start),
        hi(size),
        lo(size),
    ]
}

/// What the tree describes.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub ram_size: u64,
    /// Each vCPU's MPIDR_EL1 (its `reg`), in vCPU order.
    pub mpidrs: &'a [u64],
    pub cmdline: &'a str,
    /// The initrd's [start, end).
    pub initrd: Option<(u64, u64)>,
    /// Where PCI MSIs go: KVM's GIC has an ITS (a child node, and an
    /// `msi-map` on the host bridge); Hypervisor.framework's has an MBI
    /// frame (`mbi-*` on the GIC, whose phandle is the bridge's
    /// `msi-parent`). None: no MSIs.
    pub msi: Option<MsiController>,
}

/// Errors building the tree (vm-fdt's, or a tree over its 2 MiB).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device tree: {0}")]
    Fdt(#[from] vm_fdt::Error),
    #[error("device tree: {0} bytes is more than the 2 MiB the kernel maps")]
    TooLarge(usize),
}

fn node(
    fdt: &mut FdtWriter,
    name: &str,
    body: impl FnOnce(&mut FdtWriter) -> Result<(), vm_fdt::Error>,
) -> Result<(), vm_fdt::Error> {
    let n = fdt.begin_node(name)?;
    body(fdt)?;
    fdt.end_node(n)
}

/// The flattened device tree blob for `spec`.
pub fn build(spec: &Spec<'_>) -> Result<Vec<u8>, Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    node(&mut fdt, "cpus", |f| {
        f.property_u32("#address-cells", 2)?;
        f.property_u32("#size-cells", 0)?;
        for &mpidr in spec.mpidrs {
            // The affinity fields (Aff3 in bits 39:32, Aff2-0 in 23:0).
            let reg = mpidr & 0xff_00ff_ffff;
            node(f, &format!("cpu@{reg:x}"), |c| {
                c.property_string("device_type", "cpu")?;
                c.property_string("compatible", "arm,arm-v8")?;
                c.property_string("enable-method", "psci")?;
                c.property_u64("reg", reg)
            })?;
        }
        Ok(())
    })?;

    node(&mut fdt, &format!("memory@{:x}", layout::RAM_BASE), |f| {
        f.property_string("device_type", "memory")?;
        f.property_array_u64("reg", &[layout::RAM_BASE, spec.ram_size])
    })?;

    node(&mut fdt, "chosen", |f| {
        f.property_string("bootargs", spec.cmdline)?;
        f.property_string("stdout-path", &format!("/uart@{:x}", layout::UART_ADDR))?;
        if let Some((start, end)) = spec.initrd {
            f.property_u64("linux,initrd-start", start)?;
            f.property_u64("linux,initrd-end", end)?;
        }
        Ok(())
    })?;

    // PSCI is KVM's (HVC conduit): CPU_ON brings up secondaries, SYSTEM_OFF
    // and SYSTEM_RESET end the VM.
    node(&mut fdt, "psci", |f| {
        f.property_string_list(
            "compatible",
            vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
        )?;
        f.property_string("method", "hvc")
    })?;

    let redist = layout::gic_redist_size(u8::try_from(spec.mpidrs.len()).unwrap_or(u8::MAX));
    node(&mut fdt, &format!("intc@{:x}", layout::GIC_DIST), |f| {
        f.property_string("compatible", "arm,gic-v3")?;
        f.property_u32("#interrupt-cells", 3)?;
        f.property_null("interrupt-controller")?;
        f.property_array_u64(
            "reg",
            &[
                layout::GIC_DIST,
                layout::GIC_DIST_SIZE,
                layout::GIC_REDIST,
                redist,
            ],
        )?;
        f.property_array_u32(
            "interrupts",
            &[GIC_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH],
        )?;
        f.property_u32("phandle", GIC_PHANDLE)?;
        match spec.msi {
            None => Ok(()),
            // The GIC itself is the MSI controller (GICv3 binding's MBI):
            // its SPIs from INTID `mbi-ranges[0]`, written to the frame at
            // `mbi-alias` instead of the distributor's own SETSPI_NSR.
            Some(MsiController::Mbi {
                addr,
                first_spi,
                count,
                ..
            }) => {
                f.property_null("msi-controller")?;
                f.property_array_u32("mbi-ranges", &[FIRST_SPI_INTID + first_spi, count])?;
                f.property_u64("mbi-alias", addr)
            }
            // The ITS as the GIC's child, at its own address.
            Some(MsiController::Its { addr }) => {
                f.property_u32("#address-cells", 2)?;
                f.property_u32("#size-cells", 2)?;
                f.property_null("ranges")?;
                node(f, &format!("its@{addr:x}"), |its| {
                    its.property_string("compatible", "arm,gic-v3-its")?;
                    its.property_null("msi-controller")?;
                    its.property_u32("#msi-cells", 1)?;
                    its.property_array_u64("reg", &[addr, layout::GIC_ITS_SIZE])?;
                    its.property_u32("phandle", ITS_PHANDLE)
                })
            }
        }
    })?;

    node(&mut fdt, "timer", |f| {
        f.property_string("compatible", "arm,armv8-timer")?;
        f.property_null("always-on")?;
        let cells: Vec<u32> = layout::TIMER_PPIS
            .iter()
            .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
            .collect();
        f.property_array_u32("interrupts", &cells)
    })?;

    node(&mut fdt, &format!("uart@{:x}", layout::UART_ADDR), |f| {
        f.property_string("compatible", "ns16550a")?;
        f.property_array_u64("reg", &[layout::UART_ADDR, layout::UART_SIZE])?;
        f.property_u32("clock-frequency", UART_CLOCK_HZ)?;
        // Raised through an irqfd, a pulse: edge.
        f.property_array_u32(
            "interrupts",
            &[GIC_SPI, layout::UART_SPI, IRQ_TYPE_EDGE_RISING],
        )
    })?;

    node(
        &mut fdt,
        &format!("debug-exit@{:x}", layout::DEBUG_EXIT_ADDR),
        |f| {
            f.property_string("compatible", "shmvm,debug-exit")?;
            f.property_array_u64("reg", &[layout::DEBUG_EXIT_ADDR, layout::DEBUG_EXIT_SIZE])
        },
    )?;

    // Bus 0 behind a generic ECAM host bridge (Linux `pci-host-generic`);
    // the kernel assigns BARs from the two windows itself.
    node(&mut fdt, &format!("pcie@{:x}", layout::PCI_ECAM), |f| {
        f.property_string("compatible", "pci-host-ecam-generic")?;
        f.property_string("device_type", "pci")?;
        f.property_u32("#address-cells", 3)?;
        f.property_u32("#size-cells", 2)?;
        f.property_array_u64("reg", &[layout::PCI_ECAM, layout::PCI_ECAM_SIZE])?;
        f.property_array_u32("bus-range", &[0, 0])?;
        f.property_u32("linux,pci-domain", 0)?;
        f.property_null("dma-coherent")?;
        match spec.msi {
            // MSIs go to the ITS with the requester ID (BDF) as device ID.
            Some(MsiController::Its { .. }) => {
                f.property_array_u32("msi-map", &[0, ITS_PHANDLE, 0, PCI_RIDS])?
            }
            Some(MsiController::Mbi { .. }) => f.property_u32("msi-parent", GIC_PHANDLE)?,
            None => {}
        }
        let mmio64 = layout::pci_mmio64_start(spec.ram_size);
        let mut ranges = pci_range(
            PCI_SPACE_MEM32,
            layout::PCI_MMIO32_START,
            layout::PCI_MMIO32_END - layout::PCI_MMIO32_START,
        )
        .to_vec();
        ranges.extend(pci_range(PCI_SPACE_MEM64, mmio64, layout::PCI_MMIO64_SIZE));
        f.property_array_u32("ranges", &ranges)
    })?;

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > layout::FDT_MAX {
        return Err(Error::TooLarge(blob.len()));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITS: MsiController = MsiController::Its {
        addr: layout::GIC_ITS,
    };

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_tree_is_a_valid_blob_with_every_node() {
        let spec = Spec {
            ram_size: 256 << 20,
            mpidrs: &[0x8000_0000, 0x8000_0001],
            cmdline: "console=ttyS0 quiet",
            initrd: Some((0x4f00_0000, 0x4f10_0000)),
            msi: Some(ITS),
        };
        let b = build(&spec).unwrap();
        assert_eq!(be32(&b, 0), 0xd00d_feed);
        assert_eq!(be32(&b, 4) as usize, b.len());
        for s in [
            &b"console=ttyS0 quiet"[..],
            b"cpu@0\0",
            b"cpu@1\0",
            b"memory@40000000\0",
            b"arm,gic-v3\0",
            b"arm,psci-0.2\0",
            b"arm,armv8-timer\0",
            b"ns16550a\0",
            b"uart@9000000\0",
            b"debug-exit@9010000\0",
            b"linux,initrd-start\0",
            b"/uart@9000000\0",
            b"pcie@3f000000\0",
            b"pci-host-ecam-generic\0",
            b"arm,gic-v3-its\0",
            b"msi-map\0",
        ] {
            assert!(contains(&b, s), "{:?} missing", String::from_utf8_lossy(s));
        }
        // The memory node's reg: base and size as two 64-bit big-endian cells.
        let mut reg = Vec::new();
        reg.extend_from_slice(&layout::RAM_BASE.to_be_bytes());
        reg.extend_from_slice(&(256u64 << 20).to_be_bytes());
        assert!(contains(&b, &reg));
        // The 64-bit window's range: at 2 GiB (above 256 MiB of RAM at
        // 1 GiB), identity-mapped, 64 GiB.
        let range: Vec<u8> = pci_range(PCI_SPACE_MEM64, 2 << 30, 64 << 30)
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        assert!(contains(&b, &range));
        assert_eq!(
            pci_range(PCI_SPACE_MEM32, 0x1000_0000, 0x2eff_0000),
            [0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x2eff_0000]
        );
    }

    #[test]
    fn without_an_initrd_chosen_names_none() {
        let spec = Spec {
            ram_size: 64 << 20,
            mpidrs: &[0x8000_0000],
            cmdline: "",
            initrd: None,
            msi: Some(ITS),
        };
        let b = build(&spec).unwrap();
        assert!(!contains(&b, b"linux,initrd-start"));
    }

    #[test]
    fn without_msis_no_its_node_and_no_msi_map() {
        let spec = Spec {
            ram_size: 64 << 20,
            mpidrs: &[0x8000_0000],
            cmdline: "",
            initrd: None,
            msi: None,
        };
        let b = build(&spec).unwrap();
        assert!(contains(&b, b"arm,gic-v3\0"));
        assert!(contains(&b, b"pci-host-ecam-generic\0"));
        assert!(!contains(&b, b"arm,gic-v3-its"));
        assert!(!contains(&b, b"msi-map"));
        assert!(!contains(&b, b"msi-controller"));
    }

    #[test]
    fn mbis_make_the_gic_the_msi_parent_of_pci() {
        // HVF's GIC: no ITS; SPIs 32..96 (INTIDs 64..128) by writes to
        // the frame at 0x0808_0000.
        let spec = Spec {
            ram_size: 64 << 20,
            mpidrs: &[0x8000_0000],
            cmdline: "",
            initrd: None,
            msi: Some(MsiController::Mbi {
                addr: 0x0808_0000,
                window: 0x2_0000,
                first_spi: 32,
                count: 64,
            }),
        };
        let b = build(&spec).unwrap();
        assert!(!contains(&b, b"arm,gic-v3-its"));
        assert!(!contains(&b, b"msi-map"));
        for s in [&b"msi-controller\0"[..], b"mbi-alias\0", b"msi-parent\0"] {
            assert!(contains(&b, s), "{:?} missing", String::from_utf8_lossy(s));
        }
        // mbi-ranges <64 64> then mbi-alias <0 0x08080000>, as cells.
        let cells = |v: &[u32]| v.iter().flat_map(|c| c.to_be_bytes()).collect::<Vec<u8>>();
        assert!(contains(&b, &cells(&[64, 64])));
        assert!(contains(&b, &cells(&[0, 0x0808_0000])));
    }
}
