//! The snapshot's state file: a fixed header, then the state as JSON.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "SHMVMSNP"
//!      8     4  format version (little-endian u32), FORMAT_VERSION
//!     12     4  CRC-32 (IEEE 802.3, as zlib) of the payload
//!     16     8  payload length in bytes (little-endian u64)
//!     24     n  payload: UTF-8 JSON of `State` (see mod.rs)
//! ```

use std::io::Write;
use std::path::Path;

use super::Error;

pub const MAGIC: &[u8; 8] = b"SHMVMSNP";
/// Bumped whenever the payload's meaning changes (any field, any device's
/// byte layout): a snapshot of another format version is refused.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 24;

/// CRC-32 (the reflected IEEE polynomial 0xEDB88320, as zlib and PNG).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Header plus payload.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a state file's bytes, after checking magic, version,
/// length and checksum.
pub fn decode(bytes: &[u8]) -> Result<&[u8], Error> {
    let bad = |why: String| Error::Corrupt(why);
    if bytes.len() < HEADER {
        return Err(bad(format!(
            "truncated: {} bytes, shorter than the {HEADER}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(bad("not a shmvm snapshot (bad magic)".into()));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(Error::Mismatch(format!(
            "format version {version}, this shmvm reads version {FORMAT_VERSION}"
        )));
    }
    let crc = word(12);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    let have = (bytes.len() - HEADER) as u64;
    if have != len {
        return Err(bad(format!(
            "truncated or padded: the header says {len} bytes of state, the file has {have}"
        )));
    }
    let payload = &bytes[HEADER..];
    let got = crc32(payload);
    if got != crc {
        return Err(bad(format!(
            "checksum mismatch (CRC-32 {got:08x}, the header says {crc:08x})"
        )));
    }
    Ok(payload)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a state file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn decode_refuses_every_damage() {
        let good = encode(b"{\"a\":1}");
        assert_eq!(decode(&good).unwrap(), b"{\"a\":1}");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(
            decode(&flipped)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        assert!(
            decode(&good[..good.len() - 1])
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        assert!(
            decode(&good[..10])
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(decode(&magic).unwrap_err().to_string().contains("magic"));
        let mut version = good;
        version[8] = 99;
        assert!(matches!(decode(&version), Err(Error::Mismatch(_))));
    }
}
