//! MSI-X (PCI spec 6.8.2): the capability's Message Control register, the
//! vector table and the pending bit array (PBA).
//!
//! The model keeps the table and computes, per vector, what the hypervisor
//! should route: address, data and whether delivery is masked (the vector's
//! own mask bit, the function mask, or MSI-X disabled). Every change of that
//! effective state is reported once, so the owner updates one route.

/// MSI-X capability ID.
pub const CAP_ID: u8 = 0x11;
/// Length of the capability in configuration space.
pub const CAP_LEN: usize = 12;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: the vector is masked.
const ENTRY_MASKED: u32 = 1;
/// Message Control bits.
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Most vectors one function may have (table size field is 11 bits).
pub const MAX_VECTORS: u16 = 2048;

/// The capability's Message Control value if a configuration write at
/// `offset` of `len` bytes touched it (the capability starts at `cap`).
pub fn control_written(
    config: &super::ConfigSpace,
    cap: usize,
    offset: usize,
    len: usize,
) -> Option<u16> {
    let control = cap + 2;
    if offset >= control + 2 || control >= offset + len {
        return None;
    }
    let mut b = [0u8; 2];
    config.peek(control, &mut b);
    Some(u16::from_le_bytes(b))
}

/// What one vector delivers, as the hypervisor should route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixVector {
    pub address: u64,
    pub data: u32,
    /// Delivery is off: vector masked, function masked or MSI-X disabled.
    pub masked: bool,
}

/// The MSI-X state of one function.
#[derive(Debug, Clone)]
pub struct Msix {
    /// Per vector: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    enabled: bool,
    function_masked: bool,
    /// The effective state last reported per vector.
    reported: Vec<MsixVector>,
}

impl Msix {
    /// `vectors` entries (1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors.clamp(1, MAX_VECTORS));
        let masked = MsixVector {
            address: 0,
            data: 0,
            masked: true,
        };
        Msix {
            table: vec![[0, 0, 0, ENTRY_MASKED]; n],
            enabled: false,
            function_masked: false,
            reported: vec![masked; n],
        }
    }

    pub fn vectors(&self) -> u16 {
        self.table.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64 * ENTRY_SIZE
    }

    /// Bytes of the PBA (one bit per vector, in whole qwords).
    pub fn pba_len(&self) -> u64 {
        self.table.len().div_ceil(64) as u64 * 8
    }

    /// The capability body and write mask for
    /// [`ConfigSpace::add_capability`](crate::pci::ConfigSpace::add_capability):
    /// table and PBA in BAR `bar` at the given offsets (8-byte aligned).
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> ([u8; 12], [u8; 12]) {
        let mut body = [0u8; CAP_LEN];
        body[0] = CAP_ID;
        body[2..4].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        body[4..8].copy_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
        body[8..12].copy_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
        let mut mask = [0u8; CAP_LEN];
        mask[2..4].copy_from_slice(&(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes());
        (body, mask)
    }

    /// The effective state of `vector`.
    pub fn vector(&self, vector: u16) -> Option<MsixVector> {
        let e = self.table.get(usize::from(vector))?;
        Some(MsixVector {
            address: u64::from(e[0]) | (u64::from(e[1]) << 32),
            data: e[2],
            masked: !self.enabled || self.function_masked || e[3] & ENTRY_MASKED != 0,
        })
    }

    /// Applies the Message Control register's value; returns the vectors
    /// whose effective state changed.
    pub fn set_control(&mut self, control: u16) -> Vec<(u16, MsixVector)> {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.changes()
    }

    /// A read at `offset` into the table. Accesses must be 4 or 8 bytes,
    /// naturally aligned; others read all-ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let off = offset + 4 * i as u64;
            let Some(e) = self.table.get((off / ENTRY_SIZE) as usize) else {
                return;
            };
            chunk.copy_from_slice(&e[((off % ENTRY_SIZE) / 4) as usize].to_le_bytes());
        }
    }

    /// A write at `offset` into the table; returns the vectors whose
    /// effective state changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<(u16, MsixVector)> {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return Vec::new();
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let off = offset + 4 * i as u64;
            let Some(e) = self.table.get_mut((off / ENTRY_SIZE) as usize) else {
                break;
            };
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let word = ((off % ENTRY_SIZE) / 4) as usize;
            // Only the mask bit of vector control is writable.
            e[word] = match word {
                3 => u32::from_le_bytes(b) & ENTRY_MASKED,
                _ => u32::from_le_bytes(b),
            };
        }
        self.changes()
    }

    /// A read at `offset` into the PBA. Nothing is ever pending here: with
    /// irqfds the hypervisor holds an interrupt raised while masked (the
    /// eventfd stays signalled) and delivers it on unmask.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let inside = offset.saturating_add(data.len() as u64) <= self.pba_len();
        data.fill(if inside { 0 } else { 0xff });
    }

    fn changes(&mut self) -> Vec<(u16, MsixVector)> {
        let mut out = Vec::new();
        for v in 0..self.vectors() {
            let Some(now) = self.vector(v) else { break };
            let last = &mut self.reported[usize::from(v)];
            // A masked vector's address/data changing is not worth a report;
            // it is reported with its final values when unmasked.
            let relevant = now.masked != last.masked || (!now.masked && now != *last);
            if relevant {
                *last = now;
                out.push((v, now));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(m: &mut Msix, off: u64, v: u32) -> Vec<(u16, MsixVector)> {
        m.write_table(off, &v.to_le_bytes())
    }

    #[test]
    fn program_then_enable_reports_each_vector_once() {
        let mut m = Msix::new(3);
        assert_eq!((m.table_len(), m.pba_len()), (48, 8));
        // Linux programs entries while MSI-X is enabled with the function
        // masked, then unmasks the function.
        assert!(
            m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK)
                .is_empty()
        );
        assert!(w32(&mut m, 16, 0xfee0_1000).is_empty());
        assert!(w32(&mut m, 20, 0).is_empty());
        assert!(w32(&mut m, 24, 0x4041).is_empty());
        assert!(w32(&mut m, 28, 0).is_empty(), "function still masked");
        let ch = m.set_control(CONTROL_ENABLE);
        assert_eq!(
            ch,
            vec![(
                1,
                MsixVector {
                    address: 0xfee0_1000,
                    data: 0x4041,
                    masked: false
                }
            )]
        );
        // Masking the vector reports it masked; a rewrite while masked is
        // silent; unmasking reports the new message.
        assert!(w32(&mut m, 28, 1)[0].1.masked);
        assert!(w32(&mut m, 24, 0x4042).is_empty());
        let ch = w32(&mut m, 28, 0);
        assert_eq!(ch[0].1.data, 0x4042);
        // Disabling MSI-X masks every unmasked vector.
        assert_eq!(m.set_control(0).len(), 1);
    }

    #[test]
    fn table_reads_and_odd_accesses() {
        let mut m = Msix::new(2);
        m.write_table(16, &0x1_fee0_0000u64.to_le_bytes());
        let mut b = [0u8; 8];
        m.read_table(16, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1_fee0_0000);
        let mut w = [0u8; 4];
        m.read_table(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), 1, "reset state: masked");
        // Only the mask bit of vector control sticks.
        w32(&mut m, 12, 0xffff_fffe);
        m.read_table(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0);
        // Unaligned, odd-sized or out-of-table accesses read all-ones and
        // do not write.
        m.read_table(2, &mut w);
        assert_eq!(w, [0xff; 4]);
        let mut two = [0u8; 2];
        m.read_table(0, &mut two);
        assert_eq!(two, [0xff; 2]);
        assert!(m.write_table(0, &[1, 2]).is_empty());
        m.read_table(64, &mut w);
        assert_eq!(w, [0xff; 4]);
        let mut p = [1u8; 8];
        m.read_pba(0, &mut p);
        assert_eq!(p, [0; 8]);
        m.read_pba(8, &mut w);
        assert_eq!(w, [0xff; 4]);
    }

    #[test]
    fn capability_layout() {
        let m = Msix::new(5);
        let (body, mask) = m.capability(0, 0x4000, 0x5000);
        assert_eq!(body[0], CAP_ID);
        assert_eq!(u16::from_le_bytes([body[2], body[3]]), 4, "table size - 1");
        assert_eq!(
            u32::from_le_bytes([body[4], body[5], body[6], body[7]]),
            0x4000
        );
        assert_eq!(
            u32::from_le_bytes([body[8], body[9], body[10], body[11]]),
            0x5000
        );
        assert_eq!(u16::from_le_bytes([mask[2], mask[3]]), 0xc000);
        assert_eq!(Msix::new(0).vectors(), 1);
        assert_eq!(Msix::new(4000).vectors(), MAX_VECTORS);
    }
}
