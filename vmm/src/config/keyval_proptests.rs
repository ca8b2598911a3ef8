//! Property tests of the keyval parser: any string parses or gives an
//! error (never a panic), and a list written with QEMU's escaping (`,,`)
//! reads back as written, the last of a repeated key winning.

use proptest::prelude::*;

use super::keyval::KeyVal;

/// QEMU's escaping of a value: a comma is doubled.
fn escape(v: &str) -> String {
    v.replace(',', ",,")
}

fn key() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_string_parses_or_errs(s in ".{0,40}", implied in prop::option::of(Just("type"))) {
        if let Ok(mut kv) = KeyVal::parse(&s, implied) {
            // Whatever parsed can be taken apart.
            let _ = kv.take("type");
            let _ = kv.take_size("size", 1);
        }
    }

    #[test]
    fn written_lists_read_back(
        pairs in prop::collection::vec((key(), ".{0,12}"), 0..8),
        ty in prop::option::of("[a-z][a-z0-9-]{0,10}"),
        trailing in any::<bool>(),
    ) {
        let mut items: Vec<String> = ty.iter().cloned().collect();
        items.extend(pairs.iter().map(|(k, v)| format!("{k}={}", escape(v))));
        let mut s = items.join(",");
        if trailing {
            s.push(',');
        }
        let mut kv = KeyVal::parse(&s, Some("type")).expect("a written list parses");
        if let Some(t) = &ty {
            // The implied key, unless a later type= overrides it.
            let last = pairs.iter().rev().find(|(k, _)| k == "type").map(|(_, v)| v);
            let got = kv.take("type");
            prop_assert_eq!(got.as_ref(), Some(last.unwrap_or(t)));
        }
        let mut keys: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if ty.is_some() && k == "type" {
                continue;
            }
            let last = pairs.iter().rev().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
            prop_assert_eq!(kv.take(k), last);
        }
        prop_assert!(kv.finish(&[]).is_ok(), "keys left over");
    }

    #[test]
    fn a_bare_word_after_the_first_is_a_flag(flag in "[a-z][a-z0-9-]{0,8}") {
        let mut kv = KeyVal::parse(&format!("thing,{flag}"), Some("type")).expect("parses");
        prop_assert_eq!(kv.take(&flag), Some("on".to_string()));
    }
}
