//! The generic vhost-user front-end against real back-ends of other device
//! types: `vhost-device-rng`, `virtiofsd` and `vhost-device-vsock`
//! (installed by `make deps`). No /dev/kvm: the test plays the guest
//! driver on guest RAM from a real memfd/shm backend (see `common`), so
//! each test proves the handshake, the memory table, the features, the
//! configuration and the queues by a real request the back-end answers
//! through guest RAM; then the back-end is killed and the front-end says
//! so once, without blocking.
//!
//! Fails loudly when a back-end is not installed.

#![allow(clippy::unwrap_used)]
// The front-end is built with the x86_64 machine only (no PCI on aarch64 yet).
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use devices::virtio::features::VERSION_1;
use shmvm_tests::qsd::VhostBackend;
use vm_memory::{Bytes, GuestAddress};
use vmm::vhost_user::kinds::{Kind, KindConfig};
use vmm::vhost_user::{Link, MemRegion};

mod common;
use common::{Queue, ram, start, start_all};

/// A fresh directory for one test's sockets and files; removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("shmvm-vu-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills `b` and waits (bounded) for the front-end to notice.
fn kill_and_expect_dead(b: &mut VhostBackend, fe: &mut Link) {
    assert!(!fe.is_dead());
    b.kill();
    let t = Instant::now();
    while !fe.is_dead() {
        assert!(t.elapsed() < Duration::from_secs(5), "hang-up not noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Stopping a dead back-end's rings does not block.
    let t = Instant::now();
    fe.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn rng_bytes_arrive_in_guest_ram_from_vhost_device_rng() {
    let dir = Dir::new("rng");
    let mut b = VhostBackend::rng(&dir.0.join("rng.sock"));
    let ram = ram("memory-backend-memfd,id=m,size=32M");
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    let mut fe = Link::connect(&b.sock, regions, KindConfig::Rng.spec()).unwrap();
    assert_eq!(fe.queues(), 1);
    assert!(fe.config().is_empty(), "virtio-rng has no configuration");
    assert_ne!(fe.guest_features() & VERSION_1, 0);
    assert_eq!(fe.guest_features() & 0x00ff_ffff, 0, "no device bits");

    let mut q = Queue::new(&ram, 0x10_0000);
    start(&mut fe, &q);
    let buf = 0x10_3000;
    for round in 0..2 {
        ram.mem()
            .write_slice(&[0u8; 64], GuestAddress(buf))
            .unwrap();
        let n = q.submit(&[(buf, 64, true)]);
        assert_eq!(n, 64, "round {round}: the back-end filled the buffer");
        let mut got = [0u8; 64];
        ram.mem().read_slice(&mut got, GuestAddress(buf)).unwrap();
        assert!(
            got.iter().filter(|&&x| x != 0).count() > 32,
            "random bytes, not zeros: {got:x?}"
        );
    }
    kill_and_expect_dead(&mut b, &mut fe);
}

/// A guest driver kicks as soon as its DRIVER_OK write returns (Linux's
/// virtio-rng queues its first request in probe, right after DRIVER_OK,
/// and never kicks again until it is answered). The back-end must then
/// already run the ring: vhost-device-rng acknowledges nothing (no
/// REPLY_ACK) and drops a kick that comes before its SET_VRING_ENABLE, so
/// `start` has to return only once the back-end has processed it. Each
/// round is a fresh back-end (vhost-device-rng 0.1 keeps its used index
/// across a ring restart, so one back-end cannot be restarted cleanly).
#[test]
fn a_kick_right_after_start_is_answered_by_vhost_device_rng() {
    let dir = Dir::new("rngkick");
    let ram = ram("memory-backend-memfd,id=m,size=32M");
    for round in 0..25 {
        let mut b = VhostBackend::rng(&dir.0.join(format!("rng{round}.sock")));
        let regions = MemRegion::from_ram(ram.backend()).unwrap();
        let mut fe = Link::connect(&b.sock, regions, KindConfig::Rng.spec()).unwrap();
        let mut q = Queue::new(&ram, 0x10_0000 + 0x1_0000 * round);
        let (kick, call) = (q.kick.try_clone().unwrap(), q.call.try_clone().unwrap());
        fe.start(VERSION_1, &[q.config()], &[kick.into()], &[call.into()])
            .unwrap();
        // No pause: the kick follows the start as a vCPU's does.
        q.offer(&[(q.base + 0x3000, 64, true)]);
        let n = q
            .wait_used_within(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("round {round}: the first kick was lost: {e}"));
        assert_eq!(n, 64, "round {round}");
        b.kill();
    }
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const FUSE_IN_HEADER: usize = 40;
const FUSE_OUT_HEADER: usize = 16;

/// A FUSE request on a virtio-fs request queue: header and body in one
/// device-readable buffer, the reply in one device-writable buffer.
/// Returns the reply (header included).
fn fuse(q: &mut Queue<'_>, opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let (req, rep) = (q.base + 0x3000, q.base + 0x4000);
    let len = (FUSE_IN_HEADER + body.len()) as u32;
    let mut hdr = Vec::with_capacity(len as usize);
    hdr.extend_from_slice(&len.to_le_bytes());
    hdr.extend_from_slice(&opcode.to_le_bytes());
    hdr.extend_from_slice(&unique.to_le_bytes());
    hdr.extend_from_slice(&nodeid.to_le_bytes());
    hdr.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    hdr.extend_from_slice(body);
    let m = q.mem();
    m.write_slice(&hdr, GuestAddress(req)).unwrap();
    m.write_slice(&[0u8; 0x1000], GuestAddress(rep)).unwrap();
    let n = q.submit(&[(req, len, false), (rep, 0x1000, true)]);
    let mut out = vec![0u8; n as usize];
    m.read_slice(&mut out, GuestAddress(rep)).unwrap();
    assert!(out.len() >= FUSE_OUT_HEADER, "reply of {n} bytes");
    let u = |o: usize| u32::from_le_bytes(out[o..o + 4].try_into().unwrap());
    assert_eq!(u(0) as usize, out.len(), "fuse_out_header.len");
    assert_eq!(u(4), 0, "fuse_out_header.error for opcode {opcode}");
    assert_eq!(&out[8..16], &unique.to_le_bytes());
    out
}

#[test]
fn virtiofsd_answers_fuse_init_and_lookup_through_guest_ram() {
    let dir = Dir::new("fs");
    let shared = dir.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), b"hello from the host\n").unwrap();
    let mut b = VhostBackend::virtiofsd(&shared, &dir.0.join("fs.sock"));
    let ram = ram("memory-backend-shm,id=s,size=64M");
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    let kind = KindConfig::Fs {
        tag: "hostfs".into(),
        num_request_queues: 1,
        queue_size: 128,
    };
    let mut fe = Link::connect(&b.sock, regions, kind.spec()).unwrap();
    assert_eq!(fe.queues(), 2, "hiprio and one request queue");
    let cfg = fe.config();
    assert_eq!(cfg.len(), 40);
    assert_eq!(&cfg[..7], b"hostfs\0", "the tag, as the guest reads it");
    assert_eq!(&cfg[36..], &1u32.to_le_bytes());

    let hiprio = Queue::indexed(&ram, 0, 0x10_0000);
    let mut req = Queue::indexed(&ram, 1, 0x20_0000);
    start_all(&mut fe, VERSION_1, &[&hiprio, &req]);
    // FUSE_INIT 7.31: major, minor, max_readahead, flags, flags2, unused.
    let mut init = Vec::new();
    for v in [7u32, 31, 0x2_0000, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    init.extend_from_slice(&[0u8; 44]);
    let out = fuse(&mut req, FUSE_INIT, 1, 0, &init);
    let major = u32::from_le_bytes(out[16..20].try_into().unwrap());
    assert_eq!(major, 7, "FUSE major version");
    // LOOKUP hello.txt in the root (node 1): the entry's attr.size is the
    // file's (fuse_entry_out: nodeid, generation, 2 valid u64s, 2 nsec
    // u32s, then fuse_attr: ino, size).
    let out = fuse(&mut req, FUSE_LOOKUP, 2, 1, b"hello.txt\0");
    let entry = &out[FUSE_OUT_HEADER..];
    let size = u64::from_le_bytes(entry[48..56].try_into().unwrap());
    assert_eq!(size, 20, "the host file's size, through virtiofsd");
    kill_and_expect_dead(&mut b, &mut fe);
}

#[test]
fn vsock_config_and_a_host_connection_reach_the_guest_through_vhost_device_vsock() {
    let dir = Dir::new("vsock");
    let uds = dir.0.join("vm.vsock");
    let mut b = VhostBackend::vsock(&dir.0.join("vsock.sock"), 5, &uds);
    let ram = ram("memory-backend-memfd,id=m,size=32M");
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    let mut fe = Link::connect(&b.sock, regions, KindConfig::Vsock.spec()).unwrap();
    assert_eq!(fe.queues(), 3, "rx, tx, event");
    assert_eq!(
        fe.config(),
        &5u64.to_le_bytes(),
        "guest_cid from GET_CONFIG"
    );
    assert_eq!(fe.spec().row.kind, Kind::Vsock);

    let mut rx = Queue::indexed(&ram, 0, 0x10_0000);
    let tx = Queue::indexed(&ram, 1, 0x20_0000);
    let ev = Queue::indexed(&ram, 2, 0x30_0000);
    start_all(&mut fe, VERSION_1, &[&rx, &tx, &ev]);
    let buf = rx.base + 0x3000;
    rx.offer(&[(buf, 0x1000, true)]);
    // The host side connects to guest port 1234: the back-end turns it
    // into a VIRTIO_VSOCK_OP_REQUEST packet on the rx queue.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    let n = rx.wait_used();
    assert!(n >= 44, "a virtio_vsock_hdr: {n} bytes");
    let mut hdr = [0u8; 44];
    ram.mem().read_slice(&mut hdr, GuestAddress(buf)).unwrap();
    let u64at = |o: usize| u64::from_le_bytes(hdr[o..o + 8].try_into().unwrap());
    let u32at = |o: usize| u32::from_le_bytes(hdr[o..o + 4].try_into().unwrap());
    let op = u16::from_le_bytes([hdr[30], hdr[31]]);
    assert_eq!(
        (u64at(0), u64at(8)),
        (2, 5),
        "from the host (CID 2) to CID 5"
    );
    assert_eq!(u32at(20), 1234, "dst_port");
    assert_eq!(op, 1, "VIRTIO_VSOCK_OP_REQUEST");
    kill_and_expect_dead(&mut b, &mut fe);
    // The host side sees the back-end gone too.
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = [0u8; 64];
    assert!(matches!(host.read(&mut sink), Ok(0) | Err(_)));
}

#[test]
fn a_type_needing_more_queues_than_served_is_refused() {
    // virtiofsd serves hiprio + 1 request queue; asking for 4 request
    // queues is a clear error at connect, not a guest that hangs.
    let dir = Dir::new("fsq");
    let shared = dir.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let b = VhostBackend::virtiofsd(&shared, &dir.0.join("fs.sock"));
    let ram = ram("memory-backend-memfd,id=m,size=32M");
    let regions = MemRegion::from_ram(ram.backend()).unwrap();
    let kind = KindConfig::Fs {
        tag: "t".into(),
        num_request_queues: 4,
        queue_size: 128,
    };
    let e = Link::connect(&b.sock, regions, kind.spec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("the vhost-user-fs-pci needs 5"), "{e}");
}
