//! Command-line spelling of vhost-user-blk devices and their checks.
//!
//! QEMU: `-chardev socket,id=char0,path=/tmp/vhost.sock
//!        -device vhost-user-blk-pci,chardev=char0[,addr=SLOT][,num-queues=N]`.
//! Short form: `--vhost-user-blk socket=PATH[,addr=SLOT][,num-queues=N]`.
//!
//! A vhost-user back-end reads and writes guest RAM through the RAM
//! backend's fd, so guest RAM must be fd-backed and shared. QEMU leaves
//! private RAM out of the memory table and the device then fails inside the
//! guest; we refuse at start, naming the backend.

use std::fmt;
use std::path::PathBuf;

use memory::BackendConfig;

/// Errors in vhost-user-blk options; each renders as one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("--chardev: '{0}': only 'socket' character devices are supported")]
    ChardevBackend(String),
    #[error("--chardev: '{spec}': {reason}")]
    Chardev { spec: String, reason: String },
    #[error("--chardev: duplicate id '{0}'")]
    DuplicateChardev(String),
    #[error("{option}: vhost-user-blk-pci: {reason}")]
    Device {
        option: &'static str,
        reason: String,
    },
    #[error(
        "--chardev: '{0}' is not used by any device (vhost-user-blk-pci,chardev=ID and ivshmem-doorbell,chardev=ID take one)"
    )]
    UnusedChardev(String),
    #[error("--device vhost-user-blk-pci: chardev '{0}' is not defined by any --chardev")]
    UnknownChardev(String),
    #[error(
        "{device}: guest RAM backend '{id}' ({kind}) is private (share=off): a vhost-user \
         back-end maps guest RAM through its file descriptor; use memory-backend-memfd or \
         memory-backend-shm, or share=on"
    )]
    PrivateRam {
        device: String,
        id: String,
        kind: &'static str,
    },
}

/// `--chardev socket,id=ID,path=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevConfig {
    pub id: String,
    pub path: PathBuf,
}

/// One vhost-user-blk-pci device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserBlkConfig {
    /// The chardev id (`chardev=`), None for `--vhost-user-blk socket=`.
    pub chardev: Option<String>,
    /// The back-end's socket (resolved from the chardev).
    pub socket: PathBuf,
    /// PCI slot on bus 0; the first free one when absent.
    pub slot: Option<u8>,
    /// Queues to use (at most what the back-end has); default: the
    /// back-end's num_queues.
    pub num_queues: Option<u16>,
    /// Position among the vhost-user-blk devices, for messages.
    pub index: usize,
}

impl fmt::Display for VhostUserBlkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vhost-user-blk-pci #{} ({})",
            self.index,
            self.socket.display()
        )
    }
}

fn split_kv<'a>(kv: &'a str, what: &str) -> Result<(&'a str, &'a str), String> {
    kv.split_once('=')
        .ok_or_else(|| format!("{what}: '{kv}' is not key=value"))
}

/// Parses `socket,id=ID,path=PATH`.
pub fn parse_chardev(spec: &str) -> Result<ChardevConfig, Error> {
    let mut parts = spec.split(',');
    let backend = parts.next().unwrap_or_default();
    if backend != "socket" {
        return Err(Error::ChardevBackend(spec.to_string()));
    }
    let err = |reason: String| Error::Chardev {
        spec: spec.to_string(),
        reason,
    };
    let (mut id, mut path) = (None, None);
    for kv in parts {
        let (k, v) = split_kv(kv, "socket").map_err(err)?;
        match k {
            "id" if !v.is_empty() => id = Some(v.to_string()),
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            // We connect to a listening back-end, as QEMU does by default.
            "server" if matches!(v, "off" | "no" | "false") => {}
            "server" => return Err(err("server=on is not supported (shmvm connects)".into())),
            _ => return Err(err(format!("unsupported property '{k}' (id, path)"))),
        }
    }
    Ok(ChardevConfig {
        id: id.ok_or_else(|| err("id= is required".into()))?,
        path: path.ok_or_else(|| err("path= is required (a unix socket)".into()))?,
    })
}

fn parse_common(
    option: &'static str,
    props: &str,
    socket_key: &str,
) -> Result<VhostUserBlkConfig, Error> {
    let bad = |reason: String| Error::Device { option, reason };
    let mut cfg = VhostUserBlkConfig {
        chardev: None,
        socket: PathBuf::new(),
        slot: None,
        num_queues: None,
        index: 0,
    };
    for kv in props.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = split_kv(kv, "vhost-user-blk-pci").map_err(bad)?;
        match k {
            k if k == socket_key && !v.is_empty() => {
                if socket_key == "chardev" {
                    cfg.chardev = Some(v.to_string());
                } else {
                    cfg.socket = PathBuf::from(v);
                }
            }
            "addr" => {
                cfg.slot = Some(crate::ivshmem::parse_slot(v).ok_or_else(|| {
                    bad(format!(
                        "addr='{v}' is not a PCI slot 1..1f (hex, optionally SLOT.0)"
                    ))
                })?);
            }
            "num-queues" => match v.parse::<u16>() {
                Ok(n) if (1..=devices::virtio::MAX_QUEUES).contains(&n) => cfg.num_queues = Some(n),
                _ => {
                    return Err(bad(format!(
                        "num-queues='{v}' is not 1..={}",
                        devices::virtio::MAX_QUEUES
                    )));
                }
            },
            // QEMU's device id: accepted, not used.
            "id" => {}
            _ => {
                return Err(bad(format!(
                    "unknown property '{k}' ({socket_key}, addr, num-queues, id)"
                )));
            }
        }
    }
    if cfg.chardev.is_none() && cfg.socket.as_os_str().is_empty() {
        return Err(bad(format!("{socket_key}= is required")));
    }
    Ok(cfg)
}

/// Parses the properties after `vhost-user-blk-pci,` in `--device`.
pub fn parse_device(props: &str) -> Result<VhostUserBlkConfig, Error> {
    parse_common("--device", props, "chardev")
}

/// Parses `--vhost-user-blk socket=PATH[,...]`.
pub fn parse_short(props: &str) -> Result<VhostUserBlkConfig, Error> {
    parse_common("--vhost-user-blk", props, "socket")
}

/// Resolves chardev references into socket paths, numbers the devices and
/// checks that guest RAM can be handed to a back-end.
pub fn resolve(
    devices: &mut [&mut VhostUserBlkConfig],
    chardevs: &[ChardevConfig],
    ram: &BackendConfig,
) -> Result<(), Error> {
    for (i, c) in chardevs.iter().enumerate() {
        if chardevs[..i].iter().any(|o| o.id == c.id) {
            return Err(Error::DuplicateChardev(c.id.clone()));
        }
    }
    for (index, d) in devices.iter_mut().enumerate() {
        d.index = index;
        if let Some(id) = &d.chardev {
            let c = chardevs
                .iter()
                .find(|c| &c.id == id)
                .ok_or_else(|| Error::UnknownChardev(id.clone()))?;
            d.socket = c.path.clone();
        }
        if !ram.share() {
            return Err(Error::PrivateRam {
                device: d.to_string(),
                id: ram.id().to_string(),
                kind: ram.kind().qom_type(),
            });
        }
    }
    // QEMU opens every chardev (a socket one connects at start); one that
    // nothing uses is most likely a typo in a device's chardev=.
    if let Some(c) = chardevs
        .iter()
        .find(|c| !devices.iter().any(|d| d.chardev.as_ref() == Some(&c.id)))
    {
        return Err(Error::UnusedChardev(c.id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chardev_spellings_and_errors() {
        assert_eq!(
            parse_chardev("socket,id=c0,path=/tmp/s.sock").unwrap(),
            ChardevConfig {
                id: "c0".into(),
                path: "/tmp/s.sock".into()
            }
        );
        assert!(parse_chardev("socket,path=/x,id=a,server=off").is_ok());
        let e = |s| parse_chardev(s).unwrap_err().to_string();
        assert_eq!(
            e("stdio,id=x"),
            "--chardev: 'stdio,id=x': only 'socket' character devices are supported"
        );
        assert!(e("socket,id=x").contains("path= is required"));
        assert!(e("socket,path=/x").contains("id= is required"));
        assert!(e("socket,id=x,path=/x,server=on").contains("server=on"));
        assert!(e("socket,id=x,path=/x,wait=off").contains("unsupported property 'wait'"));
        assert!(e("socket,id").contains("not key=value"));
    }

    #[test]
    fn device_spellings_and_errors() {
        let d = parse_device("chardev=c0,addr=5,num-queues=2,id=disk").unwrap();
        assert_eq!(d.chardev.as_deref(), Some("c0"));
        assert_eq!((d.slot, d.num_queues), (Some(5), Some(2)));
        let s = parse_short("socket=/run/blk.sock").unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/blk.sock"));
        assert_eq!(s.chardev, None);
        let e = |s| parse_device(s).unwrap_err().to_string();
        assert_eq!(
            e("addr=3"),
            "--device: vhost-user-blk-pci: chardev= is required"
        );
        assert!(e("chardev=c,addr=40").contains("addr='40'"));
        assert!(e("chardev=c,num-queues=0").contains("num-queues='0'"));
        assert!(e("chardev=c,size=1").contains("unknown property 'size'"));
        assert!(
            parse_short("chardev=c")
                .unwrap_err()
                .to_string()
                .starts_with("--vhost-user-blk: ")
        );
    }

    fn ram(spec: &str) -> BackendConfig {
        BackendConfig::parse_object(spec).unwrap()
    }

    #[test]
    fn resolve_links_chardevs_and_refuses_private_ram() {
        let chardevs = [ChardevConfig {
            id: "c0".into(),
            path: "/tmp/a.sock".into(),
        }];
        let shared = ram("memory-backend-memfd,id=m,size=64M");
        let mut a = parse_device("chardev=c0").unwrap();
        let mut b = parse_short("socket=/tmp/b.sock").unwrap();
        resolve(&mut [&mut a, &mut b], &chardevs, &shared).unwrap();
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(a.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(b.to_string(), "vhost-user-blk-pci #1 (/tmp/b.sock)");

        let mut c = parse_device("chardev=nope").unwrap();
        assert_eq!(
            resolve(&mut [&mut c], &chardevs, &shared),
            Err(Error::UnknownChardev("nope".into()))
        );
        let dup = [chardevs[0].clone(), chardevs[0].clone()];
        assert!(resolve(&mut [], &dup, &shared).is_err());
        assert_eq!(
            resolve(&mut [], &chardevs, &shared),
            Err(Error::UnusedChardev("c0".into()))
        );

        for (spec, kind) in [
            ("memory-backend-ram,id=r,size=64M", "memory-backend-ram"),
            (
                "memory-backend-file,id=r,size=64M,mem-path=/tmp",
                "memory-backend-file",
            ),
            (
                "memory-backend-memfd,id=r,size=64M,share=off",
                "memory-backend-memfd",
            ),
        ] {
            let mut d = parse_short("socket=/tmp/b.sock").unwrap();
            let msg = resolve(&mut [&mut d], &[], &ram(spec))
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("vhost-user-blk-pci #0 (/tmp/b.sock): guest RAM backend 'r'")
                    && msg.contains(kind)
                    && msg.contains("share=off"),
                "{msg}"
            );
        }
        for ok in [
            "memory-backend-ram,id=r,size=64M,share=on",
            "memory-backend-shm,id=r,size=64M",
            "memory-backend-file,id=r,size=64M,mem-path=/tmp,share=on",
        ] {
            let mut d = parse_short("socket=/tmp/b.sock").unwrap();
            resolve(&mut [&mut d], &[], &ram(ok)).unwrap();
        }
    }
}
