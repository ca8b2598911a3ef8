//! The arm64 lab (README, "The arm64 lab"): the same scenario table format
//! and verdict lines as the x86 KVM lab, for an arm64 L1 Linux under
//! `qemu-system-aarch64` TCG with EL2, whose in-kernel KVM runs the aarch64
//! shmvm booting the stock Debian arm64 kernel as L2.
//! - [`l1_main`] (`lab l1-arm64 /lab/scenarios`, exec'd by the L1 init):
//!   runs every scenario with every L2 VMM of `lab.vmms=` (the x86 lab's
//!   `LAB_VMMS`: QEMU, the reference, and shmvm by default), judges the
//!   L2's `L2-INIT` line and the VMM's exit code the same for both, prints
//!   one `LAB-SCENARIO` line per run, powers L1 off. One run: [`run`].
//! - [`host_main`] (`lab host-arm64 --dir DIR --scenarios FILE`): boots L1,
//!   checks every run reported, prints the boot-to-init medians and
//!   shmvm/QEMU ratio and `N passed, N failed` last.
//!
//! What the arm64 machine has today limits the table: guest RAM from
//! ram, file-tmpfs, memfd or shm; poweroff (PSCI SYSTEM_OFF) or reboot
//! (SYSTEM_RESET); ivshmem-plain on a file in L1's /dev/shm (the x86 lab's
//! region protocol: the L1 host process and the guest each verify the
//! other's pattern through BAR2); no extras yet (`parse` refuses them).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::l1::{MAILBOX_DATA_OFF, host_prepare, random, tool};
use super::scenario::{self, Action, Backend, IvshmemKind, Scenario, Vmm, Vub};
use super::{fields, tag};

mod run;

/// One L2 boot at most this long (a hang is a failure, not a stuck lab).
const L2_TIMEOUT: Duration = Duration::from_secs(180);
/// The whole L1 run at most this long unless LAB_ARM64_TIMEOUT says.
const L1_TIMEOUT: Duration = Duration::from_secs(900);

/// Why a scenario cannot run on the arm64 machine (None: it can).
pub fn unsupported(s: &Scenario) -> Option<String> {
    if s.backend == Backend::FileDisk {
        return Some("backend file-disk (no disk in the arm64 L1)".into());
    }
    if !matches!(s.action, Action::Poweroff | Action::Reboot) {
        return Some(format!("action {} (no QMP on aarch64 yet)", s.action));
    }
    if s.ivshmem
        .as_ref()
        .is_some_and(|iv| iv.kind != IvshmemKind::File)
    {
        return Some("ivshmem shm: (the arm64 lab shares a file: region)".into());
    }
    let supported = scenario::Extra {
        rng: s.extra.rng,
        vub: s.extra.vub.filter(|v| *v == Vub::Blk),
        shmvm_only: s.extra.shmvm_only,
        ..Default::default()
    };
    if s.extra != supported {
        return Some(
            "extras other than rng, blk and shmvm-only (no vhost-user or doorbells on aarch64 yet)"
                .into(),
        );
    }
    None
}

/// Parses an arm64 scenario table and refuses what the machine lacks.
pub fn parse(file: &str, text: &str) -> Result<Vec<Scenario>, String> {
    let all = scenario::parse(file, text).map_err(|e| e.to_string())?;
    for s in &all {
        if let Some(why) = unsupported(s) {
            return Err(format!("{file}: {}: {why} is not in the arm64 lab", s.name));
        }
    }
    Ok(all)
}

/// The verdict on one run: shmvm's exit code and its console.
pub fn judge(s: &Scenario, marker: &str, rc: Option<i32>, console: &str) -> Result<(), String> {
    let init = console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("L2-INIT "))
        .ok_or("the guest never reached its init")?;
    let f = fields(init);
    let want_cmdline = format!("lab.name={} lab.action={}", s.name, s.action);
    if !init.contains(&want_cmdline) {
        return Err(format!("command line lost: want '{want_cmdline}'"));
    }
    if f.get("initrd") != Some(&marker) {
        return Err(format!(
            "initrd marker {:?}, want {marker}",
            f.get("initrd")
        ));
    }
    let cpus: u32 = f.get("cpus").and_then(|v| v.parse().ok()).unwrap_or(0);
    if cpus != s.want_cpus() {
        return Err(format!("guest sees {cpus} CPUs, want {}", s.want_cpus()));
    }
    // MemTotal is RAM less the kernel's own reservations: most of it.
    let mem_kb: u64 = f.get("memkb").and_then(|v| v.parse().ok()).unwrap_or(0);
    let want_kb = s.mem.bytes >> 10;
    if mem_kb > want_kb || mem_kb < want_kb * 3 / 4 {
        return Err(format!("MemTotal {mem_kb} kB for {} of RAM", s.mem.text));
    }
    match rc {
        Some(0) => Ok(()),
        Some(c) => Err(format!("exit code {c} after {}, want 0", s.action)),
        None => Err(format!("the VMM did not end in {} s", L2_TIMEOUT.as_secs())),
    }
}

/// An ivshmem region of one run: a file on L1's /dev/shm shared by the
/// guest's BAR2 and the lab runner, and the two patterns' seeds.
struct Region {
    file: String,
    size: u64,
    host_seed: u64,
    guest_seed: u64,
}

impl Region {
    /// Creates the file and puts the host's pattern and HOSTRDY! in it.
    fn prepare(s: &Scenario, vmm: Vmm) -> Option<Result<Region, String>> {
        let iv = s.ivshmem.as_ref()?;
        let r = Region {
            file: format!("/dev/shm/lab-iv-{}", tag(&s.name, vmm)),
            size: iv.size.bytes,
            host_seed: u64::from(random()),
            guest_seed: u64::from(random()),
        };
        let made = fs::File::create(&r.file)
            .and_then(|f| f.set_len(r.size))
            .map_err(|e| format!("{}: {e}", r.file))
            .and_then(|()| host_prepare(Path::new(&r.file), r.host_seed));
        Some(made.map(|()| r))
    }

    /// The VMM's arguments (shmvm's with its statistics) and the guest's
    /// command line word.
    fn args(&self, vmm: Vmm) -> (Vec<String>, String) {
        let mut args = vec![
            "-object".into(),
            format!(
                "memory-backend-file,id=ivm,size={},mem-path={},share=on",
                self.size, self.file
            ),
            "-device".into(),
            "ivshmem-plain,memdev=ivm".into(),
        ];
        if vmm == Vmm::Shmvm {
            args.push("--stats=json".into());
        }
        (
            args,
            format!(" lab.ivshmem={}:{}", self.host_seed, self.guest_seed),
        )
    }

    /// The host's side after the run: the guest's GUESTDN! and its
    /// pattern, read back through the file.
    fn check_host_side(&self) -> Result<(), String> {
        let mut mailbox = [0u8; 8];
        fs::File::open(&self.file)
            .and_then(|mut f| f.read_exact(&mut mailbox))
            .map_err(|e| format!("{}: {e}", self.file))?;
        if &mailbox != protocol::GUEST_DONE {
            return Err("host did not find the guest's GUESTDN! mailbox".into());
        }
        tool(&[
            "--path",
            &self.file,
            "verify",
            "--seed",
            &self.guest_seed.to_string(),
            "--offset",
            MAILBOX_DATA_OFF,
        ])
        .map(drop)
        .map_err(|e| format!("host verify of the guest's pattern: {e}"))
    }
}

/// The guest's side of an ivshmem run, from its console: the device in
/// sysfs (1af4:1110), BAR2 of the region's size, both patterns; and with
/// shmvm, its statistics (`--stats=json`): BAR2 mapped where the guest's
/// kernel put it, and no BAR2 access exited (it is a memory slot).
pub fn judge_ivshmem(size: u64, console: &str, vmm: Vmm) -> Result<(), String> {
    let line = console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("L2-IVSHMEM "))
        .ok_or("the guest reported no ivshmem result")?;
    let f = fields(line);
    let get = |k: &str| f.get(k).copied().unwrap_or("-");
    if !get("pci").split(',').any(|d| d.ends_with("/0x1af4/0x1110")) {
        return Err(format!(
            "no 1af4:1110 in the guest's /sys/bus/pci: {}",
            get("pci")
        ));
    }
    let want_size = format!("{size:#x}");
    if get("bar2_size") != want_size {
        return Err(format!("BAR2 size {}, want {want_size}", get("bar2_size")));
    }
    if get("host_ready") != "1" {
        return Err("guest never saw the host's HOSTRDY! mailbox".into());
    }
    for k in ["verify_host", "fill_guest", "verify_guest"] {
        if get(k) != "ok" {
            return Err(format!("guest {k}={}", get(k)));
        }
    }
    if vmm == Vmm::Qemu {
        return Ok(());
    }
    let stats: serde_json::Value = console
        .lines()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str(l.trim_end_matches('\r')).ok())
        .ok_or("no --stats=json line from shmvm")?;
    let iv = &stats["ivshmem"][0];
    let bar2 = iv["bar2_addr"].as_u64().map(|a| format!("{a:#x}"));
    if bar2.as_deref() != Some(get("bar2_addr")) {
        return Err(format!(
            "guest sees BAR2 at {}, shmvm mapped it at {bar2:?}",
            get("bar2_addr")
        ));
    }
    if iv["bar2_exits"].as_u64() != Some(0) {
        return Err(format!("{} BAR2 accesses exited", iv["bar2_exits"]));
    }
    Ok(())
}

/// The built-in virtio devices of one run: virtio-rng, and virtio-blk on
/// an image whose first bytes are the host's token (the guest writes its
/// own at 4 KiB).
struct Virtio {
    rng: bool,
    blk: Option<(String, String, String)>,
}

impl Virtio {
    fn prepare(s: &Scenario, vmm: Vmm) -> Option<Result<Virtio, String>> {
        let blk = s.extra.vub == Some(Vub::Blk);
        if !s.extra.rng && !blk {
            return None;
        }
        let mut v = Virtio {
            rng: s.extra.rng,
            blk: None,
        };
        if blk {
            let img = format!("/tmp/lab-blk-{}.img", tag(&s.name, vmm));
            let host = format!("hostblk-{}", random());
            let made = fs::File::create(&img).and_then(|mut f| {
                f.write_all(host.as_bytes())?;
                f.set_len(16 << 20)
            });
            if let Err(e) = made {
                return Some(Err(format!("{img}: {e}")));
            }
            v.blk = Some((img, host, format!("guestblk-{}", random())));
        }
        Some(Ok(v))
    }

    fn args(&self) -> (Vec<String>, String) {
        let (mut args, mut word) = (Vec::new(), String::new());
        if self.rng {
            args.extend(["-device".to_string(), "virtio-rng-pci".into()]);
            word.push_str(" lab.rng=1");
        }
        if let Some((img, host, guest)) = &self.blk {
            args.extend([
                "-drive".to_string(),
                format!("file={img},if=virtio,format=raw"),
            ]);
            word.push_str(&format!(" lab.blk={host}:{guest}"));
        }
        (args, word)
    }

    /// The guest's report: the modules loaded, MSIs through the ITS, the
    /// virtio-rng bytes, the host's token read from the disk; then the
    /// guest's token in the image.
    fn judge(&self, console: &str) -> Result<(), String> {
        let line = console
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix("L2-VIRTIO "))
            .ok_or("the guest reported no virtio result")?;
        let f = fields(line);
        let get = |k: &str| f.get(k).copied().unwrap_or("-");
        let msi: u32 = get("msi").parse().unwrap_or(0);
        if msi == 0 {
            return Err("no ITS-MSI interrupt in the guest's /proc/interrupts".into());
        }
        if self.rng && (get("rng_current") != "virtio_rng.0" || get("rng_bytes") != "64") {
            return Err(format!(
                "virtio-rng: current {}, {} bytes read",
                get("rng_current"),
                get("rng_bytes")
            ));
        }
        if let Some((img, host, guest)) = &self.blk {
            if get("blk_read") != host {
                return Err(format!("disk: guest read {}, want {host}", get("blk_read")));
            }
            let mut b = vec![0u8; guest.len()];
            fs::File::open(img)
                .and_then(|mut f| {
                    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(4096))?;
                    f.read_exact(&mut b)
                })
                .map_err(|e| format!("{img}: {e}"))?;
            if b != guest.as_bytes() {
                return Err(format!(
                    "disk: image has {:?} at 4 KiB, want {guest}",
                    String::from_utf8_lossy(&b)
                ));
            }
        }
        Ok(())
    }

    fn remove(&self) {
        if let Some((img, ..)) = &self.blk {
            let _ = fs::remove_file(img);
        }
    }
}

/// What the scenario line shows of a run's PCI devices: where the guest's
/// kernel put ivshmem's BAR2, how many ITS MSIs the virtio drivers took.
fn facts(console: &str) -> String {
    let mut out = String::new();
    for (prefix, key) in [("L2-IVSHMEM ", "bar2_addr"), ("L2-VIRTIO ", "msi")] {
        let value = console
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
            .and_then(|l| fields(l).get(key).map(|v| v.to_string()));
        if let Some(v) = value {
            out.push_str(&format!(" {key}={v}"));
        }
    }
    out
}

/// A 4 KiB arm64 `Image` made here (no toolchain needed): its header's
/// first word branches past the header; the code loads the first word at
/// x0 (the device tree's magic, if x0 points at it) and stores it to the
/// debug-exit register. Exit code `((0xedfe0dd0 << 1) | 1) & 0xff` = 161
/// proves entry at the header's branch, x0 = the device tree, the tree in
/// RAM, an MMIO write exit and the debug-exit rule.
pub fn debug_exit_image() -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 0, 0x1400_0010); // b +64
    b[16..24].copy_from_slice(&4096u64.to_le_bytes()); // image_size
    b[24..32].copy_from_slice(&0b1010u64.to_le_bytes()); // LE, 4 KiB pages
    put32(&mut b, 56, 0x644d_5241); // "ARM\x64"
    let code = [
        0xb940_0001, // ldr w1, [x0]
        0xd2a1_2020, // movz x0, #0x0901, lsl #16   (0x0901_0000: debug-exit)
        0xb900_0001, // str w1, [x0]
        0x1400_0000, // b .
    ];
    for (i, insn) in code.iter().enumerate() {
        put32(&mut b, 64 + 4 * i, *insn);
    }
    b
}

/// The exit code [`debug_exit_image`] must give.
pub const DEBUG_EXIT_IMAGE_CODE: i32 = ((0xedfe_0dd0_u32 << 1) | 1) as i32 & 0xff;

/// Machine checks beside the scenarios: (name, shmvm arguments, exit code,
/// what stderr must say).
fn machine_checks() -> Vec<(&'static str, Vec<String>, i32, &'static str)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            "check-image-debug-exit",
            v(&["-kernel", "/tmp/debug-exit.img", "-m", "64M"]),
            DEBUG_EXIT_IMAGE_CODE,
            "",
        ),
        (
            "check-not-an-image",
            v(&["-kernel", "/lab/l2.cpio.gz", "-m", "64M"]),
            2,
            "is not an arm64 Linux Image",
        ),
        (
            "check-isa-debug-exit-refused",
            v(&[
                "-kernel",
                "/tmp/debug-exit.img",
                "-device",
                "isa-debug-exit",
            ]),
            2,
            "0x9010000",
        ),
        (
            "check-vhost-user-refused",
            v(&[
                "-kernel",
                "/tmp/debug-exit.img",
                "-object",
                "memory-backend-memfd,id=m,size=64M",
                "-machine",
                "memory-backend=m",
                "-chardev",
                "socket,id=c0,path=/tmp/no-such.sock",
                "-device",
                "vhost-user-rng-pci,chardev=c0",
            ]),
            2,
            "vhost-user-*-pci is not supported on aarch64 yet",
        ),
        (
            "check-ram-granule",
            v(&["-kernel", "/tmp/debug-exit.img", "-m", "65552K"]),
            2,
            "64 KiB",
        ),
    ]
}

/// The names [`l1_main`] reports besides the table's.
pub fn machine_check_names() -> Vec<&'static str> {
    machine_checks().into_iter().map(|c| c.0).collect()
}

fn run_machine_checks() {
    if let Err(e) = fs::write("/tmp/debug-exit.img", debug_exit_image()) {
        println!("LAB-FATAL /tmp/debug-exit.img: {e}");
    }
    for (name, args, want_rc, want_err) in machine_checks() {
        let out = Command::new("/usr/bin/shmvm")
            .args(&args)
            .arg("-nographic")
            .stdin(Stdio::null())
            .output();
        let verdict = match out {
            Err(e) => Err(format!("cannot start shmvm: {e}")),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let rc = o.status.code();
                if rc != Some(want_rc) {
                    Err(format!(
                        "exit code {rc:?}, want {want_rc}; stderr: {}",
                        err.trim()
                    ))
                } else if !err.contains(want_err) {
                    Err(format!("stderr does not name '{want_err}': {}", err.trim()))
                } else {
                    Ok(())
                }
            }
        };
        let (result, reason) = match &verdict {
            Ok(()) => ("PASS", String::new()),
            Err(why) => ("FAIL", format!(" reason={}", why.replace(' ', "_"))),
        };
        println!("LAB-SCENARIO name={name} vmm=shmvm arch=aarch64 result={result}{reason}");
    }
}

fn power_off() -> ! {
    let _ = std::io::stdout().flush();
    let _ = Command::new("sync").status();
    let _ = Command::new("poweroff").arg("-f").status();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The L2 VMMs L1's command line names (`lab.vmms=`, default both).
fn l1_vmms(cmdline: &str) -> Result<Vec<Vmm>, String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lab.vmms="))
        .map_or(Ok(vec![Vmm::Qemu, Vmm::Shmvm]), Vmm::parse_list)
}

/// One scenario with one VMM: the host side of its devices, the run, the
/// verdict; prints its `LAB-SCENARIO` line (after the console's last lines
/// if it failed).
fn run_one(s: &Scenario, vmm: Vmm, marker: &str) {
    let name = tag(&s.name, vmm);
    let region = match Region::prepare(s, vmm) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            println!("LAB-FATAL {name}: host side of the ivshmem region: {e}");
            None
        }
        None => None,
    };
    let virtio = match Virtio::prepare(s, vmm) {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            println!("LAB-FATAL {name}: host side of the virtio disk: {e}");
            None
        }
        None => None,
    };
    let (mut devices, region_word) = region.as_ref().map(|r| r.args(vmm)).unwrap_or_default();
    let (virtio_args, virtio_word) = virtio.as_ref().map(Virtio::args).unwrap_or_default();
    devices.extend(virtio_args);
    let append = format!(
        "quiet panic=-1 lab.name={} lab.action={}{region_word}{virtio_word}",
        s.name, s.action
    );
    let cmd = run::command(s, vmm, &append, devices);
    let out = run::execute(&cmd, &format!("/tmp/{name}.console"), L2_TIMEOUT);
    let (verdict, init, wall, console) = match out {
        Err(e) => (Err(e), None, None, String::new()),
        Ok(o) => (
            judge(s, marker, o.rc, &o.console),
            o.init,
            Some(o.wall),
            o.console,
        ),
    };
    let guest_init = console
        .lines()
        .find_map(|l| l.strip_prefix(run::INIT_PREFIX))
        .and_then(|l| fields(l).get("uptime").map(|v| v.to_string()))
        .unwrap_or_else(|| "-".into());
    let verdict = verdict.and_then(|()| match (&s.ivshmem, &region) {
        (None, _) => Ok(()),
        (Some(_), None) => Err("the ivshmem region could not be prepared".into()),
        (Some(_), Some(r)) => {
            judge_ivshmem(r.size, &console, vmm).and_then(|()| r.check_host_side())
        }
    });
    let verdict = verdict.and_then(|()| match &virtio {
        Some(v) => v.judge(&console),
        None if s.extra.rng || s.extra.vub.is_some() => {
            Err("the virtio disk could not be prepared".into())
        }
        None => Ok(()),
    });
    if let Some(r) = &region {
        let _ = fs::remove_file(&r.file);
    }
    if let Some(v) = &virtio {
        v.remove();
    }
    if s.backend == Backend::FileTmpfs {
        let _ = fs::remove_file(run::ram_file(s, vmm));
    }
    if verdict.is_err() {
        let lines: Vec<&str> = console.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            println!("[{name}] {l}");
        }
    }
    let (result, reason) = match &verdict {
        Ok(()) => ("PASS", String::new()),
        Err(why) => ("FAIL", format!(" reason={}", why.replace(' ', "_"))),
    };
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()));
    println!(
        "LAB-SCENARIO name={} vmm={vmm} arch=aarch64 result={result} init_s={} wall={} guest_init={guest_init}{}{reason}",
        s.name,
        secs(init),
        secs(wall),
        facts(&console)
    );
    let _ = std::io::stdout().flush();
}

/// Inside the arm64 L1: the machine checks, then every scenario with
/// every VMM of `lab.vmms=` it runs with, one `LAB-SCENARIO` line each,
/// then `LAB-END` and power-off.
pub fn l1_main(table: &Path) -> ! {
    let text = fs::read_to_string(table).unwrap_or_default();
    let marker = fs::read_to_string("/lab/l2-marker").unwrap_or_default();
    let marker = marker.trim();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let setup = parse(&table.display().to_string(), &text).and_then(|all| {
        let vmms = l1_vmms(&cmdline).map_err(|e| format!("lab.vmms: {e}"))?;
        match vmms
            .iter()
            .map(|v| run::binary(*v))
            .find(|b| !Path::new(b).exists())
        {
            Some(b) => Err(format!("{b} is not in the arm64 L1 initramfs")),
            None => Ok((all, vmms)),
        }
    });
    let (all, vmms) = match setup {
        Ok(a) => a,
        Err(e) => {
            println!("LAB-FATAL {e}");
            println!("LAB-END");
            power_off()
        }
    };
    if let Some(up) = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
    {
        println!("LAB-INFO l1_ready_s={up}");
    }
    if !Path::new("/dev/kvm").exists() {
        println!("LAB-FATAL no /dev/kvm in the arm64 L1");
    }
    run_machine_checks();
    for s in &all {
        for vmm in vmms.iter().filter(|v| s.runs_with(**v)) {
            run_one(s, *vmm, marker);
        }
    }
    println!("LAB-END");
    power_off()
}

/// On the host: boots the arm64 L1 from DIR (vmlinuz, l1.cpio.lz4), follows
/// its console into DIR/l1-console.log, reports every run (each scenario
/// with each VMM of `LAB_VMMS` it runs with, and the machine checks) and
/// the boot-to-init medians.
pub fn host_main(dir: &Path, table: &Path) -> Result<bool, String> {
    let text = fs::read_to_string(table).map_err(|e| format!("{}: {e}", table.display()))?;
    let all = parse(&table.display().to_string(), &text)?;
    let vmms = super::host::env_vmms()?;
    let vmm_list: Vec<String> = vmms.iter().map(Vmm::to_string).collect();
    let timeout = match std::env::var("LAB_ARM64_TIMEOUT") {
        Ok(v) => Duration::from_secs(
            v.parse()
                .map_err(|_| format!("LAB_ARM64_TIMEOUT={v}: a number of seconds"))?,
        ),
        Err(_) => L1_TIMEOUT,
    };
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("l1.cpio.lz4"));
    for f in [&kernel, &initrd] {
        if !f.exists() {
            return Err(format!(
                "{} missing ('make lab-arm64' builds it)",
                f.display()
            ));
        }
    }
    let start = Instant::now();
    let mut child = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt,virtualization=on,gic-version=3",
            "-cpu",
            "max",
            "-accel",
            "tcg,thread=multi",
            "-smp",
            "2",
            "-m",
            "2048",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-append",
            &format!(
                "console=ttyAMA0 panic=-1 quiet lab.vmms={}",
                vmm_list.join(",")
            ),
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-aarch64: {e} (run 'make deps')"))?;
    let log_path = dir.join("l1-console.log");
    let mut log =
        fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut stdout = child.stdout.take().ok_or("no L1 console")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).map(|_| ());
        let _ = tx.send(buf);
    });
    let bytes = match rx.recv_timeout(timeout) {
        Ok(b) => b,
        Err(_) => {
            let _ = child.kill();
            rx.recv().unwrap_or_default()
        }
    };
    let _ = child.wait();
    let _ = log.write_all(&bytes);
    let console = String::from_utf8_lossy(&bytes);
    let mut results: HashMap<String, String> = HashMap::new();
    let mut runs: Vec<String> = Vec::new();
    for line in BufReader::new(console.as_bytes())
        .lines()
        .map_while(Result::ok)
    {
        let line = line.trim_end_matches('\r').to_string();
        if line.starts_with("LAB-FATAL") || line.starts_with("[") {
            println!("{line}");
        }
        if let Some(up) = line.strip_prefix("LAB-INFO l1_ready_s=") {
            println!("lab-arm64: L1 kernel boot to its init: {up} s");
        }
        if line.starts_with("LAB-SCENARIO ") {
            println!("{line}");
            let f = fields(&line);
            if let (Some(n), Some(v)) = (f.get("name"), f.get("vmm")) {
                results.insert(format!("{n}.{v}"), line.clone());
            }
            runs.push(line);
        }
    }
    let (mut pass, mut fail) = (0, 0);
    let expected: Vec<String> = all
        .iter()
        .flat_map(|s| {
            vmms.iter()
                .filter(|v| s.runs_with(**v))
                .map(|v| tag(&s.name, *v))
        })
        .chain(
            machine_check_names()
                .into_iter()
                .map(|n| tag(n, Vmm::Shmvm)),
        )
        .collect();
    for name in &expected {
        match results.get(name) {
            Some(l) if fields(l).get("result") == Some(&"PASS") => pass += 1,
            Some(l) => {
                fail += 1;
                let why = fields(l).get("reason").map_or("", |r| r).replace('_', " ");
                println!("lab-arm64: FAIL {name}: {why}");
            }
            None => {
                fail += 1;
                println!(
                    "lab-arm64: FAIL {name}: no result (L1 log: {})",
                    log_path.display()
                );
            }
        }
    }
    for l in super::host::boot_summary("lab-arm64", runs.iter().map(String::as_str)) {
        println!("{l}");
    }
    if !console.contains("LAB-END") {
        println!("lab-arm64: L1 did not finish in {} s", timeout.as_secs());
    }
    println!("lab-arm64: L1 run {:.1} s", start.elapsed().as_secs_f64());
    println!("{pass} passed, {fail} failed");
    Ok(fail == 0 && pass == expected.len() && pass > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(line: &str) -> Scenario {
        parse("t", line).unwrap().remove(0)
    }

    const GOOD: &str = "L2-INIT uptime=1.49 cpus=2 memkb=234264 initrd=m1 cmdline=console=ttyS0 quiet panic=-1 lab.name=a lab.action=poweroff\r\n";

    #[test]
    fn a_good_run_passes_and_each_difference_fails() {
        let s = scenario("a memfd 256M 2 poweroff - -");
        assert_eq!(judge(&s, "m1", Some(0), GOOD), Ok(()));
        assert!(
            judge(&s, "m2", Some(0), GOOD)
                .unwrap_err()
                .contains("marker")
        );
        assert!(
            judge(&s, "m1", Some(1), GOOD)
                .unwrap_err()
                .contains("exit code 1")
        );
        assert!(
            judge(&s, "m1", None, GOOD)
                .unwrap_err()
                .contains("did not end")
        );
        assert!(judge(&s, "m1", Some(0), "boot log only").is_err());
        let one = scenario("a memfd 256M 1 poweroff - -");
        assert!(
            judge(&one, "m1", Some(0), GOOD)
                .unwrap_err()
                .contains("CPUs")
        );
        let big = scenario("a memfd 1G 2 poweroff - -");
        assert!(
            judge(&big, "m1", Some(0), GOOD)
                .unwrap_err()
                .contains("MemTotal")
        );
        let reboot = scenario("a memfd 256M 2 reboot - -");
        assert!(
            judge(&reboot, "m1", Some(0), GOOD)
                .unwrap_err()
                .contains("command line")
        );
    }

    #[test]
    fn what_the_arm64_machine_lacks_is_refused_by_name() {
        assert!(
            parse("t", "a file-disk 256M 1 poweroff - -")
                .unwrap_err()
                .contains("file-disk")
        );
        assert!(
            parse("t", "a ram 256M 1 powerdown - -")
                .unwrap_err()
                .contains("QMP")
        );
        assert!(
            parse("t", "a ram 256M 1 poweroff shm:16M -")
                .unwrap_err()
                .contains("shm:")
        );
        assert!(
            parse("t", "a ram 256M 1 poweroff - vub")
                .unwrap_err()
                .contains("vhost-user")
        );
        assert!(parse("t", "a ram 256M 1 poweroff - rng,blk").is_ok());
        assert!(parse("t", "a ram 256M 1 poweroff file:16M -").is_ok());
    }

    const IVSHMEM_OK: &str = "L2-INIT uptime=1 cpus=1\r\n\
        L2-IVSHMEM pci=0000:00:00.0/0x1b36/0x0008,0000:00:01.0/0x1af4/0x1110 host_ready=1 \
        verify_host=ok fill_guest=ok verify_guest=ok bdf=0000:00:01.0 vendor=0x1af4 \
        device=0x1110 bar2_addr=0x80000000 bar2_size=0x1000000\r\n\
        {\"ivshmem\":[{\"bar2_addr\":2147483648,\"bar2_maps\":2,\"bar2_exits\":0}]}\n";

    #[test]
    fn an_ivshmem_run_passes_and_each_difference_fails() {
        assert_eq!(judge_ivshmem(16 << 20, IVSHMEM_OK, Vmm::Shmvm), Ok(()));
        let bad = |from: &str, to: &str| {
            judge_ivshmem(16 << 20, &IVSHMEM_OK.replacen(from, to, 1), Vmm::Shmvm).unwrap_err()
        };
        assert!(bad("0x1af4/0x1110", "0x1af4/0x1000").contains("1af4:1110"));
        assert!(bad("host_ready=1", "host_ready=0").contains("HOSTRDY"));
        assert!(bad("verify_host=ok", "verify_host=fail").contains("verify_host"));
        assert!(bad("fill_guest=ok", "fill_guest=fail").contains("fill_guest"));
        assert!(bad("bar2_size=0x1000000", "bar2_size=0x800000").contains("size"));
        assert!(bad("2147483648", "2147487744").contains("mapped it at"));
        assert!(bad("\"bar2_exits\":0", "\"bar2_exits\":3").contains("exited"));
        assert!(bad("{", "x").contains("stats"));
        assert!(
            judge_ivshmem(16 << 20, "L2-INIT\n", Vmm::Shmvm)
                .unwrap_err()
                .contains("no ivshmem")
        );
        // QEMU's run has no statistics; the guest's side is judged the same.
        let qemu = IVSHMEM_OK.replacen('{', "x", 1);
        assert_eq!(judge_ivshmem(16 << 20, &qemu, Vmm::Qemu), Ok(()));
        let failed = qemu.replace("verify_guest=ok", "verify_guest=fail");
        assert!(
            judge_ivshmem(16 << 20, &failed, Vmm::Qemu)
                .unwrap_err()
                .contains("verify_guest")
        );
    }

    #[test]
    fn l1_runs_the_vmms_its_command_line_names() {
        assert_eq!(
            l1_vmms("console=ttyAMA0 quiet").unwrap(),
            [Vmm::Qemu, Vmm::Shmvm]
        );
        assert_eq!(l1_vmms("quiet lab.vmms=shmvm").unwrap(), [Vmm::Shmvm]);
        assert!(l1_vmms("lab.vmms=kvmtool").is_err());
    }

    #[test]
    fn a_virtio_run_needs_msis_rng_bytes_and_both_disk_tokens() {
        let v = Virtio {
            rng: true,
            blk: None,
        };
        let ok = "L2-VIRTIO modules=8 msi=3 rng_current=virtio_rng.0 rng_bytes=64 blk_read=- blk_write=fail\n";
        assert_eq!(v.judge(ok), Ok(()));
        assert!(
            v.judge(&ok.replace("msi=3", "msi=0"))
                .unwrap_err()
                .contains("ITS-MSI")
        );
        assert!(
            v.judge(&ok.replace("rng_bytes=64", "rng_bytes=0"))
                .unwrap_err()
                .contains("virtio-rng")
        );
        assert!(v.judge("L2-INIT\n").unwrap_err().contains("no virtio"));
        assert_eq!(facts(ok), " msi=3");

        let img = std::env::temp_dir().join(format!("arm64-judge-{}.img", std::process::id()));
        let mut b = vec![0u8; 8192];
        b[4096..4106].copy_from_slice(b"guestblk-7");
        fs::write(&img, &b).unwrap();
        let d = Virtio {
            rng: false,
            blk: Some((
                img.display().to_string(),
                "hostblk-1".into(),
                "guestblk-7".into(),
            )),
        };
        let ok = "L2-VIRTIO msi=2 blk_read=hostblk-1\n";
        assert_eq!(d.judge(ok), Ok(()));
        assert!(
            d.judge(&ok.replace("hostblk-1", "hostblk-2"))
                .unwrap_err()
                .contains("guest read")
        );
        fs::write(&img, vec![0u8; 8192]).unwrap();
        assert!(d.judge(ok).unwrap_err().contains("at 4 KiB"));
        d.remove();
        assert!(!img.exists());
    }

    #[test]
    fn the_debug_exit_image_has_a_valid_header_and_its_exit_code() {
        let b = debug_exit_image();
        assert_eq!(&b[56..60], b"ARM\x64");
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 4096);
        // The first word branches to byte 64, where the code starts.
        assert_eq!(
            u32::from_le_bytes(b[0..4].try_into().unwrap()) & 0x3ff_ffff,
            64 / 4
        );
        assert_eq!(DEBUG_EXIT_IMAGE_CODE, 0xa1);
        assert_eq!(machine_check_names().len(), 5);
    }

    #[test]
    fn the_lab_table_parses() {
        let text = include_str!("../../lab/arm64/scenarios");
        assert!(parse("scenarios", text).unwrap().len() >= 3);
    }
}
