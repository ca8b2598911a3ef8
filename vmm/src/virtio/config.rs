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
}

/// Properties of `-device virtio-blk-pci`.
pub const BLK_PROPS: &[&str] = &["drive", "serial", "addr", "id"];

pub fn parse_blk_device(mut kv: KeyVal) -> Result<BlkDevice, Error> {
    let bad = |reason: String| invalid("-device", format!("virtio-blk-pci: {reason}"));
    let kve = |e: crate::config::keyval::Error| bad(e.to_string());
    let drive = kv
        .take_str("drive")
        .map_err(kve)?
        .ok_or_else(|| bad("drive= is required (a -drive if=none,id=ID)".into()))?;
    let serial = kv.take_str("serial").map_err(kve)?;
    if serial.as_ref().is_some_and(|s| s.len() > 20) {
        return Err(bad("serial= is longer than 20 bytes".into()));
    }
    let slot = slot(&mut kv, &bad)?;
    kv.take("id");
    kv.finish(BLK_PROPS).map_err(kve)?;
    Ok(BlkDevice {
        drive,
        serial,
        slot,
    })
}

pub fn parse_rng_device(mut kv: KeyVal) -> Result<RngConfig, Error> {
    let bad = |reason: String| invalid("-device", format!("virtio-rng-pci: {reason}"));
    let slot = slot(&mut kv, &bad)?;
    kv.take("id");
    kv.finish(&["addr", "id"]).map_err(|e| bad(e.to_string()))?;
    Ok(RngConfig { slot })
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
        })
        .collect())
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
}
