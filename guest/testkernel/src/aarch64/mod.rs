//! The aarch64 kernel: entered as a Linux arm64 `Image` (`boot.rs`) at EL1
//! with the MMU off, it reads the device tree (`fdt.rs`), reports what the
//! VMM gave it in the x86_64 kernel's lines, runs the tests named on its
//! command line that make sense here (boot, memtest, initrd, ivshmem,
//! smp) and ends through the debug-exit register (exit code 33 pass, 35
//! fail; 39 if it was loaded anywhere but its link address 0x4000_0000),
//! falling back to PSCI SYSTEM_OFF. The x86_64-only tests (BAR
//! moves, slots, the bandwidth bench, doorbells, snapcount, storm) fail
//! with `reason=not_on_aarch64`.

mod boot;
mod fdt;
mod ivshmem;

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use crate::console::{Dec, Hex, Hex16};
use crate::params::{PARAMS, Test};
use crate::ranges::{E820, E820_RAM, Ranges};
use crate::{FAILURE, Global, console, note_failure, say};
use boot::MAX_CPUS;
use fdt::BootInfo;

/// Exit values written to the debug-exit register: shmvm exits with
/// `(v << 1) | 1`, 33 and 35, as with isa-debug-exit on x86_64.
const EXIT_PASS: u32 = 0x10;
const EXIT_FAIL: u32 = 0x11;
/// Written by the entry when the kernel is not at its link address (39).
const EXIT_MISPLACED: u32 = 0x13;
/// shmvm's debug-exit register when the device tree names none.
const DEBUG_EXIT: u64 = 0x0901_0000;

const PSCI_VERSION: u32 = 0x8400_0000;
const PSCI_CPU_OFF: u32 = 0x8400_0002;
const PSCI_CPU_ON: u32 = 0xc400_0003;
const PSCI_AFFINITY_INFO: u32 = 0xc400_0004;
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
const PSCI_ALREADY_ON: i64 = -4;
const AFFINITY_OFF: i64 = 1;
/// MPIDR_EL1's affinity fields (Aff3, Aff2, Aff1, Aff0).
const MPIDR_AFF: u64 = 0xff_00ff_ffff;

static INFO: Global<Option<BootInfo>> = Global::new(None);
/// What each started secondary wrote: its MPIDR with bit 63 set.
static MAILBOX: Global<[u64; MAX_CPUS]> = Global::new([0; MAX_CPUS]);
const MAILBOX_SEEN: u64 = 1 << 63;

/// A PSCI call through HVC (SMCCC: x0 function, x1-x3 arguments, x0 result).
fn psci(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let r: u64;
    // SAFETY: an HVC the VMM's PSCI implementation answers; SMCCC allows
    // x0-x17 to change, which clobber_abi("C") declares.
    unsafe {
        asm!("hvc #0", inlateout("x0") u64::from(fid) => r, in("x1") a1, in("x2") a2,
            in("x3") a3, clobber_abi("C"), options(nostack))
    }
    r as i64
}

fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reads a system register.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v & MPIDR_AFF
}

/// The generic timer's frequency (Hz) and virtual count.
fn counter() -> (u64, u64) {
    let (f, c): (u64, u64);
    // SAFETY: reads system registers accessible at EL1.
    unsafe {
        asm!("mrs {}, cntfrq_el0", "isb", "mrs {}, cntvct_el0", out(reg) f, out(reg) c,
            options(nomem, nostack))
    };
    (f.max(1), c)
}

/// A deadline on the generic timer, the protocol crate's `Clock`.
pub struct Deadline(u64);

impl Deadline {
    pub fn after_ms(ms: u64) -> Deadline {
        let (f, now) = counter();
        Deadline(now.saturating_add(ms.saturating_mul(f) / 1000))
    }
}

impl protocol::Clock for Deadline {
    fn expired(&mut self) -> bool {
        counter().1 > self.0
    }
    fn pause(&mut self) {
        core::hint::spin_loop();
    }
}

/// Milliseconds since `start` (a `counter().1` value).
fn ms_since(start: u64) -> u64 {
    let (f, now) = counter();
    (now - start) * 1000 / f
}

fn info() -> &'static BootInfo {
    // SAFETY: written once by the boot CPU before any test runs.
    match unsafe { &*INFO.ptr() } {
        Some(i) => i,
        None => fail_now("no_boot_info"),
    }
}

/// Prints the verdict and exits through the debug-exit register; falls
/// back to PSCI SYSTEM_OFF, then waits forever.
fn finish() -> ! {
    // SAFETY: boot CPU only.
    let failure = unsafe { *FAILURE.ptr() };
    let value = match failure {
        None => {
            say!("shmvm: verdict=pass");
            EXIT_PASS
        }
        Some(why) => {
            say!("shmvm: verdict=fail reason=", why);
            EXIT_FAIL
        }
    };
    // SAFETY: INFO is written once before any test.
    let reg = unsafe { &*INFO.ptr() }
        .as_ref()
        .and_then(|i| i.debug_exit)
        .unwrap_or(DEBUG_EXIT);
    // SAFETY: the debug-exit register (device MMIO); the write ends the VM.
    unsafe { write_volatile(reg as *mut u32, value) };
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
    loop {
        // SAFETY: waits for an event; nothing follows.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

fn fail_now(why: &'static str) -> ! {
    note_failure(why);
    finish()
}

/// The boot CPU's Rust entry (from `boot.rs`), x0 = the device tree.
pub extern "C" fn kmain(fdt: u64) -> ! {
    console::init();
    let el: u64;
    // SAFETY: reads a system register.
    unsafe { asm!("mrs {}, currentel", out(reg) el, options(nomem, nostack)) };
    say!(
        "shmvm: entry=arm64-image el=",
        Dec((el >> 2) & 3),
        " fdt=",
        Hex(fdt)
    );
    let i = match fdt::read(fdt) {
        Ok(i) => i,
        Err(why) => fail_now(why),
    };
    // SAFETY: boot CPU only, before anything reads these.
    unsafe {
        (*PARAMS.ptr()).parse(i.cmdline);
        *crate::pci::ECAM.ptr() = i.ecam.unwrap_or(0);
        *INFO.ptr() = Some(i);
    }
    report();
    // SAFETY: PARAMS is no longer written.
    let p = unsafe { &*PARAMS.ptr() };
    if let Some((why, at)) = p.error {
        say!(
            "shmvm: bad parameter offset=",
            Dec(at as u64),
            " reason=",
            why
        );
        note_failure(why);
        finish();
    }
    for t in p.tests() {
        let r = match t {
            Test::Boot => Ok(()),
            Test::Memtest => memtest(),
            Test::Initrd => initrd(),
            Test::Ivshmem => ivshmem::handshake(),
            Test::Smp => smp(),
            _ => Err("not_on_aarch64"),
        };
        if let Err(why) = r {
            note_failure(why);
        }
    }
    finish()
}

/// The boot report, in the x86_64 kernel's lines where they mean the same.
fn report() {
    let i = info();
    // SAFETY: PARAMS is no longer written.
    let p = unsafe { &*PARAMS.ptr() };
    say!("shmvm: cmdline=", i.cmdline);
    say!("shmvm: memory start=", Hex(i.ram.0), " end=", Hex(i.ram.1));
    let ram = i.ram.1 - i.ram.0;
    say!("shmvm: ram_bytes=", Dec(ram));
    let (k0, k1) = boot::kernel_range();
    say!(
        "shmvm: kernel start=",
        Hex(k0),
        " end=",
        Hex(k1),
        " free_bytes=",
        Dec(free().bytes)
    );
    let opt = |v: Option<u64>| Hex(v.unwrap_or(0));
    say!(
        "shmvm: devices uart=",
        opt(i.uart),
        " debug_exit=",
        opt(i.debug_exit),
        " ecam=",
        opt(i.ecam),
        " mmio32=",
        opt(i.mmio32.map(|w| w.0)),
        " psci=",
        if i.psci_hvc { "hvc" } else { "none" }
    );
    say!("shmvm: cpus=", Dec(i.ncpus as u64));
    if i.uart != Some(console::UART) {
        note_failure("uart_not_in_device_tree");
    }
    if i.ram.1 <= i.ram.0 {
        note_failure("no_memory_node");
    }
    if i.ncpus == 0 || i.cpus_dropped {
        note_failure("cpu_nodes");
    }
    if !i.psci_hvc {
        note_failure("psci_not_hvc");
    }
    if let Some(want) = p.expect_cpus
        && want != i.ncpus as u64
    {
        note_failure("cpus_mismatch");
    }
    if let Some(want) = p.expect_ram
        && (ram > want || ram + 0x10_0000 < want)
    {
        note_failure("ram_mismatch");
    }
}

static FREE: Global<Ranges> = Global::new(Ranges::EMPTY);

/// RAM less the kernel (with its stacks), the initrd and the device tree.
fn free() -> &'static Ranges {
    let i = info();
    let (k0, k1) = boot::kernel_range();
    let (r0, r1) = i.initrd.unwrap_or((0, 0));
    let map = [E820 {
        start: i.ram.0,
        end: i.ram.1,
        kind: E820_RAM,
    }];
    // SAFETY: boot CPU only; recomputed from the same inputs each time.
    unsafe {
        let f = &mut *FREE.ptr();
        f.compute(&map, &[(k0, k1), (r0, r1), (i.fdt, i.fdt + i.fdt_size)]);
        f
    }
}

fn memtest() -> Result<(), &'static str> {
    let f = free();
    // SAFETY: PARAMS is no longer written.
    let seed = unsafe { (*PARAMS.ptr()).seed };
    let t0 = counter().1;
    for &(s, t) in f.as_slice() {
        for a in (s..t).step_by(8) {
            // SAFETY: free RAM: not the kernel, its stacks, the initrd or the tree.
            unsafe { write_volatile(a as *mut u64, protocol::memtest_pattern(a, seed)) };
        }
    }
    for &(s, t) in f.as_slice() {
        for a in (s..t).step_by(8) {
            // SAFETY: as above.
            let got = unsafe { read_volatile(a as *const u64) };
            let want = protocol::memtest_pattern(a, seed);
            if got != want {
                say!("shmvm: memtest bytes=", Dec(f.bytes), " failed at ", Hex(a));
                say!("shmvm: memtest got=", Hex(got), " want=", Hex(want));
                return Err("memtest");
            }
        }
    }
    say!(
        "shmvm: memtest bytes=",
        Dec(f.bytes),
        " ok ms=",
        Dec(ms_since(t0))
    );
    Ok(())
}

fn initrd() -> Result<(), &'static str> {
    let Some((start, end)) = info().initrd.filter(|(s, e)| e > s) else {
        say!("shmvm: initrd absent");
        return Err("no_initrd");
    };
    // SAFETY: the initrd the VMM loaded, as the device tree says.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    say!(
        "shmvm: initrd size=",
        Dec(end - start),
        " fnv1a64=",
        Hex16(protocol::fnv1a64(bytes)),
        " addr=",
        Hex(start)
    );
    Ok(())
}

/// Starts every secondary CPU of the device tree with PSCI CPU_ON, waits
/// for each to write its MPIDR into its mailbox and turn itself off
/// (AFFINITY_INFO says OFF), and checks that CPU_ON of the running boot
/// CPU answers ALREADY_ON.
fn smp() -> Result<(), &'static str> {
    let i = info();
    let me = mpidr();
    let v = psci(PSCI_VERSION, 0, 0, 0);
    say!(
        "shmvm: smp psci=",
        Dec(((v >> 16) & 0xffff) as u64),
        ".",
        Dec((v & 0xffff) as u64),
        " boot_mpidr=",
        Hex(me)
    );
    // SAFETY: PARAMS is no longer written.
    let timeout = unsafe { (*PARAMS.ptr()).timeout_ms };
    let mut started = 0u64;
    let mut result = Ok(());
    for (n, &reg) in i.cpus[..i.ncpus].iter().enumerate() {
        let target = reg & MPIDR_AFF;
        if target == me {
            continue;
        }
        let t0 = counter().1;
        let on = psci(
            PSCI_CPU_ON,
            target,
            boot::secondary_entry as *const () as u64,
            n as u64,
        );
        let mut clock = Deadline::after_ms(timeout);
        let seen = loop {
            // SAFETY: the secondary writes its own word once; volatile read.
            let m = unsafe { read_volatile(&(*MAILBOX.ptr())[n]) };
            if m & MAILBOX_SEEN != 0 || protocol::Clock::expired(&mut clock) {
                break m;
            }
        };
        let off = loop {
            let a = psci(PSCI_AFFINITY_INFO, target, 0, 0);
            if a == AFFINITY_OFF || protocol::Clock::expired(&mut clock) {
                break a;
            }
        };
        let ok = on == 0 && seen == (target | MAILBOX_SEEN) && off == AFFINITY_OFF;
        say!(
            "shmvm: smp cpu=",
            Dec(n as u64),
            " mpidr=",
            Hex(target),
            " cpu_on=",
            Dec(on as u64),
            " mailbox=",
            Hex(seen),
            " affinity_info=",
            Dec(off as u64),
            " ms=",
            Dec(ms_since(t0)),
            if ok { " ok" } else { " failed" }
        );
        if ok {
            started += 1;
        } else if result.is_ok() {
            result = Err("smp_secondary");
        }
    }
    let again = psci(
        PSCI_CPU_ON,
        me,
        boot::secondary_entry as *const () as u64,
        0,
    );
    say!(
        "shmvm: smp started=",
        Dec(started),
        " boot_cpu_on=",
        if again == PSCI_ALREADY_ON {
            "already_on"
        } else {
            "wrong"
        }
    );
    if again != PSCI_ALREADY_ON {
        return Err("smp_cpu_on_boot_cpu");
    }
    result
}

/// A secondary's Rust entry (from `boot.rs`, on its own stack): reports
/// its MPIDR in its mailbox and turns itself off.
pub extern "C" fn secondary_main(index: u64) -> ! {
    let slot = index as usize;
    if slot < MAX_CPUS {
        // SAFETY: only this CPU writes its mailbox word; the boot CPU polls it.
        unsafe { write_volatile(&mut (*MAILBOX.ptr())[slot], mpidr() | MAILBOX_SEEN) };
    }
    psci(PSCI_CPU_OFF, 0, 0, 0);
    loop {
        // SAFETY: CPU_OFF does not return; wait if it did.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// Any exception (none is expected: interrupts stay masked): its vector
/// index, syndrome, return address and fault address.
pub extern "C" fn exception_handler(vector: u64) -> ! {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reads system registers.
    unsafe {
        asm!("mrs {}, esr_el1", "mrs {}, elr_el1", "mrs {}, far_el1", out(reg) esr,
            out(reg) elr, out(reg) far, options(nomem, nostack))
    };
    say!(
        "shmvm: exception vector=",
        Dec(vector),
        " esr=",
        Hex(esr),
        " elr=",
        Hex(elr),
        " far=",
        Hex(far),
        " mpidr=",
        Hex(mpidr())
    );
    fail_now("exception")
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if let Some(l) = info.location() {
        say!("shmvm: panic at ", l.file(), ":", Dec(u64::from(l.line())));
    }
    fail_now("panic")
}
