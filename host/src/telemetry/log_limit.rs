//! Rate limits for log lines written on the request path. A failing filter
//! or a dead instance fails every request; a line for each would have the
//! worker threads formatting and writing logs instead of serving, and would
//! bury everything else. Each kind of line is let through at most once a
//! second, and the line that gets through says how many like it were left
//! out since the last one, so the log still tells how much happened (the
//! metrics count every event exactly).
//!
//! Checking costs a load and, at most once a second, a compare-and-swap:
//! no lock on the path of a line that is left out.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Each kind of line is written at most once in this many nanoseconds.
pub const PERIOD_NS: u64 = 1_000_000_000;

/// One kind of line: at most one per [`PERIOD_NS`].
#[derive(Debug, Default)]
pub struct LogLimit {
    /// When the next line may be written, on `crate::clock`'s scale.
    next_ns: AtomicU64,
    /// Lines left out since the last one written.
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            next_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: if so, with how many were left
    /// out before it; if not, it is counted as left out.
    pub fn admit(&self) -> Option<Suppressed> {
        self.admit_at(crate::clock::monotonic_ns())
    }

    /// `admit` at a given time, in nanoseconds on `crate::clock`'s scale.
    pub fn admit_at(&self, now_ns: u64) -> Option<Suppressed> {
        let next = self.next_ns.load(Ordering::Relaxed);
        // Of the callers that find the period over, the one whose swap
        // lands writes; the rest are counted like any other left out.
        let won = now_ns >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now_ns.saturating_add(PERIOD_NS),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
        if !won {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // A line counted between the swap and here is reported now rather
        // than with the next line: every suppressed line is reported once.
        Some(Suppressed(self.suppressed.swap(0, Ordering::AcqRel)))
    }
}

/// Up to `per_period` lines each period, for a source that writes lines of
/// its own choosing (a filter's `log`): enough for a filter that reports
/// what it decides, not enough to flood the log. The first line let through
/// in a new period says how many the last period left out.
#[derive(Debug)]
pub struct LogQuota {
    per_period: u64,
    /// When the current period ends, on `crate::clock`'s scale.
    period_end_ns: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl LogQuota {
    pub const fn new(per_period: u64) -> LogQuota {
        LogQuota {
            per_period,
            period_end_ns: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    pub fn admit(&self) -> Option<Suppressed> {
        self.admit_at(crate::clock::monotonic_ns())
    }

    pub fn admit_at(&self, now_ns: u64) -> Option<Suppressed> {
        let end = self.period_end_ns.load(Ordering::Acquire);
        if now_ns >= end
            && self
                .period_end_ns
                .compare_exchange(
                    end,
                    now_ns.saturating_add(PERIOD_NS),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.used.store(0, Ordering::Release);
        }
        if self.used.fetch_add(1, Ordering::AcqRel) >= self.per_period {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Suppressed(self.suppressed.swap(0, Ordering::AcqRel)))
    }
}

/// How many lines like the one being written were left out before it.
/// Displays as nothing when none were, else as ` (N similar suppressed)`,
/// to be put at the end of the line's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar suppressed)"),
        }
    }
}

/// Keys a [`KeyedLogLimit`] keeps a limit of its own for; lines of keys
/// beyond share one, so names that change with every reload cannot grow the
/// table without bound.
const MAX_KEYS: usize = 1024;

/// Limits for lines whose kind is known only at request time, such as a
/// filter's name and a failure reason: one [`LogLimit`] per key, made the
/// first time the key is seen.
#[derive(Debug, Default)]
pub struct KeyedLogLimit {
    /// By the key's hash: two keys sharing a 64-bit hash share a limit,
    /// which can only leave out more lines, never write more.
    limits: RwLock<HashMap<u64, LogLimit>>,
    overflow: LogLimit,
}

impl KeyedLogLimit {
    pub fn new() -> KeyedLogLimit {
        KeyedLogLimit::default()
    }

    /// [`LogLimit::admit`] for the lines of `key`.
    pub fn admit(&self, key: impl Hash) -> Option<Suppressed> {
        self.admit_at(key, crate::clock::monotonic_ns())
    }

    pub fn admit_at(&self, key: impl Hash, now_ns: u64) -> Option<Suppressed> {
        // A fixed-key hasher: the key only picks a limit, and the keys come
        // from the configuration, not from clients.
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let key = h.finish();
        if let Some(l) = self.limits.read().get(&key) {
            return l.admit_at(now_ns);
        }
        let mut limits = self.limits.write();
        if limits.len() >= MAX_KEYS && !limits.contains_key(&key) {
            return self.overflow.admit_at(now_ns);
        }
        limits.entry(key).or_default().admit_at(now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn one_line_a_second_and_the_next_says_how_many_were_left_out() {
        let l = LogLimit::new();
        let t0 = 5_000 * MS;
        assert_eq!(l.admit_at(t0), Some(Suppressed(0)), "the first goes");
        for i in 1..1000 {
            assert_eq!(l.admit_at(t0 + i * MS / 2), None, "within the second");
        }
        assert_eq!(l.admit_at(t0 + 999 * MS), None);
        assert_eq!(l.admit_at(t0 + 1000 * MS), Some(Suppressed(1000)));
        // Quiet for a while: the next line goes at once and left out none.
        assert_eq!(l.admit_at(t0 + 10_000 * MS), Some(Suppressed(0)));
        assert_eq!(l.admit_at(t0 + 10_001 * MS), None);
        // The period runs from the last line written, not from a grid.
        assert_eq!(l.admit_at(t0 + 10_999 * MS), None);
        assert_eq!(l.admit_at(t0 + 11_000 * MS), Some(Suppressed(2)));
    }

    #[test]
    fn from_the_start_of_the_clock() {
        let l = LogLimit::new();
        assert_eq!(l.admit_at(0), Some(Suppressed(0)));
        assert_eq!(l.admit_at(PERIOD_NS - 1), None);
        assert_eq!(l.admit_at(PERIOD_NS), Some(Suppressed(1)));
    }

    #[test]
    fn the_count_reads_as_the_end_of_a_message() {
        assert_eq!(format!("try failed{}", Suppressed(0)), "try failed");
        assert_eq!(
            format!("try failed{}", Suppressed(1234)),
            "try failed (1234 similar suppressed)"
        );
    }

    #[test]
    fn each_key_has_its_own_limit() {
        let k = KeyedLogLimit::new();
        let t0 = 7_000 * MS;
        assert!(k.admit_at(("auth", "trap"), t0).is_some());
        assert!(k.admit_at(("auth", "deadline"), t0).is_some());
        assert!(k.admit_at(("jwt", "trap"), t0).is_some());
        assert!(k.admit_at(("auth", "trap"), t0 + MS).is_none());
        assert!(k.admit_at(("auth", "deadline"), t0 + MS).is_none());
        assert!(k.admit_at(("auth", "deadline"), t0 + MS).is_none());
        assert_eq!(
            k.admit_at(("auth", "trap"), t0 + PERIOD_NS),
            Some(Suppressed(1))
        );
        assert_eq!(
            k.admit_at(("auth", "deadline"), t0 + PERIOD_NS),
            Some(Suppressed(2))
        );
    }

    #[test]
    fn keys_past_the_cap_share_one_limit() {
        let k = KeyedLogLimit::new();
        for i in 0..MAX_KEYS {
            assert!(k.admit_at(i, 0).is_some());
        }
        assert!(k.admit_at("one more", 0).is_some());
        assert!(k.admit_at("and another", 0).is_none());
        assert_eq!(k.limits.read().len(), MAX_KEYS);
        // Keys already known keep their own.
        assert!(k.admit_at(3usize, PERIOD_NS).is_some());
    }

    #[test]
    fn under_contention_every_line_is_written_or_counted_once() {
        let l = std::sync::Arc::new(LogLimit::new());
        let calls_per_thread = 20_000u64;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let (mut written, mut reported) = (0u64, 0u64);
                    for i in 0..calls_per_thread {
                        // Time moves on across the threads' calls, so some
                        // periods end while others are counting.
                        if let Some(Suppressed(n)) = l.admit_at((i * 4 + t) * 100_000) {
                            written += 1;
                            reported += n;
                        }
                    }
                    (written, reported)
                })
            })
            .collect();
        let (written, reported) = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |(w, r), (w2, r2)| (w + w2, r + r2));
        let left = l.suppressed.load(Ordering::Relaxed);
        assert_eq!(written + reported + left, 4 * calls_per_thread);
        assert!(written >= 2, "time passed several periods: {written}");
    }

    #[test]
    fn a_quota_lets_its_lines_through_each_period_and_reports_the_rest() {
        let q = LogQuota::new(3);
        let t = 5 * PERIOD_NS;
        let admitted: Vec<_> = (0..10).map(|i| q.admit_at(t + i)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(admitted[0], Some(Suppressed(0)));
        assert_eq!(q.admit_at(t + PERIOD_NS), Some(Suppressed(7)));
        assert_eq!(q.admit_at(t + PERIOD_NS + 1), Some(Suppressed(0)));
    }
}
