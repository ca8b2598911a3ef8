//! CPU topology (`-smp N,sockets=S,cores=C,threads=T`) and the APIC IDs it
//! gives each vCPU, as QEMU and real x86 packages number them: the APIC ID
//! is the thread number in the low bits, then the core number, then the
//! socket number, each field as wide as its count needs (rounded up to a
//! power of two), so IDs can have gaps (3 cores use core numbers 0-2 of a
//! 2-bit field). CPUID, the MP table and the MADT all take IDs from here.

/// Sockets x cores per socket x threads per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u8,
    pub cores: u8,
    pub threads: u8,
}

/// Highest APIC ID a vCPU may get: xAPIC IDs are 8 bits, 0xff is the
/// broadcast ID, and the IOAPIC takes the ID after the last vCPU.
pub const MAX_APIC_ID: u32 = 0xfd;

/// Why a topology cannot hold the vCPUs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("-smp: sockets, cores and threads must each be at least 1")]
    Zero,
    #[error(
        "-smp: {cpus} CPUs do not fit in sockets={sockets} x cores={cores} x threads={threads} = {slots}"
    )]
    TooSmall {
        cpus: u8,
        sockets: u8,
        cores: u8,
        threads: u8,
        slots: u32,
    },
    #[error(
        "-smp: CPU {index} would get APIC ID {id}, above {MAX_APIC_ID} (8-bit xAPIC IDs; fields \
         round up to powers of two: use counts like 2, 4, 8)"
    )]
    ApicIdTooLarge { index: u8, id: u32 },
}

/// ceil(log2(n)): bits of an APIC ID field numbering `n` things.
fn field_bits(n: u8) -> u32 {
    u32::from(n.max(1)).next_power_of_two().trailing_zeros()
}

impl Topology {
    /// One socket with `n` single-threaded cores (the topology without
    /// `sockets=`/`cores=`/`threads=`).
    pub fn flat(n: u8) -> Topology {
        Topology {
            sockets: 1,
            cores: n.max(1),
            threads: 1,
        }
    }

    /// Checks that `cpus` vCPUs fit and every APIC ID (they grow with the
    /// index, so the last is the highest) stays at or below
    /// [`MAX_APIC_ID`].
    pub fn check(&self, cpus: u8) -> Result<(), Error> {
        let Topology {
            sockets,
            cores,
            threads,
        } = *self;
        if sockets == 0 || cores == 0 || threads == 0 {
            return Err(Error::Zero);
        }
        let slots = u32::from(sockets) * u32::from(cores) * u32::from(threads);
        if slots < u32::from(cpus) {
            return Err(Error::TooSmall {
                cpus,
                sockets,
                cores,
                threads,
                slots,
            });
        }
        match cpus.checked_sub(1).map(|i| (i, self.apic_id(i))) {
            Some((index, id)) if id > MAX_APIC_ID => Err(Error::ApicIdTooLarge { index, id }),
            _ => Ok(()),
        }
    }

    /// APIC ID bits numbering threads within a core.
    pub fn thread_bits(&self) -> u32 {
        field_bits(self.threads)
    }

    /// APIC ID bits numbering cores within a socket.
    pub fn core_bits(&self) -> u32 {
        field_bits(self.cores)
    }

    /// Shift from an APIC ID to its socket number.
    pub fn package_shift(&self) -> u32 {
        self.thread_bits() + self.core_bits()
    }

    /// Logical CPUs per socket.
    pub fn per_package(&self) -> u32 {
        u32::from(self.cores) * u32::from(self.threads)
    }

    /// (socket, core, thread) of vCPU `index`: threads fill a core, cores
    /// fill a socket, as QEMU numbers them.
    pub fn location(&self, index: u8) -> (u32, u32, u32) {
        let i = u32::from(index);
        let threads = u32::from(self.threads.max(1));
        let cores = u32::from(self.cores.max(1));
        (i / (threads * cores), (i / threads) % cores, i % threads)
    }

    /// The APIC ID of vCPU `index`.
    pub fn apic_id(&self, index: u8) -> u32 {
        let (socket, core, thread) = self.location(index);
        (socket << self.package_shift()) | (core << self.thread_bits()) | thread
    }

    /// APIC IDs of vCPUs `0..cpus` as the 8-bit IDs the MP table and MADT
    /// hold (for a topology that passed [`Topology::check`]).
    pub fn apic_ids8(&self, cpus: u8) -> Vec<u8> {
        (0..cpus)
            .map(|i| u8::try_from(self.apic_id(i)).unwrap_or(u8::MAX))
            .collect()
    }

    /// The IOAPIC's ID: the one after the highest vCPU APIC ID.
    pub fn ioapic_id(&self, cpus: u8) -> u8 {
        self.apic_ids8(cpus)
            .into_iter()
            .max()
            .map_or(0, |m| m.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sockets: u8, cores: u8, threads: u8) -> Topology {
        Topology {
            sockets,
            cores,
            threads,
        }
    }

    #[test]
    fn flat_is_consecutive_ids() {
        let f = Topology::flat(5);
        assert_eq!(f.apic_ids8(5), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            (f.thread_bits(), f.core_bits(), f.package_shift()),
            (0, 3, 3)
        );
        assert_eq!(f.ioapic_id(5), 5);
        assert_eq!(f.check(5), Ok(()));
        assert_eq!(Topology::flat(1).package_shift(), 0);
    }

    #[test]
    fn ids_pack_thread_core_socket_fields() {
        // 2 sockets x 3 cores x 2 threads: thread 1 bit, core 2 bits.
        let x = t(2, 3, 2);
        assert_eq!(
            x.apic_ids8(12),
            vec![0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
        );
        assert_eq!(x.location(7), (1, 0, 1));
        assert_eq!(x.ioapic_id(12), 14);
        assert_eq!(x.check(12), Ok(()));
        // Fewer vCPUs than slots (maxcpus): the first ones, same IDs.
        assert_eq!(x.apic_ids8(7), vec![0, 1, 2, 3, 4, 5, 8]);
        // 4 sockets x 1 core x 1 thread: socket field starts at bit 0.
        assert_eq!(t(4, 1, 1).apic_ids8(4), vec![0, 1, 2, 3]);
        // 1 x 2 x 4
        assert_eq!(t(1, 2, 4).apic_ids8(8), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(t(1, 3, 3).apic_ids8(9), vec![0, 1, 2, 4, 5, 6, 8, 9, 10]);
    }

    #[test]
    fn refusals() {
        assert_eq!(t(0, 1, 1).check(1), Err(Error::Zero));
        assert!(matches!(
            t(1, 2, 2).check(5),
            Err(Error::TooSmall { slots: 4, .. })
        ));
        // Padded fields: 2 sockets x 64 cores x 2 threads, vCPU 254 is
        // socket 1, core 63, thread 0 = (1 << 7) | (63 << 1).
        assert_eq!(
            t(2, 64, 2).check(255),
            Err(Error::ApicIdTooLarge {
                index: 254,
                id: 254
            })
        );
        assert_eq!(t(2, 64, 2).check(253), Ok(()));
        // Every 64-vCPU split into 3-core, 3-thread sockets fits.
        assert_eq!(t(8, 3, 3).check(64), Ok(()));
    }
}
