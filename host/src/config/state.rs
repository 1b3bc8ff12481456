//! `[state]`: where plugins keep shared counters, and each filter's share.

use super::{ConfigError, Millis, Source, refuse};
use serde::Deserialize;
use std::time::Duration;

/// The longest window a counter may have: two days, so a sliding limit over
/// a day (whose counters live two windows) fits. Longer limits belong in a
/// billing system.
pub const MAX_WINDOW: Duration = Duration::from_secs(2 * 24 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process only: each replica counts for itself.
    Memory,
    /// One Redis shared by every replica.
    Redis,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default = "defaults::backend")]
    pub backend: StateBackend,
    /// `redis://[user:password@]host:port[/db]`, for the Redis backend.
    pub url: Option<String>,
    /// Prepended to every Redis key, so several gateways' deployments can
    /// share one Redis without sharing counters.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    /// The longest one state call may take, connecting included; past it
    /// the filter is told the state is unavailable.
    #[serde(default = "defaults::timeout")]
    pub timeout: Millis,
    /// Redis connections kept open.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// The most counters the memory backend holds; past it new counters
    /// are refused until old ones expire.
    #[serde(default = "defaults::max_entries")]
    pub max_entries: usize,
    /// The counters one filter may hold at once unless its table sets
    /// `state_max_entries`; by default a tenth of `max_entries`, so no one
    /// filter can fill the store. Also the Redis backend's per-filter cap.
    pub filter_max_entries: Option<usize>,
    /// The bytes of counter keys (plus 64 per counter) one filter may hold
    /// in the memory backend unless it sets `state_max_bytes`.
    #[serde(default = "defaults::filter_max_bytes")]
    pub filter_max_bytes: usize,
    /// The longest window a filter may give a counter unless it sets
    /// `state_max_window`; at most two days.
    #[serde(default = "defaults::filter_max_window")]
    pub filter_max_window: Millis,
}

impl StateConfig {
    /// The per-filter entry quota, written or derived from `max_entries`.
    pub fn filter_max_entries(&self) -> usize {
        self.filter_max_entries
            .unwrap_or((self.max_entries / 10).max(1))
    }

    pub(super) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        if self.backend == StateBackend::Redis {
            match &self.url {
                None => {
                    return Err(src.error_key(
                        &["state", "backend"],
                        "[state] backend \"redis\" needs a `url`, like \"redis://127.0.0.1:6379\"",
                    ));
                }
                Some(url) if !is_redis_url(url) => {
                    return Err(src.error_key(
                        &["state", "url"],
                        format!(
                            "[state] url `{url}` is not a Redis URL; write it like \"redis://127.0.0.1:6379/0\""
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        refuse(
            src,
            &["state"],
            &[
                (
                    "timeout",
                    self.timeout.0.is_zero(),
                    "would fail every state call as unavailable",
                    "use a duration like \"25ms\"",
                ),
                (
                    "pool_size",
                    self.pool_size == 0,
                    "leaves no connection to Redis",
                    "use 1 or more, like 8",
                ),
                (
                    "max_entries",
                    self.max_entries == 0,
                    "would refuse every counter",
                    "use a count like 1000000",
                ),
                (
                    "filter_max_entries",
                    self.filter_max_entries == Some(0),
                    "would refuse every filter's counters",
                    "use a count like 100000",
                ),
                (
                    "filter_max_bytes",
                    self.filter_max_bytes == 0,
                    "would refuse every filter's counters",
                    "use a size like 16777216",
                ),
                (
                    "filter_max_window",
                    !window_in_range(self.filter_max_window),
                    "is out of range",
                    "use 1ms to 2d",
                ),
            ],
        )
    }
}

/// `redis://` with a host the client can read.
fn is_redis_url(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    url.starts_with("redis://") && url.into_connection_info().is_ok()
}

/// Whether a counter window may be this long.
pub(super) fn window_in_range(w: Millis) -> bool {
    !w.0.is_zero() && w.0 <= MAX_WINDOW
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: defaults::backend(),
            url: None,
            prefix: defaults::prefix(),
            timeout: defaults::timeout(),
            pool_size: defaults::pool_size(),
            max_entries: defaults::max_entries(),
            filter_max_entries: None,
            filter_max_bytes: defaults::filter_max_bytes(),
            filter_max_window: defaults::filter_max_window(),
        }
    }
}

mod defaults {
    use super::*;
    pub fn backend() -> StateBackend {
        StateBackend::Memory
    }
    pub fn prefix() -> String {
        "gateway".to_string()
    }
    pub fn timeout() -> Millis {
        Millis(Duration::from_millis(25))
    }
    pub fn pool_size() -> usize {
        8
    }
    pub fn max_entries() -> usize {
        1_000_000
    }
    pub fn filter_max_bytes() -> usize {
        16 * 1024 * 1024
    }
    pub fn filter_max_window() -> Millis {
        Millis(MAX_WINDOW)
    }
}
