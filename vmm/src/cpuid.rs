//! Guest CPUID: KVM's supported set with the topology rewritten so every
//! vCPU sees its own APIC ID and the package layout of [`Topology`]
//! (sockets x cores x threads; [`Topology::flat`] is one package of
//! single-threaded cores). Counts follow the SDM's "maximum addressable
//! IDs" meaning, as QEMU reports them: a field of 3 cores is 2 bits wide
//! and counts as 4.

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
pub fn for_vcpu(entries: &mut [CpuidEntry], apic_id: u8, count: u8, tsc_deadline: bool) {
    for_vcpu_in(
        entries,
        u32::from(apic_id),
        &Topology::flat(count),
        tsc_deadline,
    );
}

/// Rewrites `entries` for the vCPU with `apic_id` (from
/// [`Topology::apic_id`]) in `topo`.
pub fn for_vcpu_in(entries: &mut [CpuidEntry], apic_id: u32, topo: &Topology, tsc_deadline: bool) {
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
                // EBX[31:24] initial APIC ID, EBX[23:16] addressable IDs
                // for logical CPUs in the package.
                e.ebx = (e.ebx & 0xffff) | ((id & 0xff) << 24) | (ids_package.min(255) << 16);
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
            LEAF_CACHE | LEAF_AMD_CACHE => {
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
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = thread_bits;
                        e.ebx = u32::from(topo.threads);
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = per_package;
                        e.ecx = (LEVEL_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
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

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        let mut e = vec![
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(4, 0),
            entry(0xa, 0),
        ];
        e[4].eax = 3 << 5 | 0x3; // an L3 descriptor
        for_vcpu(&mut e, 2, 3, true);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!(
            (e[0].ebx >> 16) & 0xff,
            4,
            "addressable IDs: 3 cores use 2 bits"
        );
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((e[1].ebx, e[1].ecx >> 8, e[1].edx), (1, LEVEL_SMT, 2));
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx >> 8, e[2].edx),
            (2, 3, LEVEL_CORE, 2)
        );
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2), "level 2 is invalid");
        assert_eq!(e[4].eax >> 26, 3);
        assert_eq!((e[4].eax >> 14) & 0xfff, 3);
        assert_eq!(e[5].eax, 0);
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
            entry(0x1f, 1),
            l1,
            l3,
            entry(0x8000_0001, 0),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ];
        for_vcpu_in(&mut e, id, &topo, false);
        assert_eq!(e[0].ebx >> 24, 9);
        assert_eq!((e[0].ebx >> 16) & 0xff, 8, "1 thread bit + 2 core bits");
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(
            (e[1].eax, e[1].ebx, e[1].ecx, e[1].edx),
            (1, 2, (LEVEL_SMT << 8), 9)
        );
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx, e[2].edx),
            (3, 6, (LEVEL_CORE << 8) | 1, 9)
        );
        assert_eq!((e[3].eax, e[3].ebx), (3, 6), "leaf 0x1f as 0xb");
        // L1 shared by the core's 2 threads, L3 by the package's 8 IDs;
        // 4 addressable cores.
        assert_eq!(((e[4].eax >> 14) & 0xfff, e[4].eax >> 26), (1, 3));
        assert_eq!(((e[5].eax >> 14) & 0xfff, e[5].eax >> 26), (7, 3));
        assert_eq!(e[5].eax & 0x3fff, (3 << 5) | 3, "cache level kept");
        assert_ne!(e[6].ecx & ECX_CMP_LEGACY, 0);
        assert_eq!((e[7].ecx & 0xff, (e[7].ecx >> 12) & 0xf), (5, 3));
        // AMD: core ID 4 (APIC ID >> 1), 2 threads per core, node 1.
        assert_eq!((e[8].eax, e[8].ebx, e[8].ecx), (9, 0x104, 1));
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
