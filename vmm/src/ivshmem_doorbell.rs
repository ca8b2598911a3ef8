//! `-chardev socket,path=SOCK,id=ID -device ivshmem-doorbell,chardev=ID
//! [,vectors=N][,ioeventfd=on|off][,master=on|off][,addr=SLOT][,id=NAME]`:
//! parsing, as QEMU 10 spells it (vectors defaults to 1, ioeventfd to on).

use std::fmt;
use std::path::PathBuf;

use crate::config::keyval::KeyVal;
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
    #[error("ivshmem-doorbell: {0}")]
    Property(crate::config::keyval::Error),
    #[error(
        "ivshmem-doorbell: chardev=ID is required (a -chardev socket,path=SOCK,id=ID to the server)"
    )]
    NoChardev,
    #[error("ivshmem-doorbell: vectors='{0}' is not 1..={max}", max = devices::ivshmem_doorbell::MAX_VECTORS)]
    BadVectors(String),
    #[error("ivshmem-doorbell: master='{0}' is not on, off or auto")]
    BadMaster(String),
    #[error("ivshmem-doorbell: addr='{0}' is not a PCI slot 1..1f (hex, optionally SLOT.0)")]
    BadAddr(String),
    #[error("{device}: chardev '{chardev}' is not defined by any -chardev")]
    UnknownChardev { device: String, chardev: String },
}

/// The properties `ivshmem-doorbell` takes.
pub const PROPERTIES: &[&str] = &["chardev", "vectors", "ioeventfd", "master", "addr", "id"];

/// The device from its parsed properties (after `ivshmem-doorbell,`).
pub fn from_keyval(mut kv: KeyVal) -> Result<DoorbellConfig, Error> {
    let mut cfg = DoorbellConfig {
        id: kv.take("id"),
        index: 0,
        chardev: kv.take("chardev").unwrap_or_default(),
        socket: PathBuf::new(),
        vectors: 1,
        ioeventfd: kv
            .take_bool("ioeventfd")
            .map_err(Error::Property)?
            .unwrap_or(true),
        master: Master::Off,
        slot: None,
    };
    if let Some(v) = kv.take("vectors") {
        cfg.vectors = v
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=devices::ivshmem_doorbell::MAX_VECTORS).contains(n))
            .ok_or(Error::BadVectors(v))?;
    }
    if let Some(v) = kv.take("master") {
        cfg.master = match v.as_str() {
            "on" => Master::On,
            "off" => Master::Off,
            "auto" => Master::Auto,
            _ => return Err(Error::BadMaster(v)),
        };
    }
    if let Some(v) = kv.take("addr") {
        cfg.slot = Some(parse_slot(&v).ok_or(Error::BadAddr(v))?);
    }
    kv.finish(PROPERTIES).map_err(Error::Property)?;
    if cfg.chardev.is_empty() {
        return Err(Error::NoChardev);
    }
    Ok(cfg)
}

/// Parses the properties after `ivshmem-doorbell,` (for tests and tools).
pub fn parse(props: &str) -> Result<DoorbellConfig, Error> {
    from_keyval(KeyVal::parse(props, None).map_err(Error::Property)?)
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
        assert!(e("chardev=c,ioeventfd=maybe").contains("ioeventfd"));
        assert!(e("chardev=c,memdev=m").contains("'memdev'"));
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
            "ivshmem-doorbell #1: chardev 'nope' is not defined by any -chardev"
        );
    }
}
