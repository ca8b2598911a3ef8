//! ivshmem-doorbell guest side: MSI-X set up by hand (LAPIC on, one IDT gate
//! per vector, table entries to this CPU), rings through BAR0's Doorbell
//! register, interrupts counted by a tiny ISR, and a ping-pong that measures
//! round trips.
//!
//! The waiting and ringing run as ring-3 jobs with IF set (native speed on
//! PVM); an interrupt enters its CPL0 stub through TSS.RSP0, counts, writes
//! the LAPIC EOI and returns. Region layout (BAR2), shared with host code:
//! `READY_OFF + 8 * id` holds [`READY`] once peer `id` is in its loop;
//! `SEQ_OFF + 8 * id` holds the last round peer `id` rang for.

use core::arch::global_asm;
use core::ptr::{read_volatile, write_volatile};

use crate::console::{Dec, Hex};
use crate::cpu::{self, rdtsc};
use crate::ivshmem::{self, Dev};
use crate::params::PARAMS;
use crate::pci::{CMD_MEMORY, COMMAND};
use crate::{Global, boot, paging, say, timer};

/// IDT vector of MSI-X vector `i` is `VECTOR_BASE + i` (two are wired).
const VECTOR_BASE: u32 = 0x40;
const WIRED: u64 = 2;
const LAPIC: u64 = 0xFEE0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_SVR: u64 = 0xF0;
const DOORBELL: u64 = 12;
const CMD_MASTER: u16 = 1 << 2;
const CAP_MSIX: u8 = 0x11;
const TICK_VECTOR: usize = 0x42;
const LAPIC_LVT_TIMER: u64 = 0x320;
const LAPIC_TIMER_INIT: u64 = 0x380;
const LAPIC_TIMER_DIV: u64 = 0x3E0;
/// LAPIC timer period in bus cycles (KVM's LAPIC bus runs at 1 GHz: 10 ms).
const TICK_CYCLES: u32 = 10_000_000;
pub const READY_OFF: u64 = 0x1000;
pub const SEQ_OFF: u64 = 0x2000;
pub const READY: u64 = 0x5245_4144_5944_4221;
/// Most rounds the latency table holds.
const MAX_ROUNDS: usize = 20_000;

unsafe extern "C" {
    static doorbell_isr0: u8;
    static doorbell_isr1: u8;
    /// The LAPIC timer's stub (wakes `hlt` for resends in halt mode).
    static doorbell_tick: u8;
    /// Interrupts taken per wired vector (written by the ISRs).
    static mut doorbell_irqs: [u64; 2];
}

// The ISRs: count, EOI, return. Interrupt gates: IF is clear inside.
global_asm!(
    r#"
    .section .text, "ax"
    .balign 16
    .global doorbell_isr0
doorbell_isr0:
    push rax
    inc qword ptr [rip + doorbell_irqs]
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
    .balign 16
    .global doorbell_isr1
doorbell_isr1:
    push rax
    inc qword ptr [rip + doorbell_irqs + 8]
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq

    .balign 16
    .global doorbell_tick
doorbell_tick:
    push rax
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq

    .section .data, "aw"
    .balign 8
    .global doorbell_irqs
doorbell_irqs:
    .quad 0, 0
"#
);

/// What the jobs share with CPL0.
struct Job {
    bar0: u64,
    bar2: u64,
    me: u64,
    peer: u64,
    rounds: u64,
    deadline: u64,
    resend: u64,
    vectors: u64,
    /// MSI-X table entry 0 (its vector control word is at +12).
    table: u64,
    /// Wait with `sti; hlt` at CPL0 instead of spinning in ring 3.
    halt: u64,
    /// Outcome details.
    state: u64,
    resends: u64,
    /// Vector 0's interrupt count already looked at (kept across rounds:
    /// an answer may arrive before the next wait starts).
    seen: u64,
}

static JOB: Global<Job> = Global::new(Job {
    bar0: 0,
    bar2: 0,
    me: 0,
    peer: 0,
    rounds: 0,
    deadline: 0,
    resend: 0,
    vectors: 0,
    table: 0,
    halt: 0,
    state: 0,
    resends: 0,
    seen: 0,
});

static LAT: Global<[u64; MAX_ROUNDS]> = Global::new([0; MAX_ROUNDS]);

fn rd32(a: u64) -> u32 {
    // SAFETY: callers pass mapped device or LAPIC addresses.
    unsafe { read_volatile(a as *const u32) }
}
fn wr32(a: u64, v: u32) {
    // SAFETY: as rd32.
    unsafe { write_volatile(a as *mut u32, v) }
}
fn rd64(a: u64) -> u64 {
    // SAFETY: callers pass addresses inside the mapped BAR2.
    unsafe { read_volatile(a as *const u64) }
}
fn wr64(a: u64, v: u64) {
    // SAFETY: as rd64.
    unsafe { write_volatile(a as *mut u64, v) }
}

fn irqs(v: usize) -> u64 {
    // SAFETY: an aligned u64 the ISR increments; a torn read is impossible
    // on x86-64, a stale one is re-read by the callers' loops.
    unsafe { read_volatile((&raw const doorbell_irqs).cast::<u64>().add(v)) }
}

fn ring(bar0: u64, peer: u64, vector: u64) {
    wr32(bar0 + DOORBELL, ((peer as u32) << 16) | vector as u32);
}

/// Finds the device, turns the LAPIC on, sets the gates and programs the
/// MSI-X table (CPL0, a few hundred instructions).
fn setup() -> Result<Dev, &'static str> {
    let d = ivshmem::probe()?;
    // SAFETY: single CPU, CPL0 only; PARAMS is no longer written.
    let p = unsafe { &*PARAMS.ptr() };
    let f = d.bdf;
    let status = f.read16(0x06);
    if status & 0x10 == 0 {
        say!("shmvm: doorbell no capability list (ivshmem-plain?)");
        return Err("doorbell_no_msix");
    }
    let mut cap = (f.read32(0x34) & 0xFC) as u8;
    let mut guard = 0;
    while cap != 0 && (f.read32(cap) & 0xFF) as u8 != CAP_MSIX && guard < 48 {
        cap = ((f.read32(cap) >> 8) & 0xFC) as u8;
        guard += 1;
    }
    if cap == 0 || guard == 48 {
        say!("shmvm: doorbell no MSI-X capability");
        return Err("doorbell_no_msix");
    }
    let head = f.read32(cap);
    let vectors = u64::from((head >> 16) & 0x7FF) + 1;
    let table = f.read32(cap + 4);
    let bir = (table & 7) as u8;
    let bar = u64::from(f.read32(0x10 + 4 * bir) & !0xF);
    let table_addr = bar + u64::from(table & !7);
    paging::ensure_mapped(table_addr, table_addr + 16 * vectors)?;
    // Firmware may have left the 8259s unmasked with the PIT running
    // (SeaBIOS: IRQ0 on vector 8); only MSI-X may interrupt the jobs.
    cpu::outb(0x21, 0xFF);
    cpu::outb(0xA1, 0xFF);
    let apic_id = rd32(LAPIC + LAPIC_ID) >> 24;
    wr32(LAPIC + LAPIC_SVR, 0x1FF);
    let stubs = [
        &raw const doorbell_isr0 as u64,
        &raw const doorbell_isr1 as u64,
    ];
    for (i, s) in stubs.iter().enumerate() {
        cpu::set_gate(VECTOR_BASE as usize + i, *s);
    }
    for i in 0..vectors.min(WIRED) {
        let e = table_addr + 16 * i;
        wr32(e, 0xFEE0_0000 | (apic_id << 12));
        wr32(e + 4, 0);
        wr32(e + 8, VECTOR_BASE + i as u32);
        wr32(e + 12, 0);
    }
    f.write16(COMMAND, f.read16(COMMAND) | CMD_MEMORY | CMD_MASTER);
    // Message Control: enable, function unmasked (the ID/next bytes are
    // read-only).
    let control = ((head >> 16) as u16 | 0x8000) & !0x4000;
    f.write32(cap, (head & 0xFFFF) | (u32::from(control) << 16));
    say!(
        "shmvm: doorbell msix vectors=",
        Dec(vectors),
        " table=",
        Hex(table_addr),
        " bir=",
        Dec(u64::from(bir)),
        " apic=",
        Dec(u64::from(apic_id)),
        " id=",
        Dec(p.ivposition)
    );
    // SAFETY: single CPU; no job runs now.
    unsafe {
        let j = &mut *JOB.ptr();
        (j.bar0, j.bar2, j.me, j.peer) = (d.bar0, d.bar2, p.ivposition, p.peer);
        j.rounds = p.rounds.clamp(1, MAX_ROUNDS as u64 - 1);
        j.deadline = timer::deadline(p.timeout_ms);
        j.resend = timer::tsc_khz() * 20;
        j.vectors = vectors.min(WIRED);
        j.table = table_addr;
        j.halt = p.halt;
        (j.state, j.resends, j.seen) = (0, 0, irqs(0));
    }
    Ok(d)
}

/// Runs `f` in ring 3 with interrupts enabled.
fn user_with_interrupts(f: extern "C" fn(u64, u64, u64) -> u64) -> u64 {
    // SAFETY: single CPU, CPL0; the gates for the wired vectors are set and
    // the #UD return path clears IF again (interrupt gate).
    unsafe { boot::user_rflags = 0x202 };
    let r = cpu::user(f, 0, 0, 0);
    // SAFETY: as above.
    unsafe { boot::user_rflags = 0x2 };
    r
}

/// Ring-3 job: ring this peer itself on each wired vector and take each
/// interrupt. 0 ok, else 1 + the vector that never came.
extern "C" fn self_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB.
    let j = unsafe { &mut *JOB.ptr() };
    for v in 0..j.vectors {
        let before = irqs(v as usize);
        ring(j.bar0, j.me, v);
        while irqs(v as usize) == before {
            if rdtsc() > j.deadline {
                return 1 + v;
            }
            core::hint::spin_loop();
        }
    }
    0
}

pub fn ring_self() -> Result<(), &'static str> {
    setup()?;
    let r = user_with_interrupts(self_job);
    // SAFETY: the job has returned.
    let j = unsafe { &*JOB.ptr() };
    if r != 0 {
        say!("shmvm: doorbell self timeout vector=", Dec(r - 1));
        return Err("doorbell_self_timeout");
    }
    say!(
        "shmvm: doorbell self ok vectors=",
        Dec(j.vectors),
        " irqs=",
        Dec(irqs(0)),
        ",",
        Dec(irqs(1))
    );
    Ok(())
}

/// Waits for an interrupt on vector 0 after which the peer's sequence is
/// `want`. `again` is called when the peer's sequence shows it missed our
/// last ring (it re-sends). Returns false at the deadline.
/// Waits a little: spins (ring 3), or halts until an interrupt (CPL0, halt
/// mode; the LAPIC timer ticks so resends still happen).
fn idle(j: &Job) {
    if j.halt != 0 {
        // SAFETY: CPL0 in halt mode only; the gates for every vector that
        // can arrive (doorbells, the tick) are set. `sti` holds interrupts
        // off for one more instruction, so a wake-up cannot slip in before
        // `hlt`.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) }
    } else {
        core::hint::spin_loop();
    }
}

fn wait_for(j: &mut Job, want: u64, mut again: impl FnMut(&mut Job)) -> bool {
    let seq = j.bar2 + SEQ_OFF + 8 * j.peer;
    let mut next_resend = rdtsc() + j.resend;
    loop {
        let now = irqs(0);
        if now != j.seen {
            j.seen = now;
            if rd64(seq) == want {
                return true;
            }
        }
        let t = rdtsc();
        if t > next_resend {
            // A ring may have been lost while the other VMM learned of us:
            // nudge (the other side answers its last round again).
            again(j);
            j.resends += 1;
            next_resend = t + j.resend;
        }
        if t > j.deadline {
            j.state = rd64(seq);
            return false;
        }
        idle(j);
    }
}

/// Ring-3 job: round 0 is a warm-up; rounds 1..=N are timed.
extern "C" fn ping_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB and LAT.
    let (j, lat) = unsafe { (&mut *JOB.ptr(), &mut *LAT.ptr()) };
    let (mine, theirs) = (j.bar2 + SEQ_OFF + 8 * j.me, j.bar2 + READY_OFF + 8 * j.peer);
    wr64(j.bar2 + READY_OFF + 8 * j.me, READY);
    while rd64(theirs) != READY {
        if rdtsc() > j.deadline {
            return 1;
        }
        idle(j);
    }
    for r in 0..=j.rounds {
        wr64(mine, r + 1);
        let t0 = rdtsc();
        ring(j.bar0, j.peer, 0);
        let ok = wait_for(j, r + 1, |j| ring(j.bar0, j.peer, 0));
        if !ok {
            return 2 + r;
        }
        lat[r as usize] = rdtsc() - t0;
    }
    0
}

/// Ring-3 job: answer every round.
extern "C" fn pong_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB.
    let j = unsafe { &mut *JOB.ptr() };
    let mine = j.bar2 + SEQ_OFF + 8 * j.me;
    wr64(j.bar2 + READY_OFF + 8 * j.me, READY);
    for r in 0..=j.rounds {
        // Our peer re-rings when it misses an answer: answer again.
        let ok = wait_for(j, r + 1, |j| {
            if r > 0 && rd64(j.bar2 + SEQ_OFF + 8 * j.peer) == r {
                ring(j.bar0, j.peer, 0);
            }
        });
        if !ok {
            return 2 + r;
        }
        wr64(mine, r + 1);
        ring(j.bar0, j.peer, 0);
    }
    0
}

/// Shell sort of the first `n` latencies (ring 3).
extern "C" fn sort_job(n: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of LAT.
    let lat = unsafe { &mut *LAT.ptr() };
    let a = &mut lat[1..=n as usize];
    let mut gap = a.len() / 2;
    while gap > 0 {
        for i in gap..a.len() {
            let v = a[i];
            let mut k = i;
            while k >= gap && a[k - gap] > v {
                a[k] = a[k - gap];
                k -= gap;
            }
            a[k] = v;
        }
        gap /= 2;
    }
    0
}

pub fn ping_pong(ping: bool) -> Result<(), &'static str> {
    setup()?;
    let khz = timer::tsc_khz();
    // SAFETY: no job runs now.
    let (peer, rounds) = unsafe { ((*JOB.ptr()).peer, (*JOB.ptr()).rounds) };
    say!(
        if ping {
            "shmvm: doorbell ping start peer="
        } else {
            "shmvm: doorbell pong start peer="
        },
        Dec(peer),
        " rounds=",
        Dec(rounds)
    );
    let job = if ping { ping_job } else { pong_job };
    // SAFETY: no job runs now.
    let r = if unsafe { (*JOB.ptr()).halt } != 0 {
        // Halt mode: the same loop at CPL0, sleeping in `hlt` between
        // interrupts (slower per round on PVM, where CPL0 is emulated, but a
        // waiting vCPU leaves the host CPU to others).
        cpu::set_gate(TICK_VECTOR, &raw const doorbell_tick as u64);
        wr32(LAPIC + LAPIC_TIMER_DIV, 0xB);
        wr32(LAPIC + LAPIC_LVT_TIMER, TICK_VECTOR as u32 | (1 << 17));
        wr32(LAPIC + LAPIC_TIMER_INIT, TICK_CYCLES);
        let r = job(0, 0, 0);
        wr32(LAPIC + LAPIC_TIMER_INIT, 0);
        wr32(LAPIC + LAPIC_LVT_TIMER, 1 << 16);
        r
    } else {
        user_with_interrupts(job)
    };
    // SAFETY: the job has returned.
    let j = unsafe { &*JOB.ptr() };
    if r == 1 {
        say!("shmvm: doorbell peer never ready peer=", Dec(peer));
        return Err("doorbell_peer_not_ready");
    }
    if r != 0 {
        say!(
            "shmvm: doorbell timeout round=",
            Dec(r - 2),
            " peer_seq=",
            Dec(j.state),
            " irqs=",
            Dec(irqs(0)),
            " resends=",
            Dec(j.resends)
        );
        return Err("doorbell_timeout");
    }
    if !ping {
        say!(
            "shmvm: doorbell pong ok rounds=",
            Dec(rounds),
            " irqs=",
            Dec(irqs(0)),
            " resends=",
            Dec(j.resends)
        );
        return Ok(());
    }
    cpu::user(sort_job, rounds, 0, 0);
    // SAFETY: the job has returned.
    let lat = unsafe { &*LAT.ptr() };
    let ns = |t: u64| t * 1_000_000 / khz;
    let n = rounds as usize;
    let at = |q: usize| lat[1 + ((n - 1) * q / 100)];
    say!(
        "shmvm: doorbell pingpong rounds=",
        Dec(rounds),
        " median_ns=",
        Dec(ns(at(50))),
        " p99_ns=",
        Dec(ns(at(99))),
        " min_ns=",
        Dec(ns(lat[1])),
        " max_ns=",
        Dec(ns(lat[n])),
        " resends=",
        Dec(j.resends),
        if j.halt != 0 {
            " wait=hlt"
        } else {
            " wait=spin"
        }
    );
    Ok(())
}

/// Ring-3 job: mask vector 0, ring itself, see no interrupt for ~50 ms,
/// unmask: the pending ring arrives then. 0 ok, 1 delivered while masked,
/// 2 lost.
extern "C" fn masked_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB.
    let j = unsafe { &mut *JOB.ptr() };
    let ctrl = j.table + 12;
    let before = irqs(0);
    wr32(ctrl, 1);
    ring(j.bar0, j.me, 0);
    let quiet_until = rdtsc() + j.resend * 5 / 2;
    while rdtsc() < quiet_until {
        if irqs(0) != before {
            return 1;
        }
        core::hint::spin_loop();
    }
    wr32(ctrl, 0);
    while irqs(0) == before {
        if rdtsc() > j.deadline {
            return 2;
        }
        core::hint::spin_loop();
    }
    0
}

pub fn masked_ring() -> Result<(), &'static str> {
    setup()?;
    match user_with_interrupts(masked_job) {
        0 => {
            say!(
                "shmvm: doorbell masked ring delivered on unmask irqs=",
                Dec(irqs(0))
            );
            Ok(())
        }
        1 => {
            say!("shmvm: doorbell masked ring delivered while masked");
            Err("doorbell_masked_delivered")
        }
        _ => {
            say!("shmvm: doorbell masked ring lost");
            Err("doorbell_masked_lost")
        }
    }
}

/// Ring-3 job: ring an absent peer and an absent vector, then this peer
/// itself: the bad rings go nowhere and the device still works.
extern "C" fn bad_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB.
    let j = unsafe { &mut *JOB.ptr() };
    let before = irqs(0);
    ring(j.bar0, 0xFFFF, 0);
    ring(j.bar0, j.me, 0x7F);
    ring(j.bar0, j.peer, 0x7F);
    ring(j.bar0, j.me, 0);
    while irqs(0) == before {
        if rdtsc() > j.deadline {
            return 1;
        }
        core::hint::spin_loop();
    }
    0
}

pub fn bad_rings() -> Result<(), &'static str> {
    setup()?;
    if user_with_interrupts(bad_job) != 0 {
        say!("shmvm: doorbell bad rings: self ring never came");
        return Err("doorbell_bad_self_timeout");
    }
    say!("shmvm: doorbell bad rings ok irqs=", Dec(irqs(0)));
    Ok(())
}
