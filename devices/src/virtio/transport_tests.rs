//! The transport driven the way Linux's virtio_pci_modern and virtio core
//! drive it: capability walk, BAR sizing, reset, feature negotiation, MSI-X
//! set-up, queue set-up, DRIVER_OK, kicks and device configuration reads.

use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::config::{REG_BAR0, REG_CAP_PTR, REG_COMMAND, REG_STATUS, STATUS_CAP_LIST};
use crate::pci::{CMD_MASTER, CMD_MEMORY};

const BLK_SIZE_MAX: u64 = 1 << 1;
const BLK_SEG_MAX: u64 = 1 << 2;
const BLK_FLUSH: u64 = 1 << 9;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    FeaturesOk(u64),
    DriverOk(Vec<QueueConfig>),
    Reset,
    Vector(u16, MsixVector),
    Notify(u16),
    Region(Option<NotifyRegion>),
    ConfigWrite(u64, Vec<u8>),
}

#[derive(Default)]
struct Shared {
    events: Vec<Event>,
    refuse_features: bool,
    fail_start: bool,
}

/// The owner: records events; its device configuration is a block
/// device's capacity (in 512-byte sectors) followed by zeros.
struct Recorder {
    shared: Arc<Mutex<Shared>>,
    config: Vec<u8>,
}

impl TransportEvents for Recorder {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.config[o..o + data.len()]);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.push(Event::ConfigWrite(offset, data.to_vec()));
    }
    fn features_ok(&mut self, features: u64) -> Result<(), String> {
        self.push(Event::FeaturesOk(features));
        if self.shared.lock().unwrap().refuse_features {
            return Err("back-end says no".into());
        }
        Ok(())
    }
    fn driver_ok(&mut self, queues: &[QueueConfig]) -> Result<(), String> {
        self.push(Event::DriverOk(queues.to_vec()));
        if self.shared.lock().unwrap().fail_start {
            return Err("back-end gone".into());
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.push(Event::Reset);
    }
    fn msix_vector(&mut self, vector: u16, state: MsixVector) {
        self.push(Event::Vector(vector, state));
    }
    fn queue_notify(&mut self, queue: u16) {
        self.push(Event::Notify(queue));
    }
    fn notify_region(&mut self, region: Option<NotifyRegion>) {
        self.push(Event::Region(region));
    }
}

impl Recorder {
    fn push(&self, e: Event) {
        self.shared.lock().unwrap().events.push(e);
    }
}

const CAPACITY: u64 = 0x20_0000; // sectors: 1 GiB
const BAR_ADDR: u64 = 0x8_0000_0000;

fn block(queues: u16) -> (VirtioPci, Arc<Mutex<Shared>>) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut config = vec![0u8; 60];
    config[..8].copy_from_slice(&CAPACITY.to_le_bytes());
    let owner = Recorder {
        shared: shared.clone(),
        config,
    };
    let dev = VirtioPci::new(
        VirtioPciConfig {
            device_type: super::super::TYPE_BLOCK,
            features: BLK_SIZE_MAX
                | BLK_SEG_MAX
                | BLK_FLUSH
                | features::RING_EVENT_IDX
                | features::RING_RESET
                | features::ACCESS_PLATFORM,
            queues,
            max_queue_size: 256,
            device_config_len: 60,
        },
        Box::new(owner),
    )
    .unwrap();
    (dev, shared)
}

fn take(shared: &Arc<Mutex<Shared>>) -> Vec<Event> {
    std::mem::take(&mut shared.lock().unwrap().events)
}

/// What the driver learned from the capability list.
#[derive(Debug, Default)]
struct Caps {
    common: Option<(u8, u32, u32)>,
    isr: Option<(u8, u32, u32)>,
    device: Option<(u8, u32, u32)>,
    notify: Option<(u8, u32, u32)>,
    multiplier: u32,
    msix: Option<usize>,
}

/// A driver: config space accesses and accesses into the BAR at BAR_ADDR
/// (offsets relative to the BAR, as the bus would deliver them).
struct Driver {
    dev: VirtioPci,
    caps: Caps,
}

impl Driver {
    fn cfg_read(&mut self, off: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read_config(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }
    fn cfg_write(&mut self, off: usize, len: usize, v: u32) {
        self.dev.write_config(off, &v.to_le_bytes()[..len]);
    }
    fn read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(BAR_INDEX, off, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    fn write(&mut self, off: u64, len: usize, v: u64) {
        self.dev.write_bar(BAR_INDEX, off, &v.to_le_bytes()[..len]);
    }
    fn common(&self) -> u64 {
        u64::from(self.caps.common.unwrap().1)
    }
    fn status(&mut self) -> u8 {
        let c = self.common();
        self.read(c + 0x14, 1) as u8
    }
    fn set_status(&mut self, s: u8) {
        let c = self.common();
        self.write(c + 0x14, 1, u64::from(s));
    }

    /// Walks the capability list like virtio_pci_find_capability.
    fn parse_caps(&mut self) {
        assert_ne!(
            self.cfg_read(REG_STATUS, 2) as u16 & STATUS_CAP_LIST,
            0,
            "capability list bit"
        );
        let mut pos = self.cfg_read(REG_CAP_PTR, 1) as usize;
        let mut seen = 0;
        while pos != 0 {
            seen += 1;
            assert!(seen < 48, "capability loop");
            assert_eq!(pos % 4, 0, "capabilities are dword aligned");
            let id = self.cfg_read(pos, 1) as u8;
            let next = self.cfg_read(pos + 1, 1) as usize;
            match id {
                0x09 => {
                    let cfg_type = self.cfg_read(pos + 3, 1) as u8;
                    let bar = self.cfg_read(pos + 4, 1) as u8;
                    let offset = self.cfg_read(pos + 8, 4);
                    let length = self.cfg_read(pos + 12, 4);
                    let entry = Some((bar, offset, length));
                    match cfg_type {
                        1 => self.caps.common = entry,
                        2 => {
                            self.caps.notify = entry;
                            self.caps.multiplier = self.cfg_read(pos + 16, 4);
                            assert_eq!(self.cfg_read(pos + 2, 1), 20, "notify cap_len");
                        }
                        3 => self.caps.isr = entry,
                        4 => self.caps.device = entry,
                        t => panic!("unexpected virtio structure type {t}"),
                    }
                }
                0x11 => self.caps.msix = Some(pos),
                other => panic!("unexpected capability {other:#x}"),
            }
            pos = next;
        }
    }

    /// Sizes and places the 64-bit BAR, then enables memory and bus master.
    fn place_bar(&mut self) {
        self.cfg_write(REG_BAR0, 4, !0);
        self.cfg_write(REG_BAR0 + 4, 4, !0);
        let lo = self.cfg_read(REG_BAR0, 4);
        let hi = self.cfg_read(REG_BAR0 + 4, 4);
        assert_eq!(lo & 0x7, 0x4, "64-bit memory BAR");
        let size = !((u64::from(hi) << 32) | u64::from(lo & !0xf)) + 1;
        assert_eq!(size, BAR_SIZE);
        self.cfg_write(REG_BAR0, 4, BAR_ADDR as u32);
        self.cfg_write(REG_BAR0 + 4, 4, (BAR_ADDR >> 32) as u32);
        self.cfg_write(REG_COMMAND, 2, u32::from(CMD_MEMORY | CMD_MASTER));
    }

    /// pci_msix_enable: enable with the function masked, program entries,
    /// unmask them, then unmask the function.
    fn enable_msix(&mut self, vectors: u16) {
        let cap = self.caps.msix.unwrap();
        let table_size = (self.cfg_read(cap + 2, 2) & 0x7ff) + 1;
        assert!(u32::from(vectors) <= table_size);
        let table = self.cfg_read(cap + 4, 4);
        let pba = self.cfg_read(cap + 8, 4);
        assert_eq!((table & 7, pba & 7), (0, 0), "table and PBA in BAR0");
        let table = u64::from(table & !7);
        self.cfg_write(cap + 2, 2, 0xc000);
        for v in 0..u64::from(vectors) {
            let e = table + 16 * v;
            self.write(e, 4, 0xfee0_0000 | (v << 12));
            self.write(e + 4, 4, 0);
            self.write(e + 8, 4, 0x30 + v);
            self.write(e + 12, 4, 0);
        }
        self.cfg_write(cap + 2, 2, 0x8000);
    }

    /// vp_modern_probe through virtio_dev_probe and vp_find_vqs up to
    /// DRIVER_OK, returning the features the driver took.
    fn init(&mut self, queues: u16, queue_size: u16) -> u64 {
        self.parse_caps();
        self.place_bar();
        // vp_reset: write 0, wait until it reads 0.
        self.set_status(0);
        assert_eq!(self.status(), 0);
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        let c = self.common();
        self.write(c, 4, 0);
        let lo = self.read(c + 4, 4);
        self.write(c, 4, 1);
        let hi = self.read(c + 4, 4);
        let offered = lo | (hi << 32);
        // The driver takes what it knows of the offer.
        let known =
            BLK_SEG_MAX | BLK_SIZE_MAX | BLK_FLUSH | features::RING_EVENT_IDX | features::VERSION_1;
        let take = offered & known;
        self.write(c + 8, 4, 0);
        self.write(c + 0xc, 4, take & 0xffff_ffff);
        self.write(c + 8, 4, 1);
        self.write(c + 0xc, 4, take >> 32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(s);
        assert_eq!(self.status(), s, "FEATURES_OK accepted");
        // Config vector 0, queue q gets vector q + 1.
        self.enable_msix(queues + 1);
        self.write(c + 0x10, 2, 0);
        assert_eq!(self.read(c + 0x10, 2), 0);
        assert_eq!(self.read(c + 0x12, 2), u64::from(queues), "num_queues");
        for q in 0..u64::from(queues) {
            self.write(c + 0x16, 2, q);
            assert_eq!(self.read(c + 0x18, 2), 256, "max queue size");
            assert_eq!(self.read(c + 0x1c, 2), 0, "not enabled yet");
            self.write(c + 0x18, 2, u64::from(queue_size));
            let base = 0x10_0000 * (q + 1);
            for (reg, addr) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
                self.write(c + reg, 4, addr & 0xffff_ffff);
                self.write(c + reg + 4, 4, addr >> 32);
            }
            self.write(c + 0x1a, 2, q + 1);
            assert_eq!(self.read(c + 0x1a, 2), q + 1, "vector taken");
            assert_eq!(self.read(c + 0x1e, 2), q, "queue_notify_off");
            self.write(c + 0x1c, 2, 1);
        }
        self.set_status(s | status::DRIVER_OK);
        take
    }
}

fn driver(queues: u16) -> (Driver, Arc<Mutex<Shared>>) {
    let (dev, shared) = block(queues);
    (
        Driver {
            dev,
            caps: Caps::default(),
        },
        shared,
    )
}

#[test]
fn identity_is_a_modern_block_device() {
    let (mut d, _) = driver(1);
    assert_eq!(d.cfg_read(0, 4), 0x1042_1af4);
    assert_eq!(d.cfg_read(8, 1), 1, "revision 1");
    assert_eq!(d.cfg_read(0x0b, 1), 0x01, "mass storage class");
    assert_eq!(d.cfg_read(0x2c, 2), 0x1af4);
}

#[test]
fn capabilities_describe_every_region() {
    let (mut d, _) = driver(2);
    d.parse_caps();
    let c = &d.caps;
    assert_eq!(c.common, Some((0, 0, 0x40)));
    assert_eq!(c.isr, Some((0, 0x1000, 4)));
    assert_eq!(c.device, Some((0, 0x2000, 60)));
    assert_eq!(c.notify, Some((0, 0x3000, 8)));
    assert_eq!(c.multiplier, NOTIFY_OFF_MULTIPLIER);
    assert_eq!(c.msix, Some(d.dev.msix_capability()));
    // Linux requires the common structure to hold at least 0x38 bytes.
    assert!(c.common.unwrap().2 >= 0x38);
    // Writes into the capabilities change nothing.
    let cap = d.dev.msix_capability();
    for off in (0x40..cap).step_by(4) {
        let before = d.cfg_read(off, 4);
        d.cfg_write(off, 4, 0xa5a5_a5a5);
        assert_eq!(d.cfg_read(off, 4), before, "capability byte {off:#x}");
    }
}

#[test]
fn a_device_without_configuration_has_no_device_capability() {
    // Linux fails the whole probe on a device capability of length 0.
    let owner = Recorder {
        shared: Arc::new(Mutex::new(Shared::default())),
        config: Vec::new(),
    };
    let dev = VirtioPci::new(
        VirtioPciConfig {
            device_type: 4,
            features: 0,
            queues: 1,
            max_queue_size: 4,
            device_config_len: 0,
        },
        Box::new(owner),
    )
    .unwrap();
    let mut d = Driver {
        dev,
        caps: Caps::default(),
    };
    d.parse_caps();
    assert_eq!(d.caps.device, None);
    assert!(d.caps.common.is_some() && d.caps.isr.is_some() && d.caps.notify.is_some());
    assert_eq!(d.cfg_read(0, 4), 0x1044_1af4, "virtio-rng");
}

#[test]
fn full_linux_init_sequence() {
    let (mut d, shared) = driver(2);
    let took = d.init(2, 128);
    assert_eq!(
        took,
        BLK_SIZE_MAX | BLK_SEG_MAX | BLK_FLUSH | features::RING_EVENT_IDX | features::VERSION_1
    );
    let ev = take(&shared);
    let region = NotifyRegion {
        base: BAR_ADDR + NOTIFY_OFFSET,
        multiplier: 4,
        queues: 2,
    };
    let vec = |v: u64| MsixVector {
        address: 0xfee0_0000 | (v << 12),
        data: 0x30 + v as u32,
        masked: false,
    };
    let q = |i: u16| QueueConfig {
        index: i,
        size: 128,
        vector: i + 1,
        desc: 0x10_0000 * (u64::from(i) + 1),
        driver: 0x10_0000 * (u64::from(i) + 1) + 0x1000,
        device: 0x10_0000 * (u64::from(i) + 1) + 0x2000,
    };
    assert_eq!(
        ev,
        vec![
            Event::Region(Some(region)),
            Event::Reset,
            Event::FeaturesOk(took),
            Event::Vector(0, vec(0)),
            Event::Vector(1, vec(1)),
            Event::Vector(2, vec(2)),
            Event::DriverOk(vec![q(0), q(1)]),
        ]
    );
    assert_eq!(region.queue_addr(1), BAR_ADDR + 0x3004);
    assert_eq!(d.status(), 0x0f);
    // A kick that exits reaches the owner with its queue.
    d.write(NOTIFY_OFFSET + 4, 2, 1);
    assert_eq!(take(&shared), vec![Event::Notify(1)]);
    // virtio_blk reads capacity as two 32-bit halves.
    let dc = u64::from(d.caps.device.unwrap().1);
    let cap = d.read(dc, 4) | (d.read(dc + 4, 4) << 32);
    assert_eq!(cap, CAPACITY);
    d.write(dc + 0x20, 1, 1);
    assert_eq!(take(&shared), vec![Event::ConfigWrite(0x20, vec![1])]);
    // Queue set-up is frozen after DRIVER_OK.
    d.write(0x16, 2, 0);
    d.write(0x18, 2, 64);
    assert_eq!(d.read(0x18, 2), 128);
    let s = d.dev.stats();
    assert_eq!((s.driver_ok, s.notify_exits, s.bad_accesses), (1, 1, 0));
}

#[test]
fn offer_drops_what_the_transport_cannot_do() {
    let (d, _) = driver(1);
    let f = d.dev.offered_features();
    assert_ne!(f & features::VERSION_1, 0);
    assert_eq!(f & features::TRANSPORT_UNSUPPORTED, 0);
    assert_ne!(f & BLK_FLUSH, 0);
}

fn negotiate(d: &mut Driver, take: u64) -> u8 {
    d.parse_caps();
    d.place_bar();
    d.set_status(0);
    d.set_status(status::ACKNOWLEDGE | status::DRIVER);
    d.write(8, 4, 0);
    d.write(0xc, 4, take & 0xffff_ffff);
    d.write(8, 4, 1);
    d.write(0xc, 4, take >> 32);
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    d.status()
}

#[test]
fn feature_negotiation_refusals() {
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    // Not offered (ACCESS_PLATFORM is dropped from the offer).
    let (mut d, shared) = driver(1);
    assert_eq!(
        negotiate(&mut d, features::VERSION_1 | features::ACCESS_PLATFORM),
        ok & !status::FEATURES_OK
    );
    assert!(
        !take(&shared)
            .iter()
            .any(|e| matches!(e, Event::FeaturesOk(_)))
    );
    // A legacy driver (no VERSION_1).
    let (mut d, _) = driver(1);
    assert_eq!(negotiate(&mut d, BLK_FLUSH), ok & !status::FEATURES_OK);
    // The owner refuses.
    let (mut d, shared) = driver(1);
    shared.lock().unwrap().refuse_features = true;
    assert_eq!(
        negotiate(&mut d, features::VERSION_1),
        ok & !status::FEATURES_OK
    );
    // Accepted; later writes to driver_feature are ignored.
    let (mut d, _) = driver(1);
    assert_eq!(negotiate(&mut d, features::VERSION_1 | BLK_FLUSH), ok);
    d.write(8, 4, 0);
    d.write(0xc, 4, 0);
    assert_eq!(d.dev.driver_features(), features::VERSION_1 | BLK_FLUSH);
    // Feature words past 1 read as zero.
    d.write(0, 4, 2);
    assert_eq!(d.read(4, 4), 0);
}

#[test]
fn reset_returns_to_power_on_state() {
    let (mut d, shared) = driver(2);
    d.init(2, 64);
    take(&shared);
    d.set_status(0);
    assert_eq!(take(&shared), vec![Event::Reset]);
    assert_eq!(d.status(), 0);
    assert_eq!(d.read(0x10, 2), u64::from(NO_VECTOR), "msix_config");
    assert_eq!(d.read(0x16, 2), 0, "queue_select");
    for q in 0..2 {
        d.write(0x16, 2, q);
        assert_eq!(d.read(0x18, 2), 256, "queue_size back to max");
        assert_eq!(d.read(0x1a, 2), u64::from(NO_VECTOR));
        assert_eq!(d.read(0x1c, 2), 0);
        assert_eq!(d.read(0x20, 8), 0);
    }
    assert_eq!(d.dev.driver_features(), 0);
    // MSI-X belongs to PCI: the table keeps its entries.
    assert_eq!(d.read(MSIX_TABLE_OFFSET + 24, 4), 0x31);
    // A second init works and starts the device again.
    d.caps = Caps::default();
    d.init(2, 256);
    assert!(
        take(&shared)
            .iter()
            .any(|e| matches!(e, Event::DriverOk(q) if q.len() == 2 && q[0].size == 256))
    );
    assert_eq!(d.dev.stats().resets, 2 + 1);
}

#[test]
fn failed_start_sets_needs_reset() {
    let (mut d, shared) = driver(1);
    shared.lock().unwrap().fail_start = true;
    d.init(1, 256);
    assert_eq!(
        d.status() & status::DEVICE_NEEDS_RESET,
        status::DEVICE_NEEDS_RESET
    );
    // The flag survives later status writes until a reset.
    d.set_status(0x0f);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    d.set_status(0);
    assert_eq!(d.status(), 0);
}

#[test]
fn driver_ok_without_features_ok_is_refused() {
    let (mut d, shared) = driver(1);
    d.parse_caps();
    d.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert!(
        !take(&shared)
            .iter()
            .any(|e| matches!(e, Event::DriverOk(_)))
    );
}

#[test]
fn msix_table_programming_and_vector_limits() {
    let (mut d, shared) = driver(2);
    d.parse_caps();
    d.place_bar();
    take(&shared);
    let cap = d.caps.msix.unwrap();
    assert_eq!(d.cfg_read(cap + 2, 2) & 0x7ff, 2, "3 vectors");
    // Entries written while MSI-X is off are not routed yet.
    d.write(MSIX_TABLE_OFFSET + 16, 8, 0xfee0_2000);
    d.write(MSIX_TABLE_OFFSET + 24, 4, 0x41);
    d.write(MSIX_TABLE_OFFSET + 28, 4, 0);
    assert!(take(&shared).is_empty());
    d.cfg_write(cap + 2, 2, 0x8000);
    assert_eq!(
        take(&shared),
        vec![Event::Vector(
            1,
            MsixVector {
                address: 0xfee0_2000,
                data: 0x41,
                masked: false
            }
        )]
    );
    // The function mask masks it; clearing it unmasks it.
    d.cfg_write(cap + 2, 2, 0xc000);
    assert!(matches!(
        take(&shared)[..],
        [Event::Vector(1, MsixVector { masked: true, .. })]
    ));
    d.cfg_write(cap + 2, 2, 0x8000);
    assert!(matches!(
        take(&shared)[..],
        [Event::Vector(1, MsixVector { masked: false, .. })]
    ));
    // A vector past the table reads back as NO_VECTOR.
    d.write(0x16, 2, 0);
    d.write(0x1a, 2, 3);
    assert_eq!(d.read(0x1a, 2), u64::from(NO_VECTOR));
    d.write(0x10, 2, 7);
    assert_eq!(d.read(0x10, 2), u64::from(NO_VECTOR));
    // PBA reads zero.
    assert_eq!(d.read(MSIX_PBA_OFFSET, 8), 0);
}

#[test]
fn bar_moves_and_disable_report_the_notify_region() {
    let (mut d, shared) = driver(1);
    d.place_bar();
    take(&shared);
    // Linux moves a 64-bit BAR low half first with decoding off.
    d.cfg_write(REG_COMMAND, 2, 0);
    assert_eq!(take(&shared), vec![Event::Region(None)]);
    d.cfg_write(REG_BAR0, 4, 0xc000_0000);
    d.cfg_write(REG_BAR0 + 4, 4, 0);
    d.cfg_write(REG_COMMAND, 2, u32::from(CMD_MEMORY));
    assert_eq!(
        take(&shared),
        vec![Event::Region(Some(NotifyRegion {
            base: 0xc000_3000,
            multiplier: 4,
            queues: 1
        }))]
    );
    // Unrelated config writes report nothing.
    d.cfg_write(0x0c, 1, 0x10);
    assert!(take(&shared).is_empty());
}

#[test]
fn odd_accesses_are_counted_not_fatal() {
    let (mut d, shared) = driver(1);
    // Straddling fields, unaligned, or past the structure.
    assert_eq!(d.read(0x13, 2), 0);
    assert_eq!(d.read(0x02, 4), 0);
    assert_eq!(d.read(0x40, 4), 0);
    d.write(0x12, 4, 0xffff_ffff);
    // Past the device configuration and notification areas.
    assert_eq!(d.read(DEVICE_CFG_OFFSET + 60, 4), 0);
    d.write(NOTIFY_OFFSET + 4, 2, 1);
    assert_eq!(d.dev.stats().bad_accesses, 6);
    assert!(take(&shared).is_empty());
    // A narrower read of a wide field works (byte of num_queues).
    assert_eq!(d.read(0x12, 1), 1);
    // Another BAR index reads all-ones.
    let mut b = [0u8; 4];
    d.dev.read_bar(2, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn bad_configurations_are_refused() {
    let mk = |queues, max_queue_size, device_config_len| {
        let shared = Arc::new(Mutex::new(Shared::default()));
        VirtioPci::new(
            VirtioPciConfig {
                device_type: 2,
                features: 0,
                queues,
                max_queue_size,
                device_config_len,
            },
            Box::new(Recorder {
                shared,
                config: Vec::new(),
            }),
        )
        .map(|_| ())
    };
    assert_eq!(mk(0, 256, 60), Err(Error::Queues(0)));
    assert_eq!(mk(512, 256, 60), Err(Error::Queues(512)));
    assert_eq!(mk(1, 100, 60), Err(Error::QueueSize(100)));
    assert_eq!(mk(1, 256, 5000), Err(Error::DeviceConfig(5000)));
    assert_eq!(mk(MAX_QUEUES, 32768, 4096), Ok(()));
}
