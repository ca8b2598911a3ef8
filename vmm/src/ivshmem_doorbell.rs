//! `-chardev socket,path=SOCK,id=ID -device ivshmem-doorbell,chardev=ID
//! [,vectors=N][,ioeventfd=on|off][,master=on|off][,addr=SLOT][,id=NAME]`:
//! parsing, as QEMU 10 spells it (vectors defaults to 1, ioeventfd to on).

use std::fmt;
use std::path::PathBuf;

use crate::ivshmem::{Master, parse_slot};

/// One `ivshmem-doorbell` device as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorbellConfig {
    /// `id=`, if given; otherwise the device is named by its position.
    pub id: Option<String>,
    /// Position among the ivshmem-doorbell devices (0-based).
    pub index: usize,
    pub chardev: String,
    /// The server's socket (from the chardev).
    pub socket: PathBuf,
    pub vectors: u16,
    /// Doorbell writes as ioeventfds (never exiting to the VMM).
    pub ioeventfd: bool,
    pub master: Master,
    pub slot: Option<u8>,
}

impl fmt::Display for DoorbellConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "ivshmem-doorbell '{id}'"),
            None => write!(f, "ivshmem-doorbell #{}", self.index),
        }
    }
}

/// Errors from `-device ivshmem-doorbell`; each one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("ivshmem-doorbell: '{0}' is not key=value")]
    NotKeyValue(String),
    #[error(
        "ivshmem-doorbell: unknown property '{0}' (chardev, vectors, ioeventfd, master, addr, id; memdev= is ivshmem-plain's)"
    )]
    UnknownProperty(String),
    #[error(
        "ivshmem-doorbell: chardev=ID is required (a -chardev socket,path=SOCK,id=ID to the server)"
    )]
    NoChardev,
    #[error("ivshmem-doorbell: vectors='{0}' is not 1..={max}", max = devices::ivshmem_doorbell::MAX_VECTORS)]
    BadVectors(String),
    #[error("ivshmem-doorbell: {key}='{value}' is not on or off")]
    BadSwitch { key: &'static str, value: String },
    #[error("ivshmem-doorbell: master='{0}' is not on, off or auto")]
    BadMaster(String),
    #[error("ivshmem-doorbell: addr='{0}' is not a PCI slot 1..1f (hex, optionally SLOT.0)")]
    BadAddr(String),
    #[error("{device}: chardev '{chardev}' is not defined by any --chardev")]
    UnknownChardev { device: String, chardev: String },
}

fn switch(key: &'static str, v: &str) -> Result<bool, Error> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::BadSwitch {
            key,
            value: v.to_string(),
        }),
    }
}

/// Parses the properties after `ivshmem-doorbell,`.
pub fn parse(props: &str) -> Result<DoorbellConfig, Error> {
    let mut cfg = DoorbellConfig {
        id: None,
        index: 0,
        chardev: String::new(),
        socket: PathBuf::new(),
        vectors: 1,
        ioeventfd: true,
        master: Master::Off,
        slot: None,
    };
    for kv in props.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::NotKeyValue(kv.to_string()))?;
        match k {
            "chardev" => cfg.chardev = v.to_string(),
            "vectors" => {
                cfg.vectors = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=devices::ivshmem_doorbell::MAX_VECTORS).contains(n))
                    .ok_or_else(|| Error::BadVectors(v.to_string()))?;
            }
            "ioeventfd" => cfg.ioeventfd = switch("ioeventfd", v)?,
            "master" => {
                cfg.master = match v {
                    "on" => Master::On,
                    "off" => Master::Off,
                    "auto" => Master::Auto,
                    _ => return Err(Error::BadMaster(v.to_string())),
                }
            }
            "addr" => cfg.slot = Some(parse_slot(v).ok_or_else(|| Error::BadAddr(v.to_string()))?),
            "id" => cfg.id = Some(v.to_string()),
            _ => return Err(Error::UnknownProperty(k.to_string())),
        }
    }
    if cfg.chardev.is_empty() {
        return Err(Error::NoChardev);
    }
    Ok(cfg)
}

/// Numbers the devices and resolves their chardevs (id, path) to sockets.
pub fn resolve(
    devices: &mut [&mut DoorbellConfig],
    chardevs: &[(String, PathBuf)],
) -> Result<(), Error> {
    for (index, d) in devices.iter_mut().enumerate() {
        d.index = index;
        let (_, path) = chardevs
            .iter()
            .find(|(id, _)| *id == d.chardev)
            .ok_or_else(|| Error::UnknownChardev {
                device: d.to_string(),
                chardev: d.chardev.clone(),
            })?;
        d.socket = path.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_spellings_and_defaults() {
        let c = parse("chardev=iv").unwrap();
        assert_eq!(
            (c.vectors, c.ioeventfd, c.master, c.slot),
            (1, true, Master::Off, None)
        );
        let c = parse("chardev=iv,vectors=4,ioeventfd=off,master=on,addr=5,id=d").unwrap();
        assert_eq!(
            (c.vectors, c.ioeventfd, c.master, c.slot),
            (4, false, Master::On, Some(5))
        );
        assert_eq!(c.to_string(), "ivshmem-doorbell 'd'");
        let e = |s| parse(s).unwrap_err().to_string();
        assert!(e("vectors=2").contains("chardev=ID is required"));
        assert!(e("chardev=c,vectors=0").contains("vectors='0'"));
        assert!(e("chardev=c,vectors=129").contains("vectors='129'"));
        assert!(e("chardev=c,ioeventfd=maybe").contains("ioeventfd='maybe'"));
        assert!(e("chardev=c,memdev=m").contains("unknown property 'memdev'"));
        assert!(e("chardev=c,addr=0").contains("addr='0'"));
    }

    #[test]
    fn chardevs_resolve() {
        let mut a = parse("chardev=iv").unwrap();
        let mut b = parse("chardev=nope").unwrap();
        let chardevs = [("iv".to_string(), PathBuf::from("/tmp/s"))];
        resolve(&mut [&mut a], &chardevs).unwrap();
        assert_eq!(a.socket, PathBuf::from("/tmp/s"));
        let e = resolve(&mut [&mut a, &mut b], &chardevs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ivshmem-doorbell #1: chardev 'nope' is not defined by any --chardev"
        );
    }
}
