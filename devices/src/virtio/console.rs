//! virtio-serial (virtio console, spec 5.3) with multiport: port 0 (the
//! virtconsole, an hvc console in the guest) and named ports
//! (virtserialport, `/dev/vportNpM` whose name is in sysfs), each writing
//! to a host sink (a chardev).
//!
//! Queues: port 0 receive/transmit (0, 1), the control queues (2: device
//! to driver, 3: driver to device), then port N's pair at 2 + 2N, 3 + 2N.
//! The control protocol (spec 5.3.6.2): the driver says DEVICE_READY; the
//! device announces each port (DEVICE_ADD); the driver says PORT_READY for
//! each; the device answers CONSOLE_PORT or PORT_NAME and PORT_OPEN (the
//! host side is connected: a sink without input always is; a port with
//! [`PortInput`] when its client is, and PORT_OPEN follows each connect
//! and disconnect, as QEMU's socket chardevs do). Messages the device has
//! no control buffer for yet wait in order until the driver adds one.
//!
//! Guest output goes to the port's sink. Host input (a port with
//! [`PortInput`]: a socket chardev's client) goes to the port's receive
//! queue while the guest has the port open (its PORT_OPEN 1; port 0
//! without MULTIPORT always is). Until then, and while the guest has no
//! receive buffers, it is held: at most [`INPUT_HELD`] bytes, beyond which
//! the thread feeding it waits (the client's writes block: nothing lost).

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::{Condvar, Mutex};

use super::device::{Queues, VirtioDevice, memory_broken};
use super::queue::{GuestMemory, QueueError};
use crate::notifier::Notifier;

/// Feature bits (spec 5.3.3).
pub mod features {
    pub const SIZE: u64 = 1 << 0;
    pub const MULTIPORT: u64 = 1 << 1;
}

/// Control events (spec 5.3.6.2).
pub mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const DEVICE_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

const CONTROL_RX: u16 = 2;
const CONTROL_TX: u16 = 3;
/// Bytes of `struct virtio_console_control`.
const CONTROL_LEN: usize = 8;
/// Largest chunk of guest output copied at a time.
const CHUNK: usize = 64 << 10;
/// Bytes of configuration: cols, rows, max_nr_ports, emerg_wr.
pub const CONFIG_LEN: usize = 12;
/// Host input held for a port the guest has not opened or has no
/// buffers on; the feeder waits beyond it.
pub const INPUT_HELD: usize = 64 << 10;

/// Host input of one port, fed by a thread (the socket's reader) and
/// drained by the device: bytes in order, the client's connection state,
/// and a notifier that wakes the device's worker (an eventfd on Linux, a
/// pipe elsewhere).
#[derive(Debug)]
pub struct PortInput {
    state: Mutex<InputState>,
    room: Condvar,
    wake: Notifier,
}

#[derive(Debug, Default)]
struct InputState {
    held: VecDeque<u8>,
    connected: bool,
}

impl PortInput {
    pub fn new() -> std::io::Result<PortInput> {
        Ok(PortInput {
            state: Mutex::default(),
            room: Condvar::new(),
            wake: Notifier::new()?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        // A full counter (or pipe) already wakes the worker.
        self.wake.signal().ok();
    }

    /// Appends `data`, waiting while [`INPUT_HELD`] bytes are held.
    pub fn push(&self, mut data: &[u8]) {
        while !data.is_empty() {
            let mut s = self.lock();
            while s.held.len() >= INPUT_HELD {
                s = self.room.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            let n = data.len().min(INPUT_HELD - s.held.len());
            s.held.extend(&data[..n]);
            drop(s);
            data = &data[n..];
            self.notify();
        }
    }

    /// The host side connected (a client) or disconnected.
    pub fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
        self.notify();
    }

    /// Bytes held (for tests and statistics).
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }
}

/// One port as configured.
pub struct PortConfig {
    /// The port number (0: the console's).
    pub nr: u32,
    /// `virtconsole` (an hvc console in the guest).
    pub console: bool,
    /// `name=`: what the guest sees in /sys/class/virtio-ports/*/name.
    pub name: Option<String>,
    /// Where the guest's output goes.
    pub sink: Box<dyn Write + Send>,
    /// Host input, when the back-end has any (a socket chardev).
    pub input: Option<std::sync::Arc<PortInput>>,
}

impl std::fmt::Debug for PortConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortConfig")
            .field("nr", &self.nr)
            .field("console", &self.console)
            .field("name", &self.name)
            .finish()
    }
}

/// What the device did, for `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Transmit buffers the guest sent, and their bytes.
    pub writes: u64,
    pub bytes_out: u64,
    pub control_in: u64,
    pub control_out: u64,
    /// Host input put in the guest's receive buffers.
    pub bytes_in: u64,
    /// Output the sink refused (its bytes are lost), control messages
    /// that made no sense.
    pub errors: u64,
}

/// What the driver and the device told each other about a port.
#[derive(Debug, Default, Clone, Copy)]
struct PortState {
    /// The driver said PORT_READY.
    ready: bool,
    /// The guest opened the port (its PORT_OPEN).
    guest_open: bool,
    /// The host side's last PORT_OPEN value sent.
    host_open: bool,
}

/// A multiport virtio console.
#[derive(Debug)]
pub struct Console {
    ports: Vec<PortConfig>,
    state: Vec<PortState>,
    max_ports: u32,
    multiport: bool,
    /// Control messages waiting for a buffer on the control receive queue.
    pending: VecDeque<Vec<u8>>,
    stats: ConsoleStats,
    /// A guest can send any number of failed DEVICE_READY messages.
    warnings: crate::ratelimit::RateLimit,
}

fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_LEN);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m
}

impl Console {
    /// A device with `ports` (numbers unique, below `max_ports`).
    pub fn new(ports: Vec<PortConfig>, max_ports: u32) -> Console {
        Console {
            state: vec![PortState::default(); ports.len()],
            ports,
            max_ports: max_ports.max(1),
            multiport: false,
            pending: VecDeque::new(),
            stats: ConsoleStats::default(),
            warnings: Default::default(),
        }
    }

    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// The port a transmit queue belongs to.
    fn tx_port(q: u16) -> Option<u32> {
        match q {
            1 => Some(0),
            q if q > CONTROL_TX && q % 2 == 1 => Some(u32::from(q - 3) / 2),
            _ => None,
        }
    }

    fn send(&mut self, msg: Vec<u8>) {
        self.pending.push_back(msg);
    }

    /// Moves pending control messages into the driver's control buffers.
    fn flush_control(
        &mut self,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        while !self.pending.is_empty() {
            let Some(chain) = queues.pop(CONTROL_RX, mem)? else {
                break;
            };
            let msg = self.pending.pop_front().unwrap_or_default();
            // A buffer too small for the message gets what fits (Linux's
            // are 4 KiB; names are short).
            let n = (msg.len() as u64).min(chain.writable_len()) as usize;
            chain
                .write_at(mem, 0, &msg[..n])
                .map_err(|e| memory_broken(CONTROL_RX, e))?;
            queues.add_used(CONTROL_RX, chain.head, n as u32, mem)?;
            self.stats.control_out += 1;
        }
        Ok(())
    }

    /// The receive queue of port `nr`.
    fn rx_queue(nr: u32) -> u16 {
        if nr == 0 { 0 } else { (2 + 2 * nr) as u16 }
    }

    /// The port a receive queue belongs to.
    fn rx_port(q: u16) -> Option<u32> {
        match q {
            0 => Some(0),
            q if q > CONTROL_TX && q % 2 == 0 => Some(u32::from(q - 2) / 2),
            _ => None,
        }
    }

    /// Sends PORT_OPEN when port `i`'s host side changed since the last.
    fn host_state(&mut self, i: usize) {
        let connected = match &self.ports[i].input {
            Some(input) => input.lock().connected,
            None => return,
        };
        let st = &mut self.state[i];
        if self.multiport && st.ready && st.host_open != connected {
            st.host_open = connected;
            let nr = self.ports[i].nr;
            self.send(control(nr, event::PORT_OPEN, u16::from(connected)));
        }
    }

    /// Moves port `i`'s held input into its receive buffers, while the
    /// guest has the port open.
    fn deliver(
        &mut self,
        i: usize,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        let nr = self.ports[i].nr;
        let open = if self.multiport {
            self.state[i].guest_open
        } else {
            nr == 0
        };
        let Some(input) = self.ports[i].input.clone() else {
            return Ok(());
        };
        if !open {
            return Ok(());
        }
        let q = Self::rx_queue(nr);
        let mut s = input.lock();
        let mut moved = false;
        while !s.held.is_empty() {
            let Some(chain) = queues.pop(q, mem)? else {
                break;
            };
            let n = (s.held.len() as u64).min(chain.writable_len()) as usize;
            let bytes: Vec<u8> = s.held.iter().take(n).copied().collect();
            chain
                .write_at(mem, 0, &bytes)
                .map_err(|e| memory_broken(q, e))?;
            queues.add_used(q, chain.head, n as u32, mem)?;
            s.held.drain(..n);
            self.stats.bytes_in += n as u64;
            moved = true;
        }
        drop(s);
        if moved {
            input.room.notify_all();
        }
        Ok(())
    }

    fn deliver_all(
        &mut self,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        for i in 0..self.ports.len() {
            self.deliver(i, queues, mem)?;
        }
        Ok(())
    }

    fn port_ready(&mut self, id: u32) {
        let Some(i) = self.ports.iter().position(|p| p.nr == id) else {
            self.stats.errors += 1;
            return;
        };
        let p = &self.ports[i];
        let mut msgs = Vec::new();
        if p.console {
            msgs.push(control(id, event::CONSOLE_PORT, 1));
        }
        if let Some(name) = &p.name {
            let mut m = control(id, event::PORT_NAME, 1);
            m.extend_from_slice(name.as_bytes());
            msgs.push(m);
        }
        // A sink without input is always connected; a socket when its
        // client is (QEMU sends PORT_OPEN only for a connected host side).
        let host_open = p.input.as_ref().is_none_or(|i| i.lock().connected);
        if host_open {
            msgs.push(control(id, event::PORT_OPEN, 1));
        }
        self.state[i].ready = true;
        self.state[i].host_open = host_open;
        msgs.into_iter().for_each(|m| self.send(m));
    }

    fn control_message(&mut self, m: &[u8; CONTROL_LEN]) {
        self.stats.control_in += 1;
        let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        let ev = u16::from_le_bytes([m[4], m[5]]);
        let value = u16::from_le_bytes([m[6], m[7]]);
        match ev {
            event::DEVICE_READY if value == 1 => {
                let nrs: Vec<u32> = self.ports.iter().map(|p| p.nr).collect();
                for nr in nrs {
                    self.send(control(nr, event::DEVICE_ADD, 0));
                }
            }
            event::DEVICE_READY => {
                crate::warn_limited!(
                    self.warnings,
                    "virtio-serial: the guest driver failed to set up the device"
                );
            }
            event::PORT_READY if value == 1 => self.port_ready(id),
            event::PORT_READY => {
                log::debug!("virtio-serial: the guest could not add port {id}");
            }
            // The guest opened or closed the port: output flows either
            // way; input waits for it to be open.
            event::PORT_OPEN => match self.ports.iter().position(|p| p.nr == id) {
                Some(i) => self.state[i].guest_open = value == 1,
                None => self.stats.errors += 1,
            },
            _ => self.stats.errors += 1,
        }
    }

    fn control_tx(&mut self, queues: &mut Queues, mem: &dyn GuestMemory) -> Result<(), QueueError> {
        while let Some(chain) = queues.pop(CONTROL_TX, mem)? {
            let mut m = [0u8; CONTROL_LEN];
            if chain.readable_len() >= CONTROL_LEN as u64 {
                chain
                    .read_at(mem, 0, &mut m)
                    .map_err(|e| memory_broken(CONTROL_TX, e))?;
                self.control_message(&m);
            } else {
                self.stats.errors += 1;
            }
            queues.add_used(CONTROL_TX, chain.head, 0, mem)?;
        }
        Ok(())
    }

    fn port_tx(
        &mut self,
        q: u16,
        nr: u32,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        let mut buf = Vec::new();
        while let Some(chain) = queues.pop(q, mem)? {
            let len = chain.readable_len();
            let mut off = 0;
            while off < len {
                let n = (len - off).min(CHUNK as u64) as usize;
                buf.resize(n, 0);
                chain
                    .read_at(mem, off, &mut buf)
                    .map_err(|e| memory_broken(q, e))?;
                match self.ports.iter_mut().find(|p| p.nr == nr) {
                    Some(p) => {
                        if let Err(e) = p.sink.write_all(&buf).and_then(|()| p.sink.flush()) {
                            self.stats.errors += 1;
                            log::debug!("virtio-serial: port {nr}: output lost: {e}");
                        }
                    }
                    None => self.stats.errors += 1,
                }
                off += n as u64;
            }
            self.stats.writes += 1;
            self.stats.bytes_out += len;
            queues.add_used(q, chain.head, 0, mem)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        super::TYPE_CONSOLE
    }

    fn features(&self) -> u64 {
        features::MULTIPORT
    }

    fn queue_count(&self) -> u16 {
        // Two per port, plus the control pair.
        (2 * (self.max_ports + 1)).min(u32::from(super::MAX_QUEUES) & !1) as u16
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_LEN];
        c[4..8].copy_from_slice(&self.max_ports.to_le_bytes());
        c
    }

    fn activate(
        &mut self,
        features: u64,
        _queues: &mut Queues,
        _mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        self.multiport = features & features::MULTIPORT != 0;
        Ok(())
    }

    fn reset(&mut self) {
        self.pending.clear();
        self.multiport = false;
        // Held input stays for the next driver.
        self.state.fill(PortState::default());
    }

    fn kick(
        &mut self,
        q: u16,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        match q {
            // Control buffers are used by pending messages.
            CONTROL_TX if self.multiport => self.control_tx(queues, mem)?,
            CONTROL_RX => {}
            // New receive buffers: held input goes in below.
            q if Self::rx_port(q).is_some() => {}
            q => {
                if let Some(nr) = Self::tx_port(q) {
                    // Without MULTIPORT only port 0 exists.
                    if nr == 0 || self.multiport {
                        self.port_tx(q, nr, queues, mem)?;
                    }
                }
            }
        }
        self.deliver_all(queues, mem)?;
        if self.multiport {
            self.flush_control(queues, mem)?;
        }
        Ok(())
    }

    fn input_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.ports
            .iter()
            .filter_map(|p| p.input.as_ref().map(|i| i.wake.wait_fd()))
            .collect()
    }

    fn input(
        &mut self,
        index: usize,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        let Some(i) = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.input.is_some())
            .nth(index)
            .map(|(i, _)| i)
        else {
            return Ok(());
        };
        if let Some(input) = &self.ports[i].input {
            // Every wake-up so far is seen below (read to empty, as the
            // worker's edge-triggered wait wants).
            input.wake.take().ok();
        }
        self.host_state(i);
        self.deliver(i, queues, mem)?;
        if self.multiport {
            self.flush_control(queues, mem)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
