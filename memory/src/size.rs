//! QEMU's size syntax, as `qemu_strtosz` reads it.
//!
//! A decimal number (or `0x` hex) with an optional one-letter suffix `B K M G T P E`
//! (case-insensitive, powers of 1024). A fraction such as `1.5G` needs a suffix or a
//! default unit bigger than one byte. Hex takes no fraction and no suffix. Exponents,
//! signs and trailing text are rejected.

use thiserror::Error;

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Not a size at all.
    #[error(
        "'{0}' is not a size (expected a number with an optional B/K/M/G/T/P/E suffix, e.g. 512M or 1.5G)"
    )]
    Invalid(String),
    /// A size, but it does not fit in 64 bits.
    #[error("'{0}' is too large (the limit is 16 EiB - 1 byte)")]
    TooLarge(String),
}

fn suffix_multiplier(c: u8) -> Option<u64> {
    let exp = match c.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 1,
        b'M' => 2,
        b'G' => 3,
        b'T' => 4,
        b'P' => 5,
        b'E' => 6,
        _ => return None,
    };
    Some(1u64 << (10 * exp))
}

/// Parses a size the way QEMU's `qemu_strtosz` does.
///
/// `default_unit` multiplies a number that has no suffix: 1 for `size=`, `1 << 20` for
/// `-m` (QEMU's `qemu_strtosz_MiB`).
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(s.to_string());
    let too_large = || SizeError::TooLarge(s.to_string());

    // Like strtoull: leading white space is skipped, a sign is not a size.
    let t = s.trim_start().as_bytes();
    if t.first() == Some(&b'-') || t.first() == Some(&b'+') {
        return Err(invalid());
    }
    let int_len = t.iter().take_while(|c| c.is_ascii_digit()).count();
    let int_digits = &t[..int_len];
    let mut rest = &t[int_len..];

    let value: u64;
    // The fraction as a 0.64 fixed-point number.
    let mut fraction: u64 = 0;

    if int_digits == b"0" && matches!(rest.first(), Some(b'x' | b'X')) {
        let hex_len = rest[1..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if hex_len == 0 {
            return Err(invalid());
        }
        let hex = std::str::from_utf8(&rest[1..=hex_len]).map_err(|_| invalid())?;
        value = u64::from_str_radix(hex, 16).map_err(|_| too_large())?;
        rest = &rest[1 + hex_len..];
        // Hex takes neither a fraction nor a suffix.
        if rest.first() == Some(&b'.')
            || rest.first().copied().and_then(suffix_multiplier).is_some()
        {
            return Err(invalid());
        }
    } else {
        value = if int_digits.is_empty() {
            0
        } else {
            let digits = std::str::from_utf8(int_digits).map_err(|_| invalid())?;
            digits.parse::<u64>().map_err(|_| too_large())?
        };
        if rest.first() == Some(&b'.') {
            let frac_len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if frac_len == 0 && int_digits.is_empty() {
                return Err(invalid());
            }
            let frac_digits = std::str::from_utf8(&rest[1..=frac_len]).map_err(|_| invalid())?;
            rest = &rest[1 + frac_len..];
            // An exponent ("1.5e3") is not a size.
            if matches!(rest.first(), Some(b'e' | b'E'))
                && matches!(rest.get(1), Some(b'0'..=b'9' | b'+' | b'-'))
            {
                return Err(invalid());
            }
            if frac_len > 0 {
                let f: f64 = format!("0.{frac_digits}").parse().map_err(|_| invalid())?;
                // Saturating float-to-int cast of a value in [0, 2^64): 0.999...9
                // rounds to just below 1.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                {
                    fraction = (f * 18_446_744_073_709_551_616.0) as u64;
                }
            }
        } else if int_digits.is_empty() {
            return Err(invalid());
        }
    }

    let multiplier = match rest.first().copied().and_then(suffix_multiplier) {
        Some(m) => {
            rest = &rest[1..];
            m
        }
        None => default_unit.max(1),
    };
    if !rest.is_empty() {
        return Err(invalid());
    }
    if multiplier == 1 {
        if fraction != 0 {
            // A fraction of a byte is not a size.
            return Err(invalid());
        }
        return Ok(value);
    }
    let whole = u128::from(value) * u128::from(multiplier);
    let part = u128::from(fraction) * u128::from(multiplier);
    // Round half a byte up, as QEMU does.
    let total = whole + (part >> 64) + ((part >> 63) & 1);
    u64::try_from(total).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn plain_numbers_and_suffixes() {
        assert_eq!(parse_size("0", 1), Ok(0));
        assert_eq!(parse_size("4096", 1), Ok(4096));
        assert_eq!(parse_size("12B", 1), Ok(12));
        assert_eq!(parse_size("1k", 1), Ok(1024));
        assert_eq!(parse_size("1K", 1), Ok(1024));
        assert_eq!(parse_size("2M", 1), Ok(2 * MIB));
        assert_eq!(parse_size("1g", 1), Ok(1 << 30));
        assert_eq!(parse_size("1T", 1), Ok(1 << 40));
        assert_eq!(parse_size("1P", 1), Ok(1 << 50));
        assert_eq!(parse_size("1E", 1), Ok(1 << 60));
        assert_eq!(parse_size("  8M", 1), Ok(8 * MIB));
    }

    #[test]
    fn default_unit_applies_only_without_suffix() {
        assert_eq!(parse_size("512", MIB), Ok(512 * MIB));
        assert_eq!(parse_size("512B", MIB), Ok(512));
        assert_eq!(parse_size("1G", MIB), Ok(1 << 30));
        assert_eq!(parse_size("1.5", MIB), Ok(MIB + MIB / 2));
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_size("1.5G", 1), Ok(3 << 29));
        assert_eq!(parse_size("0.5K", 1), Ok(512));
        assert_eq!(parse_size(".5K", 1), Ok(512));
        assert_eq!(parse_size("1.K", 1), Ok(1024));
        assert_eq!(parse_size("1.", MIB), Ok(MIB));
        // 0.1 KiB = 102.4 bytes, rounded to 102.
        assert_eq!(parse_size("0.1K", 1), Ok(102));
        // A fraction of a byte is refused.
        assert!(parse_size("1.5", 1).is_err());
        assert!(parse_size("1.5B", 1).is_err());
        assert!(parse_size("1.0B", 1).is_ok());
    }

    #[test]
    fn hex() {
        assert_eq!(parse_size("0x1000", 1), Ok(4096));
        assert_eq!(parse_size("0X10", MIB), Ok(16 * MIB));
        assert!(parse_size("0x10M", 1).is_err());
        assert!(parse_size("0x1.8", 1).is_err());
        assert!(parse_size("0x", 1).is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", " ", "M", "-1", "+1", "1X", "1KiB", "1MB", "1 M", "1M ", "1e3", "1.5e3", ".", ".K",
            "abc", "1,5G", "0x1g",
        ] {
            assert_eq!(
                parse_size(bad, 1),
                Err(SizeError::Invalid(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overflow() {
        assert_eq!(parse_size("18446744073709551615", 1), Ok(u64::MAX));
        assert!(matches!(
            parse_size("18446744073709551616", 1),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(parse_size("16E", 1), Err(SizeError::TooLarge(_))));
        assert_eq!(parse_size("15E", 1), Ok(15 << 60));
        assert!(matches!(
            parse_size("0x10000000000000000", 1),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn error_messages_quote_the_input() {
        let e = parse_size("12X", 1).expect_err("12X").to_string();
        assert!(e.contains("'12X'") && e.contains("not a size"), "{e}");
    }
}
