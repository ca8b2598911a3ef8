//! ivshmem-doorbell from inside a Linux guest through the `ivshmem_db`
//! module (`guest/ivshmem-db`, `/dev/ivshmem-dbN`): IVPosition (8-byte
//! pread at 512), rings (4-byte pwrite), waits (one blocking 8-byte pread at
//! `vector * 8`); MSI-X facts from sysfs `config`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::device::PciDevice;
use crate::region::RegionError;

const CAP_MSIX: u8 = 0x11;

/// What can go wrong with doorbells.
#[derive(Debug, Error)]
pub enum DoorbellError {
    #[error("{bdf}: BAR0 (the registers) is not assigned")]
    NoBar0 { bdf: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(
        "{bdf}: no ivshmem_db driver bound (no {dir}/misc/ivshmem-db*): insmod ivshmem_db.ko (guest/ivshmem-db)"
    )]
    NoDriver { bdf: String, dir: String },
    #[error("{bdf}: vector {vector} is not one of the device's {vectors}")]
    NoVector {
        bdf: String,
        vector: u16,
        vectors: u16,
    },
    #[error("wait-irq: no doorbell on vector {vector} within {ms} ms")]
    Timeout { vector: u16, ms: u64 },
}

/// The MSI-X table size in a configuration space dump (sysfs `config`), or
/// None without an MSI-X capability (ivshmem-plain).
pub fn msix_vectors(config: &[u8]) -> Option<u16> {
    let status = u16::from_le_bytes([*config.get(6)?, *config.get(7)?]);
    if status & 0x10 == 0 {
        return None;
    }
    let mut at = usize::from(*config.get(0x34)? & 0xfc);
    for _ in 0..48 {
        if at == 0 {
            return None;
        }
        if *config.get(at)? == CAP_MSIX {
            let control = u16::from_le_bytes([*config.get(at + 2)?, *config.get(at + 3)?]);
            return Some((control & 0x7ff) + 1);
        }
        at = usize::from(*config.get(at + 1)? & 0xfc);
    }
    None
}

/// The doorbell value that rings `vector` of `peer`.
pub fn doorbell_value(peer: u16, vector: u16) -> u32 {
    (u32::from(peer) << 16) | u32::from(vector)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DoorbellError + '_ {
    move |source| DoorbellError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Offset of the driver's info record (IVPosition, vectors).
const INFO_OFF: u64 = 64 * 8;

/// BAR0's registers through the driver (BAR0 is 256 bytes, less than a
/// page, so sysfs cannot map `resource0`).
pub struct Registers {
    node: PathBuf,
    file: File,
}

impl Registers {
    pub fn open(dev: &PciDevice) -> Result<Self, DoorbellError> {
        if dev.bar0.is_none() {
            return Err(DoorbellError::NoBar0 {
                bdf: dev.bdf.clone(),
            });
        }
        let node = driver_node(dev)?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(&node)
            .map_err(io_err(&node))?;
        Ok(Registers { node, file })
    }

    /// This peer's id.
    pub fn iv_position(&self) -> Result<u32, DoorbellError> {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, INFO_OFF)
            .map_err(io_err(&self.node))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Rings `vector` of `peer`.
    pub fn ring(&self, peer: u16, vector: u16) -> Result<(), DoorbellError> {
        self.file
            .write_all_at(&doorbell_value(peer, vector).to_le_bytes(), 0)
            .map_err(io_err(&self.node))
    }
}

/// The device's vectors (its MSI-X table size; 0 for ivshmem-plain).
pub fn vectors(dev: &PciDevice) -> Result<u16, DoorbellError> {
    let path = dev.dir.join("config");
    let config = std::fs::read(&path).map_err(io_err(&path))?;
    Ok(msix_vectors(&config).unwrap_or(0))
}

/// The driver's character device for `dev`.
pub fn driver_node(dev: &PciDevice) -> Result<PathBuf, DoorbellError> {
    let misc = dev.dir.join("misc");
    let none = || DoorbellError::NoDriver {
        bdf: dev.bdf.clone(),
        dir: dev.dir.display().to_string(),
    };
    let name = std::fs::read_dir(&misc)
        .map_err(|_| none())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("ivshmem-db"))
        .ok_or_else(none)?;
    Ok(Path::new("/dev").join(name))
}

/// Blocks until `vector` rings (or `timeout` passes); returns the rings
/// collected. The blocking read runs on its own thread so the deadline
/// holds whatever the driver does.
pub fn wait_irq(dev: &PciDevice, vector: u16, timeout: Duration) -> Result<u64, DoorbellError> {
    let count = vectors(dev)?;
    if vector >= count {
        return Err(DoorbellError::NoVector {
            bdf: dev.bdf.clone(),
            vector,
            vectors: count,
        });
    }
    let node = driver_node(dev)?;
    let file = File::open(&node).map_err(io_err(&node))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 8];
        let r = file
            .read_exact_at(&mut b, u64::from(vector) * 8)
            .map(|()| u64::from_le_bytes(b));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(io_err(&node)),
        Err(_) => Err(DoorbellError::Timeout {
            vector,
            ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_capability_in_a_config_dump() {
        let mut c = vec![0u8; 256];
        assert_eq!(msix_vectors(&c), None, "no capability list");
        c[6] = 0x10;
        c[0x34] = 0x40;
        c[0x40] = 0x09; // vendor-specific first
        c[0x41] = 0x50;
        c[0x50] = CAP_MSIX;
        c[0x52] = 3; // 4 vectors
        assert_eq!(msix_vectors(&c), Some(4));
        c[0x41] = 0;
        assert_eq!(msix_vectors(&c), None, "chain ends before MSI-X");
        c[0x41] = 0x40;
        assert_eq!(msix_vectors(&c), None, "a loop is cut off");
        assert_eq!(msix_vectors(&c[..0x20]), None, "short dump");
        assert_eq!(doorbell_value(3, 1), 0x0003_0001);
    }
}
