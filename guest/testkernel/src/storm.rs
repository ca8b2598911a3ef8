//! `storm`: seeded random guest behaviour against every device of the
//! machine, to find VMM bugs a well-behaved driver never triggers. From
//! `shmvm.seed`, `shmvm.storm_ops` operations, each one of: port I/O on the
//! legacy ports and PCI mechanism #1, random config-space writes (BAR
//! moves, command register, MSI-X enable/mask), MMIO to the BARs (MSI-X
//! table and PBA, ivshmem registers and doorbells, virtio registers),
//! virtio common-config writes and bogus descriptor rings with a kick.
//!
//! The storm leaves alone what would end the run: the debug-exit port,
//! the i8042 reset command, ACPI sleep, the reset ports 0x92 and 0xCF9, and
//! MSI messages that are not fixed-delivery interrupts (INIT/NMI/SMI would
//! stop the vCPU or take an exception). Interrupts stay off (IF=0, LAPIC
//! software-disabled), so MSI-X deliveries only land in the LAPIC's IRR.
//! Buffers a device writes live in a scratch area of free RAM, or at
//! addresses outside RAM; never in the kernel. All of it runs at CPL0
//! (port I/O); each operation costs a few dozen emulated instructions plus
//! its exits. Same seed, same machine: same operations.

use core::ptr::{read_volatile, write_volatile};

use crate::console::{Dec, Digits, Hex};
use crate::cpu::{inb, inl, outb, outl};
use crate::params::PARAMS;
use crate::pci::{Bdf, COMMAND};
use crate::{Global, console, paging, say};
use core::arch::asm;

/// xorshift64* (Vigna): tiny and good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (a zero state stays zero); mix the seed first.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform enough in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    /// 1, 2, 4 or 8 bytes (`max` caps it).
    fn width(&mut self, max: u64) -> u64 {
        (1u64 << self.below(4)).min(max)
    }
}

const MAX_FUNCS: usize = 16;
/// ivshmem (1af4:1110), as the ID register reads.
const IVSHMEM: u32 = 0x1110_1af4;
const CAP_MSIX: u8 = 0x11;
const CAP_VENDOR: u8 = 0x09;
/// The ports the storm never touches (see the module comment).
const DEBUG_EXIT: core::ops::Range<u16> = 0xf4..0xf8;
const ACPI_SLEEP: u16 = 0x3c0;
const I8042_CMD: u16 = 0x64;
const I8042_RESET: u32 = 0xfe;
const FAST_A20_RESET: u16 = 0x92;
const RESET_CONTROL: u16 = 0xcf9;
const COM1: u16 = 0x3f8;
/// Scratch RAM for rings and buffers a device may write.
const SCRATCH: u64 = 256 << 10;

#[derive(Clone, Copy)]
struct Bar {
    /// Config-space offset of the BAR register (0x10 + 4i).
    reg: u8,
    size: u64,
    is64: bool,
    io: bool,
}

#[derive(Clone, Copy)]
struct Virtio {
    /// (BAR index, offset, length) of each structure.
    common: (u8, u32),
    notify: (u8, u32),
    notify_mult: u32,
    isr: (u8, u32),
    device: (u8, u32, u32),
}

/// An MSI-X capability: where it is, its table and PBA (BAR index,
/// offset), its vector count.
#[derive(Clone, Copy)]
struct Msix {
    cap: u8,
    table: (u8, u32),
    pba: (u8, u32),
    vectors: u32,
}

#[derive(Clone, Copy)]
struct Func {
    bdf: Bdf,
    id: u32,
    bars: [Option<Bar>; 6],
    msix: Option<Msix>,
    virtio: Option<Virtio>,
    /// BAR registers and command register as firmware (the VMM) left
    /// them: the storm puts them back now and then, so the devices stay
    /// reachable for the operations after a move.
    orig_bars: [u32; 6],
    orig_cmd: u16,
}

struct State {
    funcs: [Option<Func>; MAX_FUNCS],
    nfuncs: usize,
    /// Scratch RAM (identity-mapped, below 4 GiB) and the top of RAM.
    scratch: u64,
    ram_top: u64,
    /// What was done, for the host to compare with its statistics.
    pio: u64,
    mmio: u64,
    cfg_writes: u64,
    bar_moves: u64,
    msix_writes: u64,
    virtio_writes: u64,
    rings: u64,
    kicks: u64,
    skipped: u64,
    /// Accesses to the i8042's ports 0x60..=0x64 (by first port).
    i8042: u64,
}

static STATE: Global<State> = Global::new(State {
    funcs: [None; MAX_FUNCS],
    nfuncs: 0,
    scratch: 0,
    ram_top: 0,
    pio: 0,
    mmio: 0,
    cfg_writes: 0,
    bar_moves: 0,
    msix_writes: 0,
    virtio_writes: 0,
    rings: 0,
    kicks: 0,
    skipped: 0,
    i8042: 0,
});

fn port_write(port: u16, width: u64, v: u32) {
    match width {
        1 => outb(port, v as u8),
        2 => {
            // SAFETY: port I/O has no memory effects visible to Rust.
            unsafe {
                asm!("out dx, ax", in("dx") port, in("ax") v as u16, options(nomem, nostack, preserves_flags))
            }
        }
        _ => outl(port, v),
    }
}

fn port_read(port: u16, width: u64) {
    match width {
        1 => {
            inb(port);
        }
        2 => {
            // SAFETY: as port_write.
            unsafe {
                asm!("in ax, dx", in("dx") port, out("ax") _, options(nomem, nostack, preserves_flags))
            }
        }
        _ => {
            inl(port);
        }
    }
}

/// One access of `width` bytes at `a` (an identity-mapped device address).
fn mmio(a: u64, width: u64, v: u64, write: bool) {
    // SAFETY: callers pass addresses inside a BAR they mapped with
    // `paging::ensure_mapped`, never RAM the kernel uses; a device access
    // has no effect on Rust-visible memory (ivshmem BAR2 is shared memory
    // the kernel does not otherwise read here).
    unsafe {
        match (width, write) {
            (1, true) => write_volatile(a as *mut u8, v as u8),
            (2, true) => write_volatile(a as *mut u16, v as u16),
            (4, true) => write_volatile(a as *mut u32, v as u32),
            (_, true) => write_volatile(a as *mut u64, v),
            (1, false) => {
                read_volatile(a as *const u8);
            }
            (2, false) => {
                read_volatile(a as *const u16);
            }
            (4, false) => {
                read_volatile(a as *const u32);
            }
            (_, false) => {
                read_volatile(a as *const u64);
            }
        }
    }
}

/// A config write of 1, 2 or 4 bytes through mechanism #1.
fn cfg_write(f: Bdf, off: u8, width: u64, v: u32) {
    let addr = 0x8000_0000
        | (u32::from(f.bus) << 16)
        | (u32::from(f.dev) << 11)
        | (u32::from(f.func) << 8)
        | u32::from(off & 0xFC);
    crate::pci::count(2);
    outl(0xCF8, addr);
    let (width, lane) = match width {
        1 => (1, u16::from(off & 3)),
        2 => (2, u16::from(off & 2)),
        _ => (4, 0),
    };
    port_write(0xCFC + lane, width, v);
}

/// Where BAR `i` of `f` is now (None: unassigned or an I/O BAR).
fn bar_addr(f: &Func, i: u8) -> Option<u64> {
    let b = f.bars.get(usize::from(i)).copied().flatten()?;
    if b.io {
        return None;
    }
    let lo = u64::from(f.bdf.read32(b.reg) & !0xF);
    let hi = if b.is64 {
        u64::from(f.bdf.read32(b.reg + 4))
    } else {
        0
    };
    let a = (hi << 32) | lo;
    // SAFETY: single CPU, CPL0 only; `ram_top` is set before any access.
    let top = unsafe { (*STATE.ptr()).ram_top };
    // Only a plausible MMIO address below 512 GiB, never over RAM (the
    // kernel's own memory would take the writes).
    (a >= top && a + b.size < (512 << 30) && paging::ensure_mapped(a, a + b.size).is_ok())
        .then_some(a)
}

/// Sizes the BARs of `f` (decoding off, all-ones, restore), finds MSI-X
/// and the virtio structures.
fn probe(bdf: Bdf, id: u32) -> Func {
    let mut f = Func {
        bdf,
        id,
        bars: [None; 6],
        msix: None,
        virtio: None,
        orig_bars: [0; 6],
        orig_cmd: 0,
    };
    let cmd = bdf.read16(COMMAND);
    // Memory decoding and bus mastering on, as a driver would.
    f.orig_cmd = cmd | 0x6;
    for (i, b) in f.orig_bars.iter_mut().enumerate() {
        *b = bdf.read32(0x10 + 4 * i as u8);
    }
    bdf.write16(COMMAND, cmd & !3);
    let mut i = 0u8;
    while i < 6 {
        let reg = 0x10 + 4 * i;
        let old = bdf.read32(reg);
        bdf.write32(reg, !0);
        let mask = bdf.read32(reg);
        bdf.write32(reg, old);
        let io = old & 1 != 0;
        let is64 = !io && (old >> 1) & 3 == 2;
        let mut size_mask = u64::from(mask & if io { !3 } else { !0xF });
        if is64 {
            let oldhi = bdf.read32(reg + 4);
            bdf.write32(reg + 4, !0);
            let maskhi = bdf.read32(reg + 4);
            bdf.write32(reg + 4, oldhi);
            size_mask |= u64::from(maskhi) << 32;
        } else {
            size_mask |= 0xFFFF_FFFF_0000_0000;
        }
        if mask != 0 {
            f.bars[usize::from(i)] = Some(Bar {
                reg,
                size: (!size_mask).wrapping_add(1),
                is64,
                io,
            });
        }
        i += if is64 { 2 } else { 1 };
    }
    bdf.write16(COMMAND, f.orig_cmd);
    if bdf.read16(0x06) & 0x10 == 0 {
        return f;
    }
    let mut cap = (bdf.read32(0x34) & 0xFC) as u8;
    let mut v = Virtio {
        common: (0xff, 0),
        notify: (0xff, 0),
        notify_mult: 0,
        isr: (0xff, 0),
        device: (0xff, 0, 0),
    };
    let mut guard = 0;
    while cap != 0 && guard < 48 {
        let head = bdf.read32(cap);
        match head as u8 {
            CAP_MSIX => {
                let t = bdf.read32(cap + 4);
                let p = bdf.read32(cap + 8);
                f.msix = Some(Msix {
                    cap,
                    table: ((t & 7) as u8, t & !7),
                    pba: ((p & 7) as u8, p & !7),
                    vectors: ((head >> 16) & 0x7FF) + 1,
                });
            }
            CAP_VENDOR if id & 0xFFFF == 0x1af4 => {
                let bar = bdf.read32(cap + 4) as u8;
                let off = bdf.read32(cap + 8);
                match (head >> 24) as u8 {
                    1 => v.common = (bar, off),
                    2 => {
                        v.notify = (bar, off);
                        v.notify_mult = bdf.read32(cap + 16);
                    }
                    3 => v.isr = (bar, off),
                    4 => v.device = (bar, off, bdf.read32(cap + 12)),
                    _ => {}
                }
            }
            _ => {}
        }
        cap = ((head >> 8) & 0xFC) as u8;
        guard += 1;
    }
    if v.common.0 != 0xff && v.notify.0 != 0xff {
        f.virtio = Some(v);
    }
    f
}

/// Puts a function's BARs and command register back.
fn heal(f: &Func) {
    for (i, &v) in f.orig_bars.iter().enumerate() {
        f.bdf.write32(0x10 + 4 * i as u8, v);
    }
    f.bdf.write16(COMMAND, f.orig_cmd);
}

fn scan(s: &mut State) {
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let bdf = Bdf { bus: 0, dev, func };
            let id = bdf.read32(0);
            if id & 0xFFFF == 0xFFFF {
                if func == 0 {
                    break;
                }
                continue;
            }
            if s.nfuncs < MAX_FUNCS && id != 0 {
                let f = probe(bdf, id);
                report(&f);
                s.funcs[s.nfuncs] = Some(f);
                s.nfuncs += 1;
            }
            if func == 0 && (bdf.read32(0x0C) >> 16) & 0x80 == 0 {
                break;
            }
        }
    }
}

fn report(f: &Func) {
    let nbars = f.bars.iter().flatten().count() as u64;
    say!(
        "shmvm: storm pci=",
        Digits(u64::from(f.bdf.bus), 2),
        ":",
        Digits(u64::from(f.bdf.dev), 2),
        ".",
        Digits(u64::from(f.bdf.func), 1),
        " id=",
        Digits(u64::from(f.id & 0xFFFF), 4),
        ":",
        Digits(u64::from(f.id >> 16), 4),
        " bars=",
        Dec(nbars),
        " msix=",
        Dec(f.msix.map_or(0, |m| u64::from(m.vectors))),
        if f.virtio.is_some() {
            " virtio=1"
        } else {
            " virtio=0"
        }
    );
}

/// A value for a BAR register: mostly a plausible place in the MMIO
/// windows or where it was, sometimes its sizing all-ones, zero or
/// anything at all.
fn bar_value(r: &mut Rng, f: &Func, b: &Bar, high: bool) -> u32 {
    let i = usize::from((b.reg - 0x10) / 4) + usize::from(high);
    if r.one_in(3) {
        return f.orig_bars[i];
    }
    if high {
        return match r.below(4) {
            0 => 0,
            1 => 1 + r.below(15) as u32,
            2 => !0,
            _ => r.next() as u32,
        };
    }
    let align = b.size.max(16);
    // SAFETY: single CPU, CPL0 only; STATE is the storm's own.
    let (scratch, top) = unsafe { ((*STATE.ptr()).scratch + SCRATCH, (*STATE.ptr()).ram_top) };
    match r.below(9) {
        0 => !0,
        1 => 0,
        2 => r.next() as u32,
        // A memory BAR (ivshmem BAR2) over guest RAM, above the kernel
        // and the scratch area: the VMM must not map it there.
        3 if f.id == IVSHMEM && b.reg == 0x18 && top > scratch + align => {
            let a = (scratch + align - 1) & !(align - 1);
            (a + r.below((top - a) / align) * align) as u32 | if b.is64 { 0xC } else { 0 }
        }
        _ => {
            let window = 0xFEC0_0000u64 - 0xC000_0000;
            let a = 0xC000_0000 + (r.below(window / align) * align);
            (a as u32) | if b.is64 { 0xC } else { 0 }
        }
    }
}

/// A random config write to a random function (or a BAR move).
fn config_op(r: &mut Rng, s: &mut State, f: &Func) {
    s.cfg_writes += 1;
    let b = f.bdf;
    match r.below(8) {
        0 | 1 => {
            let Some(bar) = f.bars[r.below(6) as usize] else {
                return;
            };
            let high = bar.is64 && r.one_in(3);
            let v = bar_value(r, f, &bar, high);
            b.write32(bar.reg + if high { 4 } else { 0 }, v);
            s.bar_moves += 1;
        }
        2 => {
            // Command register: I/O, memory, bus master, INTx disable, ...
            b.write16(COMMAND, r.next() as u16);
        }
        3 => {
            // Status register (write-1-to-clear) and friends.
            cfg_write(b, 0x04 + 2 * r.below(2) as u8, 2, r.next() as u32);
        }
        4 => {
            if let Some(Msix { cap, .. }) = f.msix {
                // Message control: enable and function mask, random mix.
                let v = (r.below(4) as u32) << 14;
                cfg_write(b, cap + 2, 2, v | (r.next() as u32 & 0x3FFF));
                s.msix_writes += 1;
            } else {
                cfg_write(b, 0x3C, 1, r.next() as u32);
            }
        }
        5 => {
            // Somewhere in the capabilities or the device-specific part.
            let off = 0x40 + r.below(0xC0) as u8;
            cfg_write(b, off, r.width(4), r.next() as u32);
        }
        _ => {
            let off = r.below(0x100) as u8;
            let off = off & !(r.width(4) as u8 - 1);
            if (0x10..0x28).contains(&off) {
                s.bar_moves += 1;
            }
            cfg_write(b, off, r.width(4), r.next() as u32);
        }
    }
}

/// Port I/O on the legacy ports, PCI mechanism #1 and random ports.
fn pio_op(r: &mut Rng, s: &mut State) {
    s.pio += 1;
    let port = match r.below(8) {
        0 | 1 => COM1 + r.below(8) as u16,
        2 => [0x60, I8042_CMD][r.below(2) as usize],
        3 | 4 => 0xCF8 + r.below(8) as u16,
        5 => [
            0x20, 0x21, 0x40, 0x43, 0x61, 0x70, 0x71, 0x80, 0xA0, 0xA1, 0x2F8, 0x3FB,
        ][r.below(12) as usize],
        _ => r.below(0x1_0000) as u16,
    };
    if DEBUG_EXIT.contains(&port)
        || port & !3 == ACPI_SLEEP
        || port == FAST_A20_RESET
        || port == RESET_CONTROL
    {
        s.skipped += 1;
        return;
    }
    let width = r.width(4);
    if (0xCF8..0xD00).contains(&port) {
        crate::pci::count(1);
    }
    // 0x61 (system control port B) is KVM's in-kernel PIT: never the VMM's.
    if (0x60..=0x64).contains(&port) && port != 0x61 {
        s.i8042 += 1;
    }
    if r.one_in(3) {
        port_read(port, width);
        return;
    }
    let mut v = r.next() as u32;
    if port == I8042_CMD && v as u8 == I8042_RESET as u8 {
        v ^= 1;
    }
    // The serial line is restored when the storm ends; its transmitted
    // bytes stay printable and on one line.
    if port == COM1 {
        v = u32::from(b'a' + (v % 26) as u8);
    }
    port_write(port, width, v);
}

/// MMIO anywhere in a memory BAR (register BARs exit to the VMM).
fn mmio_op(r: &mut Rng, s: &mut State, f: &Func) {
    let i = r.below(6) as u8;
    let Some(bar) = f.bars[usize::from(i)] else {
        return;
    };
    let Some(base) = bar_addr(f, i) else {
        s.skipped += 1;
        return;
    };
    let width = r.width(8);
    let off = r.below(bar.size.min(0x1_0000)) & !(width - 1);
    s.mmio += 1;
    mmio(base + off, width, r.next(), !r.one_in(3));
}

/// MSI-X table or PBA entries through their BAR.
fn msix_op(r: &mut Rng, s: &mut State, f: &Func) {
    let Some(Msix {
        table: (tbir, toff),
        pba: (pbir, poff),
        vectors,
        ..
    }) = f.msix
    else {
        return;
    };
    let pba = r.one_in(5);
    let (bir, off) = if pba { (pbir, poff) } else { (tbir, toff) };
    let Some(base) = bar_addr(f, bir) else {
        s.skipped += 1;
        return;
    };
    s.msix_writes += 1;
    s.mmio += 1;
    if pba {
        let a = base + u64::from(off) + 8 * r.below(u64::from(vectors).div_ceil(64));
        mmio(a, 8, r.next(), true);
        return;
    }
    let e = base + u64::from(off) + 16 * r.below(u64::from(vectors));
    match r.below(4) {
        // Address: the LAPIC window, some destination.
        0 => mmio(e, 4, 0xFEE0_0000 | (r.below(4) << 12), true),
        1 => mmio(e + 4, 4, r.below(2) * r.next(), true),
        // Data: fixed delivery, edge, a vector the IDT would take.
        2 => mmio(e + 8, 4, 0x20 + r.below(0xE0), true),
        // Vector control: mask or unmask.
        _ => mmio(e + 12, 4, r.below(2), true),
    }
}

/// Virtio common configuration fields (offsets of virtio 1.x 4.1.4.3).
const COMMON_FIELDS: [(u32, u64); 17] = [
    (0x00, 4), // device_feature_select
    (0x04, 4), // device_feature (read-only)
    (0x08, 4), // driver_feature_select
    (0x0c, 4), // driver_feature
    (0x10, 2), // config_msix_vector
    (0x12, 2), // num_queues (read-only)
    (0x14, 1), // device_status
    (0x15, 1), // config_generation (read-only)
    (0x16, 2), // queue_select
    (0x18, 2), // queue_size
    (0x1a, 2), // queue_msix_vector
    (0x1c, 2), // queue_enable
    (0x1e, 2), // queue_notify_off (read-only)
    (0x20, 8), // queue_desc
    (0x28, 8), // queue_driver
    (0x30, 8), // queue_device
    (0x38, 2), // queue_notify_data / reset (1.2)
];

fn virtio_field_op(r: &mut Rng, s: &mut State, f: &Func, v: &Virtio) {
    let Some(base) = bar_addr(f, v.common.0) else {
        s.skipped += 1;
        return;
    };
    let (off, width) = COMMON_FIELDS[r.below(COMMON_FIELDS.len() as u64) as usize];
    let val = match off {
        0x14 => [0, 1, 3, 0xb, 0xf, 0x40, 0x80, r.next()][r.below(8) as usize],
        0x16 => r.below(4),
        0x20 | 0x28 | 0x30 => ring_addr(r, s),
        _ => r.next(),
    };
    s.virtio_writes += 1;
    s.mmio += 1;
    let write = !r.one_in(4);
    if width == 8 && r.one_in(2) {
        mmio(base + u64::from(off), 4, val, write);
        mmio(base + u64::from(off) + 4, 4, val >> 32, write);
    } else {
        mmio(base + u64::from(off), width, val, write);
    }
    // Sometimes the ISR (read clears it) or the device configuration.
    if r.one_in(4) {
        if let Some(isr) = bar_addr(f, v.isr.0) {
            mmio(isr + u64::from(v.isr.1), 1, 0, false);
        }
    } else if r.one_in(4)
        && let Some(dev) = bar_addr(f, v.device.0)
    {
        let len = u64::from(v.device.2.clamp(1, 0x100));
        let w = r.width(4);
        let o = r.below(len) & !(w - 1);
        mmio(dev + u64::from(v.device.1) + o, w, r.next(), r.one_in(2));
    }
}

/// A guest-physical address for a ring or buffer: mostly in scratch RAM,
/// sometimes just past RAM, at the LAPIC, unaligned or anywhere.
fn ring_addr(r: &mut Rng, s: &State) -> u64 {
    match r.below(10) {
        0 => s.ram_top - r.below(4) * 8,
        1 => 0xFEE0_0000,
        2 => r.next(),
        3 => s.scratch + 1 + r.below(SCRATCH - 64),
        _ => s.scratch + (r.below(SCRATCH / 4096 - 1) << 12),
    }
}

/// Brings a queue up with a random (mostly bogus) ring in scratch RAM and
/// kicks it: random descriptors (addresses, lengths, flags, chains that
/// loop or run off the table, indirect tables), a random avail index.
fn virtio_ring_op(r: &mut Rng, s: &mut State, f: &Func, v: &Virtio) {
    let (Some(common), Some(nbase)) = (bar_addr(f, v.common.0), bar_addr(f, v.notify.0)) else {
        s.skipped += 1;
        return;
    };
    s.rings += 1;
    s.mmio += 1;
    let c = |off: u64, w: u64, val: u64| mmio(common + off, w, val, true);
    if r.one_in(2) {
        // Reset, then features: what the device offers (mostly), a random
        // subset of it, or bits it never offered.
        c(0x14, 1, 0);
        c(0x14, 1, 3);
        for sel in 0..2 {
            c(0x00, 4, sel);
            // SAFETY: `common` is the mapped common configuration.
            let offered = u64::from(unsafe { read_volatile((common + 4) as *const u32) });
            c(0x08, 4, sel);
            let want = match r.below(4) {
                0 => offered & r.next(),
                1 => r.next(),
                _ => offered,
            };
            c(0x0c, 4, want);
        }
        c(0x14, 1, 0xb);
    }
    let q = r.below(4);
    c(0x16, 2, q);
    // SAFETY: as above.
    let max = u64::from(unsafe { read_volatile((common + 0x18) as *const u16) });
    let size = match r.below(4) {
        0 => r.next() & 0xFFFF,
        _ if max == 0 => 0,
        _ => 1 << r.below(64 - u64::from(max.leading_zeros())),
    };
    c(0x18, 2, size);
    // Desc table, avail and used rings: 4 KiB pages of scratch.
    let page = |r: &mut Rng| s.scratch + (r.below(SCRATCH / 4096 - 2) << 12);
    let (desc, avail, used) = (page(r), page(r), page(r));
    let n = size.clamp(1, 256);
    for i in 0..n.min(16 + r.below(16)) {
        let d = desc + 16 * (i % 256);
        let addr = if r.one_in(3) {
            ring_addr(r, s)
        } else {
            s.scratch + r.below(SCRATCH - 512)
        };
        // VIRTQ_DESC_F_NEXT 1, WRITE 2, INDIRECT 4.
        let flags = r.below(8);
        let len = match r.below(4) {
            0 => r.next() & 0xFFFF_FFFF,
            _ => r.below(512),
        };
        // SAFETY: `d` is in the scratch area of free RAM (identity-mapped).
        unsafe {
            write_volatile(d as *mut u64, addr);
            write_volatile((d + 8) as *mut u32, len as u32);
            write_volatile((d + 12) as *mut u16, flags as u16);
            write_volatile((d + 14) as *mut u16, r.below(n + 2) as u16);
        }
    }
    // A request header at the start of some buffers: a real request type
    // and a small sector now and then, so the device does real work.
    let hdr = s.scratch + r.below(SCRATCH / 512 - 1) * 512;
    // SAFETY: scratch RAM, as above.
    unsafe {
        write_volatile(hdr as *mut u32, [0, 1, 4, 8, 11, 13][r.below(6) as usize]);
        write_volatile((hdr + 8) as *mut u64, r.below(64));
        let a = avail as *mut u16;
        write_volatile(a, r.below(2) as u16);
        write_volatile(a.add(1), r.below(n * 2 + 2) as u16);
        for k in 0..n.min(8) as usize {
            write_volatile(a.add(2 + k), r.below(n + 1) as u16);
        }
    }
    if r.one_in(3) {
        well_formed(r, s, desc, avail, f.id >> 16);
    }
    let ring = |r: &mut Rng, base: u64| if r.one_in(6) { ring_addr(r, s) } else { base };
    let (d, a, u) = (ring(r, desc), ring(r, avail), ring(r, used));
    c(0x20, 8, d);
    c(0x28, 8, a);
    c(0x30, 8, u);
    c(0x1a, 2, r.below(4));
    c(0x1c, 2, 1);
    if r.one_in(8) {
        c(0x1c, 2, 0);
    }
    c(0x14, 1, if r.one_in(6) { r.next() } else { 0xf });
    // SAFETY: as above.
    let notify_off = u64::from(unsafe { read_volatile((common + 0x1e) as *const u16) });
    // A queue that does not exist may report any notify offset: keep the
    // kick inside the BAR (past it nothing is mapped).
    let nsize = f.bars[usize::from(v.notify.0 % 6)].map_or(0, |b| b.size);
    let mut at = u64::from(v.notify.1) + notify_off * u64::from(v.notify_mult);
    if at + 4 > nsize {
        at = u64::from(v.notify.1);
    }
    let kick = nbase + at;
    let kq = if r.one_in(8) { r.next() & 0xFFFF } else { q };
    mmio(kick, if r.one_in(4) { 4 } else { 2 }, kq, true);
    s.kicks += 1;
}

/// One well-formed chain at the head of the ring (header, data, status: a
/// virtio-blk request of a real type at a sector near or past the end of
/// a small disk; the other devices take it as buffers), so the devices do
/// real work between the bogus rings.
fn well_formed(r: &mut Rng, s: &State, desc: u64, avail: u64, device: u32) {
    // Three 4 KiB-aligned buffers in the first half of scratch.
    let buf = |r: &mut Rng| s.scratch + (r.below(SCRATCH / 8192) << 12);
    let (hdr, data, status) = (buf(r), buf(r), buf(r));
    let kind = [0u32, 1, 4, 8, 11, 13][r.below(6) as usize];
    // virtio-blk IN and GET_ID write the data buffer; virtio-rng writes
    // everything; the rest is read by the device.
    let data_write = kind == 0 || kind == 8 || device == 0x1044;
    let d = |i: u64, addr: u64, len: u64, flags: u64| {
        let e = desc + 16 * i;
        // SAFETY: the descriptor table is in scratch RAM (identity-mapped).
        unsafe {
            write_volatile(e as *mut u64, addr);
            write_volatile((e + 8) as *mut u32, len as u32);
            write_volatile((e + 12) as *mut u16, flags as u16);
            write_volatile((e + 14) as *mut u16, (i + 1) as u16);
        }
    };
    let first = if device == 0x1044 { 2 } else { 0 };
    d(0, hdr, 16, 1 | first);
    d(
        1,
        data,
        512 * (1 + r.below(8)),
        1 | if data_write { 2 } else { 0 },
    );
    d(2, status, 1, 2);
    // SAFETY: scratch RAM, as above.
    unsafe {
        write_volatile(hdr as *mut u32, kind);
        write_volatile((hdr + 4) as *mut u32, 0);
        // A 1 MiB disk has 2048 sectors: some requests run past its end.
        write_volatile((hdr + 8) as *mut u64, r.below(2048 + 16));
        // DISCARD / WRITE_ZEROES take segments {sector, num_sectors, flags}.
        write_volatile(data as *mut u64, r.below(2048 + 16));
        write_volatile((data + 8) as *mut u32, r.below(64) as u32);
        write_volatile((data + 12) as *mut u32, r.below(2) as u32);
        let a = avail as *mut u16;
        write_volatile(a, 0);
        write_volatile(a.add(1), 1);
        write_volatile(a.add(2), 0);
    }
}

/// ivshmem BAR0: interrupt mask and status, IVPosition (read-only) and
/// the doorbell (peer << 16 | vector), to itself, to others, to nobody.
fn ivshmem_op(r: &mut Rng, s: &mut State, f: &Func) {
    let Some(bar0) = bar_addr(f, 0) else {
        s.skipped += 1;
        return;
    };
    s.mmio += 1;
    let reg = r.below(5) * 4;
    let val = if reg == 12 {
        ((r.below(4) | if r.one_in(4) { 0xFFFC } else { 0 }) << 16) | r.below(4)
    } else {
        r.next()
    };
    mmio(bar0 + reg, 4, val, !r.one_in(4));
}

/// Puts the UART back the way the console expects it (8N1, no loopback,
/// no interrupts, FIFOs on) after the storm played with it.
fn restore_console() {
    outb(COM1 + 3, 0x03);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 4, 0x03);
    console::init();
    // Whatever the storm sent ends its line here.
    say!("");
}

/// A page-aligned piece of free RAM of [`SCRATCH`] bytes at or above
/// 2 MiB (so no ring ever sits at address 0 or in the legacy area).
fn scratch_ram() -> Option<u64> {
    // SAFETY: single CPU, CPL0 only; FREE was computed at boot.
    let free = unsafe { &*crate::jobs::FREE.ptr() };
    free.as_slice().iter().find_map(|&(s, t)| {
        let s = ((s + 0xFFF) & !0xFFF).max(2 << 20);
        (t > s && t - s >= SCRATCH).then_some(s)
    })
}

fn pick<'a>(r: &mut Rng, s: &'a State) -> Option<&'a Func> {
    if s.nfuncs == 0 {
        return None;
    }
    s.funcs[r.below(s.nfuncs as u64) as usize].as_ref()
}

pub fn run() -> Result<(), &'static str> {
    // SAFETY: single CPU, CPL0 only; PARAMS is no longer written.
    let p = unsafe { &*PARAMS.ptr() };
    // SAFETY: single CPU, CPL0 only; no job touches STATE.
    let s = unsafe { &mut *STATE.ptr() };
    let Some(scratch) = scratch_ram() else {
        return Err("storm_no_scratch_ram");
    };
    if scratch + SCRATCH > 0x1_0000_0000 {
        return Err("storm_scratch_above_4g");
    }
    s.scratch = scratch;
    // SAFETY: as above; FREE was computed at boot.
    s.ram_top = unsafe { (*crate::jobs::FREE.ptr()).top };
    say!(
        "shmvm: storm start seed=",
        Hex(p.seed),
        " ops=",
        Dec(p.storm_ops),
        " scratch=",
        Hex(scratch)
    );
    scan(s);
    let mut r = Rng::new(p.seed);
    for op in 0..p.storm_ops {
        let f = pick(&mut r, s).copied();
        if op % 32 == 31
            && let Some(f) = &f
        {
            heal(f);
        }
        match (r.below(16), f) {
            (0..=2, _) | (_, None) => pio_op(&mut r, s),
            (3..=4, Some(f)) => config_op(&mut r, s, &f),
            (5..=6, Some(f)) => mmio_op(&mut r, s, &f),
            (7..=8, Some(f)) => msix_op(&mut r, s, &f),
            (9..=11, Some(f)) => match f.virtio {
                Some(v) => virtio_field_op(&mut r, s, &f, &v),
                None if f.id == IVSHMEM => ivshmem_op(&mut r, s, &f),
                None => mmio_op(&mut r, s, &f),
            },
            (_, Some(f)) => match f.virtio {
                Some(v) => virtio_ring_op(&mut r, s, &f, &v),
                None if f.id == IVSHMEM => ivshmem_op(&mut r, s, &f),
                None => config_op(&mut r, s, &f),
            },
        }
    }
    for f in s.funcs.iter().flatten() {
        heal(f);
    }
    restore_console();
    say!(
        "shmvm: storm done seed=",
        Hex(p.seed),
        " ops=",
        Dec(p.storm_ops),
        " funcs=",
        Dec(s.nfuncs as u64),
        " pio=",
        Dec(s.pio),
        " mmio=",
        Dec(s.mmio),
        " cfg=",
        Dec(s.cfg_writes),
        " bar_moves=",
        Dec(s.bar_moves),
        " msix=",
        Dec(s.msix_writes),
        " virtio=",
        Dec(s.virtio_writes),
        " rings=",
        Dec(s.rings),
        " kicks=",
        Dec(s.kicks),
        " skipped=",
        Dec(s.skipped)
    );
    // SAFETY: single CPU, CPL0 only.
    let cfg_ports = unsafe { *crate::pci::PORT_ACCESSES.ptr() };
    say!(
        "shmvm: storm ports pci_config=",
        Dec(cfg_ports),
        " i8042=",
        Dec(s.i8042)
    );
    Ok(())
}
