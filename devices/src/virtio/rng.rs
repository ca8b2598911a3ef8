//! virtio-rng (spec 5.4): one queue of device-writable buffers, each
//! filled with bytes from the host kernel's random source.

use std::fs::File;
use std::io::Read;

use super::device::{Queues, VirtioDevice, memory_broken};
use super::queue::{GuestMemory, QueueError};

/// Bytes handed out per request at most (QEMU's virtio-rng caps requests
/// too; the driver asks again).
pub const MAX_REQUEST: usize = 64 << 10;

/// What the device did, for `--stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngStats {
    pub requests: u64,
    pub bytes: u64,
    /// Requests the source could not fill (completed empty).
    pub errors: u64,
}

/// An entropy device over `source` (the VMM opens `/dev/urandom`: the
/// kernel's CSPRNG, as getrandom(2), and a file descriptor opened before
/// the sandbox closes the door on opening it).
#[derive(Debug)]
pub struct Rng {
    source: File,
    buf: Vec<u8>,
    stats: RngStats,
    /// A failing source would give one line per guest request.
    warnings: crate::ratelimit::RateLimit,
}

impl Rng {
    pub fn new(source: File) -> Rng {
        Rng {
            source,
            buf: vec![0; MAX_REQUEST],
            stats: RngStats::default(),
            warnings: Default::default(),
        }
    }

    pub fn stats(&self) -> RngStats {
        self.stats
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        super::TYPE_RNG
    }

    fn features(&self) -> u64 {
        super::features::RING_INDIRECT_DESC
    }

    fn queue_count(&self) -> u16 {
        1
    }

    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn kick(
        &mut self,
        q: u16,
        queues: &mut Queues,
        mem: &dyn GuestMemory,
    ) -> Result<(), QueueError> {
        while let Some(chain) = queues.pop(q, mem)? {
            let n = chain.writable_len().min(MAX_REQUEST as u64) as usize;
            let buf = &mut self.buf[..n];
            let written = match self.source.read_exact(buf) {
                Ok(()) => {
                    chain
                        .write_at(mem, 0, buf)
                        .map_err(|e| memory_broken(q, e))?;
                    self.stats.bytes += n as u64;
                    n as u32
                }
                Err(e) => {
                    crate::warn_limited!(
                        self.warnings,
                        "virtio-rng: the entropy source failed: {e}"
                    );
                    self.stats.errors += 1;
                    0
                }
            };
            self.stats.requests += 1;
            queues.add_used(q, chain.head, written, mem)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::queue::ChainError;
    use crate::virtio::queue::tests::{DATA, Driver};

    fn rig() -> (Driver, Queues, Rng) {
        let d = Driver::new(4);
        let q = Queues::new(1, &[d.config(0)], &d.mem).unwrap();
        (d, q, Rng::new(File::open("/dev/urandom").unwrap()))
    }

    #[test]
    fn buffers_come_back_full_of_random_bytes() {
        let (mut d, mut q, mut rng) = rig();
        d.chain(0, &[(DATA, 64, true), (DATA + 0x1000, 64, true)]);
        d.chain(2, &[(DATA + 0x2000, 200_000, true)]);
        rng.kick(0, &mut q, &d.mem).unwrap();
        assert_eq!(d.used(), [(0, 128), (2, MAX_REQUEST as u32)]);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        d.mem.read(DATA, &mut a).unwrap();
        d.mem.read(DATA + 0x1000, &mut b).unwrap();
        // 2^-512 odds of a false failure.
        assert_ne!(a, [0; 64]);
        assert_ne!(a, b);
        assert_eq!(rng.stats().bytes, 128 + MAX_REQUEST as u64);
    }

    #[test]
    fn readable_buffers_get_nothing_and_bad_chains_break_it() {
        let (mut d, mut q, mut rng) = rig();
        d.chain(0, &[(DATA, 64, false)]);
        rng.kick(0, &mut q, &d.mem).unwrap();
        assert_eq!(d.used(), [(0, 0)]);
        d.chain(1, &[(1 << 40, 64, true)]);
        assert!(matches!(
            rng.kick(0, &mut q, &d.mem),
            Err(QueueError::Chain {
                err: ChainError::Buffer { .. },
                ..
            })
        ));
    }
}
