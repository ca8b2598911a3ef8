//! The test kernel's checks in the arm64 lab (README, "The arm64 lab"):
//! the aarch64 build of `guest/testkernel` (an arm64 `Image`, `/lab/testkernel.img`
//! in L1) run under the aarch64 shmvm with RAM from each backend, judged
//! like the x86 end-to-end tests judge it: shmvm's exit code from the
//! debug-exit register (33 pass, 35 fail), the kernel's `shmvm: verdict`
//! line, and the facts it reports (its command line, CPUs, RAM, the
//! initrd's FNV-1a, PSCI CPU_ON of each secondary, the ivshmem handshake
//! with this process as the host peer over the region's file), plus
//! shmvm's `--stats=json` (BAR2 mapped where the kernel put it, no BAR2
//! access exiting, no unclaimed MMIO). One `LAB-SCENARIO` line per run;
//! [`names`] are what the host side expects beside the table's.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::arm64::wait_with_timeout;
use super::fields;
use super::l1::random;
use crate::shm::{self, Region};
use crate::stats::Stats;

/// The kernel image and the initrd it hashes, in L1.
const KERNEL: &str = "/lab/testkernel.img";
const INITRD: &str = "/lab/testkernel-initrd";
/// One run at most this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The ivshmem region (a file on L1's /dev/shm) and the host's wait.
const REGION_SIZE: u64 = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// RAM of the runs (MiB). memtest covers all of it; on L1's shared
/// mappings (shm, memfd, file) each 4 KiB page's first touch costs about
/// 0.4 ms under TCG (measured: 7.2 s for 64 MiB of shm under a load of
/// 10, 0.28 s for 64 MiB of private `ram`), so those runs get less.
const RAM_MIB: u64 = 64;
const SHM_RAM_MIB: u64 = 32;
const SMALL_RAM_MIB: u64 = 16;

/// One run of the test kernel.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: &'static str,
    /// shmvm's RAM options.
    pub ram: Vec<String>,
    pub mem_mib: u64,
    pub smp: u32,
    /// The kernel's `shmvm.test=` list.
    pub tests: &'static str,
    pub initrd: bool,
    pub ivshmem: bool,
    /// `shmvm.expect_cpus=`, when it differs from `smp` (a run that must fail).
    pub expect_cpus: Option<u32>,
    /// The verdict's reason when the run must fail (exit code 35).
    pub fail_reason: Option<&'static str>,
}

fn backend(kind: &str, name: &str, mib: u64) -> Vec<String> {
    let object = match kind {
        "ram" => return vec!["-m".into(), format!("{mib}M")],
        "file" => {
            format!("memory-backend-file,id=ram0,size={mib}M,mem-path=/dev/shm/{name}.ram,share=on")
        }
        other => format!("memory-backend-{other},id=ram0,size={mib}M"),
    };
    vec![
        "-object".into(),
        object,
        "-machine".into(),
        "memory-backend=ram0".into(),
    ]
}

/// The runs: every RAM backend once; the shm one with 2 vCPUs, the
/// initrd and an ivshmem-plain device shared with this process; one run
/// that must fail, so a failing verdict is seen to end the VM with 35.
pub fn runs() -> Vec<Run> {
    // (name, backend, MiB, vCPUs, tests, initrd, ivshmem)
    let table = [
        (
            "tk-shm-2cpu-ivshmem",
            "shm",
            SHM_RAM_MIB,
            2,
            "boot,initrd,smp,ivshmem,memtest",
            true,
            true,
        ),
        (
            "tk-ram-1cpu",
            "ram",
            RAM_MIB,
            1,
            "boot,smp,memtest",
            false,
            false,
        ),
        (
            "tk-memfd-2cpu",
            "memfd",
            SMALL_RAM_MIB,
            2,
            "boot,smp,memtest",
            false,
            false,
        ),
        (
            "tk-file-1cpu",
            "file",
            SMALL_RAM_MIB,
            1,
            "boot,initrd,memtest",
            true,
            false,
        ),
        (
            "tk-verdict-fail",
            "memfd",
            SMALL_RAM_MIB,
            2,
            "boot,smp",
            false,
            false,
        ),
    ];
    table
        .into_iter()
        .map(|(name, kind, mem_mib, smp, tests, initrd, ivshmem)| {
            let fails = name == "tk-verdict-fail";
            Run {
                name,
                ram: backend(kind, name, mem_mib),
                mem_mib,
                smp,
                tests,
                initrd,
                ivshmem,
                expect_cpus: fails.then_some(3),
                fail_reason: fails.then_some("cpus_mismatch"),
            }
        })
        .collect()
}

/// The names [`main`] reports.
pub fn names() -> Vec<&'static str> {
    runs().into_iter().map(|r| r.name).collect()
}

/// What the L1 side knows of a run besides its output.
#[derive(Debug)]
pub struct Expect<'a> {
    pub token: &'a str,
    pub initrd_fnv: Option<u64>,
    /// The host half of the handshake: Ok(bytes checked) or its error.
    pub host_handshake: Option<Result<u64, String>>,
}

/// The `shmvm: KEY=VALUE...` line's rest for `KEY=`.
fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("shmvm: {key}=");
    out.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
}

/// The rest of the first `shmvm: WORD REST` line whose rest starts with `start`.
fn line_of<'a>(out: &'a str, word: &str, start: &str) -> Option<&'a str> {
    let prefix = format!("shmvm: {word} ");
    out.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(&prefix)
            .filter(|rest| rest.starts_with(start))
    })
}

/// The verdict on one run from shmvm's exit code, stdout (the kernel's
/// console) and stderr (`--stats=json`).
pub fn judge(r: &Run, e: &Expect, rc: Option<i32>, out: &str, err: &str) -> Result<(), String> {
    let verdict = value(out, "verdict").ok_or("the kernel printed no verdict")?;
    match (r.fail_reason, rc) {
        (None, Some(33)) if verdict == "pass" => {}
        (Some(why), Some(35)) if verdict == format!("fail reason={why}") => return Ok(()),
        (_, None) => return Err(format!("shmvm did not end in {} s", RUN_TIMEOUT.as_secs())),
        (_, Some(c)) => {
            let want = r
                .fail_reason
                .map_or("33 and pass".into(), |w| format!("35 and fail reason={w}"));
            return Err(format!("exit code {c} and verdict {verdict}, want {want}"));
        }
    }
    if !value(out, "entry").is_some_and(|v| v.starts_with("arm64-image el=1 ")) {
        return Err(format!("entry line {:?}", value(out, "entry")));
    }
    let cmdline = value(out, "cmdline").unwrap_or("");
    if !cmdline.contains(e.token) {
        return Err(format!("command line lost: {cmdline:?}, want {}", e.token));
    }
    if value(out, "cpus") != Some(&r.smp.to_string()) {
        return Err(format!(
            "kernel sees {:?} CPUs, want {}",
            value(out, "cpus"),
            r.smp
        ));
    }
    let want_ram = (r.mem_mib << 20).to_string();
    if value(out, "ram_bytes") != Some(&want_ram) {
        return Err(format!(
            "ram_bytes {:?}, want {want_ram}",
            value(out, "ram_bytes")
        ));
    }
    if r.tests.contains("smp") {
        let smp = line_of(out, "smp", "started=");
        let want = format!("started={} boot_cpu_on=already_on", r.smp - 1);
        if smp != Some(want.as_str()) {
            return Err(format!("smp: {smp:?}, want {want}"));
        }
    }
    if r.tests.contains("memtest")
        && !line_of(out, "memtest", "bytes=").is_some_and(|l| l.contains(" ok"))
    {
        return Err("memtest did not report ok".into());
    }
    if let Some(want) = e.initrd_fnv {
        let l = line_of(out, "initrd", "size=").unwrap_or("");
        let got = fields(l).get("fnv1a64").copied().unwrap_or("-").to_string();
        if got != format!("{want:#018x}") {
            return Err(format!("initrd fnv1a64 {got}, want {want:#018x}"));
        }
    }
    let stats = Stats::from_output(err).map_err(|e| e.to_string())?;
    if stats.unclaimed.mmio != 0 {
        return Err(format!("{} unclaimed MMIO accesses", stats.unclaimed.mmio));
    }
    if let Some(host) = &e.host_handshake {
        if line_of(out, "ivshmem", "handshake ok").is_none() {
            return Err("the kernel's handshake did not end ok".into());
        }
        match host {
            Ok(n) if *n == REGION_SIZE - protocol::DATA_OFF => {}
            Ok(n) => {
                return Err(format!(
                    "host checked {n} bytes, want {}",
                    REGION_SIZE - protocol::DATA_OFF
                ));
            }
            Err(why) => return Err(format!("host half of the handshake: {why}")),
        }
        let iv = stats
            .ivshmem
            .first()
            .ok_or("no ivshmem in the statistics")?;
        let guest_bar2 = out
            .lines()
            .find_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix("shmvm: ivshmem bar0=")
            })
            .and_then(|l| l.split(" bar2=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok());
        if guest_bar2.is_none() || iv.bar2_addr != guest_bar2 {
            return Err(format!(
                "kernel put BAR2 at {guest_bar2:x?}, shmvm mapped it at {:x?}",
                iv.bar2_addr
            ));
        }
        if iv.bar2_exits != 0 {
            return Err(format!("{} BAR2 accesses exited", iv.bar2_exits));
        }
    }
    Ok(())
}

/// Inside the arm64 L1, after the table's scenarios: every run, one
/// `LAB-SCENARIO` line each.
pub fn main() {
    let initrd: Vec<u8> = (0..12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let initrd_fnv = match fs::write(INITRD, &initrd) {
        Ok(()) => Some(protocol::fnv1a64(&initrd)),
        Err(e) => {
            println!("LAB-FATAL {INITRD}: {e}");
            None
        }
    };
    for r in runs() {
        let t0 = Instant::now();
        let (verdict, facts) = run_one(&r, initrd_fnv);
        let (result, reason) = match &verdict {
            Ok(()) => ("PASS", String::new()),
            Err(why) => ("FAIL", format!(" reason={}", why.replace(' ', "_"))),
        };
        println!(
            "LAB-SCENARIO name={} vmm=shmvm arch=aarch64 kernel=testkernel result={result} wall={:.2}{facts}{reason}",
            r.name,
            t0.elapsed().as_secs_f64()
        );
    }
}

/// What the scenario line shows of a run: the kernel's own timings of its
/// memtest, its ivshmem handshake and its first secondary CPU's start.
fn facts(out: &str) -> String {
    let ms = |word: &str, start: &str| {
        line_of(out, word, start)
            .and_then(|l| fields(l).get("ms").map(|v| v.to_string()))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        " memtest_ms={} handshake_ms={} cpu_on_ms={}",
        ms("memtest", "bytes="),
        ms("ivshmem", "handshake ok"),
        ms("smp", "cpu=")
    )
}

/// Runs and judges `r`; removes its files after.
fn run_one(r: &Run, initrd_fnv: Option<u64>) -> (Result<(), String>, String) {
    let verdict = run_and_judge(r, initrd_fnv);
    let out = fs::read_to_string(format!("/tmp/{}.out", r.name)).unwrap_or_default();
    for f in [
        format!("/tmp/{}.out", r.name),
        format!("/tmp/{}.err", r.name),
        format!("/dev/shm/{}.iv", r.name),
        format!("/dev/shm/{}.ram", r.name),
    ] {
        let _ = fs::remove_file(f);
    }
    (verdict, facts(&out))
}

fn run_and_judge(r: &Run, initrd_fnv: Option<u64>) -> Result<(), String> {
    if !Path::new(KERNEL).exists() {
        return Err(format!("{KERNEL} missing from the L1 image"));
    }
    let token = format!("lab.tk={}-{}", r.name, random());
    let seed = u64::from(random()) | 1;
    let mut append = format!(
        "shmvm.test={} shmvm.expect_cpus={} shmvm.expect_ram={}M shmvm.seed={seed:#x} {token}",
        r.tests,
        r.expect_cpus.unwrap_or(r.smp),
        r.mem_mib
    );
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        KERNEL.into(),
        "-smp".into(),
        r.smp.to_string(),
        "-nographic".into(),
        "--stats=json".into(),
    ];
    args.extend(r.ram.iter().cloned());
    if r.initrd {
        args.extend(["-initrd".to_string(), INITRD.into()]);
    }
    let region = format!("/dev/shm/{}.iv", r.name);
    if r.ivshmem {
        fs::File::create(&region)
            .and_then(|f| f.set_len(REGION_SIZE))
            .map_err(|e| format!("{region}: {e}"))?;
        args.extend([
            "-object".to_string(),
            format!("memory-backend-file,id=iv,size={REGION_SIZE},mem-path={region},share=on"),
            "-device".into(),
            "ivshmem-plain,memdev=iv".into(),
        ]);
        append.push_str(&format!(
            " shmvm.ivshmem_size={REGION_SIZE} shmvm.timeout_ms=30000"
        ));
    }
    args.extend(["-append".to_string(), append]);
    let (out_path, err_path) = (
        format!("/tmp/{}.out", r.name),
        format!("/tmp/{}.err", r.name),
    );
    let files = fs::File::create(&out_path).and_then(|o| Ok((o, fs::File::create(&err_path)?)));
    let (out_file, err_file) = files.map_err(|e| format!("/tmp: {e}"))?;
    let mut child = Command::new("/usr/bin/shmvm")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("cannot start shmvm: {e}"))?;
    let host_handshake = r.ivshmem.then(|| {
        Region::open(&region)
            .map_err(|e| format!("{region}: {e}"))
            .and_then(|reg| shm::handshake(&reg, HANDSHAKE_TIMEOUT).map_err(|e| e.to_string()))
    });
    let rc = wait_with_timeout(&mut child, RUN_TIMEOUT, &mut || {});
    let out = fs::read_to_string(&out_path).unwrap_or_default();
    let err = fs::read_to_string(&err_path).unwrap_or_default();
    let e = Expect {
        token: &token,
        initrd_fnv: if r.initrd { initrd_fnv } else { None },
        host_handshake,
    };
    let verdict = judge(r, &e, rc, &out, &err);
    if verdict.is_err() {
        for l in out.lines().chain(err.lines()).take(40) {
            println!("[{}] {l}", r.name);
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = "{\"shmvm_stats\":1,\"buses\":[],\"unclaimed\":{\"pio\":0,\"mmio\":0},\"ivshmem\":[{\"name\":\"ivshmem-plain #0\",\"pci\":\"00:01.0\",\"memdev\":\"iv\",\"bar2_addr\":285212672,\"bar2_maps\":1,\"config_reads\":9,\"config_writes\":9,\"bar0_reads\":1,\"bar0_writes\":0,\"bar0_bad\":0,\"bar2_exits\":0}],\"vhost_user\":[],\"virtio\":[]}\n";

    const OUT: &str = "shmvm: entry=arm64-image el=1 fdt=0x43e00000\n\
        shmvm: cmdline=shmvm.test=boot lab.tk=t-1\n\
        shmvm: ram_bytes=33554432\n\
        shmvm: cpus=2\n\
        shmvm: initrd size=12345 fnv1a64=0x00000000000000ab addr=0x43c00000\n\
        shmvm: smp psci=1.0 boot_mpidr=0x0\n\
        shmvm: smp cpu=1 mpidr=0x1 cpu_on=0 ok\n\
        shmvm: smp started=1 boot_cpu_on=already_on\n\
        shmvm: ivshmem pci=00:01.0 id=1af4:1110\n\
        shmvm: ivshmem bar0=0x10000000 size=256 bar2=0x11000000 size=1048576\n\
        shmvm: ivshmem handshake ok ms=3\n\
        shmvm: memtest bytes=65000000 ok ms=900\n\
        shmvm: verdict=pass\n";

    fn shm_run() -> Run {
        runs().remove(0)
    }

    fn expect(host: Result<u64, String>) -> Expect<'static> {
        Expect {
            token: "lab.tk=t-1",
            initrd_fnv: Some(0xab),
            host_handshake: Some(host),
        }
    }

    #[test]
    fn a_good_run_passes_and_each_difference_fails() {
        let (r, ok) = (shm_run(), expect(Ok(REGION_SIZE - protocol::DATA_OFF)));
        assert_eq!(judge(&r, &ok, Some(33), OUT, STATS), Ok(()));
        let bad = |from: &str, to: &str| {
            judge(&r, &ok, Some(33), &OUT.replace(from, to), STATS).unwrap_err()
        };
        assert!(bad("verdict=pass", "verdict=fail reason=x").contains("verdict"));
        assert!(bad("lab.tk=t-1", "lab.tk=t-2").contains("command line"));
        assert!(bad("cpus=2", "cpus=1").contains("CPUs"));
        assert!(bad("ram_bytes=33554432", "ram_bytes=1").contains("ram_bytes"));
        assert!(bad("started=1", "started=0").contains("smp"));
        assert!(bad("already_on", "wrong").contains("smp"));
        assert!(
            bad("fnv1a64=0x00000000000000ab", "fnv1a64=0x00000000000000ac").contains("fnv1a64")
        );
        assert!(bad("handshake ok", "handshake timeout").contains("handshake"));
        assert!(bad("bar2=0x11000000", "bar2=0x12000000").contains("BAR2"));
        assert!(bad("bytes=65000000 ok", "bytes=65000000 failed").contains("memtest"));
        assert!(bad("entry=arm64-image el=1", "entry=arm64-image el=2").contains("entry"));
        assert!(
            judge(&r, &ok, Some(35), OUT, STATS)
                .unwrap_err()
                .contains("exit code 35")
        );
        assert!(
            judge(&r, &ok, None, OUT, STATS)
                .unwrap_err()
                .contains("did not end")
        );
        let exits = STATS.replace("\"bar2_exits\":0", "\"bar2_exits\":2");
        assert!(
            judge(&r, &ok, Some(33), OUT, &exits)
                .unwrap_err()
                .contains("exited")
        );
        let stray = STATS.replace("\"mmio\":0", "\"mmio\":4");
        assert!(
            judge(&r, &ok, Some(33), OUT, &stray)
                .unwrap_err()
                .contains("unclaimed")
        );
        assert!(
            judge(&r, &expect(Err("timed out".into())), Some(33), OUT, STATS)
                .unwrap_err()
                .contains("host half")
        );
        assert!(
            judge(&r, &expect(Ok(8)), Some(33), OUT, STATS)
                .unwrap_err()
                .contains("host checked")
        );
    }

    #[test]
    fn the_failing_run_must_fail_for_its_reason() {
        let r = runs()
            .into_iter()
            .find(|r| r.fail_reason.is_some())
            .unwrap();
        let e = Expect {
            token: "lab.tk=t-1",
            initrd_fnv: None,
            host_handshake: None,
        };
        let out = OUT.replace("verdict=pass", "verdict=fail reason=cpus_mismatch");
        assert_eq!(judge(&r, &e, Some(35), &out, STATS), Ok(()));
        assert!(judge(&r, &e, Some(33), OUT, STATS).is_err());
        let other = OUT.replace("verdict=pass", "verdict=fail reason=memtest");
        assert!(judge(&r, &e, Some(35), &other, STATS).is_err());
        assert_eq!(names().len(), 5);
        assert_eq!(facts(OUT), " memtest_ms=900 handshake_ms=3 cpu_on_ms=-");
        let backends: Vec<String> = runs().iter().map(|r| r.ram.join(" ")).collect();
        for b in [
            "memory-backend-shm",
            "memory-backend-memfd",
            "memory-backend-file",
            "-m 64M",
        ] {
            assert!(backends.iter().any(|x| x.contains(b)), "{b}");
        }
    }
}
