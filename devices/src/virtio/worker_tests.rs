//! The worker thread: kicks served off the caller's thread, calls
//! signalled, a broken ring reported, a reset waited for, and what the
//! guest made available served before the worker stops.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::virtio::queue::tests::{DATA, Driver};
use crate::virtio::rng::Rng;

/// Generous: the machine may be loaded; a pass takes microseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn worker(d: &Driver, broken: Arc<AtomicU64>) -> Worker<Rng> {
    let mem: Arc<dyn GuestMemory> = d.mem.clone();
    let rng = Rng::new(File::open("/dev/urandom").unwrap());
    let w = Worker::spawn(
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

#[test]
fn a_kick_is_served_and_the_call_signalled() {
    let mut d = Driver::new(8);
    let w = worker(&d, Arc::default());
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

#[test]
fn stopping_serves_what_the_guest_made_available() {
    let mut d = Driver::new(8);
    let w = worker(&d, Arc::default());
    // Made available, never kicked (the VM ended first).
    d.chain(0, &[(DATA, 8, true)]);
    drop(w);
    assert_eq!(d.used(), [(0, 8)]);
}

#[test]
fn a_broken_ring_is_reported_once_and_serving_stops() {
    let mut d = Driver::new(4);
    let broken = Arc::new(AtomicU64::new(0));
    let w = worker(&d, broken.clone());
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

#[test]
fn after_a_reset_nothing_is_served_until_the_next_start() {
    let mut d = Driver::new(8);
    let w = worker(&d, Arc::default());
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
