//! ACPI tables for a hardware-reduced platform (ACPI 6.x): RSDP, XSDT, FADT,
//! MADT and a DSDT with the PCI host bridge and the `\_S5` sleep state, so a
//! stock Linux guest finds every CPU, the PCI bus, and can power off
//! (`poweroff` -> sleep control register -> VM ends with 0) and reboot
//! (FADT reset register -> i8042 reset -> VM ends with 0).
//!
//! The tables sit in the BIOS area (reserved in the memory map), where
//! guests also scan for the RSDP; PVH and the Linux zero page get its
//! address directly too.

use super::Topology;
use crate::layout::{
    ACPI_SLEEP_PORT, COM1_IRQ, COM1_PORT, I8042_PORT, IOAPIC_ADDR, LAPIC_ADDR, PCI_CONFIG_PORT,
    PCI_CONFIG_PORTS, PCI_IO_END, PCI_IO_START, PCI_MMIO32_END, PCI_MMIO32_START,
};

const OEM_ID: &[u8; 6] = b"SHMVM ";
const OEM_TABLE_ID: &[u8; 8] = b"SHMVMACP";
const CREATOR_ID: &[u8; 4] = b"SHMV";

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A table with the common 36-byte header; the length and checksum are
/// filled in by [`finish`].
fn header(signature: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(64);
    t.extend_from_slice(signature);
    t.extend_from_slice(&0u32.to_le_bytes()); // length
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = checksum(&t);
    t
}

/// Generic Address Structure for a byte-wide I/O port.
fn gas_io(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(dsdt: u64) -> Vec<u8> {
    const FLAG_RESET_REG_SUP: u32 = 1 << 10;
    const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
    /// IA-PC boot flags: no VGA, no CMOS RTC (no i8042 claimed either, so
    /// Linux does not probe for a keyboard; its reset still works).
    const BOOT_VGA_NOT_PRESENT: u16 = 1 << 2;
    const BOOT_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    let mut t = header(b"FACP", 6);
    t.resize(276, 0);
    t[40..44].copy_from_slice(&(dsdt as u32).to_le_bytes());
    t[109..111].copy_from_slice(&(BOOT_VGA_NOT_PRESENT | BOOT_CMOS_RTC_NOT_PRESENT).to_le_bytes());
    t[112..116].copy_from_slice(&(FLAG_RESET_REG_SUP | FLAG_HW_REDUCED_ACPI).to_le_bytes());
    // Reset register: the i8042 command port, value 0xfe (CPU reset).
    t[116..128].copy_from_slice(&gas_io(I8042_PORT + 4));
    t[128] = 0xfe;
    t[131] = 0; // FADT minor version (6.0)
    t[140..148].copy_from_slice(&dsdt.to_le_bytes());
    t[244..256].copy_from_slice(&gas_io(ACPI_SLEEP_PORT));
    t[256..268].copy_from_slice(&gas_io(ACPI_SLEEP_PORT));
    t[268..276].copy_from_slice(b"SHMVM\0\0\0");
    finish(t)
}

fn madt(topo: &Topology, cpus: u8) -> Vec<u8> {
    const PCAT_COMPAT: u32 = 1;
    let mut t = header(b"APIC", 5);
    t.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&PCAT_COMPAT.to_le_bytes());
    for (uid, id) in (0..cpus).zip(topo.apic_ids8(cpus)) {
        // Processor local APIC: UID (the vCPU index), APIC ID, enabled.
        t.extend_from_slice(&[0, 8, uid, id]);
        t.extend_from_slice(&1u32.to_le_bytes());
    }
    // IOAPIC: ID after the CPUs, address, GSI base 0.
    t.extend_from_slice(&[1, 12, topo.ioapic_id(cpus), 0]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override: ISA IRQ 0 (PIT) is GSI 2, as in the MP table.
    t.extend_from_slice(&[2, 10, 0, 0]);
    t.extend_from_slice(&2u32.to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes());
    // Local APIC NMI on LINT1 of every processor.
    t.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    finish(t)
}

/// AML PkgLength for `content` bytes following it.
fn pkg_length(content: usize) -> Vec<u8> {
    if content + 1 < 0x40 {
        vec![(content + 1) as u8]
    } else if content + 2 < 0x1000 {
        let n = content + 2;
        vec![0x40 | (n & 0xf) as u8, (n >> 4) as u8]
    } else {
        let n = content + 3;
        vec![0x80 | (n & 0xf) as u8, (n >> 4) as u8, (n >> 12) as u8]
    }
}

/// `Name(NAME, <object>)`
fn aml_name(name: &[u8; 4], object: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(name);
    v.extend_from_slice(object);
    v
}

/// A length-prefixed AML object: `op PkgLength body`.
fn aml_pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    v.extend(pkg_length(body.len()));
    v.extend_from_slice(body);
    v
}

/// Word/DWord/QWord address space descriptors (producer, fixed min/max).
fn addr_space(tag: u8, kind: u8, type_flags: u8, min: u64, max: u64, width: usize) -> Vec<u8> {
    let len = max - min + 1;
    let mut body = vec![kind, 0x0c, type_flags];
    for v in [0, min, max, 0, len] {
        body.extend_from_slice(&v.to_le_bytes()[..width]);
    }
    let mut d = vec![tag];
    d.extend_from_slice(&(body.len() as u16).to_le_bytes());
    d.extend(body);
    d
}

/// The PCI host bridge's resources: bus 0, the config ports, the I/O and
/// memory windows BARs are placed in.
fn pci_crs(mmio64: (u64, u64)) -> Vec<u8> {
    const WORD: u8 = 0x88;
    const DWORD: u8 = 0x87;
    const QWORD: u8 = 0x8a;
    const MEM: u8 = 0;
    const IO: u8 = 1;
    const BUS: u8 = 2;
    const IO_ENTIRE_RANGE: u8 = 3;
    const MEM_READ_WRITE: u8 = 1;
    let mut r = addr_space(WORD, BUS, 0, 0, 0, 2);
    let cf8 = PCI_CONFIG_PORT.to_le_bytes();
    r.extend_from_slice(&[
        0x47,
        1,
        cf8[0],
        cf8[1],
        cf8[0],
        cf8[1],
        1,
        PCI_CONFIG_PORTS as u8,
    ]);
    r.extend(addr_space(
        WORD,
        IO,
        IO_ENTIRE_RANGE,
        PCI_IO_START,
        PCI_IO_END - 1,
        2,
    ));
    r.extend(addr_space(
        DWORD,
        MEM,
        MEM_READ_WRITE,
        PCI_MMIO32_START,
        PCI_MMIO32_END - 1,
        4,
    ));
    r.extend(addr_space(
        QWORD,
        MEM,
        MEM_READ_WRITE,
        mmio64.0,
        mmio64.1 - 1,
        8,
    ));
    r.extend_from_slice(&[0x79, 0]); // end tag
    // Buffer(size) { bytes }
    let mut size = vec![0x0b];
    size.extend_from_slice(&(r.len() as u16).to_le_bytes());
    size.extend(r);
    aml_pkg(&[0x11], &size)
}

/// `Device(COM1)`: the 16550 at 0x3f8 with ISA IRQ 4. A hardware-reduced
/// platform has no legacy PIC, so Linux sets up no ISA IRQ mappings and the
/// legacy 8250 probe cannot get IRQ 4: its tty then never transmits (user
/// space console output is lost; the polled kernel console still works).
/// Declared here, Linux's 8250_pnp maps the IRQ through the IOAPIC.
fn com1() -> Vec<u8> {
    let port = COM1_PORT.to_le_bytes();
    let irq_mask = (1u16 << COM1_IRQ).to_le_bytes();
    let crs = [
        // IO(Decode16, port, port, 1, 8)
        0x47,
        1,
        port[0],
        port[1],
        port[0],
        port[1],
        1,
        8,
        // IRQNoFlags() {4}: edge, active high, exclusive
        0x22,
        irq_mask[0],
        irq_mask[1],
        0x79,
        0, // end tag
    ];
    let mut buf = vec![0x0a, crs.len() as u8]; // BufferSize as a ByteConst
    buf.extend_from_slice(&crs);
    let mut dev = b"COM1".to_vec();
    dev.extend(aml_name(b"_HID", &[0x0c, 0x41, 0xd0, 0x05, 0x01])); // EisaId("PNP0501")
    dev.extend(aml_name(b"_UID", &[0x00]));
    dev.extend(aml_name(b"_CRS", &aml_pkg(&[0x11], &buf)));
    aml_pkg(&[0x5b, 0x82], &dev)
}

fn dsdt(mmio64: (u64, u64)) -> Vec<u8> {
    let mut pci = Vec::new();
    pci.extend_from_slice(b"PCI0");
    pci.extend(aml_name(b"_HID", &[0x0c, 0x41, 0xd0, 0x0a, 0x03])); // EisaId("PNP0A03")
    pci.extend(aml_name(b"_UID", &[0x00]));
    pci.extend(aml_name(b"_SEG", &[0x00]));
    pci.extend(aml_name(b"_BBN", &[0x00]));
    pci.extend(aml_name(b"_CRS", &pci_crs(mmio64)));
    let device = aml_pkg(&[0x5b, 0x82], &pci);
    let mut sb = b"\\_SB_".to_vec();
    sb.extend(device);
    sb.extend(com1());
    let mut t = header(b"DSDT", 2);
    t.extend(aml_pkg(&[0x10], &sb));
    // Name(\_S5, Package(4) { 5, 5, 0, 0 })
    let s5 = devices::acpi_pm::S5_SLEEP_TYPE;
    let pkg = aml_pkg(&[0x12], &[4, 0x0a, s5, 0x0a, s5, 0, 0]);
    t.extend(aml_name(b"_S5_", &pkg));
    finish(t)
}

/// All tables laid out from `base` for `cpus` CPUs in one flat package;
/// returns the bytes to write at `base` (the RSDP first, so `base` is the
/// RSDP address).
pub fn build(base: u64, cpus: u8, mmio64: (u64, u64)) -> Vec<u8> {
    build_for(base, &Topology::flat(cpus), cpus, mmio64)
}

/// As [`build`], with the APIC IDs of `topo` (checked by the caller).
pub fn build_for(base: u64, topo: &Topology, cpus: u8, mmio64: (u64, u64)) -> Vec<u8> {
    const RSDP_LEN: usize = 36;
    let align = |n: usize| n.next_multiple_of(16);
    let xsdt_at = base + align(RSDP_LEN) as u64;
    let xsdt_len = 36 + 2 * 8;
    let fadt_at = xsdt_at + align(xsdt_len) as u64;
    let madt_at = fadt_at + align(276) as u64;
    let madt = madt(topo, cpus);
    let dsdt_at = madt_at + align(madt.len()) as u64;
    let dsdt = dsdt(mmio64);
    let fadt = fadt(dsdt_at);
    let mut xsdt = header(b"XSDT", 1);
    xsdt.extend_from_slice(&fadt_at.to_le_bytes());
    xsdt.extend_from_slice(&madt_at.to_le_bytes());
    let xsdt = finish(xsdt);

    let mut rsdp = Vec::with_capacity(RSDP_LEN);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum of the first 20 bytes
    rsdp.extend_from_slice(OEM_ID);
    rsdp.push(2); // revision: ACPI 2.0+
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    rsdp.extend_from_slice(&xsdt_at.to_le_bytes());
    rsdp.extend_from_slice(&[0, 0, 0, 0]); // extended checksum, reserved
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);

    let mut out = Vec::new();
    for (at, table) in [
        (base, &rsdp),
        (xsdt_at, &xsdt),
        (fadt_at, &fadt),
        (madt_at, &madt),
        (dsdt_at, &dsdt),
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

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(10), vec![11]);
        assert_eq!(pkg_length(62), vec![63]);
        assert_eq!(pkg_length(63), vec![0x41, 0x04]); // 65 = 0x41
        assert_eq!(pkg_length(0x1000), vec![0x83, 0x00, 0x01]);
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
