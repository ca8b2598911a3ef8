//! The same cases against both pollers (epoll and poll(2) are both built on
//! Linux): what runs on macOS and the BSDs is tested here.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::*;
use crate::notifier::Notifier;

/// Long enough for a report that is due to arrive on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a report that must not come is waited for.
const QUIET: Duration = Duration::from_millis(30);

fn tokens<P: Poll>(p: &mut P, timeout: Duration) -> Vec<u64> {
    let mut ready = Vec::new();
    p.wait(Some(timeout), &mut ready).unwrap();
    ready.iter().map(|r| r.token).collect()
}

/// A byte stream (a socket port's client) to make readable.
fn pipe() -> (UnixStream, UnixStream) {
    let (r, w) = UnixStream::pair().unwrap();
    r.set_nonblocking(true).unwrap();
    (r, w)
}

fn drain(r: &mut impl Read) {
    let mut b = [0u8; 64];
    while r.read(&mut b).is_ok_and(|n| n > 0) {}
}

fn level_is_reported_until_drained<P: Poll>() {
    let mut p = P::new().unwrap();
    let (mut r, mut w) = pipe();
    p.add(r.as_fd(), 7, Interest::READ, Trigger::Level).unwrap();
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
    w.write_all(b"x").unwrap();
    for _ in 0..3 {
        assert_eq!(tokens(&mut p, PATIENCE), [7]);
    }
    drain(&mut r);
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
}

/// A port whose input the device cannot take yet leaves its fd readable:
/// it must not be reported again and again (the worker would spin).
fn edge_left_readable_is_not_reported_again<P: Poll>() {
    let mut p = P::new().unwrap();
    let (mut r, mut w) = pipe();
    p.add(r.as_fd(), 1, Interest::READ, Trigger::Edge).unwrap();
    w.write_all(b"x").unwrap();
    assert_eq!(tokens(&mut p, PATIENCE), [1]);
    let start = Instant::now();
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
    assert!(
        start.elapsed() >= QUIET - Duration::from_millis(1),
        "a spin"
    );
    // Read to empty and put back: the next signal is reported.
    drain(&mut r);
    p.rearm(1);
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
    w.write_all(b"y").unwrap();
    assert_eq!(tokens(&mut p, PATIENCE), [1]);
}

/// A signal between the read to empty and the rearm is not lost (the
/// socket reader of a virtio-serial port refills while the worker is still
/// delivering).
fn a_signal_before_the_rearm_is_reported<P: Poll>() {
    let mut p = P::new().unwrap();
    let n = Notifier::new().unwrap();
    p.add(n.wait_fd(), 3, Interest::READ, Trigger::Edge)
        .unwrap();
    n.signal().unwrap();
    assert_eq!(tokens(&mut p, PATIENCE), [3]);
    assert!(n.take().unwrap());
    n.signal().unwrap();
    p.rearm(3);
    assert_eq!(tokens(&mut p, PATIENCE), [3]);
    assert!(n.take().unwrap());
    p.rearm(3);
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
}

/// Put back while still readable ("until the next kick"): poll(2) reports
/// it at once; epoll only on the next write (which the caller's next
/// signal is).
fn edge_rearmed_while_readable<P: Poll>(reported_at_once: bool) {
    let mut p = P::new().unwrap();
    let (r, mut w) = pipe();
    p.add(r.as_fd(), 5, Interest::READ, Trigger::Edge).unwrap();
    w.write_all(b"x").unwrap();
    assert_eq!(tokens(&mut p, PATIENCE), [5]);
    p.rearm(5);
    let expect: &[u64] = if reported_at_once { &[5] } else { &[] };
    let wait = if reported_at_once { PATIENCE } else { QUIET };
    assert_eq!(tokens(&mut p, wait), expect);
    w.write_all(b"y").unwrap();
    p.rearm(5);
    assert_eq!(tokens(&mut p, PATIENCE), [5]);
}

fn sockets_read_write_modify_hang_up_delete<P: Poll>() {
    let mut p = P::new().unwrap();
    let (mut a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    p.add(a.as_fd(), 9, Interest::READ_WRITE, Trigger::Level)
        .unwrap();
    let mut ready = Vec::new();
    p.wait(Some(PATIENCE), &mut ready).unwrap();
    assert_eq!(
        ready,
        [Ready {
            token: 9,
            readable: false,
            writable: true,
            hang_up: false
        }]
    );
    // Output drained: only input matters now.
    p.modify(a.as_fd(), 10, Interest::READ, Trigger::Level)
        .unwrap();
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
    b.write_all(b"{}").unwrap();
    p.wait(Some(PATIENCE), &mut ready).unwrap();
    assert_eq!(ready.len(), 1);
    assert!(ready[0].readable && ready[0].token == 10);
    let mut buf = [0u8; 8];
    assert_eq!(a.read(&mut buf).unwrap(), 2);
    // The peer goes: readable (a read of 0) and/or hung up.
    drop(b);
    p.wait(Some(PATIENCE), &mut ready).unwrap();
    assert_eq!(ready.len(), 1);
    assert!(ready[0].readable || ready[0].hang_up, "{ready:?}");
    assert_eq!(a.read(&mut buf).unwrap(), 0);
    p.delete(a.as_fd()).unwrap();
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
    assert!(p.delete(a.as_fd()).is_err());
}

fn every_ready_token_is_reported_once<P: Poll>() {
    let mut p = P::new().unwrap();
    let ns: Vec<Notifier> = (0..5).map(|_| Notifier::new().unwrap()).collect();
    for (i, n) in ns.iter().enumerate() {
        let trigger = if i % 2 == 0 {
            Trigger::Level
        } else {
            Trigger::Edge
        };
        p.add(n.wait_fd(), i as u64, Interest::READ, trigger)
            .unwrap();
    }
    assert!(
        p.add(ns[0].wait_fd(), 99, Interest::READ, Trigger::Level)
            .is_err()
    );
    for i in [4, 1, 3] {
        ns[i].signal().unwrap();
    }
    let mut got = tokens(&mut p, PATIENCE);
    got.sort_unstable();
    assert_eq!(got, [1, 3, 4]);
}

fn a_timeout_ends_the_wait_and_a_signal_from_another_thread_too<P: Poll>() {
    let mut p = P::new().unwrap();
    let n = Notifier::new().unwrap();
    p.add(n.wait_fd(), 0, Interest::READ, Trigger::Level)
        .unwrap();
    let start = Instant::now();
    // Less than a millisecond is not rounded down to a busy poll.
    assert_eq!(tokens(&mut p, Duration::from_micros(300)), [] as [u64; 0]);
    assert_eq!(tokens(&mut p, QUIET), [] as [u64; 0]);
    assert!(start.elapsed() >= QUIET);
    let m = n.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        m.signal().unwrap();
    });
    let mut ready = Vec::new();
    while ready.is_empty() {
        p.wait(None, &mut ready).unwrap();
    }
    assert_eq!(ready[0].token, 0);
    t.join().unwrap();
}

/// One `#[test]` per backend for each case.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod epoll_backend {
            use super::*;
            $(#[test] fn $case() { super::$case::<EpollPoller>() })*
            #[test]
            fn edge_rearmed_while_readable() {
                super::edge_rearmed_while_readable::<EpollPoller>(false)
            }
        }
        mod poll_backend {
            use super::*;
            $(#[test] fn $case() { super::$case::<PollPoller>() })*
            #[test]
            fn edge_rearmed_while_readable() {
                super::edge_rearmed_while_readable::<PollPoller>(true)
            }
        }
    };
}

both!(
    level_is_reported_until_drained,
    edge_left_readable_is_not_reported_again,
    a_signal_before_the_rearm_is_reported,
    sockets_read_write_modify_hang_up_delete,
    every_ready_token_is_reported_once,
    a_timeout_ends_the_wait_and_a_signal_from_another_thread_too,
);

#[test]
fn timeouts_round_up_to_a_millisecond() {
    assert_eq!(timeout_ms(None), -1);
    assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
    assert_eq!(timeout_ms(Some(Duration::from_nanos(1))), 1);
    assert_eq!(timeout_ms(Some(Duration::from_millis(5))), 5);
    assert_eq!(timeout_ms(Some(Duration::from_secs(1 << 40))), i32::MAX);
}
