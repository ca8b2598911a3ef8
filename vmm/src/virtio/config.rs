//! Command-line spellings of the built-in virtio devices, as QEMU's:
//!
//! - `-drive file=IMG,if=virtio,format=raw[,readonly=on][,cache=none]`:
//!   a virtio-blk-pci device on a raw image (`cache=none`: O_DIRECT);
//! - `-drive file=IMG,if=none,id=ID,...` with
//!   `-device virtio-blk-pci,drive=ID[,serial=S][,addr=SLOT]`;
//! - `-device virtio-rng-pci[,addr=SLOT]`;
//! - `-device virtio-serial-pci` with `virtconsole` / `virtserialport`
//!   ports ([`super::serial`]).

use std::fmt;
use std::path::PathBuf;

use crate::config::keyval::KeyVal;
use crate::config::{Error, invalid};

/// `cache=`: where writes go before a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// `writeback` (QEMU's default): the host page cache; flushes are
    /// fdatasync.
    Writeback,
    /// `none`: O_DIRECT, around the host page cache; flushes still sync.
    Direct,
}

/// One `-drive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The option as written, for messages.
    pub spec: String,
    pub id: Option<String>,
    pub file: PathBuf,
    /// `if=virtio` (a device of its own) or `if=none` (for `-device`).
    pub own_device: bool,
    pub readonly: bool,
    pub cache: Cache,
}

/// One virtio-blk-pci device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkConfig {
    pub drive: DriveConfig,
    /// GET_ID's answer (QEMU's `serial=`), at most 20 bytes.
    pub serial: Option<String>,
    pub slot: Option<u8>,
    /// The device's `id=` (none for an `if=virtio` drive's own device).
    pub id: Option<String>,
}

impl fmt::Display for BlkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.drive.id {
            Some(id) if !self.drive.own_device => write!(f, "virtio-blk-pci,drive={id}"),
            _ => write!(f, "-drive {}", self.drive.spec),
        }
    }
}

/// `-device virtio-rng-pci`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngConfig {
    pub slot: Option<u8>,
    pub id: Option<String>,
}

fn slot(kv: &mut KeyVal, bad: &dyn Fn(String) -> Error) -> Result<Option<u8>, Error> {
    match kv.take("addr") {
        None => Ok(None),
        Some(v) => crate::ivshmem::parse_slot(&v).map(Some).ok_or_else(|| {
            bad(format!(
                "addr='{v}' is not a PCI slot 1..1f (hex, optionally SLOT.0)"
            ))
        }),
    }
}

/// Parses one `-drive` value.
pub fn parse_drive(spec: &str) -> Result<DriveConfig, Error> {
    let mut kv = crate::config::keyval("-drive", spec, None)?;
    let bad = |reason: String| invalid("-drive", format!("'{spec}': {reason}"));
    let kve = |e: crate::config::keyval::Error| bad(e.to_string());
    let file = kv
        .take_str("file")
        .map_err(kve)?
        .ok_or_else(|| bad("file= is required (shmvm has no removable media)".into()))?;
    let own_device = match kv.take("if").as_deref() {
        Some("virtio") => true,
        Some("none") => false,
        Some(other) => {
            return Err(bad(format!(
                "if={other} is not supported (virtio, or none with -device virtio-blk-pci,drive=ID)"
            )));
        }
        None => {
            return Err(bad(
                "if=ide (QEMU's default on a PC) is not supported: add if=virtio".into(),
            ));
        }
    };
    match kv.take("format").as_deref() {
        Some("raw") => {}
        Some(other) => {
            return Err(bad(format!(
                "format={other} is not supported (raw only; convert with qemu-img convert -O raw)"
            )));
        }
        None => {
            return Err(bad(
                "format= is required: shmvm does not probe image formats (format=raw)".into(),
            ));
        }
    }
    let readonly = kv.take_bool("readonly").map_err(kve)?.unwrap_or(false);
    let cache = match kv.take("cache").as_deref() {
        None | Some("writeback") => Cache::Writeback,
        Some("none") => Cache::Direct,
        Some(other) => {
            return Err(bad(format!(
                "cache={other} is not supported (writeback, none)"
            )));
        }
    };
    match kv.take("media").as_deref() {
        None | Some("disk") => {}
        Some(other) => return Err(bad(format!("media={other} is not supported (disk)"))),
    }
    let id = kv.take_str("id").map_err(kve)?;
    kv.finish(&["file", "if", "format", "readonly", "cache", "media", "id"])
        .map_err(kve)?;
    if !own_device && id.is_none() {
        return Err(bad(
            "if=none needs id= (for -device virtio-blk-pci,drive=ID)".into(),
        ));
    }
    Ok(DriveConfig {
        spec: spec.to_string(),
        id,
        file: PathBuf::from(file),
        own_device,
        readonly,
        cache,
    })
}

/// A `-device virtio-blk-pci,drive=ID` before its drive is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkDevice {
    pub drive: String,
    pub serial: Option<String>,
    pub slot: Option<u8>,
    pub id: Option<String>,
}

/// Properties of `-device virtio-blk-pci`.
pub const BLK_PROPS: &[&str] = &["drive", "serial", "addr", "id"];

pub fn parse_blk_device(mut kv: KeyVal) -> Result<BlkDevice, Error> {
    let bad = |reason: String| invalid("-device", format!("virtio-blk-pci: {reason}"));
    let kve = |e: crate::config::keyval::Error| bad(e.to_string());
    let drive = kv.take_str("drive").map_err(kve)?;
    let serial = kv.take_str("serial").map_err(kve)?;
    let slot = slot(&mut kv, &bad)?;
    let id = kv.take_str("id").map_err(kve)?;
    kv.finish(BLK_PROPS).map_err(kve)?;
    let drive = drive.ok_or_else(|| bad("drive= is required (a -drive if=none,id=ID)".into()))?;
    if serial.as_ref().is_some_and(|s| s.len() > 20) {
        return Err(bad("serial= is longer than 20 bytes".into()));
    }
    Ok(BlkDevice {
        drive,
        serial,
        slot,
        id,
    })
}

pub fn parse_rng_device(mut kv: KeyVal) -> Result<RngConfig, Error> {
    let bad = |reason: String| invalid("-device", format!("virtio-rng-pci: {reason}"));
    let kve = |e: crate::config::keyval::Error| bad(e.to_string());
    let slot = slot(&mut kv, &bad)?;
    let id = kv.take_str("id").map_err(kve)?;
    kv.finish(&["addr", "id"]).map_err(kve)?;
    Ok(RngConfig { slot, id })
}

/// Binds `virtio-blk-pci,drive=ID` to its `if=none` drive.
pub fn bind(drives: &[DriveConfig], dev: BlkDevice) -> Result<BlkConfig, Error> {
    let bad = |why: &str| {
        invalid(
            "-device",
            format!("virtio-blk-pci,drive={}: {why}", dev.drive),
        )
    };
    let d = drives
        .iter()
        .find(|d| d.id.as_deref() == Some(dev.drive.as_str()))
        .ok_or_else(|| bad("no -drive has that id"))?;
    if d.own_device {
        return Err(bad(
            "that drive is if=virtio, a device of its own (use if=none)",
        ));
    }
    Ok(BlkConfig {
        drive: d.clone(),
        serial: dev.serial,
        slot: dev.slot,
        id: dev.id,
    })
}

/// Checks the drives' ids are unique and each `if=none` drive has at most
/// one device (`bound`), and returns a device for each `if=virtio` drive.
pub fn check_drives(drives: &[DriveConfig], bound: &[&BlkConfig]) -> Result<Vec<BlkConfig>, Error> {
    for (i, d) in drives.iter().enumerate() {
        if let Some(id) = &d.id
            && drives[..i].iter().any(|o| o.id.as_ref() == Some(id))
        {
            return Err(invalid("-drive", format!("duplicate id '{id}'")));
        }
    }
    for (i, b) in bound.iter().enumerate() {
        if bound[..i].iter().any(|o| o.drive.id == b.drive.id) {
            return Err(invalid(
                "-device",
                format!("{b}: the drive is already used by another virtio-blk-pci"),
            ));
        }
    }
    Ok(drives
        .iter()
        .filter(|d| d.own_device)
        .map(|d| BlkConfig {
            drive: d.clone(),
            serial: None,
            slot: None,
            id: None,
        })
        .collect())
}

/// Where a virtio-serial port's output goes (its `-chardev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSink {
    Stdout,
    /// `file,path=`: created or truncated, as QEMU's file chardev.
    File(PathBuf),
    Null,
    /// `socket,path=,server=on,wait=off`: shmvm listens; one client at a
    /// time gets the output and gives the port its input.
    Listen(PathBuf),
}

/// One `virtconsole` or `virtserialport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    pub console: bool,
    pub chardev: String,
    pub name: Option<String>,
    pub nr: Option<u32>,
    /// `bus=ID.0`: the virtio-serial-pci whose id is ID.
    pub bus: Option<String>,
    /// Resolved from `chardev=`.
    pub sink: PortSink,
}

/// `-device virtio-serial-pci` and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    pub id: Option<String>,
    pub slot: Option<u8>,
    /// Ports the guest driver sets up queues for (QEMU's default 31).
    pub max_ports: u32,
    pub ports: Vec<PortConfig>,
}

impl fmt::Display for SerialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "virtio-serial-pci,id={id}"),
            None => f.write_str("virtio-serial-pci"),
        }
    }
}

/// QEMU's default `max_ports`.
pub const DEFAULT_MAX_PORTS: u32 = 31;

pub fn parse_serial_device(mut kv: KeyVal) -> Result<SerialConfig, Error> {
    let bad = |reason: String| invalid("-device", format!("virtio-serial-pci: {reason}"));
    let kve = |e: crate::config::keyval::Error| bad(e.to_string());
    let slot = slot(&mut kv, &bad)?;
    let max_ports = match kv.take_num("max_ports").map_err(kve)? {
        None => DEFAULT_MAX_PORTS,
        Some(n @ 1..=31) => n as u32,
        Some(n) => return Err(bad(format!("max_ports={n} is not 1..31"))),
    };
    let id = kv.take_str("id").map_err(kve)?;
    kv.finish(&["addr", "max_ports", "id"]).map_err(kve)?;
    Ok(SerialConfig {
        id,
        slot,
        max_ports,
        ports: Vec::new(),
    })
}

/// Properties of `virtconsole` and `virtserialport`.
pub const PORT_PROPS: &[&str] = &["chardev", "name", "nr", "bus", "id"];

pub fn parse_port_device(mut kv: KeyVal, console: bool) -> Result<PortConfig, Error> {
    let what = if console {
        "virtconsole"
    } else {
        "virtserialport"
    };
    let bad = |reason: String| invalid("-device", format!("{what}: {reason}"));
    let kve = |e: crate::config::keyval::Error| bad(e.to_string());
    let chardev = kv.take_str("chardev").map_err(kve)?;
    let name = kv.take_str("name").map_err(kve)?;
    let nr = match kv.take_num("nr").map_err(kve)? {
        None => None,
        Some(n) if n < 31 => Some(n as u32),
        Some(n) => return Err(bad(format!("nr={n} is not 0..30"))),
    };
    if !console && nr == Some(0) {
        return Err(bad("nr=0 is reserved for virtconsole (as in QEMU)".into()));
    }
    let bus = match kv.take_str("bus").map_err(kve)? {
        None => None,
        Some(b) => Some(
            b.strip_suffix(".0")
                .map(str::to_string)
                .ok_or_else(|| bad(format!("bus={b}: want ID.0 (a virtio-serial-pci's id)")))?,
        ),
    };
    kv.take("id");
    kv.finish(PORT_PROPS).map_err(kve)?;
    let chardev = chardev.ok_or_else(|| bad("chardev= is required".into()))?;
    Ok(PortConfig {
        console,
        chardev,
        name,
        nr,
        bus,
        sink: PortSink::Null,
    })
}

/// The chardevs a port can use: (id, sink) for each stdio, file and null
/// `-chardev`, and each listening socket in `listeners` (no `-mon` took
/// it); a socket shmvm connects to is a vhost-user or ivshmem back-end's.
pub fn port_sinks(
    chardevs: &[String],
    listeners: &[String],
) -> Result<Vec<(String, PortSink)>, Error> {
    use crate::config::chardev::{Backend, parse_chardev};
    let mut out = Vec::new();
    for c in chardevs {
        let c = parse_chardev(c)?;
        let sink = match c.backend {
            Backend::Stdio(_) => PortSink::Stdout,
            Backend::File(p) => PortSink::File(p),
            Backend::Null => PortSink::Null,
            Backend::Server(p) if listeners.contains(&c.id) => PortSink::Listen(p),
            Backend::Socket(_) | Backend::Server(_) => continue,
        };
        out.push((c.id, sink));
    }
    Ok(out)
}

/// Attaches each port to its virtio-serial-pci (`bus=`, or the first with
/// room),
/// numbers it as QEMU does (a virtconsole takes 0 when free, the others
/// the lowest free number from 1) and resolves its chardev.
pub fn attach_ports(
    serials: &mut [&mut SerialConfig],
    ports: Vec<PortConfig>,
    chardevs: &[(String, PortSink)],
) -> Result<(), Error> {
    for mut p in ports {
        let what = if p.console {
            "virtconsole"
        } else {
            "virtserialport"
        };
        let bad =
            |reason: String| invalid("-device", format!("{what},chardev={}: {reason}", p.chardev));
        // QEMU's bus search: the first virtio-serial-pci with a free port
        // (virtme-ng adds one virtio-serial-pci per port; all its ports
        // land on the first).
        let first = if p.console { 0 } else { 1 };
        let free = |s: &SerialConfig| {
            (first..s.max_ports).any(|n| !s.ports.iter().any(|o| o.nr == Some(n)))
        };
        // A socket has one listener, and QEMU one frontend per chardev.
        if chardevs
            .iter()
            .any(|(id, s)| *id == p.chardev && matches!(s, PortSink::Listen(_)))
            && serials
                .iter()
                .flat_map(|s| s.ports.iter())
                .any(|o| o.chardev == p.chardev)
        {
            return Err(bad("the socket chardev is used by another port".into()));
        }
        let serial = match &p.bus {
            Some(b) => serials
                .iter_mut()
                .find(|s| s.id.as_deref() == Some(b.as_str())),
            None => match serials.iter().position(|s| free(s)) {
                Some(i) => serials.get_mut(i),
                None => serials.first_mut(),
            },
        }
        .ok_or_else(|| {
            bad("no virtio-serial-pci bus for it (add -device virtio-serial-pci)".into())
        })?;
        p.sink = chardevs
            .iter()
            .find(|(id, _)| *id == p.chardev)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                bad(format!(
                    "no -chardev with id={} (stdio, file, null, or socket,server=on,wait=off \
                     not used by -mon)",
                    p.chardev
                ))
            })?;

        if let Some(name) = &p.name
            && serial.ports.iter().any(|o| o.name.as_ref() == Some(name))
        {
            return Err(bad(format!("name={name} is taken by another port")));
        }
        let taken = |n: u32| serial.ports.iter().any(|o| o.nr == Some(n));
        let nr = match p.nr {
            Some(n) if taken(n) => return Err(bad(format!("nr={n} is taken by another port"))),
            Some(n) => n,
            None if p.console && !taken(0) => 0,
            None => (1..serial.max_ports).find(|&n| !taken(n)).ok_or_else(|| {
                bad(format!(
                    "all {} ports are taken (max_ports)",
                    serial.max_ports
                ))
            })?,
        };
        if nr >= serial.max_ports {
            return Err(bad(format!(
                "nr={nr} is not below max_ports={}",
                serial.max_ports
            )));
        }
        p.nr = Some(nr);
        serial.ports.push(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(s: &str) -> Result<DriveConfig, String> {
        parse_drive(s).map_err(|e| e.to_string())
    }

    #[test]
    fn drive_spellings() {
        let d = drive("file=/tmp/a.img,if=virtio,format=raw").unwrap();
        assert!(d.own_device && !d.readonly);
        assert_eq!(
            (d.file.to_str(), d.cache),
            (Some("/tmp/a.img"), Cache::Writeback)
        );
        let d = drive("file=a,,b.img,if=none,id=d0,format=raw,readonly=on,cache=none").unwrap();
        assert_eq!(d.file.to_str(), Some("a,b.img"));
        assert_eq!(
            (d.id.as_deref(), d.readonly, d.cache),
            (Some("d0"), true, Cache::Direct)
        );
    }

    #[test]
    fn drive_refusals_name_the_whole_option() {
        for (spec, why) in [
            (
                "file=a,if=virtio,format=qcow2",
                "format=qcow2 is not supported",
            ),
            ("file=a,if=ide,format=raw", "if=ide is not supported"),
            ("file=a,format=raw", "if=ide (QEMU's default"),
            ("file=a,if=virtio", "format= is required"),
            ("if=virtio,format=raw", "file= is required"),
            ("file=a,if=virtio,format=raw,cache=unsafe", "cache=unsafe"),
            ("file=a,if=none,format=raw", "if=none needs id="),
            ("file=a,if=virtio,format=raw,aio=native", "'aio'"),
            ("file=a,if=virtio,format=raw,readonly=maybe", "readonly"),
        ] {
            let e = drive(spec).unwrap_err();
            assert!(e.starts_with(&format!("-drive: '{spec}': ")), "{e}");
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn devices_bind_to_drives() {
        let drives = [
            drive("file=a,if=none,id=d0,format=raw").unwrap(),
            drive("file=b,if=virtio,format=raw,id=d1").unwrap(),
        ];
        let kv = |s| crate::config::keyval("-device", s, None).unwrap();
        let dev = |s| parse_blk_device(kv(s));
        let b = bind(&drives, dev("drive=d0,serial=abc,addr=5").unwrap()).unwrap();
        assert_eq!((b.serial.as_deref(), b.slot), (Some("abc"), Some(5)));
        assert_eq!(b.to_string(), "virtio-blk-pci,drive=d0");
        let own = check_drives(&drives, &[&b]).unwrap();
        assert_eq!(own.len(), 1);
        assert_eq!(
            own[0].to_string(),
            "-drive file=b,if=virtio,format=raw,id=d1"
        );
        let e = check_drives(&drives, &[&b, &b]).unwrap_err().to_string();
        assert!(e.contains("already used"), "{e}");
        let e = |s| bind(&drives, dev(s).unwrap()).unwrap_err().to_string();
        assert!(e("drive=zz").contains("no -drive has that id"));
        assert!(e("drive=d1").contains("if=virtio"));
        let long = dev("drive=d0,serial=123456789012345678901");
        assert!(long.unwrap_err().to_string().contains("longer than 20"));
        assert!(
            dev("serial=x")
                .unwrap_err()
                .to_string()
                .contains("drive= is required")
        );
        let twice = [drives[0].clone(), drives[0].clone()];
        let e = check_drives(&twice, &[]).unwrap_err().to_string();
        assert_eq!(e, "-drive: duplicate id 'd0'");
    }

    fn serial(spec: &str) -> SerialConfig {
        parse_serial_device(crate::config::keyval("-device", spec, None).unwrap()).unwrap()
    }

    fn port(spec: &str, console: bool) -> PortConfig {
        parse_port_device(
            crate::config::keyval("-device", spec, None).unwrap(),
            console,
        )
        .unwrap()
    }

    #[test]
    fn ports_are_numbered_as_qemu_numbers_them() {
        let mut s = serial("id=vs0");
        assert_eq!(s.max_ports, 31);
        let chardevs = [
            ("ret".to_string(), PortSink::File("/tmp/ret".into())),
            ("con".to_string(), PortSink::Stdout),
        ];
        let ports = vec![
            port("chardev=ret,name=virtme.ret", false),
            port("chardev=con", true),
            port("chardev=ret,name=second,bus=vs0.0", false),
        ];
        attach_ports(&mut [&mut s], ports, &chardevs).unwrap();
        let got: Vec<_> = s.ports.iter().map(|p| (p.nr, p.name.as_deref())).collect();
        assert_eq!(
            got,
            [
                (Some(1), Some("virtme.ret")),
                (Some(0), None),
                (Some(2), Some("second"))
            ]
        );
        assert_eq!(s.ports[0].sink, PortSink::File("/tmp/ret".into()));
        assert_eq!(s.to_string(), "virtio-serial-pci,id=vs0");
    }

    #[test]
    fn port_refusals_name_the_device() {
        let chardevs = [("c".to_string(), PortSink::Null)];
        let attach = |serials: &mut [&mut SerialConfig], specs: &[(&str, bool)]| {
            let ports = specs.iter().map(|&(s, c)| port(s, c)).collect();
            attach_ports(serials, ports, &chardevs)
                .unwrap_err()
                .to_string()
        };
        let e = attach(&mut [], &[("chardev=c", false)]);
        assert!(
            e.starts_with("-device: virtserialport,chardev=c: no virtio-serial-pci"),
            "{e}"
        );
        let mut s = serial("max_ports=2");
        let e = attach(&mut [&mut s], &[("chardev=zz", false)]);
        assert!(e.contains("no -chardev with id=zz"), "{e}");
        let mut s = serial("max_ports=2");
        let e = attach(&mut [&mut s], &[("chardev=c", false), ("chardev=c", false)]);
        assert!(e.contains("all 2 ports are taken"), "{e}");
        let mut s = serial("id=a");
        let e = attach(
            &mut [&mut s],
            &[("chardev=c,name=x", false), ("chardev=c,name=x", false)],
        );
        assert!(e.contains("name=x is taken"), "{e}");
        let mut s = serial("id=a");
        let e = attach(&mut [&mut s], &[("chardev=c,bus=b.0", false)]);
        assert!(e.contains("no virtio-serial-pci"), "{e}");
    }

    /// Resolves `chardevs`, `mon` and one virtio-serial-pci's `ports` as
    /// the configuration does; the ports' sinks.
    fn resolve(chardevs: &[&str], mon: &[&str], ports: &[&str]) -> Result<Vec<PortSink>, String> {
        use crate::config::device::{DeviceConfig, check_serial};
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let chardevs = s(chardevs);
        let setup = crate::config::chardev::resolve_serial(&[], &chardevs, &s(mon), &[], false)
            .map_err(|e| e.to_string())?;
        let mut devs = vec![DeviceConfig::VirtioSerial(serial(""))];
        devs.extend(
            ports
                .iter()
                .map(|p| DeviceConfig::VirtioSerialPort(port(p, false))),
        );
        check_serial(&mut devs, &chardevs, &setup.listeners).map_err(|e| e.to_string())?;
        let DeviceConfig::VirtioSerial(sc) = &devs[0] else {
            panic!("the virtio-serial-pci moved")
        };
        Ok(sc.ports.iter().map(|p| p.sink.clone()).collect())
    }

    #[test]
    fn a_listening_socket_is_a_ports_or_a_monitors_never_both() {
        // A port's socket, a monitor's and a vhost-user back-end's together.
        let sinks = resolve(
            &[
                "socket,id=p,path=/p,server=on,wait=off",
                "socket,id=m,path=/m,server,nowait",
                "socket,id=vu,path=/vu",
            ],
            &["chardev=m,mode=control"],
            &["chardev=p,name=x"],
        )
        .unwrap();
        assert_eq!(sinks, [PortSink::Listen("/p".into())]);
        for (chardevs, mon, ports, want) in [
            (
                &["socket,id=m,path=/m,server=on,wait=off"][..],
                &["chardev=m,mode=control"][..],
                &["chardev=m"][..],
                "virtserialport,chardev=m: no -chardev with id=m",
            ),
            (
                &["socket,id=vu,path=/vu"],
                &[],
                &["chardev=vu"],
                "virtserialport,chardev=vu: no -chardev with id=vu",
            ),
            (
                &["socket,id=x,path=/a,server=on,wait=off"],
                &[],
                &[],
                "-chardev: listening socket 'x' (server=on) is not used by any -mon",
            ),
            (
                &["socket,id=p,path=/p,server=on,wait=off"],
                &[],
                &["chardev=p,name=a", "chardev=p,name=b"],
                "the socket chardev is used by another port",
            ),
        ] {
            let e = resolve(chardevs, mon, ports).unwrap_err();
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        }
    }

    #[test]
    fn ports_without_bus_go_to_the_first_serial_with_room() {
        // virtme-ng's spelling: a virtio-serial-pci before each port.
        let chardevs = [("c".to_string(), PortSink::Null)];
        let (mut a, mut b) = (serial("max_ports=2"), serial(""));
        let ports = ["name=x", "name=y", "name=z"]
            .iter()
            .map(|n| port(&format!("chardev=c,{n}"), false))
            .collect();
        attach_ports(&mut [&mut a, &mut b], ports, &chardevs).unwrap();
        assert_eq!(a.ports.len(), 1);
        assert_eq!(b.ports.len(), 2);
        let kv = |s| crate::config::keyval("-device", s, None).unwrap();
        let e = parse_port_device(kv("chardev=c,nr=0"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved for virtconsole"), "{e}");
        let e = parse_serial_device(kv("max_ports=40"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_ports=40"), "{e}");
    }
}
