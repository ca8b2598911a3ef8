//! End-to-end boots of the test kernel on the host /dev/kvm: every memory
//! backend at three sizes, 1 and 2 vCPUs, both entry protocols, command line
//! and initrd delivered intact. Every test here needs /dev/kvm and the test
//! kernel (`make testkernel`), and fails when either is missing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use protocol::fnv1a64;
use shmvm_tests::harness::{TempDir, leftover_shm, require_kvm, run, testkernel};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const HOLE: u64 = 3 * GIB;
const T: Duration = Duration::from_secs(60);

/// (start, end, type) entries shmvm promises for `size` bytes of RAM.
fn expected_e820(size: u64) -> Vec<(u64, u64, u32)> {
    let mut v = vec![
        (0, 0x9fc00, 1),
        (0x9fc00, 0x10_0000, 2),
        (0x10_0000, size.min(HOLE), 1),
    ];
    if size > HOLE {
        v.push((4 * GIB, 4 * GIB + size - HOLE, 1));
    }
    v
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
}

/// Parses `start=0x.. end=0x.. type=N`.
fn e820_line(l: &str) -> (u64, u64, u32) {
    let mut start = None;
    let mut end = None;
    let mut ty = None;
    for kv in l.split_whitespace() {
        match kv.split_once('=') {
            Some(("start", v)) => start = Some(hex(v)),
            Some(("end", v)) => end = Some(hex(v)),
            Some(("type", v)) => ty = v.parse().ok(),
            _ => {}
        }
    }
    (start.expect("start"), end.expect("end"), ty.expect("type"))
}

fn object(kind: &str, size: u64, dir: &TempDir) -> String {
    let size = format!("{}M", size / MIB);
    match kind {
        "file" => format!(
            "memory-backend-file,id=ram0,size={size},mem-path={},share=on",
            dir.0.join("guest.ram").display()
        ),
        other => format!("memory-backend-{other},id=ram0,size={size}"),
    }
}

/// Boots the test kernel with RAM from `kind` and checks the memory map.
fn boot_backend(kind: &str, size: u64, tests: &str) {
    boot_backend_entry(kind, size, tests, "pvh");
}

/// As [`boot_backend`], entering through `boot` (pvh or linux64), so the
/// memory map is checked as hvm_start_info and as the zero page's e820.
fn boot_backend_entry(kind: &str, size: u64, tests: &str, boot: &str) {
    require_kvm();
    let kernel = testkernel();
    let dir = TempDir::new(kind);
    let obj = object(kind, size, &dir);
    let append = format!("shmvm.test={tests}");
    let r = run(
        &[
            "-kernel",
            kernel.to_str().unwrap(),
            "-object",
            &obj,
            "-machine",
            "memory-backend=ram0",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-serial",
            "stdio",
            "-append",
            &append,
            "--boot",
            boot,
        ],
        T,
    );
    r.assert_pass();
    assert_eq!(r.value("entry").as_deref(), Some(boot));
    let got: Vec<_> = r.lines_of("e820").iter().map(|l| e820_line(l)).collect();
    assert_eq!(
        got,
        expected_e820(size),
        "e820 for {kind} {size}\n{}",
        r.stdout
    );
    let usable: u64 = expected_e820(size)
        .iter()
        .filter(|e| e.2 == 1)
        .map(|e| e.1 - e.0)
        .sum();
    assert_eq!(r.value("ram_bytes"), Some(usable.to_string()));
    if tests.contains("memtest") {
        let line = r.lines_of("memtest").join("\n");
        assert!(
            line.starts_with("bytes=") && line.ends_with(" ok"),
            "memtest: {line:?}\n{}",
            r.stdout
        );
    }
    assert_eq!(
        leftover_shm(r.pid),
        Vec::<String>::new(),
        "{kind}: /dev/shm changed"
    );
    if kind == "file" {
        let len = std::fs::metadata(dir.0.join("guest.ram"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert_eq!(len, size, "file backend keeps its file at full size");
    }
}

#[test]
fn kvm_backend_ram_64m_memtest() {
    boot_backend("ram", 64 * MIB, "boot,memtest");
}
#[test]
fn kvm_backend_file_64m_memtest() {
    boot_backend("file", 64 * MIB, "boot,memtest");
}
#[test]
fn kvm_backend_memfd_64m_memtest() {
    boot_backend("memfd", 64 * MIB, "boot,memtest");
}
#[test]
fn kvm_backend_shm_64m_memtest() {
    boot_backend("shm", 64 * MIB, "boot,memtest");
}
#[test]
fn kvm_backend_ram_1g() {
    boot_backend("ram", GIB, "boot");
}
#[test]
fn kvm_backend_file_1g() {
    boot_backend("file", GIB, "boot");
}
#[test]
fn kvm_backend_memfd_1g_linux64() {
    boot_backend_entry("memfd", GIB, "boot", "linux64");
}
#[test]
fn kvm_backend_shm_1g() {
    boot_backend("shm", GIB, "boot");
}
/// The one full memtest over RAM on both sides of the hole: anonymous RAM
/// (transparent huge pages) takes seconds where 4 KiB tmpfs pages take a
/// minute on the PVM host, whose guest page faults are slow.
#[test]
fn kvm_backend_ram_3_5g_split_around_hole_memtest() {
    boot_backend("ram", 3584 * MIB, "boot,memtest");
}
#[test]
fn kvm_backend_file_3_5g_split_around_hole() {
    boot_backend("file", 3584 * MIB, "boot");
}
#[test]
fn kvm_backend_memfd_3_5g_split_around_hole_linux64() {
    boot_backend_entry("memfd", 3584 * MIB, "boot", "linux64");
}
#[test]
fn kvm_backend_shm_3_5g_split_around_hole() {
    boot_backend("shm", 3584 * MIB, "boot");
}

fn boot_simple(extra: &[&str]) -> shmvm_tests::harness::Run {
    require_kvm();
    let kernel = testkernel();
    let mut args = vec![
        "-kernel",
        kernel.to_str().unwrap(),
        "-m",
        "64",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
    ];
    args.extend_from_slice(extra);
    let r = run(&args, T);
    r.assert_pass();
    r
}

#[test]
fn kvm_smp_1_and_2_vcpus_counted_by_guest() {
    for n in ["1", "2"] {
        for boot in ["pvh", "linux64"] {
            let r = boot_simple(&["-smp", n, "--boot", boot]);
            assert_eq!(
                r.value("cpus").as_deref(),
                Some(n),
                "{boot} smp {n}\n{}",
                r.stdout
            );
            // Both CPU tables the VMM writes (MP table, ACPI MADT) list
            // every vCPU.
            let tables = r.lines_of("cpu tables").join("");
            assert!(tables.contains(&format!("mp_cpus={n} ")), "{tables}");
            assert!(tables.contains(&format!("madt_cpus={n}")), "{tables}");
        }
    }
}

#[test]
fn kvm_entry_pvh_by_default_and_linux64_on_request() {
    let r = boot_simple(&[]);
    assert_eq!(r.value("entry").as_deref(), Some("pvh"));
    let r = boot_simple(&["--boot", "linux64"]);
    assert_eq!(r.value("entry").as_deref(), Some("linux64"));
    let r = boot_simple(&["--boot", "pvh"]);
    assert_eq!(r.value("entry").as_deref(), Some("pvh"));
}

#[test]
fn kvm_cmdline_and_initrd_delivered_intact_both_entries() {
    let dir = TempDir::new("initrd");
    // An odd size (not page aligned) with position-dependent content.
    let data: Vec<u8> = (0..(3 * MIB as usize + 12345))
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    let path = dir.0.join("initrd.bin");
    std::fs::write(&path, &data).unwrap();
    let want = format!("size={} fnv1a64={:#018x}", data.len(), fnv1a64(&data));
    for boot in ["pvh", "linux64"] {
        let cmdline = "shmvm.test=boot,initrd console=ttyS0 quoted=\"a b\" x=-1 last";
        let r = boot_simple(&[
            "--boot",
            boot,
            "-initrd",
            path.to_str().unwrap(),
            "-append",
            cmdline,
        ]);
        assert_eq!(
            r.value("cmdline").as_deref(),
            Some(cmdline),
            "{boot}\n{}",
            r.stdout
        );
        let line = r.lines_of("initrd").join("\n");
        assert!(line.starts_with(&want), "{boot}: want {want}\n{}", r.stdout);
        // Placed page aligned, as high as fits in the 64 MiB of RAM.
        let addr = line.split("addr=").nth(1).map(hex).expect("addr=");
        assert_eq!(addr % 4096, 0, "{line}");
        assert_eq!(addr, (64 * MIB - data.len() as u64) & !0xfff, "{line}");
    }
}
