//! Intel MultiProcessor Specification 1.4 table, so guests (Linux, the test
//! kernel) find every CPU, the ISA bus and the IOAPIC without ACPI.
//!
//! Layout at `base`: 16-byte floating pointer, then the configuration table
//! (header, one processor entry per vCPU, the ISA bus, the IOAPIC, one I/O
//! interrupt entry per IOAPIC pin, and the two local interrupt entries).

use super::Topology;
use crate::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// Family 6 CPU signature, FPU + APIC feature flags, as SeaBIOS reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the MP floating pointer plus configuration table for `cpus` CPUs
/// in one flat package, to be placed at guest-physical `base`.
pub fn build(base: u64, cpus: u8) -> Vec<u8> {
    build_for(base, &Topology::flat(cpus), cpus)
}

/// As [`build`], with the APIC IDs of `topo` (checked by the caller).
pub fn build_for(base: u64, topo: &Topology, cpus: u8) -> Vec<u8> {
    let table_addr = (base + 16) as u32;
    let ioapic_id = topo.ioapic_id(cpus);

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for (index, id) in topo.apic_ids8(cpus).into_iter().enumerate() {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION]);
        entries.push(CPU_ENABLED | if index == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ n is IOAPIC pin n, except that the PIT (IRQ 0) is wired to
        // pin 2 as on PC hardware; pin 0 carries the 8259's ExtINT.
        let (kind, src_irq) = match pin {
            0 => (INT_TYPE_EXTINT, 0),
            2 => (INT_TYPE_INT, 0),
            p => (INT_TYPE_INT, p),
        };
        entries.extend_from_slice(&[ENTRY_IOINT, kind, 0, 0, ISA_BUS_ID, src_irq, ioapic_id, pin]);
        count += 1;
    }
    // LINT0: ExtINT, LINT1: NMI, on every local APIC (0xff).
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"SHMVM   ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp[..16]);
    fp.extend_from_slice(&table);
    fp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_entry_counts() {
        let base = crate::layout::MPTABLE;
        let t = build(base, 2);
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()),
            base as u32 + 16
        );
        let cfg = &t[16..];
        assert_eq!(&cfg[..4], b"PCMP");
        let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
        assert_eq!(len, cfg.len());
        assert_eq!(sum(cfg), 0);
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // processor entries: APIC IDs 0, 1; only the first is the BSP.
        assert_eq!(
            (cfg[44], cfg[45], cfg[47]),
            (ENTRY_PROCESSOR, 0, CPU_ENABLED | CPU_BSP)
        );
        assert_eq!(
            (cfg[64], cfg[65], cfg[67]),
            (ENTRY_PROCESSOR, 1, CPU_ENABLED)
        );
        assert_eq!(len, 44 + 2 * 20 + 8 + 8 + 24 * 8 + 2 * 8);
        let max = build(crate::layout::MPTABLE, crate::config::MAX_VCPUS);
        assert!(crate::layout::MPTABLE + max.len() as u64 <= crate::layout::HIMEM);
    }

    #[test]
    fn topology_apic_ids_and_ioapic_after_them() {
        let topo = Topology {
            sockets: 2,
            cores: 3,
            threads: 1,
        };
        let t = build_for(crate::layout::MPTABLE, &topo, 6);
        let cfg = &t[16..];
        assert_eq!(sum(cfg), 0);
        let ids: Vec<u8> = (0..6).map(|i| cfg[44 + 20 * i + 1]).collect();
        assert_eq!(ids, vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(cfg[44 + 20 * 5 + 3], CPU_ENABLED);
        // Bus entry (8 bytes), then the IOAPIC with ID 7.
        let ioapic = 44 + 20 * 6 + 8;
        assert_eq!((cfg[ioapic], cfg[ioapic + 1]), (ENTRY_IOAPIC, 7));
        assert_eq!(cfg[ioapic + 8 + 6], 7, "I/O interrupts name the IOAPIC");
    }
}
