//! A bounded fuzz loop over the command line (QEMU spellings, the option
//! table, clap, the keyval parser and the configuration layer), on stable
//! Rust without extra crates: seeded argv built from real options, real and
//! broken values and random bytes. Every case ends in a configuration, an
//! info text or one error line ([`one_line`]: it found arguments with a
//! newline echoed into multi-line errors), never a panic.
//!
//! Time budget: `SHMVM_FUZZ_SECS` (default 3 s) or 20,000 cases, whichever
//! comes first; `SHMVM_FUZZ_SEED` picks another seed.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use super::{ParseOutcome, one_line, parse};

const OPTIONS: &[&str] = &[
    "-kernel",
    "-initrd",
    "-append",
    "-m",
    "-object",
    "-machine",
    "-M",
    "-smp",
    "-numa",
    "-mem-path",
    "-mem-prealloc",
    "-serial",
    "-nographic",
    "-device",
    "-chardev",
    "-mon",
    "-pidfile",
    "--vhost-user-blk",
    "--boot",
    "--stats",
    "--stats=json",
    "--sandbox",
    "-v",
    "-accel",
    "-cpu",
    "-nodefaults",
    "-no-reboot",
    "-display",
    "-bios",
    "--",
    "-",
];

const VALUES: &[&str] = &[
    "/nonexistent",
    "128M",
    "-1",
    "0",
    "1T",
    "99999999999999999999",
    "4,sockets=2,cores=2,threads=1",
    "0,maxcpus=0",
    "memory-backend-shm,id=m,size=64M",
    "memory-backend-file,id=f,size=1M,mem-path=/tmp/x,,y,readonly=on",
    "memory-backend-memfd,id=m,size=1M,hugetlb=on,hugetlbsize=3",
    "memory-backend-ram,id=r,size=",
    "memory-backend=m",
    "microvm,x-option-roms=off",
    "isa-debug-exit,iobase=0xcf8,iosize=8",
    "ivshmem-plain,memdev=m",
    "vhost-user-blk-pci,chardev=c0,num-queues=65535",
    "socket,id=c0,path=/tmp/none.sock",
    "stdio,id=s,mux=on",
    "mon:stdio",
    "file:/tmp/x",
    "node,memdev=m",
    "help",
    "pvh",
    "off",
    ",,,,",
    "=",
    "id=",
    "",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

fn token(rng: &mut Rng) -> OsString {
    match rng.below(10) {
        0..=3 => OPTIONS[rng.below(OPTIONS.len())].into(),
        4..=8 => VALUES[rng.below(VALUES.len())].into(),
        _ => {
            use std::os::unix::ffi::OsStringExt;
            let len = rng.below(12);
            OsString::from_vec((0..len).map(|_| rng.next().to_le_bytes()[0]).collect())
        }
    }
}

#[test]
fn the_command_line_survives_a_bounded_fuzz_loop() {
    let seed: u64 = std::env::var("SHMVM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0019);
    let budget = Duration::from_secs(
        std::env::var("SHMVM_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let mut rng = Rng(seed | 1);
    let t0 = Instant::now();
    let mut cases = 0u32;
    while cases < 20_000 && t0.elapsed() < budget {
        let mut argv: Vec<OsString> = vec!["shmvm".into(), "-kernel".into(), "/k".into()];
        for _ in 0..rng.below(9) {
            argv.push(token(&mut rng));
        }
        if let Err(ParseOutcome::Error(e)) = parse(argv.clone()) {
            let line = one_line(&e.to_string());
            assert!(
                !line.contains('\n') && !line.is_empty(),
                "seed {seed} case {cases} {argv:?}: {line}"
            );
        }
        cases += 1;
    }
    assert!(cases >= 100, "only {cases} cases in {budget:?}");
}
