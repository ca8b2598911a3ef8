//! `blkbench`: a block device's sequential and random throughput from
//! inside a guest, as fio's `sync` engine at queue depth 1 would measure
//! it (fio is not in the lab's initramfs): O_DIRECT, one request at a
//! time, for a fixed time per pattern, each pattern run `runs` times and
//! the median reported. Writes overwrite the range.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// One pattern's result.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub bytes: u64,
    pub ops: u64,
    pub secs: f64,
}

impl Rate {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// The four patterns' medians.
#[derive(Debug, Clone, Copy)]
pub struct Results {
    pub seq_read: Rate,
    pub seq_write: Rate,
    pub rand_read: Rate,
    pub rand_write: Rate,
}

/// Page-aligned buffer (O_DIRECT) carved out of a larger vector.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0x5a; len + 4096];
        let start = buf.as_ptr().align_offset(4096).min(4096);
        Aligned { buf, start, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// xorshift64: offsets that are random enough and the same each run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn one(
    f: &File,
    offset: u64,
    len: u64,
    bs: u64,
    random: bool,
    write: bool,
    time: Duration,
) -> std::io::Result<Rate> {
    let mut buf = Aligned::new(bs as usize);
    let blocks = len / bs;
    let (mut ops, mut seed) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
    let start = Instant::now();
    while start.elapsed() < time {
        let block = if random {
            next(&mut seed) % blocks
        } else {
            ops % blocks
        };
        let at = offset + block * bs;
        if write {
            f.write_all_at(buf.get(), at)?;
        } else {
            f.read_exact_at(buf.get(), at)?;
        }
        ops += 1;
    }
    Ok(Rate {
        bytes: ops * bs,
        ops,
        secs: start.elapsed().as_secs_f64(),
    })
}

fn median(mut v: Vec<Rate>) -> Rate {
    v.sort_by_key(|r| r.ops);
    v[v.len() / 2]
}

/// Runs sequential 1 MiB and random 4 KiB reads and writes over
/// `[offset, offset + len)` of `path`, `runs` times each for `time`.
pub fn run(
    path: &Path,
    offset: u64,
    len: u64,
    time: Duration,
    runs: usize,
) -> std::io::Result<Results> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    if len < (1 << 20) || !offset.is_multiple_of(4096) {
        return Err(std::io::Error::other(
            "the range must be at least 1 MiB and start 4 KiB aligned",
        ));
    }
    let pattern = |bs, random, write| -> std::io::Result<Rate> {
        let v = (0..runs.max(1))
            .map(|_| one(&f, offset, len, bs, random, write, time))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(median(v))
    };
    let seq_write = pattern(1 << 20, false, true)?;
    let seq_read = pattern(1 << 20, false, false)?;
    let rand_write = pattern(4096, true, true)?;
    let rand_read = pattern(4096, true, false)?;
    f.sync_all()?;
    Ok(Results {
        seq_read,
        seq_write,
        rand_read,
        rand_write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_file_and_writes_its_range_only() {
        // O_DIRECT needs a file system that takes it: the target dir, not tmpfs.
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let p = dir.join(format!("blkbench-{}.img", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        drop(f);
        let r = run(&p, 1 << 20, 2 << 20, Duration::from_millis(20), 3);
        let disk = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).ok();
        let r = match r {
            Ok(r) => r,
            // A file system without O_DIRECT here: nothing to measure.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                panic!("no O_DIRECT on {}: {e}", dir.display())
            }
            Err(e) => panic!("{e}"),
        };
        for rate in [r.seq_read, r.seq_write, r.rand_read, r.rand_write] {
            assert!(rate.ops > 0 && rate.secs > 0.0, "{rate:?}");
        }
        assert!(
            disk[..1 << 20].iter().all(|&b| b == 0),
            "wrote before the range"
        );
        assert!(
            disk[3 << 20..].iter().all(|&b| b == 0),
            "wrote after the range"
        );
        assert!(disk[1 << 20..2 << 20].iter().all(|&b| b == 0x5a));
    }
}
