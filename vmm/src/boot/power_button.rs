//! The ACPI power button of a hardware-reduced platform, as its own SSDT
//! (kept apart from the other tables so it plugs into any table builder
//! as one more XSDT entry):
//!
//! ```text
//! Scope (\_SB) {
//!     Device (GED0) {                      // Generic Event Device
//!         Name (_HID, "ACPI0013")
//!         Name (_UID, Zero)
//!         Name (_CRS, ResourceTemplate () {
//!             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { GED_IRQ }
//!         })
//!         OperationRegion (GDST, SystemMemory, GED_ADDR, 4)
//!         Field (GDST, DWordAcc, NoLock, WriteAsZeros) { GDAT, 32 }
//!         Method (_EVT, 1, Serialized) {
//!             Local0 = GDAT                    // read-to-clear event bits
//!             If (Local0 & 1) { Notify (\_SB.PWRB, 0x80) }
//!         }
//!     }
//!     Device (PWRB) { Name (_HID, EisaId ("PNP0C0C")) Name (_UID, Zero) }
//! }
//! ```
//!
//! Linux's GED driver (drivers/acpi/evged.c) runs `_EVT` on the interrupt;
//! the button driver turns the notify into KEY_POWER, which the guest's
//! userspace (systemd-logind, busybox acpid) turns into a poweroff.

use crate::layout::{GED_ADDR, GED_IRQ};

/// AML PkgLength for `content` bytes following it (the encoding counts
/// its own bytes).
fn pkg_length(content: usize) -> Vec<u8> {
    if content + 1 < 0x40 {
        return vec![(content + 1) as u8];
    }
    let mut n = 2;
    while content + n >= 1 << (4 + 8 * (n - 1)) {
        n += 1;
    }
    let total = content + n;
    let mut v = vec![(((n - 1) << 6) | (total & 0xf)) as u8];
    for i in 0..n - 1 {
        v.push((total >> (4 + 8 * i)) as u8);
    }
    v
}

/// `op PkgLength body`.
fn pkg(op: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = op.to_vec();
    v.extend(pkg_length(body.len()));
    v.extend_from_slice(body);
    v
}

fn name(seg: &[u8; 4], object: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08];
    v.extend_from_slice(seg);
    v.extend_from_slice(object);
    v
}

fn device(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = seg.to_vec();
    b.extend_from_slice(body);
    pkg(&[0x5b, 0x82], &b)
}

/// `\_SB_.PWRB`
const PWRB_PATH: &[u8] = b"\\\x2e_SB_PWRB";

fn ged() -> Vec<u8> {
    let mut body = name(b"_HID", b"\x0dACPI0013\0");
    body.extend(name(b"_UID", &[0x00]));
    // Extended Interrupt: consumer, edge, active high, exclusive; one IRQ.
    let mut res = vec![0x89, 0x06, 0x00, 0x03, 0x01];
    res.extend_from_slice(&GED_IRQ.to_le_bytes());
    res.extend_from_slice(&[0x79, 0x00]);
    let mut buf = vec![0x0a, res.len() as u8];
    buf.extend(res);
    body.extend(name(b"_CRS", &pkg(&[0x11], &buf)));
    // OperationRegion (GDST, SystemMemory, GED_ADDR, 4)
    body.extend_from_slice(&[0x5b, 0x80]);
    body.extend_from_slice(b"GDST");
    body.push(0x00);
    body.push(0x0c);
    body.extend_from_slice(&(GED_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&[0x0a, devices::ged::LEN as u8]);
    // Field (GDST, DWordAcc, NoLock, WriteAsZeros) { GDAT, 32 }
    let mut field = b"GDST".to_vec();
    field.push(0x03 | (2 << 5));
    field.extend_from_slice(b"GDAT");
    field.push(32);
    body.extend(pkg(&[0x5b, 0x81], &field));
    // Method (_EVT, 1, Serialized)
    let mut method = b"_EVT".to_vec();
    method.push(0x09);
    method.extend_from_slice(b"\x70GDAT\x60"); // Store (GDAT, Local0)
    let mut then = vec![0x7b, 0x60, 0x01, 0x00]; // And (Local0, One, )
    then.push(0x86); // Notify (\_SB.PWRB, 0x80)
    then.extend_from_slice(PWRB_PATH);
    then.extend_from_slice(&[0x0a, 0x80]);
    method.extend(pkg(&[0xa0], &then));
    body.extend(pkg(&[0x14], &method));
    device(b"GED0", &body)
}

fn power_button() -> Vec<u8> {
    let mut body = name(b"_HID", &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]); // EisaId ("PNP0C0C")
    body.extend(name(b"_UID", &[0x00]));
    device(b"PWRB", &body)
}

/// The SSDT, with the header fields `oem_id`, `oem_table_id` and
/// `creator_id` as the other tables have them.
pub fn ssdt(oem_id: &[u8; 6], oem_table_id: &[u8; 8], creator_id: &[u8; 4]) -> Vec<u8> {
    let mut sb = b"\\_SB_".to_vec();
    sb.extend(ged());
    sb.extend(power_button());
    let mut t = b"SSDT".to_vec();
    t.extend_from_slice(&0u32.to_le_bytes());
    t.push(2);
    t.push(0);
    t.extend_from_slice(oem_id);
    t.extend_from_slice(oem_table_id);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(creator_id);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend(pkg(&[0x10], &sb));
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = 0u8.wrapping_sub(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_checksum() {
        let t = ssdt(b"SHMVM ", b"SHMVMPWR", b"SHMV");
        assert_eq!(&t[..4], b"SSDT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(pkg_length(62), vec![63]);
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
    }

    /// ACPICA's disassembler reads the table back as the objects above.
    #[test]
    fn ssdt_disassembles_with_iasl() {
        assert!(
            std::process::Command::new("iasl")
                .arg("-v")
                .output()
                .is_ok(),
            "this test needs iasl (apt-get install acpica-tools; `make deps`)"
        );
        let dir = std::env::temp_dir().join(format!("shmvm-ssdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ssdt.aml");
        std::fs::write(&f, ssdt(b"SHMVM ", b"SHMVMPWR", b"SHMV")).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&f)
            .output()
            .unwrap();
        let dsl = std::fs::read_to_string(dir.join("ssdt.dsl")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "Device (GED0)",
            "\"ACPI0013\"",
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
            "0x00000005,",
            "OperationRegion (GDST, SystemMemory, 0xFED00000, 0x04)",
            "GDAT,   32",
            "Method (_EVT, 1, Serialized)",
            "Notify (\\_SB.PWRB, 0x80)",
            "Device (PWRB)",
            "EisaId (\"PNP0C0C\")",
        ] {
            assert!(dsl.contains(want), "missing {want:?} in\n{dsl}");
        }
    }
}
