//! ivshmem-plain (1af4:1110) guest side: PCI checks, the host handshake,
//! BAR2 move, multi-party slots and the bandwidth benchmark. The region
//! protocols are documented in README.md; their layouts and patterns are the
//! protocol crate's (guest/protocol), shared with host-side code.

use core::ptr::{read_volatile, write_volatile};

use crate::console::{Dec, Digits, Hex};
use crate::cpu::{self, rdtsc};
use crate::params::PARAMS;
use crate::pci::{self, Bdf, CMD_MEMORY, COMMAND};
use crate::{Global, jobs, paging, say, timer};
use protocol::*;

pub const VENDOR: u16 = 0x1af4;
pub const DEVICE: u16 = 0x1110;
pub const BAR0_SIZE: u64 = 256;
pub const IVPOSITION: u64 = 8;

#[derive(Clone, Copy)]
pub struct Dev {
    pub bdf: Bdf,
    pub bar0: u64,
    pub bar2: u64,
    pub size: u64,
}

static DEV: Global<Option<Dev>> = Global::new(None);

fn fail_if(cond: bool, why: &'static str) -> Result<(), &'static str> {
    if cond { Err(why) } else { Ok(()) }
}

/// Finds and checks the device once; later calls return the cached result.
pub fn probe() -> Result<Dev, &'static str> {
    // SAFETY: single CPU, CPL0 only.
    if let Some(d) = unsafe { *DEV.ptr() } {
        return Ok(d);
    }
    let Some(f) = pci::find(VENDOR, DEVICE) else {
        say!("shmvm: ivshmem not found on PCI bus 0");
        return Err("ivshmem_not_found");
    };
    let class = f.read32(0x08);
    let subsys = f.read32(0x2C);
    say!(
        "shmvm: ivshmem pci=",
        Digits(u64::from(f.bus), 2),
        ":",
        Digits(u64::from(f.dev), 2),
        ".",
        Digits(u64::from(f.func), 1),
        " id=1af4:1110 rev=",
        Dec(u64::from(class & 0xFF)),
        " class=",
        Digits(u64::from(class >> 8), 6),
        " subsystem=",
        Digits(u64::from(subsys & 0xFFFF), 4),
        ":",
        Digits(u64::from(subsys >> 16), 4)
    );
    fail_if(class & 0xFF != 1, "ivshmem_revision")?;
    fail_if(class >> 8 != 0x05_00_00, "ivshmem_class")?;
    fail_if(subsys != 0x1100_1af4, "ivshmem_subsystem")?;

    // BAR sizing with decoding off, as firmware and Linux do.
    let cmd = f.read16(COMMAND);
    f.write16(COMMAND, cmd & !(CMD_MEMORY | pci::CMD_IO));
    let b0 = f.read32(0x10);
    f.write32(0x10, !0);
    let m0 = f.read32(0x10);
    f.write32(0x10, b0);
    let (lo, hi) = (f.read32(0x18), f.read32(0x1C));
    f.write32(0x18, !0);
    f.write32(0x1C, !0);
    let (mlo, mhi) = (f.read32(0x18), f.read32(0x1C));
    f.write32(0x18, lo);
    f.write32(0x1C, hi);
    let restored = f.read32(0x10) == b0 && f.read32(0x18) == lo && f.read32(0x1C) == hi;
    f.write16(COMMAND, cmd | CMD_MEMORY);

    let size0 = u64::from(!(m0 & !0xF)).wrapping_add(1) & 0xFFFF_FFFF;
    let mask2 = ((u64::from(mhi) << 32) | u64::from(mlo)) & !0xF;
    let size2 = (!mask2).wrapping_add(1);
    let bar0 = u64::from(b0 & !0xF);
    let bar2 = ((u64::from(hi) << 32) | u64::from(lo)) & !0xF;
    say!(
        "shmvm: ivshmem bar0=",
        Hex(bar0),
        " size=",
        Dec(size0),
        " flags=",
        Hex(u64::from(b0 & 0xF))
    );
    say!(
        "shmvm: ivshmem bar2=",
        Hex(bar2),
        " size=",
        Dec(size2),
        " flags=",
        Hex(u64::from(lo & 0xF))
    );
    fail_if(b0 & 0x7 != 0, "ivshmem_bar0_not_mem32")?;
    fail_if(size0 != BAR0_SIZE, "ivshmem_bar0_size")?;
    fail_if(lo & 0xF != 0xC, "ivshmem_bar2_not_mem64_prefetchable")?;
    fail_if(
        size2 == 0 || size2 & (size2 - 1) != 0,
        "ivshmem_bar2_size_not_pow2",
    )?;
    // SAFETY: single CPU, CPL0 only.
    if let Some(want) = unsafe { (*PARAMS.ptr()).ivshmem_size } {
        fail_if(size2 != want, "ivshmem_bar2_size")?;
    }
    fail_if(!restored, "ivshmem_bar_restore")?;
    fail_if(bar0 == 0 || bar2 == 0, "ivshmem_bar_unassigned")?;
    fail_if(bar2 & (size2 - 1) != 0, "ivshmem_bar2_misaligned")?;
    paging::ensure_mapped(bar0, bar0 + BAR0_SIZE)?;
    paging::ensure_mapped(bar2, bar2 + size2)?;

    // SAFETY: BAR0 is mapped (above) and decoded (memory space enabled).
    let ivpos = u64::from(unsafe { read_volatile((bar0 + IVPOSITION) as *const u32) });
    say!("shmvm: ivshmem ivposition=", Hex(ivpos));
    // SAFETY: single CPU, CPL0 only.
    let want_ivpos = unsafe { (*PARAMS.ptr()).ivposition };
    fail_if(ivpos != want_ivpos, "ivshmem_ivposition")?;
    let d = Dev {
        bdf: f,
        bar0,
        bar2,
        size: size2,
    };
    // SAFETY: as above.
    unsafe { *DEV.ptr() = Some(d) };
    Ok(d)
}

/// Shared between CPL0 and the ring-3 jobs below.
struct Job {
    base: u64,
    size: u64,
    seed: u64,
    deadline: u64,
    slot: u64,
    parties: u64,
    state: u64,
    bad_off: u64,
    got: u64,
    want: u64,
}

static JOB: Global<Job> = Global::new(Job {
    base: 0,
    size: 0,
    seed: 0,
    deadline: 0,
    slot: 0,
    parties: 0,
    state: 0,
    bad_off: 0,
    got: 0,
    want: 0,
});

fn rd32(a: u64) -> u32 {
    // SAFETY: callers pass addresses inside the mapped BAR2.
    unsafe { read_volatile(a as *const u32) }
}
fn wr32(a: u64, v: u32) {
    // SAFETY: as rd32.
    unsafe { write_volatile(a as *mut u32, v) }
}
fn rd64(a: u64) -> u64 {
    // SAFETY: as rd32.
    unsafe { read_volatile(a as *const u64) }
}
fn wr64(a: u64, v: u64) {
    // SAFETY: as rd32.
    unsafe { write_volatile(a as *mut u64, v) }
}

/// BAR2 as the protocol's shared region (ring 3: identity-mapped, user).
struct Region {
    base: u64,
    size: u64,
}

impl Shared for Region {
    fn size(&self) -> u64 {
        self.size
    }
    fn read32(&self, off: u64) -> u32 {
        rd32(self.base + off)
    }
    fn write32(&self, off: u64, v: u32) {
        wr32(self.base + off, v)
    }
    fn read64(&self, off: u64) -> u64 {
        rd64(self.base + off)
    }
    fn write64(&self, off: u64, v: u64) {
        wr64(self.base + off, v)
    }
}

/// A deadline in TSC ticks, the protocol's `Clock`.
struct TscDeadline(u64);

impl Clock for TscDeadline {
    fn expired(&mut self) -> bool {
        rdtsc() > self.0
    }
    fn pause(&mut self) {
        core::hint::spin_loop();
    }
}

/// Ring-3 job: the guest half of the handshake (`protocol::guest_handshake`).
/// 0 ok, 1 timeout, 2 host reported a P1 mismatch, 3 P2 mismatch (details
/// in JOB).
extern "C" fn handshake_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB.
    let j = unsafe { &mut *JOB.ptr() };
    let r = Region {
        base: j.base,
        size: j.size,
    };
    match guest_handshake(&r, j.seed, &mut TscDeadline(j.deadline)) {
        Ok(()) => 0,
        Err(GuestError::Timeout { state }) => {
            j.state = u64::from(state);
            1
        }
        Err(GuestError::HostSawBadP1) => 2,
        Err(GuestError::P2Mismatch { at, got, want }) => {
            (j.bad_off, j.got, j.want) = (at, got, want);
            3
        }
    }
}

pub fn handshake() -> Result<(), &'static str> {
    let d = probe()?;
    fail_if(d.size < 2 * DATA_OFF, "ivshmem_region_too_small")?;
    // SAFETY: single CPU; the job runs only inside cpu::user below.
    let (seed, timeout) = unsafe { ((*PARAMS.ptr()).seed, (*PARAMS.ptr()).timeout_ms) };
    let deadline = timer::deadline(timeout);
    // SAFETY: as above.
    unsafe {
        let j = &mut *JOB.ptr();
        (j.base, j.size, j.seed, j.deadline) = (d.bar2, d.size, seed, deadline);
    }
    say!(
        "shmvm: ivshmem handshake start seed=",
        Hex(seed),
        " data_len=",
        Dec(d.size - DATA_OFF)
    );
    let t0 = rdtsc();
    let r = cpu::user(handshake_job, 0, 0, 0);
    let ms = (rdtsc() - t0) / timer::tsc_khz();
    // SAFETY: the job has returned.
    let j = unsafe { &*JOB.ptr() };
    match r {
        0 => {
            say!("shmvm: ivshmem handshake ok ms=", Dec(ms));
            Ok(())
        }
        1 => {
            say!(
                "shmvm: ivshmem handshake timeout state=",
                Dec(j.state),
                " ms=",
                Dec(ms)
            );
            Err("ivshmem_handshake_timeout")
        }
        2 => {
            say!("shmvm: ivshmem handshake host reported P1 mismatch");
            Err("ivshmem_host_saw_bad_p1")
        }
        _ => {
            say!(
                "shmvm: ivshmem handshake P2 mismatch at offset=",
                Hex(j.bad_off),
                " got=",
                Hex(j.got),
                " want=",
                Hex(j.want)
            );
            Err("ivshmem_p2_mismatch")
        }
    }
}

/// Moves BAR2 and checks the data follows it.
pub fn move_bar2() -> Result<(), &'static str> {
    let d = probe()?;
    // SAFETY: single CPU, CPL0 only.
    let (want, seed) = unsafe { ((*PARAMS.ptr()).bar2, (*PARAMS.ptr()).seed) };
    let new = match want {
        Some(a) => a,
        None => move_target(&d).ok_or("ivshmem_move_no_target")?,
    };
    fail_if(
        new == d.bar2 || new & (d.size - 1) != 0,
        "ivshmem_move_bad_target",
    )?;
    paging::ensure_mapped(new, new + d.size)?;
    let (m0, m1) = (seed ^ 0x4D4F_5645_0000_0001, !seed ^ 0x4D4F_5645_0000_0002);
    let last = d.size - 8;
    wr64(d.bar2, m0);
    wr64(d.bar2 + last, m1);
    let f = d.bdf;
    let cmd = f.read16(COMMAND);
    f.write16(COMMAND, cmd & !CMD_MEMORY);
    let flags = f.read32(0x18) & 0xF;
    f.write32(0x18, (new as u32 & !0xF) | flags);
    f.write32(0x1C, (new >> 32) as u32);
    let back = ((u64::from(f.read32(0x1C)) << 32) | u64::from(f.read32(0x18))) & !0xF;
    f.write16(COMMAND, cmd | CMD_MEMORY);
    say!(
        "shmvm: ivshmem move bar2 from=",
        Hex(d.bar2),
        " to=",
        Hex(new),
        " readback=",
        Hex(back)
    );
    fail_if(back != new, "ivshmem_move_readback")?;
    // SAFETY: single CPU, CPL0 only.
    unsafe { *DEV.ptr() = Some(Dev { bar2: new, ..d }) };
    let (n0, n1) = (rd64(new), rd64(new + last));
    let (o0, o1) = (rd64(d.bar2), rd64(d.bar2 + last));
    // A write to the old address must not reach the region.
    wr64(d.bar2 + 8, 0x0DDB_A11A_DDE5_5000);
    let n8 = rd64(new + 8);
    say!(
        "shmvm: ivshmem move new_first=",
        Hex(n0),
        " new_last=",
        Hex(n1),
        " old_first=",
        Hex(o0),
        " old_last=",
        Hex(o1)
    );
    fail_if(n0 != m0 || n1 != m1, "ivshmem_move_data_not_at_new_address")?;
    fail_if(
        o0 == m0 || o1 == m1,
        "ivshmem_move_data_still_at_old_address",
    )?;
    fail_if(
        n8 == 0x0DDB_A11A_DDE5_5000,
        "ivshmem_move_old_address_still_writes",
    )?;
    if o0 != u64::MAX || o1 != u64::MAX {
        say!("shmvm: ivshmem move note: old address does not read all-ones");
    }
    Ok(())
}

/// Default new BAR2 address: the first of old+size, old-size, old+2*size
/// that overlaps neither BAR0 nor any memory-map entry.
fn move_target(d: &Dev) -> Option<u64> {
    // SAFETY: single CPU, CPL0 only.
    let info = unsafe { &*crate::bootinfo::INFO.ptr() };
    let clear = |a: u64| {
        let end = a + d.size;
        a >= 0x10_0000
            && !(d.bar0 < end && a < d.bar0 + BAR0_SIZE)
            && info.e820[..info.e820_len]
                .iter()
                .all(|e| e.end <= a || e.start >= end)
    };
    let (old, size) = (d.bar2, d.size);
    [
        old.checked_add(size),
        old.checked_sub(size),
        old.checked_add(2 * size),
    ]
    .into_iter()
    .flatten()
    .find(|&a| clear(a))
}

/// Ring-3 job: writes our slot, waits for all parties, verifies them.
/// 0 ok, 1 timeout (JOB.state = first missing slot), 2 bad slot content.
extern "C" fn slots_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; sole user of JOB.
    let j = unsafe { &mut *JOB.ptr() };
    let mine = j.base + j.slot * SLOT_SIZE;
    for i in 4..SLOT_SIZE / 8 {
        wr64(mine + 8 * i, slot_word(j.seed, j.slot, i));
    }
    wr64(mine + 8, j.slot);
    wr64(mine + 16, j.parties);
    wr64(mine + 24, j.seed);
    wr64(mine, SLOT_MAGIC);
    let mut n = 0;
    while n < j.parties {
        let s = j.base + n * SLOT_SIZE;
        if rd64(s) == SLOT_MAGIC && rd64(s + 8) == n && rd64(s + 24) == j.seed {
            n += 1;
            continue;
        }
        if rdtsc() > j.deadline {
            j.state = n;
            return 1;
        }
        core::hint::spin_loop();
    }
    for n in 0..j.parties {
        let s = j.base + n * SLOT_SIZE;
        if rd64(s + 16) != j.parties {
            (j.state, j.bad_off, j.got, j.want) = (n, 16, rd64(s + 16), j.parties);
            return 2;
        }
        for i in 4..SLOT_SIZE / 8 {
            let (v, w) = (rd64(s + 8 * i), slot_word(j.seed, n, i));
            if v != w {
                (j.state, j.bad_off, j.got, j.want) = (n, 8 * i, v, w);
                return 2;
            }
        }
    }
    0
}

pub fn slots() -> Result<(), &'static str> {
    let d = probe()?;
    // SAFETY: single CPU, CPL0 only.
    let p = unsafe { &*PARAMS.ptr() };
    let (slot, parties, seed, timeout) = (p.slot, p.parties, p.seed, p.timeout_ms);
    say!(
        "shmvm: ivshmem slots slot=",
        Dec(slot),
        " parties=",
        Dec(parties),
        " seed=",
        Hex(seed)
    );
    fail_if(parties == 0 || slot >= parties, "ivshmem_slots_bad_params")?;
    fail_if(
        parties > d.size / SLOT_SIZE,
        "ivshmem_slots_region_too_small",
    )?;
    let deadline = timer::deadline(timeout);
    // SAFETY: the job runs only inside cpu::user below.
    unsafe {
        let j = &mut *JOB.ptr();
        (j.base, j.size, j.seed, j.deadline, j.slot, j.parties) =
            (d.bar2, d.size, seed, deadline, slot, parties);
    }
    let r = cpu::user(slots_job, 0, 0, 0);
    // SAFETY: the job has returned.
    let j = unsafe { &*JOB.ptr() };
    match r {
        0 => {
            say!("shmvm: ivshmem slots ok parties=", Dec(parties));
            Ok(())
        }
        1 => {
            say!(
                "shmvm: ivshmem slots timeout waiting for slot=",
                Dec(j.state)
            );
            Err("ivshmem_slots_timeout")
        }
        _ => {
            say!(
                "shmvm: ivshmem slots bad slot=",
                Dec(j.state),
                " offset=",
                Hex(j.bad_off),
                " got=",
                Hex(j.got),
                " want=",
                Hex(j.want)
            );
            Err("ivshmem_slots_bad_content")
        }
    }
}

/// Best-of-N cycle counts of the last bench_job.
struct Bench {
    write: u64,
    read: u64,
}

static BENCH: Global<Bench> = Global::new(Bench { write: 0, read: 0 });
const BENCH_ROUNDS: u32 = 3;

/// Ring-3 job: one untimed write pass (first touch), then the best of
/// BENCH_ROUNDS timed write and read passes over [base, base+bytes).
extern "C" fn bench_job(base: u64, bytes: u64, _: u64) -> u64 {
    let end = base + bytes;
    let fill = |v: u64| {
        let mut a = base;
        while a < end {
            wr64(a, v);
            wr64(a + 8, v);
            wr64(a + 16, v);
            wr64(a + 24, v);
            a += 32;
        }
    };
    fill(1);
    let (mut bw, mut br) = (u64::MAX, u64::MAX);
    let mut sink = 0u64;
    for round in 0..BENCH_ROUNDS {
        let t0 = rdtsc();
        fill(u64::from(round));
        let t1 = rdtsc();
        let mut a = base;
        let mut acc = 0u64;
        while a < end {
            acc ^= rd64(a) ^ rd64(a + 8) ^ rd64(a + 16) ^ rd64(a + 24);
            a += 32;
        }
        let t2 = rdtsc();
        sink ^= acc;
        bw = bw.min(t1 - t0);
        br = br.min(t2 - t1);
    }
    // SAFETY: CPL0 is suspended; sole user of BENCH.
    unsafe {
        *BENCH.ptr() = Bench {
            write: bw.max(1),
            read: br.max(1),
        }
    };
    sink
}

fn bench_one(what: &str, base: u64, bytes: u64) {
    cpu::user(bench_job, base, bytes, 0);
    // SAFETY: the job has returned.
    let b = unsafe { &*BENCH.ptr() };
    let khz = timer::tsc_khz();
    // bytes/s / 1e6 = bytes * khz * 1000 / cycles / 1e6
    let mbps = |cycles: u64| bytes * khz / cycles / 1000;
    say!(
        "shmvm: bench ",
        what,
        " addr=",
        Hex(base),
        " bytes=",
        Dec(bytes)
    );
    say!(
        "shmvm: bench ",
        what,
        " write_mbps=",
        Dec(mbps(b.write)),
        " read_mbps=",
        Dec(mbps(b.read))
    );
}

pub fn bench() -> Result<(), &'static str> {
    let d = probe()?;
    // SAFETY: single CPU, CPL0 only.
    let mib = unsafe { (*PARAMS.ptr()).bench_mib };
    let bytes = (mib << 20).min(d.size);
    fail_if(bytes < 4096, "ivshmem_bench_too_small")?;
    timer::tsc_khz();
    bench_one("bar2", d.bar2, bytes);
    let Some(ram) = free_ram(bytes) else {
        return Err("bench_no_free_ram");
    };
    paging::ensure_mapped(ram, ram + bytes)?;
    bench_one("ram", ram, bytes);
    Ok(())
}

/// A page-aligned piece of free RAM (not kernel, not initrd) of `bytes`.
fn free_ram(bytes: u64) -> Option<u64> {
    // SAFETY: single CPU, CPL0 only; FREE was computed at boot.
    let free = unsafe { &*jobs::FREE.ptr() };
    free.as_slice().iter().find_map(|&(s, t)| {
        let s = (s + 0xFFF) & !0xFFF;
        (t > s && t - s >= bytes).then_some(s)
    })
}
