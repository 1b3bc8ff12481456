//! `[state]`: where plugins keep shared counters, and each filter's share.

use super::{ConfigError, Millis, Source, refuse};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest window a counter may have: two days, so a sliding limit over
/// a day (whose counters live two windows) fits. Longer limits belong in a
/// billing system.
pub const MAX_WINDOW: Duration = Duration::from_secs(2 * 24 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackend {
    /// In this process only: each replica counts for itself.
    Memory,
    /// One Redis shared by every replica.
    Redis,
    /// A Redis Cluster shared by every replica, reached through `nodes`.
    RedisCluster,
}

impl StateBackend {
    pub fn label(self) -> &'static str {
        match self {
            StateBackend::Memory => "memory",
            StateBackend::Redis => "redis",
            StateBackend::RedisCluster => "redis-cluster",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default = "defaults::backend")]
    pub backend: StateBackend,
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS), for
    /// the Redis backend.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` or `rediss://`);
    /// the client learns the rest of the cluster, and follows it through
    /// resharding and failover, from any one of them.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The Redis user (ACL), for either Redis backend; overrides one in the URL.
    pub username: Option<String>,
    /// The Redis password, for either Redis backend, usually
    /// `"${REDIS_PASSWORD}"` so it stays out of the file; overrides one in
    /// the URL. Empty means none.
    pub password: Option<String>,
    /// CA certificates (PEM) a `rediss://` server's certificate must chain
    /// to, relative to this file; the system's CAs when absent.
    pub ca_file: Option<PathBuf>,
    /// The PEM `ca_file` held, read at load.
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
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

    /// The password to give Redis, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref().filter(|p| !p.is_empty())
    }

    /// The Redis URLs this config connects to: `url`, or the cluster's nodes.
    pub fn redis_urls(&self) -> Vec<&str> {
        match self.backend {
            StateBackend::Memory => Vec::new(),
            StateBackend::Redis => self.url.iter().map(String::as_str).collect(),
            StateBackend::RedisCluster => self.nodes.iter().map(String::as_str).collect(),
        }
    }

    /// Reads `ca_file`, so a missing or unreadable one is a config error
    /// at its line rather than a failed connection later.
    pub(super) fn load(&mut self, src: &Source<'_>, base_dir: &Path) -> Result<(), ConfigError> {
        let Some(ca) = &self.ca_file else {
            return Ok(());
        };
        let path = base_dir.join(ca);
        let pem = std::fs::read(&path).map_err(|e| {
            src.error_key(
                &["state", "ca_file"],
                format!("[state] ca_file {}: {e}", path.display()),
            )
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .filter(Result::is_ok)
            .count();
        src.require(certs > 0, &["state", "ca_file"], || {
            format!(
                "[state] ca_file {} holds no PEM certificate",
                path.display()
            )
        })?;
        self.ca_pem = Some(pem);
        Ok(())
    }

    pub(super) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        match self.backend {
            StateBackend::Memory => {}
            StateBackend::Redis => match &self.url {
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
                            "[state] url `{url}` is not a Redis URL; write it like \"redis://127.0.0.1:6379/0\" (or rediss:// for TLS)"
                        ),
                    ));
                }
                Some(_) => {}
            },
            StateBackend::RedisCluster => {
                src.require(!self.nodes.is_empty(), &["state", "backend"], || {
                    "[state] backend \"redis-cluster\" needs `nodes`, like [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]".into()
                })?;
                for (i, node) in self.nodes.iter().enumerate() {
                    let at = ["state".to_string(), "nodes".to_string(), i.to_string()];
                    let at: Vec<&str> = at.iter().map(String::as_str).collect();
                    src.require(is_redis_url(node), &at, || {
                        format!(
                            "[state] node `{node}` is not a Redis URL; write it like \"redis://10.0.0.1:6379\" (or rediss:// for TLS)"
                        )
                    })?;
                    src.require(
                        is_tls(node) == is_tls(&self.nodes[0]),
                        &at,
                        || "[state] nodes mix redis:// and rediss://; a cluster is reached with TLS or without it".into(),
                    )?;
                }
            }
        }
        if self.backend != StateBackend::Redis {
            src.require(self.url.is_none(), &["state", "url"], || {
                format!(
                    "[state] url is for backend \"redis\"; backend \"{}\" {}",
                    self.backend.label(),
                    if self.backend == StateBackend::RedisCluster {
                        "takes `nodes`"
                    } else {
                        "uses no Redis"
                    }
                )
            })?;
        }
        if self.backend != StateBackend::RedisCluster {
            src.require(self.nodes.is_empty(), &["state", "nodes"], || {
                "[state] nodes are for backend \"redis-cluster\"".into()
            })?;
        }
        src.require(
            !self.prefix.contains(['{', '}']),
            &["state", "prefix"],
            || {
                "[state] prefix may not hold `{` or `}`: Redis Cluster reads them as a hash tag"
                    .into()
            },
        )?;
        if self.ca_file.is_some() {
            src.require(
                self.redis_urls().iter().any(|u| is_tls(u)),
                &["state", "ca_file"],
                || "[state] ca_file is for a rediss:// (TLS) Redis; the URL says redis://".into(),
            )?;
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

/// `redis://` or `rediss://` with a host the client can read.
fn is_redis_url(url: &str) -> bool {
    use redis::IntoConnectionInfo;
    (url.starts_with("redis://") || is_tls(url)) && url.into_connection_info().is_ok()
}

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
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
            nodes: Vec::new(),
            username: None,
            password: None,
            ca_file: None,
            ca_pem: None,
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
