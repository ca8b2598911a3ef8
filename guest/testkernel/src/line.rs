//! The console's line formatter, shared by both architectures: `say!`'s
//! pieces rendered into a byte buffer without core::fmt (x86_64's CPL0
//! must stay free of SSE and keep its instruction count low).

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

/// One argument of `say!`, captured for rendering.
#[derive(Clone, Copy)]
pub enum Piece<'a> {
    Str(&'a [u8]),
    Hex(Hex),
    Hex16(Hex16),
    Digits(Digits),
    Dec(Dec),
}

impl<'a> From<&'a str> for Piece<'a> {
    fn from(s: &'a str) -> Self {
        Piece::Str(s.as_bytes())
    }
}
impl<'a> From<&'a [u8]> for Piece<'a> {
    fn from(s: &'a [u8]) -> Self {
        Piece::Str(s)
    }
}
impl From<Hex> for Piece<'_> {
    fn from(v: Hex) -> Self {
        Piece::Hex(v)
    }
}
impl From<Hex16> for Piece<'_> {
    fn from(v: Hex16) -> Self {
        Piece::Hex16(v)
    }
}
impl From<Digits> for Piece<'_> {
    fn from(v: Digits) -> Self {
        Piece::Digits(v)
    }
}
impl From<Dec> for Piece<'_> {
    fn from(v: Dec) -> Self {
        Piece::Dec(v)
    }
}

/// Appends to a buffer; drops what does not fit.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn push(&mut self, c: u8) {
        if let Some(b) = self.buf.get_mut(self.len) {
            *b = c;
            self.len += 1;
        }
    }

    fn hex(&mut self, v: u64, width: u32) {
        let mut shift: i32 = if width == 0 { 60 } else { 4 * width as i32 - 4 };
        let mut started = width != 0;
        while shift >= 0 {
            let d = ((v >> shift) & 0xF) as u8;
            if d != 0 || started || shift == 0 {
                started = true;
                self.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
            }
            shift -= 4;
        }
    }

    fn dec(&mut self, v: u64) {
        // Largest power of ten not above v (at most 10^19).
        let mut p = 1u64;
        while v / p >= 10 {
            p *= 10;
        }
        while p > 0 {
            self.push(b'0' + (v / p % 10) as u8);
            p /= 10;
        }
    }
}

/// Appends one line (pieces and a newline) to `buf` at `*len`, dropping
/// what does not fit.
pub fn render_into(buf: &mut [u8], len: &mut usize, pieces: &[Piece]) {
    let mut w = Writer { buf, len: *len };
    for p in pieces {
        match *p {
            Piece::Str(s) => s.iter().for_each(|&c| w.push(c)),
            Piece::Hex(Hex(v)) => {
                w.push(b'0');
                w.push(b'x');
                w.hex(v, 0);
            }
            Piece::Hex16(Hex16(v)) => {
                w.push(b'0');
                w.push(b'x');
                w.hex(v, 16);
            }
            Piece::Digits(Digits(v, width)) => w.hex(v, width),
            Piece::Dec(Dec(v)) => w.dec(v),
        }
    }
    w.push(b'\n');
    *len = w.len;
}
