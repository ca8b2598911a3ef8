//! `-object memory-backend-{ram,file,memfd,shm},id=ID,...`: keyval to the
//! memory crate's typed [`BackendConfig`], plus the property tables that
//! `-object help` and `-object TYPE,help` print.

use std::path::PathBuf;

use memory::{
    BackendConfig, BackendKind, BackendProps, HostMemPolicy, KindOptions, MAX_HOST_NODES, OnOffAuto,
};

use super::keyval::{self, KeyVal};
use super::{Prop, TypeInfo};

/// Properties every memory backend takes.
const COMMON: &[Prop] = &[
    Prop::new("size", "size", "(required)", "bytes; K/M/G/T suffixes"),
    Prop::new(
        "share",
        "bool",
        "off (on for memfd, shm)",
        "MAP_SHARED: other processes see the memory",
    ),
    Prop::new("prealloc", "bool", "off", "fault every page in at start"),
    Prop::new("prealloc-threads", "number", "1", "threads for prealloc"),
    Prop::new("reserve", "bool", "on", "off: MAP_NORESERVE"),
    Prop::new("merge", "bool", "on", "MADV_MERGEABLE (KSM)"),
    Prop::new("dump", "bool", "on", "off: MADV_DONTDUMP"),
    Prop::new("host-nodes", "node list", "", "host NUMA nodes, e.g. 0-1"),
    Prop::new(
        "policy",
        "default|preferred|bind|interleave",
        "default",
        "NUMA policy",
    ),
];
const FILE: &[Prop] = &[
    Prop::new(
        "mem-path",
        "path",
        "(required)",
        "a file, or a directory for a temporary one",
    ),
    Prop::new("align", "size", "0", "mapping alignment (0: page size)"),
    Prop::new("offset", "size", "0", "offset in the file"),
    Prop::new(
        "discard-data",
        "bool",
        "off",
        "drop the file's data at exit",
    ),
    Prop::new("readonly", "bool", "off", "open the file read-only"),
    Prop::new("rom", "on|off|auto", "auto", "map read-only"),
    Prop::new("pmem", "bool", "off", "on is not supported"),
];
const MEMFD: &[Prop] = &[
    Prop::new("hugetlb", "bool", "off", "huge pages"),
    Prop::new("hugetlbsize", "size", "0", "huge page size (0: default)"),
    Prop::new("seal", "bool", "on", "seal grow/shrink"),
];
const SHM: &[Prop] = &[
    Prop::new(
        "name",
        "/NAME",
        "",
        "a named POSIX shm object (shmvm's own)",
    ),
    Prop::new(
        "keep",
        "bool",
        "off",
        "keep the named object at exit (shmvm's own)",
    ),
    Prop::new(
        "reclaim",
        "bool",
        "off",
        "replace a stale same-named object no running shmvm holds (shmvm's own)",
    ),
];

/// The `-object` types, for help and for checking property names.
pub const TYPES: &[TypeInfo] = &[
    TypeInfo::new("memory-backend-ram", "anonymous memory", COMMON, &[]),
    TypeInfo::new("memory-backend-file", "a file or hugetlbfs", COMMON, FILE),
    TypeInfo::new("memory-backend-memfd", "an anonymous memfd", COMMON, MEMFD),
    TypeInfo::new(
        "memory-backend-shm",
        "a POSIX shared memory object",
        COMMON,
        SHM,
    ),
];

/// Why an `-object` was refused: a property list problem before the backend
/// is known, or the backend's own one-line error (type, id, option, reason).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("-object '{spec}': {source}")]
    Syntax {
        spec: String,
        #[source]
        source: keyval::Error,
    },
    #[error("-object '{spec}': {reason}")]
    Type { spec: String, reason: String },
    #[error("-object: {0}")]
    Backend(#[source] memory::Error),
}

/// Parses one `-object` value.
pub fn parse(spec: &str) -> Result<BackendConfig, Error> {
    let syntax = |source| Error::Syntax {
        spec: spec.to_string(),
        source,
    };
    let mut kv = KeyVal::parse(spec, Some("qom-type")).map_err(syntax)?;
    let ty = kv
        .take("qom-type")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| syntax(keyval::Error::NoType("memory-backend-ram")))?;
    let kind = BackendKind::from_qom_type(&ty).ok_or_else(|| Error::Type {
        spec: spec.to_string(),
        reason: format!(
            "unknown object type '{ty}' (expected memory-backend-ram, memory-backend-file, \
             memory-backend-memfd or memory-backend-shm; see -object help)"
        ),
    })?;
    let id = kv.take("id").ok_or_else(|| Error::Type {
        spec: spec.to_string(),
        reason: format!("{ty} needs an id (id=NAME)"),
    })?;
    from_keyval(kind, &id, kv).map_err(Error::Backend)
}

/// An error about `option` of the backend `kind`/`id`.
fn invalid(kind: BackendKind, id: &str, option: &str, reason: String) -> memory::Error {
    memory::Error::Invalid {
        kind,
        id: id.to_string(),
        option: option.to_string(),
        reason,
    }
}

/// The option a keyval error is about (for [`memory::Error::Invalid`]).
fn key_of(e: &keyval::Error) -> String {
    match e {
        keyval::Error::Value { key, .. }
        | keyval::Error::Size { key, .. }
        | keyval::Error::Unknown { key, .. } => key.clone(),
        keyval::Error::Missing(k) => (*k).to_string(),
        keyval::Error::NotKeyValue(_) | keyval::Error::NoType(_) => "qom-type".to_string(),
    }
}

/// Reads the typed properties of a backend of `kind` from `kv` (the type
/// and id already taken) and builds it.
pub fn from_keyval(
    kind: BackendKind,
    id: &str,
    mut kv: KeyVal,
) -> Result<BackendConfig, memory::Error> {
    let bad = |e: keyval::Error| {
        let key = key_of(&e);
        invalid(kind, id, &key, e.to_string())
    };
    // A property of another backend type says which one it belongs to.
    for other in BackendKind::ALL {
        if other != kind
            && let Some(p) = other.options().iter().find(|p| kv.has(p))
        {
            return Err(invalid(
                kind,
                id,
                p,
                format!(
                    "option '{p}' belongs to {}, not {}",
                    other.qom_type(),
                    kind.qom_type()
                ),
            ));
        }
    }
    let mut props = BackendProps {
        size: kv.take_size("size", 1).map_err(bad)?,
        share: kv.take_bool("share").map_err(bad)?,
        prealloc: kv.take_bool("prealloc").map_err(bad)?,
        prealloc_threads: None,
        reserve: kv.take_bool("reserve").map_err(bad)?,
        merge: kv.take_bool("merge").map_err(bad)?,
        dump: kv.take_bool("dump").map_err(bad)?,
        host_nodes: Vec::new(),
        policy: None,
    };
    if let Some(v) = kv.take("prealloc-threads") {
        props.prealloc_threads = Some(v.parse().map_err(|_| {
            invalid(
                kind,
                id,
                "prealloc-threads",
                format!("prealloc-threads='{v}': expected a number of threads > 0"),
            )
        })?);
    }
    for v in kv.take_all("host-nodes") {
        let node = |s: &str| -> Result<u32, memory::Error> {
            let n: u32 = s.parse().map_err(|_| {
                invalid(
                    kind,
                    id,
                    "host-nodes",
                    format!("host-nodes='{s}': expected a node number or a range like 0-3"),
                )
            })?;
            if n >= MAX_HOST_NODES {
                return Err(invalid(
                    kind,
                    id,
                    "host-nodes",
                    format!(
                        "host-nodes: node {n} is out of range (nodes are 0 to {})",
                        MAX_HOST_NODES - 1
                    ),
                ));
            }
            Ok(n)
        };
        let (lo, hi) = match v.split_once('-') {
            Some((a, b)) => (node(a)?, node(b)?),
            None => (node(&v)?, node(&v)?),
        };
        if lo > hi {
            return Err(invalid(
                kind,
                id,
                "host-nodes",
                format!("host-nodes='{v}': the range is empty"),
            ));
        }
        props.host_nodes.extend(lo..=hi);
    }
    props.host_nodes.sort_unstable();
    props.host_nodes.dedup();
    if let Some(v) = kv.take("policy") {
        props.policy = Some(match v.as_str() {
            "default" => HostMemPolicy::Default,
            "preferred" => HostMemPolicy::Preferred,
            "bind" => HostMemPolicy::Bind,
            "interleave" => HostMemPolicy::Interleave,
            _ => {
                return Err(invalid(
                    kind,
                    id,
                    "policy",
                    format!("policy='{v}': expected default, preferred, bind or interleave"),
                ));
            }
        });
    }
    let mut opts = KindOptions::new(kind);
    match &mut opts {
        KindOptions::Ram => {}
        KindOptions::File(f) => {
            if let Some(p) = kv.take("mem-path") {
                if p.is_empty() {
                    return Err(invalid(kind, id, "mem-path", "mem-path is empty".into()));
                }
                f.mem_path = Some(PathBuf::from(p));
            }
            f.align = kv.take_size("align", 1).map_err(bad)?.unwrap_or(0);
            f.offset = kv.take_size("offset", 1).map_err(bad)?.unwrap_or(0);
            f.discard_data = kv.take_bool("discard-data").map_err(bad)?.unwrap_or(false);
            f.readonly = kv.take_bool("readonly").map_err(bad)?.unwrap_or(false);
            if let Some(v) = kv.take("rom") {
                f.rom = match (v.as_str(), keyval::parse_bool(&v)) {
                    ("auto", _) => OnOffAuto::Auto,
                    (_, Some(true)) => OnOffAuto::On,
                    (_, Some(false)) => OnOffAuto::Off,
                    _ => {
                        return Err(invalid(
                            kind,
                            id,
                            "rom",
                            format!("rom='{v}': expected on, off or auto"),
                        ));
                    }
                };
            }
            if kv.take_bool("pmem").map_err(bad)? == Some(true) {
                return Err(invalid(
                    kind,
                    id,
                    "pmem",
                    "pmem=on is not supported (shmvm has no persistent memory support: \
                     no MAP_SYNC mapping, no cache flushes)"
                        .into(),
                ));
            }
        }
        KindOptions::Memfd(m) => {
            m.hugetlb = kv.take_bool("hugetlb").map_err(bad)?.unwrap_or(false);
            m.hugetlbsize = kv.take_size("hugetlbsize", 1).map_err(bad)?.unwrap_or(0);
            m.seal = kv.take_bool("seal").map_err(bad)?.unwrap_or(true);
        }
        KindOptions::Shm(s) => {
            s.name = kv.take("name");
            s.keep = kv.take_bool("keep").map_err(bad)?.unwrap_or(false);
            s.reclaim = kv.take_bool("reclaim").map_err(bad)?.unwrap_or(false);
        }
    }
    let known: Vec<&str> = memory::COMMON_OPTIONS
        .iter()
        .chain(kind.options())
        .copied()
        .collect();
    kv.finish(&known).map_err(|e| match e {
        keyval::Error::Unknown { key, known } => invalid(
            kind,
            id,
            &key,
            format!("unknown option '{key}' (known: {known})"),
        ),
        e => bad(e),
    })?;
    BackendConfig::from_props(id, props, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(s: &str, option: &str, reason: &str) {
        let e = parse(s).expect_err(s);
        let msg = e.to_string();
        assert!(msg.contains(reason), "{s}: '{msg}' does not say '{reason}'");
        if let Error::Backend(b) = &e {
            assert_eq!(b.option(), Some(option), "{s}: {msg}");
            let kind = s
                .split(',')
                .next()
                .and_then(|t| t.strip_prefix("memory-backend-"));
            let id = s.split(',').find_map(|kv| kv.strip_prefix("id="));
            if let (Some(kind), Some(id)) = (kind, id) {
                assert!(
                    msg.starts_with(&format!("-object: {kind} backend '{id}': ")),
                    "{s}: {msg}"
                );
            }
        }
    }

    #[test]
    fn tables_match_the_memory_crate() {
        for t in TYPES {
            let kind = BackendKind::from_qom_type(t.name).expect("a memory backend");
            let mut want: Vec<&str> = memory::COMMON_OPTIONS.to_vec();
            want.extend_from_slice(kind.options());
            let have: Vec<&str> = t.props().map(|p| p.name).collect();
            assert_eq!(have, want, "{}", t.name);
        }
    }

    #[test]
    fn all_options_parse() {
        let c = parse(
            "memory-backend-file,id=f,size=1.5G,share=yes,prealloc=on,prealloc-threads=4,\
             reserve=on,merge=off,dump=off,host-nodes=0-1,host-nodes=3,policy=interleave,\
             mem-path=/a,,b,align=2M,offset=4K,discard-data=on,readonly=off,rom=off,pmem=off",
        )
        .unwrap();
        assert_eq!(c.size(), 3 << 29);
        assert!(c.share() && c.prealloc() && !c.merge() && !c.dump());
        assert_eq!(c.prealloc_threads(), 4);
        assert_eq!(c.host_nodes(), &[0, 1, 3]);
        assert_eq!(c.policy(), HostMemPolicy::Interleave);
        assert_eq!(c.mem_path(), Some(std::path::Path::new("/a,b")));
        let s = parse("qom-type=memory-backend-shm,id=s,size=1M,name=/shmvm-x,keep=on").unwrap();
        assert_eq!(s.kind(), BackendKind::Shm);
        assert_eq!(
            parse("memory-backend-ram,id=r,size=1M,size=2M")
                .unwrap()
                .size(),
            2 << 20
        );
    }

    #[test]
    fn syntax_errors() {
        rejects("", "", "missing the type");
        rejects(
            "memory-backend-foo,id=x,size=1M",
            "",
            "unknown object type 'memory-backend-foo'",
        );
        rejects("memory-backend-ram,size=1M", "", "needs an id");
        rejects(
            "memory-backend-ram,id=0bad,size=1M",
            "id",
            "id '0bad' is not well formed",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,a b",
            "",
            "'a b' is not key=value",
        );
    }

    #[test]
    fn value_errors_name_type_id_and_option() {
        rejects(
            "memory-backend-ram,id=r,size=12X",
            "size",
            "'12X' is not a size",
        );
        rejects("memory-backend-ram,id=r,size=16E", "size", "too large");
        rejects("memory-backend-ram,id=r", "size", "size is required");
        rejects(
            "memory-backend-ram,id=r,size=1M,share=maybe",
            "share",
            "share='maybe': expected on or off",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,prealloc-threads=0",
            "prealloc-threads",
            "expected a number of threads > 0",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,prealloc-threads=-1",
            "prealloc-threads",
            "expected a number of threads > 0",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,bogus=1",
            "bogus",
            "unknown option 'bogus'",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,mem-path=/x",
            "mem-path",
            "belongs to memory-backend-file",
        );
        rejects(
            "memory-backend-shm,id=s,size=1M,hugetlb=on",
            "hugetlb",
            "belongs to memory-backend-memfd",
        );
        rejects(
            "memory-backend-memfd,id=m,size=1M,name=/x",
            "name",
            "belongs to memory-backend-shm",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,host-nodes=128,policy=bind",
            "host-nodes",
            "node 128 is out of range",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,host-nodes=3-1,policy=bind",
            "host-nodes",
            "the range is empty",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,host-nodes=x,policy=bind",
            "host-nodes",
            "expected a node number",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,policy=local",
            "policy",
            "expected default, preferred, bind or interleave",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=",
            "mem-path",
            "mem-path is empty",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,rom=maybe",
            "rom",
            "expected on, off or auto",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,pmem=on",
            "pmem",
            "pmem=on is not supported",
        );
        rejects(
            "memory-backend-shm,id=s,size=1M,share=off",
            "share",
            "can't create shm backend with share=off",
        );
    }
}
