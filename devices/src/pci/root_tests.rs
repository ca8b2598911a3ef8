use super::*;
use crate::bus::Bus;
use crate::pci::{BarRegion, MapError};

#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    refuse_at: Mutex<Option<u64>>,
}

impl BarMapper for Recorder {
    fn map_bar(&self, device: PciAddress, r: &BarRegion) -> Result<(), MapError> {
        if *lock(&self.refuse_at) == Some(r.addr) {
            return Err(MapError(format!("refused {:#x}", r.addr)));
        }
        lock(&self.calls).push(format!("map {device} {r}"));
        Ok(())
    }
    fn unmap_bar(&self, device: PciAddress, r: &BarRegion) -> Result<(), MapError> {
        lock(&self.calls).push(format!("unmap {device} {r}"));
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.calls))
    }
}

/// A function with a register BAR0 and a 64-bit BAR2, like ivshmem.
struct TestDev {
    config: ConfigSpace,
    last_bar_read: Option<(usize, u64, usize)>,
}

impl PciDevice for TestDev {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        self.last_bar_read = Some((index, offset, data.len()));
        data.fill(0x42);
    }
}

fn test_dev() -> Arc<Mutex<TestDev>> {
    let mut config = ConfigSpace::new(PciIds {
        vendor: 0x1234,
        device: 0x5678,
        revision: 2,
        class: 0xff_00_00,
        subsystem_vendor: 0,
        subsystem: 0,
    });
    config
        .add_bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x100,
        )
        .unwrap();
    config
        .add_bar(2, BarKind::Memory64 { prefetchable: true }, 1 << 30)
        .unwrap();
    config.add_bar(4, BarKind::Io, 0x10).unwrap();
    Arc::new(Mutex::new(TestDev {
        config,
        last_bar_read: None,
    }))
}

fn windows() -> BarWindows {
    BarWindows {
        io: Some(0xc000..0x1_0000),
        mmio32: 0xc000_0000..0xfec0_0000,
        mmio64: Some(0x40_0000_0000..0x80_0000_0000),
    }
}

struct Fixture {
    rec: Arc<Recorder>,
    root: SharedPciRoot,
    pio: Bus,
}

fn fixture() -> Fixture {
    let rec = Arc::new(Recorder::default());
    let root = Arc::new(Mutex::new(PciRoot::new(rec.clone())));
    let pio = Bus::new();
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        PCI_CONFIG_IO_BASE,
        PCI_CONFIG_IO_LEN,
    )
    .unwrap();
    Fixture { rec, root, pio }
}

fn cf8(slot: u8, func: u8, reg: u32) -> u32 {
    0x8000_0000 | (u32::from(slot) << 11) | (u32::from(func) << 8) | reg
}

impl Fixture {
    fn read(&self, slot: u8, reg: u32, len: usize) -> u32 {
        self.pio.write(0xcf8, &cf8(slot, 0, reg & !3).to_le_bytes());
        let mut b = [0u8; 4];
        assert!(self.pio.read(0xcfc + u64::from(reg & 3), &mut b[..len]));
        u32::from_le_bytes(b)
    }
    fn write(&self, slot: u8, reg: u32, len: usize, v: u32) {
        self.pio.write(0xcf8, &cf8(slot, 0, reg & !3).to_le_bytes());
        self.pio
            .write(0xcfc + u64::from(reg & 3), &v.to_le_bytes()[..len]);
    }
}

#[test]
fn host_bridge_at_00_0() {
    let f = fixture();
    assert_eq!(f.read(0, 0, 4), 0x0008_1b36);
    assert_eq!(f.read(0, 8, 4) >> 8, 0x06_00_00);
    assert_eq!(f.read(0, 0xe, 1), 0, "single-function type-0 header");
}

#[test]
fn absent_functions_and_disabled_address_read_all_ones() {
    let f = fixture();
    for slot in 1..32 {
        assert_eq!(f.read(slot, 0, 4), 0xffff_ffff, "slot {slot}");
    }
    for addr in [
        cf8(0, 3, 0),
        cf8(0, 0, 0) | (1 << 16),
        cf8(0, 0, 0) & !0x8000_0000,
    ] {
        f.pio.write(0xcf8, &addr.to_le_bytes());
        let mut b = [0u8; 4];
        f.pio.read(0xcfc, &mut b);
        assert_eq!(b, [0xff; 4], "address {addr:#x}");
    }
    // Writes to an absent function go nowhere and do not panic.
    f.write(7, 0x10, 4, 0xffff_ffff);
    assert!(f.rec.take().is_empty());
}

#[test]
fn byte_word_dword_at_every_data_offset() {
    let f = fixture();
    let dev = test_dev();
    lock(&f.root).add_device(Some(3), dev).unwrap();
    for reg in (0..0x40u32).step_by(4) {
        let dword = f.read(3, reg, 4);
        for off in 0..4u32 {
            let want_b = (dword >> (8 * off)) & 0xff;
            assert_eq!(f.read(3, reg + off, 1), want_b, "byte {reg:#x}+{off}");
            if off <= 2 {
                assert_eq!(
                    f.read(3, reg + off, 2),
                    (dword >> (8 * off)) & 0xffff,
                    "word {reg:#x}+{off}"
                );
            }
        }
    }
    // A word at 0xCFF only has one byte inside the window; the rest is 0xff.
    f.pio.write(0xcf8, &cf8(3, 0, 0).to_le_bytes());
    let mut b = [0u8; 2];
    f.pio.read(0xcff, &mut b);
    assert_eq!(b, [0x56, 0xff]);
    // Byte writes land at every offset: latency timer (0x0d), interrupt line (0x3c).
    f.write(3, 0x0d, 1, 0x40);
    f.write(3, 0x3c, 1, 0x0b);
    f.write(3, 0x0e, 2, 0xffff);
    assert_eq!(f.read(3, 0x0c, 4), 0x0000_4000);
    assert_eq!(f.read(3, 0x3c, 4), 0x0000_000b);
    // Word write to the command register's upper byte only via offset 5.
    f.write(3, 0x05, 1, 0x04);
    assert_eq!(f.read(3, 0x04, 2), 0x0400);
}

#[test]
fn address_register_needs_a_dword() {
    let f = fixture();
    f.pio.write(0xcf8, &cf8(0, 0, 0x0b).to_le_bytes());
    let mut b = [0u8; 4];
    f.pio.read(0xcf8, &mut b);
    assert_eq!(
        u32::from_le_bytes(b),
        cf8(0, 0, 0x08),
        "reserved bits 1:0 read as zero"
    );
    f.pio.write(0xcf9, &[0x06]);
    f.pio.write(0xcf8, &[0, 0]);
    f.pio.read(0xcf8, &mut b);
    assert_eq!(u32::from_le_bytes(b), cf8(0, 0, 0x08));
    let mut w = [0u8; 2];
    f.pio.read(0xcfa, &mut w);
    assert_eq!(w, [0xff, 0xff]);
}

#[test]
fn ecam_reaches_the_same_space() {
    let f = fixture();
    lock(&f.root).add_device(Some(2), test_dev()).unwrap();
    let mut ecam = PciConfigMmio::new(f.root.clone());
    let mut b = [0u8; 4];
    ecam.read(2 << 15, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
    let mut w = [0u8; 2];
    ecam.read((2 << 15) + 2, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x5678);
    ecam.read((2 << 15) + 0x100, &mut b);
    assert_eq!(b, [0xff; 4], "extended space of a conventional function");
    ecam.read(ECAM_BUS_SIZE, &mut b);
    assert_eq!(b, [0xff; 4], "bus 1");
    ecam.read((2 << 15) + 2, &mut b);
    assert_eq!(b, [0xff; 4], "a dword crossing a dword boundary");
    ecam.write((2 << 15) + 0x3c, &[9]);
    ecam.read((2 << 15) + 0x3c, &mut b);
    assert_eq!(b[0], 9);
}

#[test]
fn assign_bars_like_firmware_and_guest_moves_reach_the_mapper() {
    let f = fixture();
    let dev = test_dev();
    let addr = lock(&f.root).add_device(None, dev).unwrap();
    assert_eq!(addr, PciAddress::new(1, 0));
    lock(&f.root).assign_bars(&windows()).unwrap();
    let mut calls = f.rec.take();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            "map 00:01.0 BAR0 mem 0xc0000000+0x100",
            "map 00:01.0 BAR2 mem 0x4000000000+0x40000000",
            "map 00:01.0 BAR4 io 0xc000+0x10",
        ]
    );
    assert_eq!(f.read(1, 0x04, 2) & 3, 3, "memory and I/O decoding enabled");
    assert_eq!(f.read(1, 0x18, 4), 0x0000_000c);
    assert_eq!(f.read(1, 0x1c, 4), 0x40);

    // The guest moves BAR2 the way Linux does: decoding off, low, high, on.
    f.write(1, 0x04, 2, 0x1);
    assert_eq!(
        f.rec.take(),
        vec![
            "unmap 00:01.0 BAR0 mem 0xc0000000+0x100",
            "unmap 00:01.0 BAR2 mem 0x4000000000+0x40000000"
        ]
    );
    f.write(1, 0x18, 4, 0x8000_000c);
    f.write(1, 0x1c, 4, 0x41);
    assert!(
        f.rec.take().is_empty(),
        "nothing decodes while memory is off"
    );
    f.write(1, 0x04, 2, 0x3);
    let mut calls = f.rec.take();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            "map 00:01.0 BAR0 mem 0xc0000000+0x100",
            "map 00:01.0 BAR2 mem 0x4180000000+0x40000000"
        ]
    );
    assert_eq!(lock(&f.root).mapped(addr, 2).unwrap().addr, 0x41_8000_0000);

    // With decoding on, the move happens once, when the high half lands.
    f.write(1, 0x18, 4, 0);
    assert!(f.rec.take().is_empty());
    f.write(1, 0x1c, 4, 0x42);
    assert_eq!(
        f.rec.take(),
        vec![
            "unmap 00:01.0 BAR2 mem 0x4180000000+0x40000000",
            "map 00:01.0 BAR2 mem 0x4200000000+0x40000000"
        ]
    );
    // I/O decoding off unmaps only the I/O BAR.
    f.write(1, 0x04, 2, 0x2);
    assert_eq!(f.rec.take(), vec!["unmap 00:01.0 BAR4 io 0xc000+0x10"]);
}

#[test]
fn refused_mapping_stays_unmapped() {
    let f = fixture();
    lock(&f.root).add_device(Some(1), test_dev()).unwrap();
    lock(&f.root).assign_bars(&windows()).unwrap();
    f.rec.take();
    *lock(&f.rec.refuse_at) = Some(0xd000_0000);
    f.write(1, 0x10, 4, 0xd000_0000);
    assert_eq!(
        f.rec.take(),
        vec!["unmap 00:01.0 BAR0 mem 0xc0000000+0x100"]
    );
    assert!(lock(&f.root).mapped(PciAddress::new(1, 0), 0).is_none());
    *lock(&f.rec.refuse_at) = None;
    f.write(1, 0x10, 4, 0xd000_1000);
    assert_eq!(
        f.rec.take(),
        vec!["map 00:01.0 BAR0 mem 0xd0001000+0x100"],
        "no unmap of what never mapped"
    );
}

#[test]
fn bar_registers_route_to_the_device() {
    let dev = test_dev();
    let mut regs = BarRegisters::new(dev.clone(), 0);
    let mut b = [0u8; 4];
    regs.read(0x8, &mut b);
    assert_eq!(b, [0x42; 4]);
    assert_eq!(lock(&dev).last_bar_read, Some((0, 8, 4)));
}

#[test]
fn slot_rules() {
    let f = fixture();
    let mut root = lock(&f.root);
    assert_eq!(root.add_device(Some(0), test_dev()), Err(Error::BadSlot(0)));
    assert_eq!(
        root.add_device(Some(32), test_dev()),
        Err(Error::BadSlot(32))
    );
    root.add_device(Some(5), test_dev()).unwrap();
    assert_eq!(
        root.add_device(Some(5), test_dev()),
        Err(Error::SlotInUse(5))
    );
    for _ in 0..30 {
        root.add_device(None, test_dev()).unwrap();
    }
    assert_eq!(root.add_device(None, test_dev()), Err(Error::NoFreeSlot));
}

#[test]
fn allocation_failure_names_device_and_bar() {
    let f = fixture();
    lock(&f.root).add_device(Some(4), test_dev()).unwrap();
    let tiny = BarWindows {
        io: None,
        mmio32: 0xc000_0000..0xc000_1000,
        mmio64: None,
    };
    let e = lock(&f.root).assign_bars(&tiny).unwrap_err().to_string();
    assert!(e.contains("00:04.0 BAR2") && e.contains("no room"), "{e}");
}
