//! The bodies of shmvm's fuzz targets: one function per parser or device
//! model that takes untrusted input (a user's command line, a snapshot
//! file, a guest's rings and config writes, a peer's or back-end's
//! messages). Each takes any bytes and must return without panicking,
//! hanging or leaking; what it finds wrong it reports as a panic.
//!
//! `fuzz/` (cargo-fuzz, libFuzzer, nightly) drives each with coverage
//! feedback; `tests/corpus.rs` replays the seed corpus in
//! `fuzz/corpus/<target>/` on stable Rust, as part of `cargo test`.

use std::ffi::OsString;
#[cfg(target_arch = "x86_64")]
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
#[cfg(target_arch = "x86_64")]
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A target's body: any bytes in, a panic on anything wrong.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory and fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("keyval", keyval),
    ("cmdline", cmdline),
    #[cfg(target_arch = "x86_64")]
    ("kernel_image", kernel_image),
    #[cfg(target_arch = "x86_64")]
    ("snapshot_state", snapshot_state),
    ("virtio_chain", virtio_chain),
    ("pci_config", pci_config),
    ("watchdog", watchdog),
    ("ivshmem_protocol", ivshmem_protocol),
    #[cfg(target_arch = "x86_64")]
    ("vhost_user_replies", vhost_user_replies),
];

/// Reads input bytes in order; past the end it gives zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The QEMU keyval parser (`-object`, `-device`, `-drive`, ...) and its
/// typed accessors: the first byte picks the implied key.
pub fn keyval(data: &[u8]) {
    use vmm::config::keyval::{KeyVal, parse_bool, parse_num};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    let implied = [None, Some("driver"), Some("qom-type"), Some("path")][usize::from(pick % 4)];
    let _ = parse_num(&s);
    let _ = parse_bool(&s);
    let Ok(mut kv) = KeyVal::parse(&s, implied) else {
        return;
    };
    for key in ["id", "size", "path", "driver", "share", "mem-path", "addr"] {
        if kv.has(key) {
            match pick % 3 {
                0 => drop(kv.take_size(key, 1 << 20)),
                1 => drop(kv.take_num(key)),
                _ => drop(kv.take_bool(key)),
            }
        }
    }
    let _ = kv.take_all("x");
    let _ = kv.finish(&["id", "size"]);
}

/// The whole command line (option table, clap, keyval, configuration):
/// arguments are the input split at NUL bytes. Every error is one line.
pub fn cmdline(data: &[u8]) {
    let mut argv = vec![OsString::from("shmvm")];
    argv.extend(
        data.split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec())),
    );
    // `--restore DIR` reads DIR's state file: only from a path that cannot
    // block (no FIFOs or devices named by the input).
    if argv
        .iter()
        .any(|a| a.as_encoded_bytes().starts_with(b"/dev"))
    {
        return;
    }
    if let Err(vmm::cli::ParseOutcome::Error(e)) = vmm::cli::parse(argv) {
        let line = vmm::cli::one_line(&e.to_string());
        assert!(!line.contains('\n'), "multi-line error: {line:?}");
    }
}

/// A `-kernel` image (64- or 32-bit ELF, bzImage, Multiboot: whatever the
/// bytes claim) loaded into 16 MiB of guest RAM with the boot data: it
/// loads or fails in one line, bounded by the file and RAM, never by a
/// header's claim.
#[cfg(target_arch = "x86_64")]
pub fn kernel_image(data: &[u8]) {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm::boot::samples::{SCRATCH_RAM, load_image};
    let path = std::env::temp_dir().join(format!(
        "shmvm-fuzz-kernel-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).expect("write the image");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SCRATCH_RAM as usize)])
        .expect("guest RAM");
    let r = load_image(&mem, &path);
    let _ = std::fs::remove_file(&path);
    if let Err(e) = r {
        let line = e.to_string();
        assert!(!line.contains('\n'), "multi-line error: {line:?}");
    }
}

/// A snapshot's state file (header, CRC-32, JSON state): the input as the
/// file, and the input as its payload under a valid header (so the JSON
/// layer is reached whatever the checksum).
#[cfg(target_arch = "x86_64")]
pub fn snapshot_state(data: &[u8]) {
    use vmm::snapshot::{State, format};
    let _ = State::parse(data);
    let _ = State::parse(&format::encode(data));
}

/// Guest RAM as a vector (addresses `[0, len)`).
struct VecMemory(std::sync::Mutex<Vec<u8>>);

impl VecMemory {
    fn range(&self, gpa: u64, len: u64) -> Result<std::ops::Range<usize>, MemoryError> {
        let err = MemoryError { gpa, len };
        let total = self.0.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        match gpa.checked_add(len) {
            Some(end) if end <= total => Ok(gpa as usize..end as usize),
            _ => Err(err),
        }
    }
}

use devices::virtio::queue::{GuestMemory, MemoryError};

impl GuestMemory for VecMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, buf.len() as u64)?;
        buf.copy_from_slice(&self.0.lock().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(gpa, buf.len() as u64)?;
        self.0.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(buf);
        Ok(())
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        self.range(gpa, len).is_ok()
    }
    fn load_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn store_u16(&self, gpa: u64, value: u16) -> Result<(), MemoryError> {
        self.write(gpa, &value.to_le_bytes())
    }
}

/// Walking a guest's split virtqueue: the input picks the queue size and
/// where the rings are, and is the rest of 64 KiB of guest RAM (descriptor
/// tables, indirect tables, rings, buffers). Chains are popped, read,
/// written and returned; no chain may claim buffers outside RAM.
pub fn virtio_chain(data: &[u8]) {
    use devices::virtio::QueueConfig;
    use devices::virtio::queue::{QueueError, SplitQueue};
    const RAM: usize = 64 << 10;
    let mut b = Bytes(data);
    let size = 1u16 << (b.u8() % 9);
    let (desc, driver, device) = (
        u64::from(b.u16()) & !15,
        u64::from(b.u16()) & !1,
        u64::from(b.u16()) & !3,
    );
    let mut ram = vec![0u8; RAM];
    let image = b.take(RAM);
    ram[..image.len()].copy_from_slice(image);
    let mem = VecMemory(std::sync::Mutex::new(ram));
    let cfg = QueueConfig {
        index: 0,
        size,
        vector: 0,
        desc,
        driver,
        device,
    };
    let Ok(mut q) = SplitQueue::new(cfg, &mem) else {
        return;
    };
    let mut buf = [0u8; 512];
    for _ in 0..2 * u32::from(size) + 2 {
        match q.pop(&mem) {
            Ok(Some(chain)) => {
                for d in &chain.descriptors {
                    assert!(mem.contains(d.addr, u64::from(d.len)), "{d:?} outside RAM");
                }
                let r = chain.readable_len();
                let _ = chain.read_at(&mem, r.saturating_sub(100), &mut buf[..100]);
                let _ = chain.write_at(&mem, 3, &buf[..64]);
                let w = chain.writable_len().min(u64::from(u32::MAX)) as u32;
                let _ = q.add_used(&mem, chain.head, w);
                let _ = q.wants_interrupt(&mem);
            }
            Ok(None) => break,
            Err(QueueError::Chain { .. }) => {}
            Err(_) => break,
        }
    }
}

/// The PCI configuration space of an ivshmem-doorbell-like function
/// (three BARs, MSI-X) and its MSI-X table, under any access sequence:
/// offsets past the space, sizes 1 to 8. BARs that decode stay sane.
pub fn pci_config(data: &[u8]) {
    use devices::pci::config::{BarKind, ConfigSpace, PciIds};
    use devices::pci::msix::Msix;
    let mut cs = ConfigSpace::new(PciIds {
        vendor: 0x1af4,
        device: 0x1110,
        revision: 1,
        class: 0x05_00_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    });
    let bars = [
        (
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x100,
        ),
        (1, BarKind::Io, 0x20),
        (2, BarKind::Memory64 { prefetchable: true }, 1 << 22),
    ];
    for (i, k, s) in bars {
        cs.add_bar(i, k, s).expect("a fixed BAR layout");
    }
    let mut m = Msix::new(4);
    let (body, mask) = m.capability(1, 0, 0x800);
    cs.add_capability(&body, &mask)
        .expect("the MSI-X capability");
    let mut b = Bytes(data);
    while !b.is_empty() {
        let op = b.u8();
        let len = usize::from(op >> 5) + 1;
        let offset = usize::from(b.u16() % 0x120);
        let value = b.u64().to_le_bytes();
        match op % 4 {
            0 => {
                for ch in cs.write(offset, &value[..len]) {
                    if let Some(r) = ch.new {
                        assert!(r.addr != 0 && r.addr.checked_add(r.size).is_some(), "{r:?}");
                    }
                }
            }
            1 => cs.read(offset, &mut [0u8; 8][..len]),
            2 => drop(m.write_table(offset as u64, &value[..len])),
            _ => {
                drop(m.set_control(u16::from_le_bytes([value[0], value[1]])));
                m.read_table(offset as u64, &mut [0u8; 8][..len]);
                m.read_pba(offset as u64, &mut [0u8; 8][..len]);
            }
        }
    }
    for v in 0..4 {
        assert!(m.vector(v).is_some());
    }
}

/// The i6300esb watchdog under any sequence of configuration and BAR0
/// accesses (sizes 1 to 8, offsets past its registers) and clock steps:
/// a deadline is only set while it is enabled and never lies in the past
/// (every clock step is followed by the timer's `expire`, as the VMM's
/// thread does), expiring never panics, and a firing leaves it disabled.
pub fn watchdog(data: &[u8]) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use devices::i6300esb::{Clock, Expiry, I6300esb, TimerEvents};
    use devices::pci::PciDevice;

    struct Steps(AtomicU64);
    impl Clock for Steps {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }
    struct Quiet;
    impl TimerEvents for Quiet {
        fn deadline_changed(&self, _: Option<u64>) {}
    }
    let clock = Arc::new(Steps(AtomicU64::new(0)));
    let mut d = I6300esb::new(clock.clone(), Arc::new(Quiet));
    let mut b = Bytes(data);
    while !b.is_empty() {
        let op = b.u8();
        let len = usize::from(op >> 5) + 1;
        let offset = b.u16();
        let value = b.u64().to_le_bytes();
        match op % 5 {
            0 => drop(d.write_config(usize::from(offset % 0x110), &value[..len])),
            1 => d.read_config(usize::from(offset % 0x110), &mut [0u8; 8][..len]),
            2 => d.write_bar(0, u64::from(offset % 0x20), &value[..len]),
            3 => d.read_bar(0, u64::from(offset % 0x20), &mut [0u8; 8][..len]),
            _ => {
                // Up to ~17 minutes a step: one 1 kHz stage at most.
                let step = u64::from_le_bytes(value) % (1 << 40);
                clock.0.fetch_add(step, Ordering::Relaxed);
                if d.expire() == Some(Expiry::Fired) {
                    assert!(!d.enabled(), "fired but still enabled");
                }
            }
        }
        if let Some(at) = d.deadline() {
            assert!(d.enabled(), "a deadline while disabled");
            assert!(at >= clock.now_ns(), "a deadline left in the past");
        }
    }
}

/// QEMU's ivshmem server protocol as a peer reads it: the input is the
/// server's side, messages of a 64-bit value and a flag byte (bit 0: with
/// an fd: a memfd for the shared memory, else an eventfd), then the socket
/// closes. The handshake and the notices after it must end in a setup or
/// an error, never a hang.
pub fn ivshmem_protocol(data: &[u8]) {
    use ivshmem_server::protocol::{handshake, notice, recv, send};
    let (server, peer) = UnixStream::pair().expect("socketpair");
    let mut b = Bytes(data);
    let vectors = match b.u8() % 3 {
        0 => None,
        n => Some(usize::from(n)),
    };
    let mut sent = 0;
    while !b.is_empty() && sent < 64 {
        let value = b.u64() as i64;
        let flags = b.u8();
        let r = if flags & 1 == 0 {
            send(&server, value, None::<&std::fs::File>)
        } else {
            let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC).expect("eventfd");
            send(&server, value, Some(&efd))
        };
        if r.is_err() {
            break;
        }
        sent += 1;
    }
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(2);
    if let Ok(mut setup) = handshake(&peer, vectors, deadline, Duration::from_millis(1)) {
        while let Ok(m) = recv(&peer, Some(deadline), "a notice") {
            let Ok(n) = notice(m) else { break };
            if setup.table.apply(n, vectors).is_err() {
                break;
            }
        }
    }
}

/// A vhost-user back-end's replies, as the front-end's set-up at connect
/// reads them: a back-end on a socket answers each request that wants a
/// reply from the input (its own header with the request's code, or raw
/// bytes), then hangs up. The set-up must end in a link or one error.
#[cfg(target_arch = "x86_64")]
pub fn vhost_user_replies(data: &[u8]) {
    use vmm::vhost_user::{KindConfig, Link};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("shmvm-fuzz-vu-{}-{n}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("vu.sock");
    let listener = UnixListener::bind(&path).expect("bind a socket in the temp dir");
    let kind = match data.first().copied().unwrap_or(0) % 3 {
        0 => KindConfig::Blk { num_queues: None },
        1 => KindConfig::Rng,
        _ => KindConfig::Vsock,
    };
    let input = data.get(1..).unwrap_or_default().to_vec();
    let backend = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        // A request the front-end sends comes at once; a quiet socket means
        // it waits for a reply this back-end did not give: hang up then.
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
        let mut b = Bytes(&input);
        while !b.is_empty() {
            // The request: header (code, flags, size), then its body.
            let mut hdr = [0u8; 12];
            if s.read_exact(&mut hdr).is_err() {
                return;
            }
            let code = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
            let mut body = vec![0u8; size.min(4096) as usize];
            if s.read_exact(&mut body).is_err() {
                return;
            }
            // GET_FEATURES, GET_VRING_BASE, GET_PROTOCOL_FEATURES,
            // GET_QUEUE_NUM, GET_CONFIG, GET_INFLIGHT_FD, GET_MAX_MEM_SLOTS,
            // and any request with NEED_REPLY (flags bit 3).
            let wants = matches!(code, 1 | 11 | 15 | 17 | 24 | 31 | 36) || flags & 8 != 0;
            if !wants {
                continue;
            }
            let mode = b.u8();
            let reply: Vec<u8> = if mode & 7 == 0 {
                let n = usize::from(b.u8());
                b.take(n).to_vec()
            } else {
                let len = if mode & 8 == 0 {
                    8
                } else {
                    u32::from(b.u8() % 64)
                };
                let code = if mode & 16 == 0 { code } else { b.u32() };
                let flags = if mode & 32 == 0 { 0x5 } else { b.u32() };
                let mut r = Vec::new();
                r.extend_from_slice(&code.to_le_bytes());
                r.extend_from_slice(&flags.to_le_bytes());
                r.extend_from_slice(&len.to_le_bytes());
                r.extend_from_slice(b.take(len as usize));
                r
            };
            if s.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let _ = Link::connect(&path, Vec::new(), kind.spec());
    let _ = backend.join();
    let _ = std::fs::remove_dir_all(&dir);
}
