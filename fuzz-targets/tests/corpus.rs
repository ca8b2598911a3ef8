//! Stable Rust: every fuzz target replays its seed corpus
//! (`fuzz/corpus/<target>/`, committed) plus the inputs libFuzzer found
//! worth keeping there, then a few hundred inputs derived from the corpus
//! by seeded byte mutations. cargo-fuzz (nightly, `make fuzz`) explores
//! further with coverage feedback.

use std::path::{Path, PathBuf};
use std::time::Instant;

use shmvm_fuzz_targets::TARGETS;

/// Mutated inputs per target after the corpus.
const MUTATIONS: u64 = 300;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: every target has a seed corpus", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// xorshift64*: seeded mutations of a corpus input (flip, set, insert,
/// delete, splice bytes).
fn mutate(input: &[u8], seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut v = input.to_vec();
    for _ in 0..1 + next() % 8 {
        let at = if v.is_empty() {
            0
        } else {
            (next() % v.len() as u64) as usize
        };
        match next() % 5 {
            0 if !v.is_empty() => v[at] ^= 1 << (next() % 8),
            1 if !v.is_empty() => v[at] = [0, 0xff, 0x7f, 0x80, 1][(next() % 5) as usize],
            2 => v.insert(at, next() as u8),
            3 if !v.is_empty() => drop(v.remove(at)),
            _ => {
                let n = (next() % 16) as usize;
                v.splice(at..at, (0..n).map(|_| next() as u8));
            }
        }
    }
    v
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    for &(name, target) in TARGETS {
        let t0 = Instant::now();
        let inputs = corpus(name);
        assert!(!inputs.is_empty(), "{name}: empty seed corpus");
        for (file, bytes) in &inputs {
            eprintln!("{name}: {file}");
            target(bytes);
        }
        for seed in 0..MUTATIONS {
            let (_, base) = &inputs[(seed % inputs.len() as u64) as usize];
            let input = mutate(base, seed ^ 0x5eed);
            // A panic names the input, to be saved into the corpus.
            let r = std::panic::catch_unwind(|| target(&input));
            assert!(
                r.is_ok(),
                "{name}: mutation {seed} panicked on input {input:?}"
            );
        }
        eprintln!(
            "{name}: {} corpus inputs + {MUTATIONS} mutations in {:?}",
            inputs.len(),
            t0.elapsed()
        );
    }
}
