//! Preallocation benchmark (`make bench-memory`).
//!
//! Preallocates SIZE (default 4 GiB) with each backend (ram, file on /dev/shm, memfd,
//! shm) and 1 and 2 threads, and compares, in the same run and interleaved:
//! - the kernel's limit: one MADV_POPULATE_WRITE over a fresh anonymous mapping;
//! - QEMU preallocating the same backend (`qemu-system-x86_64 -machine none -object
//!   memory-backend-...,prealloc=on,prealloc-threads=N -monitor stdio`): the time until
//!   its monitor prompt appears, minus the same for a QEMU run without prealloc.
//!
//! Usage: prealloc [--runs N] [--size SIZE] [--no-qemu]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memory::{Backend, BackendConfig, parse_size};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Kernel,
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

/// One MADV_POPULATE_WRITE over a fresh anonymous private mapping.
fn kernel_limit(size: u64) -> Duration {
    let len = size as usize;
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap {len}");
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
    d
}

fn ours(kind: &str, size: u64, threads: u32) -> Duration {
    let cfg = BackendConfig::parse_object(&object(kind, size, true, threads))
        .unwrap_or_else(|e| panic!("{e}"));
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

fn main() {
    let mut runs = 5;
    let mut size = 4u64 << 30;
    let mut with_qemu = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--size" => size = parse_size(&args.next().expect("--size SIZE"), 1).expect("size"),
            "--no-qemu" => with_qemu = false,
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    let mut cases = vec![Case::Kernel];
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
    for run in 0..runs {
        // Rotate the order each run so no case always follows the same neighbour.
        let n = cases.len();
        for i in 0..n {
            let case = cases[(i + run * 3) % n];
            let d = match case {
                Case::Kernel => kernel_limit(size),
                Case::Ours(k, t) => ours(k, size, t),
                Case::Qemu(k, t) => qemu(&object(k, size, true, t)),
                Case::QemuBaseline => qemu(&object("memfd", size, false, 1)),
            };
            times.entry(case).or_default().push(d);
        }
        eprintln!("run {}/{runs} done", run + 1);
    }
    let mut med: BTreeMap<Case, Duration> = BTreeMap::new();
    for (case, v) in &mut times {
        med.insert(*case, median(v));
    }
    let kernel = med[&Case::Kernel];
    let base = med.get(&Case::QemuBaseline).copied();
    println!(
        "prealloc of {} GiB, {runs} runs interleaved, medians; kernel limit (one MADV_POPULATE_WRITE, \
         fresh anonymous mapping): {}; QEMU start-up without prealloc: {}",
        size >> 30,
        ms(kernel),
        base.map_or("-".to_string(), ms)
    );
    println!();
    println!("| backend | threads | shmvm | shmvm / kernel | QEMU 10 (net) | shmvm / QEMU |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for kind in BACKENDS {
        for threads in [1, 2] {
            let o = med[&Case::Ours(kind, threads)];
            let q = med.get(&Case::Qemu(kind, threads)).copied();
            let qnet = q.zip(base).map(|(q, b)| q.saturating_sub(b));
            println!(
                "| {kind} | {threads} | {} | {:.2} | {} | {} |",
                ms(o),
                o.as_secs_f64() / kernel.as_secs_f64(),
                qnet.map_or("-".to_string(), ms),
                qnet.map_or("-".to_string(), |q| format!(
                    "{:.2}",
                    o.as_secs_f64() / q.as_secs_f64()
                )),
            );
        }
    }
}
