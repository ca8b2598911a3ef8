//! ACPI tables for a hardware-reduced platform (ACPI 6.x): RSDP, XSDT, FADT,
//! MADT and a DSDT with the PCI host bridge and the `\_S5` sleep state, so a
//! stock Linux guest finds every CPU, the PCI bus, and can power off
//! (`poweroff` -> sleep control register -> VM ends with 0) and reboot
//! (FADT reset register -> i8042 reset -> VM ends with 0).
//!
//! The tables sit in the BIOS area (reserved in the memory map), where
//! guests also scan for the RSDP; PVH and the Linux zero page get its
//! address directly too.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};

use super::Topology;
use crate::layout::{
    ACPI_SLEEP_PORT, COM1_IRQ, COM1_PORT, I8042_PORT, IOAPIC_ADDR, LAPIC_ADDR, PCI_CONFIG_PORT,
    PCI_CONFIG_PORTS, PCI_IO_END, PCI_IO_START, PCI_MMIO32_END, PCI_MMIO32_START,
};

const OEM_ID: [u8; 6] = *b"SHMVM ";
const OEM_TABLE_ID: [u8; 8] = *b"SHMVMACP";
const OEM_REVISION: u32 = 1;
/// Length of the common table header.
const HEADER_LEN: u32 = 36;

/// The bytes of an ACPI object.
fn bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

/// AML already encoded (so objects built from temporaries can be nested).
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// Generic Address Structure for a byte-wide I/O port.
fn gas_io(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn fadt(dsdt: u64) -> Vec<u8> {
    /// IA-PC boot flags: no VGA, no CMOS RTC (no i8042 claimed either, so
    /// Linux does not probe for a keyboard; its reset still works).
    const BOOT_VGA_NOT_PRESENT: u16 = 1 << 2;
    const BOOT_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    /// i8042 command: pulse the CPU reset line.
    const I8042_RESET: u8 = 0xfe;
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::ResetRegSup)
        .flag(Flags::HwReducedAcpi);
    f.dsdt = u32::try_from(dsdt).unwrap_or(0).into();
    f.iapc_boot_arch = (BOOT_VGA_NOT_PRESENT | BOOT_CMOS_RTC_NOT_PRESENT).into();
    // Reset register: the i8042 command port.
    f.reset_reg = gas_io(I8042_PORT + 4);
    f.reset_value = I8042_RESET;
    f.fadt_minor_version = 0;
    f.sleep_control_reg = gas_io(ACPI_SLEEP_PORT);
    f.sleep_status_reg = gas_io(ACPI_SLEEP_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"SHMVM\0\0\0").into();
    bytes(&f.finalize())
}

/// MADT Interrupt Source Override (type 2), flags 0 (conforming).
struct SourceOverride {
    isa_irq: u8,
    gsi: u32,
}

impl Aml for SourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&[2, 10, 0, self.isa_irq]);
        sink.dword(self.gsi);
        sink.word(0);
    }
}

/// MADT Local APIC NMI (type 4) on LINT`lint` of processor `uid` (0xff:
/// all), flags 0 (conforming).
struct LocalApicNmi {
    uid: u8,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&[4, 6, self.uid, 0, 0, self.lint]);
    }
}

/// The MADT, through the crate's generic table (its `MADT` type fixes the
/// flags at 0, and shmvm declares the 8259 pair, PCAT_COMPAT).
fn madt(topo: &Topology, cpus: u8) -> Vec<u8> {
    const REVISION: u8 = 5;
    const PCAT_COMPAT: u32 = 1;
    let mut t = Sdt::new(
        *b"APIC",
        HEADER_LEN + 8,
        REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, LAPIC_ADDR as u32);
    t.write_u32(40, PCAT_COMPAT);
    for (uid, id) in (0..cpus).zip(topo.apic_ids8(cpus)) {
        // UID is the vCPU index.
        t.append_slice(&bytes(&ProcessorLocalApic::new(
            uid,
            id,
            EnabledStatus::Enabled,
        )));
    }
    // IOAPIC: ID after the CPUs, GSI base 0.
    t.append_slice(&bytes(&IoApic::new(
        topo.ioapic_id(cpus),
        IOAPIC_ADDR as u32,
        0,
    )));
    // ISA IRQ 0 (PIT) is GSI 2, as in the MP table.
    t.append_slice(&bytes(&SourceOverride { isa_irq: 0, gsi: 2 }));
    t.append_slice(&bytes(&LocalApicNmi { uid: 0xff, lint: 1 }));
    t.as_slice().to_vec()
}

/// `IRQNoFlags () {irq}`: the small IRQ descriptor (edge, active high,
/// exclusive), which the crate does not have (only the extended one).
struct IrqNoFlags(u32);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22);
        sink.word(1u16 << self.0);
    }
}

fn dsdt(mmio64: (u64, u64)) -> Vec<u8> {
    // The PCI host bridge's resources: bus 0, the config ports, the I/O
    // and memory windows BARs are placed in.
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let config = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS as u8);
    let io = AddressSpace::new_io(PCI_IO_START as u16, (PCI_IO_END - 1) as u16, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (PCI_MMIO32_END - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64.0,
        mmio64.1 - 1,
        None,
    );
    let pci_crs = aml::ResourceTemplate::new(vec![&bus, &config, &io, &mmio32, &mmio64]);
    let pci_hid = aml::EISAName::new("PNP0A03");
    let pci = Encoded(bytes(&aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &pci_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &pci_crs),
        ],
    )));
    // COM1: the 16550 at 0x3f8 with ISA IRQ 4. A hardware-reduced platform
    // has no legacy PIC, so Linux sets up no ISA IRQ mappings and the
    // legacy 8250 probe cannot get IRQ 4: its tty then never transmits
    // (user space console output is lost; the polled kernel console still
    // works). Declared here, Linux's 8250_pnp maps the IRQ through the
    // IOAPIC.
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = IrqNoFlags(COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1 = Encoded(bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )));
    let sb = aml::Scope::new("\\_SB_".into(), vec![&pci, &com1]);
    // Name(\_S5, Package(4) { 5, 5, 0, 0 })
    let s5 = devices::acpi_pm::S5_SLEEP_TYPE;
    let s5_pkg = aml::Package::new(vec![&s5, &s5, &0u8, &0u8]);
    let s5 = aml::Name::new("_S5_".into(), &s5_pkg);
    let mut t = Sdt::new(*b"DSDT", HEADER_LEN, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&bytes(&sb));
    t.append_slice(&bytes(&s5));
    t.as_slice().to_vec()
}

/// All tables laid out from `base` for `cpus` CPUs in one flat package;
/// returns the bytes to write at `base` (the RSDP first, so `base` is the
/// RSDP address).
pub fn build(base: u64, cpus: u8, mmio64: (u64, u64)) -> Vec<u8> {
    build_for(base, &Topology::flat(cpus), cpus, mmio64)
}

/// As [`build`], with the APIC IDs of `topo` (checked by the caller).
pub fn build_for(base: u64, topo: &Topology, cpus: u8, mmio64: (u64, u64)) -> Vec<u8> {
    let align = |n: usize| n.next_multiple_of(16) as u64;
    let xsdt_at = base + align(Rsdp::len());
    let xsdt_len = HEADER_LEN as usize + 3 * 8;
    let fadt_at = xsdt_at + align(xsdt_len);
    let madt_at = fadt_at + align(acpi_tables::fadt::FADT::len());
    let madt = madt(topo, cpus);
    let dsdt_at = madt_at + align(madt.len());
    let dsdt = dsdt(mmio64);
    // The power button (ACPI GED), a table of its own.
    let ssdt_at = dsdt_at + align(dsdt.len());
    let ssdt = super::power_button::ssdt(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let fadt = fadt(dsdt_at);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    xsdt.add_entry(ssdt_at);
    let xsdt = bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_at));

    let mut out = Vec::new();
    for (at, table) in [
        (base, &rsdp),
        (xsdt_at, &xsdt),
        (fadt_at, &fadt),
        (madt_at, &madt),
        (dsdt_at, &dsdt),
        (ssdt_at, &ssdt),
    ] {
        out.resize((at - base) as usize, 0);
        out.extend_from_slice(table);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xe_0000;
    const MMIO64: (u64, u64) = (1 << 32, (1 << 32) + (64 << 30));

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The table at guest address `addr` within `all` (laid out at BASE).
    fn table(all: &[u8], addr: u64) -> &[u8] {
        let off = (addr - BASE) as usize;
        let len = u32_at(all, off + 4) as usize;
        &all[off..off + len]
    }

    #[test]
    fn tables_chain_and_checksum() {
        let all = build(BASE, 2, MMIO64);
        assert_eq!(&all[..8], b"RSD PTR ");
        assert_eq!(sum(&all[..20]), 0);
        assert_eq!(sum(&all[..36]), 0);
        let xsdt = table(&all, u64_at(&all, 24));
        assert_eq!((&xsdt[..4], sum(xsdt)), (&b"XSDT"[..], 0));
        let fadt = table(&all, u64_at(xsdt, 36));
        let madt = table(&all, u64_at(xsdt, 44));
        assert_eq!((&fadt[..4], fadt.len(), sum(fadt)), (&b"FACP"[..], 276, 0));
        assert_eq!((&madt[..4], sum(madt)), (&b"APIC"[..], 0));
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "hardware reduced");
        let dsdt = table(&all, u64_at(fadt, 140));
        assert_eq!((&dsdt[..4], sum(dsdt)), (&b"DSDT"[..], 0));
        // Two processor entries with APIC IDs 0 and 1, then the IOAPIC.
        assert_eq!(&madt[44..48], &[0, 8, 0, 0]);
        assert_eq!(&madt[52..56], &[0, 8, 1, 1]);
        assert_eq!(&madt[60..64], &[1, 12, 2, 0]);
        // The sleep registers name the sleep port.
        assert_eq!(u64_at(fadt, 248), u64::from(ACPI_SLEEP_PORT));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
    }

    #[test]
    fn madt_uses_topology_apic_ids() {
        let topo = Topology {
            sockets: 1,
            cores: 3,
            threads: 2,
        };
        let all = build_for(BASE, &topo, 6, MMIO64);
        let xsdt = table(&all, u64_at(&all, 24));
        let madt = table(&all, u64_at(xsdt, 44));
        assert_eq!(sum(madt), 0);
        let ids: Vec<(u8, u8)> = (0..6)
            .map(|i| (madt[46 + 8 * i], madt[47 + 8 * i]))
            .collect();
        assert_eq!(ids, vec![(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        let topo = Topology {
            sockets: 2,
            cores: 3,
            threads: 1,
        };
        let all = build_for(BASE, &topo, 6, MMIO64);
        let xsdt = table(&all, u64_at(&all, 24));
        let madt = table(&all, u64_at(xsdt, 44));
        let ids: Vec<u8> = (0..6).map(|i| madt[47 + 8 * i]).collect();
        assert_eq!(ids, vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(&madt[44 + 48..44 + 52], &[1, 12, 7, 0], "IOAPIC ID 7");
    }

    /// Disassembles the DSDT with ACPICA's iasl (installed by `make deps`):
    /// the AML must decode to the intended objects without errors.
    #[test]
    fn dsdt_disassembles_with_iasl() {
        let which = std::process::Command::new("iasl").arg("-v").output();
        assert!(
            which.is_ok(),
            "this test needs iasl (apt-get install acpica-tools; `make deps`)"
        );
        let dir = std::env::temp_dir().join(format!("shmvm-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let all = build(BASE, 2, MMIO64);
        let xsdt = table(&all, u64_at(&all, 24));
        let fadt = table(&all, u64_at(xsdt, 36));
        let dsdt = table(&all, u64_at(fadt, 140));
        let f = dir.join("dsdt.aml");
        std::fs::write(&f, dsdt).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&f)
            .output()
            .unwrap();
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
        if std::env::var_os("SHMVM_KEEP_ACPI").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "Device (PCI0)",
            "EisaId (\"PNP0A03\")",
            "WordBusNumber",
            "0x0CF8",
            "0xC0000000",
            "0xFEBFFFFF",
            "QWordMemory",
            "0x0000000100000000",
            "Name (_S5, Package (0x04)",
            "Device (COM1)",
            "EisaId (\"PNP0501\")",
            "IRQNoFlags ()",
            "{4}",
        ] {
            assert!(dsl.contains(want), "missing {want:?} in\n{dsl}");
        }
    }
}
