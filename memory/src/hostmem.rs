//! How much memory the host can still give this process: `MemAvailable`
//! from /proc/meminfo, capped by the memory cgroup's limit minus its usage
//! (cgroup v2 `memory.max`/`memory.current`, or v1
//! `memory.limit_in_bytes`/`memory.usage_in_bytes`, on this cgroup and its
//! ancestors). `prealloc=on` beyond it would get the process OOM-killed
//! half way, with no message and a named object left behind, so the
//! backend refuses it up front.

use std::path::{Path, PathBuf};

/// Available memory and what limited it ("MemAvailable" or a cgroup file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    pub source: String,
}

/// `MemAvailable` (bytes) from the text of /proc/meminfo.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// A cgroup limit file's value: `None` for "max" or a v1 "unlimited"
/// (anything at or above 2^62).
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v < 1 << 62)
}

/// The memory cgroup paths of this process from /proc/self/cgroup's text:
/// (v2 path, v1 memory path).
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrl.is_empty() {
            v2 = Some(path.to_string());
        } else if ctrl.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// Room left under the limits of `dir` and each of its ancestors up to
/// `root`: the smallest `limit - usage`.
fn cgroup_room(root: &Path, rel: &str, limit: &str, usage: &str) -> Option<Available> {
    let mut best: Option<Available> = None;
    let mut dir: PathBuf = root.join(rel.trim_start_matches('/'));
    loop {
        if let (Some(l), Some(u)) = (
            read(&dir.join(limit)).as_deref().and_then(parse_limit),
            read(&dir.join(usage)).and_then(|t| t.trim().parse::<u64>().ok()),
        ) {
            let room = l.saturating_sub(u);
            if best.as_ref().is_none_or(|b| room < b.bytes) {
                best = Some(Available {
                    bytes: room,
                    source: format!("{} minus {usage}", dir.join(limit).display()),
                });
            }
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return best;
        }
    }
}

/// What the host can still give, if it can be told.
pub fn available() -> Option<Available> {
    let mut best = read(Path::new("/proc/meminfo"))
        .as_deref()
        .and_then(parse_meminfo)
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable in /proc/meminfo".to_string(),
        });
    let (v2, v1) = read(Path::new("/proc/self/cgroup"))
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let v2_room = v2.and_then(|p| {
        cgroup_room(
            Path::new("/sys/fs/cgroup"),
            &p,
            "memory.max",
            "memory.current",
        )
    });
    let v1_room = v1.and_then(|p| {
        cgroup_room(
            Path::new("/sys/fs/cgroup/memory"),
            &p,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        )
    });
    for room in [v2_room, v1_room].into_iter().flatten() {
        if best.as_ref().is_none_or(|b| room.bytes < b.bytes) {
            best = Some(room);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_limits_parse() {
        let t = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   23806528 kB\n";
        assert_eq!(parse_meminfo(t), Some(23806528 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_limit("junk"), None);
    }

    #[test]
    fn proc_cgroup_v1_and_v2() {
        let t = "4:memory:/a/b\n1:cpu:/\n0::/user.slice\n";
        assert_eq!(
            parse_proc_cgroup(t),
            (Some("/user.slice".into()), Some("/a/b".into()))
        );
        assert_eq!(parse_proc_cgroup("garbage"), (None, None));
    }

    #[test]
    fn cgroup_room_takes_the_tightest_ancestor() {
        let root = std::env::temp_dir().join(format!("shmvm-cg-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).expect("mkdir");
        std::fs::write(root.join("a/memory.max"), "1000\n").expect("w");
        std::fs::write(root.join("a/memory.current"), "400\n").expect("w");
        std::fs::write(leaf.join("memory.max"), "max\n").expect("w");
        std::fs::write(leaf.join("memory.current"), "100\n").expect("w");
        let r = cgroup_room(&root, "/a/b", "memory.max", "memory.current");
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(r.map(|r| r.bytes), Some(600));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_host_says_something() {
        assert!(available().is_some_and(|a| a.bytes > 0));
    }
}
