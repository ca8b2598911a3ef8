//! `make bench-ivshmem`: the test kernel, in ring 3, writes then reads N MiB
//! (default 64) through ivshmem BAR2 and through ordinary guest RAM; the
//! host runs the same loops and a memcpy over N MiB (`bandwidth::host`).
//! RUNS (default 5) rounds alternate a VM with default RAM, a VM with
//! shm-backed RAM, and the host; the table shows medians of MB/s and of
//! per-run ratios (both numbers of a ratio measured seconds apart: the
//! machine's load varies between runs). Every VM run must pass and show 0
//! BAR2 exits in its `--stats=json`.
//!
//!   bench-ivshmem [--shmvm PATH] [--kernel PATH] [--mib N] [--runs N]
//!
//! Defaults: target/release/shmvm (or $SHMVM_BIN), build/guest/testkernel
//! (or $SHMVM_TESTKERNEL), $MIB or 64, $RUNS or 5. Needs /dev/kvm.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use shmvm_tests::bandwidth;
use shmvm_tests::harness::{self, Run};
use shmvm_tests::stats::{Stats, StatsError};
use thiserror::Error;

#[derive(Debug, Error)]
enum BenchError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("{0} is missing (make build)")]
    Missing(PathBuf),
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest did not pass (exit {code:?}):\n{stdout}{stderr}")]
    GuestFailed {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    #[error("no '{0}' line in the guest's output")]
    NoLine(&'static str),
    #[error("statistics: {0}")]
    Stats(#[from] StatsError),
    #[error("{0} VM exits caused by BAR2 (want 0)")]
    Bar2Exits(u64),
}

struct Options {
    shmvm: PathBuf,
    kernel: PathBuf,
    mib: u64,
    runs: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BenchError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| BenchError::Usage(format!("${name}={v} is not a number"))),
        Err(_) => Ok(default),
    }
}

fn options() -> Result<Options, BenchError> {
    let root = harness::repo_root();
    let mut o = Options {
        shmvm: std::env::var_os("SHMVM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release/shmvm")),
        kernel: std::env::var_os("SHMVM_TESTKERNEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("build/guest/testkernel")),
        mib: env_or("MIB", 64)?,
        runs: env_or("RUNS", 5)?,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| BenchError::Usage(format!("{a} needs a value")))
        };
        let number = |v: String| {
            v.parse()
                .map_err(|_| BenchError::Usage(format!("{a}: {v} is not a number")))
        };
        match a.as_str() {
            "--shmvm" => o.shmvm = value()?.into(),
            "--kernel" => o.kernel = value()?.into(),
            "--mib" => o.mib = number(value()?)?,
            "--runs" => o.runs = number(value()?)? as usize,
            _ => return Err(BenchError::Usage(format!("unknown argument {a}"))),
        }
    }
    if o.runs == 0 || o.mib == 0 {
        return Err(BenchError::Usage(
            "--runs and --mib must be at least 1".into(),
        ));
    }
    for p in [&o.shmvm, &o.kernel] {
        if !p.exists() {
            return Err(BenchError::Missing(p.clone()));
        }
    }
    Ok(o)
}

/// Write and read MB/s through BAR2 and guest RAM, from one VM run.
#[derive(Debug, Clone, Copy)]
struct VmBandwidth {
    bar2: (u64, u64),
    ram: (u64, u64),
}

fn mbps(run: &Run, prefix: &'static str) -> Result<(u64, u64), BenchError> {
    let line = run.line(prefix).ok_or(BenchError::NoLine(prefix))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    match (field("write_mbps="), field("read_mbps=")) {
        (Some(w), Some(r)) => Ok((w, r)),
        _ => Err(BenchError::NoLine(prefix)),
    }
}

/// One VM run; `ram` picks guest RAM (empty: the default backend).
fn vm_run(o: &Options, ram: &[&str]) -> Result<VmBandwidth, BenchError> {
    let ram_mib = o.mib * 2 + 64;
    let (mem, bar2) = (
        format!("{ram_mib}M"),
        format!("memory-backend-shm,id=bench,size={}M", o.mib),
    );
    let append = format!("shmvm.test=ivshmem-bench shmvm.bench_mib={}", o.mib);
    let mut cmd = Command::new(&o.shmvm);
    cmd.arg("-kernel").arg(&o.kernel);
    cmd.args(["-m", &mem, "-serial", "stdio"]);
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    cmd.args(["-object", &bar2, "-device", "ivshmem-plain,memdev=bench"]);
    cmd.args(["-append", &append, "--stats=json"]).args(ram);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|source| BenchError::Spawn {
        path: o.shmvm.clone(),
        source,
    })?;
    let run = harness::wait(child, Duration::from_secs(300));
    if run.code != Some(33) || run.value("verdict").as_deref() != Some("pass") {
        return Err(BenchError::GuestFailed {
            code: run.code,
            stdout: run.stdout,
            stderr: run.stderr,
        });
    }
    let exits: u64 = Stats::from_output(&run.stderr)?
        .ivshmem
        .iter()
        .map(|d| d.bar2_exits)
        .sum();
    if exits != 0 {
        return Err(BenchError::Bar2Exits(exits));
    }
    Ok(VmBandwidth {
        bar2: mbps(&run, "shmvm: bench bar2 write_mbps=")?,
        ram: mbps(&run, "shmvm: bench ram write_mbps=")?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A column of per-run numbers.
type Series = Vec<f64>;

fn ratio(a: &Series, b: &Series) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

fn bench() -> Result<(), BenchError> {
    let o = options()?;
    let shm_ram = format!("memory-backend-shm,id=ram,size={}M", o.mib * 2 + 64);
    // bw br rw rr | sbw sbr srw srr | hw hr hc
    let mut s: [Series; 11] = Default::default();
    for i in 0..o.runs {
        let a = vm_run(&o, &[])?;
        let b = vm_run(&o, &["-object", &shm_ram, "-machine", "memory-backend=ram"])?;
        let h = bandwidth::host(o.mib as usize);
        let row = [
            a.bar2.0,
            a.bar2.1,
            a.ram.0,
            a.ram.1,
            b.bar2.0,
            b.bar2.1,
            b.ram.0,
            b.ram.1,
            h.write_mbps,
            h.read_mbps,
            h.memcpy_mbps,
        ];
        for (col, v) in s.iter_mut().zip(row) {
            col.push(v as f64);
        }
        println!(
            "run {} (write/read MB/s): bar2 {}/{} ram {}/{} | bar2 {}/{} shm-ram {}/{} | host {}/{} memcpy {}",
            i + 1,
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            row[10]
        );
    }
    let [bw, br, rw, rr, sbw, sbr, srw, srr, hw, hr, hc] = &s;
    println!();
    println!(
        "ivshmem bandwidth, {} MiB, {} runs: medians of MB/s (10^6 bytes/s) and of per-run ratios.",
        o.mib, o.runs
    );
    println!("VM exits caused by BAR2 in every run: 0");
    println!();
    println!(
        "| guest RAM backend: what | write MB/s | read MB/s | write / guest RAM | read / guest RAM | write / host | read / host |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let row = |label: &str, w: &Series, r: &Series, rw: &Series, rr: &Series| {
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            median(w.clone()),
            median(r.clone()),
            ratio(w, rw),
            ratio(r, rr),
            ratio(w, hw),
            ratio(r, hr)
        );
    };
    row("ram (default): BAR2 (memory-backend-shm)", bw, br, rw, rr);
    row("ram (default): guest RAM", rw, rr, rw, rr);
    row("shm: BAR2 (memory-backend-shm)", sbw, sbr, srw, srr);
    row("shm: guest RAM", srw, srr, srw, srr);
    row("host: same loops", hw, hr, hw, hr);
    println!(
        "| host: memcpy (copy rate) | {:.0} | | | | | |",
        median(hc.clone())
    );
    Ok(())
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ BenchError::Usage(_)) => {
            eprintln!("bench-ivshmem: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("bench-ivshmem: {e}");
            ExitCode::FAILURE
        }
    }
}
