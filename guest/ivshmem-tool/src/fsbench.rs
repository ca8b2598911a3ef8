//! `fsbench`: a shared file system's speed from inside a guest (the lab
//! mounts virtio-fs there): unpack a tree of small files (what `tar x`
//! does: mkdir, create, write, close), sync it, drop the guest's caches and
//! read every file back through a directory walk (what `tar c` or a build
//! does), then write, sync, drop and read one large file sequentially.
//! Each step is run `runs` times and the median reported. The tree is
//! deterministic ([`Tree`]): the walk's checksum must equal the
//! generator's, and the host can check the tree the last run left behind
//! with `fstree` against both.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Files per directory of the tree.
const PER_DIR: u32 = 64;
/// Chunk of the large file's writes and reads.
const CHUNK: usize = 1 << 20;

/// FNV-1a, 64 bits: a checksum that needs no crate and is the same on
/// every side.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn value(self) -> u64 {
        self.0
    }
}

/// splitmix64: a file's length and its bytes from the seed and its index.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the stream of `key`.
fn fill(key: u64, buf: &mut [u8]) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let w = mix(key ^ (i as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)).to_le_bytes();
        c.copy_from_slice(&w[..c.len()]);
    }
}

/// The deterministic tree: `files` files of 1-16 KiB, 64 to a directory,
/// named `dNNN/fNNNNN` so that sorted order is index order.
#[derive(Debug, Clone, Copy)]
pub struct Tree {
    pub seed: u64,
    pub files: u32,
}

impl Tree {
    pub fn rel_path(&self, i: u32) -> String {
        format!("d{:03}/f{i:05}", i / PER_DIR)
    }
    pub fn len(&self, i: u32) -> usize {
        1024 + (mix(self.seed ^ u64::from(i)) % (15 * 1024 + 1)) as usize
    }
    fn content(&self, i: u32, buf: &mut Vec<u8>) {
        buf.resize(self.len(i), 0);
        fill(self.seed.rotate_left(17) ^ u64::from(i) << 20, buf);
    }
    fn dirs(&self) -> u32 {
        self.files.div_ceil(PER_DIR)
    }
    /// What a walk of the tree must give: (files, bytes, checksum).
    pub fn expected(&self) -> Sum {
        let mut s = Sum::default();
        let mut buf = Vec::new();
        for i in 0..self.files {
            self.content(i, &mut buf);
            s.add(&self.rel_path(i), &buf);
        }
        s
    }
    /// Writes the tree under `root` (which must not exist).
    fn unpack(&self, root: &Path) -> std::io::Result<()> {
        fs::create_dir(root)?;
        let mut buf = Vec::new();
        for d in 0..self.dirs() {
            fs::create_dir(root.join(format!("d{d:03}")))?;
        }
        for i in 0..self.files {
            self.content(i, &mut buf);
            File::create(root.join(self.rel_path(i)))?.write_all(&buf)?;
        }
        Ok(())
    }
    /// Removes the tree under `root` by name (a readdir-driven removal
    /// can miss entries on FUSE while it unlinks: ENOTEMPTY on virtio-fs).
    fn remove(&self, root: &Path) -> std::io::Result<()> {
        for i in 0..self.files {
            fs::remove_file(root.join(self.rel_path(i)))?;
        }
        for d in 0..self.dirs() {
            fs::remove_dir(root.join(format!("d{d:03}")))?;
        }
        fs::remove_dir(root)
    }
}

/// Files, bytes and the checksum of a walk (each file's relative path, a
/// NUL, its length and its bytes, in sorted order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sum {
    pub files: u64,
    pub bytes: u64,
    pub fnv: u64,
}

impl Default for Sum {
    fn default() -> Sum {
        Sum {
            files: 0,
            bytes: 0,
            fnv: Fnv::default().value(),
        }
    }
}

impl Sum {
    fn add(&mut self, rel: &str, data: &[u8]) {
        let mut h = Fnv(self.fnv);
        h.add(rel.as_bytes());
        h.add(&[0]);
        h.add(&(data.len() as u64).to_le_bytes());
        h.add(data);
        self.fnv = h.value();
        self.files += 1;
        self.bytes += data.len() as u64;
    }
}

/// Reads every regular file under `root` (sorted, depth first).
pub fn walk(root: &Path) -> std::io::Result<Sum> {
    fn go(root: &Path, rel: &str, s: &mut Sum, buf: &mut Vec<u8>) -> std::io::Result<()> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<(String, bool)> = fs::read_dir(&dir)?
            .map(|e| {
                let e = e?;
                let is_dir = e.file_type()?.is_dir();
                Ok((e.file_name().to_string_lossy().into_owned(), is_dir))
            })
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for (name, is_dir) in names {
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if is_dir {
                go(root, &r, s, buf)?;
            } else {
                buf.clear();
                File::open(root.join(&r))?.read_to_end(buf)?;
                s.add(&r, buf);
            }
        }
        Ok(())
    }
    let mut s = Sum::default();
    go(root, "", &mut s, &mut Vec::new())?;
    Ok(s)
}

/// The medians of the runs, all rates (higher is better).
#[derive(Debug, Clone)]
pub struct Results {
    /// Small files unpacked and synced per second.
    pub create_fps: f64,
    /// Small files read back (cold) per second.
    pub read_fps: f64,
    /// The large file written and synced, MB/s.
    pub seq_write_mbps: f64,
    /// The large file read back (cold), MB/s.
    pub seq_read_mbps: f64,
    /// What the last run's walk read (equal to the generator's).
    pub sum: Sum,
    /// Where the last run's tree stays (for the host's check).
    pub last_tree: PathBuf,
    /// Every run's four rates, in run order.
    pub runs: Vec<[f64; 4]>,
}

fn syncfs(dir: &Path) -> std::io::Result<()> {
    let f = File::open(dir)?;
    // SAFETY: syncfs(2) on a descriptor we own.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn drop_caches(really: bool) -> std::io::Result<()> {
    if really {
        fs::write("/proc/sys/vm/drop_caches", "3")
            .map_err(|e| std::io::Error::new(e.kind(), format!("/proc/sys/vm/drop_caches: {e}")))?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mismatch(what: &str, got: Sum, want: Sum) -> std::io::Error {
    std::io::Error::other(format!(
        "{what} read back {} files, {} bytes, sum {:016x}; want {} files, {} bytes, sum {:016x}",
        got.files, got.bytes, got.fnv, want.files, want.bytes, want.fnv
    ))
}

/// One run: tree `root`, large file `big`; returns the four rates and the walk.
fn one(
    tree: &Tree,
    want: Sum,
    root: &Path,
    big: &Path,
    big_len: u64,
    drop_cache: bool,
) -> std::io::Result<([f64; 4], Sum)> {
    let parent = root.parent().unwrap_or(Path::new("/"));
    let t = Instant::now();
    tree.unpack(root)?;
    syncfs(parent)?;
    let create = f64::from(tree.files) / t.elapsed().as_secs_f64();
    drop_caches(drop_cache)?;
    let t = Instant::now();
    let got = walk(root)?;
    let read = f64::from(tree.files) / t.elapsed().as_secs_f64();
    if got != want {
        return Err(mismatch("the tree", got, want));
    }

    let mut chunk = vec![0u8; CHUNK];
    let chunks = big_len.div_ceil(CHUNK as u64);
    let mut wsum = Fnv::default();
    let t = Instant::now();
    let mut f = File::create(big)?;
    for c in 0..chunks {
        fill(tree.seed ^ c, &mut chunk);
        wsum.add(&chunk);
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    drop(f);
    let bytes = (chunks * CHUNK as u64) as f64;
    let write = bytes / t.elapsed().as_secs_f64() / 1e6;
    drop_caches(drop_cache)?;
    let mut rsum = Fnv::default();
    let t = Instant::now();
    let mut f = File::open(big)?;
    for _ in 0..chunks {
        f.read_exact(&mut chunk)?;
        rsum.add(&chunk);
    }
    let read_big = bytes / t.elapsed().as_secs_f64() / 1e6;
    if f.read(&mut chunk)? != 0 || rsum.value() != wsum.value() {
        return Err(std::io::Error::other(format!(
            "{}: the large file read back differs from what was written",
            big.display()
        )));
    }
    fs::remove_file(big)?;
    Ok(([create, read, write, read_big], got))
}

/// Runs the benchmark `runs` times in `dir` (created if missing; each run
/// uses `dir/runK` and `dir/bigK`; every tree but the last is removed).
pub fn run(
    dir: &Path,
    tree: Tree,
    big_len: u64,
    runs: usize,
    drop_cache: bool,
) -> std::io::Result<Results> {
    if tree.files == 0 || big_len == 0 {
        return Err(std::io::Error::other(
            "--files and --big must be more than 0",
        ));
    }
    fs::create_dir_all(dir)?;
    let want = tree.expected();
    let runs = runs.max(1);
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut sum = Sum::default();
    let mut last_tree = PathBuf::new();
    let mut all = Vec::new();
    for k in 0..runs {
        let root = dir.join(format!("run{k}"));
        let big = dir.join(format!("big{k}"));
        let (r, s) = one(&tree, want, &root, &big, big_len, drop_cache)?;
        for (v, x) in rates.iter_mut().zip(r) {
            v.push(x);
        }
        all.push(r);
        sum = s;
        if k + 1 < runs {
            tree.remove(&root)?;
        }
        last_tree = root;
    }
    let [c, r, w, rb] = rates.map(median);
    Ok(Results {
        create_fps: c,
        read_fps: r,
        seq_write_mbps: w,
        seq_read_mbps: rb,
        sum,
        last_tree,
        runs: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = dir.join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn the_tree_is_deterministic_and_its_sizes_in_range() {
        let t = Tree {
            seed: 7,
            files: 200,
        };
        assert_eq!(t.expected(), t.expected());
        assert_ne!(
            t.expected().fnv,
            Tree { seed: 8, ..t }.expected().fnv,
            "the seed changes the tree"
        );
        let lens: Vec<usize> = (0..t.files).map(|i| t.len(i)).collect();
        assert!(lens.iter().all(|l| (1024..=16 * 1024).contains(l)));
        assert!(lens.iter().min() < Some(&4096) && lens.iter().max() > Some(&12288));
        assert_eq!(t.rel_path(65), "d001/f00065");
    }

    #[test]
    fn runs_leave_the_last_tree_and_a_changed_byte_is_caught() {
        let dir = tmp("fsbench");
        let tree = Tree {
            seed: 0x5eed,
            files: 130,
        };
        let r = run(&dir, tree, 3 << 20, 3, false).unwrap();
        assert_eq!(r.sum, tree.expected());
        assert_eq!(r.sum.files, 130);
        for x in [r.create_fps, r.read_fps, r.seq_write_mbps, r.seq_read_mbps] {
            assert!(x > 0.0 && x.is_finite(), "{r:?}");
        }
        // Only the last tree stays, and a walk of it is the generator's.
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["run2"]);
        assert_eq!(r.runs.len(), 3);
        assert_eq!(walk(&r.last_tree).unwrap(), tree.expected());
        // One flipped byte changes the sum.
        let f = r.last_tree.join(tree.rel_path(77));
        let mut b = fs::read(&f).unwrap();
        b[100] ^= 1;
        fs::write(&f, b).unwrap();
        assert_ne!(walk(&r.last_tree).unwrap(), tree.expected());
        fs::remove_dir_all(&dir).unwrap();
    }
}
