//! The doorbell ping-pong both the test kernel (`guest/testkernel/src/
//! doorbell.rs`) and host peers play, so a host program can be either side.
//!
//! Region layout: `READY_OFF + 8 * id` holds [`READY`] once peer `id` is in
//! its loop; `SEQ_OFF + 8 * id` holds the last round peer `id` rang for.
//! Round 0 is a warm-up (the other VMM may still be learning of us: a lost
//! ring is rung again every [`RESEND`]); rounds 1..=N are timed.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, VolatileMemory};

use crate::peer::{Peer, PeerError};

pub const READY_OFF: usize = 0x1000;
pub const SEQ_OFF: usize = 0x2000;
pub const READY: u64 = 0x5245_4144_5944_4221;
pub const RESEND: Duration = Duration::from_millis(20);

/// Round trips measured by [`ping`], sorted.
#[derive(Debug, Clone)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    /// The `q`-th percentile (0..=100).
    pub fn percentile(&self, q: usize) -> Duration {
        let n = self.0.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.0[(n - 1) * q / 100]
    }
}

fn read(p: &Peer, off: usize) -> Result<u64, PeerError> {
    p.memory()
        .as_volatile_slice()
        .read_obj::<u64>(off)
        .map_err(|e| PeerError::Io(std::io::Error::other(e.to_string())))
}

fn write(p: &Peer, off: usize, v: u64) -> Result<(), PeerError> {
    p.memory()
        .as_volatile_slice()
        .write_obj(v, off)
        .map_err(|e| PeerError::Io(std::io::Error::other(e.to_string())))
}

fn wait_ready(p: &Peer, peer: u16, deadline: Instant) -> Result<(), PeerError> {
    while read(p, READY_OFF + 8 * usize::from(peer))? != READY {
        if Instant::now() > deadline {
            return Err(PeerError::Timeout(Duration::ZERO));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Waits for a doorbell after which `peer`'s sequence is `want`; `again`
/// runs every [`RESEND`] without one.
fn answer(
    p: &mut Peer,
    peer: u16,
    want: u64,
    deadline: Instant,
    mut again: impl FnMut(&mut Peer) -> Result<(), PeerError>,
) -> Result<(), PeerError> {
    let seq = SEQ_OFF + 8 * usize::from(peer);
    loop {
        match p.wait(0, RESEND) {
            Ok(_) if read(p, seq)? == want => return Ok(()),
            Ok(_) => {}
            Err(PeerError::Timeout(_)) => again(p)?,
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(PeerError::Timeout(Duration::ZERO));
        }
    }
}

/// Rings `peer` `rounds` times (plus the warm-up), waiting for each answer.
pub fn ping(
    p: &mut Peer,
    peer: u16,
    rounds: u64,
    timeout: Duration,
) -> Result<Latencies, PeerError> {
    let deadline = Instant::now() + timeout;
    let me = usize::from(p.id());
    write(p, READY_OFF + 8 * me, READY)?;
    wait_ready(p, peer, deadline)?;
    let mut lat = Vec::with_capacity(usize::try_from(rounds).unwrap_or(0));
    for r in 0..=rounds {
        write(p, SEQ_OFF + 8 * me, r + 1)?;
        let t0 = Instant::now();
        p.ring(peer, 0)?;
        answer(p, peer, r + 1, deadline, |p| p.ring(peer, 0))?;
        if r > 0 {
            lat.push(t0.elapsed());
        }
    }
    lat.sort();
    Ok(Latencies(lat))
}

/// Answers `rounds` rings of `peer` (plus the warm-up).
pub fn pong(p: &mut Peer, peer: u16, rounds: u64, timeout: Duration) -> Result<(), PeerError> {
    let deadline = Instant::now() + timeout;
    let me = usize::from(p.id());
    write(p, READY_OFF + 8 * me, READY)?;
    for r in 0..=rounds {
        answer(p, peer, r + 1, deadline, |p| {
            // The pinger missed our last answer: give it again.
            if r > 0 && read(p, SEQ_OFF + 8 * usize::from(peer))? == r {
                p.ring(peer, 0)?;
            }
            Ok(())
        })?;
        write(p, SEQ_OFF + 8 * me, r + 1)?;
        p.ring(peer, 0)?;
    }
    Ok(())
}
