//! A bounded fuzz loop over the kernel-image parsers (ELF 64/32, bzImage,
//! Multiboot), on stable Rust without extra crates: seeded mutations of
//! small valid images (header fields set to edge values, bytes flipped,
//! truncation, sparse extension), each loaded into 16 MiB of guest RAM. A
//! case must end in `Ok` or one error line, never a panic, and each must
//! take well under a second (a parser that trusts a header's size shows up
//! as a slow case long before it hangs).
//!
//! Time budget: `SHMVM_FUZZ_SECS` (default 5 s) or 3,000 cases, whichever
//! comes first; `SHMVM_FUZZ_SEED` picks another seed (the failing seed and
//! case are in the panic message).

use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::samples::{SCRATCH_RAM, bzimage, elf64, load_image, multiboot};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EDGES: [u64; 10] = [
    0,
    1,
    0xfff,
    0x1000,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 30,
    1 << 40,
    u64::MAX,
    u64::MAX - 0xfff,
];

fn mutate(rng: &mut Rng, mut img: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            // A header field (anywhere in the first 1 KiB) to an edge value.
            0 | 1 => {
                let width = [2usize, 4, 8][rng.below(3)];
                let at = rng.below(1024.min(img.len()).saturating_sub(width));
                let v = EDGES[rng.below(EDGES.len())].to_le_bytes();
                if let Some(dst) = img.get_mut(at..at + width) {
                    dst.copy_from_slice(&v[..width]);
                }
            }
            2 => {
                let at = rng.below(img.len());
                img[at] ^= 1 << rng.below(8);
            }
            3 => img.truncate(rng.below(img.len() + 1)),
            _ => {
                let len = img.len() + rng.below(64 << 10);
                img.resize(len, 0);
            }
        }
    }
    img
}

#[test]
fn kernel_image_parsers_survive_a_bounded_fuzz_loop() {
    let seed: u64 = std::env::var("SHMVM_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0019);
    let budget = Duration::from_secs(
        std::env::var("SHMVM_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SCRATCH_RAM as usize)])
        .expect("guest memory");
    let path = std::env::temp_dir().join(format!("shmvm-fuzz-{}", std::process::id()));
    let corpus = [elf64(), bzimage(), multiboot()];
    let mut rng = Rng(seed | 1);
    let t0 = Instant::now();
    let mut cases = 0u32;
    while cases < 3000 && t0.elapsed() < budget {
        let base = corpus[rng.below(corpus.len())].clone();
        let img = mutate(&mut rng, base);
        std::fs::write(&path, &img).expect("write image");
        let c0 = Instant::now();
        if let Err(e) = &load_image(&mem, &path) {
            assert!(
                !e.to_string().contains('\n'),
                "seed {seed} case {cases}: {e}"
            );
        }
        assert!(
            c0.elapsed() < Duration::from_secs(1),
            "seed {seed} case {cases}: took {:?}",
            c0.elapsed()
        );
        cases += 1;
    }
    let _ = std::fs::remove_file(&path);
    assert!(cases >= 100, "only {cases} cases in {budget:?}");
}
