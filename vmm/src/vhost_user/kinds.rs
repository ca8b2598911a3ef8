//! The device types a vhost-user back-end can serve, as data: one [`Row`]
//! per QEMU `-device` name says the virtio device id, where the device
//! configuration comes from, the queues, which device feature bits pass
//! from the back-end to the guest and what the user may set. The front-end
//! ([`super::frontend`]) and the PCI function ([`super::device`]) read
//! only the [`Spec`] built from a row and the user's properties.

use devices::virtio::MAX_QUEUES;

use crate::config::keyval::{KeyVal, parse_num};

/// Virtio device ids (virtio spec 5).
pub mod virtio_id {
    pub const BLOCK: u16 = 2;
    pub const RNG: u16 = 4;
    pub const VSOCK: u16 = 19;
    pub const FS: u16 = 26;
}

/// Largest queue QEMU accepts (VIRTQUEUE_MAX_SIZE).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Bytes of `struct virtio_fs_config`: tag[36] and num_request_queues (le32).
pub const FS_CONFIG_LEN: usize = 40;
pub const FS_TAG_LEN: usize = 36;
/// Bytes of `struct virtio_vsock_config`: guest_cid (le64).
pub const VSOCK_CONFIG_LEN: u32 = 8;

/// Which QEMU device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blk,
    Fs,
    Vsock,
    Rng,
    /// `vhost-user-device-pci`: everything from properties.
    Generic,
}

/// Where the guest's device configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFrom {
    /// No device configuration.
    None,
    /// VHOST_USER_GET_CONFIG of this many bytes (the back-end must offer
    /// the CONFIG protocol feature).
    Backend(u32),
    /// Built by the front-end from the properties (virtio-fs's tag).
    Properties,
}

/// How many queues the device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queues {
    /// Fixed by the type or the properties; the back-end must serve them.
    Fixed(u16),
    /// What the block configuration and the back-end say, at most `max`.
    FromBlkConfig { max: Option<u16> },
}

/// One device type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub kind: Kind,
    /// QEMU's `-device` name.
    pub driver: &'static str,
    pub help: &'static str,
    /// Virtio device id (0: from `virtio-id=`).
    pub virtio_id: u16,
    /// What stops answering when the back-end dies ("its disk ...").
    pub noun: &'static str,
    pub config: ConfigFrom,
    /// Queue count (0: from the properties or the back-end) and size.
    pub queues: u16,
    pub queue_size: u16,
    /// Device-specific feature bits (0..=23) passed from the back-end to
    /// the guest when it offers them; transport bits are the front-end's.
    pub device_features: u64,
    /// Properties of the type beyond chardev/addr/id.
    pub props: &'static [&'static str],
}

/// virtio-blk bits we pass: all but CONFIG_WCE (bit 11: writeback toggle
/// through a configuration write, which we do not forward).
const BLK_FEATURES: u64 = 0x00ff_ffff & !(1 << 11);
/// VIRTIO_VSOCK_F_SEQPACKET (QEMU passes it when the back-end has it).
const VSOCK_FEATURES: u64 = 1 << 1;

/// The table.
pub const ROWS: &[Row] = &[
    Row {
        kind: Kind::Blk,
        driver: "vhost-user-blk-pci",
        help: "a virtio block device served by a vhost-user back-end",
        virtio_id: virtio_id::BLOCK,
        noun: "disk",
        config: ConfigFrom::Backend(super::BLK_CONFIG_LEN),
        queues: 0,
        queue_size: 256,
        device_features: BLK_FEATURES,
        props: &["num-queues"],
    },
    Row {
        kind: Kind::Fs,
        driver: "vhost-user-fs-pci",
        help: "a virtio-fs shared directory served by a vhost-user back-end (virtiofsd)",
        virtio_id: virtio_id::FS,
        noun: "file system",
        config: ConfigFrom::Properties,
        queues: 0,
        queue_size: 128,
        device_features: 0,
        props: &["tag", "num-request-queues", "queue-size"],
    },
    Row {
        kind: Kind::Vsock,
        driver: "vhost-user-vsock-pci",
        help: "a virtio vsock device served by a vhost-user back-end (its guest CID is the back-end's)",
        virtio_id: virtio_id::VSOCK,
        noun: "vsock device",
        config: ConfigFrom::Backend(VSOCK_CONFIG_LEN),
        queues: 3,
        queue_size: 128,
        device_features: VSOCK_FEATURES,
        // Only to refuse it with the reason (vhost-vsock-pci's property).
        props: &["guest-cid"],
    },
    Row {
        kind: Kind::Rng,
        driver: "vhost-user-rng-pci",
        help: "a virtio entropy device served by a vhost-user back-end",
        virtio_id: virtio_id::RNG,
        noun: "entropy device",
        config: ConfigFrom::None,
        queues: 1,
        queue_size: 4,
        device_features: 0,
        props: &[],
    },
    Row {
        kind: Kind::Generic,
        driver: "vhost-user-device-pci",
        help: "any virtio device type served by a vhost-user back-end, described by properties",
        virtio_id: 0,
        noun: "device",
        config: ConfigFrom::None,
        queues: 1,
        queue_size: 64,
        device_features: 0x00ff_ffff,
        props: &["virtio-id", "num_vqs", "vq_size", "config_size"],
    },
];

impl Kind {
    pub fn row(self) -> &'static Row {
        ROWS.iter()
            .find(|r| r.kind == self)
            .expect("every kind has a row")
    }

    /// The kind a `-device` name means.
    pub fn from_driver(driver: &str) -> Option<Kind> {
        ROWS.iter().find(|r| r.driver == driver).map(|r| r.kind)
    }
}

/// A device type with the user's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindConfig {
    Blk {
        /// Queues to use (at most what the back-end has).
        num_queues: Option<u16>,
    },
    Fs {
        tag: String,
        num_request_queues: u16,
        queue_size: u16,
    },
    Vsock,
    Rng,
    Generic {
        virtio_id: u16,
        num_vqs: u16,
        vq_size: u16,
        config_size: u32,
    },
}

/// What the front-end and the PCI function need to know of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub row: &'static Row,
    pub virtio_id: u16,
    pub queues: Queues,
    pub queue_size: u16,
    pub config: ConfigFrom,
    /// The configuration for [`ConfigFrom::Properties`].
    pub local_config: Vec<u8>,
}

impl KindConfig {
    pub fn kind(&self) -> Kind {
        match self {
            KindConfig::Blk { .. } => Kind::Blk,
            KindConfig::Fs { .. } => Kind::Fs,
            KindConfig::Vsock => Kind::Vsock,
            KindConfig::Rng => Kind::Rng,
            KindConfig::Generic { .. } => Kind::Generic,
        }
    }

    pub fn spec(&self) -> Spec {
        let row = self.kind().row();
        let mut s = Spec {
            row,
            virtio_id: row.virtio_id,
            queues: Queues::Fixed(row.queues),
            queue_size: row.queue_size,
            config: row.config,
            local_config: Vec::new(),
        };
        match self {
            KindConfig::Blk { num_queues } => {
                s.queues = Queues::FromBlkConfig { max: *num_queues };
            }
            KindConfig::Fs {
                tag,
                num_request_queues,
                queue_size,
            } => {
                // One high-priority queue, then the request queues.
                s.queues = Queues::Fixed(1 + num_request_queues);
                s.queue_size = *queue_size;
                let mut c = vec![0u8; FS_CONFIG_LEN];
                c[..tag.len()].copy_from_slice(tag.as_bytes());
                c[FS_TAG_LEN..].copy_from_slice(&u32::from(*num_request_queues).to_le_bytes());
                s.local_config = c;
            }
            KindConfig::Vsock | KindConfig::Rng => {}
            KindConfig::Generic {
                virtio_id,
                num_vqs,
                vq_size,
                config_size,
            } => {
                s.virtio_id = *virtio_id;
                s.queues = Queues::Fixed(*num_vqs);
                s.queue_size = *vq_size;
                if *config_size > 0 {
                    s.config = ConfigFrom::Backend(*config_size);
                }
            }
        }
        s
    }
}

fn num(
    kv: &mut KeyVal,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, String> {
    match kv.take(key) {
        None => Ok(None),
        Some(v) => match parse_num(&v) {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "{key}='{v}' is not {}..={}",
                range.start(),
                range.end()
            )),
        },
    }
}

fn queue_size(kv: &mut KeyVal, key: &str, default: u16) -> Result<u16, String> {
    let n = num(kv, key, 1..=u64::from(MAX_QUEUE_SIZE))?.unwrap_or(default.into());
    if !n.is_power_of_two() {
        return Err(format!("{key}={n} is not a power of 2"));
    }
    Ok(n as u16)
}

/// Takes the type's own properties from `kv`; the error is the reason.
pub fn from_keyval(kind: Kind, kv: &mut KeyVal) -> Result<KindConfig, String> {
    let max_queues = u64::from(MAX_QUEUES);
    Ok(match kind {
        Kind::Blk => KindConfig::Blk {
            num_queues: num(kv, "num-queues", 1..=max_queues)?.map(|n| n as u16),
        },
        Kind::Fs => {
            let tag = kv
                .take("tag")
                .ok_or_else(|| "tag= is required (the name the guest mounts)".to_string())?;
            if tag.is_empty() || tag.len() > FS_TAG_LEN {
                return Err(format!("tag='{tag}' must be 1..={FS_TAG_LEN} bytes"));
            }
            let num_request_queues =
                num(kv, "num-request-queues", 1..=max_queues - 1)?.unwrap_or(1) as u16;
            let queue_size = queue_size(kv, "queue-size", kind.row().queue_size)?;
            KindConfig::Fs {
                tag,
                num_request_queues,
                queue_size,
            }
        }
        Kind::Vsock => {
            if kv.take("guest-cid").is_some() {
                return Err(
                    "guest-cid= is vhost-vsock-pci's: with vhost-user the back-end \
                            sets the CID (vhost-device-vsock --vm guest-cid=N)"
                        .into(),
                );
            }
            KindConfig::Vsock
        }
        Kind::Rng => KindConfig::Rng,
        Kind::Generic => {
            let virtio_id = num(kv, "virtio-id", 1..=0xffff)?
                .ok_or_else(|| "virtio-id= is required (the virtio device id)".to_string())?
                as u16;
            KindConfig::Generic {
                virtio_id,
                num_vqs: num(kv, "num_vqs", 1..=max_queues)?.unwrap_or(1) as u16,
                vq_size: queue_size(kv, "vq_size", kind.row().queue_size)?,
                config_size: num(kv, "config_size", 0..=4096)?.unwrap_or(0) as u32,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: Kind, s: &str) -> Result<KindConfig, String> {
        let mut kv = KeyVal::parse(s, None).unwrap();
        from_keyval(kind, &mut kv)
    }

    #[test]
    fn every_kind_has_one_row() {
        for k in [Kind::Blk, Kind::Fs, Kind::Vsock, Kind::Rng, Kind::Generic] {
            assert_eq!(k.row().kind, k);
            assert_eq!(Kind::from_driver(k.row().driver), Some(k));
        }
        assert_eq!(ROWS.len(), 5);
        assert_eq!(Kind::from_driver("vhost-user-net-pci"), None);
    }

    #[test]
    fn fs_config_space_holds_the_tag_and_the_request_queues() {
        let k = parse(Kind::Fs, "tag=myfs,num-request-queues=2,queue-size=256").unwrap();
        let s = k.spec();
        assert_eq!(s.virtio_id, 26);
        assert_eq!(s.queues, Queues::Fixed(3));
        assert_eq!(s.queue_size, 256);
        assert_eq!(s.config, ConfigFrom::Properties);
        assert_eq!(&s.local_config[..5], b"myfs\0");
        assert_eq!(&s.local_config[36..], &2u32.to_le_bytes());
        let d = parse(Kind::Fs, "tag=t").unwrap().spec();
        assert_eq!((d.queues, d.queue_size), (Queues::Fixed(2), 128));
        for (p, why) in [
            ("", "tag= is required"),
            ("tag=0123456789012345678901234567890123456", "1..=36 bytes"),
            ("tag=t,queue-size=100", "not a power of 2"),
            ("tag=t,queue-size=2048", "queue-size='2048' is not 1..=1024"),
            ("tag=t,num-request-queues=0", "num-request-queues='0'"),
        ] {
            let e = parse(Kind::Fs, p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn generic_device_takes_everything_from_properties() {
        let s = parse(
            Kind::Generic,
            "virtio-id=4,num_vqs=2,vq_size=16,config_size=8",
        )
        .unwrap()
        .spec();
        assert_eq!(s.virtio_id, 4);
        assert_eq!((s.queues, s.queue_size), (Queues::Fixed(2), 16));
        assert_eq!(s.config, ConfigFrom::Backend(8));
        let d = parse(Kind::Generic, "virtio-id=4").unwrap().spec();
        assert_eq!(
            (d.queues, d.queue_size, d.config),
            (Queues::Fixed(1), 64, ConfigFrom::None)
        );
        assert!(
            parse(Kind::Generic, "")
                .unwrap_err()
                .contains("virtio-id= is required")
        );
        assert!(
            parse(Kind::Generic, "virtio-id=0")
                .unwrap_err()
                .contains("virtio-id='0'")
        );
    }

    #[test]
    fn fixed_types_follow_qemu() {
        let v = KindConfig::Vsock.spec();
        assert_eq!(
            (v.virtio_id, v.queues, v.queue_size),
            (19, Queues::Fixed(3), 128)
        );
        assert_eq!(v.config, ConfigFrom::Backend(8));
        let r = KindConfig::Rng.spec();
        assert_eq!(
            (r.virtio_id, r.queues, r.queue_size),
            (4, Queues::Fixed(1), 4)
        );
        assert!(
            parse(Kind::Vsock, "guest-cid=3")
                .unwrap_err()
                .contains("back-end sets the CID")
        );
        let b = parse(Kind::Blk, "num-queues=2").unwrap().spec();
        assert_eq!(b.queues, Queues::FromBlkConfig { max: Some(2) });
    }
}
