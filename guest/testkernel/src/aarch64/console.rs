//! Polled 16550 (`ns16550a`, byte registers) on MMIO at the machine's
//! UART address, and `say!`. Each line is rendered by the shared formatter
//! (`line.rs`) into a buffer on the stack and written out in runs of at
//! most 16 bytes (the transmit FIFO), with an LSR poll for THRE before
//! each run and after the line (as on x86_64). Only the boot CPU prints.

use core::ptr::{read_volatile, write_volatile};

use crate::line::render_into;
pub use crate::line::{Dec, Digits, Hex, Hex16, Piece};

/// shmvm's and QEMU `virt`-like UART address (the device tree's
/// `stdout-path` names the same node; `aarch64::boot_info` checks it).
pub const UART: u64 = 0x0900_0000;
const THR: u64 = 0;
const FCR: u64 = 2;
const LSR: u64 = 5;
const LSR_THRE: u8 = 0x20;
const FIFO_DEPTH: usize = 16;
/// The longest line: a 2 KiB command line and its prefix.
const LINE_MAX: usize = 2304;

fn read(off: u64) -> u8 {
    // SAFETY: the UART's registers are MMIO at UART (MMU off: device memory).
    unsafe { read_volatile((UART + off) as *const u8) }
}

fn write(off: u64, v: u8) {
    // SAFETY: as `read`.
    unsafe { write_volatile((UART + off) as *mut u8, v) }
}

/// Enables and clears the FIFOs.
pub fn init() {
    write(FCR, 0x07);
}

/// Waits until the transmitter is empty (bounded: a missing UART reads
/// all-ones, THRE set, anyway).
fn wait_thre() {
    let mut spins = 0u32;
    while read(LSR) & LSR_THRE == 0 && spins < 100_000 {
        spins += 1;
    }
}

fn put_bytes(b: &[u8]) {
    for run in b.chunks(FIFO_DEPTH) {
        wait_thre();
        for &c in run {
            write(THR, c);
        }
    }
    wait_thre();
}

/// Prints one line (boot CPU only).
#[inline(never)]
pub fn say(pieces: &[Piece]) {
    let mut buf = [0u8; LINE_MAX];
    let mut len = 0;
    render_into(&mut buf, &mut len, pieces);
    put_bytes(&buf[..len]);
}

/// Prints its arguments (strings, `Hex`, `Hex16`, `Digits`, `Dec`) and a
/// newline.
#[macro_export]
macro_rules! say {
    ($($x:expr),* $(,)?) => {
        $crate::console::say(&[$($crate::console::Piece::from($x)),*])
    };
}
