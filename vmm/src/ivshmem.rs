//! `-device ivshmem-plain,memdev=ID[,addr=SLOT][,master=on|off][,id=NAME]`:
//! parsing and the rules a memdev must meet before any memory is mapped.
//!
//! The rules, each a one-line error naming the device and the memdev:
//! - the memdev exists and is used once: not also guest RAM, not behind two
//!   devices;
//! - its size is a power of two of at least 4 KiB (a BAR's size; QEMU fails
//!   an assertion here);
//! - it is shared: with `share=off` the guest would silently get a private
//!   copy no host process or other VM sees (QEMU's behaviour), so we refuse.

use std::fmt;

use crate::config::keyval::KeyVal;

#[cfg(target_os = "linux")]
pub mod doorbell;
#[cfg(any(kvm, hvf))]
pub mod plug;

/// Smallest region: one page (a KVM memory slot is page granular).
pub const MIN_SIZE: u64 = 4096;

/// QEMU's OnOffAuto for `master` (only meaningful for migration, which we
/// do not do; accepted and kept for the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Master {
    On,
    #[default]
    Off,
    Auto,
}

/// One `ivshmem-plain` device as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvshmemConfig {
    /// `id=`, if given; otherwise the device is named by its position.
    pub id: Option<String>,
    /// Position among the ivshmem devices on the command line (0-based).
    pub index: usize,
    pub memdev: String,
    /// PCI slot on bus 0 (`addr=`); the first free one when absent.
    pub slot: Option<u8>,
    pub master: Master,
}

impl fmt::Display for IvshmemConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "ivshmem-plain '{id}'"),
            None => write!(f, "ivshmem-plain #{}", self.index),
        }
    }
}

/// What the rules need to know about a memory backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memdev<'a> {
    pub id: &'a str,
    pub size: u64,
    pub share: bool,
}

/// Errors from `-device ivshmem-plain`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("ivshmem-plain: {0}")]
    Property(#[source] crate::config::keyval::Error),
    #[error("ivshmem-plain: memdev=ID is required (the memory-backend-* object to share)")]
    NoMemdev,
    #[error("{device}: master='{value}' is not on, off or auto")]
    BadMaster { device: String, value: String },
    #[error("{device}: addr='{value}' is not a PCI slot 1..1f (hex, optionally SLOT.0)")]
    BadAddr { device: String, value: String },
    #[error("{device}: addr={slot:#x} is already used by {other}")]
    SlotInUse {
        device: String,
        slot: u8,
        other: String,
    },
    #[error(
        "{device}: memdev '{memdev}' does not exist (define it with -object memory-backend-...,id={memdev})"
    )]
    NoSuchMemdev { device: String, memdev: String },
    #[error("{device}: memdev '{memdev}' is already in use by {user}")]
    MemdevInUse {
        device: String,
        memdev: String,
        user: String,
    },
    #[error(
        "{device}: memdev '{memdev}' size {size:#x} is not a power of two of at least 4 KiB (it becomes a PCI BAR)"
    )]
    BadSize {
        device: String,
        memdev: String,
        size: u64,
    },
    #[error(
        "{device}: memdev '{memdev}' has share=off: the guest would get a private copy that no host process or other VM sees; use share=on"
    )]
    NotShared { device: String, memdev: String },
}

/// Parses the properties after `ivshmem-plain,` (tests; the command line
/// goes through [`from_keyval`]).
pub fn parse(props: &str, index: usize) -> Result<IvshmemConfig, Error> {
    let kv = KeyVal::parse(props, None).map_err(Error::Property)?;
    from_keyval(kv, index)
}

/// Reads an `ivshmem-plain` device's properties. `index` numbers the
/// device among the ivshmem devices for messages.
pub fn from_keyval(mut kv: KeyVal, index: usize) -> Result<IvshmemConfig, Error> {
    let mut cfg = IvshmemConfig {
        id: kv.take("id"),
        index,
        memdev: kv.take("memdev").unwrap_or_default(),
        slot: None,
        master: Master::Off,
    };
    let addr = kv.take("addr");
    let master = kv.take("master");
    kv.finish(&["memdev", "addr", "master", "id"])
        .map_err(Error::Property)?;
    // The position is not known yet while parsing; name the device by id.
    let device = match &cfg.id {
        Some(_) => cfg.to_string(),
        None => "ivshmem-plain".to_string(),
    };
    if let Some(v) = master {
        cfg.master = match v.as_str() {
            "on" => Master::On,
            "off" => Master::Off,
            "auto" => Master::Auto,
            _ => return Err(Error::BadMaster { device, value: v }),
        };
    }
    if let Some(v) = addr {
        cfg.slot = Some(parse_slot(&v).ok_or(Error::BadAddr { device, value: v })?);
    }
    if cfg.memdev.is_empty() {
        return Err(Error::NoMemdev);
    }
    Ok(cfg)
}

/// QEMU's PCI `addr`: `SLOT[.FN]` in hex. Function must be 0 (we have no
/// multi-function devices); slot 0 is the host bridge.
pub(crate) fn parse_slot(s: &str) -> Option<u8> {
    let (slot, func) = match s.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (s, None),
    };
    let slot = slot.strip_prefix("0x").unwrap_or(slot);
    let slot = u8::from_str_radix(slot, 16).ok()?;
    if func.is_some_and(|f| u8::from_str_radix(f, 16) != Ok(0)) {
        return None;
    }
    (1..32).contains(&slot).then_some(slot)
}

/// Checks every device against the memdevs: `ram` is the guest RAM
/// backend's id, `memdevs` every other backend.
pub fn check(devices: &[IvshmemConfig], ram: &str, memdevs: &[Memdev<'_>]) -> Result<(), Error> {
    for (i, dev) in devices.iter().enumerate() {
        let device = dev.to_string();
        let memdev = dev.memdev.clone();
        if let Some(slot) = dev.slot
            && let Some(other) = devices[..i].iter().find(|d| d.slot == Some(slot))
        {
            return Err(Error::SlotInUse {
                device,
                slot,
                other: other.to_string(),
            });
        }
        if dev.memdev == ram {
            let user = "the machine as guest RAM (-machine memory-backend)".to_string();
            return Err(Error::MemdevInUse {
                device,
                memdev,
                user,
            });
        }
        if let Some(other) = devices[..i].iter().find(|d| d.memdev == dev.memdev) {
            return Err(Error::MemdevInUse {
                device,
                memdev,
                user: other.to_string(),
            });
        }
        let Some(m) = memdevs.iter().find(|m| m.id == dev.memdev) else {
            return Err(Error::NoSuchMemdev { device, memdev });
        };
        if !m.size.is_power_of_two() || m.size < MIN_SIZE {
            return Err(Error::BadSize {
                device,
                memdev,
                size: m.size,
            });
        }
        if !m.share {
            return Err(Error::NotShared { device, memdev });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(props: &str, index: usize) -> IvshmemConfig {
        parse(props, index).unwrap()
    }

    #[test]
    fn parses_qemu_spelling() {
        let d = dev("memdev=hostmem,addr=0x4,master=on", 0);
        assert_eq!(d.memdev, "hostmem");
        assert_eq!(d.slot, Some(4));
        assert_eq!(d.master, Master::On);
        assert_eq!(d.to_string(), "ivshmem-plain #0");
        let d = dev("id=shared,memdev=m,addr=1f.0", 3);
        assert_eq!(
            (d.slot, d.to_string().as_str()),
            (Some(31), "ivshmem-plain 'shared'")
        );
        assert_eq!(
            dev("memdev=m,addr=10", 0).slot,
            Some(16),
            "QEMU reads addr as hex"
        );
        assert_eq!(dev("memdev=m", 0).master, Master::Off);
    }

    #[test]
    fn rejects_bad_properties() {
        let e = |p: &str| parse(p, 1).unwrap_err().to_string();
        assert_eq!(
            e(""),
            "ivshmem-plain: memdev=ID is required (the memory-backend-* object to share)"
        );
        assert!(e("memdev=m,size=4M").contains("unknown property 'size'"));
        assert!(e("memdev=m,a b").contains("'a b' is not key=value"));
        assert_eq!(
            e("memdev=m,master=yes"),
            "ivshmem-plain: master='yes' is not on, off or auto"
        );
        assert_eq!(
            e("id=d,memdev=m,master=1"),
            "ivshmem-plain 'd': master='1' is not on, off or auto"
        );
        for bad in ["0", "20", "0.0", "3.1", "x", ""] {
            let msg = e(&format!("memdev=m,addr={bad}"));
            assert!(
                msg.starts_with("ivshmem-plain: addr=") && msg.contains("not a PCI slot"),
                "{msg}"
            );
        }
    }

    const RAM: &str = "ram0";

    fn memdevs() -> Vec<Memdev<'static>> {
        vec![
            Memdev {
                id: "a",
                size: 1 << 20,
                share: true,
            },
            Memdev {
                id: "b",
                size: 64 << 20,
                share: true,
            },
            Memdev {
                id: "odd",
                size: 3 << 20,
                share: true,
            },
            Memdev {
                id: "tiny",
                size: 2048,
                share: true,
            },
            Memdev {
                id: "private",
                size: 1 << 20,
                share: false,
            },
        ]
    }

    fn check_err(devs: &[&str]) -> String {
        let devs: Vec<_> = devs.iter().enumerate().map(|(i, p)| dev(p, i)).collect();
        check(&devs, RAM, &memdevs()).unwrap_err().to_string()
    }

    #[test]
    fn accepts_several_devices_each_with_its_memdev() {
        let devs = [dev("memdev=a", 0), dev("memdev=b,addr=5", 1)];
        check(&devs, RAM, &memdevs()).unwrap();
    }

    #[test]
    fn each_rule_names_device_and_memdev() {
        assert_eq!(
            check_err(&["memdev=nope"]),
            "ivshmem-plain #0: memdev 'nope' does not exist (define it with -object memory-backend-...,id=nope)"
        );
        assert_eq!(
            check_err(&["memdev=ram0"]),
            "ivshmem-plain #0: memdev 'ram0' is already in use by the machine as guest RAM (-machine memory-backend)"
        );
        assert_eq!(
            check_err(&["id=first,memdev=a", "memdev=a"]),
            "ivshmem-plain #1: memdev 'a' is already in use by ivshmem-plain 'first'"
        );
        assert_eq!(
            check_err(&["memdev=odd"]),
            "ivshmem-plain #0: memdev 'odd' size 0x300000 is not a power of two of at least 4 KiB (it becomes a PCI BAR)"
        );
        assert!(check_err(&["memdev=tiny"]).contains("memdev 'tiny' size 0x800"));
        assert_eq!(
            check_err(&["memdev=private"]),
            "ivshmem-plain #0: memdev 'private' has share=off: the guest would get a private copy that no host process or other VM sees; use share=on"
        );
        assert_eq!(
            check_err(&["memdev=a,addr=3", "memdev=b,addr=3.0"]),
            "ivshmem-plain #1: addr=0x3 is already used by ivshmem-plain #0"
        );
    }
}
