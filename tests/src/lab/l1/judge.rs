//! Judging one L1 run: the L2's `LAB-RESULT` lines, the VMM's exit status
//! and statistics, and what the L1 host side finds in the shared region and
//! the disk image afterwards. Each failure is one short sentence; the
//! run's `LAB-SCENARIO` line joins them as its `reason=`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use protocol::GUEST_DONE;

use super::{
    Disk, GIB4, MAILBOX_DATA_OFF, Outcome, Region, Run, VUB_DISK_SIZE, fields, last_words, result,
    secs, tool,
};
use crate::lab::scenario::{Action, IvshmemKind, Vmm, Vub};
use crate::stats::Stats;

pub(super) const NO_INIT: &str = "L2 never reached its init";

/// The failures of a run, and the values its LAB-SCENARIO line reports.
#[derive(Default)]
pub(super) struct Judgement {
    pub(super) fails: Vec<String>,
    pub(super) report: Vec<(&'static str, String)>,
}

impl Judgement {
    pub(super) fn fail(&mut self, why: impl Into<String>) {
        self.fails.push(why.into());
    }
    pub(super) fn want(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.fails.push(why());
        }
    }
    pub(super) fn report(&mut self, key: &'static str, value: impl Into<String>) {
        self.report.push((key, value.into()));
    }
}

/// powerdown / stopcont: the guest was ready, the QMP side went through,
/// and the events came in order (others may come between).
fn judge_qmp(action: Action, want: &[&str], out: &Outcome, console: &str, j: &mut Judgement) {
    let ready = action.qmp_ready().unwrap_or_default();
    let Some(line) = result(console, ready) else {
        j.fail(format!("the guest never reported {ready}"));
        return;
    };
    let f = fields(line);
    if action == Action::Powerdown {
        let dev = f.get("dev").copied().unwrap_or("-");
        j.report("button", dev);
        j.want(dev != "-", || {
            format!(
                "no Power Button input device in L2 (modules: {})",
                f.get("loaded").copied().unwrap_or("")
            )
        });
        j.want(result(console, "power-button").is_some(), || {
            "the guest never saw the power button".into()
        });
    }
    match &out.qmp {
        None => j.fail("the L1 never spoke QMP"),
        Some(Err(e)) => j.fail(e.clone()),
        Some(Ok(events)) => {
            j.report("events", events.join(","));
            let mut it = events.iter();
            let in_order = want.iter().all(|w| it.any(|e| e == w));
            j.want(in_order, || {
                format!(
                    "QMP events {}, want {} in order",
                    events.join(","),
                    want.join(",")
                )
            });
        }
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

pub(super) fn judge(r: &Run, out: &Outcome, console: &str, j: &mut Judgement) {
    let s = r.s;
    if let Some(why) = &out.why {
        j.fail(why.clone());
    }
    if let Some(e) = r.disk.as_ref().and_then(|d| d.error.clone()) {
        j.fail(e);
    }
    let vub = r.disk.as_ref().map(|d| d.mode);
    let want_rc = match vub {
        Some(Vub::Private) => 2,
        // Stopped by SIGTERM: 128 + 15.
        Some(Vub::BlkTerm) => 143,
        _ => 0,
    };
    if out.why.is_none() && out.rc != want_rc {
        let mode = vub.map(|v| format!(" for {v}")).unwrap_or_default();
        j.fail(format!(
            "VMM exit status {} (want {want_rc}{mode} after {}): {}",
            out.rc,
            s.action,
            last_words(console)
        ));
    }
    let init = result(console, "init").map(fields);
    let done = result(console, "done");
    if vub == Some(Vub::Private) {
        // Refused before the guest starts: one error line, nothing booted.
        let errors: Vec<&str> = console
            .lines()
            .filter(|l| l.starts_with("shmvm: "))
            .collect();
        j.want(errors.len() == 1, || {
            format!("want exactly one shmvm error line, got {}", errors.len())
        });
        let line = errors.first().copied().unwrap_or_default();
        j.want(line.contains("memory-backend-ram) is private"), || {
            format!("the error does not name the private RAM backend: '{line}'")
        });
        j.want(init.is_none(), || {
            "the guest booted although the VMM must refuse private RAM".into()
        });
        j.report(
            "error",
            line.chars().take(60).collect::<String>().replace(' ', "_"),
        );
    } else if let Some(init) = &init {
        let get = |k: &str| init.get(k).copied().unwrap_or("");
        let cpus = s.want_cpus();
        j.want(get("cpus") == cpus.to_string(), || {
            format!("guest sees {} CPUs, want {cpus}", get("cpus"))
        });
        let online = if s.smp > 1 {
            format!("0-{}", s.smp - 1)
        } else {
            "0".into()
        };
        j.want(get("online") == online, || {
            format!("online CPUs '{}', want {online}", get("online"))
        });
        let mem_kb = s.mem.bytes / 1024;
        let ram_kb: Option<u64> = get("e820_ram_kb").parse().ok();
        j.want(
            ram_kb.is_some_and(|k| k <= mem_kb && k + 1024 >= mem_kb),
            || {
                format!(
                    "guest RAM (e820) {}KiB, want {mem_kb}KiB minus at most 1MiB",
                    get("e820_ram_kb")
                )
            },
        );
        j.want(get("token") == r.token, || {
            format!("cmdline token '{}', want '{}'", get("token"), r.token)
        });
        j.want(get("initrd") == "ok", || {
            "initrd payload checksum mismatch".into()
        });
        j.report("kernel_init_s", get("uptime_s"));
        j.report("memtotal_kb", get("memtotal_kb"));
        j.report("e820_ram_kb", get("e820_ram_kb"));
    } else {
        j.fail(NO_INIT);
    }
    if init.is_some() && done.is_none() && vub != Some(Vub::BlkTerm) {
        j.fail("L2 init did not finish its scenario");
    }
    let want_events = s.action.qmp_events();
    if !want_events.is_empty() {
        judge_qmp(s.action, want_events, out, console, j);
    }
    if let Some(d) = r.disk.as_ref().filter(|d| d.mode != Vub::Private) {
        judge_disk(r, d, out, console, j);
    }
    if s.extra.virtio {
        let mods = result(console, "modules").map(fields).unwrap_or_default();
        let (loaded, failed) = (
            mods.get("loaded").copied().unwrap_or(""),
            mods.get("failed").copied().unwrap_or(""),
        );
        j.want(
            !mods.is_empty() && failed.is_empty() && loaded.split(',').any(|m| m == "virtio_blk"),
            || format!("virtio modules did not load in L2 (loaded: {loaded}; failed: {failed})"),
        );
    }
    if let Some(g) = &r.region {
        judge_region(r, g, console, j);
    }
    if let Some(b) = &r.vuser {
        b.judge(console, j);
    }
    if let Some(b) = &r.rootfs {
        b.judge(console, j);
    }
    if s.extra.blkbench {
        let b = result(console, "blkbench").map(fields).unwrap_or_default();
        j.want(b.contains_key("seq_read_MBps"), || {
            "the guest's blkbench did not run".into()
        });
        for k in [
            "seq_read_MBps",
            "seq_write_MBps",
            "rand_read_iops",
            "rand_write_iops",
        ] {
            j.report(k, b.get(k).copied().unwrap_or("-"));
        }
    }
    if s.extra.rng {
        judge_rng(r, console, j);
    }
    if let Some(p) = &r.port {
        judge_port(r, p, console, j);
    }
    if let Some(b) = result(console, "ivshmem-bench").map(fields) {
        j.report(
            "guest_write_MBps",
            b.get("write_MBps").copied().unwrap_or(""),
        );
        j.report("guest_read_MBps", b.get("read_MBps").copied().unwrap_or(""));
    }
}

fn judge_disk(r: &Run, d: &Disk, out: &Outcome, console: &str, j: &mut Judgement) {
    let res = result(console, "vub").map(fields).unwrap_or_default();
    let get = |k: &str| res.get(k).copied().unwrap_or("");
    if get("found") != "1" {
        j.fail("guest found no /dev/vda");
    } else {
        let sectors = (VUB_DISK_SIZE / 512).to_string();
        j.want(get("size_sectors") == sectors, || {
            format!(
                "/dev/vda has {} sectors, want {sectors}",
                get("size_sectors")
            )
        });
        j.want(get("queues") == d.queues.to_string(), || {
            format!(
                "/dev/vda has {} hardware queues, want {}",
                get("queues"),
                d.queues
            )
        });
        // qemu-storage-daemon offers SIZE_MAX with size_max 0; passed on,
        // Linux would cut every segment to 4 KiB. shmvm leaves it out;
        // QEMU 10 passes it on (its reference run in bench-scenarios).
        j.report("max_segment", get("max_segment"));
        j.want(
            r.vmm == Vmm::Qemu || get("max_segment").parse::<u64>().is_ok_and(|n| n > 4096),
            || {
                format!(
                    "/dev/vda max_segment_size {}, want more than 4096",
                    get("max_segment")
                )
            },
        );
        j.want(get("read_host") == "ok", || {
            "guest read of the host's pattern from /dev/vda failed".into()
        });
        j.want(get("write") == "ok", || {
            "guest write to /dev/vda failed".into()
        });
        j.want(get("readback") == "ok", || {
            "guest read-back of its write differs".into()
        });
        j.want(get("irq").starts_with("PCI-MSI"), || {
            format!("virtio interrupts on '{}', want PCI-MSI(X)", get("irq"))
        });
        j.want(get("req_irqs").parse::<u64>().is_ok_and(|n| n > 0), || {
            "no request-queue interrupts in the guest".into()
        });
        let img = d.img.to_string_lossy();
        let seed = d.guest_seed.to_string();
        if let Err(e) = tool(&[
            "--path", &img, "verify", "--seed", &seed, "--offset", "1M", "--len", "1M",
        ]) {
            j.fail(format!("host check of the guest's write in {img}: {e}"));
        }
        let md5 = md5_of_range(&d.img, 1 << 20, 1 << 20);
        j.want(md5.as_deref() == Some(get("write_md5")), || {
            format!(
                "image md5 {} at 1M differs from the guest's {}",
                md5.as_deref().unwrap_or("?"),
                get("write_md5")
            )
        });
    }
    match Stats::from_output(console) {
        // QEMU prints no statistics.
        _ if r.vmm == Vmm::Qemu => {}
        Err(e) => j.fail(format!("statistics: {e}")),
        Ok(st) if d.mode.builtin() => match st.virtio.iter().find(|v| v.name.contains("-drive")) {
            None => j.fail("no virtio-blk device in the statistics"),
            Some(v) => {
                j.want(v.notify_exits == 0, || {
                    format!("{} kicks exited to the VMM (no ioeventfd)", v.notify_exits)
                });
                j.want(v.errors + v.broken + v.device_errors == 0, || {
                    format!(
                        "virtio-blk: {} wiring errors, broken {} times, {} request errors",
                        v.errors, v.broken, v.device_errors
                    )
                });
                j.want(v.flushes > 0, || {
                    "virtio-blk: the guest never flushed".into()
                });
                j.report("blk_requests", v.requests.to_string());
            }
        },
        Ok(st) => match st.vhost_user.first() {
            None => j.fail("no vhost-user device in the statistics"),
            Some(v) => {
                j.want(v.notify_exits == 0, || {
                    format!("{} kicks exited to the VMM (no ioeventfd)", v.notify_exits)
                });
                j.want(v.errors == 0, || format!("{} device errors", v.errors));
                j.want(v.starts > 0, || "the back-end was never started".into());
            }
        },
    }
    // Where the driver put queue 0's descriptor table (shmvm -v's info line).
    let ring = console
        .lines()
        .find(|l| l.contains("started ") && l.contains(" queue(s)"))
        .and_then(|l| l.split_once(" q0 size "))
        .and_then(|(_, rest)| rest.split_once(" rings "))
        .and_then(|(_, rest)| rest.split('/').next())
        .map(str::to_string);
    if r.s.extra.ring64 {
        j.want(
            ring.as_deref().and_then(hex).is_some_and(|a| a >= GIB4),
            || {
                format!(
                    "queue 0's descriptor table at {}, want above 4 GiB",
                    ring.as_deref().unwrap_or("?")
                )
            },
        );
    }
    let hups = console.lines().filter(|l| l.contains("hung up")).count();
    if d.mode == Vub::Kill {
        j.want(out.t_kill.is_some(), || {
            "the guest never reported stage=vub-ready (back-end not killed)".into()
        });
        j.want(hups == 1, || {
            format!("want exactly one 'hung up' line from the VMM, got {hups}")
        });
    } else {
        j.want(hups == 0, || {
            "the VMM reported the back-end hanging up".into()
        });
    }
    j.report("vda_sectors", get("size_sectors"));
    j.report("vda_write_MBps", get("write_MBps"));
    j.report("vda_irq", get("irq"));
    j.report("vda_req_irqs", get("req_irqs"));
    if let Some(t) = out.t_kill {
        j.report("killed_at_s", secs(t));
    }
    j.report("vda_queues", get("queues"));
    if !d.mode.builtin() {
        j.report("q0_desc", ring.unwrap_or_else(|| "?".into()));
    }
}

/// The guest read /dev/hwrng through virtio-rng: 64 bytes, twice, different.
fn judge_rng(r: &Run, console: &str, j: &mut Judgement) {
    let res = result(console, "rng").map(fields).unwrap_or_default();
    let get = |k: &str| res.get(k).copied().unwrap_or("");
    j.want(get("current").starts_with("virtio_rng"), || {
        format!(
            "hw_random's current source is '{}', want virtio_rng",
            get("current")
        )
    });
    j.want(get("bytes") == "64", || {
        format!("read {} bytes from /dev/hwrng, want 64", get("bytes"))
    });
    j.want(
        !get("md5a").is_empty() && get("md5a") != get("md5b"),
        || "two reads of /dev/hwrng gave the same bytes".into(),
    );
    if r.vmm == Vmm::Shmvm {
        let st = Stats::from_output(console);
        let got = st.as_ref().ok().and_then(|st| {
            st.virtio
                .iter()
                .find(|v| v.name == "virtio-rng-pci")
                .map(|v| v.bytes_to_guest)
        });
        j.want(got.is_some_and(|b| b >= 128), || {
            format!("virtio-rng gave {got:?} bytes in the statistics, want at least 128")
        });
    }
}

/// The guest wrote `verdict TOKEN` to its named virtio-serial port; the
/// file chardev behind it must hold exactly that.
fn judge_port(r: &Run, path: &Path, console: &str, j: &mut Judgement) {
    let res = result(console, "port").map(fields).unwrap_or_default();
    j.want(res.get("found") == Some(&"1"), || {
        format!(
            "the guest found no virtio-serial port named {}",
            super::PORT_NAME
        )
    });
    let got = std::fs::read_to_string(path).unwrap_or_default();
    let want = format!("verdict {}\n", r.token);
    j.want(got == want, || {
        format!("{} holds {got:?}, want {want:?}", path.display())
    });
}

/// md5sum of `len` bytes at `off` of a file (busybox md5sum).
fn md5_of_range(path: &Path, off: u64, len: usize) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(off)).ok()?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).ok()?;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(&buf).ok()?;
    let out = child.wait_with_output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
}

fn judge_region(r: &Run, g: &Region, console: &str, j: &mut Judgement) {
    let info = result(console, "ivshmem-info")
        .map(fields)
        .unwrap_or_default();
    let res = result(console, "ivshmem").map(fields).unwrap_or_default();
    let iget = |k: &str| info.get(k).copied().unwrap_or("");
    let rget = |k: &str| res.get(k).copied().unwrap_or("");
    if iget("found") != "1" {
        j.fail("guest found no ivshmem device");
    } else {
        for (key, want, what) in [
            ("vendor", "0x1af4", "ivshmem vendor"),
            ("device", "0x1110", "ivshmem device"),
            ("class", "0x050000", "ivshmem class"),
            ("revision", "0x01", "ivshmem revision"),
            ("bar0_size", "0x100", "ivshmem BAR0 size"),
        ] {
            j.want(iget(key) == want, || {
                format!("{what} {}, want {want}", iget(key))
            });
        }
        let sub = format!("{}:{}", iget("subsystem_vendor"), iget("subsystem_device"));
        j.want(sub == "0x1af4:0x1100", || {
            format!("ivshmem subsystem {sub}, want 0x1af4:0x1100")
        });
        let want_size = format!("{:#x}", g.size);
        j.want(iget("bar2_size") == want_size, || {
            format!("BAR2 size {}, want {want_size}", iget("bar2_size"))
        });
        if r.s.extra.bar64 {
            j.want(hex(iget("bar2_addr")).is_some_and(|a| a >= GIB4), || {
                format!("BAR2 at {}, want above 4 GiB", iget("bar2_addr"))
            });
        }
        if rget("host_ready") != "1" {
            j.fail("guest never saw the host's HOSTRDY! mailbox");
        } else if rget("verify_host") != "ok" {
            j.fail("guest could not verify the host's pattern");
        }
        j.want(
            rget("fill_guest") == "ok" && rget("verify_guest") == "ok",
            || "guest could not write/read back its pattern".into(),
        );
    }
    if !g.host_ready {
        j.fail(format!(
            "ivshmem region {} never appeared (or had the wrong size) on the host",
            g.file.display()
        ));
    } else {
        let mut mailbox = [0u8; 8];
        let read = File::open(&g.file).and_then(|mut f| f.read_exact(&mut mailbox));
        if read.is_err() || &mailbox != GUEST_DONE {
            j.fail("host did not find the guest's GUESTDN! mailbox");
        } else {
            let f = g.file.to_string_lossy();
            let seed = g.guest_seed.to_string();
            if let Err(e) = tool(&[
                "--path",
                &f,
                "verify",
                "--seed",
                &seed,
                "--offset",
                MAILBOX_DATA_OFF,
            ]) {
                j.fail(format!("host verify of the guest's pattern: {e}"));
            }
        }
    }
    if g.kind == IvshmemKind::Shm && r.vmm == Vmm::Shmvm && !g.file.exists() {
        j.fail(format!(
            "named shm {} gone after the run (keep=on)",
            g.file.display()
        ));
    }
    j.report("bar2_addr", iget("bar2_addr"));
}
