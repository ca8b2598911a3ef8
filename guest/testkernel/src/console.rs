//! Polled 16550 console on COM1 and a tiny line formatter (no core::fmt:
//! CPL0 must stay free of SSE and keep its instruction count low).
//!
//! On PVM every CPL0 instruction is emulated (~1 us), so lines are rendered
//! in ring 3 and CPL0 only writes the finished bytes out. Rendering always
//! appends to one pending buffer, which CPL0 writes out:
//! - inside a ring-3 job (which cannot do port I/O), `say!` renders the
//!   line; `cpu::user` writes it out when the job returns, so output stays
//!   in order;
//! - at CPL0, a line made only of strings is written straight out; any
//!   other line is rendered by one ring-3 job (`render_job`);
//! - before `cpu::init` has set up the ring-3 return path, and in the
//!   exception and panic handlers (no job may run there: `cpu::user` is not
//!   re-entrant, and its return would land on the interrupt stack the handler
//!   runs on), CPL0 renders the line itself and writes it out, after any
//!   output a faulting job left pending.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::Global;
use crate::cpu::{self, inb, outb, outsb};
use crate::line::render_into;
pub use crate::line::{Dec, Digits, Hex, Hex16, Piece};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const FCR: u16 = COM1 + 2;
const LSR_THRE: u8 = 0x20;
/// A 16550's transmit FIFO: after THRE reads set, 16 bytes may be written.
const FIFO_DEPTH: u32 = 16;

/// Bytes that may still be written before polling LSR again.
static ROOM: AtomicU32 = AtomicU32::new(0);

/// Whether CPL0 may run a ring-3 job to render a line (see the module doc).
static RENDER_IN_RING3: AtomicBool = AtomicBool::new(false);

/// Room for the longest boot report, rendered by one job: a 4 KiB command
/// line, 128 e820 lines of at most 76 bytes and ~500 bytes more (14.3 KiB).
const PENDING_MAX: usize = 16 * 1024;

/// Rendered bytes not yet written out. The buffer lives in the kernel's
/// not-loaded `.stack` section (it is never read before it is written), so
/// the image stays small.
#[unsafe(link_section = ".stack.console")]
static PENDING: Global<[u8; PENDING_MAX]> = Global::new([0; PENDING_MAX]);
static PENDING_LEN: Global<usize> = Global::new(0);

/// Enables the FIFOs (and clears them). Baud rate and line control are left
/// as the platform set them: they have no meaning for a virtual UART.
pub fn init() {
    outb(FCR, 0x07);
    // The transmit FIFO was just cleared: the first line needs no LSR poll.
    ROOM.store(FIFO_DEPTH, Ordering::Relaxed);
}

/// From now on CPL0 renders lines in ring-3 jobs (`cpu::init`, once the
/// ring-3 return path works).
pub fn render_in_ring3() {
    RENDER_IN_RING3.store(true, Ordering::Relaxed);
}

/// From now on CPL0 renders lines itself (exception and panic handlers).
pub fn render_at_cpl0() {
    RENDER_IN_RING3.store(false, Ordering::Relaxed);
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

/// Each run of bytes the transmit FIFO has room for goes out with one
/// `rep outsb` (never more than the FIFO holds, so it stays right on a real
/// 16550 and in QEMU, which take it byte by byte): one emulated instruction
/// instead of a loop per byte. (The first run is empty when the FIFO was
/// full already.)
#[inline(never)]
fn put_bytes(b: &[u8]) {
    let mut room = ROOM.load(Ordering::Relaxed) as usize;
    let mut rest = b;
    loop {
        let (now, later) = rest.split_at(rest.len().min(room));
        outsb(COM1, now);
        room -= now.len();
        rest = later;
        if rest.is_empty() {
            break;
        }
        wait_thre();
        room = FIFO_DEPTH as usize;
    }
    ROOM.store(room as u32, Ordering::Relaxed);
}

/// Called after a write that ends a line: waits for the transmitter to
/// empty, as Linux's serial console does after each message. The LSR read
/// also makes a VMM that batches transmitted bytes show the line now rather
/// than when the next one starts.
fn end_of_line() {
    wait_thre();
    ROOM.store(FIFO_DEPTH, Ordering::Relaxed);
}

/// Writes out the pending (rendered) lines. CPL0 only.
#[inline(never)]
pub fn flush() {
    // SAFETY: one CPU; at CPL0 no job runs, so nothing else uses the buffer.
    unsafe {
        let len = *PENDING_LEN.ptr();
        if len == 0 {
            return;
        }
        put_bytes(&(&*PENDING.ptr())[..len]);
        *PENDING_LEN.ptr() = 0;
    }
    end_of_line();
}

/// Renders one line (pieces and a newline) into the pending buffer.
#[inline(never)]
fn render(pieces: &[Piece]) {
    // SAFETY: one CPU, and CPL0 and ring 3 never run at once: this is the
    // only reference to the buffer and its length while it lives.
    let (buf, len) = unsafe { (&mut *PENDING.ptr(), &mut *PENDING_LEN.ptr()) };
    render_into(buf, len, pieces);
}

/// Ring-3 job: renders the `n` pieces at `pieces` (see `say`).
extern "C" fn render_job(pieces: u64, n: u64, _: u64) -> u64 {
    // SAFETY: `say` passes its own array, alive until the job returns.
    render(unsafe { core::slice::from_raw_parts(pieces as *const Piece, n as usize) });
    0
}

/// Writes a line of strings straight out (CPL0).
#[inline(never)]
fn put_strs(pieces: &[Piece]) {
    for p in pieces.iter() {
        if let Piece::Str(s) = *p {
            put_bytes(s);
        }
    }
    put_bytes(b"\n");
    end_of_line();
}

/// Prints one line; see the module doc for where it is rendered.
#[inline(always)]
pub fn say(pieces: &[Piece]) {
    if cpu::cpl() != 0 {
        render(pieces);
    } else if pieces.iter().all(|p| matches!(p, Piece::Str(_))) {
        put_strs(pieces);
    } else if RENDER_IN_RING3.load(Ordering::Relaxed) {
        cpu::user(render_job, pieces.as_ptr() as u64, pieces.len() as u64, 0);
    } else {
        render(pieces);
        flush();
    }
}

/// Prints its arguments (strings, `Hex`, `Hex16`, `Digits`, `Dec`) and a
/// newline.
#[macro_export]
macro_rules! say {
    ($($x:expr),* $(,)?) => {
        $crate::console::say(&[$($crate::console::Piece::from($x)),*])
    };
}
