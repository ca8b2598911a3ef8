//! The storm test kernel (`shmvm.test=storm`, guest/testkernel/src/storm.rs)
//! against every device configuration, on the host's /dev/kvm: seeded
//! random port I/O, config-space writes (BAR moves, command register,
//! MSI-X), MMIO to the BARs, virtio register writes and bogus rings,
//! ivshmem register and doorbell writes. For each seed: shmvm never
//! crashes or hangs, the guest reaches its end marker, guest-triggered
//! warnings stay rate-limited and are all counted, nothing is left behind,
//! and `--stats=json` agrees with what the guest says it did.
//!
//! A failure names its seed. Replay one with
//! `SHMVM_STORM_SEEDS=SEED cargo test --release -p shmvm-tests --test storm_kvm`
//! (`SHMVM_STORM_OPS=N` for a longer storm).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ivshmem_server::server::{Server, ServerConfig, ShmSource};
use shmvm_tests::harness::{
    self, Run, TempDir, leftover_shm, require_kvm, unique, with_testkernel,
};

/// Operations per seed: about a millisecond each on a PVM host (most are
/// exits to the VMM).
const OPS: u64 = 1500;
const SEEDS: [u64; 3] = [0x5107_0001, 0x5107_0002, 0x5107_0003];
/// A storm of [`OPS`] takes ~2 s; a hang would take forever.
const DEADLINE: Duration = Duration::from_secs(90);
/// The rate limit lets 5 lines a second through per stream; a machine has
/// a dozen streams at most. More than this per second of run is a flood.
const MAX_WARN_LINES_PER_SECOND: u64 = 60;

/// PCI IDs (vendor:device as the storm prints them).
const BLK: &str = "1af4:1042";
const CONSOLE: &str = "1af4:1043";
const RNG: &str = "1af4:1044";
const IVSHMEM: &str = "1af4:1110";

fn seeds() -> Vec<u64> {
    match std::env::var("SHMVM_STORM_SEEDS") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.strip_prefix("0x")
                    .map(|h| u64::from_str_radix(h, 16))
                    .unwrap_or_else(|| s.parse())
                    .unwrap_or_else(|e| panic!("SHMVM_STORM_SEEDS: {s:?}: {e}"))
            })
            .collect(),
        Err(_) => SEEDS.to_vec(),
    }
}

fn ops() -> u64 {
    std::env::var("SHMVM_STORM_OPS")
        .map(|v| v.parse().expect("SHMVM_STORM_OPS: a number"))
        .unwrap_or(OPS)
}

/// What a machine configuration has.
struct Machine {
    name: &'static str,
    virtio: bool,
    plain: bool,
    doorbell: bool,
}

/// The device arguments of `m`, its files in `dir`, the doorbell's server
/// socket at `socket`.
fn device_args(m: &Machine, dir: &Path, socket: &Path) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut add = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
    if m.virtio {
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let drive = format!("file={},if=none,format=raw,id=d0", disk.display());
        let port = format!("file,path={},id=c0", dir.join("port.out").display());
        add(&["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"]);
        add(&["-device", "virtio-rng-pci"]);
        add(&["-chardev", &port, "-device", "virtio-serial-pci"]);
        add(&["-device", "virtserialport,chardev=c0,name=storm.0"]);
    }
    if m.plain {
        add(&["-object", "memory-backend-shm,id=hm,size=1M"]);
        add(&["-device", "ivshmem-plain,memdev=hm"]);
    }
    if m.doorbell {
        let chardev = format!("socket,path={},id=iv", socket.display());
        add(&[
            "-chardev",
            &chardev,
            "-device",
            "ivshmem-doorbell,chardev=iv,vectors=2",
        ]);
    }
    a
}

/// The value of `key=` in a `shmvm: storm ...` line.
fn field(line: &str, key: &str) -> u64 {
    let v = line
        .split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    v.strip_prefix("0x")
        .map(|h| u64::from_str_radix(h, 16))
        .unwrap_or_else(|| v.parse())
        .unwrap_or_else(|e| panic!("{key}={v}: {e}"))
}

/// Checks one finished storm; `Err` says what is wrong.
fn judge(m: &Machine, seed: u64, ops: u64, r: &Run, secs: f64) -> Result<(), String> {
    let Some(code) = r.code else {
        return Err("shmvm was killed by a signal (a crash)".into());
    };
    let warns = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("shmvm: warn: "))
        .count() as u64;
    let others: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.starts_with("shmvm: warn: ") && !l.starts_with(harness_stats_prefix()))
        .collect();
    if code != 33 {
        // Stopped by shmvm: only with one clear line.
        return match others.as_slice() {
            [line] if line.starts_with("shmvm: ") => {
                Err(format!("shmvm stopped the guest (exit {code}): {line}"))
            }
            _ => Err(format!(
                "exit {code} without one clear error line: {others:?}"
            )),
        };
    }
    if !others.is_empty() {
        return Err(format!(
            "stderr lines that are neither warnings nor statistics: {others:?}"
        ));
    }
    let done = r
        .line("shmvm: storm done ")
        .ok_or("the guest never reached its end marker (storm done)")?;
    if (field(done, "seed"), field(done, "ops")) != (seed, ops) {
        return Err(format!("the guest ran another storm: {done}"));
    }
    if r.value("verdict").as_deref() != Some("pass") {
        return Err("verdict is not pass".into());
    }
    // Every device was stormed.
    let found: Vec<String> = r
        .lines_of("storm")
        .into_iter()
        .filter(|l| l.starts_with("pci="))
        .collect();
    let mut want: Vec<&str> = Vec::new();
    if m.virtio {
        want.extend([BLK, RNG, CONSOLE]);
    }
    if m.plain {
        want.push(IVSHMEM);
    }
    if m.doorbell {
        want.push(IVSHMEM);
    }
    for id in [BLK, RNG, CONSOLE, IVSHMEM] {
        let n = found
            .iter()
            .filter(|l| l.contains(&format!("id={id} ")))
            .count();
        let w = want.iter().filter(|&&x| x == id).count();
        if n != w {
            return Err(format!(
                "{w} functions {id} configured, the guest found {n}: {found:?}"
            ));
        }
    }
    // No flood, and every warning went through the rate limit.
    let s = r.stats();
    if warns > MAX_WARN_LINES_PER_SECOND * (secs.ceil() as u64 + 1) {
        return Err(format!("{warns} warning lines in {secs:.1} s: a log flood"));
    }
    if warns != s.guest_log_lines - s.guest_log_suppressed {
        return Err(format!(
            "{warns} warning lines, but the statistics say {} guest-triggered lines were logged \
             ({} asked for, {} left out): a warning that bypasses the rate limit",
            s.guest_log_lines - s.guest_log_suppressed,
            s.guest_log_lines,
            s.guest_log_suppressed
        ));
    }
    // The statistics agree with the guest's own counts.
    let ports = r.line("shmvm: storm ports ").ok_or("no storm ports line")?;
    for (dev, key) in [("pci-config", "pci_config"), ("i8042", "i8042")] {
        let d = s.device(dev).ok_or(format!("no {dev} in the statistics"))?;
        if d.reads + d.writes != field(ports, key) {
            return Err(format!(
                "{dev}: the guest made {} accesses, the statistics count {} reads + {} writes",
                field(ports, key),
                d.reads,
                d.writes
            ));
        }
    }
    let names: Vec<&str> = s.virtio.iter().map(|v| v.name.as_str()).collect();
    let want_virtio: &[&str] = if m.virtio {
        &[
            "virtio-blk-pci,drive=d0",
            "virtio-rng-pci",
            "virtio-serial-pci",
        ]
    } else {
        &[]
    };
    if names != want_virtio {
        return Err(format!(
            "virtio statistics for {names:?}, want {want_virtio:?}"
        ));
    }
    for v in &s.virtio {
        if v.broken > v.starts {
            return Err(format!(
                "{}: broken {} times but started {}",
                v.name, v.broken, v.starts
            ));
        }
    }
    if m.virtio && s.virtio.iter().all(|v| v.starts == 0) {
        return Err("no virtio device was ever started: the storm did not reach them".into());
    }
    if s.ivshmem.len() != usize::from(m.plain) {
        return Err(format!(
            "{} ivshmem-plain statistics, want {}",
            s.ivshmem.len(),
            u8::from(m.plain)
        ));
    }
    Ok(())
}

fn harness_stats_prefix() -> &'static str {
    shmvm_tests::stats::PREFIX
}

/// Runs every seed on machine `m`.
fn storm(m: &Machine) {
    require_kvm();
    let ops = ops();
    let mut failures = Vec::new();
    for seed in seeds() {
        let dir = TempDir::new(&format!("storm-{}", m.name));
        // The doorbell's server, in this process, with its own shm object.
        let shm = format!("/{}", unique(&format!("storm-{}-{seed:x}", m.name)));
        let socket = dir.0.join("iv.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let server = m.doorbell.then(|| {
            let mut server = Server::start(ServerConfig {
                socket: socket.clone(),
                shm: ShmSource::Name(shm.clone()),
                size: 1 << 20,
                vectors: 2,
                keep: false,
            })
            .expect("ivshmem server starts");
            let s = stop.clone();
            std::thread::spawn(move || server.run(&s).expect("server runs"))
        });
        let mut args = device_args(m, &dir.0, &socket);
        let append = format!("shmvm.test=storm shmvm.seed={seed:#x} shmvm.storm_ops={ops}");
        args.extend(["-m", "64M", "--stats=json", "-append", &append].map(String::from));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let replay = format!(
            "storm machine={} seed={seed:#x}: replay with SHMVM_STORM_SEEDS={seed:#x} \
             cargo test --release -p shmvm-tests --test storm_kvm {}",
            m.name, m.name
        );
        // Printed first, so a hang (harness::wait panics) names the seed too.
        eprintln!("{replay}");
        let t0 = Instant::now();
        let r = harness::wait(harness::spawn(with_testkernel(&argv)), DEADLINE);
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        if let Some(t) = server {
            t.join().unwrap();
        }
        let mut verdict = judge(m, seed, ops, &r, secs);
        // Nothing left behind: shmvm's own shm objects, files in the
        // directory beyond the ones the test made, the server's object.
        let left = leftover_shm(r.pid);
        let mut entries = dir.entries();
        entries.sort();
        let mut made: Vec<&str> = Vec::new();
        if m.virtio {
            made.extend(["disk.img", "port.out"]);
        }
        made.sort();
        if verdict.is_ok() && !left.is_empty() {
            verdict = Err(format!("shm objects left behind: {left:?}"));
        }
        if verdict.is_ok() && entries != made {
            verdict = Err(format!(
                "files left in {}: {entries:?}, want {made:?}",
                dir.0.display()
            ));
        }
        if verdict.is_ok() && m.doorbell && Path::new("/dev/shm").join(&shm[1..]).exists() {
            verdict = Err(format!("the server's {shm} is left behind"));
        }
        match verdict {
            Ok(()) => eprintln!("storm machine={} seed={seed:#x}: ok in {secs:.1} s", m.name),
            Err(e) => {
                failures.push(format!(
                    "{replay}\n  {e}\n--- stdout (tail):\n{}\n--- stderr (head):\n{}",
                    tail(&r.stdout, 15),
                    head(&r.stderr, 30)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn head(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join("\n")
}

#[test]
fn kvm_storm_virtio_blk_rng_serial() {
    storm(&Machine {
        name: "kvm_storm_virtio_blk_rng_serial",
        virtio: true,
        plain: false,
        doorbell: false,
    });
}

#[test]
fn kvm_storm_ivshmem_plain_and_doorbell() {
    storm(&Machine {
        name: "kvm_storm_ivshmem_plain_and_doorbell",
        virtio: false,
        plain: true,
        doorbell: true,
    });
}

#[test]
fn kvm_storm_every_device() {
    storm(&Machine {
        name: "kvm_storm_every_device",
        virtio: true,
        plain: true,
        doorbell: true,
    });
}
