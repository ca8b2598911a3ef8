//! Peak RSS does not depend on where the kernel is linked: guest RAM is
//! advised MADV_HUGEPAGE, and the VMM writing a kernel at 2 MiB and 4 MiB
//! used to fault a 2 MiB transparent huge page around each segment (~4 MiB
//! more peak RSS than the same kernel at 1 MiB). Both kernels here are
//! 32-bit PVH ELFs generated in the test that exit at once through
//! isa-debug-exit; the peak RSS comes from `/usr/bin/time` (a child forked
//! from this test process would count the test's own pages).
//!
//! Needs /dev/kvm and GNU time (`make deps`).

use std::process::{Command, Stdio};

use shmvm_tests::harness::{TempDir, require_kvm, shmvm_bin};

/// `out 0xf4, eax = 0x10; cli; hlt`: exit code 33.
const EXIT_CODE: [u8; 12] = [
    0x66, 0xba, 0xf4, 0x00, 0xb8, 0x10, 0, 0, 0, 0xef, 0xfa, 0xf4,
];

/// A 32-bit ELF with its code at `code_at` (the PVH entry) and one page of
/// data at `data_at`.
fn kernel(code_at: u32, data_at: u32) -> Vec<u8> {
    const EHDR: u32 = 52;
    const PHDR: u32 = 32;
    let data = vec![0x5a; 4096];
    let code_off = EHDR + 3 * PHDR;
    let data_off = code_off + EXIT_CODE.len() as u32;
    let note_off = data_off + data.len() as u32;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&3u16.to_le_bytes());
    for v in [1, code_at, EHDR, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    for v in [EHDR as u16, PHDR as u16, 3, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let segments = [
        (1, code_off, code_at, EXIT_CODE.len() as u32),
        (1, data_off, data_at, data.len() as u32),
        (4, note_off, 0, 20),
    ];
    for (kind, off, addr, size) in segments {
        for v in [kind, off, addr, addr, size, size, 7, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    f.extend_from_slice(&EXIT_CODE);
    f.extend_from_slice(&data);
    for v in [4u32, 4, 18] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(b"Xen\0");
    f.extend_from_slice(&code_at.to_le_bytes());
    f
}

/// Peak RSS in KiB of one 128 MiB run of `kernel`, which must exit 33.
fn peak_rss_kib(kernel: &std::path::Path) -> u64 {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss=%M"])
        .arg(shmvm_bin())
        .arg("-kernel")
        .arg(kernel)
        .args([
            "-m",
            "128M",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("this test needs GNU time at /usr/bin/time (`make deps`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(33), "{stderr}");
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss in {stderr}"))
}

#[test]
fn kvm_kernel_linked_at_2mib_costs_no_huge_pages() {
    require_kvm();
    let dir = TempDir::new("rss");
    let low = dir.0.join("at1m.elf");
    let high = dir.0.join("at2m.elf");
    std::fs::write(&low, kernel(0x10_0000, 0x10_2000)).expect("write");
    std::fs::write(&high, kernel(0x20_0000, 0x40_0000)).expect("write");
    // The smallest of three runs each: other processes on the host only
    // ever add to a run.
    let best = |k: &std::path::Path| (0..3).map(|_| peak_rss_kib(k)).min().unwrap_or(0);
    let (at1m, at2m) = (best(&low), best(&high));
    assert!(
        at2m < at1m + 1024,
        "kernel at 2 MiB + 4 MiB: {at2m} KiB peak RSS, at 1 MiB: {at1m} KiB \
         (two 2 MiB huge pages faulted by the loader?)"
    );
}
