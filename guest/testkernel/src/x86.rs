//! The x86_64 kernel: `kmain` (entered from `boot.rs`'s PVH and 64-bit
//! stubs), the boot job and report, the memtest and initrd tests, the
//! verdict through the debug-exit port, exception and panic handlers, and
//! the mem* functions the compiler calls.

use crate::bootinfo::INFO;
use crate::console::{Dec, Hex, Hex16};
use crate::params::{PARAMS, Test};
use crate::ranges::E820_RAM;
use crate::{
    FAILURE, boot, bootinfo, console, cpu, doorbell, ivshmem, jobs, note_failure, paging, say,
    snapcount, storm, tables,
};

const EXIT_PORT: u16 = 0xf4;
const EXIT_PASS: u8 = 0x10;
const EXIT_FAIL: u8 = 0x11;

/// Prints the verdict and exits through the debug-exit port; falls back to
/// an i8042 reset, then halts.
fn finish() -> ! {
    // SAFETY: single CPU, CPL0 only.
    let failure = unsafe { *FAILURE.ptr() };
    match failure {
        None => {
            say!("shmvm: verdict=pass");
            cpu::outb(EXIT_PORT, EXIT_PASS);
        }
        Some(why) => {
            say!("shmvm: verdict=fail reason=", why);
            cpu::outb(EXIT_PORT, EXIT_FAIL);
        }
    }
    cpu::outb(0x64, 0xfe);
    cpu::halt_forever()
}

fn fail_now(why: &'static str) -> ! {
    note_failure(why);
    finish()
}

#[unsafe(no_mangle)]
extern "C" fn kmain(entry: u32, info: u64) -> ! {
    console::init();
    say!(if entry == boot::ENTRY_PVH {
        "shmvm: entry=pvh"
    } else {
        "shmvm: entry=linux64"
    });
    cpu::init();
    if cpu::user(boot_job, u64::from(entry), info, 0) != 0 {
        finish();
    }
    // SAFETY: single CPU, CPL0 only; PARAMS is no longer written.
    let p = unsafe { &*PARAMS.ptr() };
    for t in p.tests() {
        let r = match t {
            Test::Boot => Ok(()),
            Test::Memtest => memtest(),
            Test::Initrd => initrd(),
            Test::Ivshmem => ivshmem::handshake(),
            Test::IvshmemMove => ivshmem::move_bar2(),
            Test::IvshmemSlots => ivshmem::slots(),
            Test::IvshmemBench => ivshmem::bench(),
            Test::DoorbellSelf => doorbell::ring_self(),
            Test::DoorbellPing => doorbell::ping_pong(true),
            Test::DoorbellPong => doorbell::ping_pong(false),
            Test::DoorbellBad => doorbell::bad_rings(),
            Test::DoorbellMasked => doorbell::masked_ring(),
            Test::Snapcount => snapcount::run().map(|_| ()),
            Test::SnapcountIvshmem => snapcount::run_with_ivshmem(),
            Test::Storm => storm::run(),
            Test::Smp => Err("not_on_x86_64"),
        };
        if let Err(why) = r {
            note_failure(why);
        }
    }
    finish()
}

/// Ring-3 job: everything up to the tests (no port I/O): reads the boot
/// structures, parses the command line, computes the free RAM ranges,
/// counts CPUs and renders the boot report (written out when it returns).
/// Returns 1 if the boot structures are unusable (reason noted), else 0.
extern "C" fn boot_job(entry: u64, info: u64, _: u64) -> u64 {
    if let Err(why) = bootinfo::load(entry as u32, info) {
        note_failure(why);
        return 1;
    }
    jobs::parse_cmdline();
    jobs::free_ranges();
    tables::count();
    // SAFETY: CPL0 is suspended; PARAMS is no longer written.
    let p = unsafe { &*PARAMS.ptr() };
    if let Some((why, _)) = p.error {
        note_failure(why);
    }
    report();
    if let Some((why, at)) = p.error {
        say!(
            "shmvm: bad parameter offset=",
            Dec(at as u64),
            " reason=",
            why
        );
    }
    0
}

/// The boot report: cmdline, memory map, RAM size, CPU count (in ring 3,
/// part of `boot_job`).
fn report() {
    // SAFETY: CPL0 is suspended while the job runs; nothing writes these.
    let (info, cpus, free, p) = unsafe {
        (
            &*INFO.ptr(),
            &*tables::CPUS.ptr(),
            &*jobs::FREE.ptr(),
            &*PARAMS.ptr(),
        )
    };
    say!("shmvm: cmdline=", &info.cmdline[..info.cmdline_len]);
    let mut ram = 0;
    for e in info.e820[..info.e820_len]
        .iter()
        .filter(|e| e.end > e.start)
    {
        say!(
            "shmvm: e820 start=",
            Hex(e.start),
            " end=",
            Hex(e.end),
            " type=",
            Dec(u64::from(e.kind))
        );
        if e.kind == E820_RAM {
            ram += e.end.saturating_sub(e.start);
        }
    }
    say!("shmvm: ram_bytes=", Dec(ram));
    let (k0, k1) = bootinfo::kernel_range();
    say!(
        "shmvm: kernel start=",
        Hex(k0),
        " end=",
        Hex(k1),
        " free_bytes=",
        Dec(free.bytes)
    );
    say!(
        "shmvm: cpu tables mp=",
        Hex(cpus.mp_addr),
        " mp_cfg=",
        Hex(cpus.mp_cfg),
        " mp_entries=",
        Dec(cpus.mp_entries),
        " mp_cpus=",
        Dec(cpus.mp_cpus),
        " rsdp=",
        Hex(cpus.rsdp_addr),
        " madt=",
        Hex(cpus.madt_addr),
        " madt_cpus=",
        Dec(cpus.madt_cpus)
    );
    let n = if cpus.mp_addr != 0 {
        cpus.mp_cpus
    } else {
        cpus.madt_cpus
    };
    say!("shmvm: cpus=", Dec(n));
    if n == 0 {
        note_failure("no_cpu_tables");
    }
    if cpus.mp_addr != 0 && cpus.madt_addr != 0 && cpus.mp_cpus != cpus.madt_cpus {
        note_failure("mp_madt_cpus_differ");
    }
    if let Some(want) = p.expect_cpus
        && want != n
    {
        note_failure("cpus_mismatch");
    }
    // The legacy hole below 1 MiB may be missing from usable RAM.
    if let Some(want) = p.expect_ram
        && (ram > want || ram + 0x10_0000 < want)
    {
        note_failure("ram_mismatch");
    }
}

fn memtest() -> Result<(), &'static str> {
    // SAFETY: single CPU, CPL0 only.
    let (top, bytes) = unsafe {
        let f = &*jobs::FREE.ptr();
        (f.top, f.bytes)
    };
    paging::ensure_mapped(0, top)?;
    // SAFETY: as above.
    let seed = unsafe { (*PARAMS.ptr()).seed };
    if cpu::user(jobs::memtest_job, seed, 0, 0) == 0 {
        say!("shmvm: memtest bytes=", Dec(bytes), " ok");
        return Ok(());
    }
    // SAFETY: the job has returned.
    let r = unsafe { &*jobs::MEMTEST.ptr() };
    say!(
        "shmvm: memtest bytes=",
        Dec(bytes),
        " failed at ",
        Hex(r.failed_at)
    );
    say!("shmvm: memtest got=", Hex(r.got), " want=", Hex(r.want));
    Err("memtest")
}

fn initrd() -> Result<(), &'static str> {
    // SAFETY: single CPU, CPL0 only.
    let (start, size) = unsafe { ((*INFO.ptr()).initrd_start, (*INFO.ptr()).initrd_size) };
    if size == 0 {
        say!("shmvm: initrd absent");
        return Err("no_initrd");
    }
    paging::ensure_mapped(start, start + size)?;
    let h = cpu::user(jobs::fnv1a_job, start, size, 0);
    say!(
        "shmvm: initrd size=",
        Dec(size),
        " fnv1a64=",
        Hex16(h),
        " addr=",
        Hex(start)
    );
    Ok(())
}

/// Called by the exception stubs with [vector, error, rip, cs, rflags, rsp, ss].
#[unsafe(no_mangle)]
extern "C" fn exception_handler(frame: *const u64) -> ! {
    // SAFETY: the stub passes its own stack frame (7 words).
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    // This may have interrupted a job: no job may run from here on.
    console::render_at_cpl0();
    say!(
        "shmvm: exception vector=",
        Dec(f[0]),
        " error=",
        Hex(f[1]),
        " rip=",
        Hex(f[2]),
        " cs=",
        Hex(f[3]),
        " rflags=",
        Hex(f[4]),
        " rsp=",
        Hex(f[5]),
        " ss=",
        Hex(f[6]),
        " cr2=",
        Hex(cpu::read_cr2())
    );
    fail_now("exception")
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let in_job = cpu::cpl() != 0;
    if !in_job {
        // This may be inside `cpu::user` (e.g. rendering): no job from here on.
        console::render_at_cpl0();
    }
    if let Some(l) = info.location() {
        say!("shmvm: panic at ", l.file(), ":", Dec(u64::from(l.line())));
    }
    if in_job {
        // Ring 3 cannot print or exit: note the reason and fault into the
        // exception handler, which writes out the pending line and exits.
        note_failure("panic");
        // SAFETY: `ud2` only raises #UD (not at `user_exit`, so it is
        // reported as an exception).
        unsafe { core::arch::asm!("ud2", options(nomem, nostack, noreturn)) }
    }
    fail_now("panic")
}

// The compiler emits calls to these; there is no libc.

#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe {
        core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is safe when dst is below src or disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: overlapping with dst above src: copy backwards.
    unsafe {
        core::arch::asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _, options(nostack));
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid.
    unsafe {
        core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
            options(nostack, preserves_flags));
    }
    dst
}

#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
