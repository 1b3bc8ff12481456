//! The two counting algorithms, as pure arithmetic over the counters the
//! state answers, so they are tested without a gateway.
//!
//! Fixed: one counter per window, started by the first request; exact and
//! cheapest, but a client can send twice the limit across a window edge.
//! Sliding: the counters of the current and previous wall-clock-aligned
//! windows, the previous one weighted by how much of it still overlaps the
//! last `window` (the approximation Cloudflare describes for its limiter);
//! no edge burst, at the cost of a second counter. Aligned windows make every
//! replica agree on which counter is current.

use filter_sdk::v2::state::{Counter, CounterOp};
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy, Default, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Fixed,
    #[default]
    Sliding,
}

/// What one limit says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still allowed in the window after this one.
    pub remaining: u32,
    /// Seconds until the window ends.
    pub reset_s: u64,
    /// Seconds until a request would be allowed again (when refused).
    pub retry_after_s: u64,
}

fn ceil_s(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl Algorithm {
    /// The counter updates this request makes: it always counts itself, so
    /// a client that keeps sending while refused stays refused.
    pub fn ops(self, key: &str, window_ms: u64, now_ms: u64) -> Vec<CounterOp> {
        match self {
            Algorithm::Fixed => vec![CounterOp {
                key: key.to_string(),
                delta: 1,
                window_ms,
            }],
            Algorithm::Sliding => {
                let index = now_ms / window_ms;
                // Each counter lives two windows: its own, then one as "previous".
                vec![
                    CounterOp {
                        key: format!("{key}:{index}"),
                        delta: 1,
                        window_ms: 2 * window_ms,
                    },
                    CounterOp {
                        key: format!("{key}:{}", index.wrapping_sub(1)),
                        delta: 0,
                        window_ms: 2 * window_ms,
                    },
                ]
            }
        }
    }

    /// The verdict from the counters `ops` produced (in that order).
    pub fn verdict(self, counters: &[Counter], limit: u32, window_ms: u64, now_ms: u64) -> Verdict {
        let n = limit as f64;
        match self {
            Algorithm::Fixed => {
                let c = counters[0];
                let used = c.value.max(0) as u64;
                let reset_s = ceil_s(c.ttl_ms);
                Verdict {
                    allowed: used <= limit as u64,
                    limit,
                    remaining: (limit as u64).saturating_sub(used) as u32,
                    reset_s,
                    retry_after_s: reset_s,
                }
            }
            Algorithm::Sliding => {
                let current = counters[0].value.max(0) as f64;
                let previous = counters[1].value.max(0) as f64;
                let w = window_ms as f64;
                let elapsed = (now_ms % window_ms) as f64;
                let left_in_window = w - elapsed;
                let estimate = previous * left_in_window / w + current;
                let allowed = estimate <= n;
                // When would one more request fit? Within this window, once
                // the previous window's weight has shrunk enough; otherwise
                // in the next window, once this one's weight has.
                let wait_ms = if n - current - 1.0 >= 0.0 {
                    if previous > 0.0 {
                        (left_in_window - (n - current - 1.0) * w / previous).max(0.0)
                    } else {
                        0.0
                    }
                } else {
                    left_in_window + (w * (1.0 - (n - 1.0) / current)).max(0.0)
                };
                Verdict {
                    allowed,
                    limit,
                    remaining: (n - estimate).floor().max(0.0) as u32,
                    reset_s: ceil_s(left_in_window as u64),
                    retry_after_s: ceil_s(wait_ms.ceil() as u64),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(value: i64, ttl_ms: u64) -> Counter {
        Counter { value, ttl_ms }
    }

    #[test]
    fn fixed_allows_exactly_the_limit() {
        let f = Algorithm::Fixed;
        let v = f.verdict(&[c(3, 1500)], 3, 2000, 0);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset_s), (0, 2));
        let v = f.verdict(&[c(4, 1500)], 3, 2000, 0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_s, 2);
    }

    #[test]
    fn sliding_weighs_the_previous_window_by_its_overlap() {
        let s = Algorithm::Sliding;
        // A quarter into the window: 3/4 of the previous 8 still counts.
        let v = s.verdict(&[c(3, 0), c(8, 0)], 10, 1000, 10_250);
        assert!(v.allowed, "6 + 3 = 9 <= 10");
        assert_eq!(v.remaining, 1);
        let v = s.verdict(&[c(5, 0), c(8, 0)], 10, 1000, 10_250);
        assert!(!v.allowed, "6 + 5 = 11 > 10");
        // One more fits once 8 * left / 1000 + 6 <= 10: left <= 500 ms,
        // i.e. 250 ms from now.
        assert_eq!(v.retry_after_s, 1);
        assert_eq!(v.reset_s, 1);
    }

    #[test]
    fn sliding_without_history_is_exact() {
        let s = Algorithm::Sliding;
        assert!(s.verdict(&[c(10, 0), c(0, 0)], 10, 1000, 5_999).allowed);
        assert!(!s.verdict(&[c(11, 0), c(0, 0)], 10, 1000, 5_999).allowed);
    }

    #[test]
    fn sliding_counts_in_aligned_windows() {
        let ops = Algorithm::Sliding.ops("k", 1000, 12_345);
        assert_eq!(ops[0].key, "k:12");
        assert_eq!(ops[1].key, "k:11");
        assert_eq!((ops[0].delta, ops[1].delta), (1, 0));
    }
}
