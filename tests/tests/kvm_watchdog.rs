//! `-device i6300esb` end to end: tiny 32-bit kernels (PVH entry, paging
//! off) program the watchdog through configuration space and BAR0 as
//! Linux's i6300esb driver does (unlock 0x80/0x86 before each preload and
//! reload write), then stop pinging; each `-watchdog-action` is checked by
//! what the guest or the host sees. Every test needs /dev/kvm.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use shmvm_tests::harness::{self as vm, Run, TempDir, qemu_q35, require_kvm, run_tiny};
use shmvm_tests::raw_qmp::RawQmp;

/// The watchdog's PCI slot (`addr=`), so the kernels know where it is.
const SLOT: u32 = 3;
/// 1 MHz scale: one tick is 2^5 PCI clocks of 30 ns.
const TICK_NS: u64 = 32 * 30;

/// A few 32-bit instructions, enough to drive the device.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    fn imm(&mut self, op: &[u8], v: u32) -> &mut Self {
        self.bytes(op).bytes(&v.to_le_bytes())
    }

    /// Points 0xCF8 at configuration register `off` of the watchdog and
    /// leaves EDX at the data port for that offset.
    fn config_at(&mut self, off: u32) -> &mut Self {
        self.imm(&[0xba], 0xcf8) // mov edx, 0xcf8
            .imm(&[0xb8], 0x8000_0000 | (SLOT << 11) | (off & !3)) // mov eax, addr
            .bytes(&[0xef]) // out dx, eax
            .imm(&[0xba], 0xcfc + (off & 3)) // mov edx, 0xcfc + off % 4
    }

    /// EBX = BAR0's address.
    fn load_bar0(&mut self) -> &mut Self {
        self.config_at(0x10)
            .bytes(&[0xed]) // in eax, dx
            .imm(&[0x25], 0xffff_fff0) // and eax, ~0xf
            .bytes(&[0x89, 0xc3]) // mov ebx, eax
    }

    /// 16-bit write of configuration register 0x60.
    fn config_reg(&mut self, v: u16) -> &mut Self {
        self.config_at(0x60)
            .imm(&[0xb8], u32::from(v))
            .bytes(&[0x66, 0xef]) // out dx, ax
    }

    /// 8-bit write of the lock register 0x68.
    fn lock_reg(&mut self, v: u8) -> &mut Self {
        self.config_at(0x68)
            .imm(&[0xb8], u32::from(v))
            .bytes(&[0xee]) // out dx, al
    }

    /// The unlock sequence: bytes 0x80, 0x86 to the reload register.
    fn unlock(&mut self) -> &mut Self {
        self.bytes(&[0xc6, 0x43, 0x0c, 0x80]) // mov byte [ebx+0xc], 0x80
            .bytes(&[0xc6, 0x43, 0x0c, 0x86]) // mov byte [ebx+0xc], 0x86
    }

    /// Both stages' preloads.
    fn preloads(&mut self, ticks: u32) -> &mut Self {
        for reg in [0x00, 0x04] {
            self.unlock().imm(&[0xc7, 0x43, reg], ticks); // mov dword [ebx+reg], ticks
        }
        self
    }

    /// `n` pings in a row (a `loop` over ECX).
    fn pings(&mut self, n: u32) -> &mut Self {
        self.imm(&[0xb9], n); // mov ecx, n
        let top = self.0.len();
        self.unlock().bytes(&[0x66, 0xc7, 0x43, 0x0c, 0x00, 0x01]); // mov word [ebx+0xc], 0x100
        let rel = i8::try_from(top as isize - (self.0.len() as isize + 2)).unwrap();
        self.bytes(&[0xe2, rel as u8]) // loop top
    }

    /// Spins until what `read` loads into EAX has any of `mask`'s bits,
    /// then writes 5 to the debug-exit port (exit 11).
    fn wait_then_exit(&mut self, read: &[u8], mask: u32) -> &mut Self {
        let top = self.0.len();
        self.bytes(read).imm(&[0xa9], mask); // test eax, mask
        let rel = i8::try_from(top as isize - (self.0.len() as isize + 2)).unwrap();
        self.bytes(&[0x74, rel as u8]) // jz top
            .bytes(&[0xb0, 0x05, 0xe6, 0xf4]) // mov al, 5; out 0xf4, al
            .hang()
    }

    /// `jmp .`
    fn hang(&mut self) -> &mut Self {
        self.bytes(&[0xeb, 0xfe])
    }
}

/// Arms the watchdog at the 1 MHz scale with `ticks` per stage after
/// `pings` pings: the common start of every kernel here.
fn armed(ticks: u32, pings: u32) -> Asm {
    let mut a = Asm::default();
    a.load_bar0()
        .config_reg(1 << 2)
        .preloads(ticks)
        .lock_reg(1 << 1)
        .pings(pings);
    a
}

fn device(action: &str) -> Vec<String> {
    let mut v = vec![
        "-device".to_string(),
        format!("i6300esb,id=watchdog0,addr={SLOT}"),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=4".into(),
        "--stats=json".into(),
    ];
    if !action.is_empty() {
        v.extend(["-watchdog-action".to_string(), action.to_string()]);
    }
    v
}

fn run(dir: &TempDir, code: &Asm, args: &[String]) -> (Run, Duration) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let r = run_tiny(dir, &code.0, &args);
    // The timer thread's calls (the power button's irqfd, the NMI's MSI)
    // are in its seccomp list.
    assert!(!r.stderr.contains("sandbox"), "{}", r.stderr);
    (r, t0.elapsed())
}

/// Reset (the default, and what -no-reboot asks): the guest pings, stops,
/// and after both stages the VM ends with 0, as a guest reset ends it.
#[test]
fn kvm_watchdog_reset_ends_the_vm_after_both_stages() {
    require_kvm();
    let dir = TempDir::new("wdt-reset");
    // 250 ms a stage: the 20 pings take a few milliseconds.
    let ticks = 260_417;
    let stage = Duration::from_nanos(u64::from(ticks) * TICK_NS);
    let mut k = armed(ticks, 20);
    k.hang();
    let mut args = device("");
    args.push("-no-reboot".into());
    let (r, took) = run(&dir, &k, &args);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        took >= 2 * stage,
        "ended after {took:?}, before both stages ({:?}) ran out",
        2 * stage
    );
    let st = r.stats();
    let w = st.watchdog.first().expect("watchdog statistics");
    assert_eq!(
        (
            w.name.as_str(),
            w.action.as_str(),
            w.pings,
            w.stage1_expiries,
            w.fired,
            w.locked_writes,
            w.enabled
        ),
        ("i6300esb 'watchdog0'", "reset", 20, 1, 1, 0, false),
        "{w:?}"
    );
    assert_eq!(w.pci, "00:03.0");
}

/// The `debug` kernel: a preload write without the unlock (ignored, so
/// both stages keep 0xfffff ticks, ~1 s each at 1 MHz), enable, then wait
/// for the previous-reboot flag and exit 11.
fn debug_kernel() -> Asm {
    let mut k = Asm::default();
    k.load_bar0()
        .config_reg(1 << 2)
        // A preload write without the unlock: ignored.
        .imm(&[0xc7, 0x43, 0x00], 10)
        .lock_reg(1 << 1)
        // movzx eax, word [ebx+0xc]
        .wait_then_exit(&[0x0f, 0xb7, 0x43, 0x0c], 0x1200);
    k
}

/// Without the unlock sequence the preloads stay 0xfffff and pings are
/// ignored: `debug` fires after both stages, prints QEMU's line, and the
/// guest runs on and sees the previous-reboot flag (bits 9 and 12 of the
/// reload register) set.
#[test]
fn kvm_watchdog_debug_action_lets_the_guest_see_the_flag() {
    require_kvm();
    let dir = TempDir::new("wdt-debug");
    let (r, took) = run(&dir, &debug_kernel(), &device("debug"));
    assert_eq!(r.code, Some(11), "{r:?}");
    let reset_stage = Duration::from_nanos(0xf_ffff * TICK_NS);
    assert!(took >= 2 * reset_stage, "fired after {took:?}");
    assert_eq!(
        r.stderr.matches("watchdog: timer fired").count(),
        1,
        "{}",
        r.stderr
    );
    let st = r.stats();
    let w = &st.watchdog[0];
    assert_eq!(
        (w.fired, w.locked_writes, w.enabled),
        (1, 1, false),
        "{w:?}"
    );
}

/// `shutdown` presses the ACPI power button: the guest polls the GED's
/// event register (all-ones until the first press places it) and exits.
#[test]
fn kvm_watchdog_shutdown_presses_the_power_button() {
    require_kvm();
    let dir = TempDir::new("wdt-shutdown");
    let mut k = armed(10_000, 1);
    // mov eax, [0xfed00000]; wait for exactly 1 (the power-button bit).
    k.bytes(&[0xbb, 0x00, 0x00, 0xd0, 0xfe]) // mov ebx, 0xfed00000
        .bytes(&[0x8b, 0x03]) // mov eax, [ebx]
        .bytes(&[0x83, 0xf8, 0x01]) // cmp eax, 1
        .bytes(&[0x75, 0xf9]) // jne back to the load
        .bytes(&[0xb0, 0x05, 0xe6, 0xf4])
        .hang();
    let (r, _) = run(&dir, &k, &device("shutdown"));
    assert_eq!(r.code, Some(11), "{r:?}");
    assert_eq!(r.stats().watchdog[0].fired, 1);
}

/// `inject-nmi` sends an NMI to the vCPU; this guest has no IDT entry
/// for it, so it ends in a triple fault (exit 1, one line).
#[test]
fn kvm_watchdog_inject_nmi_reaches_the_vcpu() {
    require_kvm();
    let dir = TempDir::new("wdt-nmi");
    let mut k = armed(10_000, 1);
    k.hang();
    let (r, _) = run(&dir, &k, &device("inject-nmi"));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("triple fault"), "{}", r.stderr);
}

/// `poweroff` ends the VM at once with 0; `-action watchdog=` is the same
/// option as `-watchdog-action`, and the last of the two wins.
#[test]
fn kvm_watchdog_poweroff_and_the_action_spelling() {
    require_kvm();
    let dir = TempDir::new("wdt-poweroff");
    let mut k = armed(10_000, 1);
    k.hang();
    let mut args = device("debug");
    args.extend(["-action".to_string(), "watchdog=poweroff".to_string()]);
    let (r, _) = run(&dir, &k, &args);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stderr.contains("timer fired"), "{}", r.stderr);
    assert_eq!(r.stats().watchdog[0].action, "poweroff");
}

/// `pause` stops the vCPUs: the monitor sees WATCHDOG (action pause) then
/// STOP, `query-status` says paused, and `query-pci` lists the function
/// as QEMU's (8086:25ab, class 0x0880, one 16-byte memory BAR).
#[test]
fn kvm_watchdog_pause_stops_the_vm_and_tells_the_monitor() {
    require_kvm();
    let dir = TempDir::new("wdt-pause");
    let mut k = armed(10_000, 1);
    k.hang();
    let kernel = dir.tiny_kernel(&k.0);
    let sock = dir.0.join("q.sock");
    // -S: the guest runs (and the watchdog fires) only once the monitor
    // is connected, so no event can go out before it listens.
    let mut args = device("pause");
    args.push("-S".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, mut q) = RawQmp::start(&kernel, &sock, &args);
    let status = q.ask(r#"{"execute":"query-status"}"#);
    assert!(status.contains(r#""status":"prelaunch""#), "{status}");
    let r = q.ask(r#"{"execute":"cont"}"#);
    assert!(r.contains("return"), "{r}");
    let mut events = Vec::new();
    while !events.iter().any(|e: &String| e.contains("\"STOP\"")) {
        let l = q.line();
        assert!(!l.is_empty(), "monitor closed; events so far {events:?}");
        if l.contains("\"event\"") && !l.contains("\"RESUME\"") {
            events.push(l);
        }
    }
    assert!(
        events[0].contains(r#""event": "WATCHDOG""#) || events[0].contains(r#""event":"WATCHDOG""#),
        "{events:?}"
    );
    assert!(events[0].contains("pause"), "{events:?}");
    let status = q.ask(r#"{"execute":"query-status"}"#);
    // QEMU's run state for a watchdog's pause.
    assert!(status.contains(r#""status":"watchdog""#), "{status}");
    let pci: serde_json::Value =
        serde_json::from_str(&q.ask(r#"{"execute":"query-pci"}"#)).expect("query-pci JSON");
    let devs = pci["return"][0]["devices"].as_array().expect("devices");
    let wdt = devs
        .iter()
        .find(|d| d["slot"] == 3)
        .unwrap_or_else(|| panic!("no slot 3: {pci}"));
    assert_eq!(wdt["id"]["vendor"], 0x8086, "{wdt}");
    assert_eq!(wdt["id"]["device"], 0x25ab, "{wdt}");
    assert_eq!(wdt["class_info"]["class"], 0x0880, "{wdt}");
    assert_eq!(wdt["regions"][0]["size"], 16, "{wdt}");
    assert_eq!(wdt["regions"][0]["type"], "memory", "{wdt}");
    let r = q.ask(r#"{"execute":"quit"}"#);
    assert!(r.contains("return"), "{r}");
    let r = vm::wait(child, Duration::from_secs(10));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!sock.exists(), "socket left behind");
}

/// QEMU 10 (q35 with SeaBIOS, which assigns the BAR; `make deps`) runs the
/// same `debug` kernel with its own i6300esb: the same exit code, the same
/// stderr line, after both stages as well.
#[test]
fn kvm_watchdog_matches_qemu() {
    require_kvm();
    let dir = TempDir::new("wdt-qemu");
    let kernel = dir.tiny_kernel(&debug_kernel().0);
    let t0 = Instant::now();
    let child = qemu_q35()
        .args(["-serial", "none", "-watchdog-action", "debug"])
        .args(["-device", &format!("i6300esb,addr={SLOT}")])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-kernel", &kernel])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (QEMU 10, make deps) is needed by this test");
    let q = vm::wait(child, Duration::from_secs(60));
    let took = t0.elapsed();
    assert_eq!(q.code, Some(11), "QEMU: {q:?}");
    assert_eq!(
        q.stderr.matches("watchdog: timer fired").count(),
        1,
        "{}",
        q.stderr
    );
    assert!(
        took >= 2 * Duration::from_nanos(0xf_ffff * TICK_NS),
        "QEMU: {took:?}"
    );
    let (s, _) = run(&dir, &debug_kernel(), &device("debug"));
    assert_eq!(s.code, q.code, "shmvm: {s:?}");
}
