//! Property tests of [`crate::parse_size`]: any string is either a size or
//! one of the two errors (never a panic), and sizes mean what they say.

use proptest::prelude::*;

use crate::{SizeError, parse_size};

const SUFFIXES: [(char, u32); 7] = [
    ('B', 0),
    ('K', 10),
    ('M', 20),
    ('G', 30),
    ('T', 40),
    ('P', 50),
    ('E', 60),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_string_is_a_size_or_a_clear_error(s in ".{0,24}", unit in prop_oneof![Just(1u64), Just(1 << 20)]) {
        match parse_size(&s, unit) {
            Ok(_) => {}
            Err(SizeError::Invalid(t) | SizeError::TooLarge(t)) => prop_assert_eq!(t, s),
        }
    }

    #[test]
    fn size_like_strings_never_panic(s in "[ 0-9xX.+-]{0,6}[0-9a-fA-F.]{0,22}[bBkKmMgGtTpPeE]?[a-z]?") {
        let _ = parse_size(&s, 1 << 20);
    }

    #[test]
    fn a_number_with_a_suffix_is_that_many_units(n in any::<u64>(), which in 0usize..7, lower in any::<bool>()) {
        let (c, shift) = SUFFIXES[which];
        let c = if lower { c.to_ascii_lowercase() } else { c };
        let s = format!("{n}{c}");
        let want = u128::from(n) << shift;
        match u64::try_from(want) {
            Ok(v) => prop_assert_eq!(parse_size(&s, 1), Ok(v)),
            Err(_) => prop_assert_eq!(parse_size(&s, 1), Err(SizeError::TooLarge(s))),
        }
    }

    #[test]
    fn without_a_suffix_the_default_unit_applies(n in 0u64..(1 << 44)) {
        prop_assert_eq!(parse_size(&n.to_string(), 1), Ok(n));
        prop_assert_eq!(parse_size(&n.to_string(), 1 << 20), Ok(n << 20));
        prop_assert_eq!(parse_size(&format!("{n:#x}"), 1), Ok(n));
    }

    #[test]
    fn a_fraction_rounds_to_the_nearest_byte(whole in 0u64..1024, tenths in 0u64..10, which in 1usize..5) {
        let (c, shift) = SUFFIXES[which];
        let s = format!("{whole}.{tenths}{c}");
        let exact = (u128::from(whole * 10 + tenths) << shift) as f64 / 10.0;
        let got = parse_size(&s, 1).expect("a size") as f64;
        prop_assert!((got - exact).abs() <= 1.0, "{}: {} vs {}", s, got, exact);
    }

    #[test]
    fn signs_are_never_sizes(n in any::<u64>(), sign in prop_oneof![Just('-'), Just('+')]) {
        let s = format!("{sign}{n}");
        prop_assert_eq!(parse_size(&s, 1), Err(SizeError::Invalid(s)));
    }
}
