//! `shmvm.test=snapcount`: counts and checksums a region of RAM round by
//! round (ring 3, native speed), printing progress every few rounds, so a
//! host test can snapshot it mid-run and check that the restored guest
//! reaches the same total (protocol crate: `snapcount_*`).
//! `snapcount-ivshmem` then hands the total to a host peer over ivshmem
//! BAR2 and prints the peer's answer.

use core::ptr::{read_volatile, write_volatile};

use crate::console::{Dec, Hex, Hex16};
use crate::params::PARAMS;
use crate::{Global, cpu, ivshmem, jobs, paging, say, timer};
use protocol::*;

/// Rounds between progress lines.
const EVERY: u64 = 8;

struct Region {
    base: u64,
    words: u64,
}

static REGION: Global<Region> = Global::new(Region { base: 0, words: 0 });

/// Ring-3 job: fills the region with the initial pattern.
extern "C" fn init_job(seed: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; the region is free RAM mapped for users.
    unsafe {
        let r = &*REGION.ptr();
        for i in 0..r.words {
            write_volatile((r.base + 8 * i) as *mut u64, snapcount_init(i, seed));
        }
    }
    0
}

/// Ring-3 job: one round; returns its checksum.
extern "C" fn round_job(round: u64, _: u64, _: u64) -> u64 {
    // SAFETY: as for init_job; nothing else references the region.
    let words = unsafe {
        let r = &*REGION.ptr();
        core::slice::from_raw_parts_mut(r.base as *mut u64, r.words as usize)
    };
    snapcount_round(words, round)
}

/// Runs the rounds and prints the total.
pub fn run() -> Result<u64, &'static str> {
    // SAFETY: single CPU, CPL0 only.
    let (mib, rounds, seed) = unsafe {
        let p = &*PARAMS.ptr();
        (p.snap_mib, p.rounds, p.seed)
    };
    let bytes = mib << 20;
    // SAFETY: as above.
    let base = unsafe {
        (*jobs::FREE.ptr())
            .as_slice()
            .iter()
            .find(|&&(s, t)| t - s.next_multiple_of(4096) >= bytes)
            .map(|&(s, _)| s.next_multiple_of(4096))
    };
    let Some(base) = base else {
        say!("shmvm: snapcount no free region of ", Dec(mib), " MiB");
        return Err("snapcount_no_room");
    };
    paging::ensure_mapped(base, base + bytes)?;
    // SAFETY: single CPU; the jobs run only inside cpu::user below.
    unsafe {
        *REGION.ptr() = Region {
            base,
            words: bytes / 8,
        }
    };
    say!(
        "shmvm: snapcount start base=",
        Hex(base),
        " mib=",
        Dec(mib),
        " rounds=",
        Dec(rounds)
    );
    cpu::user(init_job, seed, 0, 0);
    let mut total = 0u64;
    for round in 1..=rounds {
        total = snapcount_fold(total, cpu::user(round_job, round, 0, 0));
        if round % EVERY == 0 {
            say!(
                "shmvm: snapcount round=",
                Dec(round),
                " total=",
                Hex16(total)
            );
        }
    }
    say!(
        "shmvm: snapcount done rounds=",
        Dec(rounds),
        " mib=",
        Dec(mib),
        " total=",
        Hex16(total)
    );
    Ok(total)
}

struct Handoff {
    bar2: u64,
    total: u64,
    deadline: u64,
    answer: u64,
}

static HANDOFF: Global<Handoff> = Global::new(Handoff {
    bar2: 0,
    total: 0,
    deadline: 0,
    answer: 0,
});

/// Ring-3 job: publishes the total in BAR2 and waits for the host's answer.
extern "C" fn handoff_job(_: u64, _: u64, _: u64) -> u64 {
    // SAFETY: CPL0 is suspended; BAR2 is mapped; the host writes only the
    // answer word, which is read volatile.
    unsafe {
        let h = &mut *HANDOFF.ptr();
        write_volatile((h.bar2 + SNAP_TOTAL_OFF) as *mut u64, h.total);
        write_volatile((h.bar2 + SNAP_FLAG_OFF) as *mut u64, SNAP_GUEST_DONE);
        loop {
            let a = read_volatile((h.bar2 + SNAP_HOST_OFF) as *const u64);
            if a != 0 {
                h.answer = a;
                return 0;
            }
            if cpu::rdtsc() > h.deadline {
                return 1;
            }
            core::hint::spin_loop();
        }
    }
}

/// `snapcount-ivshmem`: the rounds, then the hand-off to the host peer.
pub fn run_with_ivshmem() -> Result<(), &'static str> {
    let total = run()?;
    let d = ivshmem::probe()?;
    // SAFETY: single CPU, CPL0 only.
    let timeout = unsafe { (*PARAMS.ptr()).timeout_ms };
    // SAFETY: as above; the job runs only inside cpu::user below.
    unsafe {
        let h = &mut *HANDOFF.ptr();
        (h.bar2, h.total, h.deadline) = (d.bar2, total, timer::deadline(timeout));
    }
    if cpu::user(handoff_job, 0, 0, 0) != 0 {
        say!("shmvm: snapcount ivshmem no answer from the host");
        return Err("snapcount_no_host_answer");
    }
    // SAFETY: the job has returned.
    let answer = unsafe { (*HANDOFF.ptr()).answer };
    say!("shmvm: snapcount ivshmem host=", Hex16(answer));
    Ok(())
}
