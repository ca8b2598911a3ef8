//! `-device TYPE,...`: isa-debug-exit, ivshmem-plain, ivshmem-doorbell,
//! vhost-user-{blk,fs,vsock,rng,device}-pci, virtio-blk-pci, virtio-rng-pci,
//! virtio-serial-pci, virtconsole, virtserialport, i6300esb.

use memory::BackendConfig;

use super::{Error, Prop, TypeInfo, invalid, keyval::KeyVal};
use crate::vhost_user::{ChardevConfig, Kind};

/// QEMU's isa-debug-exit defaults (hw/misc/debugexit.c): port 0x501, 2 ports.
pub const DEBUG_EXIT_IOBASE: u16 = 0x501;
pub const DEBUG_EXIT_IOSIZE: u16 = 2;

const ID: Prop = Prop::new("id", "string", "", "the device's name");
const ADDR: Prop = Prop::new("addr", "slot[.0]", "first free", "PCI slot on bus 0 (hex)");

/// Properties every virtio-serial port has.
const PORT_CHARDEV: Prop = Prop::new(
    "chardev",
    "id",
    "(required)",
    "a -chardev stdio, file, null or socket,server=on,wait=off",
);
const PORT_NAME: Prop = Prop::new("name", "string", "", "the port's name (virtme.ret, ...)");
const PORT_BUS: Prop = Prop::new(
    "bus",
    "ID.0",
    "the first with room",
    "the virtio-serial-pci",
);

/// The `-device` types, for help and for checking property names.
pub const TYPES: &[TypeInfo] = &[
    TypeInfo::new(
        "isa-debug-exit",
        "writing V to the port exits with status (V << 1) | 1",
        &[],
        &[
            Prop::new("iobase", "uint32", "0x501", "first I/O port"),
            Prop::new("iosize", "uint32", "0x2", "number of ports (1..4)"),
        ],
    ),
    TypeInfo::new(
        "ivshmem-plain",
        "inter-VM shared memory: an -object memory backend as PCI BAR2",
        &[ID, ADDR],
        &[
            Prop::new("memdev", "id", "(required)", "the shared memory backend"),
            Prop::new("master", "on|off|auto", "off", "accepted (migration only)"),
        ],
    ),
    TypeInfo::new(
        "ivshmem-doorbell",
        "inter-VM shared memory from an ivshmem server, with doorbell interrupts between peers",
        &[ID, ADDR],
        &[
            Prop::new(
                "chardev",
                "id",
                "(required)",
                "a -chardev socket to the ivshmem server",
            ),
            Prop::new("vectors", "uint16", "1", "MSI-X vectors (1..128)"),
            Prop::new(
                "ioeventfd",
                "on|off",
                "on",
                "doorbell writes stay in the kernel",
            ),
            Prop::new("master", "on|off|auto", "off", "accepted (migration only)"),
        ],
    ),
    TypeInfo::new(
        "vhost-user-blk-pci",
        "a virtio block device served by a vhost-user back-end",
        &[ID, ADDR],
        &[
            Prop::new("chardev", "id", "(required)", "a -chardev socket"),
            Prop::new("num-queues", "uint16", "back-end's", "queues to use"),
        ],
    ),
    TypeInfo::new(
        "vhost-user-fs-pci",
        "a virtio-fs shared directory served by a vhost-user back-end (virtiofsd)",
        &[ID, ADDR],
        &[
            VHOST_CHARDEV,
            Prop::new(
                "tag",
                "string",
                "(required)",
                "the name the guest mounts (1..36 bytes)",
            ),
            Prop::new("num-request-queues", "uint16", "1", "request queues"),
            Prop::new(
                "queue-size",
                "uint16",
                "128",
                "descriptors per queue (power of 2)",
            ),
        ],
    ),
    TypeInfo::new(
        "virtio-blk-pci",
        "a virtio block device on a -drive if=none,id=ID raw image",
        &[ID, ADDR],
        &[
            Prop::new("drive", "id", "(required)", "a -drive if=none,id=ID"),
            Prop::new(
                "serial",
                "string",
                "",
                "the disk's serial (GET_ID), 20 bytes at most",
            ),
        ],
    ),
    TypeInfo::new(
        "vhost-user-vsock-pci",
        "a virtio vsock device served by a vhost-user back-end (the CID is the back-end's)",
        &[ID, ADDR],
        &[VHOST_CHARDEV],
    ),
    TypeInfo::new(
        "vhost-user-rng-pci",
        "a virtio entropy device served by a vhost-user back-end",
        &[ID, ADDR],
        &[VHOST_CHARDEV],
    ),
    TypeInfo::new(
        "vhost-user-device-pci",
        "any virtio device type served by a vhost-user back-end",
        &[ID, ADDR],
        &[
            VHOST_CHARDEV,
            Prop::new("virtio-id", "uint16", "(required)", "virtio device id"),
            Prop::new("num_vqs", "uint32", "1", "queues"),
            Prop::new(
                "vq_size",
                "uint32",
                "64",
                "descriptors per queue (power of 2)",
            ),
            Prop::new(
                "config_size",
                "uint32",
                "0",
                "bytes of configuration read from the back-end",
            ),
        ],
    ),
    TypeInfo::new(
        "virtio-serial-pci",
        "a virtio console with ports (virtconsole, virtserialport)",
        &[ID, ADDR],
        &[Prop::new(
            "max_ports",
            "uint32",
            "31",
            "ports the guest sets up (1..31)",
        )],
    ),
    TypeInfo::new(
        "virtconsole",
        "a console port (hvc0 in the guest) of a virtio-serial-pci",
        &[ID, PORT_CHARDEV, PORT_NAME, PORT_BUS],
        &[Prop::new("nr", "uint32", "0 if free", "the port number")],
    ),
    TypeInfo::new(
        "virtserialport",
        "a named port (/dev/vportNpM, /sys/class/virtio-ports/*/name) of a virtio-serial-pci",
        &[ID, PORT_CHARDEV, PORT_NAME, PORT_BUS],
        &[Prop::new(
            "nr",
            "uint32",
            "lowest free from 1",
            "the port number",
        )],
    ),
    TypeInfo::new(
        "virtio-rng-pci",
        "a virtio entropy device fed by the host kernel's random source",
        &[ID, ADDR],
        &[],
    ),
    TypeInfo::new(
        "i6300esb",
        "Intel 6300ESB watchdog timer (Linux: i6300esb, /dev/watchdog); on expiry, -watchdog-action",
        &[ID, ADDR],
        &[],
    ),
];

const VHOST_CHARDEV: Prop = Prop::new("chardev", "id", "(required)", "a -chardev socket");

/// Devices from `-device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    DebugExit {
        iobase: u16,
        iosize: u16,
    },
    /// `ivshmem-plain,memdev=ID[,addr=SLOT][,master=on|off]`
    IvshmemPlain(crate::ivshmem::IvshmemConfig),
    /// `ivshmem-doorbell,chardev=ID[,vectors=N][,ioeventfd=on|off]`
    IvshmemDoorbell(crate::ivshmem_doorbell::DoorbellConfig),
    /// `vhost-user-*-pci,chardev=ID` or `--vhost-user-blk socket=PATH`
    VhostUser(crate::vhost_user::VhostUserConfig),
    /// `virtio-blk-pci,drive=ID` or `-drive if=virtio`
    VirtioBlk(crate::virtio::config::BlkConfig),
    /// `virtio-rng-pci`
    VirtioRng(crate::virtio::config::RngConfig),
    /// `virtio-serial-pci` with its ports
    VirtioSerial(crate::virtio::config::SerialConfig),
    /// `virtconsole` / `virtserialport`, until [`check_serial`] moves it
    /// into its virtio-serial-pci
    VirtioSerialPort(crate::virtio::config::PortConfig),
    /// `i6300esb`
    Watchdog(crate::watchdog::WatchdogConfig),
}

fn debug_exit(mut kv: KeyVal) -> Result<DeviceConfig, Error> {
    let bad = |e: super::keyval::Error| invalid("-device", format!("isa-debug-exit: {e}"));
    let iobase = kv
        .take_num("iobase")
        .map_err(bad)?
        .unwrap_or(DEBUG_EXIT_IOBASE.into());
    let iosize = kv
        .take_num("iosize")
        .map_err(bad)?
        .unwrap_or(DEBUG_EXIT_IOSIZE.into());
    kv.take("id");
    kv.finish(&["iobase", "iosize", "id"]).map_err(bad)?;
    match (u16::try_from(iobase), u16::try_from(iosize)) {
        (Ok(b), Ok(s)) if (1..=4).contains(&s) && iobase + iosize <= 0x1_0000 => {
            Ok(DeviceConfig::DebugExit {
                iobase: b,
                iosize: s,
            })
        }
        _ => Err(invalid(
            "-device",
            format!(
                "isa-debug-exit: iobase={iobase:#x},iosize={iosize} is not 1..4 ports below 0x10000"
            ),
        )),
    }
}

/// Parses one `-device` value.
pub fn parse(spec: &str) -> Result<DeviceConfig, Error> {
    parse_with(spec, &[])
}

/// Parses one `-device` value; `drives` are the `-drive`s it may name.
pub fn parse_with(
    spec: &str,
    drives: &[crate::virtio::config::DriveConfig],
) -> Result<DeviceConfig, Error> {
    let mut kv = super::keyval("-device", spec, Some("driver"))?;
    let driver = kv.take("driver").unwrap_or_default();
    match driver.as_str() {
        "isa-debug-exit" => debug_exit(kv),
        "ivshmem-plain" => Ok(DeviceConfig::IvshmemPlain(crate::ivshmem::from_keyval(
            kv, 0,
        )?)),
        "ivshmem-doorbell" => Ok(DeviceConfig::IvshmemDoorbell(
            crate::ivshmem_doorbell::from_keyval(kv)?,
        )),
        d if let Some(kind) = Kind::from_driver(d) => Ok(DeviceConfig::VhostUser(
            crate::vhost_user::config::from_keyval("-device", kind, kv, "chardev")?,
        )),
        "virtio-blk-pci" => {
            let d = crate::virtio::config::parse_blk_device(kv)?;
            Ok(DeviceConfig::VirtioBlk(crate::virtio::config::bind(
                drives, d,
            )?))
        }
        "virtio-serial-pci" => Ok(DeviceConfig::VirtioSerial(
            crate::virtio::config::parse_serial_device(kv)?,
        )),
        "virtconsole" | "virtserialport" => Ok(DeviceConfig::VirtioSerialPort(
            crate::virtio::config::parse_port_device(kv, driver == "virtconsole")?,
        )),
        "virtio-rng-pci" => Ok(DeviceConfig::VirtioRng(
            crate::virtio::config::parse_rng_device(kv)?,
        )),
        "i6300esb" => Ok(DeviceConfig::Watchdog(crate::watchdog::parse_device(kv)?)),
        "" => Err(invalid("-device", "empty device name")),
        other => Err(Error::Unsupported {
            option: "-device",
            spec: spec.to_string(),
            reason: format!(
                "unknown device '{other}' (known: isa-debug-exit, ivshmem-plain, ivshmem-doorbell, vhost-user-{{blk,fs,vsock,rng,device}}-pci, virtio-blk-pci, virtio-rng-pci, virtio-serial-pci, virtconsole, virtserialport, i6300esb; see -device help)"
            ),
        }),
    }
}

/// Adds a virtio-blk device per `-drive if=virtio` and checks the drives
/// (see [`crate::virtio::config::check_drives`]).
pub fn check_drives(
    devices: &mut Vec<DeviceConfig>,
    drives: &[crate::virtio::config::DriveConfig],
) -> Result<(), Error> {
    let bound: Vec<_> = devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::VirtioBlk(b) => Some(b),
            _ => None,
        })
        .collect();
    let own = crate::virtio::config::check_drives(drives, &bound)?;
    devices.extend(own.into_iter().map(DeviceConfig::VirtioBlk));
    Ok(())
}

/// Moves each virtconsole / virtserialport into its virtio-serial-pci,
/// its chardev (one of `chardevs`) resolved; `listeners` are the listening
/// socket chardevs no `-mon` took: each must be one port's.
pub fn check_serial(
    devices: &mut Vec<DeviceConfig>,
    chardevs: &[String],
    listeners: &[String],
) -> Result<(), Error> {
    let mut ports = Vec::new();
    devices.retain(|d| match d {
        DeviceConfig::VirtioSerialPort(p) => {
            ports.push(p.clone());
            false
        }
        _ => true,
    });
    let mut serials: Vec<_> = devices
        .iter_mut()
        .filter_map(|d| match d {
            DeviceConfig::VirtioSerial(s) => Some(s),
            _ => None,
        })
        .collect();
    let used: Vec<String> = ports.iter().map(|p| p.chardev.clone()).collect();
    if let Some(id) = listeners.iter().find(|l| !used.contains(l)) {
        return Err(crate::config::invalid(
            "-chardev",
            format!(
                "listening socket '{id}' (server=on) is not used by any -mon chardev={id},mode=control \
                 or virtserialport/virtconsole chardev={id}"
            ),
        ));
    }
    if ports.is_empty() {
        return Ok(());
    }
    let sinks = crate::virtio::config::port_sinks(chardevs, listeners)?;
    crate::virtio::config::attach_ports(&mut serials, ports, &sinks)
}

/// Numbers the ivshmem devices and checks their memdevs against the
/// backends (see [`crate::ivshmem::check`]).
pub fn check_ivshmem(
    devices: &mut [DeviceConfig],
    ram: &BackendConfig,
    objects: &[BackendConfig],
) -> Result<(), Error> {
    let mut ivshmem = Vec::new();
    for d in devices.iter_mut() {
        if let DeviceConfig::IvshmemPlain(c) = d {
            c.index = ivshmem.len();
            ivshmem.push(c.clone());
        }
    }
    let memdevs: Vec<_> = objects
        .iter()
        .map(|o| crate::ivshmem::Memdev {
            id: o.id(),
            size: o.size(),
            share: o.share(),
        })
        .collect();
    crate::ivshmem::check(&ivshmem, ram.id(), &memdevs).map_err(Error::from)
}

/// Numbers the ivshmem-doorbell devices and resolves their `chardev=` to
/// the server sockets; returns the socket chardevs they leave (for the
/// vhost-user back-ends).
pub fn check_ivshmem_doorbell(
    devices: &mut [DeviceConfig],
    sockets: &[ChardevConfig],
) -> Result<Vec<ChardevConfig>, Error> {
    let pairs: Vec<_> = sockets
        .iter()
        .map(|c| (c.id.clone(), c.path.clone()))
        .collect();
    let mut doorbells: Vec<&mut crate::ivshmem_doorbell::DoorbellConfig> = devices
        .iter_mut()
        .filter_map(|d| match d {
            DeviceConfig::IvshmemDoorbell(c) => Some(c),
            _ => None,
        })
        .collect();
    crate::ivshmem_doorbell::resolve(&mut doorbells, &pairs)?;
    let taken: Vec<&str> = doorbells.iter().map(|d| d.chardev.as_str()).collect();
    Ok(sockets
        .iter()
        .filter(|c| !taken.contains(&c.id.as_str()))
        .cloned()
        .collect())
}

/// Adds the `--vhost-user-blk` devices, resolves `chardev=` references
/// against the socket chardevs and checks guest RAM can be shared.
pub fn check_vhost_user(
    devices: &mut Vec<DeviceConfig>,
    short: &[String],
    sockets: &[ChardevConfig],
    ram: &BackendConfig,
) -> Result<(), Error> {
    use crate::vhost_user::config as vub;
    for s in short {
        let kv = super::keyval("--vhost-user-blk", s, None)?;
        devices.push(DeviceConfig::VhostUser(vub::from_keyval(
            "--vhost-user-blk",
            Kind::Blk,
            kv,
            "socket",
        )?));
    }
    let mut blk: Vec<&mut vub::VhostUserConfig> = devices
        .iter_mut()
        .filter_map(|d| match d {
            DeviceConfig::VhostUser(c) => Some(c),
            _ => None,
        })
        .collect();
    vub::resolve(&mut blk, sockets, ram).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_debug_exit_defaults_to_qemus_port() {
        assert_eq!(
            parse("isa-debug-exit").unwrap(),
            DeviceConfig::DebugExit {
                iobase: 0x501,
                iosize: 2
            }
        );
        assert_eq!(
            parse("isa-debug-exit,iobase=0xf4,iosize=0x04").unwrap(),
            DeviceConfig::DebugExit {
                iobase: 0xf4,
                iosize: 4
            }
        );
        for (v, why) in [
            ("isa-debug-exit,iosize=9", "not 1..4 ports"),
            ("isa-debug-exit,iobase=zz", "iobase='zz': expected a number"),
            ("isa-debug-exit,port=1", "unknown property 'port'"),
        ] {
            let e = parse(v).unwrap_err().to_string();
            assert!(e.starts_with("-device: ") && e.contains(why), "{v}: {e}");
        }
        // A device shmvm does not have: the whole option as written.
        let e = parse("ib700,id=watchdog0").unwrap_err().to_string();
        assert!(
            e.starts_with("-device ib700,id=watchdog0: unknown device 'ib700' (known: "),
            "{e}"
        );
    }

    #[test]
    fn tables_name_every_property_the_parsers_take() {
        for t in TYPES {
            // A property outside the table is refused by the parser, naming the table's.
            let e = parse(&format!("{},zzz=1", t.name)).unwrap_err().to_string();
            assert!(e.contains("'zzz'"), "{e}");
            for p in t.props() {
                assert!(e.contains(p.name), "{e} does not name {}", p.name);
            }
        }
    }
}
