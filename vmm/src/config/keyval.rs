//! QEMU's keyval syntax, the one parser behind every property list on the
//! command line (`-object`, `-device`, `-chardev`, `-machine`, `-smp`,
//! `-numa`, `-m`).
//!
//! `TYPE,key=value,key=value`: items are separated by commas, `,,` is a
//! literal comma, the first item may leave out its key (the "implied" key:
//! `qom-type` for `-object`, `driver` for `-device`, `backend` for
//! `-chardev`, `type` for `-machine`/`-numa`, `cpus` for `-smp`, `size` for
//! `-m`). A later bare `key` means `key=on` (QemuOpts' flag form, e.g.
//! `server`, `help`). A repeated key keeps its last value.
//!
//! Values are read typed, with QEMU's rules: booleans `on/off/yes/no/true/false`,
//! numbers in decimal, `0x` hex or `0` octal, sizes with `K M G T P E` suffixes
//! ([`super::size`]). Every key must be consumed by the reader: [`KeyVal::finish`]
//! names any left over with the type's known properties.

use memory::parse_size;

/// A problem in one property list; the caller adds which option and type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    #[error("missing the type (e.g. {0})")]
    NoType(&'static str),
    #[error("{key}='{value}': expected {expected}")]
    Value {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{key}: {reason}")]
    Size { key: String, reason: String },
    #[error("unknown property '{key}' (known: {known})")]
    Unknown { key: String, known: String },
    #[error("{0}= is required")]
    Missing(&'static str),
}

/// A parsed property list: the implied first value and the key=value pairs
/// in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVal {
    pairs: Vec<(String, String)>,
}

/// Splits on commas; `,,` is a literal comma.
fn split(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
}

impl KeyVal {
    /// Parses `s`. A first item without `=` is the value of `implied` (when
    /// the option has one); a later one is a flag (`key` = `key=on`).
    pub fn parse(s: &str, implied: Option<&str>) -> Result<KeyVal, Error> {
        let mut pairs = Vec::new();
        for (i, item) in split(s).into_iter().enumerate() {
            if item.is_empty() {
                // A trailing comma, or an empty list.
                continue;
            }
            match item.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
                Some(_) => return Err(Error::NotKeyValue(item)),
                None => match implied {
                    Some(key) if i == 0 => pairs.push((key.to_string(), item)),
                    _ if item == "help" || item == "?" => {
                        pairs.push(("help".to_string(), "on".to_string()));
                    }
                    _ if i > 0 && item.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                        pairs.push((item, "on".to_string()));
                    }
                    _ => return Err(Error::NotKeyValue(item)),
                },
            }
        }
        Ok(KeyVal { pairs })
    }

    /// Whether `key` was given at all.
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// Removes `key` and returns its last value.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let mut last = None;
        self.pairs.retain(|(k, v)| {
            if k == key {
                last = Some(v.clone());
                false
            } else {
                true
            }
        });
        last
    }

    /// Removes `key` and returns every value, in order (list properties).
    pub fn take_all(&mut self, key: &str) -> Vec<String> {
        let mut all = Vec::new();
        self.pairs.retain(|(k, v)| {
            if k == key {
                all.push(v.clone());
                false
            } else {
                true
            }
        });
        all
    }

    /// Removes `key`; its value must not be empty.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, Error> {
        match self.take(key) {
            Some(v) if v.is_empty() => Err(value_err(key, &v, "a non-empty value")),
            v => Ok(v),
        }
    }

    /// Removes `key`, required.
    pub fn require(&mut self, key: &'static str) -> Result<String, Error> {
        self.take_str(key)?.ok_or(Error::Missing(key))
    }

    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, Error> {
        self.take(key)
            .map(|v| parse_bool(&v).ok_or_else(|| value_err(key, &v, "on or off")))
            .transpose()
    }

    pub fn take_num(&mut self, key: &str) -> Result<Option<u64>, Error> {
        self.take(key)
            .map(|v| parse_num(&v).ok_or_else(|| value_err(key, &v, "a number")))
            .transpose()
    }

    /// A size; `unit` multiplies a number without a suffix (1 for bytes).
    pub fn take_size(&mut self, key: &str, unit: u64) -> Result<Option<u64>, Error> {
        self.take(key)
            .map(|v| {
                parse_size(&v, unit).map_err(|e| Error::Size {
                    key: key.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Fails on the first key nobody took, naming the `known` ones.
    pub fn finish(self, known: &[&str]) -> Result<(), Error> {
        match self.pairs.into_iter().next() {
            None => Ok(()),
            Some((key, _)) => Err(Error::Unknown {
                key,
                known: known.join(", "),
            }),
        }
    }
}

fn value_err(key: &str, value: &str, expected: &'static str) -> Error {
    Error::Value {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// QEMU's boolean spellings (qapi_bool_parse plus QemuOpts' y/n).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// A number as QEMU reads one (strtoull base 0): `0x` hex, a leading `0`
/// octal, else decimal.
pub fn parse_num(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok();
    }
    if s.len() > 1
        && let Some(o) = s.strip_prefix('0')
    {
        return u64::from_str_radix(o, 8).ok();
    }
    if s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &str, implied: Option<&str>) -> Vec<(String, String)> {
        KeyVal::parse(s, implied).unwrap().pairs
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn splits_with_escaped_commas_and_an_implied_key() {
        assert_eq!(
            kv(
                "memory-backend-file,id=m,mem-path=/a,,b,size=1G",
                Some("qom-type")
            ),
            p(&[
                ("qom-type", "memory-backend-file"),
                ("id", "m"),
                ("mem-path", "/a,b"),
                ("size", "1G")
            ])
        );
        assert_eq!(kv("4", Some("cpus")), p(&[("cpus", "4")]));
        assert_eq!(kv("cpus=4,", Some("cpus")), p(&[("cpus", "4")]));
        assert_eq!(kv("", Some("cpus")), p(&[]));
        assert_eq!(
            kv("socket,id=c,path=/s,server,wait=off", Some("backend")),
            p(&[
                ("backend", "socket"),
                ("id", "c"),
                ("path", "/s"),
                ("server", "on"),
                ("wait", "off")
            ])
        );
        assert_eq!(
            kv("isa-debug-exit,help", Some("driver")),
            p(&[("driver", "isa-debug-exit"), ("help", "on")])
        );
        assert_eq!(kv("help", None), p(&[("help", "on")]));
        assert_eq!(
            KeyVal::parse("a=1,=2", None),
            Err(Error::NotKeyValue("=2".into()))
        );
        assert_eq!(
            KeyVal::parse("a b", None),
            Err(Error::NotKeyValue("a b".into()))
        );
    }

    #[test]
    fn last_value_wins_and_lists_keep_all() {
        let mut k = KeyVal::parse("size=1M,host-nodes=0,size=2M,host-nodes=2", None).unwrap();
        assert_eq!(k.take_size("size", 1), Ok(Some(2 << 20)));
        assert_eq!(k.take_all("host-nodes"), vec!["0", "2"]);
        k.finish(&[]).unwrap();
    }

    #[test]
    fn typed_values() {
        let mut k = KeyVal::parse(
            "a=on,b=no,c=true,d=0x501,e=010,f=12,g=1.5G,h=maybe,i=0x,j=",
            None,
        )
        .unwrap();
        assert_eq!(k.take_bool("a"), Ok(Some(true)));
        assert_eq!(k.take_bool("b"), Ok(Some(false)));
        assert_eq!(k.take_bool("c"), Ok(Some(true)));
        assert_eq!(k.take_num("d"), Ok(Some(0x501)));
        assert_eq!(k.take_num("e"), Ok(Some(8)));
        assert_eq!(k.take_num("f"), Ok(Some(12)));
        assert_eq!(k.take_size("g", 1), Ok(Some(3 << 29)));
        assert_eq!(
            k.take_bool("h").unwrap_err().to_string(),
            "h='maybe': expected on or off"
        );
        assert_eq!(
            k.take_num("i").unwrap_err().to_string(),
            "i='0x': expected a number"
        );
        assert!(k.take_str("j").is_err());
        assert_eq!(k.take_bool("absent"), Ok(None));
        let k = KeyVal::parse("zz=1", None).unwrap();
        assert_eq!(
            k.finish(&["a", "b"]).unwrap_err().to_string(),
            "unknown property 'zz' (known: a, b)"
        );
        assert_eq!(parse_num("0"), Some(0));
        assert_eq!(parse_num("-1"), None);
        assert_eq!(parse_num("09"), None);
    }
}
