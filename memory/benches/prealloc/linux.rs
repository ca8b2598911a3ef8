//! The Linux benchmark: memfd and MADV_POPULATE_WRITE, QEMU as the reference.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memory::{Backend, BackendConfig, BackendKind, BackendProps, KindOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    /// One MADV_POPULATE_WRITE over a fresh anonymous mapping (base pages): the limit
    /// the issue names.
    Kernel,
    /// The same with MADV_HUGEPAGE: like for like with the ram backend, which QEMU and
    /// shmvm both advise to use transparent huge pages.
    KernelThp,
    /// One MADV_POPULATE_WRITE over a fresh memfd: like for like with the shmem-backed
    /// backends (file on /dev/shm, memfd, shm).
    KernelShmem,
    Ours(&'static str, u32),
    Qemu(&'static str, u32),
    QemuBaseline,
}

const BACKENDS: [&str; 4] = ["ram", "file", "memfd", "shm"];

fn object(kind: &str, size: u64, prealloc: bool, threads: u32) -> String {
    let extra = if kind == "file" {
        ",mem-path=/dev/shm,share=on"
    } else {
        ""
    };
    format!(
        "memory-backend-{kind},id=m,size={size}{extra},prealloc={},prealloc-threads={threads}",
        if prealloc { "on" } else { "off" }
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fresh {
    Anonymous,
    AnonymousThp,
    Memfd,
}

/// One MADV_POPULATE_WRITE over a fresh mapping.
fn kernel_limit(size: u64, what: Fresh) -> Duration {
    let len = size as usize;
    let (flags, fd) = match what {
        Fresh::Anonymous | Fresh::AnonymousThp => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
        Fresh::Memfd => {
            // SAFETY: a plain memfd_create with a static name.
            let fd = unsafe { libc::memfd_create(c"bench".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create");
            // SAFETY: fd is ours.
            assert_eq!(unsafe { libc::ftruncate(fd, size as libc::off_t) }, 0);
            (libc::MAP_SHARED, fd)
        }
    };
    // SAFETY: a fresh mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap {len}");
    if what == Fresh::AnonymousThp {
        // SAFETY: advice on the mapping made above.
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
    }
    let t = Instant::now();
    // SAFETY: p..p+len is the mapping made above.
    let r = unsafe { libc::madvise(p, len, libc::MADV_POPULATE_WRITE) };
    let d = t.elapsed();
    assert_eq!(
        r,
        0,
        "MADV_POPULATE_WRITE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: unmapping the mapping made above, which nothing else uses.
    unsafe { libc::munmap(p, len) };
    if fd >= 0 {
        // SAFETY: closing the memfd made above.
        unsafe { libc::close(fd) };
    }
    d
}

/// Touches and frees `size` bytes of anonymous memory (huge pages where possible).
///
/// This machine is itself a guest whose free memory the outer host reclaims (free page
/// reporting): the first touch of memory that sat free for a few seconds costs up to
/// 10x more. Warming before every timed case gives each case the same start, whichever
/// case ran before it.
fn warm(size: u64) {
    kernel_limit(size, Fresh::AnonymousThp);
}

/// The same backend as [`object`], typed (shmvm's configuration layer does
/// this conversion for a command line).
fn config(kind: &str, size: u64, threads: u32) -> BackendConfig {
    let qom = format!("memory-backend-{kind}");
    let mut opts = KindOptions::new(BackendKind::from_qom_type(&qom).expect("backend kind"));
    let mut props = BackendProps {
        size: Some(size),
        prealloc: Some(true),
        prealloc_threads: Some(threads),
        ..BackendProps::default()
    };
    if let KindOptions::File(f) = &mut opts {
        f.mem_path = Some("/dev/shm".into());
        props.share = Some(true);
    }
    BackendConfig::from_props("m", props, opts).unwrap_or_else(|e| panic!("{e}"))
}

/// `--size`: bytes, or a number with a K/M/G suffix.
fn parse_size(s: &str) -> Option<u64> {
    let (n, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    n.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `--spec`: the `-object` keys this bench varies (shmvm itself parses
/// `-object` with its configuration layer, vmm/src/config).
fn spec_config(spec: &str) -> BackendConfig {
    let mut items = spec.split(',');
    let qom = items.next().unwrap_or_default();
    let mut opts = KindOptions::new(BackendKind::from_qom_type(qom).expect("memory-backend-*"));
    let mut props = BackendProps::default();
    let on = |v: &str| matches!(v, "on" | "yes" | "true");
    for item in items {
        let (k, v) = item.split_once('=').expect("--spec: key=value");
        match (k, &mut opts) {
            ("id", _) => {}
            ("size", _) => props.size = Some(parse_size(v).expect("size")),
            ("share", _) => props.share = Some(on(v)),
            ("prealloc", _) => props.prealloc = Some(on(v)),
            ("prealloc-threads", _) => props.prealloc_threads = v.parse().ok(),
            ("mem-path", KindOptions::File(f)) => f.mem_path = Some(v.into()),
            ("hugetlb", KindOptions::Memfd(m)) => m.hugetlb = on(v),
            _ => panic!("--spec: {k} is not one of the keys this bench varies"),
        }
    }
    BackendConfig::from_props("m", props, opts).unwrap_or_else(|e| panic!("{e}"))
}

fn ours(kind: &str, size: u64, threads: u32) -> Duration {
    let cfg = config(kind, size, threads);
    let t = Instant::now();
    let b = Backend::create(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let d = t.elapsed();
    drop(b);
    d
}

/// Time from spawning QEMU to its monitor prompt (all -object backends are complete,
/// preallocation included, before the monitor starts).
fn qemu(obj: &str) -> Duration {
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "stdio",
        ])
        .args(["-object", obj])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 (make deps installs it)");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("(qemu)") {
        let n = out.read(&mut buf).expect("read qemu");
        assert!(
            n > 0,
            "qemu exited before its prompt: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let d = t.elapsed();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"quit\n").expect("quit");
    drop(stdin);
    let status = child.wait().expect("wait qemu");
    assert!(status.success(), "qemu: {status}");
    d
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn main() {
    let mut runs = 5;
    let mut size = 4u64 << 30;
    let mut with_qemu = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--size" => {
                size = args
                    .next()
                    .as_deref()
                    .and_then(parse_size)
                    .expect("--size SIZE")
            }
            "--no-qemu" => with_qemu = false,
            // Time one -object spec with shmvm and QEMU (for investigating one case).
            "--spec" => {
                let spec = args.next().expect("--spec OBJECT");
                let cfg = spec_config(&spec);
                for _ in 0..runs {
                    let t = Instant::now();
                    let b = Backend::create(&cfg).unwrap_or_else(|e| panic!("{e}"));
                    let o = t.elapsed();
                    drop(b);
                    let q = if with_qemu {
                        ms(qemu(&spec))
                    } else {
                        "-".to_string()
                    };
                    println!("shmvm {} qemu {q}", ms(o));
                }
                return;
            }
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    let mut cases = vec![Case::Kernel, Case::KernelThp, Case::KernelShmem];
    for kind in BACKENDS {
        for threads in [1, 2] {
            cases.push(Case::Ours(kind, threads));
            if with_qemu {
                cases.push(Case::Qemu(kind, threads));
            }
        }
    }
    if with_qemu {
        cases.push(Case::QemuBaseline);
    }
    let mut times: BTreeMap<Case, Vec<Duration>> = BTreeMap::new();
    let mut rounds: Vec<BTreeMap<Case, Duration>> = Vec::new();
    let started = Instant::now();
    for run in 0..runs {
        let mut round = BTreeMap::new();
        // Rotate the order each run so no case always follows the same neighbour.
        let n = cases.len();
        for i in 0..n {
            let case = cases[(i + run * 3) % n];
            warm(size + (512 << 20));
            let d = match case {
                Case::Kernel => kernel_limit(size, Fresh::Anonymous),
                Case::KernelThp => kernel_limit(size, Fresh::AnonymousThp),
                Case::KernelShmem => kernel_limit(size, Fresh::Memfd),
                Case::Ours(k, t) => ours(k, size, t),
                Case::Qemu(k, t) => qemu(&object(k, size, true, t)),
                Case::QemuBaseline => qemu(&object("memfd", size, false, 1)),
            };
            times.entry(case).or_default().push(d);
            round.insert(case, d);
            // Progress: the whole bench takes about 10 minutes.
            eprintln!(
                "run {}/{runs}, case {}/{n}: {case:?} {} ({:.0} s so far)",
                run + 1,
                i + 1,
                ms(d),
                started.elapsed().as_secs_f64()
            );
        }
        rounds.push(round);
        eprintln!("run {}/{runs} done", run + 1);
    }
    let mut med: BTreeMap<Case, Duration> = BTreeMap::new();
    for (case, v) in &mut times {
        med.insert(*case, median(v));
    }
    let kernel = med[&Case::Kernel];
    let base = med.get(&Case::QemuBaseline).copied();
    println!(
        "prealloc of {} GiB, {runs} runs interleaved, medians. One MADV_POPULATE_WRITE over a \
         fresh mapping: anonymous {}, anonymous with MADV_HUGEPAGE {}, memfd {}. \
         QEMU start-up without prealloc: {}.",
        size >> 30,
        ms(kernel),
        ms(med[&Case::KernelThp]),
        ms(med[&Case::KernelShmem]),
        base.map_or("-".to_string(), ms)
    );
    println!("Ratios: median of the per-run ratios (in brackets: ratio of the medians).");
    println!();
    println!(
        "| backend | threads | shmvm | shmvm / kernel (anonymous) | shmvm / kernel (same memory) \
         | QEMU 10 (net) | shmvm / QEMU |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    // The cases of one run ran at most minutes apart, so a ratio within a run cancels
    // most of the load drift of this shared machine.
    let paired = |num: Case, den: &dyn Fn(&BTreeMap<Case, Duration>) -> Option<Duration>| {
        let mut r: Vec<f64> = rounds
            .iter()
            .filter_map(|round| {
                let d = den(round).filter(|d| !d.is_zero())?;
                Some(round[&num].as_secs_f64() / d.as_secs_f64())
            })
            .collect();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied()
    };
    let show = |p: Option<f64>, a: Duration, b: Option<Duration>| match (p, b) {
        (Some(p), Some(b)) => format!("{p:.2} ({:.2})", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".to_string(),
    };
    for kind in BACKENDS {
        let same_case = if kind == "ram" {
            Case::KernelThp
        } else {
            Case::KernelShmem
        };
        for threads in [1, 2] {
            let ours_case = Case::Ours(kind, threads);
            let qemu_case = Case::Qemu(kind, threads);
            let o = med[&ours_case];
            let qnet = med
                .get(&qemu_case)
                .zip(base)
                .map(|(q, b)| q.saturating_sub(b));
            let qnet_in = |r: &BTreeMap<Case, Duration>| {
                Some(
                    r.get(&qemu_case)?
                        .saturating_sub(*r.get(&Case::QemuBaseline)?),
                )
            };
            println!(
                "| {kind} | {threads} | {} | {} | {} | {} | {} |",
                ms(o),
                show(
                    paired(ours_case, &|r| Some(r[&Case::Kernel])),
                    o,
                    Some(kernel)
                ),
                show(
                    paired(ours_case, &|r| Some(r[&same_case])),
                    o,
                    Some(med[&same_case])
                ),
                qnet.map_or("-".to_string(), ms),
                show(paired(ours_case, &qnet_in), o, qnet),
            );
        }
    }
    println!();
    println!("all runs (ms):");
    for (case, v) in &times {
        let v: Vec<String> = v
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect();
        println!("  {case:?}: {}", v.join(" "));
    }
}
