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

use acpi_tables::Aml;
use acpi_tables::aml::{self, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule};
use acpi_tables::sdt::Sdt;

use crate::layout::{GED_ADDR, GED_IRQ};

/// The common table header's length.
const HEADER_LEN: u32 = 36;

/// The SSDT, with the other tables' OEM fields.
pub fn ssdt(oem_id: [u8; 6], oem_table_id: [u8; 8], oem_revision: u32) -> Vec<u8> {
    let ged_hid: aml::AmlStr = "ACPI0013";
    let irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&irq]);
    let base = u32::try_from(GED_ADDR).unwrap_or(u32::MAX);
    let len = u8::try_from(devices::ged::LEN).unwrap_or(u8::MAX);
    let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemMemory, &base, &len);
    let field = aml::Field::new(
        "GDST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 32)],
    );
    // Local0 = GDAT (reading clears it); If (Local0 & 1) { Notify (PWRB, 0x80) }
    let gdat: aml::Path = "GDAT".into();
    let local0 = aml::Local(0);
    let read = aml::Store::new(&local0, &gdat);
    let pressed = aml::And::new(&aml::ZERO, &local0, &aml::ONE);
    let pwrb: aml::Path = "\\_SB_.PWRB".into();
    let button_notify = 0x80u8;
    let notify = aml::Notify::new(&pwrb, &button_notify);
    let on_press = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &on_press]);
    let (hid, uid, crs) = (
        aml::Name::new("_HID".into(), &ged_hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    );
    let ged = aml::Device::new("GED0".into(), vec![&hid, &uid, &crs, &region, &field, &evt]);
    let pwrb_hid = aml::EISAName::new("PNP0C0C");
    let button_hid = aml::Name::new("_HID".into(), &pwrb_hid);
    let button = aml::Device::new("PWRB".into(), vec![&button_hid, &uid]);
    let sb = aml::Scope::new("\\_SB_".into(), vec![&ged, &button]);
    let mut t = Sdt::new(*b"SSDT", HEADER_LEN, 2, oem_id, oem_table_id, oem_revision);
    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    t.append_slice(&body);
    t.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_checksum() {
        let t = ssdt(*b"SHMVM ", *b"SHMVMPWR", 1);
        assert_eq!(&t[..4], b"SSDT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
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
        std::fs::write(&f, ssdt(*b"SHMVM ", *b"SHMVMPWR", 1)).unwrap();
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
