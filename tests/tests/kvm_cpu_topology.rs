//! The CPU topology a guest reads from CPUID on vCPU 0, under shmvm and
//! QEMU 10 (microvm, `-cpu host`) with the same `-smp`: the topology
//! leaves (1, 0xB) must agree. A 32-bit PVH kernel generated here prints
//! the registers and exits through isa-debug-exit.
//!
//! Needs /dev/kvm and `qemu-system-x86_64` (`make deps`).

mod guest32;

use guest32::{Item, elf32, qemu, report_program, shmvm};
use shmvm_tests::harness::{TempDir, require_kvm};

const EBX: u8 = 1;
const EAX: u8 = 0;
const ECX: u8 = 2;
const EDX: u8 = 3;

const ITEMS: &[Item] = &[
    Item::Cpuid("leaf1_ebx", 1, 0, EBX),
    Item::Cpuid("leaf1_edx", 1, 0, EDX),
    Item::Cpuid("leafb0_eax", 0xb, 0, EAX),
    Item::Cpuid("leafb0_ebx", 0xb, 0, EBX),
    Item::Cpuid("leafb0_ecx", 0xb, 0, ECX),
    Item::Cpuid("leafb1_eax", 0xb, 1, EAX),
    Item::Cpuid("leafb1_ebx", 0xb, 1, EBX),
    Item::Cpuid("leafb1_ecx", 0xb, 1, ECX),
    Item::Cpuid("leafb_x2apic", 0xb, 0, EDX),
];

/// CPUID.1:EDX bit 28 (HTT). (On the PVM host the guest sees it set even
/// with one CPU, under both VMMs.)
const HTT: u32 = 1 << 28;

/// The kernel that reports [`ITEMS`], written into `dir`.
fn cpuid_kernel(dir: &TempDir) -> std::path::PathBuf {
    let k = dir.0.join("cpuid.elf");
    let code = report_program(0x10_0000, ITEMS);
    let len = code.len() as u32;
    std::fs::write(
        &k,
        elf32(&[(code, 0x10_0000, len)], 0x10_0000, Some(0x10_0000)),
    )
    .expect("write kernel");
    k
}

#[test]
fn kvm_flat_smp_cpuid_topology_matches_qemu() {
    require_kvm();
    let dir = TempDir::new("cpuid");
    let k = cpuid_kernel(&dir);
    for smp in ["1", "3", "4"] {
        let args = ["-smp", smp];
        let ours = shmvm(&k, &args);
        let theirs = qemu(&k, &args);
        ours.assert_exit_33("shmvm");
        theirs.assert_exit_33("qemu");
        let n: u32 = smp.parse().unwrap_or(1);
        // Leaf 1: APIC ID 0 and, with HTT, the logical CPUs in the
        // package (QEMU 10 leaves the count 0 for one CPU, shmvm says 1).
        let ebx = ours.hex("leaf1_ebx");
        assert_eq!((ebx >> 24, (ebx >> 16) & 0xff), (0, n), "-smp {smp}");
        // Leaf 0xB: SMT level of 1 thread, core level of n cores (KVM on
        // AMD hosts lists only subleaf 0: shmvm writes the rest).
        assert_eq!(
            (ours.hex("leafb0_ebx"), ours.hex("leafb1_ebx")),
            (1, n),
            "-smp {smp}: {ours:#?}"
        );
        for key in [
            "leafb0_eax",
            "leafb0_ebx",
            "leafb0_ecx",
            "leafb1_eax",
            "leafb1_ebx",
            "leafb1_ecx",
            "leafb_x2apic",
        ] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "-smp {smp} {key}: {theirs:#?}"
            );
        }
        if n > 1 {
            let mask = |v: u32| v & 0xffff_0000;
            assert_eq!(
                mask(ours.hex("leaf1_ebx")),
                mask(theirs.hex("leaf1_ebx")),
                "-smp {smp} leaf 1 EBX[31:16]"
            );
        }
        assert_eq!(
            ours.hex("leaf1_edx") & HTT,
            theirs.hex("leaf1_edx") & HTT,
            "-smp {smp} HTT"
        );
    }
}

/// `-smp` with sockets, cores and threads, wired from the command line
/// through the APIC IDs to CPUID: leaf 0xB's shifts and counts per level
/// and leaf 1's count agree with QEMU's.
#[test]
fn kvm_smp_topology_from_the_command_line_matches_qemu() {
    require_kvm();
    let dir = TempDir::new("cpuid-topo");
    let k = cpuid_kernel(&dir);
    for (smp, threads, per_package) in [
        ("4,sockets=2,cores=2,threads=1", 1, 2),
        ("8,sockets=2,cores=2,threads=2", 2, 4),
        ("6,sockets=1,cores=3,threads=2", 2, 6),
    ] {
        let args = ["-smp", smp];
        let ours = shmvm(&k, &args);
        let theirs = qemu(&k, &args);
        ours.assert_exit_33("shmvm");
        theirs.assert_exit_33("qemu");
        assert_eq!(
            (ours.hex("leafb0_ebx"), ours.hex("leafb1_ebx")),
            (threads, per_package),
            "-smp {smp}: {ours:#?}"
        );
        for key in ["leafb0_eax", "leafb0_ebx", "leafb1_eax", "leafb1_ebx"] {
            assert_eq!(
                ours.get(key),
                theirs.get(key),
                "-smp {smp} {key}: {theirs:#?}"
            );
        }
    }
}
