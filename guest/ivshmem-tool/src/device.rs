//! Finding ivshmem-plain devices through sysfs. Linux has no ivshmem driver:
//! a guest enables the device and maps BAR2 through `resource2`.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Red Hat / Qumranet, the vendor of ivshmem.
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
/// ivshmem (plain and doorbell share the ID).
pub const IVSHMEM_DEVICE: u16 = 0x1110;
/// The shared memory BAR.
pub const SHM_BAR: usize = 2;

/// Talking to sysfs failed.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("cannot list PCI devices in {dir}: {source}")]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot parse '{text}'")]
    Parse { path: PathBuf, text: String },
    #[error("no ivshmem device (1af4:1110) under {0}")]
    NoneFound(PathBuf),
    #[error("{0} ivshmem devices found ({1}); pick one with --device")]
    Ambiguous(usize, String),
    #[error("no PCI device {bdf} under {dir}")]
    NoSuchDevice { bdf: String, dir: PathBuf },
    #[error("PCI device {bdf} is {vendor:04x}:{device:04x}, not an ivshmem device (1af4:1110)")]
    NotIvshmem {
        bdf: String,
        vendor: u16,
        device: u16,
    },
    #[error("ivshmem device {0} has no BAR2 (shared memory) assigned")]
    NoBar2(String),
}

/// One BAR as the `resource` file reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Guest physical start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Resource flags (IORESOURCE_*).
    pub flags: u64,
}

impl Bar {
    /// Whether this is a 64-bit memory BAR (IORESOURCE_MEM_64).
    pub fn is_64bit(&self) -> bool {
        self.flags & 0x0010_0000 != 0
    }
    /// Whether the BAR is prefetchable (IORESOURCE_PREFETCH).
    pub fn is_prefetchable(&self) -> bool {
        self.flags & 0x2000 != 0
    }
}

/// An ivshmem PCI device as sysfs shows it.
#[derive(Debug, Clone)]
pub struct PciDevice {
    /// `domain:bus:device.function`.
    pub bdf: String,
    /// Its sysfs directory.
    pub dir: PathBuf,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// Class code, 24 bits (class, subclass, prog-if).
    pub class: u32,
    pub revision: u8,
    /// BAR0 (registers) and BAR2 (shared memory), if assigned.
    pub bar0: Option<Bar>,
    pub bar2: Option<Bar>,
}

impl fmt::Display for PciDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bdf={} vendor={:#06x} device={:#06x} subsystem_vendor={:#06x} subsystem_device={:#06x} class={:#08x} revision={:#04x}",
            self.bdf,
            self.vendor,
            self.device,
            self.subsystem_vendor,
            self.subsystem_device,
            self.class,
            self.revision
        )?;
        if let Some(b) = self.bar0 {
            write!(f, " bar0_addr={:#x} bar0_size={:#x}", b.addr, b.size)?;
        }
        match self.bar2 {
            Some(b) => write!(
                f,
                " bar2_addr={:#x} bar2_size={:#x} bar2_64bit={} bar2_prefetch={}",
                b.addr,
                b.size,
                u8::from(b.is_64bit()),
                u8::from(b.is_prefetchable())
            ),
            None => write!(f, " bar2=unassigned"),
        }
    }
}

fn read_text(path: &Path) -> Result<String, DeviceError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| DeviceError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn read_hex(path: &Path) -> Result<u64, DeviceError> {
    let text = read_text(path)?;
    parse_hex(&text).ok_or_else(|| DeviceError::Parse {
        path: path.to_path_buf(),
        text,
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    let t = s.trim();
    u64::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
}

/// Parses sysfs `resource`: one `start end flags` line (hex) per resource;
/// an unassigned one is all zeros.
pub fn parse_resource(text: &str) -> Option<Vec<Option<Bar>>> {
    text.lines()
        .map(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .map(parse_hex)
                .collect::<Option<_>>()?;
            match f[..] {
                [start, end, flags] if end > start => Some(Some(Bar {
                    addr: start,
                    size: end - start + 1,
                    flags,
                })),
                [_, _, _] => Some(None),
                _ => None,
            }
        })
        .collect()
}

impl PciDevice {
    /// Reads the device in `dir` (a `/sys/bus/pci/devices/<bdf>` directory).
    pub fn load(dir: &Path) -> Result<Self, DeviceError> {
        let id = |name: &str| -> Result<u64, DeviceError> { read_hex(&dir.join(name)) };
        let res_path = dir.join("resource");
        let res_text = read_text(&res_path)?;
        let bars = parse_resource(&res_text).ok_or_else(|| DeviceError::Parse {
            path: res_path.clone(),
            text: res_text,
        })?;
        let bar = |i: usize| bars.get(i).copied().flatten();
        Ok(Self {
            bdf: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: dir.to_path_buf(),
            vendor: id("vendor")? as u16,
            device: id("device")? as u16,
            subsystem_vendor: id("subsystem_vendor")? as u16,
            subsystem_device: id("subsystem_device")? as u16,
            class: id("class")? as u32,
            revision: id("revision")? as u8,
            bar0: bar(0),
            bar2: bar(SHM_BAR),
        })
    }

    /// Enables memory decoding (writes 1 to `enable`); harmless if already on.
    pub fn enable(&self) -> Result<(), DeviceError> {
        let path = self.dir.join("enable");
        // Already enabled (e.g. by a bound driver such as ivshmem_db, which
        // makes a second write fail with EBUSY): nothing to do.
        if fs::read_to_string(&path).is_ok_and(|s| s.trim() != "0") {
            return Ok(());
        }
        fs::write(&path, "1").map_err(|source| DeviceError::Io { path, source })
    }

    /// Opens BAR2 (`resource2`) for mapping; returns the file and its size.
    pub fn open_bar2(&self) -> Result<(File, u64), DeviceError> {
        let bar = self
            .bar2
            .ok_or_else(|| DeviceError::NoBar2(self.bdf.clone()))?;
        let path = self.dir.join(format!("resource{SHM_BAR}"));
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| DeviceError::Io { path, source })?;
        Ok((file, bar.size))
    }
}

/// Lists every ivshmem device under `root` (normally `/sys/bus/pci/devices`), sorted by BDF.
pub fn scan(root: &Path) -> Result<Vec<PciDevice>, DeviceError> {
    let entries = fs::read_dir(root).map_err(|source| DeviceError::List {
        dir: root.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DeviceError::List {
            dir: root.to_path_buf(),
            source,
        })?;
        let dir = entry.path();
        let vendor = read_hex(&dir.join("vendor"))?;
        let device = read_hex(&dir.join("device"))?;
        if vendor == u64::from(IVSHMEM_VENDOR) && device == u64::from(IVSHMEM_DEVICE) {
            found.push(PciDevice::load(&dir)?);
        }
    }
    found.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(found)
}

/// Picks the device to use: the one named by `bdf` (a full `0000:00:02.0` or
/// a short `00:02.0`), or the only ivshmem device present.
pub fn select(root: &Path, bdf: Option<&str>) -> Result<PciDevice, DeviceError> {
    match bdf {
        Some(want) => {
            let full = if want.matches(':').count() == 1 {
                format!("0000:{want}")
            } else {
                want.to_string()
            };
            let dir = root.join(&full);
            if !dir.is_dir() {
                return Err(DeviceError::NoSuchDevice {
                    bdf: want.to_string(),
                    dir: root.to_path_buf(),
                });
            }
            let dev = PciDevice::load(&dir)?;
            if dev.vendor != IVSHMEM_VENDOR || dev.device != IVSHMEM_DEVICE {
                return Err(DeviceError::NotIvshmem {
                    bdf: full,
                    vendor: dev.vendor,
                    device: dev.device,
                });
            }
            Ok(dev)
        }
        None => {
            let mut all = scan(root)?;
            match all.len() {
                0 => Err(DeviceError::NoneFound(root.to_path_buf())),
                1 => Ok(all.remove(0)),
                n => Err(DeviceError::Ambiguous(
                    n,
                    all.iter()
                        .map(|d| d.bdf.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESOURCE: &str = "0x00000000fe000000 0x00000000fe0000ff 0x0000000000040200\n\
        0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
        0x0000008000000000 0x0000008003ffffff 0x000000000014220c\n";

    #[test]
    fn resource_lines() {
        let bars = parse_resource(RESOURCE).expect("valid resource file");
        assert_eq!(bars.len(), 3);
        assert_eq!(
            bars[0],
            Some(Bar {
                addr: 0xfe00_0000,
                size: 0x100,
                flags: 0x40200
            })
        );
        assert_eq!(bars[1], None);
        let b2 = bars[2].expect("bar2");
        assert_eq!((b2.addr, b2.size), (0x80_0000_0000, 64 << 20));
        assert!(b2.is_64bit() && b2.is_prefetchable());
        assert!(!bars[0].expect("bar0").is_64bit());
        assert_eq!(parse_resource("0x1 0x2"), None);
        assert_eq!(parse_resource("zz 0 0"), None);
    }

    /// A directory laid out like sysfs (plain files), to exercise scan/select.
    fn fake_sysfs(tag: &str, devs: &[(&str, u16, u16)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("ivshmem-tool-sysfs-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (bdf, v, d) in devs {
            let dir = root.join(bdf);
            fs::create_dir_all(&dir).expect("mkdir");
            let w = |n: &str, s: String| fs::write(dir.join(n), s + "\n").expect("write");
            w("vendor", format!("{v:#06x}"));
            w("device", format!("{d:#06x}"));
            w("subsystem_vendor", "0x1af4".into());
            w("subsystem_device", "0x1100".into());
            w("class", "0x050000".into());
            w("revision", "0x01".into());
            w("resource", RESOURCE.trim_end().into());
        }
        root
    }

    #[test]
    fn scan_and_select() {
        let root = fake_sysfs(
            "scan",
            &[
                ("0000:00:03.0", 0x1af4, 0x1110),
                ("0000:00:01.0", 0x8086, 0x29c0),
            ],
        );
        let all = scan(&root).expect("scan");
        assert_eq!(all.len(), 1);
        let d = &all[0];
        assert_eq!(
            (d.bdf.as_str(), d.class, d.revision),
            ("0000:00:03.0", 0x050000, 1)
        );
        assert_eq!(d.bar2.map(|b| b.size), Some(64 << 20));
        assert!(d.to_string().contains("vendor=0x1af4 device=0x1110"));
        assert_eq!(select(&root, None).expect("only one").bdf, "0000:00:03.0");
        assert_eq!(
            select(&root, Some("00:03.0")).expect("short bdf").bdf,
            "0000:00:03.0"
        );
        assert!(matches!(
            select(&root, Some("00:01.0")),
            Err(DeviceError::NotIvshmem { .. })
        ));
        assert!(matches!(
            select(&root, Some("00:09.0")),
            Err(DeviceError::NoSuchDevice { .. })
        ));
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn select_none_and_ambiguous() {
        let root = fake_sysfs("none", &[("0000:00:01.0", 0x8086, 0x29c0)]);
        assert!(matches!(
            select(&root, None),
            Err(DeviceError::NoneFound(_))
        ));
        fs::remove_dir_all(&root).expect("cleanup");
        let root = fake_sysfs(
            "two",
            &[
                ("0000:00:02.0", 0x1af4, 0x1110),
                ("0000:00:03.0", 0x1af4, 0x1110),
                ("x", 0, 0),
            ],
        );
        assert!(matches!(
            select(&root, None),
            Err(DeviceError::Ambiguous(2, _))
        ));
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
