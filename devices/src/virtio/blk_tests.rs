//! virtio-blk requests as Linux's virtio_blk sends them, and malformed
//! ones, against a real image file.

use super::*;
use crate::virtio::device::Queues;
use crate::virtio::queue::ChainError;
use crate::virtio::queue::tests::{DATA, Driver};

const HDR: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const BUF: u64 = DATA + 0x1000;

/// A temporary image of `sectors` sectors, removed on drop.
struct Image(std::path::PathBuf);

impl Image {
    fn new(tag: &str, sectors: u64) -> Image {
        let p = std::env::temp_dir().join(format!("shmvm-blk-{}-{tag}.img", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(sectors * SECTOR).unwrap();
        Image(p)
    }

    fn open(&self, readonly: bool) -> Block {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(&self.0)
            .unwrap();
        Block::new(BlockConfig {
            file,
            readonly,
            serial: b"disk-serial".to_vec(),
        })
        .unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

struct Rig {
    d: Driver,
    queues: Queues,
    blk: Block,
}

impl Rig {
    fn new(blk: Block) -> Rig {
        let d = Driver::new(8);
        let queues = Queues::new(1, &[d.config(0)], &d.mem).unwrap();
        Rig { d, queues, blk }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.d.mem.write(HDR, &h).unwrap();
        self.d.mem.write(STATUS, &[0xff]).unwrap();
    }

    /// Sends a request of `kind` at `sector` with `len` data bytes at BUF
    /// (device-writable for reads); returns (status, used length).
    fn request(&mut self, kind: u32, sector: u64, len: u32) -> (u8, u32) {
        self.header(kind, sector);
        let in_ = matches!(kind, request::IN | request::GET_ID);
        let mut bufs = vec![(HDR, 16, false)];
        if len > 0 {
            bufs.push((BUF, len, in_));
        }
        bufs.push((STATUS, 1, true));
        self.d.chain(0, &bufs);
        self.run().unwrap();
        let used = self.d.used();
        assert_eq!(used.len(), 1, "{used:?}");
        let mut s = [0u8];
        self.d.mem.read(STATUS, &mut s).unwrap();
        (s[0], used[0].1)
    }

    fn run(&mut self) -> Result<(), QueueError> {
        self.blk.kick(0, &mut self.queues, &self.d.mem)
    }
}

#[test]
fn writes_read_back_and_flush() {
    let img = Image::new("rw", 64);
    let mut r = Rig::new(img.open(false));
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    r.d.mem.write(BUF, &data).unwrap();
    assert_eq!(r.request(request::OUT, 8, 4096), (S_OK, 1));
    r.d.mem.write(BUF, &[0; 4096]).unwrap();
    assert_eq!(r.request(request::IN, 8, 4096), (S_OK, 4097));
    let mut back = vec![0u8; 4096];
    r.d.mem.read(BUF, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(r.request(request::FLUSH, 0, 0), (S_OK, 1));
    // On disk, where the guest put it.
    let disk = std::fs::read(&img.0).unwrap();
    assert_eq!(&disk[8 * 512..8 * 512 + 4096], &data[..]);
    let s = r.blk.stats();
    assert_eq!((s.reads, s.writes, s.flushes, s.errors), (1, 1, 1, 0));
    assert_eq!((s.read_bytes, s.write_bytes), (4096, 4096));
}

#[test]
fn a_request_larger_than_the_bounce_buffer() {
    let img = Image::new("big", 8192);
    let mut r = Rig::new(img.open(false));
    let len = (CHUNK + 3 * 4096) as u32;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    // Two descriptors so the chunks straddle them.
    r.d.mem.write(BUF, &data).unwrap();
    r.header(request::OUT, 16);
    r.d.chain(
        0,
        &[
            (HDR, 16, false),
            (BUF, 4096, false),
            (BUF + 4096, len - 4096, false),
            (STATUS, 1, true),
        ],
    );
    r.run().unwrap();
    assert_eq!(r.d.used(), [(0, 1)]);
    let disk = std::fs::read(&img.0).unwrap();
    assert_eq!(&disk[16 * 512..16 * 512 + len as usize], &data[..]);
}

#[test]
fn get_id_answers_the_serial() {
    let img = Image::new("id", 8);
    let mut r = Rig::new(img.open(true));
    assert_eq!(r.request(request::GET_ID, 0, 20), (S_OK, 21));
    let mut id = [0u8; 20];
    r.d.mem.read(BUF, &mut id).unwrap();
    assert_eq!(&id[..11], b"disk-serial");
    assert!(id[11..].iter().all(|&b| b == 0));
}

#[test]
fn requests_past_the_disk_or_of_partial_sectors_are_ioerr() {
    let img = Image::new("bounds", 8);
    let mut r = Rig::new(img.open(false));
    assert_eq!(r.request(request::IN, 7, 1024).0, S_IOERR);
    assert_eq!(r.request(request::OUT, 8, 512).0, S_IOERR);
    assert_eq!(r.request(request::IN, u64::MAX / 256, 512).0, S_IOERR);
    assert_eq!(r.request(request::OUT, 0, 100).0, S_IOERR);
    // The last sector is fine.
    assert_eq!(r.request(request::IN, 7, 512), (S_OK, 513));
    assert_eq!(r.blk.stats().errors, 4);
}

#[test]
fn writes_to_a_readonly_disk_are_ioerr_and_features_say_ro() {
    let img = Image::new("ro", 8);
    let mut r = Rig::new(img.open(true));
    assert_ne!(r.blk.features() & features::RO, 0);
    assert_eq!(r.request(request::OUT, 0, 512).0, S_IOERR);
    assert_eq!(r.request(request::IN, 0, 512).0, S_OK);
}

#[test]
fn unknown_types_are_unsupp_and_short_headers_ioerr() {
    let img = Image::new("unsupp", 8);
    let mut r = Rig::new(img.open(false));
    // DISCARD (11) is not offered.
    assert_eq!(r.request(11, 0, 16).0, S_UNSUPP);
    // A header of 8 bytes.
    r.header(request::IN, 0);
    r.d.chain(0, &[(HDR, 8, false), (STATUS, 1, true)]);
    r.run().unwrap();
    assert_eq!(r.d.used(), [(0, 1)]);
    let mut s = [0u8];
    r.d.mem.read(STATUS, &mut s).unwrap();
    assert_eq!(s[0], S_IOERR);
    // No writable byte at all: completed with nothing written.
    r.d.chain(0, &[(HDR, 16, false)]);
    r.run().unwrap();
    assert_eq!(r.d.used(), [(0, 0)]);
}

#[test]
fn bad_chains_break_the_device_without_touching_the_disk() {
    let img = Image::new("bad", 8);
    let mut r = Rig::new(img.open(false));
    // A loop.
    r.header(request::OUT, 0);
    r.d.desc(0, HDR, 16, 1, 1);
    r.d.desc(1, BUF, 512, 1, 0);
    r.d.publish(0);
    assert!(matches!(
        r.run(),
        Err(QueueError::Chain {
            err: ChainError::TooLong(8),
            ..
        })
    ));
    // Data outside RAM.
    let mut r = Rig::new(img.open(false));
    r.header(request::IN, 0);
    r.d.chain(
        0,
        &[(HDR, 16, false), (1 << 40, 512, true), (STATUS, 1, true)],
    );
    assert!(matches!(
        r.run(),
        Err(QueueError::Chain {
            err: ChainError::Buffer { .. },
            ..
        })
    ));
    assert_eq!(r.d.used(), []);
    assert_eq!(r.blk.stats(), BlockStats::default());
}

#[test]
fn config_space_has_capacity_and_limits() {
    let img = Image::new("cfg", 100);
    let blk = img.open(false);
    let c = blk.config();
    assert_eq!(c.len(), CONFIG_LEN);
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), 100);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
}

#[test]
fn write_zeroes_zeroes_its_range_and_checks_it() {
    let img = Image::new("wz", 64);
    std::fs::write(&img.0, vec![0xffu8; 64 * 512]).unwrap();
    let mut r = Rig::new(img.open(false));
    assert_ne!(r.blk.features() & features::WRITE_ZEROES, 0);
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = Vec::new();
        s.extend_from_slice(&sector.to_le_bytes());
        s.extend_from_slice(&n.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    };
    r.d.mem.write(BUF, &seg(2, 3, 1)).unwrap();
    assert_eq!(r.request(request::WRITE_ZEROES, 0, 16), (S_OK, 1));
    let disk = std::fs::read(&img.0).unwrap();
    assert!(disk[..1024].iter().all(|&b| b == 0xff));
    assert!(disk[1024..2560].iter().all(|&b| b == 0));
    assert!(disk[2560..].iter().all(|&b| b == 0xff));
    // Past the end, unknown flags, two segments, a partial segment.
    for (bytes, len) in [
        (seg(63, 2, 0), 16),
        (seg(0, 1, 2), 16),
        ([seg(0, 1, 0), seg(4, 1, 0)].concat(), 32),
        (seg(0, 1, 0), 12),
    ] {
        r.d.mem.write(BUF, &bytes).unwrap();
        assert_eq!(
            r.request(request::WRITE_ZEROES, 0, len).0,
            S_IOERR,
            "{bytes:?}"
        );
    }
    let c = r.blk.config();
    assert_eq!(
        u32::from_le_bytes(c[48..52].try_into().unwrap()),
        MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(u32::from_le_bytes(c[52..56].try_into().unwrap()), 1);
}
