//! The lab runner inside L1 (`lab l1 SCENARIOS`, exec'd by tests/lab/l1-init
//! after it mounted /proc, /sys, /dev and /dev/shm): loads kvm-amd, then
//! runs every scenario with every L2 VMM it applies to and prints
//!   LAB-SCENARIO name=N vmm=V result=PASS|FAIL init_s=.. exit_s=.. ... reason=...
//! per run (a failed run's L2 console follows between LAB-CONSOLE-BEGIN/END),
//! then LAB-SUMMARY and LAB-END, and powers L1 off.
//!
//! Kernel command line: lab.vmms=qemu,shmvm lab.only=NAME[,NAME] lab.dump=all
//! lab.l2debug=1 lab.l2extra=a,b lab.selftest_panic=NAME.VMM (panic L1 as
//! that run starts: tests the host runner's resume).
//!
//! The L2 side is guest/initramfs/init: it reports facts as
//! `LAB-RESULT name=.. stage=.. key=value` lines; every judgement is here.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use protocol::HOST_READY;

use super::fields;
use super::scenario::{self, Action, Backend, IvshmemKind, Scenario, Vmm, Vub};
use judge::{Judgement, NO_INIT, judge};

pub(super) mod doorbell;
pub(super) mod judge;
pub mod qmp;
mod rootfs;
mod snapshot;
mod vng;
mod vuser;

const MODULES: &str = "/lab/modules";
const L2_KERNEL: &str = "/lab/l2/vmlinuz";
const L2_INITRD: &str = "/lab/l2/initrd.gz";
const TOOL: &str = "/usr/bin/ivshmem-tool";
const SERVER: &str = "/usr/bin/ivshmem-server";
/// From VMM start to the L2 init's first line.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);
/// From the L2's last line to the VMM's exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// A whole run.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
const VUB_DISK_SIZE: u64 = 64 << 20;
/// The region protocol's pattern area (the mailbox is at 0).
pub(super) const MAILBOX_DATA_OFF: &str = "4K";
const GIB4: u64 = 1 << 32;

/// What the kernel command line asks for.
#[derive(Debug, Default)]
struct Options {
    vmms: Vec<Vmm>,
    only: Vec<String>,
    dump_all: bool,
    l2debug: bool,
    l2extra: Vec<String>,
    selftest_panic: String,
}

fn options(cmdline: &str) -> Result<Options, String> {
    let mut o = Options {
        vmms: vec![Vmm::Qemu, Vmm::Shmvm],
        ..Options::default()
    };
    for (k, v) in cmdline.split_whitespace().filter_map(|w| w.split_once('=')) {
        match k {
            "lab.vmms" => o.vmms = Vmm::parse_list(v)?,
            "lab.only" => o.only = v.split(',').map(str::to_string).collect(),
            "lab.dump" => o.dump_all = v == "all",
            "lab.l2debug" => o.l2debug = v == "1",
            "lab.l2extra" => o.l2extra = v.split(',').map(str::to_string).collect(),
            "lab.selftest_panic" => o.selftest_panic = v.to_string(),
            _ => {}
        }
    }
    Ok(o)
}

/// Seconds since L1 booted (/proc/uptime).
fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// A random number from the kernel (seeds, the cmdline token).
pub(super) fn random() -> u32 {
    let mut b = [0u8; 4];
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u32::from_le_bytes(b)
}

/// Reports a set-up failure the host runner shows, and powers off.
fn fatal(what: &str) -> ! {
    println!("LAB-FATAL {what}");
    println!("LAB-END");
    power_off()
}

fn power_off() -> ! {
    let _ = std::io::stdout().flush();
    let _ = Command::new("sync").status();
    let _ = Command::new("poweroff").arg("-f").status();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Runs a set-up command; its failure is fatal.
fn must(what: &str, program: &str, args: &[&str]) {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fatal(&format!("{what} failed"));
    }
}

fn setup() {
    for m in ["irqbypass", "kvm", "kvm-amd"] {
        must(
            &format!("insmod {m}.ko"),
            "insmod",
            &[&format!("{MODULES}/{m}.ko")],
        );
    }
    if !Path::new("/dev/kvm").exists() {
        fatal("/dev/kvm missing after loading kvm-amd (no nested SVM?)");
    }
    // A regular (non-tmpfs) filesystem for memory-backend-file on a disk: ext2 on a ramdisk.
    let brd = format!("{MODULES}/brd.ko");
    must(
        "insmod brd.ko",
        "insmod",
        &[&brd, "rd_nr=1", "rd_size=327680"],
    );
    must("mke2fs /dev/ram0", "mke2fs", &["-q", "/dev/ram0"]);
    must(
        "mount ext2 ramdisk",
        "mount",
        &["-t", "ext4", "/dev/ram0", "/mnt/disk"],
    );
}

/// Runs ivshmem-tool; Err carries its output.
pub(super) fn tool(args: &[&str]) -> Result<String, String> {
    match Command::new(TOOL).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .trim_end()
        .to_string()),
        Err(e) => Err(format!("{TOOL}: {e}")),
    }
}

/// The L1 host process's side of the ivshmem mailbox protocol: its pattern,
/// then HOSTRDY!.
pub(super) fn host_prepare(file: &Path, seed: u64) -> Result<(), String> {
    let f = file.to_string_lossy();
    tool(&[
        "--path",
        &f,
        "fill",
        "--seed",
        &seed.to_string(),
        "--offset",
        MAILBOX_DATA_OFF,
    ])?;
    let ready = String::from_utf8_lossy(HOST_READY).into_owned();
    tool(&["--path", &f, "write", "0", &ready]).map(|_| ())
}

fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1)
}

/// The console of a run: the L2's serial output and the VMM's stderr.
pub(crate) struct Console {
    pub(crate) path: PathBuf,
}

impl Console {
    pub(crate) fn text(&self) -> String {
        fs::read(&self.path)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    pub(crate) fn append(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.path) {
            let _ = writeln!(f, "{line}");
        }
    }

    fn sink(&self) -> Stdio {
        OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    /// Starts a VMM's command line with its output in this console, after
    /// a `LAB-RUN name=N WHO cmd=...` line (WHO: `vmm=V`, `peer=I vmm=V`).
    fn start_vmm(&self, name: &str, who: &str, cmd: &[String]) -> std::io::Result<Child> {
        self.append(&format!("LAB-RUN name={name} {who} cmd={}", cmd.join(" ")));
        Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(self.sink())
            .stderr(self.sink())
            .spawn()
    }
}

/// The QMP socket of a run (`-qmp unix:PATH,server=on,wait=off`).
fn qmp_socket(tag: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/lab/{tag}.qmp"))
}

/// The first `LAB-RESULT` line of `stage` in a console.
pub(crate) fn result<'a>(console: &'a str, stage: &str) -> Option<&'a str> {
    console
        .lines()
        .filter(|l| l.starts_with("LAB-RESULT "))
        .find(|l| fields(l).get("stage") == Some(&stage))
}

/// What a VMM said about why it ended: its last `shmvm: ` or `qemu-system`
/// line, else the console's last line, cut to fit a report line. A failed
/// exit status alone does not say what to look at in CI's output.
fn last_words(console: &str) -> String {
    let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
    let said = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("shmvm: ") || l.starts_with("qemu-system"))
        .or(lines.last())
        .copied()
        .unwrap_or("(no output)");
    said.chars().take(160).collect()
}

/// A vhost-user-blk back-end (qemu-storage-daemon) for one run.
struct Disk {
    mode: Vub,
    img: PathBuf,
    sock: PathBuf,
    guest_seed: u64,
    queues: u32,
    backend: Option<Child>,
    error: Option<String>,
}

impl Disk {
    fn start(&mut self, console: &Console) {
        let _ = fs::remove_file(&self.sock);
        let export = format!(
            "type=vhost-user-blk,id=vub,node-name=disk,addr.type=unix,addr.path={},writable=on,num-queues={}",
            self.sock.display(),
            self.queues
        );
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=disk,filename={}",
                self.img.display()
            ))
            .arg("--export")
            .arg(export)
            .stdin(Stdio::null())
            .stdout(console.sink())
            .stderr(console.sink())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                self.error = Some(format!("qemu-storage-daemon did not start: {e}"));
                return;
            }
        };
        for _ in 0..100 {
            if self.sock.exists() || !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.sock.exists() {
            self.error = Some(format!(
                "qemu-storage-daemon did not create {}",
                self.sock.display()
            ));
        }
        self.backend = Some(child);
    }

    fn kill(&mut self) -> Option<u32> {
        let c = self.backend.as_mut()?;
        let _ = c.kill();
        Some(c.id())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.backend.take() {
            // SAFETY: kill(2) with SIGTERM on our own, not yet reaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

/// The shared region of a run with ivshmem.
struct Region {
    kind: IvshmemKind,
    size: u64,
    file: PathBuf,
    host_seed: u64,
    guest_seed: u64,
    host_ready: bool,
}

/// Everything one run needs and found.
struct Run<'a> {
    s: &'a Scenario,
    vmm: Vmm,
    tag: String,
    token: String,
    console: Console,
    ram_file: Option<PathBuf>,
    region: Option<Region>,
    disk: Option<Disk>,
    /// virtiofsd, vhost-device-vsock and vhost-device-rng (extra vuser),
    /// or virtiofsd alone (extra fsbench).
    vuser: Option<vuser::Backends>,
    /// The virtio-fs root directory and its virtiofsd (extra rootfs).
    rootfs: Option<rootfs::RootDir>,
    /// The file behind the guest's named virtio-serial port.
    port: Option<PathBuf>,
}

/// The virtio-serial port the guest writes its token to (as virtme-ng's
/// guest writes its exit code to `virtme.ret`).
const PORT_NAME: &str = "lab.verdict";

/// What happened while the VMM ran.
struct Outcome {
    rc: i32,
    why: Option<String>,
    t_init: Option<Duration>,
    t_kill: Option<Duration>,
    end: Duration,
    /// powerdown / stopcont: the QMP events seen, or what went wrong.
    qmp: Option<Result<Vec<String>, String>>,
}

/// A run's one machine-readable line, which `lab host` reads back.
/// Every thread of process `pid`, a few lines each: name, state, the
/// kernel function it waits in, its system call (/proc/PID/task/TID/syscall:
/// number and arguments, or "running") and its kernel stack.
fn threads_report(pid: u32) -> String {
    let mut out = format!("LAB-THREADS pid={pid}\n");
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out + "(no /proc entry)\n";
    };
    let mut tids: Vec<String> = tasks
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort_by_key(|t| t.parse::<u32>().unwrap_or(u32::MAX));
    for tid in tids {
        let dir = format!("/proc/{pid}/task/{tid}");
        let read = |f: &str| {
            fs::read_to_string(format!("{dir}/{f}"))
                .map(|t| t.trim().to_string())
                .unwrap_or_else(|e| format!("({e})"))
        };
        // The state is the field after the parenthesized name.
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_string();
        out += &format!(
            "thread {tid} {} state={state} wchan={} syscall={}\n",
            read("comm"),
            read("wchan"),
            read("syscall")
        );
        for frame in read("stack").lines() {
            out += &format!("  {frame}\n");
        }
    }
    out
}

fn scenario_line(s: &Scenario, vmm: Vmm, out: &Outcome, j: &Judgement) -> String {
    let pass = j.fails.is_empty();
    let t_init = out.t_init.map(secs).unwrap_or_else(|| "-".into());
    let mut line = format!(
        "LAB-SCENARIO name={} vmm={vmm} result={} init_s={t_init} exit_s={} rc={}",
        s.name,
        if pass { "PASS" } else { "FAIL" },
        secs(out.end),
        out.rc
    );
    for (k, v) in &j.report {
        line += &format!(" {k}={v}");
    }
    if !pass {
        line += &format!(" reason={}", j.fails.join("; "));
    }
    line
}

/// Whether a run was reported, or is one to repeat once (the host's
/// spurious guest faults, below).
enum Verdict {
    Reported,
    Repeat,
}

/// What shmvm prints when its guest triple-faults (it never resets on
/// one: a guest reboot is the i8042's reset command, `reboot=k`).
const SHMVM_TRIPLE_FAULT: &str = "shmvm: guest triple fault";

/// Whether a failed run is the host's spurious guest fault (see `run`):
/// QEMU's guest reset before its init, or shmvm's guest triple-faulted.
fn spurious_fault(vmm: Vmm, fails: &[String], console: &str) -> bool {
    match vmm {
        Vmm::Qemu => fails.first().map(String::as_str) == Some(NO_INIT),
        Vmm::Shmvm => {
            !fails.is_empty()
                && (console.contains(SHMVM_TRIPLE_FAULT)
                    || fails.iter().any(|f| f.contains(SHMVM_TRIPLE_FAULT)))
        }
    }
}

struct Runner {
    o: Options,
    passed: u32,
    failed: u32,
    /// The run in progress is the repeat of a spurious guest fault.
    repeating: bool,
}

impl Runner {
    fn prepare<'a>(&self, s: &'a Scenario, vmm: Vmm) -> (Run<'a>, Vec<String>, String) {
        let tag = super::tag(&s.name, vmm);
        let console = Console {
            path: PathBuf::from(format!("/tmp/lab/{tag}.log")),
        };
        let _ = File::create(&console.path);
        let token = format!("t{}-{}", random(), s.name);
        let mut append = self.l2_append(s, vmm, &token);
        if s.extra.virtio
            || s.extra.vub.is_some()
            || s.extra.vuser
            || s.extra.fsbench
            || s.extra.rng
            || s.extra.port
            || s.extra.rootfs
        {
            append += " lab.modules=virtio";
        }
        let mem = &s.mem.text;
        let mut ram_file = None;
        let ram_obj = match s.backend {
            Backend::Ram => format!("memory-backend-ram,id=mem,size={mem}"),
            Backend::FileTmpfs | Backend::FileDisk => {
                let dir = if s.backend == Backend::FileTmpfs {
                    "/dev/shm"
                } else {
                    "/mnt/disk"
                };
                let f = PathBuf::from(format!("{dir}/lab-ram-{tag}"));
                let obj = format!(
                    "memory-backend-file,id=mem,size={mem},mem-path={},share=on",
                    f.display()
                );
                ram_file = Some(f);
                obj
            }
            // virtme-ng's spelling: a shared memfd (QEMU's default, said).
            Backend::Memfd if s.extra.rootfs => {
                format!("memory-backend-memfd,id=mem,size={mem},share=on")
            }
            Backend::Memfd => format!("memory-backend-memfd,id=mem,size={mem}"),
            Backend::Shm => format!("memory-backend-shm,id=mem,size={mem}"),
        };
        // A virtme-ng boot puts guest RAM on a NUMA node (-numa node,memdev=).
        let (ram_opt, ram_use) = if s.extra.rootfs {
            ("-numa", "node,memdev=mem")
        } else {
            ("-machine", "memory-backend=mem")
        };
        let mut args: Vec<String> = vec![
            "-object".into(),
            ram_obj,
            ram_opt.into(),
            ram_use.into(),
            "-smp".into(),
            s.smp.to_string(),
        ];
        let mut region = None;
        if let Some(iv) = &s.ivshmem {
            let file = PathBuf::from(format!("/dev/shm/lab-iv-{tag}"));
            let (host_seed, guest_seed) = (u64::from(random()), u64::from(random()));
            let _ = fs::remove_file(&file);
            let mut host_ready = false;
            // A file region is prepared before the VMM starts; a named shm
            // object is created by the VMM (O_EXCL), so the host fills it
            // once it appears.
            if iv.kind == IvshmemKind::File {
                let made = File::create(&file).and_then(|f| f.set_len(iv.size.bytes));
                if let Err(e) = made
                    .map_err(|e| e.to_string())
                    .and_then(|()| host_prepare(&file, host_seed))
                {
                    fatal(&format!("host fill of {}: {e}", file.display()));
                }
                host_ready = true;
            }
            append += &format!(" lab.ivshmem={host_seed}:{guest_seed} lab.bench=1M");
            let size = &iv.size.text;
            let obj = if iv.kind == IvshmemKind::Shm && vmm == Vmm::Shmvm {
                format!("memory-backend-shm,id=ivm,size={size},name=/lab-iv-{tag},keep=on")
            } else {
                // QEMU's memory-backend-shm is anonymous: the named object is its file.
                format!(
                    "memory-backend-file,id=ivm,size={size},mem-path={},share=on",
                    file.display()
                )
            };
            args.extend([
                "-object".into(),
                obj,
                "-device".into(),
                "ivshmem-plain,memdev=ivm".into(),
            ]);
            region = Some(Region {
                kind: iv.kind,
                size: iv.size.bytes,
                file,
                host_seed,
                guest_seed,
                host_ready,
            });
        }
        let mut disk = None;
        if let Some(mode) = s.extra.vub {
            let img = PathBuf::from(format!("/tmp/lab-vub-{tag}.img"));
            let sock = PathBuf::from(format!("/tmp/lab-vub-{tag}.sock"));
            let (host_seed, guest_seed) = (u64::from(random()), u64::from(random()));
            let _ = fs::remove_file(&img);
            let made = File::create(&img)
                .and_then(|f| f.set_len(VUB_DISK_SIZE))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let i = img.to_string_lossy();
                    let seed = host_seed.to_string();
                    tool(&[
                        "--path", &i, "fill", "--seed", &seed, "--offset", "64K", "--len", "960K",
                    ])
                });
            if let Err(e) = made {
                fatal(&format!("host fill of {}: {e}", img.display()));
            }
            let hold = if matches!(mode, Vub::Kill | Vub::BlkTerm) {
                ":8"
            } else {
                ""
            };
            append += &format!(" lab.vub={host_seed}:{guest_seed}{hold}");
            let mut d = Disk {
                mode,
                img,
                sock,
                guest_seed,
                queues: if s.extra.mq2 { 2 } else { 1 },
                backend: None,
                error: None,
            };
            if mode.builtin() {
                // The built-in virtio-blk: QEMU's two spellings, one each.
                let img = d.img.display();
                if vmm == Vmm::Shmvm {
                    args.extend(["-drive".into(), format!("file={img},if=virtio,format=raw")]);
                } else {
                    args.extend([
                        "-drive".into(),
                        format!("file={img},if=none,id=d0,format=raw"),
                        "-device".into(),
                        "virtio-blk-pci,drive=d0".into(),
                    ]);
                }
            } else {
                d.start(&console);
                args.extend([
                    "-chardev".into(),
                    format!("socket,id=vub0,path={}", d.sock.display()),
                    "-device".into(),
                    "vhost-user-blk-pci,chardev=vub0".into(),
                ]);
                if vmm == Vmm::Shmvm {
                    // The device's info lines (back-end features, queues and ring addresses).
                    args.push("-v".into());
                }
            }
            disk = Some(d);
        }
        if s.extra.vurng {
            fatal(&format!(
                "{}: extra vurng is the arm64 lab's (here: vuser)",
                s.name
            ));
        }
        let vuser = if s.extra.vuser {
            let (b, a) = vuser::Backends::start(&tag, &token, &console, vuser::Set::All);
            args.extend(a);
            append += &format!(" lab.vuser={token}");
            Some(b)
        } else if s.extra.fsbench {
            let set = vuser::Set::FsBench {
                seed: u64::from(random()),
            };
            let (b, a) = vuser::Backends::start(&tag, &token, &console, set);
            args.extend(a);
            append += &b.fsbench_param().unwrap_or_default();
            Some(b)
        } else {
            None
        };
        let rootfs = s.extra.rootfs.then(|| {
            let (r, a, more) = rootfs::RootDir::start(&tag, &token, &console);
            args.extend(a);
            append += &more;
            r
        });
        if s.extra.blkbench {
            append += " lab.blkbench=1";
        }
        if s.extra.rng {
            append += " lab.rng=1";
            args.extend(["-device".into(), "virtio-rng-pci".into()]);
        }
        let port = s
            .extra
            .port
            .then(|| PathBuf::from(format!("/tmp/lab-port-{tag}")));
        if let Some(p) = &port {
            let _ = fs::remove_file(p);
            append += &format!(" lab.port={PORT_NAME}");
            args.extend([
                "-device".into(),
                "virtio-serial-pci".into(),
                "-chardev".into(),
                format!("file,id=verdict,path={}", p.display()),
                "-device".into(),
                format!("virtserialport,chardev=verdict,name={PORT_NAME}"),
            ]);
        }
        // lab.l2debug: shmvm's info lines too (a failure's vCPU registers).
        if self.o.l2debug && vmm == Vmm::Shmvm && !args.iter().any(|a| a == "-v") {
            args.push("-v".into());
        }
        let run = Run {
            s,
            vmm,
            tag,
            token,
            console,
            ram_file,
            region,
            disk,
            vuser,
            rootfs,
            port,
        };
        (run, args, append)
    }

    /// The L2 kernel command line every scenario starts from: console,
    /// reboot method, log level, `lab.l2extra`, scenario name, token, action.
    fn l2_append(&self, s: &Scenario, vmm: Vmm, token: &str) -> String {
        // How a reboot ends each VMM: shmvm exits on the i8042 reset command
        // (reboot=k); QEMU microvm has no i8042 and exits on a triple fault
        // because of -no-reboot (reboot=t).
        let reboot = if vmm == Vmm::Qemu { "t" } else { "k" };
        let loglevel = if self.o.l2debug {
            "loglevel=7 lab.dmesg=1"
        } else {
            "quiet"
        };
        let mut append = format!("console=ttyS0 reboot={reboot} panic=-1 {loglevel}");
        for x in &self.o.l2extra {
            append += &format!(" {x}");
        }
        append += &format!(
            " lab.scenario={} lab.token={token} lab.action={}",
            s.name, s.action
        );
        append
    }

    fn command(s: &Scenario, vmm: Vmm, mut args: Vec<String>, append: String) -> Vec<String> {
        let mut cmd: Vec<String> = Vec::new();
        if s.action.qmp_ready().is_some() {
            let sock = qmp_socket(&super::tag(&s.name, vmm));
            let _ = fs::remove_file(&sock);
            args.push("-qmp".into());
            args.push(format!("unix:{},server=on,wait=off", sock.display()));
        }
        match vmm {
            Vmm::Qemu => {
                let mut machine = "microvm,acpi=on".to_string();
                let pci_virtio = s.extra.vub.is_some()
                    || s.extra.fsbench
                    || s.extra.rng
                    || s.extra.port
                    || s.extra.rootfs;
                if s.ivshmem.is_some() || s.extra.doorbell || pci_virtio {
                    machine += ",pcie=on";
                }
                cmd.extend(
                    [
                        "qemu-system-x86_64",
                        "-M",
                        &machine,
                        "-accel",
                        "kvm",
                        "-cpu",
                        "host",
                        "-m",
                        &s.mem.text,
                    ]
                    .map(String::from),
                );
                cmd.extend(args);
                cmd.extend(
                    [
                        "-nodefaults",
                        "-no-user-config",
                        "-display",
                        "none",
                        "-serial",
                        "stdio",
                        "-no-reboot",
                        "-bios",
                        "/usr/share/qemu/qboot.rom",
                        "-kernel",
                        L2_KERNEL,
                        "-initrd",
                        L2_INITRD,
                        "-append",
                    ]
                    .map(String::from),
                );
                cmd.push(append);
            }
            Vmm::Shmvm => {
                cmd.extend(
                    [
                        "shmvm", "-kernel", L2_KERNEL, "-initrd", L2_INITRD, "-append",
                    ]
                    .map(String::from),
                );
                cmd.push(append);
                cmd.extend(args);
                cmd.extend(["--serial", "stdio", "--stats=json"].map(String::from));
            }
        }
        cmd
    }

    /// Runs the VMM, playing the host side while it runs.
    fn execute(r: &mut Run, cmd: &[String]) -> Outcome {
        let start = Instant::now();
        let child = r
            .console
            .start_vmm(&r.s.name, &format!("vmm={}", r.vmm), cmd);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                return Outcome {
                    rc: -1,
                    why: Some(format!("{} did not start: {e}", cmd[0])),
                    t_init: None,
                    t_kill: None,
                    end: start.elapsed(),
                    qmp: None,
                };
            }
        };
        let (mut t_init, mut t_done, mut t_kill, mut why) = (None, None, None, None);
        let mut qmp = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) => {}
                Err(_) => break None,
            }
            std::thread::sleep(Duration::from_millis(300));
            let t = start.elapsed();
            if let Some(reg) = r.region.as_mut().filter(|g| !g.host_ready) {
                let full = fs::metadata(&reg.file).is_ok_and(|m| m.len() == reg.size);
                if full && host_prepare(&reg.file, reg.host_seed).is_ok() {
                    reg.host_ready = true;
                }
            }
            let text = r.console.text();
            if t_init.is_none() && result(&text, "init").is_some() {
                t_init = Some(t);
            }
            if t_done.is_none() && result(&text, "done").is_some() {
                t_done = Some(t);
            }
            if let Some(d) = r.disk.as_mut().filter(|d| d.mode == Vub::Kill)
                && t_kill.is_none()
                && result(&text, "vub-ready").is_some()
            {
                let pid = d.kill();
                t_kill = Some(t);
                r.console.append(&format!(
                    "LAB-L1 killed qemu-storage-daemon (pid {}) while the guest runs",
                    pid.unwrap_or(0)
                ));
            }
            if let Some(b) = r.vuser.as_mut()
                && result(&text, "vsock-ready").is_some()
            {
                b.vsock_exchange(&r.console);
            }
            if r.disk.as_ref().is_some_and(|d| d.mode == Vub::BlkTerm)
                && t_kill.is_none()
                && result(&text, "vub-ready").is_some()
            {
                // SIGTERM to the VMM after the guest's flushed write.
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                t_kill = Some(t);
                r.console
                    .append("LAB-L1 sent SIGTERM to the VMM after the guest's flushed write");
            }
            if qmp.is_none()
                && let Some(ready) = r.s.action.qmp_ready()
                && result(&text, ready).is_some()
            {
                qmp = Some(Self::qmp_action(r));
            }
            if t_init.is_none() && t > BOOT_TIMEOUT {
                why = Some(format!(
                    "no L2 init line within {}s",
                    BOOT_TIMEOUT.as_secs()
                ));
            } else if t_done.is_some_and(|d| t - d > EXIT_TIMEOUT) {
                why = Some(format!(
                    "VMM still running {}s after the guest's {}",
                    EXIT_TIMEOUT.as_secs(),
                    r.s.action
                ));
            } else if t > RUN_TIMEOUT {
                why = Some(format!("run exceeded {}s", RUN_TIMEOUT.as_secs()));
            }
            if why.is_some() {
                // Where each of the VMM's threads is before it dies: a vCPU
                // in KVM_RUN, blocked in the VMM, or gone.
                r.console.append(&threads_report(child.id()));
                let _ = child.kill();
                break child.wait().ok();
            }
        };
        let rc = status.map(exit_code).unwrap_or(-1);
        let end = start.elapsed();
        if t_init.is_none() && result(&r.console.text(), "init").is_some() {
            t_init = Some(end);
        }
        if let Some(d) = r.disk.as_mut() {
            d.stop();
        }
        if let Some(b) = r.vuser.as_mut() {
            b.stop();
        }
        if let Some(b) = r.rootfs.as_mut() {
            b.stop();
        }
        Outcome {
            rc,
            why,
            t_init,
            t_kill,
            end,
            qmp,
        }
    }

    /// The QMP side of powerdown / stopcont, once the guest is ready:
    /// returns when the VMM has closed the socket (it exited) or a step's
    /// deadline passed.
    fn qmp_action(r: &Run) -> Result<Vec<String>, String> {
        let sock = qmp_socket(&r.tag);
        let q = match r.s.action {
            Action::Powerdown => qmp::powerdown(&sock),
            _ => qmp::stopcont(&sock, &r.console),
        };
        let mut q = q.map_err(|e| e.to_string())?;
        let drained = q.drain(EXIT_TIMEOUT + Duration::from_secs(60));
        r.console.append(&format!(
            "LAB-L1 qmp {} events={}",
            r.s.action,
            q.events.join(",")
        ));
        drained.map_err(|e| format!("{e} (events {})", q.events.join(",")))?;
        Ok(q.events)
    }

    fn run(&mut self, s: &Scenario, vmm: Vmm) -> Verdict {
        let tag = super::tag(&s.name, vmm);
        println!("LAB-START name={} vmm={vmm}", s.name);
        if self.o.selftest_panic == tag {
            println!("LAB-INFO self-test: panicking L1 at the start of {tag}");
            let _ = std::io::stdout().flush();
            let _ = fs::write("/proc/sysrq-trigger", "c");
        }
        if s.extra.doorbell {
            return doorbell::run(self, s, vmm, &tag);
        }
        if s.extra.snapshot {
            return snapshot::run(self, s, vmm, &tag);
        }
        if s.extra.vng {
            return vng::run(self, s, vmm, &tag);
        }
        let (mut r, args, append) = self.prepare(s, vmm);
        let cmd = Self::command(s, vmm, args, append);
        let out = Self::execute(&mut r, &cmd);
        let console = r.console.text();
        let mut j = Judgement::default();
        judge(&r, &out, &console, &mut j);
        for f in [r.ram_file.as_ref(), r.region.as_ref().map(|g| &g.file)]
            .into_iter()
            .flatten()
        {
            let _ = fs::remove_file(f);
        }
        if let Some(d) = &r.disk {
            let _ = fs::remove_file(&d.img);
            let _ = fs::remove_file(&d.sock);
        }
        if let Some(p) = &r.port {
            let _ = fs::remove_file(p);
        }
        self.report(s, vmm, &r.tag, &out, &j, &console)
    }

    /// Prints a run's LAB-SCENARIO line (and its console on failure) and
    /// counts it; every kind of run (plain, doorbell peers, snapshot, vng)
    /// ends here.
    ///
    /// Under nested SVM on TCG both VMMs' guests have been seen to
    /// triple-fault spuriously: QEMU's as a reset before its init (rc 0
    /// through -no-reboot, 1 run in ~20), shmvm's (which never resets) in
    /// 1 of 90 2-vCPU runs, once in a three-peer doorbell run, and in two
    /// earlier full labs, before init or after (README, "The KVM lab").
    /// Such a run is repeated once, loudly, with its console (and with
    /// LAB_L2DEBUG=1 shmvm's dump of every vCPU); a second fault fails it.
    /// Any other failure is reported at once.
    fn report(
        &mut self,
        s: &Scenario,
        vmm: Vmm,
        tag: &str,
        out: &Outcome,
        j: &Judgement,
        console: &str,
    ) -> Verdict {
        if !self.repeating && spurious_fault(vmm, &j.fails, console) {
            println!(
                "LAB-INFO WARNING: run {tag}: the guest triple-faulted or reset ({}, rc {} after {} s); console follows, repeating once",
                j.fails.join("; "),
                out.rc,
                secs(out.end)
            );
            println!("{console}");
            return Verdict::Repeat;
        }
        let pass = j.fails.is_empty();
        println!("{}", scenario_line(s, vmm, out, j));
        if pass {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if !pass || self.o.dump_all {
            println!("LAB-CONSOLE-BEGIN {tag}");
            println!("{console}");
            println!("LAB-CONSOLE-END {tag}");
        }
        let _ = std::io::stdout().flush();
        Verdict::Reported
    }
}

/// `lab l1 SCENARIOS`: the whole L1 side; never returns (powers L1 off).
pub fn main(scenarios: &Path) -> ! {
    let t_l1 = uptime();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let o = options(&cmdline).unwrap_or_else(|e| fatal(&format!("kernel command line: {e}")));
    let text = fs::read_to_string(scenarios)
        .unwrap_or_else(|e| fatal(&format!("{}: {e}", scenarios.display())));
    let all = scenario::parse(&scenarios.to_string_lossy(), &text)
        .unwrap_or_else(|e| fatal(&e.to_string()));
    for n in &o.only {
        if !all.iter().any(|s| &s.name == n) {
            fatal(&format!("lab.only: no scenario '{n}'"));
        }
    }
    for v in &o.vmms {
        let bin = match v {
            Vmm::Qemu => "/usr/bin/qemu-system-x86_64",
            Vmm::Shmvm => "/usr/bin/shmvm",
        };
        if !Path::new(bin).exists() {
            fatal(&format!("{bin} not in the L1 initramfs"));
        }
    }
    let picked = |s: &&Scenario| o.only.is_empty() || o.only.contains(&s.name);
    if all.iter().filter(picked).any(|s| s.extra.vng) && !Path::new("/usr/bin/vng").exists() {
        fatal(
            "a vng scenario, but no /usr/bin/vng in the L1 initramfs (build-l1.sh without VNG_VENV)",
        );
    }
    let _ = fs::create_dir_all("/tmp/lab");
    let _ = fs::create_dir_all("/mnt/disk");
    setup();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let vmms: Vec<String> = o.vmms.iter().map(Vmm::to_string).collect();
    println!(); // the firmware leaves terminal escapes at the start of the line
    println!(
        "LAB-INFO l1_ready_s={t_l1:.2} kernel={} cpus={cpus} vmms={}",
        kernel.trim(),
        vmms.join(",")
    );
    let t_all = Instant::now();
    let mut runner = Runner {
        o,
        passed: 0,
        failed: 0,
        repeating: false,
    };
    for s in &all {
        if !runner.o.only.is_empty() && !runner.o.only.contains(&s.name) {
            continue;
        }
        for vmm in runner.o.vmms.clone() {
            if !s.runs_with(vmm) {
                continue;
            }
            runner.repeating = false;
            if let Verdict::Repeat = runner.run(s, vmm) {
                runner.repeating = true;
                runner.run(s, vmm);
            }
        }
    }
    println!(
        "LAB-SUMMARY passed={} failed={} l2_total_s={} l1_uptime_s={:.2}",
        runner.passed,
        runner.failed,
        secs(t_all.elapsed()),
        uptime()
    );
    println!("LAB-END");
    power_off()
}

#[cfg(test)]
mod tests {
    #[test]
    fn threads_report_names_every_thread_of_a_process() {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("lab-waiter".into())
            .spawn(move || {
                // Named by now (std names a thread as it starts).
                started_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
            .unwrap();
        started.recv().unwrap();
        let pid = std::process::id();
        let rep = super::threads_report(pid);
        release.send(()).unwrap();
        t.join().unwrap();
        assert!(
            rep.starts_with(&format!("LAB-THREADS pid={pid}\n")),
            "{rep}"
        );
        let waiter = rep
            .lines()
            .find(|l| l.contains(" lab-waiter state="))
            .unwrap_or_else(|| panic!("{rep}"));
        assert!(
            waiter.contains(" wchan=") && waiter.contains(" syscall="),
            "{rep}"
        );
        assert!(super::threads_report(u32::MAX).contains("(no /proc entry)"));
    }

    use super::*;

    #[test]
    fn cmdline_options() {
        let o = options("console=ttyS0 lab.vmms=shmvm lab.only=a,b lab.l2extra=x,y=1 lab.dump=all")
            .unwrap();
        assert_eq!(o.vmms, vec![Vmm::Shmvm]);
        assert_eq!(o.only, vec!["a", "b"]);
        assert_eq!(o.l2extra, vec!["x", "y=1"]);
        assert!(o.dump_all && !o.l2debug);
        assert!(options("lab.vmms=kvmtool").is_err());
    }

    /// What `make test` prints for a scenario whose table line expects
    /// what the guest does not do: one `lab: FAIL NAME.VMM: reason` line.
    #[test]
    fn a_wrong_expectation_fails_in_one_line_naming_the_run() {
        let console = "LAB-RESULT name=two stage=init cpus=1 online=0 e820_ram_kb=261500 \
                       token=T initrd=ok uptime_s=0.9\nLAB-RESULT name=two stage=done\n";
        let judged = |table: &str| {
            let s = scenario::parse("t", table).expect("table");
            let path = std::env::temp_dir().join(format!("lab-judge-{}", std::process::id()));
            let r = Run {
                s: &s[0],
                vmm: Vmm::Shmvm,
                tag: "two.shmvm".into(),
                token: "T".into(),
                console: Console { path },
                ram_file: None,
                region: None,
                disk: None,
                vuser: None,
                rootfs: None,
                port: None,
            };
            let out = Outcome {
                rc: 0,
                why: None,
                t_init: Some(Duration::from_millis(900)),
                t_kill: None,
                end: Duration::from_secs(2),
                qmp: None,
            };
            let mut j = Judgement::default();
            judge(&r, &out, console, &mut j);
            let line = scenario_line(&s[0], Vmm::Shmvm, &out, &j);
            crate::lab::host::failure_line("two", "shmvm", &line)
        };
        // The table as the guest behaves: a pass.
        assert_eq!(judged("two ram 256M 1 poweroff - -"), None);
        // The same guest against a table that expects 2 vCPUs.
        assert_eq!(
            judged("two ram 256M 2 poweroff - -").as_deref(),
            Some("lab: FAIL two.shmvm: guest sees 1 CPUs, want 2; online CPUs '0', want 0-1")
        );
    }

    #[test]
    fn only_a_guest_fault_is_repeated() {
        let fails = |f: &str| vec![f.to_string()];
        let tf = "guest a\nshmvm: guest triple fault (KVM_EXIT_SHUTDOWN)\n";
        // shmvm: a failure whose console has the triple fault line.
        assert!(spurious_fault(Vmm::Shmvm, &fails(NO_INIT), tf));
        assert!(spurious_fault(Vmm::Shmvm, &fails("exit code 1"), tf));
        assert!(!spurious_fault(Vmm::Shmvm, &[], tf));
        assert!(!spurious_fault(Vmm::Shmvm, &fails(NO_INIT), "guest a\n"));
        // A doorbell run names the faulting peer's VMM line in its reason.
        let peer =
            "peer 1 (shmvm): VMM exit status 1: shmvm: guest triple fault (KVM_EXIT_SHUTDOWN)";
        assert!(spurious_fault(Vmm::Shmvm, &fails(peer), "peer consoles\n"));
        // QEMU: a reset before init, nothing else.
        assert!(spurious_fault(Vmm::Qemu, &fails(NO_INIT), ""));
        assert!(!spurious_fault(Vmm::Qemu, &fails("timed out"), tf));
    }

    #[test]
    fn last_words_prefer_the_vmm_line_over_the_guest_tail() {
        let c = "guest a\nshmvm: guest triple fault (KVM_EXIT_SHUTDOWN)\nguest b\n\n";
        assert_eq!(
            last_words(c),
            "shmvm: guest triple fault (KVM_EXIT_SHUTDOWN)"
        );
        assert_eq!(last_words("x\ny\n"), "y");
        assert_eq!(last_words(""), "(no output)");
    }

    #[test]
    fn results_match_their_stage_exactly() {
        let c = "noise\nLAB-RESULT name=a stage=ivshmem-info found=1\nLAB-RESULT name=a stage=ivshmem host_ready=1\n";
        assert_eq!(
            result(c, "ivshmem")
                .map(fields)
                .and_then(|f| f.get("host_ready").copied()),
            Some("1")
        );
        assert_eq!(
            result(c, "ivshmem-info")
                .map(fields)
                .and_then(|f| f.get("found").copied()),
            Some("1")
        );
        assert!(result(c, "init").is_none());
    }
}
