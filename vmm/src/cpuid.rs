//! Guest CPUID: KVM's supported set with the topology rewritten so every
//! vCPU sees its own APIC ID and the package layout of [`Topology`]
//! (sockets x cores x threads; [`Topology::flat`] is one package of
//! single-threaded cores). Leaf 1 counts logical CPUs per package as
//! QEMU 10 does; the cache leaves count addressable IDs (a field of 3
//! cores is 2 bits wide and counts as 4). Leaves 0xB/0x1F are written
//! whole (SMT, core, end) whenever KVM lists the leaf: on AMD hosts KVM
//! lists only subleaf 0.

use crate::hv::CpuidEntry;

use crate::boot::Topology;

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// CPUID.80000001h:ECX bit 1 (AMD CmpLegacy): more than one core.
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24: TSC-deadline LAPIC timer. KVM emulates it with an
/// in-kernel LAPIC but leaves it out of KVM_GET_SUPPORTED_CPUID; Linux
/// needs it to skip LAPIC timer calibration, which has no PIT to calibrate
/// against under hardware-reduced ACPI.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28: the package has more than one logical CPU.
const EDX_HTT: u32 = 1 << 28;

/// Topology level types for leaves 0xB / 0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Rewrites `entries` (KVM's supported CPUID) for vCPU `apic_id` of
/// `count` in one flat package; `tsc_deadline`: KVM has
/// KVM_CAP_TSC_DEADLINE_TIMER.
pub fn for_vcpu(entries: &mut Vec<CpuidEntry>, apic_id: u8, count: u8, tsc_deadline: bool) {
    for_vcpu_in(
        entries,
        u32::from(apic_id),
        &Topology::flat(count),
        tsc_deadline,
    );
}

/// Rewrites `entries` for the vCPU with `apic_id` (from
/// [`Topology::apic_id`]) in `topo`.
pub fn for_vcpu_in(
    entries: &mut Vec<CpuidEntry>,
    apic_id: u32,
    topo: &Topology,
    tsc_deadline: bool,
) {
    let id = apic_id;
    let thread_bits = topo.thread_bits();
    let shift = topo.package_shift();
    let per_package = topo.per_package();
    // Addressable IDs: per package, per core, and cores per package.
    let ids_package = 1u32 << shift;
    let ids_core = 1u32 << thread_bits;
    let ids_cores = 1u32 << topo.core_bits();
    let multi = per_package > 1;
    let socket = id >> shift;
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical CPUs in
                // the package (QEMU 10 reports the count, not the
                // addressable IDs).
                e.ebx = (e.ebx & 0xffff) | ((id & 0xff) << 24) | (per_package.min(255) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if multi {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Cache type 0: no more caches.
            LEAF_CACHE | LEAF_AMD_CACHE if e.eax & 0x1f != 0 => {
                // EAX[25:14] addressable IDs sharing this cache - 1 (L1, L2
                // per core, L3 per package); leaf 4's EAX[31:26]
                // addressable core IDs in the package - 1.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { ids_package } else { ids_core };
                e.eax = (e.eax & 0x3fff) | (((sharing - 1) & 0xfff) << 14);
                if e.function == LEAF_CACHE {
                    e.eax = (e.eax & 0x03ff_ffff) | (((ids_cores - 1) & 0x3f) << 26);
                } else {
                    e.eax &= 0x03ff_ffff;
                }
            }
            LEAF_PERFMON => {
                // No virtual PMU: guests must not program counters.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_FEATURES => {
                if multi {
                    e.ecx |= ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_TOPOLOGY => {
                // EAX extended APIC ID; EBX[7:0] core ID, EBX[15:8] threads
                // per core - 1; ECX[7:0] node ID (one node per socket),
                // ECX[10:8] nodes per socket - 1 = 0.
                e.eax = id;
                e.ebx =
                    ((id >> thread_bits) & 0xff) | (u32::from(topo.threads).saturating_sub(1) << 8);
                e.ecx = socket & 0xff;
                e.edx = 0;
            }
            LEAF_AMD_SIZES => {
                // ECX[7:0] logical CPUs per package - 1, ECX[15:12] APIC ID
                // bits below the package.
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | ((per_package - 1) & 0xff);
            }
            _ => {}
        }
    }
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        let Some(flags) = entries.iter().find(|e| e.function == leaf).map(|e| e.flags) else {
            continue;
        };
        entries.retain(|e| e.function != leaf);
        // Subleaf 0: threads of a core; 1: logical CPUs of the package;
        // 2: the end of the list. EAX: shift to the next level's ID.
        for (index, eax, ebx, level) in [
            (0, thread_bits, u32::from(topo.threads), LEVEL_SMT),
            (1, shift, per_package, LEVEL_CORE),
            (2, 0, 0, 0),
        ] {
            entries.push(CpuidEntry {
                function: leaf,
                index,
                flags,
                eax,
                ebx,
                ecx: (level << 8) | index,
                edx: id,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0x0000_0800,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    /// The entry for (function, index); panics if there is none.
    fn get(e: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
        *e.iter()
            .find(|x| x.function == function && x.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        let mut l3 = entry(4, 0);
        l3.eax = 3 << 5 | 0x3; // an L3 descriptor
        let null_cache = CpuidEntry {
            eax: 0,
            ..entry(4, 1)
        };
        // KVM on AMD lists leaf 0xB with subleaf 0 only.
        let mut e = vec![entry(1, 0), entry(0xb, 0), l3, null_cache, entry(0xa, 0)];
        e[1].flags = 1;
        for_vcpu(&mut e, 2, 3, true);
        let l1 = get(&e, 1, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 3, "logical CPUs, as QEMU 10");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        let b0 = get(&e, 0xb, 0);
        assert_eq!(
            (b0.eax, b0.ebx, b0.ecx, b0.edx, b0.flags),
            (0, 1, LEVEL_SMT << 8, 2, 1)
        );
        let b1 = get(&e, 0xb, 1);
        assert_eq!(
            (b1.eax, b1.ebx, b1.ecx, b1.edx, b1.flags),
            (2, 3, (LEVEL_CORE << 8) | 1, 2, 1),
            "subleaf 1 added"
        );
        let b2 = get(&e, 0xb, 2);
        assert_eq!((b2.ebx, b2.ecx), (0, 2), "level 2 is invalid");
        assert_eq!(e.iter().filter(|x| x.function == 0xb).count(), 3);
        assert!(!e.iter().any(|x| x.function == 0x1f), "0x1f only if listed");
        let c = get(&e, 4, 0);
        assert_eq!((c.eax >> 26, (c.eax >> 14) & 0xfff), (3, 3));
        assert_eq!(get(&e, 4, 1).eax, 0, "null cache descriptor left alone");
        assert_eq!(get(&e, 0xa, 0).eax, 0);
        let mut amd = vec![
            entry(0x8000_0001, 0),
            entry(0x8000_001e, 0),
            entry(0x8000_0008, 0),
        ];
        for_vcpu(&mut amd, 3, 4, false);
        assert_ne!(amd[0].ecx & ECX_CMP_LEGACY, 0);
        assert_eq!((amd[1].eax, amd[1].ebx, amd[1].ecx), (3, 3, 0));
        assert_eq!((amd[2].ecx & 0xff, (amd[2].ecx >> 12) & 0xf), (3, 2));
        let mut one = vec![entry(1, 0)];
        one[0].edx = EDX_HTT;
        for_vcpu(&mut one, 0, 1, false);
        assert_eq!(one[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(one[0].edx & EDX_HTT, 0);
        assert_eq!((one[0].ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn sockets_cores_threads() {
        // 2 sockets x 3 cores x 2 threads; vCPU 7 = socket 1, core 0,
        // thread 1: APIC ID (1 << 3) | 1 = 9.
        let topo = Topology {
            sockets: 2,
            cores: 3,
            threads: 2,
        };
        let id = topo.apic_id(7);
        assert_eq!(id, 9);
        let mut l1 = entry(4, 0);
        l1.eax = (1 << 5) | 1;
        let mut l3 = entry(4, 3);
        l3.eax = (3 << 5) | 3;
        let mut e = vec![
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x1f, 0),
            l1,
            l3,
            entry(0x8000_0001, 0),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ];
        for_vcpu_in(&mut e, id, &topo, false);
        let f = get(&e, 1, 0);
        assert_eq!(f.ebx >> 24, 9);
        assert_eq!((f.ebx >> 16) & 0xff, 6, "2 threads x 3 cores");
        assert_ne!(f.edx & EDX_HTT, 0);
        for leaf in [0xb, 0x1f] {
            let b0 = get(&e, leaf, 0);
            assert_eq!(
                (b0.eax, b0.ebx, b0.ecx, b0.edx),
                (1, 2, (LEVEL_SMT << 8), 9)
            );
            let b1 = get(&e, leaf, 1);
            assert_eq!(
                (b1.eax, b1.ebx, b1.ecx, b1.edx),
                (3, 6, (LEVEL_CORE << 8) | 1, 9)
            );
        }
        // L1 shared by the core's 2 threads, L3 by the package's 8 IDs;
        // 4 addressable cores.
        let c1 = get(&e, 4, 0);
        let c3 = get(&e, 4, 3);
        assert_eq!(((c1.eax >> 14) & 0xfff, c1.eax >> 26), (1, 3));
        assert_eq!(((c3.eax >> 14) & 0xfff, c3.eax >> 26), (7, 3));
        assert_eq!(c3.eax & 0x3fff, (3 << 5) | 3, "cache level kept");
        assert_ne!(get(&e, 0x8000_0001, 0).ecx & ECX_CMP_LEGACY, 0);
        let sizes = get(&e, 0x8000_0008, 0).ecx;
        assert_eq!((sizes & 0xff, (sizes >> 12) & 0xf), (5, 3));
        // AMD: core ID 4 (APIC ID >> 1), 2 threads per core, node 1.
        let t = get(&e, 0x8000_001e, 0);
        assert_eq!((t.eax, t.ebx, t.ecx), (9, 0x104, 1));
        // One socket of one core: no HTT, no CmpLegacy.
        let mut one = vec![entry(1, 0), entry(0x8000_0001, 0)];
        one[0].edx = EDX_HTT;
        one[1].ecx = ECX_CMP_LEGACY;
        let single = Topology {
            sockets: 4,
            cores: 1,
            threads: 1,
        };
        for_vcpu_in(&mut one, single.apic_id(3), &single, false);
        assert_eq!((one[0].edx & EDX_HTT, one[1].ecx & ECX_CMP_LEGACY), (0, 0));
        assert_eq!(one[0].ebx >> 24, 3);
    }
}
