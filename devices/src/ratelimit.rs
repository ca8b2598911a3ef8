//! Rate limiting for log lines a guest can trigger: a burst of lines per
//! second, then silence, and the next line that gets through says how many
//! were left out. The full counts live in the statistics, not the log: each
//! device counts what it did, and [`totals`] counts every guest-triggered
//! line, logged or left out, for `--stats`.
//!
//! It lives in `devices/` so device models (PCI root, virtio transport,
//! ivshmem) limit their own lines; the VMM re-exports it as
//! `vmm::ratelimit`.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines allowed per [`WINDOW`].
pub const BURST: u32 = 5;
/// The window the burst refills over.
pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    used: u32,
    dropped: u64,
}

static LINES: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Guest-triggered log lines so far in this process: (asked for, left out).
pub fn totals() -> (u64, u64) {
    (
        LINES.load(Ordering::Relaxed),
        SUPPRESSED.load(Ordering::Relaxed),
    )
}

/// Logs a warning through a [`RateLimit`]: the first [`BURST`] lines per
/// [`WINDOW`], then a count of those left out on the next one let through.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limit.allow() {
            log::warn!(
                "{}{}",
                format_args!($($arg)+),
                $crate::ratelimit::RateLimit::suffix(dropped)
            );
        }
    };
}

/// One limited stream of log lines.
#[derive(Debug, Default)]
pub struct RateLimit(Mutex<Window>);

impl RateLimit {
    /// `Some(lines left out since the last one allowed)` if a line may be
    /// logged now, `None` if it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        LINES.fetch_add(1, Ordering::Relaxed);
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used < BURST {
            w.used += 1;
            Some(std::mem::take(&mut w.dropped))
        } else {
            w.dropped += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// " (N similar lines suppressed)" for a non-zero count, else "".
    pub fn suffix(dropped: u64) -> String {
        if dropped == 0 {
            String::new()
        } else {
            format!(" ({dropped} similar lines suppressed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_a_count() {
        let r = RateLimit::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(r.allow_at(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(r.allow_at(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(r.allow_at(t0 + WINDOW), Some(1000));
        assert_eq!(r.allow_at(t0 + WINDOW), Some(0));
        assert_eq!(RateLimit::suffix(3), " (3 similar lines suppressed)");
        assert_eq!(RateLimit::suffix(0), "");
    }
}
