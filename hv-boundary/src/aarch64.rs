//! The boundary's state types for arm64 (the aarch64 twin of the vmm's
//! `hv/x86.rs`): what the machine asks of a vCPU and of the interrupt
//! controller, in our own types. `vmm/src/hv/kvm_aarch64.rs` maps them onto
//! KVM; `hv-hvf` onto Hypervisor.framework (`hv_vcpu_set_reg`,
//! `hv_gic_create`).

/// A vCPU's start: the features it starts with (KVM adds the host's
/// preferred CPU model; HVF has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuInit {
    /// PSCI 0.2 or later (CPU_ON, SYSTEM_OFF, SYSTEM_RESET as system
    /// events): KVM's own under KVM, the backend's under HVF (which has
    /// none).
    pub psci_0_2: bool,
    /// Start powered off: a secondary CPU waits for PSCI CPU_ON.
    pub powered_off: bool,
}

/// The registers the boot protocol sets (Linux `Documentation/arch/arm64/
/// booting.rst`): the entry point, x0 = the device tree's address, x1-x3 =
/// 0, EL1h with D, A, I, F masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreRegs {
    pub pc: u64,
    pub x0: u64,
    pub pstate: u64,
}

impl CoreRegs {
    /// PSTATE at entry: EL1 with SP_EL1 (EL1h), debug, SError, IRQ and FIQ
    /// masked.
    pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;

    /// The boot CPU's registers for a kernel entered at `pc` with its device
    /// tree at `fdt`.
    pub fn linux_boot(pc: u64, fdt: u64) -> CoreRegs {
        CoreRegs {
            pc,
            x0: fdt,
            pstate: Self::PSTATE_EL1H_MASKED,
        }
    }
}

/// The in-kernel GICv3: its register frames and how many interrupt lines
/// it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicConfig {
    /// Distributor (GICD), 64 KiB.
    pub dist_addr: u64,
    /// First redistributor (GICR); each vCPU has two 64 KiB frames.
    pub redist_addr: u64,
    /// Interrupt IDs: 32 private (SGIs, PPIs) plus the SPIs; a multiple
    /// of 32.
    pub nr_irqs: u32,
    /// Where PCI devices' MSIs go; None: no MSIs.
    pub msi: Option<MsiController>,
}

/// The GICv3's MSI controller: what a PCI device's MSI write reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiController {
    /// An ITS, whose 128 KiB frame (GITS) at `addr` turns MSI writes into
    /// LPIs by device ID (KVM's).
    Its { addr: u64 },
    /// Message-based SPIs (GICv3 MBI): a frame at `addr` (in a window
    /// of `window` bytes the machine leaves free for it) whose SETSPI_NSR
    /// register ([`MBI_SETSPI`] bytes in) raises the SPI whose INTID is
    /// written; SPIs `first_spi .. first_spi + count` (numbered from 0, as
    /// the device tree numbers them) are set aside for it.
    /// Hypervisor.framework's GIC has this (its "MSI region"), no ITS.
    Mbi {
        addr: u64,
        window: u64,
        first_spi: u32,
        count: u32,
    },
}

/// Offset of SETSPI_NSR in an MBI frame (as in the GICD and a GICv2m frame).
pub const MBI_SETSPI: u64 = 0x40;

/// One entry of the VM's interrupt routing table (the aarch64 twin of
/// `x86.rs`'s): a GSI raises an SPI, or sends an MSI to the ITS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsiRoute {
    /// `gsi` raises SPI `spi` (INTID 32 + `spi`).
    Spi { gsi: u32, spi: u32 },
    /// `gsi` writes `data` to `address` (the ITS's GITS_TRANSLATER) as
    /// device `devid`: the ITS translates by the device ID, which is the
    /// requester's PCI BDF (the device tree's `msi-map` is the identity).
    Msi {
        gsi: u32,
        address: u64,
        data: u32,
        devid: u32,
    },
}

impl GsiRoute {
    pub fn gsi(&self) -> u32 {
        match *self {
            GsiRoute::Spi { gsi, .. } | GsiRoute::Msi { gsi, .. } => gsi,
        }
    }

    /// The routes the in-kernel GIC starts with: GSI n raises SPI n, for
    /// `spis` SPIs (a routing table replaces them, so it keeps them).
    pub fn irqchip_defaults(spis: u32) -> Vec<GsiRoute> {
        (0..spis)
            .map(|n| GsiRoute::Spi { gsi: n, spi: n })
            .collect()
    }

    /// An MSI route from requester `devid`.
    pub fn msi(gsi: u32, address: u64, data: u32, devid: u32) -> GsiRoute {
        GsiRoute::Msi {
            gsi,
            address,
            data,
            devid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_boot_registers_follow_the_arm64_boot_protocol() {
        let r = CoreRegs::linux_boot(0x4020_0000, 0x4800_0000);
        assert_eq!(r.pc, 0x4020_0000);
        assert_eq!(r.x0, 0x4800_0000);
        // M[3:0] = 0b0101 (EL1h), DAIF all set.
        assert_eq!(r.pstate & 0xf, 0b0101);
        assert_eq!(r.pstate & 0x3c0, 0x3c0);
    }
}
