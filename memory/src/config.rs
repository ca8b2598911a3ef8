//! Backend configuration: QEMU's `memory-backend-*` options, parsed and validated.
//!
//! Everything that can be checked without touching the host is checked here, so a bad
//! command line fails before any memory, file or shm object exists.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::Error;

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
    /// Every backend type.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Ram,
        BackendKind::File,
        BackendKind::Memfd,
        BackendKind::Shm,
    ];

    /// The QEMU object type, e.g. `memory-backend-shm`.
    pub fn qom_type(self) -> &'static str {
        match self {
            BackendKind::Ram => "memory-backend-ram",
            BackendKind::File => "memory-backend-file",
            BackendKind::Memfd => "memory-backend-memfd",
            BackendKind::Shm => "memory-backend-shm",
        }
    }

    /// The kind for a QEMU object type name.
    pub fn from_qom_type(s: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.qom_type() == s)
    }

    /// QEMU's default for `share`: on for memfd and shm, off otherwise.
    pub fn default_share(self) -> bool {
        matches!(self, BackendKind::Memfd | BackendKind::Shm)
    }

    /// The options only this type takes (QEMU names).
    pub fn options(self) -> &'static [&'static str] {
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

/// The options every backend type takes (QEMU names).
pub const COMMON_OPTIONS: &[&str] = &[
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
    /// QEMU's name for the policy.
    pub fn name(self) -> &'static str {
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

/// What a memfd backend answers where there is no memfd_create (QEMU builds
/// `memory-backend-memfd` on Linux only, so it knows no such object type there).
pub(crate) const MEMFD_UNSUPPORTED: &str = "invalid object type: memory-backend-memfd \
    (memfd_create is Linux-only; use memory-backend-shm or memory-backend-file)";

/// The host's limits that the configuration rules depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostRules {
    /// memfd, MAP_NORESERVE (reserve=off) and mbind (host-nodes) exist: Linux.
    pub linux: bool,
    /// The longest shm name, its leading '/' included: 31 on macOS
    /// (PSHMNAMLEN), 255 elsewhere (NAME_MAX).
    pub shm_name_max: usize,
}

impl HostRules {
    /// This host's.
    pub(crate) const THIS: HostRules = HostRules {
        linux: cfg!(target_os = "linux"),
        shm_name_max: if cfg!(target_os = "macos") { 31 } else { 255 },
    };
    /// macOS's (for tests on other hosts).
    #[cfg(test)]
    pub(crate) const MACOS: HostRules = HostRules {
        linux: false,
        shm_name_max: 31,
    };
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
    /// The backend type these options belong to.
    pub fn kind(&self) -> BackendKind {
        match self {
            KindOptions::Ram => BackendKind::Ram,
            KindOptions::File(_) => BackendKind::File,
            KindOptions::Memfd(_) => BackendKind::Memfd,
            KindOptions::Shm(_) => BackendKind::Shm,
        }
    }

    /// QEMU's defaults for `kind`.
    pub fn new(kind: BackendKind) -> KindOptions {
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

/// QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'.
pub fn id_is_well_formed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// The properties every backend type takes, typed; `None` keeps QEMU's
/// default. The VMM's configuration layer fills it from `-object` (or from
/// `-m`, `-mem-path`, `-mem-prealloc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendProps {
    pub size: Option<u64>,
    pub share: Option<bool>,
    pub prealloc: Option<bool>,
    pub prealloc_threads: Option<u32>,
    pub reserve: Option<bool>,
    pub merge: Option<bool>,
    pub dump: Option<bool>,
    /// Sorted, without duplicates.
    pub host_nodes: Vec<u32>,
    pub policy: Option<HostMemPolicy>,
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

    /// Builds and validates a backend from typed properties: `opts` says the
    /// type and carries its own options, `props` the common ones.
    pub fn from_props(
        id: &str,
        props: BackendProps,
        opts: KindOptions,
    ) -> Result<BackendConfig, Error> {
        let kind = opts.kind();
        if !id_is_well_formed(id) {
            return Err(Error::Invalid {
                kind,
                id: id.to_string(),
                option: "id".to_string(),
                reason: format!(
                    "id '{id}' is not well formed (a letter, then letters, digits, '-', '.' or '_')"
                ),
            });
        }
        let d = BackendConfig::new(kind, id);
        let cfg = BackendConfig {
            size: props.size,
            share: props.share.unwrap_or(d.share),
            prealloc: props.prealloc.unwrap_or(d.prealloc),
            prealloc_threads: props.prealloc_threads.unwrap_or(d.prealloc_threads),
            reserve: props.reserve.unwrap_or(d.reserve),
            merge: props.merge.unwrap_or(d.merge),
            dump: props.dump.unwrap_or(d.dump),
            host_nodes: props.host_nodes,
            policy: props.policy.unwrap_or(d.policy),
            opts,
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// An error about `option` of this backend.
    pub fn invalid(&self, option: &str, reason: String) -> Error {
        Error::Invalid {
            kind: self.kind(),
            id: self.id.clone(),
            option: option.to_string(),
            reason,
        }
    }

    /// Sets `prealloc` (QEMU's `-mem-prealloc` on the RAM backend).
    pub fn set_prealloc(&mut self, on: bool) {
        self.prealloc = on;
    }

    /// Checks every rule that needs no system call. [`crate::Backend::create`] calls it
    /// too, so a config built with [`BackendConfig::set`] is held to the same rules.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_for(HostRules::THIS)
    }

    /// [`BackendConfig::validate`] with another host's rules (unit tests check the
    /// rules of macOS and the BSDs on Linux).
    pub(crate) fn validate_for(&self, host: HostRules) -> Result<(), Error> {
        let size = self
            .size
            .ok_or_else(|| self.invalid("size", "size is required (e.g. size=1G)".to_string()))?;
        if self.prealloc_threads == 0 {
            return Err(self.invalid(
                "prealloc-threads",
                "prealloc-threads=0: expected a number of threads > 0".to_string(),
            ));
        }
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
        if !self.reserve && !host.linux {
            return Err(self.invalid(
                "reserve",
                "reserve=off: skipping reservation of swap space is not supported on this \
                 host (MAP_NORESERVE is Linux-only)"
                    .to_string(),
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
        if !self.host_nodes.is_empty() && !host.linux {
            return Err(self.invalid(
                "host-nodes",
                "NUMA node binding is not supported on this host (mbind is Linux-only)".to_string(),
            ));
        }
        match &self.opts {
            KindOptions::Ram => {}
            KindOptions::File(f) => self.validate_file(f)?,
            KindOptions::Memfd(m) => self.validate_memfd(m, host)?,
            KindOptions::Shm(s) => self.validate_shm(s, host)?,
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

    fn validate_memfd(&self, m: &MemfdOptions, host: HostRules) -> Result<(), Error> {
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
        if !host.linux {
            return Err(self.invalid("qom-type", MEMFD_UNSUPPORTED.to_string()));
        }
        Ok(())
    }

    fn validate_shm(&self, s: &ShmOptions, host: HostRules) -> Result<(), Error> {
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
                && name.len() <= host.shm_name_max
                && name.starts_with('/')
                && !name[1..].contains('/')
                && !name.contains('\0')
                && name != "/."
                && name != "/..";
            if !ok {
                return Err(self.invalid(
                    "name",
                    format!(
                        "name='{name}' is not a POSIX shm name on this host ('/' then 1 to \
                         {} characters without '/')",
                        host.shm_name_max - 1
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

    use crate::testutil::object;

    fn parse(s: &str) -> BackendConfig {
        object(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Asserts that `s` is rejected with a message naming the backend, the option and
    /// the given reason.
    fn rejects(s: &str, option: &str, reason: &str) {
        let e = object(s).expect_err(s);
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
            "memory-backend-file,id=f,size=1536M,share=yes,prealloc=on,prealloc-threads=4,\
             reserve=on,merge=off,dump=off,host-nodes=0,host-nodes=1,host-nodes=3,policy=interleave,\
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
    fn file_errors() {
        rejects(
            "memory-backend-file,id=f,size=1M",
            "mem-path",
            "mem-path is required",
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
            "memory-backend-file,id=f,size=1M,mem-path=/x,align=3M",
            "align",
            "must be a power of two",
        );
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

    /// macOS's rules, checked here: what it lacks is refused with one line
    /// naming the option, and its shm names are at most 31 bytes (PSHMNAMLEN).
    #[test]
    fn macos_rules() {
        let on_macos = |spec: &str, option: &str, reason: &str| {
            let e = parse(spec).validate_for(HostRules::MACOS).expect_err(spec);
            assert_eq!(e.option(), Some(option), "{spec}: {e}");
            assert!(e.to_string().contains(reason), "{spec}: {e}");
        };
        on_macos(
            "memory-backend-memfd,id=m,size=1M",
            "qom-type",
            "invalid object type: memory-backend-memfd",
        );
        on_macos(
            "memory-backend-ram,id=r,size=1M,reserve=off",
            "reserve",
            "skipping reservation of swap space is not supported",
        );
        on_macos(
            "memory-backend-ram,id=r,size=1M,host-nodes=0,policy=bind",
            "host-nodes",
            "NUMA node binding is not supported",
        );
        let name32 = format!("/{}", "n".repeat(31));
        let spec = format!("memory-backend-shm,id=s,size=1M,name={name32}");
        on_macos(&spec, "name", "'/' then 1 to 30 characters");
        parse(&spec).validate().expect("32 bytes are fine on Linux");
        for ok in [
            "memory-backend-ram,id=r,size=1M,share=on,dump=off,merge=on",
            "memory-backend-file,id=f,size=1M,mem-path=/tmp/x,share=on",
            &format!("memory-backend-shm,id=s,size=1M,name=/{}", "n".repeat(30)),
        ] {
            parse(ok)
                .validate_for(HostRules::MACOS)
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
