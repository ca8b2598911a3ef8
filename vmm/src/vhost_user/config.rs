//! Command-line spelling of vhost-user devices and their checks.
//!
//! QEMU: `-chardev socket,id=char0,path=/tmp/vhost.sock` with one of
//! `-device vhost-user-blk-pci,chardev=char0[,num-queues=N]`,
//! `vhost-user-fs-pci,chardev=,tag=[,num-request-queues=][,queue-size=]`,
//! `vhost-user-vsock-pci,chardev=`, `vhost-user-rng-pci,chardev=`, or the
//! generic `vhost-user-device-pci,chardev=,virtio-id=[,num_vqs=][,vq_size=][,config_size=]`
//! (all take `addr=SLOT`). Short form: `--vhost-user-blk socket=PATH[,...]`.
//! The property lists are parsed by [`crate::config::keyval`]; the chardev
//! by [`crate::config::chardev`]. What differs between the types is data:
//! [`super::kinds`].
//!
//! A vhost-user back-end reads and writes guest RAM through the RAM
//! backend's fd, so guest RAM must be fd-backed and shared. QEMU leaves
//! private RAM out of the memory table and the device then fails inside the
//! guest; we refuse at start, naming the backend.

use std::fmt;
use std::path::PathBuf;

use memory::BackendConfig;

use super::kinds::{self, Kind, KindConfig};
use crate::config::keyval::KeyVal;

/// Errors in vhost-user options; each renders as one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{option}: {driver}: {reason}")]
    Device {
        option: &'static str,
        driver: &'static str,
        reason: String,
    },
    #[error(
        "-chardev: '{0}' is not used by any device (vhost-user-*-pci,chardev=ID and ivshmem-doorbell,chardev=ID take one)"
    )]
    UnusedChardev(String),
    #[error("-device {driver}: chardev '{id}' is not defined by any -chardev")]
    UnknownChardev { driver: &'static str, id: String },
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

/// A `-chardev socket,id=ID,path=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevConfig {
    pub id: String,
    pub path: PathBuf,
}

/// One vhost-user device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserConfig {
    /// The type and its own properties.
    pub kind: KindConfig,
    /// The chardev id (`chardev=`), None for `--vhost-user-blk socket=`.
    pub chardev: Option<String>,
    /// The back-end's socket (resolved from the chardev).
    pub socket: PathBuf,
    /// PCI slot on bus 0; the first free one when absent.
    pub slot: Option<u8>,
    /// `id=`, QMP's `qdev_id`.
    pub id: Option<String>,
    /// Position among the vhost-user devices, for messages.
    pub index: usize,
}

impl fmt::Display for VhostUserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} #{} ({})",
            self.kind.kind().row().driver,
            self.index,
            self.socket.display()
        )
    }
}

/// Reads a vhost-user device's properties; `socket_key` is `chardev` for
/// `-device`, `socket` for `--vhost-user-blk`.
pub fn from_keyval(
    option: &'static str,
    kind: Kind,
    mut kv: KeyVal,
    socket_key: &'static str,
) -> Result<VhostUserConfig, Error> {
    let driver = kind.row().driver;
    let bad = |reason: String| Error::Device {
        option,
        driver,
        reason,
    };
    // An unknown property first, as QEMU (it sets properties before the
    // device checks them).
    let mut known = vec![socket_key, "addr", "id"];
    known.extend_from_slice(kind.row().props);
    let mut unknown = kv.clone();
    for k in &known {
        unknown.take_all(k);
    }
    unknown.finish(&known).map_err(|e| bad(e.to_string()))?;
    let socket = kv.take_str(socket_key).map_err(|e| bad(e.to_string()))?;
    let mut cfg = VhostUserConfig {
        kind: KindConfig::Rng,
        chardev: None,
        socket: PathBuf::new(),
        slot: None,
        id: None,
        index: 0,
    };
    if socket_key == "chardev" {
        cfg.chardev = socket;
    } else {
        cfg.socket = socket.map(PathBuf::from).unwrap_or_default();
    }
    if let Some(v) = kv.take("addr") {
        cfg.slot = Some(crate::ivshmem::parse_slot(&v).ok_or_else(|| {
            bad(format!(
                "addr='{v}' is not a PCI slot 1..1f (hex, optionally SLOT.0)"
            ))
        })?);
    }
    cfg.kind = kinds::from_keyval(kind, &mut kv).map_err(bad)?;
    cfg.id = kv.take_str("id").map_err(|e| bad(e.to_string()))?;
    kv.finish(&known).map_err(|e| bad(e.to_string()))?;
    if cfg.chardev.is_none() && cfg.socket.as_os_str().is_empty() {
        return Err(bad(format!("{socket_key}= is required")));
    }
    Ok(cfg)
}

/// Parses the properties after `DRIVER,` (tests).
pub fn parse_device(kind: Kind, props: &str) -> Result<VhostUserConfig, Error> {
    let kv = KeyVal::parse(props, None).map_err(|e| Error::Device {
        option: "-device",
        driver: kind.row().driver,
        reason: e.to_string(),
    })?;
    from_keyval("-device", kind, kv, "chardev")
}

/// Parses `--vhost-user-blk socket=PATH[,...]` (tests).
pub fn parse_short(props: &str) -> Result<VhostUserConfig, Error> {
    let kv = KeyVal::parse(props, None).map_err(|e| Error::Device {
        option: "--vhost-user-blk",
        driver: Kind::Blk.row().driver,
        reason: e.to_string(),
    })?;
    from_keyval("--vhost-user-blk", Kind::Blk, kv, "socket")
}

/// Resolves chardev references into socket paths, numbers the devices and
/// checks that guest RAM can be handed to a back-end.
pub fn resolve(
    devices: &mut [&mut VhostUserConfig],
    chardevs: &[ChardevConfig],
    ram: &BackendConfig,
) -> Result<(), Error> {
    for (index, d) in devices.iter_mut().enumerate() {
        d.index = index;
        if let Some(id) = &d.chardev {
            let c = chardevs
                .iter()
                .find(|c| &c.id == id)
                .ok_or_else(|| Error::UnknownChardev {
                    driver: d.kind.kind().row().driver,
                    id: id.clone(),
                })?;
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
    fn device_spellings_and_errors() {
        let d = parse_device(Kind::Blk, "chardev=c0,addr=5,num-queues=2,id=disk").unwrap();
        assert_eq!(d.chardev.as_deref(), Some("c0"));
        assert_eq!(d.slot, Some(5));
        assert_eq!(
            d.kind,
            KindConfig::Blk {
                num_queues: Some(2)
            }
        );
        let s = parse_short("socket=/run/blk.sock").unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/blk.sock"));
        assert_eq!(s.chardev, None);
        let e = |s| parse_device(Kind::Blk, s).unwrap_err().to_string();
        assert_eq!(
            e("addr=3"),
            "-device: vhost-user-blk-pci: chardev= is required"
        );
        assert!(e("chardev=c,addr=40").contains("addr='40'"));
        assert!(e("chardev=c,num-queues=0").contains("num-queues='0'"));
        assert!(e("chardev=c,size=1").contains("unknown property 'size'"));
        let fs = |s| parse_device(Kind::Fs, s).unwrap_err().to_string();
        assert_eq!(
            fs("chardev=c"),
            "-device: vhost-user-fs-pci: tag= is required (the name the guest mounts)"
        );
        assert!(fs("chardev=c,tag=t,num-queues=2").contains("unknown property 'num-queues'"));
        let g = parse_device(Kind::Generic, "chardev=c,virtio-id=4,num_vqs=2").unwrap();
        assert_eq!(g.to_string(), "vhost-user-device-pci #0 ()");
        assert!(
            parse_short("chardev=c")
                .unwrap_err()
                .to_string()
                .starts_with("--vhost-user-blk: ")
        );
    }

    fn ram(spec: &str) -> BackendConfig {
        crate::config::object::parse(spec).unwrap()
    }

    #[test]
    fn resolve_links_chardevs_and_refuses_private_ram() {
        let chardevs = [ChardevConfig {
            id: "c0".into(),
            path: "/tmp/a.sock".into(),
        }];
        let shared = ram("memory-backend-memfd,id=m,size=64M");
        let mut a = parse_device(Kind::Blk, "chardev=c0").unwrap();
        let mut b = parse_short("socket=/tmp/b.sock").unwrap();
        resolve(&mut [&mut a, &mut b], &chardevs, &shared).unwrap();
        assert_eq!((a.index, b.index), (0, 1));
        assert_eq!(a.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(b.to_string(), "vhost-user-blk-pci #1 (/tmp/b.sock)");

        let mut c = parse_device(Kind::Rng, "chardev=nope").unwrap();
        assert_eq!(
            resolve(&mut [&mut c], &chardevs, &shared)
                .unwrap_err()
                .to_string(),
            "-device vhost-user-rng-pci: chardev 'nope' is not defined by any -chardev"
        );
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
