//! The test as the guest's virtio driver: split virtqueues written into
//! guest RAM (a real memfd/shm backend) and kicks on the eventfds a real
//! vhost-user back-end polls. Shared by the back-end tests.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use devices::notifier::Notifier;
use devices::virtio::QueueConfig;
use memory::Backend;
use vm_memory::{Bytes, GuestAddress};
use vmm::guest_ram::GuestRam;
use vmm::vhost_user::Link;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub fn ram(spec: &str) -> GuestRam {
    let cfg = vmm::config::object::parse(spec).unwrap();
    GuestRam::new(Backend::create(&cfg).unwrap()).unwrap()
}

pub const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One split virtqueue of [`QSIZE`] descriptors at `base` in guest RAM
/// (descriptors, driver ring and device ring a page apart; buffers from
/// `base + 0x3000` on), driven one request at a time.
pub struct Queue<'a> {
    pub ram: &'a GuestRam,
    pub index: u16,
    pub base: u64,
    pub avail_idx: u16,
    pub kick: EventFd,
    pub call: EventFd,
}

impl<'a> Queue<'a> {
    pub fn new(ram: &'a GuestRam, base: u64) -> Self {
        Queue::indexed(ram, 0, base)
    }

    /// Queue `index` of the device. Rings start zeroed: fresh backends are.
    pub fn indexed(ram: &'a GuestRam, index: u16, base: u64) -> Self {
        Queue {
            ram,
            index,
            base,
            avail_idx: 0,
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            call: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    pub fn config(&self) -> QueueConfig {
        QueueConfig {
            index: self.index,
            size: QSIZE,
            vector: 1,
            desc: self.base,
            driver: self.base + 0x1000,
            device: self.base + 0x2000,
        }
    }

    pub fn mem(&self) -> &'a vm_memory::GuestMemoryMmap {
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

    /// Makes a chain of `(gpa, len, device_writes)` buffers available,
    /// kicks, and waits for the back-end to use it and interrupt; returns
    /// the used length.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u32 {
        self.offer(bufs);
        self.wait_used()
    }

    /// Makes the chain available and kicks, without waiting.
    pub fn offer(&mut self, bufs: &[(u64, u32, bool)]) {
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(QSIZE));
        for (i, &(gpa, len, write)) in bufs.iter().enumerate() {
            let i = i as u16;
            let last = usize::from(i) + 1 == bufs.len();
            let flags = if last { 0 } else { F_NEXT } | if write { F_WRITE } else { 0 };
            self.desc(i, gpa, len, flags, if last { 0 } else { i + 1 });
        }
        let m = self.mem();
        let avail = self.base + 0x1000;
        let slot = u64::from(self.avail_idx % QSIZE);
        m.write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        m.write_obj(self.avail_idx, GuestAddress(avail + 2))
            .unwrap();
        self.kick.write(1).unwrap();
    }

    /// Waits for the used index to reach the avail index and the back-end's
    /// interrupt (its call eventfd); returns the last used length.
    pub fn wait_used(&mut self) -> u32 {
        self.wait_used_within(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Queue::wait_used`] for at most `limit`; the error says what was seen.
    pub fn wait_used_within(&mut self, limit: Duration) -> Result<u32, String> {
        let m = self.mem();
        let t = Instant::now();
        let mut called = false;
        loop {
            called |= self.call.read().is_ok();
            let used_idx: u16 = m.read_obj(GuestAddress(self.base + 0x2000 + 2)).unwrap();
            if used_idx == self.avail_idx && called {
                let slot = u64::from(used_idx.wrapping_sub(1) % QSIZE);
                return Ok(m
                    .read_obj(GuestAddress(self.base + 0x2000 + 4 + 8 * slot + 4))
                    .unwrap());
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "no completion from the back-end on queue {} in {limit:?} (used index {used_idx}, interrupt {called})",
                    self.index
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Hands `queues` to the back-end as a driver with `features` would.
pub fn start_all(fe: &mut Link, features: u64, queues: &[&Queue<'_>]) {
    let configs: Vec<QueueConfig> = queues.iter().map(|q| q.config()).collect();
    // The front-end indexes the eventfds by queue index.
    let n = queues
        .iter()
        .map(|q| usize::from(q.index) + 1)
        .max()
        .unwrap_or(0);
    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    for i in 0..n {
        let q = queues.iter().find(|q| usize::from(q.index) == i);
        kicks.push(q.map_or_else(
            || Notifier::new().unwrap(),
            |q| q.kick.try_clone().unwrap().into(),
        ));
        calls.push(q.map_or_else(
            || Notifier::new().unwrap(),
            |q| q.call.try_clone().unwrap().into(),
        ));
    }
    fe.start(features, &configs, &kicks, &calls).unwrap();
    // libvhost-user and rust-vmm back-ends may signal a call fd once when
    // they get it (for a reconnecting front-end): not a completion.
    std::thread::sleep(Duration::from_millis(50));
    for q in queues {
        let _ = q.call.read();
    }
}

/// One queue, VERSION_1 only.
pub fn start(fe: &mut Link, q: &Queue<'_>) {
    start_all(fe, devices::virtio::features::VERSION_1, &[q]);
}
