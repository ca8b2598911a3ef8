//! The vhost-user-blk front-end against a real back-end:
//! `qemu-storage-daemon` (qemu-utils) exporting a raw image. No /dev/kvm:
//! the test plays the guest driver, writing split virtqueues into guest RAM
//! (a real memfd/shm backend) and kicking the eventfds the back-end polls.
//!
//! Needs `qemu-storage-daemon` on PATH; fails loudly without it.

#![allow(clippy::unwrap_used)]
// The front-end is built with the x86_64 machine only (no PCI on aarch64 yet).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devices::virtio::features::VERSION_1;
use shmvm_tests::qsd::Qsd;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{Bytes, GuestAddress};
use vmm::vhost_user::kinds::Spec;
use vmm::vhost_user::{KindConfig, Link, MemRegion};

mod common;
use common::{Queue, ram, start};

const SECTOR: u64 = 512;

/// A back-end serving a fresh image in its own temp dir; the dir goes on drop.
struct Backing {
    qsd: Qsd,
    dir: PathBuf,
    img: PathBuf,
}

impl Backing {
    fn start(tag: &str, image_size: u64) -> Backing {
        let dir = std::env::temp_dir().join(format!("shmvm-vub-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(image_size).unwrap();
        // A known sector for read requests: sector 16 holds 0xa5 bytes.
        f.write_all_at(&[0xa5; SECTOR as usize], 16 * SECTOR)
            .unwrap();
        drop(f);
        let qsd = Qsd::start(&img, &dir.join("vhost.sock"));
        Backing { qsd, dir, img }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        self.qsd.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The block device's spec, as `-device vhost-user-blk-pci` makes it.
fn blk() -> Spec {
    KindConfig::Blk { num_queues: None }.spec()
}

/// The disk size in sectors, from the configuration (GET_CONFIG).
fn capacity(fe: &Link) -> u64 {
    u64::from_le_bytes(fe.config()[..8].try_into().unwrap())
}

/// A virtio-blk request (type 0 read, 1 write) of one sector; returns the
/// status byte and leaves the data in `data`.
fn blk_request(q: &mut Queue<'_>, kind: u32, sector: u64, data: &mut [u8; 512]) -> u8 {
    let (hdr, buf, status) = (q.base + 0x3000, q.base + 0x4000, q.base + 0x5000);
    let m = q.mem();
    m.write_obj(kind, GuestAddress(hdr)).unwrap();
    m.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
    m.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
    m.write_slice(data, GuestAddress(buf)).unwrap();
    m.write_obj(0xffu8, GuestAddress(status)).unwrap();
    q.submit(&[(hdr, 16, false), (buf, 512, kind == 0), (status, 1, true)]);
    m.read_slice(data, GuestAddress(buf)).unwrap();
    m.read_obj(GuestAddress(status)).unwrap()
}

fn read_image(img: &Path, sector: u64) -> Vec<u8> {
    let f = std::fs::File::open(img).unwrap();
    let mut b = vec![0u8; SECTOR as usize];
    f.read_exact_at(&mut b, sector * SECTOR).unwrap();
    b
}

/// Handshake and I/O with guest RAM `spec`, the queue at `queue_gpa`.
fn handshake_and_io(tag: &str, spec: &str, queue_gpa: u64, expect_regions: usize) {
    let image_size = 64 << 20;
    let qsd = Backing::start(tag, image_size);
    let ram = ram(spec);
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    assert_eq!(regions.len(), expect_regions, "{regions:?}");
    let mut fe = Link::connect(&qsd.qsd.sock, regions, blk()).unwrap();
    assert_eq!(capacity(&fe), image_size / SECTOR, "GET_CONFIG capacity");
    assert_ne!(fe.backend_features() & VERSION_1, 0);
    assert!(
        fe.protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG)
    );
    assert_eq!(fe.guest_features() & (1 << 30), 0, "no vhost-user bit");
    assert_eq!(fe.queues(), 1);

    let mut q = Queue::new(&ram, queue_gpa);
    start(&mut fe, &q);
    // Write a pattern to sector 8, check the image file.
    let mut data = [0u8; 512];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0x3c;
    }
    let pattern = data;
    assert_eq!(blk_request(&mut q, 1, 8, &mut data), 0, "write status OK");
    assert_eq!(read_image(&qsd.img, 8), pattern, "image holds the pattern");
    // Read sector 16 (0xa5 bytes) into guest RAM.
    let mut data = [0u8; 512];
    assert_eq!(blk_request(&mut q, 0, 16, &mut data), 0, "read status OK");
    assert_eq!(data, [0xa5; 512], "guest RAM holds the sector");
    // Past the end of the disk: an I/O error status, not a hang.
    assert_ne!(blk_request(&mut q, 0, image_size / SECTOR, &mut data), 0);
    // Reset and start again (a driver reboot) with a fresh ring.
    fe.stop().unwrap();
    let mut q = Queue::new(&ram, queue_gpa + 0x10_0000);
    start(&mut fe, &q);
    let mut data = [0u8; 512];
    assert_eq!(blk_request(&mut q, 0, 8, &mut data), 0);
    assert_eq!(data, pattern, "data read back after a restart");
}

#[test]
fn memfd_ram_split_around_the_hole_queue_above_4g() {
    // 3.25 GiB: 3 GiB below the hole, 256 MiB above 4 GiB, one fd.
    handshake_and_io(
        "memfd",
        "memory-backend-memfd,id=m,size=3328M,reserve=off",
        0x1_0000_0000 + 0x20_0000,
        2,
    );
}

#[test]
fn shm_ram_single_region() {
    handshake_and_io("shm", "memory-backend-shm,id=s,size=64M", 0x10_0000, 1);
}

#[test]
fn file_share_on_ram() {
    let dir = std::env::temp_dir();
    handshake_and_io(
        "file",
        &format!(
            "memory-backend-file,id=f,size=32M,mem-path={},share=on",
            dir.display()
        ),
        0x20_0000,
        1,
    );
}

#[test]
fn backend_death_is_reported_not_hung() {
    let mut qsd = Backing::start("death", 1 << 20);
    let ram = ram("memory-backend-memfd,id=m,size=32M");
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    let mut fe = Link::connect(&qsd.qsd.sock, regions, blk()).unwrap();
    let q = Queue::new(&ram, 0x10_0000);
    start(&mut fe, &q);
    assert!(!fe.is_dead());
    qsd.qsd.kill();
    let t = Instant::now();
    while !fe.is_dead() {
        assert!(t.elapsed() < Duration::from_secs(5), "hang-up not noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Later requests fail at once instead of blocking.
    let t = Instant::now();
    let q2 = Queue::new(&ram, 0x20_0000);
    assert!(
        fe.start(
            VERSION_1,
            &[q2.config()],
            &[q2.kick.try_clone().unwrap().into()],
            &[q2.call.try_clone().unwrap().into()]
        )
        .is_err()
    );
    fe.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn missing_socket_names_it() {
    let ram = ram("memory-backend-memfd,id=m,size=16M");
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    let e = Link::connect(Path::new("/nonexistent/vhost.sock"), regions, blk())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("vhost-user back-end /nonexistent/vhost.sock: cannot connect"),
        "{e}"
    );
}
