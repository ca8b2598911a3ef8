//! Parsing of the numbers and data the command line takes.

use thiserror::Error;

/// A value on the command line that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("'{0}' is not a number (decimal, 0x hex, optional K/M/G suffix)")]
    Number(String),
    #[error("'{0}' overflows 64 bits")]
    Overflow(String),
    #[error("hex data '{0}': {1}")]
    Hex(String, &'static str),
    #[error("data is empty")]
    EmptyData,
}

/// Parses a size or offset: decimal or `0x` hex, with an optional binary
/// suffix `K`, `M`, `G` (or `KiB`, `MiB`, `GiB`), e.g. `4096`, `0x1000`, `64M`.
pub fn number(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let bad = || ParseError::Number(s.to_string());
    let overflow = || ParseError::Overflow(s.to_string());
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        return u64::from_str_radix(hex, 16).map_err(|_| overflow());
    }
    let body = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match body.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&body[..body.len() - 1], 10),
        Some(b'M') => (&body[..body.len() - 1], 20),
        Some(b'G') => (&body[..body.len() - 1], 30),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v = digits.parse::<u64>().map_err(|_| overflow())?;
    v.checked_mul(1u64 << shift).ok_or_else(overflow)
}

/// Parses the DATA of `write`: `hex:0011aabb` for raw bytes, otherwise the
/// UTF-8 bytes of the text itself.
pub fn data(s: &str) -> Result<Vec<u8>, ParseError> {
    let bytes = if let Some(hex) = s.strip_prefix("hex:") {
        let hex: String = hex
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .collect();
        if !hex.len().is_multiple_of(2) {
            return Err(ParseError::Hex(s.to_string(), "odd number of digits"));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&hex[i..i + 2], 16)
                    .map_err(|_| ParseError::Hex(s.to_string(), "not a hex digit"))
            })
            .collect::<Result<Vec<u8>, _>>()?
    } else {
        s.as_bytes().to_vec()
    };
    if bytes.is_empty() {
        return Err(ParseError::EmptyData);
    }
    Ok(bytes)
}

/// Renders bytes as `hex:..` (the form `data` parses back).
pub fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("hex:{digits}")
}

/// Renders bytes as a classic hex dump (16 bytes a line, offsets absolute).
pub fn hexdump(base: u64, bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "{:08x}  {:<47}  |{}|\n",
            base + 16 * i as u64,
            hex.join(" "),
            text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("0"), Ok(0));
        assert_eq!(number("4096"), Ok(4096));
        assert_eq!(number("0x1000"), Ok(4096));
        assert_eq!(number("0XfF"), Ok(255));
        assert_eq!(number("4K"), Ok(4096));
        assert_eq!(number("64M"), Ok(64 << 20));
        assert_eq!(number("64MiB"), Ok(64 << 20));
        assert_eq!(number("2g"), Ok(2 << 30));
        assert_eq!(number("1GB"), Ok(1 << 30));
    }

    #[test]
    fn bad_numbers() {
        assert_eq!(number(""), Err(ParseError::Number(String::new())));
        assert_eq!(number("x"), Err(ParseError::Number("x".into())));
        assert_eq!(number("-1"), Err(ParseError::Number("-1".into())));
        assert_eq!(number("0xg"), Err(ParseError::Number("0xg".into())));
        assert_eq!(number("1T"), Err(ParseError::Number("1T".into())));
        assert_eq!(number("K"), Err(ParseError::Number("K".into())));
        assert_eq!(
            number("99999999999999999999"),
            Err(ParseError::Overflow("99999999999999999999".into()))
        );
        assert_eq!(
            number("17179869184G"),
            Err(ParseError::Overflow("17179869184G".into()))
        );
    }

    #[test]
    fn data_text_and_hex() {
        assert_eq!(data("hi"), Ok(b"hi".to_vec()));
        assert_eq!(data("hex:00ff10"), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(data("hex:de ad_be ef"), Ok(vec![0xde, 0xad, 0xbe, 0xef]));
        assert!(matches!(
            data("hex:abc"),
            Err(ParseError::Hex(_, "odd number of digits"))
        ));
        assert!(matches!(
            data("hex:zz"),
            Err(ParseError::Hex(_, "not a hex digit"))
        ));
        assert_eq!(data(""), Err(ParseError::EmptyData));
        assert_eq!(data("hex:"), Err(ParseError::EmptyData));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "hex:00ab10");
        assert_eq!(data(&hex(b"HOSTRDY!")), Ok(b"HOSTRDY!".to_vec()));
    }

    #[test]
    fn hexdump_layout() {
        let d = hexdump(0x10, b"ABC\x00");
        assert_eq!(d, format!("00000010  {:<47}  |ABC.|\n", "41 42 43 00"));
        assert_eq!(hexdump(0, &[0u8; 17]).lines().count(), 2);
    }
}
