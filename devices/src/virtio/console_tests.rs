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
    /// Port 1's host input (its client connected unless said otherwise).
    input: Arc<PortInput>,
    next_buf: u64,
}

impl Rig {
    fn new() -> Rig {
        let input = Arc::new(PortInput::new().unwrap());
        input.set_connected(true);
        Rig::with_input(input)
    }

    fn with_input(input: Arc<PortInput>) -> Rig {
        let (con, port) = (Shared::default(), Shared::default());
        let dev = Console::new(
            vec![
                PortConfig {
                    nr: 0,
                    console: true,
                    name: None,
                    sink: Box::new(con.clone()),
                    input: None,
                },
                PortConfig {
                    nr: 1,
                    console: false,
                    name: Some("lab.verdict".into()),
                    sink: Box::new(port.clone()),
                    input: Some(input.clone()),
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
            input,
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

impl Rig {
    /// Linux's bring-up of port 1 (DEVICE_READY, PORT_READY), with
    /// `n` control buffers; returns them.
    fn bring_up(&mut self, n: usize) -> Vec<u64> {
        self.activate(features::MULTIPORT);
        let bufs: Vec<u64> = (0..n)
            .map(|_| self.buffer(CONTROL_RX, None, 4096))
            .collect();
        self.buffer(CONTROL_TX, Some(&msg(u32::MAX, event::DEVICE_READY, 1)), 8);
        self.buffer(CONTROL_TX, Some(&msg(1, event::PORT_READY, 1)), 8);
        bufs
    }

    /// The device's worker saw port 1's input eventfd.
    fn wake(&mut self) {
        self.dev.input(0, &mut self.queues, &self.mem).unwrap();
    }

    /// What port 1's receive queue (4) got since the last call, given its
    /// buffers `bufs` (by descriptor index).
    fn received(&mut self, bufs: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for (head, len) in self.used(4) {
            let mut b = vec![0u8; len as usize];
            self.mem
                .read(bufs[head as usize % bufs.len()], &mut b)
                .unwrap();
            out.extend_from_slice(&b);
        }
        out
    }
}

#[test]
fn host_input_arrives_in_order_across_small_buffers() {
    let mut r = Rig::new();
    r.bring_up(8);
    r.buffer(CONTROL_TX, Some(&msg(1, event::PORT_OPEN, 1)), 8);
    let text = b"the quick brown fox jumps";
    r.input.push(text);
    r.wake();
    // Seven 4-byte buffers: 28 bytes of room for 25.
    let bufs: Vec<u64> = (0..7).map(|_| r.buffer(4, None, 4)).collect();
    assert_eq!(r.received(&bufs), text);
    assert_eq!(r.input.held(), 0);
    assert_eq!(r.dev.stats().bytes_in, text.len() as u64);
}

#[test]
fn host_input_waits_for_buffers_then_arrives_whole() {
    let mut r = Rig::new();
    r.bring_up(8);
    r.buffer(CONTROL_TX, Some(&msg(1, event::PORT_OPEN, 1)), 8);
    r.input.push(b"0123456789");
    r.wake();
    r.input.push(b"abcdef");
    r.wake();
    assert_eq!(r.used(4), []);
    assert_eq!(r.input.held(), 16);
    // One buffer takes 6; the next buffer, added later, the rest.
    let mut bufs = vec![r.buffer(4, None, 6)];
    assert_eq!(r.received(&bufs), b"012345");
    bufs.push(r.buffer(4, None, 64));
    assert_eq!(r.received(&bufs), b"6789abcdef");
    assert_eq!(r.input.held(), 0);
}

#[test]
fn a_closed_port_holds_input_bounded_and_loses_none() {
    let mut r = Rig::new();
    r.bring_up(8);
    // The guest has not opened port 1: its buffers stay empty.
    let data: Vec<u8> = (0..INPUT_HELD + 1000).map(|i| (i % 251) as u8).collect();
    r.input.push(&data[..INPUT_HELD]);
    r.wake();
    let mut bufs: Vec<u64> = (0..8).map(|_| r.buffer(4, None, 4096)).collect();
    assert_eq!(r.used(4), []);
    // The feeder waits beyond INPUT_HELD.
    let input = r.input.clone();
    let rest = data[INPUT_HELD..].to_vec();
    let feeder = std::thread::spawn(move || input.push(&rest));
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(r.input.held(), INPUT_HELD);
    assert!(!feeder.is_finished());
    // The guest opens the port: 8 buffers of 4 KiB drain 32 KiB, the
    // feeder gets room and ends.
    r.buffer(CONTROL_TX, Some(&msg(1, event::PORT_OPEN, 1)), 8);
    let mut got = r.received(&bufs);
    assert_eq!(got.len(), 8 * 4096);
    feeder.join().unwrap();
    while got.len() < data.len() {
        r.wake();
        bufs = (0..8).map(|_| r.buffer(4, None, 4096)).collect();
        got.extend(r.received(&bufs));
    }
    assert_eq!(got, data);
}

#[test]
fn port_open_follows_the_client() {
    let input = Arc::new(PortInput::new().unwrap());
    let mut r = Rig::with_input(input);
    let bufs = r.bring_up(8);
    let mut name = msg(1, event::PORT_NAME, 1);
    name.extend_from_slice(b"lab.verdict");
    let out = r.control_out(&bufs);
    // No client yet: no PORT_OPEN for port 1 (QEMU's host_connected).
    assert_eq!(out[2..], [name]);
    r.input.set_connected(true);
    r.wake();
    r.input.set_connected(false);
    r.wake();
    // A second disconnect changes nothing.
    r.wake();
    assert_eq!(
        r.control_out(&bufs),
        [msg(1, event::PORT_OPEN, 1), msg(1, event::PORT_OPEN, 0)]
    );
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
