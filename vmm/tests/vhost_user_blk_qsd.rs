//! The vhost-user-blk front-end against a real back-end:
//! `qemu-storage-daemon` (qemu-utils) exporting a raw image. No /dev/kvm:
//! the test plays the guest driver, writing split virtqueues into guest RAM
//! (a real memfd/shm backend) and kicking the eventfds the back-end polls.
//!
//! Needs `qemu-storage-daemon` on PATH; fails loudly without it.

#![allow(clippy::unwrap_used)]
// The front-end is built with the x86_64 machine only (no PCI on aarch64 yet).
#![cfg(target_arch = "x86_64")]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devices::virtio::QueueConfig;
use devices::virtio::features::VERSION_1;
use memory::Backend;
use shmvm_tests::qsd::Qsd;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{Bytes, GuestAddress};
use vmm::guest_ram::GuestRam;
use vmm::vhost_user_blk::{BlkFrontend, MemRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

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

fn ram(spec: &str) -> GuestRam {
    let cfg = vmm::config::object::parse(spec).unwrap();
    GuestRam::new(Backend::create(&cfg).unwrap()).unwrap()
}

/// One split virtqueue of 16 descriptors at `base` in guest RAM, driven
/// one request at a time.
struct Queue<'a> {
    ram: &'a GuestRam,
    base: u64,
    avail_idx: u16,
    kick: EventFd,
    call: EventFd,
}

const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

impl<'a> Queue<'a> {
    fn new(ram: &'a GuestRam, base: u64) -> Self {
        // Rings start zeroed: fresh backends are.
        Queue {
            ram,
            base,
            avail_idx: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    fn config(&self) -> QueueConfig {
        QueueConfig {
            index: 0,
            size: QSIZE,
            vector: 1,
            desc: self.base,
            driver: self.base + 0x1000,
            device: self.base + 0x2000,
        }
    }

    fn mem(&self) -> &'a vm_memory::GuestMemoryMmap {
        self.ram.mem()
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.base + 16 * u64::from(i);
        let m = self.mem();
        m.write_obj(addr, GuestAddress(at)).unwrap();
        m.write_obj(len, GuestAddress(at + 8)).unwrap();
        m.write_obj(flags, GuestAddress(at + 12)).unwrap();
        m.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// A virtio-blk request (type 0 read, 1 write) of one sector; returns
    /// the status byte and leaves the data at `data_gpa`.
    fn request(&mut self, kind: u32, sector: u64, data: &mut [u8; 512]) -> u8 {
        let (hdr, buf, status) = (self.base + 0x3000, self.base + 0x4000, self.base + 0x5000);
        let m = self.mem();
        m.write_obj(kind, GuestAddress(hdr)).unwrap();
        m.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        m.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        m.write_slice(data, GuestAddress(buf)).unwrap();
        m.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let data_flags = if kind == 0 { F_NEXT | F_WRITE } else { F_NEXT };
        self.desc(0, hdr, 16, F_NEXT, 1);
        self.desc(1, buf, 512, data_flags, 2);
        self.desc(2, status, 1, F_WRITE, 0);
        let avail = self.base + 0x1000;
        let slot = u64::from(self.avail_idx % QSIZE);
        m.write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        m.write_obj(self.avail_idx, GuestAddress(avail + 2))
            .unwrap();
        self.kick.write(1).unwrap();
        // Wait for the used index to move and the back-end's interrupt
        // (its call eventfd).
        let t = Instant::now();
        let mut called = false;
        loop {
            called |= self.call.read().is_ok();
            let used_idx: u16 = m.read_obj(GuestAddress(self.base + 0x2000 + 2)).unwrap();
            if used_idx == self.avail_idx && called {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no completion from the back-end (used index {used_idx}, interrupt {called})"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        m.read_slice(data, GuestAddress(buf)).unwrap();
        m.read_obj(GuestAddress(status)).unwrap()
    }
}

fn start(fe: &mut BlkFrontend, q: &Queue<'_>) {
    fe.start(
        VERSION_1,
        &[q.config()],
        std::slice::from_ref(&q.kick),
        std::slice::from_ref(&q.call),
    )
    .unwrap();
    // libvhost-user signals the call fd once when it gets it (in case a
    // reconnecting front-end missed an interrupt): not a completion.
    std::thread::sleep(Duration::from_millis(50));
    let _ = q.call.read();
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
    let mut fe = BlkFrontend::connect(&qsd.qsd.sock, regions, None).unwrap();
    assert_eq!(fe.capacity(), image_size / SECTOR, "GET_CONFIG capacity");
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
    assert_eq!(q.request(1, 8, &mut data), 0, "write status OK");
    assert_eq!(read_image(&qsd.img, 8), pattern, "image holds the pattern");
    // Read sector 16 (0xa5 bytes) into guest RAM.
    let mut data = [0u8; 512];
    assert_eq!(q.request(0, 16, &mut data), 0, "read status OK");
    assert_eq!(data, [0xa5; 512], "guest RAM holds the sector");
    // Past the end of the disk: an I/O error status, not a hang.
    assert_ne!(q.request(0, image_size / SECTOR, &mut data), 0);
    // Reset and start again (a driver reboot) with a fresh ring.
    fe.stop().unwrap();
    let mut q = Queue::new(&ram, queue_gpa + 0x10_0000);
    start(&mut fe, &q);
    let mut data = [0u8; 512];
    assert_eq!(q.request(0, 8, &mut data), 0);
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
    let mut fe = BlkFrontend::connect(&qsd.qsd.sock, regions, None).unwrap();
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
            std::slice::from_ref(&q2.kick),
            std::slice::from_ref(&q2.call)
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
    let e = BlkFrontend::connect(Path::new("/nonexistent/vhost.sock"), regions, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("vhost-user back-end /nonexistent/vhost.sock: cannot connect"),
        "{e}"
    );
}
