//! Guest CPUID: KVM's supported set with the topology rewritten so every
//! vCPU sees its own APIC ID and the right CPU count (one core per vCPU,
//! one thread per core, one package).

use crate::hv::CpuidEntry;

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
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

/// Bits of the APIC ID that number cores: ceil(log2(n)).
fn core_bits(n: u8) -> u32 {
    u32::from(n).next_power_of_two().trailing_zeros()
}

/// Rewrites `entries` (KVM's supported CPUID) for vCPU `apic_id` of `count`;
/// `tsc_deadline`: KVM has KVM_CAP_TSC_DEADLINE_TIMER.
pub fn for_vcpu(entries: &mut [CpuidEntry], apic_id: u8, count: u8, tsc_deadline: bool) {
    let id = u32::from(apic_id);
    let n = u32::from(count);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical CPUs per package.
                e.ebx = (e.ebx & 0xffff) | (id << 24) | ((n.min(255)) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26] cores per package - 1; EAX[25:14] logical CPUs
                // sharing this cache - 1 (L3 shared by all, others private).
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (sharing << 14);
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
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits(count);
                        e.ebx = n;
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
                if count > 1 {
                    e.ecx |= ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_TOPOLOGY => {
                // EAX extended APIC ID; EBX core ID (threads per core - 1 = 0
                // in bits 15:8); ECX node 0 of 1.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_AMD_SIZES => {
                // ECX[7:0] cores - 1, ECX[15:12] APIC ID bits for cores.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits(count) << 12) | (n - 1);
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
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((e[1].ebx, e[1].ecx >> 8, e[1].edx), (1, LEVEL_SMT, 2));
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx >> 8, e[2].edx),
            (2, 3, LEVEL_CORE, 2)
        );
        assert_eq!((e[3].ebx, e[3].ecx), (0, 2), "level 2 is invalid");
        assert_eq!(e[4].eax >> 26, 2);
        assert_eq!((e[4].eax >> 14) & 0xfff, 2);
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
}
