//! Shared state for plugins: windowed counters that every instance of a
//! filter sees, kept in this process (`memory`) or in one Redis or Redis
//! Cluster that every gateway replica shares (`redis`, `redis-cluster`).
//!
//! A counter is created by the first add, lives for its window and then
//! reads zero again; later adds do not move its expiry. Filters build fixed
//! and sliding window limits from that (see plugins/ratelimit). Keys are
//! namespaced by filter name here, so a filter can neither read nor reset
//! another filter's counters.
//!
//! Each filter holds its counters under a quota (entries, key bytes, the
//! longest window): a filter that creates counters without end is refused
//! alone, and the store keeps room for every other filter.

pub mod memory;
pub mod redis;

use crate::config::{StateBackend, StateConfig};
use crate::telemetry::Metrics;
use opentelemetry::KeyValue;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most operations one call may carry.
pub const MAX_OPS: usize = 16;
/// Longest key a filter may use, in bytes.
pub const MAX_KEY: usize = 256;
pub use crate::config::MAX_WINDOW;

/// One counter update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterOp {
    pub key: String,
    pub delta: i64,
    pub window: Duration,
}

impl CounterOp {
    pub fn new(key: impl Into<String>, delta: i64, window_ms: u64) -> CounterOp {
        CounterOp {
            key: key.into(),
            delta,
            window: Duration::from_millis(window_ms),
        }
    }
}

/// A counter after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub value: i64,
    pub ttl_ms: u64,
}

pub use crate::telemetry::QuotaLimit;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backend did not answer in time or at all; a retry later may work.
    #[error("state unavailable: {0}")]
    Unavailable(String),
    /// The call was malformed or the backend refused it; retrying will not help.
    #[error("state call refused: {0}")]
    Invalid(String),
    /// The call would take the filter past its quota; it may succeed once
    /// some of the filter's counters expire.
    #[error("state quota: {1}")]
    Quota(QuotaLimit, String),
}

impl StateError {
    pub fn kind(&self) -> &'static str {
        match self {
            StateError::Unavailable(_) => "unavailable",
            StateError::Invalid(_) => "invalid",
            StateError::Quota(..) => "quota",
        }
    }
}

/// What one filter may hold in shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Counters held at once (live ones; expired ones free their place).
    pub max_entries: usize,
    /// Bytes of those counters' keys plus a fixed cost per counter, in the
    /// memory backend (Redis holds the keys itself and counts entries only).
    pub max_bytes: usize,
    /// The longest window a counter may be given.
    pub max_window: Duration,
}

/// What one counter costs a quota beyond its key: the entry, its expiry and
/// the map's own bookkeeping, about what the memory backend spends.
pub const ENTRY_COST: usize = 64;

/// What a filter holds in the memory backend right now. Shared by every
/// configuration of the filter of that name, since its counters outlive a
/// reload.
#[derive(Debug, Default)]
pub struct Usage {
    pub entries: AtomicUsize,
    pub bytes: AtomicUsize,
}

/// One filter's handle on the store: its name, quota and usage.
#[derive(Debug)]
pub struct Owner {
    pub filter: Arc<str>,
    pub quota: Quota,
    pub usage: Arc<Usage>,
}

enum Backend {
    Memory(memory::MemoryStore),
    Redis(Box<redis::RedisStore>),
}

/// The state store the runtime lends every filter.
pub struct State {
    backend: Backend,
    label: &'static str,
    metrics: Arc<Metrics>,
    /// When an error was last logged (ms since `epoch`), so an outage
    /// writes one line a second rather than one per request.
    last_error_log_ms: AtomicU64,
    epoch: Instant,
    /// The quota of a filter that sets none of its own.
    default_quota: Quota,
    usage: Mutex<HashMap<Arc<str>, Arc<Usage>>>,
}

impl State {
    /// The in-memory store with default limits, for tools and tests that
    /// have no config.
    pub fn memory(metrics: Arc<Metrics>) -> State {
        State::from_config(&StateConfig::default(), metrics)
    }

    /// Builds the configured backend. The Redis backend connects lazily and
    /// reconnects by itself, so a gateway starts even while Redis is down.
    pub fn from_config(cfg: &StateConfig, metrics: Arc<Metrics>) -> State {
        let (backend, label) = match cfg.backend {
            StateBackend::Memory => (
                Backend::Memory(memory::MemoryStore::new(cfg.max_entries)),
                "memory",
            ),
            StateBackend::Redis | StateBackend::RedisCluster => (
                Backend::Redis(Box::new(redis::RedisStore::new(cfg))),
                cfg.backend.label(),
            ),
        };
        metrics.declare_state(label);
        State {
            backend,
            label,
            metrics,
            last_error_log_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            default_quota: Quota {
                max_entries: cfg.filter_max_entries(),
                max_bytes: cfg.filter_max_bytes,
                max_window: cfg.filter_max_window.0,
            },
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// Connects a shared backend ahead of the first request.
    pub async fn warm(&self) {
        if let Backend::Redis(r) = &self.backend {
            r.warm().await;
        }
    }

    /// The quota a filter gets unless its table sets its own.
    pub fn default_quota(&self) -> Quota {
        self.default_quota
    }

    /// The handle a filter uses the store through, under `quota`. Every
    /// configuration of one filter name shares its usage, which its
    /// counters carry across reloads.
    pub fn owner(&self, filter: &Arc<str>, quota: Quota) -> Arc<Owner> {
        let usage = self.usage.lock().entry(filter.clone()).or_default().clone();
        self.metrics.declare_state_quota(filter);
        Arc::new(Owner {
            filter: filter.clone(),
            quota,
            usage,
        })
    }

    pub fn backend(&self) -> &'static str {
        self.label
    }

    /// Applies `ops` for `owner` atomically, answering in order.
    pub async fn add(&self, owner: &Owner, ops: &[CounterOp]) -> Result<Vec<Counter>, StateError> {
        let started = Instant::now();
        let out = match validate(ops, &owner.quota) {
            Err(e) => Err(e),
            Ok(()) => match &self.backend {
                Backend::Memory(m) => m.add(owner, ops),
                Backend::Redis(r) => r.add(owner, ops).await,
            },
        };
        self.record(owner, started, &out);
        out
    }

    fn log_error(&self, filter: &str, e: &StateError) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_error_log_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_error_log_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                filter,
                backend = self.label,
                "{e} (further state errors this second are counted, not logged)"
            );
        }
    }
}

/// Largest value a filter may keep under one key.
pub const MAX_KV_VALUE: usize = 64 * 1024;

/// One key-value call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Get,
    Set {
        value: bytes::Bytes,
        ttl: Duration,
    },
    Delete,
    /// Set only if the key holds `expected` (`None`: is not set).
    CompareAndSet {
        expected: Option<bytes::Bytes>,
        value: bytes::Bytes,
        ttl: Duration,
    },
}

impl KvOp {
    fn label(&self) -> &'static str {
        match self {
            KvOp::Get => "get",
            KvOp::Set { .. } => "set",
            KvOp::Delete => "delete",
            KvOp::CompareAndSet { .. } => "compare_and_set",
        }
    }
}

/// What a key-value call answers: a value read, or whether it changed
/// anything (`delete`: the key was set; `compare-and-set`: it matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvAnswer {
    Value(Option<bytes::Bytes>),
    Done(bool),
}

impl State {
    /// Applies one key-value call for `owner`, atomically on its key.
    pub async fn kv(&self, owner: &Owner, key: &str, op: KvOp) -> Result<KvAnswer, StateError> {
        let started = Instant::now();
        let out = match validate_kv(key, &op, &owner.quota) {
            Err(e) => Err(e),
            Ok(()) => match &self.backend {
                Backend::Memory(m) => m.kv(owner, key, &op),
                Backend::Redis(r) => r.kv(owner, key, &op).await,
            },
        };
        self.record(owner, started, &out);
        tracing::trace!(filter = &*owner.filter, op = op.label(), "kv call");
        out
    }

    /// Counts and times a call, and logs its error (at most once a second).
    fn record<T>(&self, owner: &Owner, started: Instant, out: &Result<T, StateError>) {
        if let Err(StateError::Quota(limit, _)) = out {
            self.metrics.count_state_quota(&owner.filter, limit.label());
        }
        let result = match out {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics.state_calls.add(
            1,
            &[
                KeyValue::new("backend", self.label),
                KeyValue::new("result", result),
            ],
        );
        self.metrics.state_duration.record(
            started.elapsed().as_secs_f64(),
            &[KeyValue::new("backend", self.label)],
        );
        if let Err(e) = out {
            self.log_error(&owner.filter, e);
        }
    }
}

fn validate_kv(key: &str, op: &KvOp, quota: &Quota) -> Result<(), StateError> {
    let (value, ttl) = match op {
        KvOp::Get | KvOp::Delete => (None, None),
        KvOp::Set { value, ttl } => (Some(value), Some(*ttl)),
        KvOp::CompareAndSet { value, ttl, .. } => (Some(value), Some(*ttl)),
    };
    if let Some(v) = value
        && v.len() > MAX_KV_VALUE
    {
        return Err(StateError::Invalid(format!(
            "a value of {} bytes; the most is {MAX_KV_VALUE}",
            v.len()
        )));
    }
    // A key and a lifetime are checked as a counter's key and window are.
    let window = ttl.unwrap_or(Duration::from_millis(1));
    validate(
        &[CounterOp {
            key: key.to_string(),
            delta: 0,
            window,
        }],
        quota,
    )
}

fn validate(ops: &[CounterOp], quota: &Quota) -> Result<(), StateError> {
    if ops.is_empty() || ops.len() > MAX_OPS {
        return Err(StateError::Invalid(format!(
            "{} operations in one call; send 1 to {MAX_OPS}",
            ops.len()
        )));
    }
    for op in ops {
        if op.key.is_empty() || op.key.len() > MAX_KEY {
            return Err(StateError::Invalid(format!(
                "a key must be 1 to {MAX_KEY} bytes, not {}",
                op.key.len()
            )));
        }
        if op.window.is_zero() || op.window > MAX_WINDOW {
            return Err(StateError::Invalid(format!(
                "window of {} ms for `{}`; use 1 ms to two days",
                op.window.as_millis(),
                crate::telemetry::escape(&op.key)
            )));
        }
        if op.window > quota.max_window {
            return Err(StateError::Quota(
                QuotaLimit::Window,
                format!(
                    "window of {} ms for `{}`; this filter's longest is {} ms (state_max_window)",
                    op.window.as_millis(),
                    crate::telemetry::escape(&op.key),
                    quota.max_window.as_millis()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, delta: i64, ms: u64) -> CounterOp {
        CounterOp::new(key, delta, ms)
    }

    const QUOTA: Quota = Quota {
        max_entries: 10,
        max_bytes: 10_000,
        max_window: Duration::from_secs(60),
    };

    #[test]
    fn malformed_calls_are_refused_before_any_backend() {
        assert!(matches!(validate(&[], &QUOTA), Err(StateError::Invalid(_))));
        assert!(matches!(
            validate(&[op("", 1, 10)], &QUOTA),
            Err(StateError::Invalid(_))
        ));
        assert!(matches!(
            validate(&[op("k", 1, 0)], &QUOTA),
            Err(StateError::Invalid(_))
        ));
        let many: Vec<_> = (0..=MAX_OPS).map(|i| op(&i.to_string(), 1, 10)).collect();
        assert!(matches!(
            validate(&many, &QUOTA),
            Err(StateError::Invalid(_))
        ));
        assert!(validate(&[op("k", 1, 10)], &QUOTA).is_ok());
    }

    #[test]
    fn a_window_past_the_filters_longest_is_a_quota_refusal() {
        assert!(validate(&[op("k", 1, 60_000)], &QUOTA).is_ok());
        assert!(matches!(
            validate(&[op("k", 1, 60_001)], &QUOTA),
            Err(StateError::Quota(QuotaLimit::Window, _))
        ));
    }
}
