//! Backend configuration: QEMU's `memory-backend-*` options, parsed and validated.
//!
//! Everything that can be checked without touching the host is checked here, so a bad
//! command line fails before any memory, file or shm object exists.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::size::parse_size;

/// QEMU's limit on NUMA node numbers in `host-nodes` (`MAX_NODES`).
pub const MAX_HOST_NODES: u32 = 128;

/// Which kind of host memory backs a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `memory-backend-ram`: anonymous memory (fd-backed when shared).
    Ram,
    /// `memory-backend-file`: a file, or an unlinked file in a directory.
    File,
    /// `memory-backend-memfd`: an anonymous memfd (Linux).
    Memfd,
    /// `memory-backend-shm`: an unlinked POSIX shared memory object.
    Shm,
}

impl BackendKind {
    /// The QEMU object type, e.g. `memory-backend-shm`.
    pub fn qom_type(self) -> &'static str {
        match self {
            BackendKind::Ram => "memory-backend-ram",
            BackendKind::File => "memory-backend-file",
            BackendKind::Memfd => "memory-backend-memfd",
            BackendKind::Shm => "memory-backend-shm",
        }
    }

    fn from_qom_type(s: &str) -> Option<BackendKind> {
        [
            BackendKind::Ram,
            BackendKind::File,
            BackendKind::Memfd,
            BackendKind::Shm,
        ]
        .into_iter()
        .find(|k| k.qom_type() == s)
    }

    /// QEMU's default for `share`: on for memfd and shm, off otherwise.
    pub fn default_share(self) -> bool {
        matches!(self, BackendKind::Memfd | BackendKind::Shm)
    }

    fn options(self) -> &'static [&'static str] {
        match self {
            BackendKind::Ram => &[],
            BackendKind::File => &[
                "mem-path",
                "align",
                "offset",
                "discard-data",
                "readonly",
                "rom",
                "pmem",
            ],
            BackendKind::Memfd => &["hugetlb", "hugetlbsize", "seal"],
            BackendKind::Shm => &["name", "keep", "reclaim"],
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Ram => "ram",
            BackendKind::File => "file",
            BackendKind::Memfd => "memfd",
            BackendKind::Shm => "shm",
        })
    }
}

const COMMON_OPTIONS: &[&str] = &[
    "size",
    "share",
    "prealloc",
    "prealloc-threads",
    "reserve",
    "merge",
    "dump",
    "host-nodes",
    "policy",
];

/// NUMA policy for `host-nodes` (`policy=`), applied with mbind(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostMemPolicy {
    /// The process's policy; `host-nodes` must be empty.
    #[default]
    Default,
    /// Prefer the given nodes.
    Preferred,
    /// Only the given nodes.
    Bind,
    /// Interleave pages over the given nodes.
    Interleave,
}

impl HostMemPolicy {
    fn name(self) -> &'static str {
        match self {
            HostMemPolicy::Default => "default",
            HostMemPolicy::Preferred => "preferred",
            HostMemPolicy::Bind => "bind",
            HostMemPolicy::Interleave => "interleave",
        }
    }
}

/// QEMU's OnOffAuto (used by `rom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOffAuto {
    /// Forced on.
    On,
    /// Forced off.
    Off,
    /// Decided from other options.
    #[default]
    Auto,
}

/// Options only `memory-backend-file` takes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileOptions {
    /// `mem-path`: a file (used as is, or created) or a directory (temporary file).
    pub mem_path: Option<PathBuf>,
    /// `align`: alignment of the mapping's address (0: the page size).
    pub align: u64,
    /// `offset`: where in the file the mapping starts.
    pub offset: u64,
    /// `discard-data`: drop the file's contents when the backend goes away.
    pub discard_data: bool,
    /// `readonly`: open the file read-only.
    pub readonly: bool,
    /// `rom`: map read-only (auto: same as `readonly`).
    pub rom: OnOffAuto,
}

/// Options only `memory-backend-memfd` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemfdOptions {
    /// `hugetlb`: back the memfd with huge pages.
    pub hugetlb: bool,
    /// `hugetlbsize`: huge page size (power of two; 0: the system default).
    pub hugetlbsize: u64,
    /// `seal`: add F_SEAL_GROW, F_SEAL_SHRINK and F_SEAL_SEAL.
    pub seal: bool,
}

impl Default for MemfdOptions {
    fn default() -> Self {
        MemfdOptions {
            hugetlb: false,
            hugetlbsize: 0,
            seal: true,
        }
    }
}

/// Options only `memory-backend-shm` takes (`name` and `keep` are shmvm's own).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShmOptions {
    /// `name=/NAME`: a named object other host processes can shm_open while the
    /// backend lives. Without it the object is unlinked right after creation.
    pub name: Option<String>,
    /// `keep`: leave a named object behind after the backend goes away.
    pub keep: bool,
    /// `reclaim`: replace a same-named object that no running shmvm holds (one
    /// left by a shmvm that was killed); a live one is never touched.
    pub reclaim: bool,
}

/// Type-specific options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindOptions {
    /// `memory-backend-ram` has none of its own.
    Ram,
    /// `memory-backend-file`.
    File(FileOptions),
    /// `memory-backend-memfd`.
    Memfd(MemfdOptions),
    /// `memory-backend-shm`.
    Shm(ShmOptions),
}

impl KindOptions {
    fn kind(&self) -> BackendKind {
        match self {
            KindOptions::Ram => BackendKind::Ram,
            KindOptions::File(_) => BackendKind::File,
            KindOptions::Memfd(_) => BackendKind::Memfd,
            KindOptions::Shm(_) => BackendKind::Shm,
        }
    }

    fn new(kind: BackendKind) -> KindOptions {
        match kind {
            BackendKind::Ram => KindOptions::Ram,
            BackendKind::File => KindOptions::File(FileOptions::default()),
            BackendKind::Memfd => KindOptions::Memfd(MemfdOptions::default()),
            BackendKind::Shm => KindOptions::Shm(ShmOptions::default()),
        }
    }
}

/// A memory backend's configuration, with QEMU's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    id: String,
    size: Option<u64>,
    share: bool,
    prealloc: bool,
    prealloc_threads: u32,
    reserve: bool,
    merge: bool,
    dump: bool,
    host_nodes: Vec<u32>,
    policy: HostMemPolicy,
    opts: KindOptions,
}

fn parse_bool(option: &str, value: &str) -> Result<bool, String> {
    // QEMU's qapi_bool_parse.
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("{option}='{value}': expected on or off")),
    }
}

fn parse_size_opt(option: &str, value: &str) -> Result<u64, String> {
    parse_size(value, 1).map_err(|e| format!("{option}: {e}"))
}

fn parse_node(option: &str, s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{option}='{s}': expected a node number or a range like 0-3"))?;
    if n >= MAX_HOST_NODES {
        return Err(format!(
            "{option}: node {n} is out of range (nodes are 0 to {})",
            MAX_HOST_NODES - 1
        ));
    }
    Ok(n)
}

fn id_is_well_formed(id: &str) -> bool {
    // QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'.
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Splits a QEMU keyval string on commas, where `,,` is a literal comma.
fn split_keyval(s: &str) -> Vec<String> {
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

impl BackendConfig {
    fn new(kind: BackendKind, id: &str) -> BackendConfig {
        BackendConfig {
            id: id.to_string(),
            size: None,
            share: kind.default_share(),
            prealloc: false,
            prealloc_threads: 1,
            reserve: true,
            merge: true,
            dump: true,
            host_nodes: Vec::new(),
            policy: HostMemPolicy::Default,
            opts: KindOptions::new(kind),
        }
    }

    /// A plain anonymous `ram` backend (what `-m SIZE` creates).
    pub fn ram(id: &str, size: u64) -> BackendConfig {
        let mut cfg = BackendConfig::new(BackendKind::Ram, id);
        cfg.size = Some(size);
        cfg
    }

    /// Parses a QEMU `-object` value, e.g. `memory-backend-shm,id=mem0,size=1G,share=on`,
    /// and validates it.
    pub fn parse_object(s: &str) -> Result<BackendConfig, Error> {
        let syntax = |reason: String| Error::Syntax {
            spec: s.to_string(),
            reason,
        };
        let mut qom_type = None;
        let mut id = None;
        let mut pairs = Vec::new();
        for (i, item) in split_keyval(s).into_iter().enumerate() {
            match item.split_once('=') {
                Some(("qom-type", v)) => qom_type = Some(v.to_string()),
                Some(("id", v)) => id = Some(v.to_string()),
                Some((k, v)) => pairs.push((k.to_string(), v.to_string())),
                None if i == 0 => qom_type = Some(item),
                None => {
                    return Err(syntax(format!(
                        "expected '=' after '{item}' (options are key=value, e.g. {item}=on)"
                    )));
                }
            }
        }
        let qom_type = qom_type.filter(|t| !t.is_empty()).ok_or_else(|| {
            syntax("missing the object type (e.g. memory-backend-ram)".to_string())
        })?;
        let kind = BackendKind::from_qom_type(&qom_type).ok_or_else(|| {
            syntax(format!(
                "unknown object type '{qom_type}' (expected memory-backend-ram, \
                 memory-backend-file, memory-backend-memfd or memory-backend-shm)"
            ))
        })?;
        let id = id.ok_or_else(|| syntax(format!("{qom_type} needs an id (id=NAME)")))?;
        if !id_is_well_formed(&id) {
            return Err(syntax(format!(
                "id '{id}' is not well formed (a letter, then letters, digits, '-', '.' or '_')"
            )));
        }
        let mut cfg = BackendConfig::new(kind, &id);
        for (k, v) in &pairs {
            cfg.set(k, v)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn invalid(&self, option: &str, reason: String) -> Error {
        Error::Invalid {
            kind: self.kind(),
            id: self.id.clone(),
            option: option.to_string(),
            reason,
        }
    }

    /// Sets one option by its QEMU name (e.g. `set("prealloc", "on")`). A repeated
    /// option overrides the earlier value, except `host-nodes`, which accumulates.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.set_inner(key, value)
            .map_err(|reason| self.invalid(key, reason))
    }

    fn set_inner(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "size" => self.size = Some(parse_size_opt(key, value)?),
            "share" => self.share = parse_bool(key, value)?,
            "prealloc" => self.prealloc = parse_bool(key, value)?,
            "prealloc-threads" => {
                let n: u32 =
                    value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("{key}='{value}': expected a number of threads > 0")
                    })?;
                self.prealloc_threads = n;
            }
            "reserve" => self.reserve = parse_bool(key, value)?,
            "merge" => self.merge = parse_bool(key, value)?,
            "dump" => self.dump = parse_bool(key, value)?,
            "policy" => {
                self.policy = match value {
                    "default" => HostMemPolicy::Default,
                    "preferred" => HostMemPolicy::Preferred,
                    "bind" => HostMemPolicy::Bind,
                    "interleave" => HostMemPolicy::Interleave,
                    _ => {
                        return Err(format!(
                            "{key}='{value}': expected default, preferred, bind or interleave"
                        ));
                    }
                }
            }
            "host-nodes" => {
                let (lo, hi) = match value.split_once('-') {
                    Some((a, b)) => (parse_node(key, a)?, parse_node(key, b)?),
                    None => {
                        let n = parse_node(key, value)?;
                        (n, n)
                    }
                };
                if lo > hi {
                    return Err(format!("{key}='{value}': the range is empty"));
                }
                self.host_nodes.extend(lo..=hi);
                self.host_nodes.sort_unstable();
                self.host_nodes.dedup();
            }
            _ => return self.set_kind_option(key, value),
        }
        Ok(())
    }

    fn set_kind_option(&mut self, key: &str, value: &str) -> Result<(), String> {
        let kind = self.kind();
        match &mut self.opts {
            KindOptions::File(f) => match key {
                "mem-path" => {
                    if value.is_empty() {
                        return Err("mem-path is empty".to_string());
                    }
                    f.mem_path = Some(PathBuf::from(value));
                    return Ok(());
                }
                "align" => {
                    f.align = parse_size_opt(key, value)?;
                    return Ok(());
                }
                "offset" => {
                    f.offset = parse_size_opt(key, value)?;
                    return Ok(());
                }
                "discard-data" => {
                    f.discard_data = parse_bool(key, value)?;
                    return Ok(());
                }
                "readonly" => {
                    f.readonly = parse_bool(key, value)?;
                    return Ok(());
                }
                "rom" => {
                    f.rom = match value {
                        "on" | "yes" | "true" | "y" => OnOffAuto::On,
                        "off" | "no" | "false" | "n" => OnOffAuto::Off,
                        "auto" => OnOffAuto::Auto,
                        _ => return Err(format!("rom='{value}': expected on, off or auto")),
                    };
                    return Ok(());
                }
                "pmem" => {
                    if parse_bool(key, value)? {
                        return Err("pmem=on is not supported (shmvm has no persistent \
                                    memory support: no MAP_SYNC mapping, no cache flushes)"
                            .to_string());
                    }
                    return Ok(());
                }
                _ => {}
            },
            KindOptions::Memfd(m) => match key {
                "hugetlb" => {
                    m.hugetlb = parse_bool(key, value)?;
                    return Ok(());
                }
                "hugetlbsize" => {
                    m.hugetlbsize = parse_size_opt(key, value)?;
                    return Ok(());
                }
                "seal" => {
                    m.seal = parse_bool(key, value)?;
                    return Ok(());
                }
                _ => {}
            },
            KindOptions::Shm(s) => match key {
                "name" => {
                    s.name = Some(value.to_string());
                    return Ok(());
                }
                "keep" => {
                    s.keep = parse_bool(key, value)?;
                    return Ok(());
                }
                "reclaim" => {
                    s.reclaim = parse_bool(key, value)?;
                    return Ok(());
                }
                _ => {}
            },
            KindOptions::Ram => {}
        }
        let mut known: Vec<&str> = COMMON_OPTIONS.to_vec();
        known.extend_from_slice(kind.options());
        let other = [
            BackendKind::Ram,
            BackendKind::File,
            BackendKind::Memfd,
            BackendKind::Shm,
        ]
        .into_iter()
        .find(|k| k.options().contains(&key));
        Err(match other {
            Some(k) => format!(
                "option '{key}' belongs to {}, not {}",
                k.qom_type(),
                kind.qom_type()
            ),
            None => format!("unknown option '{key}' (known: {})", known.join(", ")),
        })
    }

    /// Checks every rule that needs no system call. [`crate::Backend::create`] calls it
    /// too, so a config built with [`BackendConfig::set`] is held to the same rules.
    pub fn validate(&self) -> Result<(), Error> {
        let size = self
            .size
            .ok_or_else(|| self.invalid("size", "size is required (e.g. size=1G)".to_string()))?;
        if size == 0 {
            return Err(self.invalid(
                "size",
                format!("can't create {} backend with size 0", self.kind()),
            ));
        }
        if let KindOptions::Shm(_) = self.opts
            && !self.share
        {
            return Err(self.invalid(
                "share",
                "can't create shm backend with share=off (shm memory exists to be shared; \
                 use memory-backend-ram for private memory)"
                    .to_string(),
            ));
        }
        if !self.reserve && !cfg!(target_os = "linux") {
            return Err(self.invalid(
                "reserve",
                "reserve=off is not supported on this host".to_string(),
            ));
        }
        if self.prealloc && !self.reserve {
            return Err(self.invalid(
                "prealloc",
                "prealloc=on and reserve=off are incompatible (preallocating reserves \
                 the memory that reserve=off asks not to reserve)"
                    .to_string(),
            ));
        }
        if !self.host_nodes.is_empty() && self.policy == HostMemPolicy::Default {
            return Err(self.invalid(
                "host-nodes",
                "host-nodes must be empty with policy=default; set policy=preferred, \
                 bind or interleave to use them"
                    .to_string(),
            ));
        }
        if self.host_nodes.is_empty() && self.policy != HostMemPolicy::Default {
            return Err(self.invalid(
                "policy",
                format!("policy={} needs host-nodes", self.policy.name()),
            ));
        }
        if !self.host_nodes.is_empty() && !cfg!(target_os = "linux") {
            return Err(self.invalid(
                "host-nodes",
                "NUMA binding is not supported on this host".to_string(),
            ));
        }
        match &self.opts {
            KindOptions::Ram => {}
            KindOptions::File(f) => self.validate_file(f)?,
            KindOptions::Memfd(m) => self.validate_memfd(m)?,
            KindOptions::Shm(s) => self.validate_shm(s)?,
        }
        Ok(())
    }

    fn validate_file(&self, f: &FileOptions) -> Result<(), Error> {
        if f.mem_path.is_none() {
            return Err(self.invalid("mem-path", "mem-path is required".to_string()));
        }
        match f.rom {
            OnOffAuto::On if !f.readonly => {
                return Err(self.invalid(
                    "rom",
                    "rom=on needs readonly=on (a read-only mapping of a writable file)".to_string(),
                ));
            }
            OnOffAuto::Off if f.readonly && self.share => {
                return Err(self.invalid(
                    "rom",
                    "rom=off with readonly=on and share=on is not possible (a file opened \
                     read-only can only be written through a private mapping: use share=off)"
                        .to_string(),
                ));
            }
            _ => {}
        }
        if f.align != 0 && !f.align.is_power_of_two() {
            return Err(self.invalid(
                "align",
                format!("align={:#x} must be a power of two", f.align),
            ));
        }
        if f.offset
            .checked_add(self.size())
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(self.invalid(
                "offset",
                format!(
                    "offset={:#x} plus size is beyond the largest file offset",
                    f.offset
                ),
            ));
        }
        Ok(())
    }

    fn validate_memfd(&self, m: &MemfdOptions) -> Result<(), Error> {
        if m.hugetlbsize != 0 && !m.hugetlbsize.is_power_of_two() {
            return Err(self.invalid(
                "hugetlbsize",
                format!("hugetlbsize={} must be a power of two", m.hugetlbsize),
            ));
        }
        if m.hugetlbsize != 0 && !m.hugetlb {
            return Err(self.invalid(
                "hugetlbsize",
                "hugetlbsize needs hugetlb=on (without it the size would be ignored)".to_string(),
            ));
        }
        if !cfg!(target_os = "linux") {
            return Err(self.invalid(
                "qom-type",
                "memfd backends need Linux (memfd_create)".to_string(),
            ));
        }
        Ok(())
    }

    fn validate_shm(&self, s: &ShmOptions) -> Result<(), Error> {
        if s.reclaim && s.name.is_none() {
            return Err(self.invalid(
                "reclaim",
                "reclaim=on needs name=/NAME (an anonymous object never clashes)".to_string(),
            ));
        }
        if s.keep && s.name.is_none() {
            return Err(self.invalid(
                "keep",
                "keep=on needs name=/NAME (an anonymous object can't be kept)".to_string(),
            ));
        }
        if let Some(name) = &s.name {
            let ok = name.len() >= 2
                && name.len() <= 255
                && name.starts_with('/')
                && !name[1..].contains('/')
                && !name.contains('\0')
                && name != "/."
                && name != "/..";
            if !ok {
                return Err(self.invalid(
                    "name",
                    format!(
                        "name='{name}' is not a POSIX shm name ('/' then 1 to 254 \
                         characters without '/')"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Backend id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Backend type.
    pub fn kind(&self) -> BackendKind {
        self.opts.kind()
    }
    /// Requested size in bytes (0 if unset).
    pub fn size(&self) -> u64 {
        self.size.unwrap_or(0)
    }
    /// `share`: MAP_SHARED, so other processes mapping the same fd see writes.
    pub fn share(&self) -> bool {
        self.share
    }
    /// `prealloc`.
    pub fn prealloc(&self) -> bool {
        self.prealloc
    }
    /// `prealloc-threads` (default 1).
    pub fn prealloc_threads(&self) -> u32 {
        self.prealloc_threads
    }
    /// `reserve` (off: MAP_NORESERVE).
    pub fn reserve(&self) -> bool {
        self.reserve
    }
    /// `merge` (on: MADV_MERGEABLE).
    pub fn merge(&self) -> bool {
        self.merge
    }
    /// `dump` (off: MADV_DONTDUMP).
    pub fn dump(&self) -> bool {
        self.dump
    }
    /// `host-nodes`, sorted.
    pub fn host_nodes(&self) -> &[u32] {
        &self.host_nodes
    }
    /// `policy`.
    pub fn policy(&self) -> HostMemPolicy {
        self.policy
    }
    /// Type-specific options.
    pub fn kind_options(&self) -> &KindOptions {
        &self.opts
    }
    /// `mem-path` of a file backend.
    pub fn mem_path(&self) -> Option<&Path> {
        match &self.opts {
            KindOptions::File(f) => f.mem_path.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> BackendConfig {
        BackendConfig::parse_object(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Asserts that `s` is rejected with a message naming the backend, the option and
    /// the given reason.
    fn rejects(s: &str, option: &str, reason: &str) {
        let e = BackendConfig::parse_object(s).expect_err(s);
        let msg = e.to_string();
        assert_eq!(e.option(), Some(option), "{s}: {msg}");
        assert!(msg.contains(option), "{s}: '{msg}' does not name {option}");
        assert!(msg.contains(reason), "{s}: '{msg}' does not say '{reason}'");
        let kind = s
            .split(',')
            .next()
            .and_then(|t| t.strip_prefix("memory-backend-"));
        let id = s.split(',').find_map(|kv| kv.strip_prefix("id="));
        if let (Some(kind), Some(id)) = (kind, id) {
            assert!(
                msg.starts_with(&format!("{kind} backend '{id}': ")),
                "{s}: {msg}"
            );
        }
    }

    fn syntax_error(s: &str, reason: &str) {
        let e = BackendConfig::parse_object(s).expect_err(s);
        assert!(matches!(e, Error::Syntax { .. }), "{s}: {e:?}");
        assert!(
            e.to_string().contains(reason),
            "{s}: '{e}' does not say '{reason}'"
        );
    }

    #[test]
    fn qemu_defaults() {
        let ram = parse("memory-backend-ram,id=r,size=1G");
        assert_eq!(
            (ram.kind(), ram.id(), ram.size()),
            (BackendKind::Ram, "r", 1 << 30)
        );
        assert!(!ram.share() && !ram.prealloc() && ram.reserve() && ram.merge() && ram.dump());
        assert_eq!(
            (ram.prealloc_threads(), ram.policy()),
            (1, HostMemPolicy::Default)
        );
        assert!(ram.host_nodes().is_empty());
        assert!(parse("memory-backend-memfd,id=m,size=1M").share());
        assert!(parse("memory-backend-shm,id=s,size=1M").share());
        assert!(!parse("memory-backend-file,id=f,size=1M,mem-path=/x").share());
        let KindOptions::Memfd(m) = parse("memory-backend-memfd,id=m,size=1M").opts else {
            panic!("not memfd");
        };
        assert_eq!(
            m,
            MemfdOptions {
                hugetlb: false,
                hugetlbsize: 0,
                seal: true
            }
        );
        let KindOptions::File(f) = parse("memory-backend-file,id=f,size=1M,mem-path=/x").opts
        else {
            panic!("not file");
        };
        assert_eq!(
            (f.align, f.offset, f.readonly, f.discard_data, f.rom),
            (0, 0, false, false, OnOffAuto::Auto)
        );
        assert_eq!(BackendConfig::ram("ram0", 4096), {
            let mut c = parse("memory-backend-ram,id=ram0,size=4K");
            c.size = Some(4096);
            c
        });
    }

    #[test]
    fn all_options_parse() {
        let c = parse(
            "memory-backend-file,id=f,size=1.5G,share=yes,prealloc=on,prealloc-threads=4,\
             reserve=on,merge=off,dump=off,host-nodes=0-1,host-nodes=3,policy=interleave,\
             mem-path=/a,,b,align=2M,offset=4K,discard-data=on,readonly=off,rom=off",
        );
        assert_eq!(c.size(), 3 << 29);
        assert!(c.share() && c.prealloc() && !c.merge() && !c.dump());
        assert_eq!(c.prealloc_threads(), 4);
        assert_eq!(c.host_nodes(), &[0, 1, 3]);
        assert_eq!(c.policy(), HostMemPolicy::Interleave);
        assert_eq!(c.mem_path(), Some(Path::new("/a,b")));
        let KindOptions::File(f) = c.kind_options() else {
            panic!("not file")
        };
        assert_eq!(
            (f.align, f.offset, f.discard_data, f.rom),
            (2 << 20, 4096, true, OnOffAuto::Off)
        );
        let m =
            parse("memory-backend-memfd,id=m,size=2M,hugetlb=on,hugetlbsize=2M,seal=off,share=off");
        assert_eq!(
            m.kind_options(),
            &KindOptions::Memfd(MemfdOptions {
                hugetlb: true,
                hugetlbsize: 2 << 20,
                seal: false
            })
        );
        assert!(!m.share());
        let s = parse("qom-type=memory-backend-shm,id=s,size=1M,name=/shmvm-x,keep=on");
        assert_eq!(
            s.kind_options(),
            &KindOptions::Shm(ShmOptions {
                name: Some("/shmvm-x".to_string()),
                keep: true,
                reclaim: false
            })
        );
        // The last of a repeated option wins, as in QEMU's keyval.
        assert_eq!(
            parse("memory-backend-ram,id=r,size=1M,size=2M").size(),
            2 << 20
        );
    }

    #[test]
    fn syntax_errors() {
        syntax_error("", "missing the object type");
        syntax_error(
            "memory-backend-foo,id=x,size=1M",
            "unknown object type 'memory-backend-foo'",
        );
        syntax_error("memory-backend-ram,size=1M", "needs an id");
        syntax_error(
            "memory-backend-ram,id=0bad,size=1M",
            "id '0bad' is not well formed",
        );
        syntax_error(
            "memory-backend-ram,id=r,size=1M,prealloc",
            "expected '=' after 'prealloc'",
        );
    }

    #[test]
    fn size_errors() {
        rejects("memory-backend-ram,id=r", "size", "size is required");
        rejects(
            "memory-backend-ram,id=r,size=0",
            "size",
            "can't create ram backend with size 0",
        );
        rejects(
            "memory-backend-shm,id=s,size=0",
            "size",
            "can't create shm backend with size 0",
        );
        rejects(
            "memory-backend-ram,id=r,size=12X",
            "size",
            "'12X' is not a size",
        );
        rejects("memory-backend-ram,id=r,size=16E", "size", "too large");
    }

    #[test]
    fn shm_share_off_is_refused() {
        rejects(
            "memory-backend-shm,id=mem0,size=1M,share=off",
            "share",
            "can't create shm backend with share=off",
        );
    }

    #[test]
    fn prealloc_with_reserve_off_is_refused() {
        for s in [
            "memory-backend-ram,id=r,size=1M,prealloc=on,reserve=off",
            "memory-backend-memfd,id=r,size=1M,reserve=off,prealloc=on",
        ] {
            rejects(
                s,
                "prealloc",
                "prealloc=on and reserve=off are incompatible",
            );
        }
        parse("memory-backend-ram,id=r,size=1M,reserve=off");
    }

    #[test]
    fn numa_errors() {
        rejects(
            "memory-backend-ram,id=r,size=1M,host-nodes=0",
            "host-nodes",
            "host-nodes must be empty with policy=default",
        );
        rejects(
            "memory-backend-ram,id=r,size=1M,policy=bind",
            "policy",
            "policy=bind needs host-nodes",
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
    }

    #[test]
    fn value_errors() {
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
    }

    #[test]
    fn file_errors() {
        rejects(
            "memory-backend-file,id=f,size=1M",
            "mem-path",
            "mem-path is required",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=",
            "mem-path",
            "mem-path is empty",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,rom=on",
            "rom",
            "rom=on needs readonly=on",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,rom=off,readonly=on,share=on",
            "rom",
            "rom=off with readonly=on and share=on",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,rom=maybe",
            "rom",
            "expected on, off or auto",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,align=3M",
            "align",
            "must be a power of two",
        );
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,pmem=on",
            "pmem",
            "pmem=on is not supported",
        );
        parse("memory-backend-file,id=f,size=1M,mem-path=/x,pmem=off");
        rejects(
            "memory-backend-file,id=f,size=1M,mem-path=/x,offset=15E",
            "offset",
            "plus size is beyond the largest file offset",
        );
        parse("memory-backend-file,id=f,size=1M,mem-path=/x,rom=off,readonly=on");
        parse("memory-backend-file,id=f,size=1M,mem-path=/x,rom=on,readonly=on,share=on");
    }

    #[test]
    fn memfd_errors() {
        rejects(
            "memory-backend-memfd,id=m,size=4M,hugetlb=on,hugetlbsize=3M",
            "hugetlbsize",
            "must be a power of two",
        );
        rejects(
            "memory-backend-memfd,id=m,size=4M,hugetlbsize=2M",
            "hugetlbsize",
            "hugetlbsize needs hugetlb=on",
        );
    }

    #[test]
    fn shm_errors() {
        rejects(
            "memory-backend-shm,id=s,size=1M,keep=on",
            "keep",
            "keep=on needs name=/NAME",
        );
        for bad in ["x", "/", "/a/b", "/..", &format!("/{}", "n".repeat(255))] {
            rejects(
                &format!("memory-backend-shm,id=s,size=1M,name={bad}"),
                "name",
                "is not a POSIX shm name",
            );
        }
        parse("memory-backend-shm,id=s,size=1M,name=/ok.name-1");
    }

    #[test]
    fn set_is_checked_like_parse() {
        let mut c = BackendConfig::ram("ram0", 1 << 20);
        c.set("prealloc", "on").expect("prealloc");
        c.set("reserve", "off").expect("reserve");
        let e = c.validate().expect_err("prealloc+reserve=off");
        assert!(
            e.to_string()
                .starts_with("ram backend 'ram0': prealloc=on and reserve=off"),
            "{e}"
        );
        assert!(c.set("share", "x").is_err());
    }
}
