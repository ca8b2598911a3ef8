//! The lab's scenario table (`tests/lab/scenarios`): one scenario a line,
//! whitespace-separated columns, `#` comments. Adding a scenario is adding
//! a line; every value is checked here, so a typo fails before any L1 boot.
//!
//! Columns: `name backend mem smp action ivshmem extra`
//! - backend: ram | file-tmpfs | file-disk | memfd | shm
//! - mem: guest RAM (K/M/G suffix); smp: vCPUs
//! - action: poweroff | reboot | powerdown | stopcont (all must end the VMM
//!   with 0; the last two speak QMP to the VMM, see `l1/qmp.rs`)
//! - ivshmem: - | file:SIZE (a file on /dev/shm) | shm:SIZE (named POSIX shm)
//! - extra: - or comma-separated: virtio, bar64, vub, vub-kill, vub-private,
//!   blk, blk-term, blkbench, rng, port, mq2, ring64, doorbell, snapshot,
//!   rootfs, vng, shmvm-only (tests/lab/scenarios explains each), and
//!   expectations that override the derived ones: `cpus=N` (default: smp).

use std::fmt;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}: {what}")]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub what: String,
}

/// An L2 VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vmm {
    /// QEMU microvm: the reference.
    Qemu,
    Shmvm,
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vmm::Qemu => "qemu",
            Vmm::Shmvm => "shmvm",
        })
    }
}

impl Vmm {
    pub fn parse(s: &str) -> Option<Vmm> {
        match s {
            "qemu" => Some(Vmm::Qemu),
            "shmvm" => Some(Vmm::Shmvm),
            _ => None,
        }
    }

    /// A comma-separated list (`LAB_VMMS`, `lab.vmms=`).
    pub fn parse_list(s: &str) -> Result<Vec<Vmm>, String> {
        s.split(',')
            .filter(|v| !v.is_empty())
            .map(|v| Vmm::parse(v).ok_or_else(|| format!("unknown VMM '{v}' (qemu, shmvm)")))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ram,
    FileTmpfs,
    FileDisk,
    Memfd,
    Shm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Poweroff,
    Reboot,
    /// The L1 presses the ACPI power button over QMP (`system_powerdown`);
    /// the guest powers off on it.
    Powerdown,
    /// The L1 pauses the guest over QMP (`stop`), checks it is paused and
    /// quiet, resumes it (`cont`); the guest then powers off.
    Stopcont,
}

impl Action {
    /// For the QMP actions: the guest's `LAB-RESULT` stage after which the
    /// L1 speaks QMP.
    pub fn qmp_ready(self) -> Option<&'static str> {
        match self {
            Action::Poweroff | Action::Reboot => None,
            Action::Powerdown => Some("powerdown-ready"),
            Action::Stopcont => Some("stopcont-ready"),
        }
    }

    /// The QMP events a run must see, in this order.
    pub fn qmp_events(self) -> &'static [&'static str] {
        match self {
            Action::Poweroff | Action::Reboot => &[],
            Action::Powerdown => &["POWERDOWN", "SHUTDOWN"],
            Action::Stopcont => &["STOP", "RESUME", "SHUTDOWN"],
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
            Action::Powerdown => "powerdown",
            Action::Stopcont => "stopcont",
        })
    }
}

/// A size as written (passed on to the VMMs as is) and in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    pub text: String,
    pub bytes: u64,
}

impl Size {
    pub fn parse(s: &str) -> Option<Size> {
        let (num, shift) = match s.as_bytes().last()? {
            b'K' => (&s[..s.len() - 1], 10),
            b'M' => (&s[..s.len() - 1], 20),
            b'G' => (&s[..s.len() - 1], 30),
            _ => (s, 0),
        };
        let n: u64 = num.parse().ok()?;
        let bytes = n.checked_mul(1 << shift)?;
        (bytes > 0).then(|| Size {
            text: s.to_string(),
            bytes,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvshmemKind {
    File,
    Shm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvshmemSpec {
    pub kind: IvshmemKind,
    pub size: Size,
}

/// A vhost-user-blk disk served by qemu-storage-daemon in L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vub {
    /// The guest reads the host's pattern, writes its own; L1 checks the image.
    Plain,
    /// The same, then L1 kills the back-end while the guest runs.
    Kill,
    /// Private guest RAM: shmvm must refuse with exit 2, nothing boots.
    Private,
    /// No back-end: the VMM's own virtio-blk on the image (`-drive`).
    Blk,
    /// The same, then L1 sends the VMM SIGTERM after the guest's flushed
    /// write: the image must hold it.
    BlkTerm,
}

impl Vub {
    /// The VMM's built-in virtio-blk rather than a vhost-user back-end.
    pub fn builtin(self) -> bool {
        matches!(self, Vub::Blk | Vub::BlkTerm)
    }
}

impl fmt::Display for Vub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vub::Plain => "vub",
            Vub::Kill => "vub-kill",
            Vub::Private => "vub-private",
            Vub::Blk => "blk",
            Vub::BlkTerm => "blk-term",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub virtio: bool,
    pub bar64: bool,
    pub vub: Option<Vub>,
    pub mq2: bool,
    pub ring64: bool,
    /// Three L2 guests (two shmvm, one QEMU) on an ivshmem-server in L1
    /// pass a doorbell token around (one run, reported as shmvm's).
    pub doorbell: bool,
    /// One boot snapshotted with its RAM in a named shm object, then
    /// restored as 5 clones at once and once shared (`l1/snapshot.rs`).
    pub snapshot: bool,
    /// virtiofsd, vhost-device-vsock and vhost-device-rng in L1 serve
    /// the guest's vhost-user-{fs,vsock,rng}-pci devices.
    pub vuser: bool,
    /// With blk or vub: the guest measures /dev/vda (ivshmem-tool blkbench).
    pub blkbench: bool,
    /// A virtio-rng device: the guest reads /dev/hwrng.
    pub rng: bool,
    /// A virtio-serial port named `lab.verdict` on a file chardev: the
    /// guest writes its token there, L1 reads it after the run.
    pub port: bool,
    /// The root filesystem is a directory of L1 served by virtiofsd
    /// (`rootfstype=virtiofs root=ROOTFS`), booted as virtme-ng boots one;
    /// the root's init writes `uname -r` to the port `virtme.ret`.
    pub rootfs: bool,
    /// virtme-ng itself in L1 runs the lab kernel with shmvm
    /// (`vng --qemu shmvm --exec 'uname -r; exit 7'`, `l1/vng.rs`); the
    /// other columns are vng's to choose. shmvm only: QEMU's run (vng's
    /// own VMM) passed when this was built but costs ~100 s of L1 time.
    pub vng: bool,
    /// No QEMU reference run of this line (`shmvm-only`): what the
    /// reference adds to a lab's wall time is not worth it here (the arm64
    /// lab runs QEMU on a few plain boots only).
    pub shmvm_only: bool,
    /// `cpus=N`: the CPU count the guest must see (default: smp).
    pub cpus: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub backend: Backend,
    pub mem: Size,
    pub smp: u32,
    pub action: Action,
    pub ivshmem: Option<IvshmemSpec>,
    pub extra: Extra,
}

impl Scenario {
    /// vhost-user-blk needs PCI, which QEMU microvm lacks: those scenarios
    /// run with shmvm only. A doorbell scenario is one run of three guests
    /// (QEMU among them), reported as shmvm's. Snapshots are shmvm's.
    pub fn runs_with(&self, vmm: Vmm) -> bool {
        // vhost-user-blk runs with QEMU too when it is measured (the same
        // qemu-storage-daemon serving both VMMs: bench-scenarios).
        let vub_shmvm_only = |v: Vub| v != Vub::Blk && !(v == Vub::Plain && self.extra.blkbench);
        let shmvm_only = self.extra.vub.is_some_and(vub_shmvm_only)
            || self.extra.shmvm_only
            || self.extra.doorbell
            || self.extra.vuser
            || self.extra.snapshot
            || self.extra.vng;
        !shmvm_only || vmm == Vmm::Shmvm
    }

    /// The CPU count the guest must see.
    pub fn want_cpus(&self) -> u32 {
        self.extra.cpus.unwrap_or(self.smp)
    }
}

fn parse_line(cols: &[&str]) -> Result<Scenario, String> {
    let [name, backend, mem, smp, action, ivshmem, extra] = cols else {
        return Err(format!(
            "{} columns, want 7: name backend mem smp action ivshmem extra",
            cols.len()
        ));
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("name '{name}': letters, digits, '-' and '_' only"));
    }
    let backend = match *backend {
        "ram" => Backend::Ram,
        "file-tmpfs" => Backend::FileTmpfs,
        "file-disk" => Backend::FileDisk,
        "memfd" => Backend::Memfd,
        "shm" => Backend::Shm,
        b => {
            return Err(format!(
                "backend '{b}': ram, file-tmpfs, file-disk, memfd or shm"
            ));
        }
    };
    let mem = Size::parse(mem).ok_or_else(|| format!("mem '{mem}': a size like 256M"))?;
    let smp = smp
        .parse()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| format!("smp '{smp}': 1..64"))?;
    let action = match *action {
        "poweroff" => Action::Poweroff,
        "reboot" => Action::Reboot,
        "powerdown" => Action::Powerdown,
        "stopcont" => Action::Stopcont,
        a => {
            return Err(format!(
                "action '{a}': poweroff, reboot, powerdown or stopcont"
            ));
        }
    };
    let ivshmem = match *ivshmem {
        "-" => None,
        s => {
            let (kind, size) = s
                .split_once(':')
                .ok_or_else(|| format!("ivshmem '{s}': -, file:SIZE or shm:SIZE"))?;
            let kind = match kind {
                "file" => IvshmemKind::File,
                "shm" => IvshmemKind::Shm,
                _ => return Err(format!("ivshmem '{s}': -, file:SIZE or shm:SIZE")),
            };
            let size = Size::parse(size)
                .filter(|z| z.bytes.is_power_of_two())
                .ok_or_else(|| format!("ivshmem '{s}': the size must be a power of two"))?;
            Some(IvshmemSpec { kind, size })
        }
    };
    let mut x = Extra::default();
    for flag in extra.split(',').filter(|f| *f != "-") {
        let vub = |x: &mut Extra, v| match x.vub.replace(v) {
            None => Ok(()),
            Some(old) => Err(format!("extra: both {old} and {v}")),
        };
        match flag.split_once('=') {
            None => match flag {
                "virtio" => x.virtio = true,
                "bar64" => x.bar64 = true,
                "mq2" => x.mq2 = true,
                "ring64" => x.ring64 = true,
                "doorbell" => x.doorbell = true,
                "snapshot" => x.snapshot = true,
                "vuser" => x.vuser = true,
                "vub" => vub(&mut x, Vub::Plain)?,
                "vub-kill" => vub(&mut x, Vub::Kill)?,
                "vub-private" => vub(&mut x, Vub::Private)?,
                "blk" => vub(&mut x, Vub::Blk)?,
                "blk-term" => vub(&mut x, Vub::BlkTerm)?,
                "rng" => x.rng = true,
                "blkbench" => x.blkbench = true,
                "port" => x.port = true,
                "rootfs" => x.rootfs = true,
                "vng" => x.vng = true,
                "shmvm-only" => x.shmvm_only = true,
                f => return Err(format!("extra '{f}': unknown flag")),
            },
            Some(("cpus", n)) => {
                x.cpus = Some(
                    n.parse()
                        .map_err(|_| format!("extra 'cpus={n}': a number"))?,
                )
            }
            Some((k, _)) => return Err(format!("extra '{k}=': unknown expectation (cpus=N)")),
        }
    }
    if x.blkbench && !matches!(x.vub, Some(Vub::Blk | Vub::Plain)) {
        return Err("extra: blkbench needs blk or vub".into());
    }
    if (x.mq2 || x.ring64) && x.vub.is_none_or(Vub::builtin) {
        return Err("extra: mq2 and ring64 need vub or vub-kill".into());
    }
    if x.doorbell && (ivshmem.is_some() || x.vub.is_some() || backend != Backend::Ram) {
        return Err(
            "extra: doorbell needs backend ram, ivshmem - and no vub (the server owns the region)"
                .into(),
        );
    }
    if x.snapshot
        && (backend != Backend::Shm
            || action != Action::Poweroff
            || ivshmem.is_some()
            || x.vub.is_some()
            || x.doorbell
            || x.vuser)
    {
        return Err(
            "extra: snapshot needs backend shm, action poweroff, ivshmem - and no vub, doorbell or vuser"
                .into(),
        );
    }
    if x.rootfs && (backend != Backend::Memfd || x.vuser || x.snapshot || x.doorbell) {
        return Err(
            "extra: rootfs needs backend memfd (shared with virtiofsd) and no vuser, snapshot or doorbell"
                .into(),
        );
    }
    if x.vng
        && (x
            != Extra {
                vng: true,
                ..Extra::default()
            }
            || ivshmem.is_some())
    {
        return Err("extra: vng stands alone (vng chooses the machine)".into());
    }
    if x.bar64 && ivshmem.is_none() {
        return Err("extra: bar64 needs an ivshmem region".into());
    }
    Ok(Scenario {
        name: name.to_string(),
        backend,
        mem,
        smp,
        action,
        ivshmem,
        extra: x,
    })
}

/// Parses a scenario table; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<Scenario>, ScenarioError> {
    let mut out: Vec<Scenario> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |what: String| ScenarioError {
            file: file.to_string(),
            line: i + 1,
            what,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let s = parse_line(&cols).map_err(err)?;
        if out.iter().any(|o| o.name == s.name) {
            return Err(err(format!("scenario '{}' defined twice", s.name)));
        }
        out.push(s);
    }
    if out.is_empty() {
        return Err(ScenarioError {
            file: file.to_string(),
            line: 0,
            what: "no scenarios".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_has_36_runs() {
        let text = include_str!("../../lab/scenarios");
        let all = parse("scenarios", text).expect("tests/lab/scenarios parses");
        let runs: usize = all
            .iter()
            .map(|s| {
                [Vmm::Qemu, Vmm::Shmvm]
                    .iter()
                    .filter(|v| s.runs_with(**v))
                    .count()
            })
            .sum();
        assert_eq!((all.len(), runs), (23, 36));
    }

    #[test]
    fn builtin_virtio_flags() {
        let one = |l: &str| {
            parse("f", l)
                .map(|v| v[0].clone())
                .map_err(|e| e.to_string())
        };
        let s = one("a memfd 256M 1 poweroff - blk,blkbench,rng,port").unwrap();
        assert_eq!(s.extra.vub, Some(Vub::Blk));
        assert!(s.extra.blkbench && s.extra.rng && s.extra.port);
        // The built-in disk runs with QEMU too; blk-term with shmvm only.
        assert!(s.runs_with(Vmm::Qemu) && s.runs_with(Vmm::Shmvm));
        let t = one("a ram 256M 1 poweroff - blk-term").unwrap();
        assert!(!t.runs_with(Vmm::Qemu) && t.runs_with(Vmm::Shmvm));
        assert_eq!(
            one("a ram 256M 1 poweroff - blkbench").unwrap_err(),
            "f:1: extra: blkbench needs blk or vub"
        );
        let v = one("a memfd 256M 1 poweroff - vub,blkbench").unwrap();
        assert!(v.extra.blkbench && v.extra.vub == Some(Vub::Plain));
        assert!(v.runs_with(Vmm::Qemu) && v.runs_with(Vmm::Shmvm));
        let v = one("a memfd 256M 1 poweroff - vub").unwrap();
        assert!(!v.runs_with(Vmm::Qemu) && v.runs_with(Vmm::Shmvm));
        let o = one("a memfd 256M 1 poweroff - rng,shmvm-only").unwrap();
        assert!(o.extra.shmvm_only && !o.runs_with(Vmm::Qemu) && o.runs_with(Vmm::Shmvm));
        assert_eq!(
            one("a ram 256M 1 poweroff - blk,mq2").unwrap_err(),
            "f:1: extra: mq2 and ring64 need vub or vub-kill"
        );
    }

    #[test]
    fn virtiofs_root_and_vng_lines() {
        let one = |l: &str| {
            parse("f", l)
                .map(|v| v[0].clone())
                .map_err(|e| e.to_string())
        };
        let r = one("r memfd 256M 1 poweroff - rootfs").unwrap();
        assert!(r.extra.rootfs && r.runs_with(Vmm::Qemu) && r.runs_with(Vmm::Shmvm));
        assert_eq!(
            one("r ram 256M 1 poweroff - rootfs").unwrap_err(),
            "f:1: extra: rootfs needs backend memfd (shared with virtiofsd) and no vuser, snapshot or doorbell"
        );
        let v = one("v memfd 1G 2 poweroff - vng").unwrap();
        assert!(v.extra.vng && !v.runs_with(Vmm::Qemu) && v.runs_with(Vmm::Shmvm));
        assert_eq!(
            one("v memfd 1G 2 poweroff - vng,rng").unwrap_err(),
            "f:1: extra: vng stands alone (vng chooses the machine)"
        );
    }

    #[test]
    fn qmp_actions_parse_and_name_their_events() {
        let s = parse(
            "t",
            "p ram 256M 1 powerdown - -\nc ram 256M 1 stopcont - -\n",
        )
        .unwrap();
        assert_eq!(s[0].action, Action::Powerdown);
        assert_eq!(s[0].action.qmp_ready(), Some("powerdown-ready"));
        assert_eq!(s[0].action.qmp_events(), ["POWERDOWN", "SHUTDOWN"]);
        assert_eq!(s[1].action.to_string(), "stopcont");
        assert_eq!(s[1].action.qmp_events(), ["STOP", "RESUME", "SHUTDOWN"]);
        assert_eq!(Action::Poweroff.qmp_ready(), None);
        assert!(s[0].runs_with(Vmm::Qemu) && s[0].runs_with(Vmm::Shmvm));
    }

    #[test]
    fn a_line_becomes_a_scenario() {
        let s = parse("t", "# c\n\nx memfd 4608M 2 reboot shm:64M bar64,cpus=3\n").unwrap();
        assert_eq!(s[0].mem.bytes, 4608 << 20);
        assert_eq!(s[0].action, Action::Reboot);
        assert_eq!(
            s[0].ivshmem,
            Some(IvshmemSpec {
                kind: IvshmemKind::Shm,
                size: Size::parse("64M").unwrap()
            })
        );
        assert!(s[0].extra.bar64 && s[0].runs_with(Vmm::Qemu));
        assert_eq!(s[0].want_cpus(), 3);
        let d = parse("t", "db ram 256M 1 poweroff - doorbell\n").unwrap();
        assert!(d[0].extra.doorbell && d[0].runs_with(Vmm::Shmvm) && !d[0].runs_with(Vmm::Qemu));
        let n = parse("t", "sn shm 256M 1 poweroff - snapshot\n").unwrap();
        assert!(n[0].extra.snapshot && n[0].runs_with(Vmm::Shmvm) && !n[0].runs_with(Vmm::Qemu));
    }

    #[test]
    fn mistakes_name_the_line_and_column() {
        let e = |t: &str| parse("f", t).unwrap_err().to_string();
        assert_eq!(
            e("a ram 256M 1 poweroff - -\nb rom 256M 1 poweroff - -"),
            "f:2: backend 'rom': ram, file-tmpfs, file-disk, memfd or shm"
        );
        assert_eq!(
            e("a ram 256M 1 halt - -"),
            "f:1: action 'halt': poweroff, reboot, powerdown or stopcont"
        );
        assert_eq!(
            e("a ram 256M 1 poweroff file:3M -"),
            "f:1: ivshmem 'file:3M': the size must be a power of two"
        );
        assert_eq!(
            e("a ram 256M 1 poweroff - vub,vub-kill"),
            "f:1: extra: both vub and vub-kill"
        );
        assert_eq!(
            e("a ram 256M 1 poweroff - mq2"),
            "f:1: extra: mq2 and ring64 need vub or vub-kill"
        );
        assert_eq!(
            e("a ram 256M 1 poweroff -"),
            "f:1: 6 columns, want 7: name backend mem smp action ivshmem extra"
        );
        assert_eq!(
            e("a ram 256M 1 poweroff - -\na ram 256M 1 poweroff - -"),
            "f:2: scenario 'a' defined twice"
        );
        assert_eq!(
            e("a memfd 256M 1 poweroff - doorbell"),
            "f:1: extra: doorbell needs backend ram, ivshmem - and no vub (the server owns the region)"
        );
        assert_eq!(
            e("a memfd 256M 1 poweroff - snapshot"),
            "f:1: extra: snapshot needs backend shm, action poweroff, ivshmem - and no vub, doorbell or vuser"
        );
        assert_eq!(e("# nothing\n"), "f:0: no scenarios");
    }
}
