//! ivshmem-doorbell (1af4:1110), as QEMU 10's `-device ivshmem-doorbell`:
//! the ivshmem-plain function plus interrupts between peers that an
//! ivshmem server introduced.
//!
//! - BAR0: IntrMask, IntrStatus (kept, no INTx: the device has MSI-X only),
//!   IVPosition (this peer's id, read-only), Doorbell (write
//!   `(peer << 16) | vector`; QEMU decodes the vector from the low 8 bits).
//! - BAR1: the MSI-X table at 0 and the PBA at 2 KiB (QEMU's
//!   `msix_init_exclusive_bar` layout), 32-bit memory.
//! - BAR2: the shared memory from the server, 64-bit prefetchable; the VMM
//!   backs it with a memory slot.
//!
//! The model sends and receives nothing itself. Its owner (the VMM)
//! implements [`DoorbellEvents`]: it is told when an MSI-X vector changes
//! (to route it and attach the vector's eventfd while it is unmasked), when
//! BAR0 moves (to register one ioeventfd per (peer, vector) on the doorbell,
//! so a guest's ring never exits), and about doorbell writes that exited
//! anyway (no ioeventfd matched: an absent peer or vector, ioeventfd=off).

use crate::ivshmem::{
    CLASS, DEVICE_ID, MEMORY_BAR, REG_DOORBELL, REG_INTR_MASK, REG_INTR_STATUS, REG_IV_POSITION,
    REGISTER_BAR, REGISTER_BAR_SIZE, REVISION, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
    is_register_access,
};
use crate::pci::msix::{Msix, MsixVector};
use crate::pci::{BarChange, BarKind, ConfigSpace, PciDevice, PciIds};

/// The MSI-X BAR.
pub const MSIX_BAR: usize = 1;
/// Where the PBA starts in BAR1 (the table is at 0).
pub const MSIX_PBA_OFFSET: u64 = 2048;
/// Most vectors: the table must fit below the PBA.
pub const MAX_VECTORS: u16 = 128;
/// BAR1's size.
pub const MSIX_BAR_SIZE: u64 = 4096;

/// Errors from creating the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("ivshmem-doorbell: vectors={0} (must be 1..={MAX_VECTORS})")]
    Vectors(u16),
    #[error(
        "ivshmem-doorbell: the server's shared memory is {0:#x} bytes, not a power of two of at least 4 KiB (a PCI BAR's size)"
    )]
    Size(u64),
    #[error("ivshmem-doorbell: {0}")]
    Config(#[from] crate::pci::ConfigError),
}

/// What the owner of an [`IvshmemDoorbell`] is told. Calls come from a vCPU
/// thread with the device locked: an implementation must not lock the
/// device or the PCI root.
pub trait DoorbellEvents: Send {
    /// MSI-X vector `vector` now delivers `state` (or is masked).
    fn msix_vector(&mut self, vector: u16, state: MsixVector);
    /// The doorbell register moved to `addr` (None: BAR0 stopped decoding).
    fn doorbell_moved(&mut self, addr: Option<u64>);
    /// A doorbell write reached the model: no ioeventfd caught it.
    fn doorbell(&mut self, peer: u16, vector: u16);
}

/// What the device saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DoorbellStats {
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar0_reads: u64,
    pub bar0_writes: u64,
    pub bar0_bad_accesses: u64,
    /// Doorbell writes that exited to the VMM.
    pub doorbell_exits: u64,
    pub msix_writes: u64,
    pub bar2_exits: u64,
}

/// The ivshmem-doorbell function.
pub struct IvshmemDoorbell {
    config: ConfigSpace,
    msix: Msix,
    msix_cap: usize,
    intr_mask: u32,
    intr_status: u32,
    id: u16,
    doorbell_at: Option<u64>,
    owner: Box<dyn DoorbellEvents>,
    stats: DoorbellStats,
}

impl std::fmt::Debug for IvshmemDoorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IvshmemDoorbell")
            .field("id", &self.id)
            .field("vectors", &self.msix.vectors())
            .finish()
    }
}

/// The doorbell register value that rings `vector` of `peer`.
pub fn doorbell_value(peer: u16, vector: u16) -> u32 {
    (u32::from(peer) << 16) | u32::from(vector)
}

impl IvshmemDoorbell {
    /// Peer `id` with `vectors` MSI-X vectors and `memory_size` bytes of
    /// shared memory in BAR2.
    pub fn new(
        id: u16,
        vectors: u16,
        memory_size: u64,
        owner: Box<dyn DoorbellEvents>,
    ) -> Result<Self, Error> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(Error::Vectors(vectors));
        }
        if !memory_size.is_power_of_two() || memory_size < 4096 {
            return Err(Error::Size(memory_size));
        }
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: REVISION,
            class: CLASS,
            subsystem_vendor: SUBSYSTEM_VENDOR_ID,
            subsystem: SUBSYSTEM_ID,
        });
        let non_prefetchable = BarKind::Memory32 {
            prefetchable: false,
        };
        config.add_bar(REGISTER_BAR, non_prefetchable, REGISTER_BAR_SIZE)?;
        config.add_bar(MSIX_BAR, non_prefetchable, MSIX_BAR_SIZE)?;
        config.add_bar(
            MEMORY_BAR,
            BarKind::Memory64 { prefetchable: true },
            memory_size,
        )?;
        let msix = Msix::new(vectors);
        let (body, mask) = msix.capability(MSIX_BAR as u8, 0, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(&body, &mask)?;
        Ok(IvshmemDoorbell {
            config,
            msix,
            msix_cap,
            intr_mask: 0,
            intr_status: 0,
            id,
            doorbell_at: None,
            owner,
            stats: DoorbellStats::default(),
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn vectors(&self) -> u16 {
        self.msix.vectors()
    }

    pub fn msix_capability(&self) -> usize {
        self.msix_cap
    }

    pub fn stats(&self) -> DoorbellStats {
        let c = self.config.stats();
        DoorbellStats {
            config_reads: c.reads,
            config_writes: c.writes,
            ..self.stats
        }
    }

    fn report_msix(&mut self, changes: Vec<(u16, MsixVector)>) {
        for (v, state) in changes {
            self.owner.msix_vector(v, state);
        }
    }

    fn update_doorbell(&mut self) {
        let at = self
            .config
            .decoded(REGISTER_BAR)
            .map(|r| r.addr + REG_DOORBELL);
        if at != self.doorbell_at {
            self.doorbell_at = at;
            self.owner.doorbell_moved(at);
        }
    }

    fn register_read(&mut self, offset: u64) -> u32 {
        match offset {
            REG_INTR_MASK => self.intr_mask,
            REG_INTR_STATUS => std::mem::take(&mut self.intr_status),
            REG_IV_POSITION => u32::from(self.id),
            _ => 0,
        }
    }

    fn register_write(&mut self, offset: u64, value: u32) {
        match offset {
            REG_INTR_MASK => self.intr_mask = value,
            REG_INTR_STATUS => self.intr_status = value,
            REG_DOORBELL => {
                self.stats.doorbell_exits += 1;
                let peer = (value >> 16) as u16;
                let vector = (value & 0xff) as u16;
                self.owner.doorbell(peer, vector);
            }
            _ => {}
        }
    }
}

impl PciDevice for IvshmemDoorbell {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        let changes = self.config.write(offset, data);
        if let Some(control) =
            crate::pci::msix::control_written(&self.config, self.msix_cap, offset, data.len())
        {
            let c = self.msix.set_control(control);
            self.report_msix(c);
        }
        if changes.iter().any(|c| c.index == REGISTER_BAR) {
            self.update_doorbell();
        }
        changes
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        match index {
            REGISTER_BAR if is_register_access(offset, data.len()) => {
                self.stats.bar0_reads += 1;
                let v = self.register_read(offset);
                data.copy_from_slice(&v.to_le_bytes());
            }
            REGISTER_BAR => {
                self.stats.bar0_bad_accesses += 1;
                data.fill(0xff);
            }
            MSIX_BAR if offset < MSIX_PBA_OFFSET => self.msix.read_table(offset, data),
            MSIX_BAR => self.msix.read_pba(offset - MSIX_PBA_OFFSET, data),
            MEMORY_BAR => {
                self.stats.bar2_exits += 1;
                data.fill(0xff);
            }
            _ => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        match index {
            REGISTER_BAR if is_register_access(offset, data.len()) => {
                self.stats.bar0_writes += 1;
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.register_write(offset, u32::from_le_bytes(b));
            }
            REGISTER_BAR => self.stats.bar0_bad_accesses += 1,
            MSIX_BAR if offset < MSIX_PBA_OFFSET => {
                self.stats.msix_writes += 1;
                let c = self.msix.write_table(offset, data);
                self.report_msix(c);
            }
            MEMORY_BAR => self.stats.bar2_exits += 1,
            _ => {}
        }
    }
}

// The largest table fits below the PBA, and the PBA in the BAR.
const _: () = assert!(crate::pci::msix::ENTRY_SIZE * MAX_VECTORS as u64 <= MSIX_PBA_OFFSET);
const _: () = assert!(MSIX_PBA_OFFSET + (MAX_VECTORS as u64).div_ceil(64) * 8 <= MSIX_BAR_SIZE);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::CMD_MEMORY;
    use crate::pci::msix::{CONTROL_ENABLE, CONTROL_FUNCTION_MASK};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Msix(u16, bool),
        Moved(Option<u64>),
        Ring(u16, u16),
    }

    struct Owner(Arc<Mutex<Vec<Ev>>>);

    impl DoorbellEvents for Owner {
        fn msix_vector(&mut self, vector: u16, state: MsixVector) {
            self.0.lock().unwrap().push(Ev::Msix(vector, state.masked));
        }
        fn doorbell_moved(&mut self, addr: Option<u64>) {
            self.0.lock().unwrap().push(Ev::Moved(addr));
        }
        fn doorbell(&mut self, peer: u16, vector: u16) {
            self.0.lock().unwrap().push(Ev::Ring(peer, vector));
        }
    }

    fn device(id: u16, vectors: u16) -> (IvshmemDoorbell, Arc<Mutex<Vec<Ev>>>) {
        let ev = Arc::new(Mutex::new(Vec::new()));
        let d = IvshmemDoorbell::new(id, vectors, 1 << 20, Box::new(Owner(ev.clone()))).unwrap();
        (d, ev)
    }

    fn rd(d: &mut IvshmemDoorbell, off: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        d.read_config(off, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn take(ev: &Arc<Mutex<Vec<Ev>>>) -> Vec<Ev> {
        std::mem::take(&mut *ev.lock().unwrap())
    }

    #[test]
    fn identity_bars_and_msix_capability_as_in_qemu() {
        let (mut d, _) = device(5, 2);
        assert_eq!(rd(&mut d, 0, 4), 0x1110_1af4);
        assert_eq!(rd(&mut d, 0x06, 2) & 0x10, 0x10, "capability list");
        let cap = rd(&mut d, 0x34, 1) as usize;
        assert_eq!(cap, d.msix_capability());
        assert_eq!(rd(&mut d, cap, 1), 0x11, "MSI-X");
        assert_eq!(rd(&mut d, cap + 2, 2), 1, "2 vectors");
        assert_eq!(rd(&mut d, cap + 4, 4), 1, "table in BAR1 at 0");
        assert_eq!(rd(&mut d, cap + 8, 4), 0x801, "PBA in BAR1 at 2 KiB");
        for off in (0x10..0x28).step_by(4) {
            d.write_config(off, &[0xff; 4]);
        }
        assert_eq!(rd(&mut d, 0x10, 4), 0xffff_ff00, "BAR0: 256 bytes");
        assert_eq!(rd(&mut d, 0x14, 4), 0xffff_f000, "BAR1: 4 KiB");
        assert_eq!(rd(&mut d, 0x18, 4), 0xfff0_000c, "BAR2: 1 MiB, 64-bit pf");
        assert_eq!(rd(&mut d, 0x3d, 1), 0, "no INTx pin");
    }

    #[test]
    fn creation_rules() {
        let o = || Box::new(Owner(Arc::default()));
        assert_eq!(
            IvshmemDoorbell::new(0, 0, 4096, o()).unwrap_err(),
            Error::Vectors(0)
        );
        assert_eq!(
            IvshmemDoorbell::new(0, 129, 4096, o()).unwrap_err(),
            Error::Vectors(129)
        );
        let e = IvshmemDoorbell::new(0, 1, 3 << 20, o()).unwrap_err();
        assert!(e.to_string().contains("0x300000"), "{e}");
    }

    #[test]
    fn registers_doorbell_and_moves() {
        let (mut d, ev) = device(7, 2);
        let mut b = [0u8; 4];
        d.read_bar(0, REG_IV_POSITION, &mut b);
        assert_eq!(u32::from_le_bytes(b), 7, "IVPosition is this peer's id");
        d.write_bar(0, REG_IV_POSITION, &9u32.to_le_bytes());
        d.read_bar(0, REG_IV_POSITION, &mut b);
        assert_eq!(u32::from_le_bytes(b), 7, "read-only");
        // IntrMask and IntrStatus as QEMU has them (INTx-only state, but
        // read and written alike): the mask reads back, a status read
        // returns the value and clears it.
        d.write_bar(0, REG_INTR_MASK, &0xffff_ffffu32.to_le_bytes());
        d.read_bar(0, REG_INTR_MASK, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_ffff, "IntrMask reads back");
        d.write_bar(0, REG_INTR_STATUS, &5u32.to_le_bytes());
        d.read_bar(0, REG_INTR_STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b), 5, "IntrStatus as written");
        d.read_bar(0, REG_INTR_STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0, "IntrStatus clears on read");
        d.write_bar(0, REG_DOORBELL, &doorbell_value(3, 1).to_le_bytes());
        d.write_bar(0, REG_DOORBELL, &0x0002_0301u32.to_le_bytes());
        d.write_bar(0, REG_DOORBELL, &[1, 0]);
        assert_eq!(
            take(&ev),
            vec![Ev::Ring(3, 1), Ev::Ring(2, 1)],
            "vector from the low 8 bits; narrow writes ignored"
        );
        assert_eq!(d.stats().doorbell_exits, 2);
        // BAR0 placed and decoding: the owner learns the doorbell address.
        d.write_config(0x10, &0xc000_0000u32.to_le_bytes());
        d.write_config(0x04, &CMD_MEMORY.to_le_bytes());
        assert_eq!(take(&ev), vec![Ev::Moved(Some(0xc000_000c))]);
        d.write_config(0x10, &0xc000_1000u32.to_le_bytes());
        assert_eq!(take(&ev), vec![Ev::Moved(Some(0xc000_100c))]);
        d.write_config(0x04, &0u16.to_le_bytes());
        assert_eq!(take(&ev), vec![Ev::Moved(None)]);
    }

    #[test]
    fn msix_changes_reach_the_owner() {
        let (mut d, ev) = device(0, 2);
        let cap = d.msix_capability();
        let ctl = |d: &mut IvshmemDoorbell, v: u16| d.write_config(cap + 2, &v.to_le_bytes());
        ctl(&mut d, CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        d.write_bar(1, 16, &0xfee0_0000u32.to_le_bytes());
        d.write_bar(1, 24, &0x41u32.to_le_bytes());
        d.write_bar(1, 28, &0u32.to_le_bytes());
        assert!(take(&ev).is_empty(), "function masked");
        ctl(&mut d, CONTROL_ENABLE);
        assert_eq!(take(&ev), vec![Ev::Msix(1, false)]);
        d.write_bar(1, 28, &1u32.to_le_bytes());
        assert_eq!(take(&ev), vec![Ev::Msix(1, true)]);
        let mut b = [0u8; 4];
        d.read_bar(1, 24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x41);
        d.read_bar(1, MSIX_PBA_OFFSET, &mut b);
        assert_eq!(b, [0; 4], "PBA");
        assert_eq!(d.stats().msix_writes, 4);
    }
}
