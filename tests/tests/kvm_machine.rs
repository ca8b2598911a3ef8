//! VMM behaviour the real test kernel does not exercise, checked with tiny
//! hand-assembled kernels (32-bit PVH entry): device exits, guest faults,
//! signals, statistics. Every test needs /dev/kvm and fails without it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmvm_tests::harness::{Run, TempDir, leftover_shm, require_kvm, run_tiny, shmvm_bin, wait};

/// `jmp .`
const HANG: &[u8] = &[0xeb, 0xfe];

/// Reads and writes of the bus device `name` (`--stats=json`).
fn reads_writes(r: &Run, name: &str) -> (u64, u64) {
    let st = r.stats();
    let d = st
        .device(name)
        .unwrap_or_else(|| panic!("no device '{name}' in the statistics: {st:?}"));
    (d.reads, d.writes)
}

#[test]
fn kvm_i8042_reset_ends_vm_with_0() {
    require_kvm();
    let d = TempDir::new("reset");
    // mov al, 0xfe; out 0x64, al; jmp .
    let r = run_tiny(&d, &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe], &["--stats=json"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(reads_writes(&r, "i8042"), (0, 1));
}

#[test]
fn kvm_acpi_s5_poweroff_ends_vm_with_0() {
    require_kvm();
    let d = TempDir::new("s5");
    // mov dx, 0x3c0; mov al, SLP_TYP 5 << 2 | SLP_EN; out dx, al; jmp .
    let r = run_tiny(
        &d,
        &[0x66, 0xba, 0xc0, 0x03, 0xb0, 0x34, 0xee, 0xeb, 0xfe],
        &["--stats=json"],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(reads_writes(&r, "acpi-sleep"), (0, 1));
}

#[test]
fn kvm_debug_exit_at_custom_port_gives_qemu_exit_code() {
    require_kvm();
    let d = TempDir::new("dbg");
    // mov dx, 0x501; mov al, 5; out dx, al; jmp .
    let r = run_tiny(
        &d,
        &[0x66, 0xba, 0x01, 0x05, 0xb0, 0x05, 0xee, 0xeb, 0xfe],
        &["-device", "isa-debug-exit,iobase=0x501,iosize=2"],
    );
    assert_eq!(r.code, Some((5 << 1) | 1), "{r:?}");
}

#[test]
fn kvm_serial_output_reaches_stdout_and_file() {
    require_kvm();
    let d = TempDir::new("serial");
    // mov dx, 0x3f8; mov al, 'o'; out dx, al; mov al, 'k'; out dx, al;
    // mov al, 0xfe; out 0x64, al
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'o', 0xee, 0xb0, b'k', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xeb,
        0xfe,
    ];
    let r = run_tiny(&d, &code, &[]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "ok"), "{r:?}");
    let log = d.0.join("console.log");
    let spec = format!("file:{}", log.display());
    let r = run_tiny(&d, &code, &["-serial", &spec]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""), "{r:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ok");
}

#[test]
fn kvm_triple_fault_ends_nonzero_with_one_line() {
    require_kvm();
    let d = TempDir::new("tf");
    // ud2 with a 1-entry IDT whose entry is not present: #UD -> #GP -> #DF -> shutdown.
    let r = run_tiny(&d, &[0x0f, 0x0b], &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let lines: Vec<_> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].contains("triple fault"), "{}", r.stderr);
}

/// At -v a triple fault also logs every vCPU's state (the lab's
/// LAB_L2DEBUG runs read it): the vCPU that took it, and the others.
#[test]
fn kvm_triple_fault_at_v_logs_every_vcpu_state() {
    require_kvm();
    let d = TempDir::new("tf-v");
    let r = run_tiny(&d, &[0x0f, 0x0b], &["-smp", "2", "-v"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let has = |s: &str| r.stderr.lines().any(|l| l.contains(s));
    assert!(
        has("vCPU 0 took the triple fault: mp_state="),
        "{}",
        r.stderr
    );
    assert!(has("vCPU 0: events="), "{}", r.stderr);
    assert!(has("vCPU 0: lapic id="), "{}", r.stderr);
    assert!(
        has("vCPU 1 was running when another vCPU triple-faulted"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .trim_end()
            .ends_with("shmvm: guest triple fault (KVM_EXIT_SHUTDOWN)"),
        "{}",
        r.stderr
    );
}

#[test]
fn kvm_unclaimed_port_reads_all_ones_and_is_counted() {
    require_kvm();
    let d = TempDir::new("unclaimed");
    // in al, 0x99; out 0xf4, al (debug-exit gets 0xff -> exit code 0xff<<1|1 = 0xff)
    let r = run_tiny(
        &d,
        &[0xe4, 0x99, 0xe6, 0xf4, 0xeb, 0xfe],
        &[
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "--stats=json",
        ],
    );
    assert_eq!(r.code, Some(0xff), "{r:?}");
    let u = r.stats().unclaimed;
    assert_eq!((u.pio, u.mmio), (1, 0), "{r:?}");
}

fn sigterm_case(smp: &str, object: String, dir: &TempDir) {
    let k = dir.tiny_kernel(HANG);
    let child = Command::new(shmvm_bin())
        .args([
            "-kernel",
            &k,
            "-smp",
            smp,
            "-object",
            &object,
            "-machine",
            "memory-backend=m",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let r = wait(child, Duration::from_secs(5));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "slow stop: {:?}",
        t0.elapsed()
    );
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert_eq!(
        leftover_shm(r.pid),
        Vec::<String>::new(),
        "shm object left behind"
    );
}

#[test]
fn kvm_sigterm_stops_all_vcpus_and_drops_backends() {
    require_kvm();
    let d = TempDir::new("sigterm");
    sigterm_case("1", "memory-backend-shm,id=m,size=64M".into(), &d);
    sigterm_case("2", "memory-backend-shm,id=m,size=64M".into(), &d);
    let f = d.0.join("ram.img");
    sigterm_case(
        "2",
        format!(
            "memory-backend-file,id=m,size=32M,mem-path={},share=on",
            f.display()
        ),
        &d,
    );
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 32 << 20);
}

/// Fails the test unless /dev/kvm is PVM (platform.md): only its
/// instruction emulator gives up on `int3`; architectural KVM delivers it.
fn require_pvm() {
    require_kvm();
    assert!(
        std::path::Path::new("/sys/module/kvm_pvm").exists(),
        "this test needs a PVM host (/sys/module/kvm_pvm): architectural KVM runs int3 natively"
    );
}

#[test]
fn kvm_pvm_internal_error_reports_rip_and_instruction_bytes() {
    require_pvm();
    let d = TempDir::new("ierr");
    // int3: the PVM host's instruction emulator cannot run it (platform.md).
    let r = run_tiny(&d, &[0x90, 0xcc, 0xeb, 0xfe], &[]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let lines: Vec<_> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", r.stderr);
    let line = lines[0];
    assert!(line.contains("KVM internal error"), "{line}");
    assert!(line.contains("RIP 0x100"), "{line}");
    assert!(
        line.contains("instruction bytes") && line.contains("cc"),
        "{line}"
    );
}
