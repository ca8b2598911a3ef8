//! `-machine`/`-M`, `-m`, `-smp`, `-numa`, `-mem-path`, `-mem-prealloc`:
//! the machine type, where guest RAM comes from, and the CPU topology.

use std::path::Path;

use memory::{BackendConfig, BackendKind, BackendProps, KindOptions};

use super::{DEFAULT_RAM_ID, Error, MAX_VCPUS, Prop, TypeInfo, invalid, keyval};

const MACHINE_PROPS: &[Prop] = &[
    Prop::new(
        "type",
        "string",
        "shmvm",
        "the machine type (implied first value)",
    ),
    Prop::new(
        "memory-backend",
        "id",
        "",
        "an -object memory backend as guest RAM",
    ),
    Prop::new("accel", "kvm", "kvm", "kvm is shmvm's only accelerator"),
    Prop::new(
        "kernel-irqchip",
        "on",
        "on",
        "the in-kernel irqchip is always used",
    ),
    Prop::new("usb", "off", "off", "no USB"),
    Prop::new("vmport", "off", "off", "no VMware port"),
    Prop::new("dump-guest-core", "bool", "on", "accepted, no effect"),
    Prop::new("graphics", "off", "off", "no display"),
    Prop::new(
        "x-option-roms",
        "bool",
        "off",
        "microvm: shmvm loads no option ROMs",
    ),
    Prop::new(
        "pit",
        "on|auto",
        "on",
        "microvm: the in-kernel i8254 is always there",
    ),
    Prop::new(
        "pic",
        "on|auto",
        "on",
        "microvm: the in-kernel i8259 is always there",
    ),
    Prop::new("isa-serial", "on", "on", "microvm: COM1 is always there"),
    Prop::new("rtc", "off|auto", "off", "microvm: shmvm has no CMOS RTC"),
    Prop::new("acpi", "on|auto", "on", "shmvm always writes ACPI tables"),
];

/// The machine types shmvm accepts: they all mean shmvm's one machine
/// (8250 COM1, i8042 reset, PCI host bridge, the devices given).
pub const MACHINES: &[TypeInfo] = &[
    TypeInfo::new(
        "shmvm",
        "shmvm's machine: COM1, i8042 reset, PCI root, direct kernel boot (default)",
        MACHINE_PROPS,
        &[],
    ),
    TypeInfo::new("microvm", "accepted: means shmvm", MACHINE_PROPS, &[]),
    TypeInfo::new(
        "q35",
        "accepted: means shmvm (alias pc-q35-*)",
        MACHINE_PROPS,
        &[],
    ),
    TypeInfo::new(
        "pc",
        "accepted: means shmvm (alias pc-i440fx-*)",
        MACHINE_PROPS,
        &[],
    ),
];

fn machine_type_known(t: &str) -> bool {
    MACHINES.iter().any(|m| m.name == t) || t.starts_with("pc-q35-") || t.starts_with("pc-i440fx-")
}

/// What `-machine` options say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineOptions {
    pub machine_type: Option<String>,
    pub memory_backend: Option<String>,
}

/// Parses every `-machine`/`-M` value; QEMU merges them, later keys win.
pub fn parse_machine(values: &[String]) -> Result<MachineOptions, Error> {
    let mut m = MachineOptions::default();
    for v in values {
        let mut kv = super::keyval("-machine", v, Some("type"))?;
        if let Some(t) = kv.take("type") {
            if !machine_type_known(&t) {
                return Err(invalid(
                    "-machine",
                    format!("unknown machine type '{t}' (see -machine help)"),
                ));
            }
            log::info!("-machine {t}: shmvm's machine provides its devices (no-op)");
            m.machine_type = Some(t);
        }
        if let Some(id) = kv.take("memory-backend") {
            if id.is_empty() {
                return Err(invalid("-machine", "memory-backend= needs an id"));
            }
            m.memory_backend = Some(id);
        }
        if let Some(a) = kv.take("accel") {
            // QEMU tries "kvm:tcg" left to right; the host's accelerator
            // (KVM on Linux, HVF on macOS) is always there.
            let host = crate::hv::HOST_ACCEL;
            if a.split(':').next() != host {
                let why = match host {
                    Some("kvm") => "shmvm runs on KVM only (accel=kvm)",
                    Some(_) => "shmvm runs on HVF only on macOS (accel=hvf)",
                    None => "no accelerator is available on this host",
                };
                return Err(invalid("-machine", format!("accel={a}: {why}")));
            }
            log::info!("-machine accel={a}: the host's accelerator, shmvm's only one (no-op)");
        }
        let only = |kv: &mut keyval::KeyVal, key: &'static str, ok: &[&str]| match kv.take(key) {
            Some(v) if !ok.contains(&v.as_str()) => Err(invalid(
                "-machine",
                format!("{key}={v} is not supported (only {})", ok.join(", ")),
            )),
            Some(v) => {
                log::info!("-machine {key}={v}: no-op");
                Ok(())
            }
            None => Ok(()),
        };
        only(&mut kv, "kernel-irqchip", &["on", "split"])?;
        only(&mut kv, "usb", &["off", "no", "false"])?;
        only(&mut kv, "vmport", &["off", "no", "false", "auto"])?;
        only(&mut kv, "graphics", &["off", "no", "false"])?;
        kv.take_bool("dump-guest-core")
            .map_err(|e| invalid("-machine", e.to_string()))?;
        // microvm's switches: the setting shmvm's machine has is a no-op,
        // the other one is refused naming the property.
        kv.take_bool("x-option-roms")
            .map_err(|e| invalid("-machine", e.to_string()))?;
        only(&mut kv, "pit", &["on", "auto"])?;
        only(&mut kv, "pic", &["on", "auto"])?;
        only(&mut kv, "isa-serial", &["on"])?;
        only(&mut kv, "rtc", &["off", "auto"])?;
        only(&mut kv, "acpi", &["on", "auto"])?;
        let known = MACHINES[0].names();
        kv.finish(&known)
            .map_err(|e| invalid("-machine", e.to_string()))?;
    }
    Ok(m)
}

/// `-m [size=]SIZE` (default unit MiB); the last `-m` wins.
pub fn parse_memory(values: &[String]) -> Result<Option<u64>, Error> {
    let Some(v) = values.last() else {
        return Ok(None);
    };
    let mut kv = super::keyval("-m", v, Some("size"))?;
    if let Some(k) = ["slots", "maxmem"].into_iter().find(|k| kv.has(k)) {
        return Err(invalid(
            "-m",
            format!("{k}=: memory hotplug is not supported (only -m SIZE)"),
        ));
    }
    let size = kv
        .take_size("size", 1 << 20)
        .map_err(|e| invalid("-m", e.to_string()))?
        .ok_or_else(|| invalid("-m", format!("'{v}': expected a size, e.g. -m 512M")))?;
    kv.finish(&["size"])
        .map_err(|e| invalid("-m", e.to_string()))?;
    super::check_ram_size("-m", size)?;
    Ok(Some(size))
}

/// `-numa node,memdev=ID` (one node): which backend is guest RAM.
pub fn parse_numa(values: &[String]) -> Result<Option<String>, Error> {
    let mut memdev = None;
    for v in values {
        let mut kv = super::keyval("-numa", v, Some("type"))?;
        match kv.take("type").as_deref() {
            Some("node") => {}
            Some(t) => {
                return Err(invalid(
                    "-numa",
                    format!("'{t}' is not supported (only one 'node' with memdev=ID)"),
                ));
            }
            None => return Err(invalid("-numa", "expected node,memdev=ID")),
        }
        if memdev.is_some() {
            return Err(invalid(
                "-numa",
                "more than one NUMA node is not supported (one node,memdev=ID)",
            ));
        }
        let id = kv
            .take_str("memdev")
            .map_err(|e| invalid("-numa", e.to_string()))?
            .ok_or_else(|| {
                invalid(
                    "-numa",
                    "node needs memdev=ID (an -object memory backend; node,mem= is not supported)",
                )
            })?;
        if let Some(n) = kv
            .take_num("nodeid")
            .map_err(|e| invalid("-numa", e.to_string()))?
            && n != 0
        {
            return Err(invalid(
                "-numa",
                format!("nodeid={n}: the one node is node 0"),
            ));
        }
        // cpus= of the one node: every vCPU is in it anyway.
        kv.take_all("cpus");
        kv.finish(&["memdev", "nodeid", "cpus"])
            .map_err(|e| invalid("-numa", e.to_string()))?;
        memdev = Some(id);
    }
    Ok(memdev)
}

/// The RAM backend QEMU creates without a memdev: `memory-backend-ram`, or
/// `memory-backend-file` with `mem-path=DIR` for `-mem-path` (share=off, as
/// QEMU's), with `prealloc=on` for `-mem-prealloc`.
pub fn default_ram(
    size: u64,
    mem_path: Option<&Path>,
    prealloc: bool,
) -> Result<BackendConfig, Error> {
    let props = BackendProps {
        size: Some(size),
        prealloc: Some(prealloc),
        ..BackendProps::default()
    };
    let opts = match mem_path {
        Some(p) => {
            let mut o = KindOptions::new(BackendKind::File);
            if let KindOptions::File(f) = &mut o {
                f.mem_path = Some(p.to_path_buf());
            }
            o
        }
        None => KindOptions::Ram,
    };
    let option = if mem_path.is_some() {
        "-mem-path"
    } else {
        "-m"
    };
    BackendConfig::from_props(DEFAULT_RAM_ID, props, opts)
        .map_err(|e| invalid(option, e.to_string()))
}

/// The CPU topology, QEMU's defaults filled in (x86: one die, one module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// vCPUs present at boot.
    pub cpus: u8,
    pub sockets: u8,
    pub cores: u8,
    pub threads: u8,
    /// sockets * cores * threads: the CPUs the firmware tables may list.
    pub maxcpus: u8,
}

impl Default for Topology {
    fn default() -> Topology {
        Topology {
            cpus: 1,
            sockets: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1,
        }
    }
}

/// `-smp [cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M]`, with QEMU's
/// (>= 6.2) rules: missing values are derived preferring cores over sockets,
/// then threads; the product must equal maxcpus, and maxcpus >= cpus.
pub fn parse_smp(values: &[String]) -> Result<Topology, Error> {
    const KEYS: [&str; 10] = [
        "cpus", "sockets", "cores", "threads", "maxcpus", "dies", "clusters", "modules", "books",
        "drawers",
    ];
    let mut given = [None::<u64>; 10];
    for v in values {
        let mut kv = super::keyval("-smp", v, Some("cpus"))?;
        for (i, k) in KEYS.iter().enumerate() {
            if let Some(n) = kv.take_num(k).map_err(|e| invalid("-smp", e.to_string()))? {
                if n == 0 {
                    return Err(invalid(
                        "-smp",
                        format!("{k}=0: CPU topology parameters must be greater than zero"),
                    ));
                }
                given[i] = Some(n);
            }
        }
        kv.finish(&KEYS[..5])
            .map_err(|e| invalid("-smp", e.to_string()))?;
    }
    for (i, k) in KEYS.iter().enumerate().skip(5) {
        if let Some(n) = given[i]
            && n != 1
        {
            return Err(invalid(
                "-smp",
                format!("{k}={n} is not supported (sockets, cores and threads only)"),
            ));
        }
    }
    let [cpus, sockets, cores, threads, maxcpus, ..] = given;
    let (cpus, mut sockets, mut cores, mut threads, mut maxcpus) = (
        cpus.unwrap_or(0),
        sockets.unwrap_or(0),
        cores.unwrap_or(0),
        threads.unwrap_or(0),
        maxcpus.unwrap_or(0),
    );
    if cpus == 0 && maxcpus == 0 {
        sockets = sockets.max(1);
        cores = cores.max(1);
        threads = threads.max(1);
    } else {
        maxcpus = if maxcpus > 0 { maxcpus } else { cpus };
        if cores == 0 {
            sockets = sockets.max(1);
            threads = threads.max(1);
            cores = maxcpus / (sockets * threads);
        } else if sockets == 0 {
            threads = threads.max(1);
            sockets = maxcpus / (cores * threads);
        }
        if threads == 0 {
            threads = maxcpus / (sockets * cores).max(1);
        }
    }
    let total = sockets * cores * threads;
    let maxcpus = if maxcpus > 0 { maxcpus } else { total };
    let cpus = if cpus > 0 { cpus } else { maxcpus };
    if total != maxcpus || total == 0 {
        return Err(invalid(
            "-smp",
            format!(
                "invalid CPU topology: sockets ({sockets}) * cores ({cores}) * threads ({threads}) \
                 != maxcpus ({maxcpus})"
            ),
        ));
    }
    if maxcpus < cpus {
        return Err(invalid(
            "-smp",
            format!("invalid CPU topology: maxcpus ({maxcpus}) < cpus ({cpus})"),
        ));
    }
    let limit = u64::from(MAX_VCPUS);
    if maxcpus > limit {
        return Err(invalid(
            "-smp",
            format!(
                "{maxcpus} CPUs is more than shmvm's limit of {MAX_VCPUS} (a vCPU count between 1 and {MAX_VCPUS})"
            ),
        ));
    }
    // Every value is at most maxcpus <= MAX_VCPUS, so each fits in a u8.
    let u = |n: u64| u8::try_from(n).unwrap_or(MAX_VCPUS);
    Ok(Topology {
        cpus: u(cpus),
        sockets: u(sockets),
        cores: u(cores),
        threads: u(threads),
        maxcpus: u(maxcpus),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smp(v: &[&str]) -> Result<Topology, String> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        parse_smp(&v).map_err(|e| e.to_string())
    }

    fn t(cpus: u8, sockets: u8, cores: u8, threads: u8, maxcpus: u8) -> Topology {
        Topology {
            cpus,
            sockets,
            cores,
            threads,
            maxcpus,
        }
    }

    #[test]
    fn smp_follows_qemu_defaulting() {
        assert_eq!(smp(&[]), Ok(Topology::default()));
        assert_eq!(smp(&["4"]), Ok(t(4, 1, 4, 1, 4)));
        assert_eq!(smp(&["cpus=4"]), Ok(t(4, 1, 4, 1, 4)));
        assert_eq!(smp(&["8,sockets=2"]), Ok(t(8, 2, 4, 1, 8)));
        assert_eq!(smp(&["8,cores=2"]), Ok(t(8, 4, 2, 1, 8)));
        assert_eq!(smp(&["8,sockets=2,cores=2"]), Ok(t(8, 2, 2, 2, 8)));
        assert_eq!(smp(&["2,maxcpus=4"]), Ok(t(2, 1, 4, 1, 4)));
        assert_eq!(smp(&["sockets=2,cores=2,threads=2"]), Ok(t(8, 2, 2, 2, 8)));
        assert_eq!(smp(&["2", "4"]), Ok(t(4, 1, 4, 1, 4)), "last wins");
        assert_eq!(smp(&["4,dies=1"]), Ok(t(4, 1, 4, 1, 4)));
        assert_eq!(smp(&["0x2"]), Ok(t(2, 1, 2, 1, 2)));
    }

    #[test]
    fn smp_errors_name_the_option() {
        for (v, why) in [
            ("0", "greater than zero"),
            ("999", "limit of 64"),
            ("4,sockets=3", "!= maxcpus"),
            ("4,maxcpus=2", "maxcpus (2) < cpus (4)"),
            ("4,dies=2", "dies=2 is not supported"),
            ("4,foo=1", "unknown property 'foo'"),
            ("x", "expected a number"),
        ] {
            let e = smp(&[v]).unwrap_err();
            assert!(e.starts_with("-smp") && e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn memory_last_wins_with_qemu_units() {
        let m = |v: &[&str]| parse_memory(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(m(&[]).unwrap(), None);
        assert_eq!(m(&["512"]).unwrap(), Some(512 << 20));
        assert_eq!(m(&["64M", "1G"]).unwrap(), Some(1 << 30));
        assert_eq!(m(&["size=256M"]).unwrap(), Some(256 << 20));
        let e = m(&["1G,maxmem=2G"]).unwrap_err().to_string();
        assert!(e.starts_with("-m: maxmem"), "{e}");
        assert!(m(&["lots"]).is_err());
        assert!(m(&["1"]).is_err());
    }

    #[test]
    fn machine_types_and_props() {
        let m = |v: &str| parse_machine(&[v.to_string()]);
        assert_eq!(
            m("q35,accel=kvm:tcg,memory-backend=r").unwrap(),
            MachineOptions {
                machine_type: Some("q35".into()),
                memory_backend: Some("r".into())
            }
        );
        m("pc-q35-9.2").unwrap();
        m("microvm,usb=off,kernel-irqchip=on").unwrap();
        m("microvm,x-option-roms=off,rtc=off,pit=on,acpi=on").unwrap();
        for (v, why) in [
            ("accel=tcg", "KVM only"),
            ("virt", "unknown machine type 'virt'"),
            ("q35,usb=on", "usb=on is not supported"),
            (
                "microvm,pit=off",
                "pit=off is not supported (only on, auto)",
            ),
            ("microvm,isa-serial=off", "isa-serial=off is not supported"),
            ("q35,smm=off", "unknown property 'smm'"),
        ] {
            let e = m(v).unwrap_err().to_string();
            assert!(e.starts_with("-machine: ") && e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn numa_one_node_with_memdev() {
        let n = |v: &[&str]| parse_numa(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(n(&["node,memdev=mem"]).unwrap().as_deref(), Some("mem"));
        assert_eq!(
            n(&["node,nodeid=0,cpus=0-1,memdev=m"]).unwrap().as_deref(),
            Some("m")
        );
        for (v, why) in [
            (vec!["node,mem=1G"], "needs memdev"),
            (
                vec!["node,memdev=a", "node,memdev=b"],
                "more than one NUMA node",
            ),
            (vec!["dist,src=0,dst=1,val=20"], "'dist' is not supported"),
        ] {
            let e = n(&v).unwrap_err().to_string();
            assert!(e.starts_with("-numa: ") && e.contains(why), "{v:?}: {e}");
        }
    }

    #[test]
    fn mem_path_and_prealloc_make_the_default_backend() {
        let r = default_ram(64 << 20, Some(Path::new("/dev/hugepages")), true).unwrap();
        assert_eq!(r.kind(), BackendKind::File);
        assert_eq!(r.mem_path(), Some(Path::new("/dev/hugepages")));
        assert!(r.prealloc() && !r.share());
        let r = default_ram(64 << 20, None, true).unwrap();
        assert_eq!(
            (r.kind(), r.prealloc(), r.id()),
            (BackendKind::Ram, true, "pc.ram")
        );
    }
}
