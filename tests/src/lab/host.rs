//! The lab runner on the development machine (`lab host`, run by `make lab`
//! after the Makefile built the static binaries, fetched the kernel and
//! packed both initramfs images): boots L1, follows its console, resumes
//! unfinished scenarios in a fresh L1 when one dies or hangs, and reports.
//!
//! Environment (as `make lab` documents it):
//!   LAB_VMMS=qemu,shmvm   L2 VMMs (default both; qemu alone: a reference-only run)
//!   LAB_ONLY=a,b          only these scenarios
//!   LAB_DUMP=all          keep every L2 console, not only failed ones
//!   LAB_L2EXTRA=a,b       extra L2 kernel parameters
//!   LAB_L2DEBUG=1         L2 kernels log at debug level, shmvm runs with -v
//!                         (a triple fault logs every vCPU's state)
//!   LAB_TIMEOUT=1200      seconds for all L1 boots together
//!   LAB_L1_RETRIES=1      fresh L1 boots after an L1 death or hang
//!   LAB_L1_SILENCE=300    seconds of console silence that make an L1 hung
//!   LAB_SELFTEST_PANIC=name.vmm   panic L1 as that run starts (tests the resume)
//!
//! Output: one `LAB-SCENARIO name=.. vmm=.. result=PASS|FAIL ..` line per
//! run (the last of each, if a resumed L1 repeated one), a `lab: FAIL
//! NAME.VMM: reason` line per failed run, warnings, a budget line and
//! `N passed, N failed` last. Files in DIR: l1-console.log (everything),
//! l1-boot<N>.log, consoles/<name>.<vmm>.log. Exit 0 only if every
//! expected run reported and passed.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::scenario::{self, Scenario, Vmm};
use super::{fields, tag};

/// Budget the whole lab should stay in (a warning past it).
const BUDGET: Duration = Duration::from_secs(900);

#[derive(Debug, Error)]
pub enum HostError {
    #[error("missing prerequisite: {0} (run 'make deps')")]
    Prerequisite(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error("{0}")]
    Setting(String),
    #[error("cannot start qemu-system-x86_64: {0}")]
    Qemu(std::io::Error),
}

struct Settings {
    vmms: Vec<Vmm>,
    only: Vec<String>,
    dump_all: bool,
    l2extra: String,
    l2debug: bool,
    timeout: Duration,
    retries: u32,
    silence: Duration,
    selftest: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn env_secs(name: &str, default: u64) -> Result<u64, HostError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .parse()
            .map_err(|_| HostError::Setting(format!("{name}={v}: a number of seconds"))),
    }
}

/// The L2 VMMs `LAB_VMMS` names (default: QEMU, the reference, and shmvm).
pub(super) fn env_vmms() -> Result<Vec<Vmm>, String> {
    match env("LAB_VMMS") {
        v if v.is_empty() => Ok(vec![Vmm::Qemu, Vmm::Shmvm]),
        v => Vmm::parse_list(&v).map_err(|e| format!("LAB_VMMS: {e}")),
    }
}

fn settings() -> Result<Settings, HostError> {
    Ok(Settings {
        vmms: env_vmms().map_err(HostError::Setting)?,
        only: env("LAB_ONLY")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        dump_all: env("LAB_DUMP") == "all",
        l2extra: env("LAB_L2EXTRA"),
        l2debug: env("LAB_L2DEBUG") == "1",
        timeout: Duration::from_secs(env_secs("LAB_TIMEOUT", 1200)?),
        retries: env_secs("LAB_L1_RETRIES", 1)? as u32,
        silence: Duration::from_secs(env_secs("LAB_L1_SILENCE", 300)?),
        selftest: env("LAB_SELFTEST_PANIC"),
    })
}

fn check_prerequisites(dir: &Path) -> Result<(), HostError> {
    let qemu = |arg: &str| {
        Command::new("qemu-system-x86_64")
            .args([arg, "help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .map_err(|_| HostError::Prerequisite("qemu-system-x86_64".into()))
    };
    if !qemu("-accel")?.lines().any(|l| l.trim() == "tcg") {
        return Err(HostError::Prerequisite(
            "qemu-system-x86_64 with TCG".into(),
        ));
    }
    if !qemu("-cpu")?.contains("EPYC") {
        return Err(HostError::Prerequisite(
            "qemu-system-x86_64 with the EPYC CPU model".into(),
        ));
    }
    for f in ["kernel/vmlinuz", "l1-initrd.lz4"] {
        if !dir.join(f).exists() {
            return Err(HostError::Prerequisite(format!(
                "{} (make lab builds it)",
                dir.join(f).display()
            )));
        }
    }
    Ok(())
}

/// How one L1 boot ended.
struct Boot {
    ended: bool,
    status: String,
    timed_out: bool,
    silent_for: Option<u64>,
    running: Option<String>,
    lines: Vec<String>,
}

/// Boots L1 once, echoing the runner's lines, until it powers off, dies,
/// stays silent for `silence`, or `left` runs out.
fn boot_l1(
    dir: &Path,
    append: &str,
    left: Duration,
    silence: Duration,
    log: &mut File,
    blog: &Path,
) -> Result<Boot, HostError> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HostError::File { path, source }
    };
    let mut bfile = File::create(blog).map_err(file_err(blog))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "q35", "-accel", "tcg,thread=multi", "-smp", "2"])
        .args([
            "-cpu",
            "EPYC,+svm,+npt",
            "-m",
            "4096",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-nographic", "-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(dir.join("kernel/vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("l1-initrd.lz4"))
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HostError::Qemu)?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    let out: Option<Box<dyn Read + Send>> = child.stdout.take().map(|o| Box::new(o) as _);
    let err: Option<Box<dyn Read + Send>> = child.stderr.take().map(|o| Box::new(o) as _);
    for pipe in [out, err].into_iter().flatten() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                let _ = tx.send(line.trim_end_matches('\n').to_string());
                buf.clear();
            }
        }));
    }
    drop(tx);
    let start = Instant::now();
    let mut last = Instant::now();
    let mut b = Boot {
        ended: false,
        status: String::new(),
        timed_out: false,
        silent_for: None,
        running: None,
        lines: Vec::new(),
    };
    let mut stopped = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                last = Instant::now();
                let _ = writeln!(bfile, "{line}");
                let _ = writeln!(log, "{line}");
                if ["LAB-INFO", "LAB-SCENARIO", "LAB-FATAL", "LAB-SUMMARY"]
                    .iter()
                    .any(|p| line.starts_with(p))
                {
                    println!("{line}");
                }
                if let Some(r) = line.strip_prefix("LAB-START ") {
                    b.running = Some(r.to_string());
                }
                b.ended |= line.starts_with("LAB-END");
                b.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stopped {
            continue;
        }
        if start.elapsed() > left {
            b.timed_out = true;
        } else if last.elapsed() > silence {
            let age = last.elapsed().as_secs();
            println!("lab: L1 console silent for {age}s: stopping L1");
            b.silent_for = Some(age);
        } else {
            continue;
        }
        let _ = child.kill();
        stopped = true;
    }
    for r in readers {
        let _ = r.join();
    }
    b.status = match child.wait() {
        Ok(s) if b.timed_out => format!("{s}, out of time"),
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    Ok(b)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Boot to init per VMM from the runs' `LAB-SCENARIO` lines (`init_s=`,
/// VMM start to the L2's init as seen from L1): each VMM's median, min and
/// max, and shmvm's median as a ratio of QEMU's over the scenarios both
/// booted (the same guests on the same L1), one line each.
pub(super) fn boot_summary<'a>(lab: &str, lines: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut init_s: Vec<(Vmm, String, f64)> = Vec::new();
    for l in lines {
        let f = fields(l);
        let vmm = f.get("vmm").and_then(|v| Vmm::parse(v));
        let t = f.get("init_s").and_then(|v| v.parse::<f64>().ok());
        if let (Some(vmm), Some(name), Some(t)) = (vmm, f.get("name"), t) {
            init_s.push((vmm, name.to_string(), t));
        }
    }
    let of = |vmm: Vmm, names: Option<&[&str]>| -> Vec<f64> {
        init_s
            .iter()
            .filter(|(v, n, _)| *v == vmm && names.is_none_or(|ns| ns.contains(&n.as_str())))
            .map(|r| r.2)
            .collect()
    };
    let mut out = Vec::new();
    for vmm in [Vmm::Qemu, Vmm::Shmvm] {
        let t = of(vmm, None);
        let (n, lo, hi) = (
            t.len(),
            t.iter().copied().fold(f64::MAX, f64::min),
            t.iter().copied().fold(0.0, f64::max),
        );
        if let Some(m) = median(t) {
            out.push(format!(
                "{lab}: L2 boot to init with {vmm}: median {m:.1} s (min {lo:.1}, max {hi:.1}, {n} runs)"
            ));
        }
    }
    let both: Vec<&str> = init_s
        .iter()
        .filter(|(v, n, _)| {
            *v == Vmm::Shmvm && init_s.iter().any(|q| q.0 == Vmm::Qemu && &q.1 == n)
        })
        .map(|r| r.1.as_str())
        .collect();
    if let (Some(m), Some(q)) = (
        median(of(Vmm::Shmvm, Some(&both))),
        median(of(Vmm::Qemu, Some(&both))),
    ) {
        out.push(format!(
            "{lab}: L2 boot to init, shmvm/QEMU: {:.2} (medians {m:.2} s / {q:.2} s over the {} scenarios both booted)",
            m / q,
            both.len()
        ));
    }
    out
}

/// Writes each LAB-CONSOLE-BEGIN/END section of the log to its own file.
fn save_consoles(lines: &[String], dir: &Path) -> Vec<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    let _ = fs::create_dir_all(dir);
    let mut saved = Vec::new();
    let mut current: Option<File> = None;
    for l in lines {
        if let Some(t) = l.strip_prefix("LAB-CONSOLE-BEGIN ") {
            let p = dir.join(format!("{}.log", t.trim()));
            current = File::create(&p).ok();
            saved.push(p);
        } else if l.starts_with("LAB-CONSOLE-END ") {
            current = None;
        } else if let Some(f) = current.as_mut() {
            let _ = writeln!(f, "{l}");
        }
    }
    saved
}

/// A run's key: (scenario name, VMM).
type RunKey = (String, String);

fn run_key(line: &str) -> RunKey {
    let f = fields(line);
    let get = |k| f.get(k).copied().unwrap_or("").to_string();
    (get("name"), get("vmm"))
}

/// The last `LAB-SCENARIO` line of each run, in the order runs first
/// reported (a resumed L1 repeats a partly done scenario).
fn last_results(lines: &[String]) -> (Vec<RunKey>, HashMap<RunKey, &str>) {
    let mut order = Vec::new();
    let mut last = HashMap::new();
    for l in lines.iter().filter(|l| l.starts_with("LAB-SCENARIO ")) {
        let key = run_key(l);
        if !last.contains_key(&key) {
            order.push(key.clone());
        }
        last.insert(key, l.as_str());
    }
    (order, last)
}

/// How a run's line names a benchmark's rate (higher is better): MB/s,
/// I/O per second, files per second (blkbench, fsbench).
const RATE_SUFFIXES: [&str; 3] = ["_MBps", "_iops", "_fps"];

/// For every scenario whose QEMU and shmvm runs both passed: one line per
/// rate on both run lines, with shmvm's over QEMU's (`make bench-blk`,
/// `make bench-fs`).
fn bench_ratios(order: &[RunKey], last: &HashMap<RunKey, &str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (name, _) in order {
        if !seen.insert(name) {
            continue;
        }
        let pass = |vmm: Vmm| {
            last.get(&(name.clone(), vmm.to_string()))
                .map(|l| fields(l))
                .filter(|f| f.get("result") == Some(&"PASS"))
        };
        let (Some(q), Some(m)) = (pass(Vmm::Qemu), pass(Vmm::Shmvm)) else {
            continue;
        };
        let line = last[&(name.clone(), Vmm::Qemu.to_string())];
        for k in line
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, _)| k))
        {
            if !RATE_SUFFIXES.iter().any(|x| k.ends_with(x)) {
                continue;
            }
            let num = |f: &HashMap<&str, &str>| f.get(k).and_then(|v| v.parse::<f64>().ok());
            if let (Some(a), Some(b)) = (num(&q), num(&m)) {
                let ratio = if a > 0.0 {
                    format!("{:.2}", b / a)
                } else {
                    "-".into()
                };
                out.push(format!(
                    "lab: bench {name} {k}: qemu {a} shmvm {b} shmvm/qemu {ratio}"
                ));
            }
        }
    }
    out
}

/// The scenarios with a run that has not reported yet, each once, in
/// table order: what a fresh L1 must run.
fn unfinished<'a>(expected: &'a [(String, Vmm)], lines: &[String]) -> Vec<&'a str> {
    let reported: HashSet<RunKey> = lines
        .iter()
        .filter(|l| l.starts_with("LAB-SCENARIO "))
        .map(|l| run_key(l))
        .collect();
    let mut out: Vec<&str> = Vec::new();
    for (name, vmm) in expected {
        if !reported.contains(&(name.clone(), vmm.to_string())) && !out.contains(&name.as_str()) {
            out.push(name);
        }
    }
    out
}

/// `lab host --dir DIR --scenarios FILE`: returns whether the lab passed.
pub fn main(dir: &Path, scenarios: &Path) -> Result<bool, HostError> {
    let started = Instant::now();
    let st = settings()?;
    let text = fs::read_to_string(scenarios).map_err(|source| HostError::File {
        path: scenarios.to_path_buf(),
        source,
    })?;
    let all = scenario::parse(&scenarios.to_string_lossy(), &text)?;
    for n in &st.only {
        if !all.iter().any(|s| &s.name == n) {
            return Err(HostError::Setting(format!(
                "LAB_ONLY: no scenario '{n}' in {}",
                scenarios.display()
            )));
        }
    }
    check_prerequisites(dir)?;
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| st.only.is_empty() || st.only.contains(&s.name))
        .collect();
    // Every run (scenario x VMM) this lab must report.
    let expected: Vec<(String, Vmm)> = chosen
        .iter()
        .flat_map(|s| {
            st.vmms
                .iter()
                .filter(|v| s.runs_with(**v))
                .map(|v| (s.name.clone(), *v))
        })
        .collect();
    if expected.is_empty() {
        return Err(HostError::Setting(
            "no scenario runs with these LAB_VMMS and LAB_ONLY".into(),
        ));
    }
    let vmms: Vec<String> = st.vmms.iter().map(Vmm::to_string).collect();
    let mut base = format!(
        "console=ttyS0 reboot=t panic=-1 quiet lab.vmms={}",
        vmms.join(",")
    );
    if st.dump_all {
        base += " lab.dump=all";
    }
    if !st.l2extra.is_empty() {
        base += &format!(" lab.l2extra={}", st.l2extra);
    }
    if st.l2debug {
        base += " lab.l2debug=1";
    }
    let log_path = dir.join("l1-console.log");
    let mut log = File::create(&log_path).map_err(|source| HostError::File {
        path: log_path.clone(),
        source,
    })?;
    let mut only = st.only.join(",");
    let mut selftest = st.selftest.clone();
    let mut warnings: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut last_ended = false;
    let l1_start = Instant::now();
    for boot in 1..=st.retries + 1 {
        let left = st.timeout.saturating_sub(l1_start.elapsed());
        if left <= Duration::from_secs(30) {
            warnings.push(format!("no time left for L1 boot {boot}"));
            break;
        }
        let mut append = base.clone();
        if !only.is_empty() {
            append += &format!(" lab.only={only}");
        }
        if !selftest.is_empty() {
            append += &format!(" lab.selftest_panic={}", std::mem::take(&mut selftest));
        }
        let blog = dir.join(format!("l1-boot{boot}.log"));
        let for_only = if only.is_empty() {
            String::new()
        } else {
            format!(" for {only}")
        };
        println!(
            "lab: booting L1 #{boot} (QEMU TCG, nested SVM){for_only}; console in {}",
            blog.display()
        );
        let b = boot_l1(dir, &append, left, st.silence, &mut log, &blog)?;
        lines.extend(b.lines.iter().cloned());
        last_ended = b.ended;
        if b.ended {
            break;
        }
        // L1 died (a kernel panic in L1), hung, or the time ran out: say
        // where, show its last lines, and resume the unfinished scenarios.
        let during = b
            .running
            .as_deref()
            .map(|r| format!(", during {r}"))
            .unwrap_or_default();
        let hung = b
            .silent_for
            .map(|s| format!(", stopped after {s} s of silence"))
            .unwrap_or_default();
        warnings.push(format!(
            "L1 boot {boot} ended without LAB-END (QEMU status {}{during}{hung})",
            b.status
        ));
        println!("== L1 boot {boot} ended without LAB-END; its last 40 lines ==");
        for l in &b.lines[b.lines.len().saturating_sub(40)..] {
            println!("{l}");
        }
        if b.timed_out {
            break;
        }
        let remaining = unfinished(&expected, &lines);
        if remaining.is_empty() {
            break;
        }
        only = remaining.join(",");
    }
    let l1_time = l1_start.elapsed();
    let saved = save_consoles(&lines, &dir.join("consoles"));

    let (order, last) = last_results(&lines);
    let mut problems: Vec<String> = Vec::new();
    if let Some(f) = lines.iter().find(|l| l.starts_with("LAB-FATAL")) {
        problems.push(f.clone());
    }
    if !last_ended {
        problems.push("the last L1 boot ended without LAB-END (crashed, hung or timed out)".into());
    }
    let (mut passed, mut failed) = (0, 0);
    let mut failures: Vec<String> = Vec::new();
    println!();
    println!(
        "== KVM lab results: one line per run (L2 boot: VMM start to L2 init, as seen from L1) =="
    );
    for key in &order {
        let line = last[key];
        println!("{line}");
        match failure_line(&key.0, &key.1, line) {
            None => passed += 1,
            Some(why) => {
                failed += 1;
                failures.push(why);
            }
        }
    }
    for r in bench_ratios(&order, &last) {
        println!("{r}");
    }
    if passed + failed != expected.len() {
        let missing: Vec<String> = expected
            .iter()
            .filter(|(n, v)| !last.contains_key(&(n.clone(), v.to_string())))
            .map(|(n, v)| tag(n, *v))
            .collect();
        problems.push(format!(
            "{} of {} runs reported; missing: {}",
            passed + failed,
            expected.len(),
            missing.join(" ")
        ));
    }
    if failed > 0 && !saved.is_empty() {
        let names: Vec<String> = saved.iter().map(|p| p.display().to_string()).collect();
        println!("L2 consoles: {}", names.join(" "));
    }
    for l in boot_summary("lab", order.iter().map(|k| last[k])) {
        println!("{l}");
    }
    if let Some(ready) = lines
        .iter()
        .find(|l| l.starts_with("LAB-INFO l1_ready_s="))
        .and_then(|l| fields(l).get("l1_ready_s").map(|s| s.to_string()))
    {
        println!("lab: L1 kernel boot to its init: {ready} s");
    }
    for w in &warnings {
        println!("lab: WARNING: {w}");
    }
    for f in &failures {
        println!("{f}");
    }
    for p in &problems {
        println!("lab: FAIL: {p}");
    }
    let total = started.elapsed();
    println!(
        "lab: L1 run {:.1} s, total {:.1} s (budget {} s){}",
        l1_time.as_secs_f64(),
        total.as_secs_f64(),
        BUDGET.as_secs(),
        if total > BUDGET {
            " WARNING: over budget"
        } else {
            ""
        }
    );
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0 && problems.is_empty())
}

/// The one summary line of a failed run (`lab: FAIL NAME.VMM: reason`), or
/// None when its LAB-SCENARIO line says PASS.
pub(crate) fn failure_line(name: &str, vmm: &str, scenario_line: &str) -> Option<String> {
    if fields(scenario_line).get("result") == Some(&"PASS") {
        return None;
    }
    let reason = scenario_line
        .split_once(" reason=")
        .map_or("(no reason given)", |(_, r)| r);
    Some(format!("lab: FAIL {name}.{vmm}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_medians_and_the_ratio_over_the_scenarios_both_booted() {
        let runs = [
            "LAB-SCENARIO name=a vmm=qemu result=PASS init_s=4.00",
            "LAB-SCENARIO name=a vmm=shmvm result=PASS init_s=2.00",
            "LAB-SCENARIO name=b vmm=qemu result=PASS init_s=6.00",
            "LAB-SCENARIO name=b vmm=shmvm result=FAIL init_s=3.00 reason=x",
            "LAB-SCENARIO name=c vmm=shmvm result=PASS init_s=9.00",
            "LAB-SCENARIO name=d vmm=qemu result=FAIL init_s=- reason=no_init",
            "LAB-SCENARIO name=check-x vmm=shmvm result=PASS",
        ];
        assert_eq!(
            boot_summary("lab-arm64", runs),
            [
                "lab-arm64: L2 boot to init with qemu: median 5.0 s (min 4.0, max 6.0, 2 runs)",
                "lab-arm64: L2 boot to init with shmvm: median 3.0 s (min 2.0, max 9.0, 3 runs)",
                "lab-arm64: L2 boot to init, shmvm/QEMU: 0.50 (medians 2.50 s / 5.00 s over the 2 scenarios both booted)",
            ]
        );
        let shmvm_only = ["LAB-SCENARIO name=a vmm=shmvm result=PASS init_s=2.00"];
        assert_eq!(boot_summary("lab", shmvm_only).len(), 1);
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_resumed_l1_runs_what_did_not_report_and_its_result_counts() {
        let expected: Vec<(String, Vmm)> = [
            ("a", Vmm::Qemu),
            ("a", Vmm::Shmvm),
            ("b", Vmm::Qemu),
            ("b", Vmm::Shmvm),
        ]
        .map(|(n, v)| (n.to_string(), v))
        .to_vec();
        // L1 #1 died during a.shmvm.
        let boot1 = lines(
            "LAB-START name=a vmm=qemu\nLAB-SCENARIO name=a vmm=qemu result=FAIL reason=x\nLAB-START name=a vmm=shmvm",
        );
        assert_eq!(unfinished(&expected, &boot1), vec!["a", "b"]);
        let mut all = boot1.clone();
        all.extend(lines(
            "LAB-SCENARIO name=a vmm=qemu result=PASS\nLAB-SCENARIO name=a vmm=shmvm result=PASS\nLAB-SCENARIO name=b vmm=qemu result=PASS",
        ));
        assert_eq!(unfinished(&expected, &all), vec!["b"]);
        let (order, last) = last_results(&all);
        assert_eq!(order.len(), 3);
        assert!(last[&("a".to_string(), "qemu".to_string())].contains("result=PASS"));
    }

    #[test]
    fn bench_rates_of_two_passed_runs_get_a_ratio() {
        let all = lines(
            "LAB-SCENARIO name=fs vmm=qemu result=PASS init_s=9.1 create_fps=200 read_fps=- seq_read_MBps=100.0 cache=auto\n\
             LAB-SCENARIO name=fs vmm=shmvm result=PASS init_s=8.0 create_fps=190 read_fps=400 seq_read_MBps=125.5\n\
             LAB-SCENARIO name=blk vmm=qemu result=PASS rand_read_iops=100\n\
             LAB-SCENARIO name=blk vmm=shmvm result=FAIL rand_read_iops=300 reason=x",
        );
        let (order, last) = last_results(&all);
        assert_eq!(
            bench_ratios(&order, &last),
            [
                "lab: bench fs create_fps: qemu 200 shmvm 190 shmvm/qemu 0.95",
                "lab: bench fs seq_read_MBps: qemu 100 shmvm 125.5 shmvm/qemu 1.25",
            ]
        );
    }
}
