//! The worker thread: kicks served off the caller's thread, calls
//! signalled, a broken ring reported, a reset waited for, what the guest
//! made available served before the worker stops, and a port's host input
//! (edge-triggered) neither spinning nor stalling. Every case runs on both
//! pollers (epoll, and the poll(2) of macOS and the BSDs).

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::virtio::console::{Console, PortConfig, PortInput};
use crate::virtio::queue::tests::{DATA, Driver};
use crate::virtio::rng::Rng;

/// Generous: the machine may be loaded; a pass takes microseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn worker<P: Poll + 'static>(d: &Driver, broken: Arc<AtomicU64>) -> Worker<Rng> {
    let mem: Arc<dyn GuestMemory> = d.mem.clone();
    let rng = Rng::new(File::open("/dev/urandom").unwrap());
    let w = Worker::spawn_on::<P>(
        "virtio-test".into(),
        rng,
        mem,
        || {},
        Box::new(move |_| {
            broken.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    w.activate(&[d.config(0)]).unwrap();
    w
}

/// Waits until `f` holds.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn a_kick_is_served_and_the_call_signalled<P: Poll + 'static>() {
    let mut d = Driver::new(8);
    let w = worker::<P>(&d, Arc::default());
    d.chain(0, &[(DATA, 32, true)]);
    w.kicks()[0].signal().unwrap();
    until("the call eventfd", || w.calls()[0].take().unwrap());
    assert_eq!(d.used(), [(0, 32)]);
    // The driver suppressed interrupts: served, no call.
    d.set_avail_flags(1);
    d.chain(1, &[(DATA, 16, true)]);
    w.kicks()[0].signal().unwrap();
    let mut used = Vec::new();
    until("the used entry", || {
        used.extend(d.used());
        !used.is_empty()
    });
    assert_eq!(used, [(1, 16)]);
    assert!(!w.calls()[0].take().unwrap(), "a call despite NO_INTERRUPT");
    assert_eq!(w.with_device(|r| r.stats().requests), 2);
}

fn stopping_serves_what_the_guest_made_available<P: Poll + 'static>() {
    let mut d = Driver::new(8);
    let w = worker::<P>(&d, Arc::default());
    // Made available, never kicked (the VM ended first).
    d.chain(0, &[(DATA, 8, true)]);
    drop(w);
    assert_eq!(d.used(), [(0, 8)]);
}

fn a_broken_ring_is_reported_once_and_serving_stops<P: Poll + 'static>() {
    let mut d = Driver::new(4);
    let broken = Arc::new(AtomicU64::new(0));
    let w = worker::<P>(&d, broken.clone());
    d.desc(0, DATA, 8, 1 | 2, 0);
    d.publish(0);
    w.kicks()[0].signal().unwrap();
    until("the broken report", || broken.load(Ordering::SeqCst) == 1);
    // Nothing more is read from the rings, kicks or not.
    d.chain(1, &[(DATA, 8, true)]);
    w.kicks()[0].signal().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(w);
    assert_eq!(d.used(), []);
    assert_eq!(broken.load(Ordering::SeqCst), 1);
}

fn after_a_reset_nothing_is_served_until_the_next_start<P: Poll + 'static>() {
    let mut d = Driver::new(8);
    let w = worker::<P>(&d, Arc::default());
    w.reset();
    d.chain(0, &[(DATA, 8, true)]);
    w.kicks()[0].signal().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.used(), []);
    // The driver starts it again: what is available is served.
    w.activate(&[d.config(0)]).unwrap();
    until("the call eventfd", || w.calls()[0].take().unwrap());
    assert_eq!(d.used(), [(0, 8)]);
}

/// A console whose port 0 (no MULTIPORT: always open) has host input.
fn console<P: Poll + 'static>(d: &Driver) -> (Worker<Console>, Arc<PortInput>) {
    let input = Arc::new(PortInput::new().unwrap());
    let port = PortConfig {
        nr: 0,
        console: true,
        name: None,
        sink: Box::new(std::io::sink()),
        input: Some(input.clone()),
    };
    let mem: Arc<dyn GuestMemory> = d.mem.clone();
    let w = Worker::spawn_on::<P>(
        "virtio-test".into(),
        Console::new(vec![port], 1),
        mem,
        || {},
        Box::new(|e| panic!("broken: {e}")),
    )
    .unwrap();
    (w, input)
}

fn bytes_at(d: &Driver, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    d.mem.read(at, &mut b).unwrap();
    b
}

/// Wake-ups a quiet thread may take in [`QUIET`] (the signal's own, and
/// one more for a report already in flight).
const FEW: u64 = 2;
const QUIET: Duration = Duration::from_millis(100);

/// Waits [`QUIET`] and checks the thread did not spin meanwhile.
fn stays_quiet<D: VirtioDevice>(w: &Worker<D>, what: &str) {
    let before = w.wakes();
    std::thread::sleep(QUIET);
    let woke = w.wakes() - before;
    assert!(
        woke <= FEW,
        "{what}: the worker woke {woke} times in {QUIET:?}"
    );
}

/// Input before the driver started the device (nothing takes it), and
/// while the guest has no receive buffers (held): the thread sleeps; the
/// start, and new buffers, deliver it.
fn held_input_neither_spins_nor_is_lost<P: Poll + 'static>() {
    let mut d = Driver::new(8);
    let (w, input) = console::<P>(&d);
    input.push(b"hi");
    stays_quiet(&w, "input before the start");
    d.chain(0, &[(DATA, 16, true)]);
    w.activate(&[d.config(0)]).unwrap();
    until("the input delivered at the start", || !d.used().is_empty());
    assert_eq!(bytes_at(&d, DATA, 2), b"hi");
    // A buffer is there (no kick): the port is waited on again.
    d.chain(1, &[(DATA + 0x80, 16, true)]);
    input.push(b"yo");
    until("input after the start", || d.used() == [(1, 2)]);
    assert_eq!(bytes_at(&d, DATA + 0x80, 2), b"yo");
    // No receive buffer: held, and the thread sleeps.
    input.push(b"more");
    until("the input held", || input.held() == 4);
    stays_quiet(&w, "input without guest buffers");
    d.chain(2, &[(DATA + 0x100, 16, true)]);
    w.kicks()[0].signal().unwrap();
    let mut used = Vec::new();
    until("the held input delivered", || {
        used.extend(d.used());
        !used.is_empty()
    });
    assert_eq!(used, [(2, 4)]);
    assert_eq!(bytes_at(&d, DATA + 0x100, 4), b"more");
}

/// Input after input with buffers there and no kick in between: each is
/// delivered (the port's fd is back in the poll set after it was served).
fn input_after_served_input_is_delivered_without_a_kick<P: Poll + 'static>() {
    let mut d = Driver::new(8);
    let (w, input) = console::<P>(&d);
    for i in 0..4u16 {
        d.chain(i, &[(DATA + 0x100 * u64::from(i), 16, true)]);
    }
    w.activate(&[d.config(0)]).unwrap();
    let mut used = Vec::new();
    for (i, msg) in [b"a", b"b", b"c"].iter().enumerate() {
        input.push(*msg);
        until("the input delivered", || {
            used.extend(d.used());
            used.len() > i
        });
        assert_eq!(bytes_at(&d, DATA + 0x100 * i as u64, 1), *msg);
    }
    assert_eq!(used, [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(input.held(), 0);
}

/// One `#[test]` per poller for each case.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod epoll_backend {
            $(#[test] fn $case() { super::$case::<crate::poller::EpollPoller>() })*
        }
        mod poll_backend {
            $(#[test] fn $case() { super::$case::<crate::poller::PollPoller>() })*
        }
    };
}

both!(
    a_kick_is_served_and_the_call_signalled,
    stopping_serves_what_the_guest_made_available,
    a_broken_ring_is_reported_once_and_serving_stops,
    after_a_reset_nothing_is_served_until_the_next_start,
    held_input_neither_spins_nor_is_lost,
    input_after_served_input_is_delivered_without_a_kick,
);
