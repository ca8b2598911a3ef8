//! Polled 16550 console on COM1 and a tiny formatter (no core::fmt: CPL0
//! must stay free of SSE and keep its instruction count low).

use core::sync::atomic::{AtomicU32, Ordering};

use crate::cpu::{inb, outb, outsb};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const FCR: u16 = COM1 + 2;
const LSR_THRE: u8 = 0x20;
/// A 16550's transmit FIFO: after THRE reads set, 16 bytes may be written.
const FIFO_DEPTH: u32 = 16;

/// Bytes that may still be written before polling LSR again.
static ROOM: AtomicU32 = AtomicU32::new(0);

/// Enables the FIFOs (and clears them). Baud rate and line control are left
/// as the platform set them: they have no meaning for a virtual UART.
pub fn init() {
    outb(FCR, 0x07);
}

/// Waits until the transmitter is empty (bounded: a missing UART reads
/// 0xff, THRE set, anyway).
#[inline(always)]
fn wait_thre() {
    let mut spins = 0u32;
    while inb(LSR) & LSR_THRE == 0 && spins < 100_000 {
        spins += 1;
    }
}

#[inline(never)]
pub fn putc(c: u8) {
    let mut room = ROOM.load(Ordering::Relaxed);
    if room == 0 {
        wait_thre();
        room = FIFO_DEPTH;
    }
    outb(COM1, c);
    ROOM.store(room - 1, Ordering::Relaxed);
}

/// Same as `putc` per byte, but each run of bytes the transmit FIFO has
/// room for goes out with one `rep outsb` (never more than the FIFO holds,
/// so it stays right on a real 16550 and in QEMU, which take it byte by
/// byte): one emulated instruction instead of a loop per byte.
#[inline(never)]
pub fn put_bytes(b: &[u8]) {
    let mut room = ROOM.load(Ordering::Relaxed);
    let mut rest = b;
    while !rest.is_empty() {
        if room == 0 {
            wait_thre();
            room = FIFO_DEPTH;
        }
        let n = rest.len().min(room as usize);
        let (now, later) = rest.split_at(n);
        outsb(COM1, now);
        rest = later;
        room -= n as u32;
    }
    ROOM.store(room, Ordering::Relaxed);
}

/// Something printable by `say!`.
pub trait Emit {
    fn emit(&self);
}

impl Emit for &str {
    fn emit(&self) {
        put_bytes(self.as_bytes());
    }
}

impl Emit for &[u8] {
    fn emit(&self) {
        put_bytes(self);
    }
}

/// `0x` followed by the minimal number of hex digits.
#[derive(Clone, Copy)]
pub struct Hex(pub u64);
/// Exactly 16 hex digits after `0x`.
#[derive(Clone, Copy)]
pub struct Hex16(pub u64);
/// Exactly N hex digits, no prefix (PCI IDs, bus/device numbers).
#[derive(Clone, Copy)]
pub struct Digits(pub u64, pub u32);
#[derive(Clone, Copy)]
pub struct Dec(pub u64);

impl Emit for Hex {
    fn emit(&self) {
        putc(b'0');
        putc(b'x');
        put_hex(self.0, 0);
    }
}
impl Emit for Hex16 {
    fn emit(&self) {
        putc(b'0');
        putc(b'x');
        put_hex(self.0, 16);
    }
}
impl Emit for Digits {
    fn emit(&self) {
        put_hex(self.0, self.1);
    }
}
impl Emit for Dec {
    fn emit(&self) {
        put_dec(self.0);
    }
}

/// Hex digits of `v`: exactly `width` of them, or as few as needed if 0.
#[inline(never)]
fn put_hex(v: u64, width: u32) {
    let mut shift: i32 = if width == 0 { 60 } else { 4 * width as i32 - 4 };
    let mut started = width != 0;
    while shift >= 0 {
        let d = ((v >> shift) & 0xF) as u8;
        if d != 0 || started || shift == 0 {
            started = true;
            putc(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
        shift -= 4;
    }
}

#[inline(never)]
fn put_dec(mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        putc(digits[n]);
    }
}

/// Prints its arguments (anything implementing `Emit`) and a newline.
#[macro_export]
macro_rules! say {
    ($($x:expr),* $(,)?) => {{
        $( $crate::console::Emit::emit(&$x); )*
        $crate::console::putc(b'\n');
    }};
}
