//! Console output that KVM queues instead of exiting (vmm/src/coalesce.rs):
//! complete and in order, shown while a silent guest keeps running, and
//! switched off once the guest wants transmit interrupts. Tiny hand-made
//! kernels (32-bit PVH entry, flat segments, interrupts off) drive the
//! UART directly. Every test needs /dev/kvm and fails without it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmvm_tests::harness::{
    Run, TINY_KERNEL_CODE, TempDir, require_kvm, run_tiny, shmvm_bin, wait,
};

/// `mov dx, port`
fn mov_dx(port: u16) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi]
}

/// `mov al, v; out dx, al` for each byte.
fn out_bytes(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|&b| [0xb0, b, 0xee]).collect()
}

/// `mov al, 0x10; out 0xf4, al`: debug-exit with 0x10 (exit code 33).
const PASS: [u8; 4] = [0xb0, 0x10, 0xe6, 0xf4];
const SPIN: [u8; 2] = [0xeb, 0xfe];
/// `cli; hlt; jmp -3`
const HALT: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];

/// Serial transmit writes, and how many of them KVM queued without an
/// exit; whether queueing was still on at the end (`--stats=json`).
fn serial(r: &Run) -> (u64, u64, bool) {
    let st = r.stats();
    let d = st
        .device("serial0")
        .unwrap_or_else(|| panic!("no serial0 in the statistics: {st:?}"));
    assert_eq!(d.reads, 0, "{d:?}");
    let c = st
        .console
        .unwrap_or_else(|| panic!("no console statistics: {st:?}"));
    (
        d.writes,
        c.coalesced_writes,
        c.coalescing_on.unwrap_or(true),
    )
}

/// Runs `code`, which ends with [`PASS`], with its exit port and statistics.
fn run_passing(d: &TempDir, code: &[u8]) -> Run {
    let args = [
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "--stats=json",
    ];
    run_tiny(d, code, &args)
}

/// A guest prints a line, then stops taking exits (`tail`). The line must
/// show while it still runs: the flush timer, not the VMM's end, brings it.
fn shows_while_running(tail: &[u8]) {
    let d = TempDir::new("console-flush");
    let mut code = mov_dx(0x3f8);
    code.extend(out_bytes(b"ok\n"));
    code.extend_from_slice(tail);
    let k = d.tiny_kernel(&code);
    let mut child = Command::new(shmvm_bin())
        .args(["-kernel", &k, "-m", "16"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        while let Ok(n) = stdout.read(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
            if got.ends_with(b"\n") {
                let _ = tx.send(got.clone());
            }
        }
    });
    let t0 = Instant::now();
    let line = rx.recv_timeout(Duration::from_secs(5));
    let running = child.try_wait().unwrap().is_none();
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let r = wait(child, Duration::from_secs(20));
    assert_eq!(line.as_deref(), Ok(&b"ok\n"[..]), "{r:?}");
    assert!(running, "the line came only with the VMM's end: {r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
}

#[test]
fn kvm_console_line_of_a_spinning_guest_shows_while_it_runs() {
    require_kvm();
    shows_while_running(&SPIN);
}

#[test]
fn kvm_console_line_of_a_halted_guest_shows_while_it_runs() {
    require_kvm();
    shows_while_running(&HALT);
}

#[test]
fn kvm_console_output_is_complete_and_in_order_past_a_full_ring() {
    require_kvm();
    let d = TempDir::new("console-order");
    // 40 numbered lines (600 bytes) with one `rep outsb`: more writes than
    // KVM's ring holds (~170), so some exit while others are queued.
    let text: String = (0..40).map(|i| format!("line {i:02} abcdef\n")).collect();
    let text = text.as_bytes();
    let mut code = mov_dx(0x3f8);
    let at_esi = code.len() + 1;
    code.extend_from_slice(&[0xbe, 0, 0, 0, 0]); // mov esi, text
    code.push(0xb9); // mov ecx, len
    code.extend_from_slice(&(text.len() as u32).to_le_bytes());
    code.extend_from_slice(&[0xfc, 0xf3, 0x6e]); // cld; rep outsb
    code.extend_from_slice(&PASS);
    code.extend_from_slice(&SPIN);
    let text_addr = TINY_KERNEL_CODE as u32 + code.len() as u32;
    code[at_esi..at_esi + 4].copy_from_slice(&text_addr.to_le_bytes());
    code.extend_from_slice(text);
    let r = run_passing(&d, &code);
    assert_eq!(r.code, Some(33), "{r:?}");
    assert_eq!(r.stdout.as_bytes(), text, "{r:?}");
    let (writes, q, _) = serial(&r);
    assert_eq!(writes, 600, "{r:?}");
    assert!((500..600).contains(&q), "{q} of 600 queued\n{}", r.stderr);
}

#[test]
fn kvm_console_writes_exit_again_once_transmit_interrupt_is_enabled() {
    require_kvm();
    let d = TempDir::new("console-thri");
    let mut code = mov_dx(0x3f8);
    code.extend(out_bytes(b"a"));
    code.extend(mov_dx(0x3f9));
    code.extend(out_bytes(&[0x02])); // IER: transmit-empty interrupt
    code.extend(mov_dx(0x3f8));
    code.extend(out_bytes(b"b"));
    code.extend_from_slice(&PASS);
    code.extend_from_slice(&SPIN);
    let r = run_passing(&d, &code);
    assert_eq!((r.code, r.stdout.as_str()), (Some(33), "ab"), "{r:?}");
    // Three writes, one queued: queueing went off for good at the IER write.
    assert_eq!(serial(&r), (3, 1, false), "{}", r.stderr);
}
