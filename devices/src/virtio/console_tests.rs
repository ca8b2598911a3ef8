//! The control protocol as Linux's virtio_console speaks it, port output,
//! and malformed chains.

use std::sync::{Arc, Mutex};

use super::*;
use crate::virtio::QueueConfig;
use crate::virtio::queue::tests::{DATA, Driver, VecMemory};

/// A sink whose bytes the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Queue `q`'s rings at their own addresses in one memory.
fn config(q: u16) -> QueueConfig {
    let base = 0x1000 * (4 * u64::from(q) + 1);
    QueueConfig {
        index: q,
        size: 8,
        vector: 0,
        desc: base,
        driver: base + 0x1000,
        device: base + 0x2000,
    }
}

/// A driver per queue over one memory: the test `Driver` lays rings at
/// fixed addresses, so each queue gets its own memory image here and the
/// device is run per queue against it.
struct Rig {
    dev: Console,
    mem: VecMemory,
    queues: Queues,
    avail: Vec<u16>,
    used_seen: Vec<u16>,
    con: Shared,
    port: Shared,
    next_buf: u64,
}

impl Rig {
    fn new() -> Rig {
        let (con, port) = (Shared::default(), Shared::default());
        let dev = Console::new(
            vec![
                PortConfig {
                    nr: 0,
                    console: true,
                    name: None,
                    sink: Box::new(con.clone()),
                },
                PortConfig {
                    nr: 1,
                    console: false,
                    name: Some("lab.verdict".into()),
                    sink: Box::new(port.clone()),
                },
            ],
            2,
        );
        assert_eq!(dev.queue_count(), 6);
        let mem = VecMemory::new(4 << 20);
        let cfgs: Vec<_> = (0..6).map(config).collect();
        let queues = Queues::new(6, &cfgs, &mem).unwrap();
        Rig {
            dev,
            mem,
            queues,
            avail: vec![0; 6],
            used_seen: vec![0; 6],
            con,
            port,
            next_buf: DATA + 0x100000,
        }
    }

    fn activate(&mut self, features: u64) {
        self.dev
            .activate(features, &mut self.queues, &self.mem)
            .unwrap();
    }

    /// Puts a one-descriptor buffer on queue `q` (writable or holding
    /// `data`) and kicks; returns its address.
    fn buffer(&mut self, q: u16, data: Option<&[u8]>, len: u32) -> u64 {
        let c = config(q);
        let addr = self.next_buf;
        self.next_buf += 0x1000;
        if let Some(d) = data {
            self.mem.write(addr, d).unwrap();
        }
        let i = self.avail[usize::from(q)] % 8;
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&(if data.is_none() { 2u16 } else { 0 }).to_le_bytes());
        self.mem.write(c.desc + 16 * u64::from(i), &d).unwrap();
        let idx = self.avail[usize::from(q)];
        self.mem
            .store_u16(c.driver + 4 + 2 * u64::from(idx % 8), i)
            .unwrap();
        self.avail[usize::from(q)] = idx.wrapping_add(1);
        self.mem
            .store_u16(c.driver + 2, idx.wrapping_add(1))
            .unwrap();
        self.dev.kick(q, &mut self.queues, &self.mem).unwrap();
        addr
    }

    /// The used (head, len) of queue `q` since the last call.
    fn used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let c = config(q);
        let idx = self.mem.load_u16(c.device + 2).unwrap();
        let mut out = Vec::new();
        while self.used_seen[usize::from(q)] != idx {
            let slot = u64::from(self.used_seen[usize::from(q)] % 8);
            let mut e = [0u8; 8];
            self.mem.read(c.device + 4 + 8 * slot, &mut e).unwrap();
            out.push((
                u32::from_le_bytes(e[..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..].try_into().unwrap()),
            ));
            self.used_seen[usize::from(q)] += 1;
        }
        out
    }

    /// The control messages the device sent, given 8 buffers first.
    fn control_out(&mut self, bufs: &[u64]) -> Vec<Vec<u8>> {
        let used = self.used(CONTROL_RX);
        used.iter()
            .map(|&(head, len)| {
                let mut m = vec![0u8; len as usize];
                self.mem.read(bufs[head as usize], &mut m).unwrap();
                m
            })
            .collect()
    }
}

fn msg(id: u32, ev: u16, value: u16) -> Vec<u8> {
    control(id, ev, value)
}

#[test]
fn linux_bring_up_then_output_to_the_named_port() {
    let mut r = Rig::new();
    r.activate(features::MULTIPORT);
    let bufs: Vec<u64> = (0..4).map(|_| r.buffer(CONTROL_RX, None, 4096)).collect();
    // DEVICE_READY from the driver (id: VIRTIO_CONSOLE_BAD_ID).
    r.buffer(CONTROL_TX, Some(&msg(u32::MAX, event::DEVICE_READY, 1)), 8);
    assert_eq!(r.used(CONTROL_TX), [(0, 0)]);
    assert_eq!(
        r.control_out(&bufs),
        [msg(0, event::DEVICE_ADD, 0), msg(1, event::DEVICE_ADD, 0)]
    );
    // PORT_READY for port 1 takes the last two control buffers; port 0's
    // answers wait for more.
    r.buffer(CONTROL_TX, Some(&msg(1, event::PORT_READY, 1)), 8);
    let mut name = msg(1, event::PORT_NAME, 1);
    name.extend_from_slice(b"lab.verdict");
    assert_eq!(r.control_out(&bufs), [name, msg(1, event::PORT_OPEN, 1)]);
    r.buffer(CONTROL_TX, Some(&msg(0, event::PORT_READY, 1)), 8);
    assert_eq!(r.control_out(&bufs), Vec::<Vec<u8>>::new());
    let more: Vec<u64> = (0..2).map(|_| r.buffer(CONTROL_RX, None, 4096)).collect();
    let all: Vec<u64> = bufs.iter().chain(more.iter()).copied().collect();
    assert_eq!(
        r.control_out(&all),
        [msg(0, event::CONSOLE_PORT, 1), msg(0, event::PORT_OPEN, 1)]
    );
    // Output: port 1's transmit queue is 5, port 0's is 1.
    r.buffer(5, Some(b"verdict t123\n"), 13);
    r.buffer(1, Some(b"console"), 7);
    assert_eq!(r.used(5), [(0, 0)]);
    assert_eq!(&*r.port.0.lock().unwrap(), b"verdict t123\n");
    assert_eq!(&*r.con.0.lock().unwrap(), b"console");
    let s = r.dev.stats();
    assert_eq!((s.writes, s.bytes_out, s.errors), (2, 20, 0));
}

#[test]
fn without_multiport_only_port_0_speaks() {
    let mut r = Rig::new();
    r.activate(0);
    r.buffer(CONTROL_TX, Some(&msg(u32::MAX, event::DEVICE_READY, 1)), 8);
    assert_eq!(r.used(CONTROL_TX), []);
    r.buffer(1, Some(b"hvc"), 3);
    assert_eq!(&*r.con.0.lock().unwrap(), b"hvc");
}

#[test]
fn nonsense_control_messages_are_counted_not_fatal() {
    let mut r = Rig::new();
    r.activate(features::MULTIPORT);
    r.buffer(CONTROL_TX, Some(&[1, 2, 3]), 3);
    r.buffer(CONTROL_TX, Some(&msg(9, event::PORT_READY, 1)), 8);
    r.buffer(CONTROL_TX, Some(&msg(1, 77, 1)), 8);
    assert_eq!(r.used(CONTROL_TX).len(), 3);
    assert_eq!(r.dev.stats().errors, 3);
}

#[test]
fn a_looping_chain_breaks_the_device() {
    let mut d = Driver::new(4);
    let mut dev = Console::new(Vec::new(), 1);
    let mut q = Queues::new(4, &[d.config(1)], &d.mem).unwrap();
    d.desc(0, DATA, 8, 1, 0);
    d.publish(0);
    assert!(matches!(
        dev.kick(1, &mut q, &d.mem),
        Err(QueueError::Chain { .. })
    ));
}
