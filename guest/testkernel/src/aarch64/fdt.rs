//! The boot information from the flattened device tree the VMM passed in
//! x0 (devicetree specification v0.4, chapter 5): the command line and
//! initrd from `/chosen`, RAM from the `memory` node, the CPUs' MPIDRs,
//! the PCI host bridge's ECAM window and 32-bit memory window, the UART,
//! the debug-exit register and PSCI's conduit. Read once by the boot CPU.

use super::boot::MAX_CPUS;

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
const MAX_DEPTH: usize = 8;

/// What the kernel uses of the tree (addresses are guest physical).
pub struct BootInfo {
    pub fdt: u64,
    pub fdt_size: u64,
    pub cmdline: &'static [u8],
    /// [start, end) of the initrd.
    pub initrd: Option<(u64, u64)>,
    /// [start, end) of RAM (the first `memory` node).
    pub ram: (u64, u64),
    pub cpus: [u64; MAX_CPUS],
    pub ncpus: usize,
    /// More `cpu` nodes than `MAX_CPUS`.
    pub cpus_dropped: bool,
    pub ecam: Option<u64>,
    /// The first 32-bit memory window of the host bridge: (address, size).
    pub mmio32: Option<(u64, u64)>,
    pub uart: Option<u64>,
    pub debug_exit: Option<u64>,
    pub psci_hvc: bool,
}

/// One node's properties of interest, collected until its END_NODE.
#[derive(Clone, Copy, Default)]
struct Node {
    name: &'static [u8],
    compatible: &'static [u8],
    device_type: &'static [u8],
    reg: &'static [u8],
    ranges: &'static [u8],
    method: &'static [u8],
    bootargs: &'static [u8],
    initrd_start: &'static [u8],
    initrd_end: &'static [u8],
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(w) => u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
        None => 0,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// A 32- or 64-bit cell value (`linux,initrd-*` may be either).
fn cells(b: &[u8]) -> Option<u64> {
    match b.len() {
        4 => Some(u64::from(be32(b, 0))),
        8 => Some(be64(b, 0)),
        _ => None,
    }
}

/// Whether a string list (NUL-separated) holds `s`.
fn has(list: &[u8], s: &[u8]) -> bool {
    list.split(|&c| c == 0).any(|x| x == s)
}

/// The string without its NUL terminator.
fn string(b: &'static [u8]) -> &'static [u8] {
    b.split(|&c| c == 0).next().unwrap_or(b)
}

/// Reads the tree at `addr`.
pub fn read(addr: u64) -> Result<BootInfo, &'static str> {
    // SAFETY: the header is 40 bytes of RAM at x0 (MMU off, identity).
    let head = unsafe { core::slice::from_raw_parts(addr as *const u8, 40) };
    if be32(head, 0) != MAGIC {
        return Err("fdt_bad_magic");
    }
    let size = u64::from(be32(head, 4));
    if !(40..=(2 << 20)).contains(&size) {
        return Err("fdt_bad_size");
    }
    // SAFETY: the tree's own totalsize (checked above) from its start.
    let blob: &'static [u8] =
        unsafe { core::slice::from_raw_parts(addr as *const u8, size as usize) };
    let (off_struct, off_strings) = (be32(blob, 8) as usize, be32(blob, 12) as usize);
    let mut info = BootInfo {
        fdt: addr,
        fdt_size: size,
        cmdline: &[],
        initrd: None,
        ram: (0, 0),
        cpus: [0; MAX_CPUS],
        ncpus: 0,
        cpus_dropped: false,
        ecam: None,
        mmio32: None,
        uart: None,
        debug_exit: None,
        psci_hvc: false,
    };
    let mut stack = [Node::default(); MAX_DEPTH];
    let mut depth = 0usize;
    let mut p = off_struct;
    loop {
        let tok = be32(blob, p);
        p += 4;
        match tok {
            BEGIN_NODE => {
                let name = string(blob.get(p..).ok_or("fdt_truncated")?);
                p += (name.len() + 4) & !3;
                if depth == MAX_DEPTH {
                    return Err("fdt_too_deep");
                }
                stack[depth] = Node {
                    name,
                    ..Node::default()
                };
                depth += 1;
            }
            END_NODE => {
                if depth == 0 {
                    return Err("fdt_unbalanced");
                }
                depth -= 1;
                let parent = if depth > 0 {
                    stack[depth - 1].name
                } else {
                    b""
                };
                take(&mut info, &stack[depth], depth, parent);
            }
            PROP => {
                let len = be32(blob, p) as usize;
                let name = string(
                    blob.get(off_strings + be32(blob, p + 4) as usize..)
                        .ok_or("fdt_truncated")?,
                );
                let value = blob.get(p + 8..p + 8 + len).ok_or("fdt_truncated")?;
                p += 8 + ((len + 3) & !3);
                if depth == 0 {
                    return Err("fdt_property_outside_node");
                }
                let n = &mut stack[depth - 1];
                match name {
                    b"compatible" => n.compatible = value,
                    b"device_type" => n.device_type = string(value),
                    b"reg" => n.reg = value,
                    b"ranges" => n.ranges = value,
                    b"method" => n.method = string(value),
                    b"bootargs" => n.bootargs = string(value),
                    b"linux,initrd-start" => n.initrd_start = value,
                    b"linux,initrd-end" => n.initrd_end = value,
                    _ => {}
                }
            }
            NOP => {}
            END => break,
            _ => return Err("fdt_bad_token"),
        }
        if p >= blob.len() {
            return Err("fdt_truncated");
        }
    }
    Ok(info)
}

/// Takes what `info` needs from a finished node at `depth` (1: a child of
/// the root) under `parent`. The root and `cpus` have two address cells,
/// the root two size cells (shmvm's and QEMU's trees).
fn take(info: &mut BootInfo, n: &Node, depth: usize, parent: &[u8]) {
    if depth == 1 && n.name == b"chosen" {
        info.cmdline = n.bootargs;
        if let (Some(s), Some(e)) = (cells(n.initrd_start), cells(n.initrd_end)) {
            info.initrd = Some((s, e));
        }
    }
    if n.device_type == b"memory" && n.reg.len() >= 16 && info.ram.1 == 0 {
        let base = be64(n.reg, 0);
        info.ram = (base, base + be64(n.reg, 8));
    }
    if n.device_type == b"cpu" && parent == b"cpus" {
        match (cells(n.reg), info.ncpus < MAX_CPUS) {
            (Some(mpidr), true) => {
                info.cpus[info.ncpus] = mpidr;
                info.ncpus += 1;
            }
            _ => info.cpus_dropped = true,
        }
    }
    if n.name.starts_with(b"psci") {
        info.psci_hvc = n.method == b"hvc";
    }
    if has(n.compatible, b"pci-host-ecam-generic") {
        info.ecam = (n.reg.len() >= 8).then(|| be64(n.reg, 0));
        // Entries of 7 cells: PCI address (3), CPU address (2), size (2);
        // space code 2 in the first cell's bits 24-25 is 32-bit memory.
        info.mmio32 = n
            .ranges
            .chunks_exact(28)
            .find(|r| (be32(r, 0) >> 24) & 3 == 2)
            .map(|r| (be64(r, 12), be64(r, 20)));
    }
    if has(n.compatible, b"ns16550a") && n.reg.len() >= 8 {
        info.uart = Some(be64(n.reg, 0));
    }
    if has(n.compatible, b"shmvm,debug-exit") && n.reg.len() >= 8 {
        info.debug_exit = Some(be64(n.reg, 0));
    }
}
