//! The gateway's TOML configuration: the schema, `${VAR}` expansion, and the
//! checks that span fields. Every refusal names the file, line and column
//! of the file as written (variables expanded or not) and says in one
//! sentence what to change.
//!
//! `${NAME}` and `${NAME:-default}` are expanded inside string values only,
//! after parsing: never in keys, comments, numbers or booleans.

use serde::Deserialize;
use serde_spanned::Spanned;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

/// The configuration shipped in the binary, served when `config/gateway.toml`
/// is not found next to the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/gateway.toml");

/// A configuration refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    /// An echo upstream the gateway runs itself, for demos and tests.
    pub echo: Option<EchoConfig>,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where plugins keep shared counters.
    #[serde(default)]
    pub state: StateConfig,
    /// How file changes are taken up while serving.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// One JSON line per request; off unless the table is present.
    pub access_log: Option<AccessLogConfig>,
    /// OTLP trace export; off unless the table is present.
    pub tracing: Option<TracingConfig>,
    #[serde(default)]
    pub filters: BTreeMap<String, FilterConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The directory relative paths are resolved from (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long a client may take to send its request headers.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Millis,
    /// Default time for the whole upstream exchange, per route overridable.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Millis,
    /// Largest request head (request line plus headers), answered with 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header lines in a request, answered with 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Largest request body, answered with 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Keep the client's `X-Forwarded-*` and `X-Request-Id` (only behind a
    /// trusted proxy); otherwise the gateway replaces them.
    #[serde(default)]
    pub trust_forwarded: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Millis,
    /// How long a connection may sit with no request in progress (an
    /// HTTP/1.1 keep-alive between requests, an HTTP/2 connection with no
    /// open stream) before the gateway closes it.
    #[serde(default = "defaults::client_idle_timeout")]
    pub idle_timeout: Spanned<Millis>,
    /// How often the gateway pings an HTTP/2 client...
    #[serde(default = "defaults::http2_keepalive_interval")]
    pub http2_keepalive_interval: Spanned<Millis>,
    /// ...and how long it waits for the answer before dropping the
    /// connection, so a vanished peer does not hold its streams open.
    #[serde(default = "defaults::http2_keepalive_timeout")]
    pub http2_keepalive_timeout: Spanned<Millis>,
    /// Client connections open at once on the listener; past it a new
    /// connection is answered 503 `too-many-connections` and closed.
    #[serde(default = "defaults::max_client_connections")]
    pub max_connections: Spanned<usize>,
    /// Connections open at once from one client IP address; past it a new
    /// one is answered 503 `too-many-client-connections`. No limit when absent.
    pub max_connections_per_client: Option<Spanned<usize>>,
    /// What to do with `;` parameters in path segments (`/a;jsessionid=1`),
    /// which Java upstreams strip before resolving `..`.
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Pass request headers whose names contain `_`. Off by default, as in
    /// nginx: CGI-style upstreams read `X_User` as `X-User`.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// Threads serving client connections, each with a single-threaded
    /// runtime of its own; one per core the process may run on when absent.
    /// Read at start.
    pub workers: Option<Spanned<usize>>,
}

impl ServerConfig {
    /// How many threads serve client connections.
    pub fn worker_count(&self) -> usize {
        match &self.workers {
            Some(n) => *n.get_ref(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Refuses zeros that would silently turn a protection off (or close
    /// every connection at once).
    fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        for (what, d) in [
            ("idle_timeout", &self.idle_timeout),
            ("http2_keepalive_interval", &self.http2_keepalive_interval),
            ("http2_keepalive_timeout", &self.http2_keepalive_timeout),
        ] {
            if d.get_ref().0.is_zero() {
                return Err(src.error_span(d, format!("[server] {what} must be at least 1ms")));
            }
        }
        if *self.max_connections.get_ref() == 0 {
            return Err(src.error_span(
                &self.max_connections,
                "[server] max_connections must be at least 1",
            ));
        }
        if let Some(n) = self
            .max_connections_per_client
            .as_ref()
            .filter(|n| *n.get_ref() == 0)
        {
            return Err(src.error_span(
                n,
                "[server] max_connections_per_client must be at least 1; leave it out for no per-client limit",
            ));
        }
        if let Some(n) = self.workers.as_ref().filter(|n| *n.get_ref() == 0) {
            return Err(src.error_span(
                n,
                "[server] workers must be at least 1; leave it out for one per core",
            ));
        }
        Ok(())
    }
}

/// The policy for `;` parameters in path segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathParameters {
    /// Answer 400 to any path with a `;` (or `%3B`) in a segment.
    #[default]
    Refuse,
    /// Keep parameters on segments whose name (before the first `;`) is
    /// not empty, `.` or `..`; refuse the rest.
    Keep,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Where plugin files are found, relative to the config file.
    #[serde(default = "defaults::plugin_dir")]
    pub dir: PathBuf,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: defaults::plugin_dir(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file, a plugin file or a filter's
    /// `config_files` change. SIGHUP and `POST /admin/reload` work either way.
    #[serde(default = "defaults::watch")]
    pub watch: bool,
    /// How long the files must stay unchanged before a reload starts, so a
    /// burst of writes (an editor, a copy) makes one reload.
    #[serde(default = "defaults::debounce")]
    pub debounce: Millis,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: defaults::watch(),
            debounce: defaults::debounce(),
        }
    }
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Bucket bounds, in seconds, of the request duration histograms.
    #[serde(default = "defaults::duration_buckets")]
    pub duration_buckets: Vec<f64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            duration_buckets: defaults::duration_buckets(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr` or a file (appended to; relative to the config file).
    #[serde(default = "defaults::access_log_path")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, used as given, like
    /// "http://127.0.0.1:4318/v1/traces".
    pub endpoint: Spanned<String>,
    /// The share of traces kept (0 to 1) when the client's `traceparent`
    /// did not decide already.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: f64,
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// How often queued spans are sent.
    #[serde(default = "defaults::export_interval")]
    pub export_interval: Millis,
    #[serde(default = "defaults::export_timeout")]
    pub export_timeout: Millis,
    /// Spans that may wait for export; more are dropped.
    #[serde(default = "defaults::max_queued_spans")]
    pub max_queued_spans: usize,
}

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
    #[serde(default = "defaults::state_backend")]
    pub backend: Spanned<StateBackend>,
    /// `redis://[user:password@]host:port[/db]`, for the Redis backend.
    pub url: Option<Spanned<String>>,
    /// Prepended to every Redis key, so several gateways' deployments can
    /// share one Redis without sharing counters.
    #[serde(default = "defaults::state_prefix")]
    pub prefix: String,
    /// The longest one state call may take, connecting included; past it
    /// the filter is told the state is unavailable.
    #[serde(default = "defaults::state_timeout")]
    pub timeout: Millis,
    /// Redis connections kept open.
    #[serde(default = "defaults::state_pool_size")]
    pub pool_size: Spanned<usize>,
    /// The most counters the memory backend holds; past it new counters
    /// are refused until old ones expire.
    #[serde(default = "defaults::state_max_entries")]
    pub max_entries: Spanned<usize>,
    /// The counters one filter may hold at once unless its table sets
    /// `state_max_entries`; by default a tenth of `max_entries`, so no one
    /// filter can fill the store. Also the Redis backend's per-filter cap.
    pub filter_max_entries: Option<Spanned<usize>>,
    /// The bytes of counter keys (plus 64 per counter) one filter may hold
    /// in the memory backend unless it sets `state_max_bytes`.
    #[serde(default = "defaults::filter_max_bytes")]
    pub filter_max_bytes: Spanned<usize>,
    /// The longest window a filter may give a counter unless it sets
    /// `state_max_window`; at most two days.
    #[serde(default = "defaults::filter_max_window")]
    pub filter_max_window: Millis,
}

impl StateConfig {
    /// The per-filter entry quota, written or derived from `max_entries`.
    pub fn filter_max_entries(&self) -> usize {
        self.filter_max_entries
            .as_ref()
            .map_or((*self.max_entries.get_ref() / 10).max(1), |s| *s.get_ref())
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: defaults::state_backend(),
            url: None,
            prefix: defaults::state_prefix(),
            timeout: defaults::state_timeout(),
            pool_size: defaults::state_pool_size(),
            max_entries: defaults::state_max_entries(),
            filter_max_entries: None,
            filter_max_bytes: defaults::filter_max_bytes(),
            filter_max_window: defaults::filter_max_window(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Answer the client with the filter's `failure_status`.
    FailClosed,
    /// Skip the filter and go on with the chain.
    FailOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Pooled,
    Request,
}

/// A filter: a plugin with its own settings. Several filters may share one
/// plugin file with different `config` tables.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The plugin's name: the file `<plugin>.wasm` in `[plugins] dir`.
    pub plugin: Spanned<String>,
    #[serde(default = "defaults::failure")]
    pub failure: FailurePolicy,
    /// The status answered under `fail-closed`.
    #[serde(default = "defaults::failure_status")]
    pub failure_status: u16,
    /// The most time one call may take before it is interrupted.
    #[serde(default = "defaults::filter_timeout")]
    pub timeout: Millis,
    /// The most linear memory one instance may grow to, in MiB.
    #[serde(default = "defaults::memory_limit_mib")]
    pub memory_limit_mib: u32,
    /// Warm instances kept for reuse (under `request` isolation: fresh
    /// instances made ready ahead).
    #[serde(default = "defaults::warm_instances")]
    pub instances: usize,
    /// `pooled`: instances are reused from call to call. `request`: every
    /// request gets a fresh instance for its on-request and on-response, so
    /// nothing a request leaves in the instance's memory reaches another.
    #[serde(default)]
    pub isolation: Isolation,
    /// Environment variables the filter may read, by name; their values are
    /// taken from the gateway's environment when the filter is configured.
    /// None by default.
    #[serde(default = "defaults::no_env")]
    pub env: Spanned<Vec<String>>,
    /// Directories the filter may read (never write): `"/guest/path" =
    /// "host/path"`, host paths relative to the config file. None by default.
    #[serde(default)]
    pub dirs: BTreeMap<String, Spanned<PathBuf>>,
    /// This filter's shared-state quota, where it differs from `[state]`'s
    /// `filter_max_entries`, `filter_max_bytes` and `filter_max_window`.
    pub state_max_entries: Option<Spanned<usize>>,
    pub state_max_bytes: Option<Spanned<usize>>,
    pub state_max_window: Option<Millis>,
    /// The filter's own settings, handed to its `configure` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Files the gateway reads for the filter, which has no filesystem of
    /// its own: each `key = "path"` puts the file's text into `config` under
    /// `key` (a JWKS document, say). Paths are relative to the config file.
    #[serde(default)]
    pub config_files: BTreeMap<String, Spanned<PathBuf>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Each instance as `"host:port"` or `{ address = "host:port", weight = 3 }`.
    pub instances: Spanned<Vec<InstanceConfig>>,
    /// How an instance is picked for each try.
    #[serde(default)]
    pub strategy: crate::upstream::balancer::Strategy,
    /// The circuit breaker every instance gets.
    #[serde(default)]
    pub breaker: crate::upstream::breaker::BreakerConfig,
    /// What counts as a failure for the breakers: `connect`, `timeout`,
    /// `reset`, `5xx`, or a status code such as `"429"`.
    #[serde(default = "defaults::failure_on")]
    pub failure_on: Spanned<Vec<String>>,
    /// Active health checks; none when absent.
    pub health: Option<crate::upstream::health::HealthConfig>,
    /// Passive outlier ejection; none when absent.
    pub outlier: Option<crate::upstream::outlier::OutlierConfig>,
    /// How long to wait for a TCP connection.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Millis,
    /// Idle keep-alive connections kept per instance.
    #[serde(default = "defaults::max_idle")]
    pub max_idle_per_instance: usize,
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Millis,
    /// Requests in flight to one instance at once (with HTTP/1.1, the
    /// connections in use); past it the instance is skipped, and when every
    /// instance is full the answer is 503 `pool-exhausted`.
    #[serde(default = "defaults::max_connections")]
    pub max_connections_per_instance: u32,
    /// `http1`, or `h2c` for HTTP/2 without TLS (prior knowledge).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

/// One upstream instance: an address, with a weight for `weighted`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum InstanceConfig {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "defaults::weight")]
        weight: u32,
    },
}

impl InstanceConfig {
    pub fn address(&self) -> &str {
        match self {
            InstanceConfig::Address(a) | InstanceConfig::Weighted { address: a, .. } => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            InstanceConfig::Address(_) => 1,
            InstanceConfig::Weighted { weight, .. } => *weight,
        }
    }
}

/// When and how a route retries a failed try.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included.
    #[serde(default = "defaults::retry_attempts")]
    pub attempts: u32,
    /// What is retried: `connect`, `reset`, `timeout`, or status codes.
    #[serde(default = "defaults::retry_on")]
    pub on: Vec<String>,
    /// Retry methods that are not idempotent too (POST, PATCH). A connect
    /// failure is retried whatever the method: nothing was sent.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Back-off before try n is random in [0, min(max, base * 2^n)).
    #[serde(default = "defaults::backoff_base")]
    pub backoff_base: Millis,
    #[serde(default = "defaults::backoff_max")]
    pub backoff_max: Millis,
    /// Retries may add at most this share of the route's recent requests...
    #[serde(default = "defaults::budget_ratio")]
    pub budget_ratio: f64,
    /// ...plus this many per second.
    #[serde(default = "defaults::budget_floor")]
    pub budget_floor_per_second: f64,
    #[serde(default = "defaults::budget_window")]
    pub budget_window: Millis,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub id: Spanned<String>,
    /// Exact host, or `*.example.com` for any subdomain; any host if absent.
    pub host: Option<String>,
    /// Matched on whole path segments of the normalised path.
    #[serde(default = "defaults::path_prefix")]
    pub path_prefix: Spanned<String>,
    /// Allowed methods; any if absent.
    pub methods: Option<Vec<String>>,
    pub upstream: Spanned<String>,
    /// Filter names, run in this order on the request and in reverse on the
    /// response.
    #[serde(default)]
    pub filters: Vec<Spanned<String>>,
    /// The whole exchange with the upstream, every try and back-off included.
    pub timeout: Option<Millis>,
    /// One try; the overall `timeout` when absent.
    pub try_timeout: Option<Millis>,
    /// Retries; none when absent.
    pub retry: Option<Spanned<RetryConfig>>,
}

/// A duration written as `250ms`, `10s` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Millis)
            .map_err(serde::de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration; write it like \"250ms\", \"10s\" or \"2m\"");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    // Deadlines are `Instant::now() + d` on the request path, which panics
    // past the clock's range; no setting needs more than a year.
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is longer than a year; use a shorter duration"
        ));
    }
    Ok(d)
}

/// The longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

mod defaults {
    use super::*;
    pub fn access_log_path() -> String {
        "stdout".into()
    }
    pub fn sample_ratio() -> f64 {
        1.0
    }
    pub fn service_name() -> String {
        "gateway".into()
    }
    pub fn export_interval() -> Millis {
        Millis(Duration::from_secs(5))
    }
    pub fn export_timeout() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn max_queued_spans() -> usize {
        2048
    }
    pub fn header_read_timeout() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn request_timeout() -> Millis {
        Millis(Duration::from_secs(30))
    }
    pub fn shutdown_grace() -> Millis {
        Millis(Duration::from_secs(30))
    }
    pub fn client_idle_timeout() -> Spanned<Millis> {
        Spanned::new(0..0, Millis(Duration::from_secs(60)))
    }
    pub fn http2_keepalive_interval() -> Spanned<Millis> {
        Spanned::new(0..0, Millis(Duration::from_secs(20)))
    }
    pub fn http2_keepalive_timeout() -> Spanned<Millis> {
        Spanned::new(0..0, Millis(Duration::from_secs(10)))
    }
    pub fn max_client_connections() -> Spanned<usize> {
        Spanned::new(0..0, 10_000)
    }
    pub fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub fn watch() -> bool {
        true
    }
    pub fn debounce() -> Millis {
        Millis(Duration::from_millis(100))
    }
    pub fn plugin_dir() -> PathBuf {
        PathBuf::from("../plugins/dist")
    }
    pub fn duration_buckets() -> Vec<f64> {
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]
    }
    pub fn failure() -> FailurePolicy {
        FailurePolicy::FailClosed
    }
    pub fn failure_status() -> u16 {
        500
    }
    pub fn filter_timeout() -> Millis {
        Millis(Duration::from_millis(50))
    }
    pub fn memory_limit_mib() -> u32 {
        64
    }
    pub fn no_env() -> Spanned<Vec<String>> {
        Spanned::new(0..0, Vec::new())
    }
    pub fn warm_instances() -> usize {
        16
    }
    pub fn connect_timeout() -> Millis {
        Millis(Duration::from_secs(2))
    }
    pub fn max_idle() -> usize {
        64
    }
    pub fn idle_timeout() -> Millis {
        Millis(Duration::from_secs(60))
    }
    pub fn state_backend() -> Spanned<StateBackend> {
        Spanned::new(0..0, StateBackend::Memory)
    }
    pub fn state_prefix() -> String {
        "gateway".to_string()
    }
    pub fn state_timeout() -> Millis {
        Millis(Duration::from_millis(25))
    }
    pub fn state_pool_size() -> Spanned<usize> {
        Spanned::new(0..0, 8)
    }
    pub fn state_max_entries() -> Spanned<usize> {
        Spanned::new(0..0, 1_000_000)
    }
    pub fn filter_max_bytes() -> Spanned<usize> {
        Spanned::new(0..0, 16 * 1024 * 1024)
    }
    pub fn filter_max_window() -> Millis {
        Millis(crate::state::MAX_WINDOW)
    }
    pub fn failure_on() -> Spanned<Vec<String>> {
        Spanned::new(
            0..0,
            ["connect", "timeout", "reset", "5xx"]
                .map(String::from)
                .to_vec(),
        )
    }
    pub fn max_connections() -> u32 {
        1024
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<String> {
        ["connect", "reset", "timeout", "502", "503", "504"]
            .map(String::from)
            .to_vec()
    }
    pub fn backoff_base() -> Millis {
        Millis(Duration::from_millis(25))
    }
    pub fn backoff_max() -> Millis {
        Millis(Duration::from_millis(250))
    }
    pub fn budget_ratio() -> f64 {
        0.2
    }
    pub fn budget_floor() -> f64 {
        1.0
    }
    pub fn budget_window() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn path_prefix() -> Spanned<String> {
        Spanned::new(0..0, "/".to_string())
    }
}

/// The largest file `config_files` may hand a filter.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// The most memory a filter instance may be given; the engine reserves
/// address space for this much per instance slot.
pub const MAX_MEMORY_LIMIT_MIB: u32 = 256;

/// The environment `${NAME}` is read from: the process's, or a test's.
type Env<'e> = dyn Fn(&str) -> Option<String> + 'e;

/// The config file as written, and its parsed document. Every position
/// reported, from TOML, from `${VAR}` expansion or from validation, is a
/// byte offset into `text`, the text the user sees in their editor.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    /// The document after expansion, its spans still into `text`. Where a
    /// setting was written is looked up here by its key path, so the
    /// runtime types need no `Spanned` just to be reported on.
    doc: Spanned<DeTable<'a>>,
}

/// What `Source::find` found of a key path.
struct Found<'s, 'a> {
    /// The value at the end of the path; None when the path stops early.
    value: Option<&'s Spanned<DeValue<'a>>>,
    /// Where to point: the value's start, or the start of the nearest
    /// table on the path that was written.
    at: usize,
    /// The start of the last key name on the path that was found.
    name_at: usize,
}

impl<'a> Source<'a> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        error_at(self.file, self.text, offset, message)
    }

    fn error_span<T>(&self, s: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error_at(s.span().start, message)
    }

    /// An error at the value of the setting at `path`, like
    /// `["upstreams", "api", "breaker", "half_open_probes"]`; an array's
    /// element is named by its index (`["route", "2", "timeout"]`). For a
    /// setting left to its default, the error points at the nearest table
    /// that was written.
    fn error_key(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        self.error_at(self.find(path).at, message)
    }

    /// Like `error_key`, but at the last key's name rather than its value:
    /// for a name refused as a name.
    fn error_key_name(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        self.error_at(self.find(path).name_at, message)
    }

    /// `Err(error_key(path, message()))` unless `ok`.
    fn require(
        &self,
        ok: bool,
        path: &[&str],
        message: impl FnOnce() -> String,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.error_key(path, message()))
        }
    }

    /// The value at `path` as the user wrote it (`"0ms"`, `0`), when it
    /// was written.
    fn written(&self, path: &[&str]) -> Option<&str> {
        let v = self.find(path).value?;
        self.text.get(v.span())
    }

    fn find(&self, path: &[&str]) -> Found<'_, 'a> {
        let mut found = Found {
            value: None,
            at: self.doc.span().start,
            name_at: self.doc.span().start,
        };
        let mut node: Option<&Spanned<DeValue<'_>>> = None;
        for (i, seg) in path.iter().enumerate() {
            let next = match node.map(Spanned::get_ref) {
                None => self.doc.get_ref().get_key_value(*seg),
                Some(DeValue::Table(t)) => t.get_key_value(*seg),
                // An array's element has no name: its value stands for it.
                Some(DeValue::Array(items)) => {
                    let item = seg.parse::<usize>().ok().and_then(|n| items.get(n));
                    let Some(v) = item else { return found };
                    node = Some(v);
                    found = Found {
                        value: (i + 1 == path.len()).then_some(v),
                        at: v.span().start,
                        name_at: v.span().start,
                    };
                    continue;
                }
                Some(_) => None,
            };
            let Some((key, v)) = next else { return found };
            node = Some(v);
            found = Found {
                value: (i + 1 == path.len()).then_some(v),
                at: v.span().start,
                name_at: key.span().start,
            };
        }
        found
    }
}

fn error_at(file: &str, text: &str, offset: usize, message: impl Into<String>) -> ConfigError {
    let (line, column) = line_col(text, offset);
    ConfigError {
        file: file.to_string(),
        line,
        column,
        message: message.into(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// An expansion error: the byte offset of its `${` in the file, and why.
type ExpandError = (usize, String);

/// Replaces `${NAME}` and `${NAME:-default}` in every string value with
/// the environment's value. It runs on the parsed document, so a value
/// holding a quote, a backslash or a newline stays inside its string and
/// cannot change the file's structure, and a `${` in a comment is never
/// read. Keys are left as written: they name settings, filters and
/// upstreams the rest of the file refers to by name, and a name that moved
/// with the environment would break those references. Numbers and
/// booleans cannot hold a variable; a port goes in a string, as in
/// `listen = "127.0.0.1:${PORT}"`.
fn expand_table(table: &mut DeTable<'_>, text: &str, env: &Env<'_>) -> Result<(), ExpandError> {
    for (_, value) in table.iter_mut() {
        expand_value(value, text, env)?;
    }
    Ok(())
}

fn expand_value(
    value: &mut Spanned<DeValue<'_>>,
    text: &str,
    env: &Env<'_>,
) -> Result<(), ExpandError> {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            let expanded = expand_string(s, env).map_err(|(at, message)| {
                let literal = text.get(span.clone()).unwrap_or_default();
                let offset = source_offset(literal, s, at).unwrap_or(0);
                (span.start + offset, message)
            })?;
            *s = Cow::Owned(expanded);
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                expand_value(item, text, env)?;
            }
        }
        DeValue::Table(t) => expand_table(t, text, env)?,
        _ => {}
    }
    Ok(())
}

/// Expands one string; an error's offset is into `s`.
fn expand_string(s: &str, env: &Env<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let at = s.len() - rest.len() + start;
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            (
                at,
                "`${` is not closed; write `${NAME}` or `${NAME:-default}`".to_string(),
            )
        })?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((at, format!("`${{{expr}}}` is not a valid variable name")));
        }
        match env(name).or_else(|| default.map(str::to_string)) {
            Some(v) => out.push_str(&v),
            None => {
                return Err((
                    at,
                    format!(
                        "environment variable `{name}` is not set; set it or give a default as `${{{name}:-value}}`"
                    ),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where byte `at` of a string's value was written, as an offset into its
/// `literal` (the quoted text in the file). Escapes, a multi-line string's
/// first newline and its line-ending backslashes make the two differ. None
/// when decoding `literal` here does not give `value` back, so a case this
/// decoder misses points at the opening quote rather than somewhere wrong.
fn source_offset(literal: &str, value: &str, at: usize) -> Option<usize> {
    let (decoded, offsets) = decode_with_offsets(literal)?;
    if decoded != value {
        return None;
    }
    offsets.get(at).copied()
}

/// Decodes a TOML string literal, with the literal offset each decoded byte
/// came from (and one more entry for the end).
fn decode_with_offsets(literal: &str) -> Option<(String, Vec<usize>)> {
    let delimiter = ["\"\"\"", "'''", "\"", "'"]
        .into_iter()
        .find(|d| literal.starts_with(d) && literal.len() >= 2 * d.len())?;
    let basic = delimiter.starts_with('"');
    let multi_line = delimiter.len() == 3;
    let end = literal.len() - delimiter.len();
    let mut i = delimiter.len();
    if multi_line {
        // A newline right after the opening delimiter is not part of the value.
        if literal[i..].starts_with("\r\n") {
            i += 2;
        } else if literal[i..].starts_with('\n') {
            i += 1;
        }
    }
    let mut out = String::new();
    let mut offsets = Vec::new();
    let mut push = |c: char, from: usize, out: &mut String| {
        out.push(c);
        offsets.extend(std::iter::repeat_n(from, c.len_utf8()));
    };
    while i < end {
        let c = literal[i..end].chars().next()?;
        if !(basic && c == '\\') {
            push(c, i, &mut out);
            i += c.len_utf8();
            continue;
        }
        let rest = &literal[i + 1..end];
        let escaped = rest.chars().next()?;
        let hex = |n: usize| {
            let digits = rest.get(1..1 + n)?;
            char::from_u32(u32::from_str_radix(digits, 16).ok()?)
        };
        let (c, len) = match escaped {
            'b' => ('\u{8}', 1),
            't' => ('\t', 1),
            'n' => ('\n', 1),
            'f' => ('\u{c}', 1),
            'r' => ('\r', 1),
            'e' => ('\u{1b}', 1),
            '"' => ('"', 1),
            '\\' => ('\\', 1),
            'x' => (hex(2)?, 3),
            'u' => (hex(4)?, 5),
            'U' => (hex(8)?, 9),
            // A line-ending backslash drops the newline and the
            // whitespace after it.
            ' ' | '\t' | '\r' | '\n' if multi_line => {
                let skipped = rest.len() - rest.trim_start_matches([' ', '\t', '\r', '\n']).len();
                i += 1 + skipped;
                continue;
            }
            _ => return None,
        };
        push(c, i, &mut out);
        i += 1 + len;
    }
    offsets.push(end);
    Some((out, offsets))
}

/// toml's message and position for a syntax error. A `${VAR}` outside a
/// string is one: toml stops at its `$` or its `{`, and the error points at
/// the `$` with a hint.
fn syntax_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start);
    let dollar = [at, at.saturating_sub(1)]
        .into_iter()
        .find(|&i| text.get(i..).is_some_and(|t| t.starts_with("${")));
    match dollar {
        Some(dollar) => error_at(
            file,
            text,
            dollar,
            format!(
                "{}; a `${{VAR}}` is expanded only inside a string, like \"127.0.0.1:${{PORT}}\"",
                toml_message(e)
            ),
        ),
        None => error_at(file, text, at, toml_message(e)),
    }
}

impl Config {
    /// Reads, parses, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&file, &text, base, &|k| std::env::var(k).ok())
    }

    /// Parses config text; `file` names it in errors.
    pub fn parse(
        file: &str,
        text: &str,
        base_dir: PathBuf,
        env: &Env<'_>,
    ) -> Result<Config, ConfigError> {
        let mut doc = DeTable::parse(text).map_err(|e| syntax_error(file, text, &e))?;
        expand_table(doc.get_mut(), text, env)
            .map_err(|(at, message)| error_at(file, text, at, message))?;
        let src = Source { file, text, doc };
        // The document is kept for positions; the config is built from a copy.
        let mut config = Config::deserialize(toml::de::Deserializer::from(src.doc.clone()))
            .map_err(|e| {
                let at = e.span().map_or(0, |s| s.start);
                src.error_at(at, toml_message(&e))
            })?;
        config.base_dir = base_dir;
        config.validate(&src)?;
        config.read_filter_files(&src)?;
        Ok(config)
    }

    /// The plugin file a filter names.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        self.base_dir
            .join(&self.plugins.dir)
            .join(format!("{plugin}.wasm"))
    }

    /// Inlines each filter's `config_files` into its `config` table.
    fn read_filter_files(&mut self, src: &Source<'_>) -> Result<(), ConfigError> {
        for (name, f) in &mut self.filters {
            for (key, path) in &f.config_files {
                if f.config.contains_key(key) {
                    return Err(src.error_span(
                        path,
                        format!("filter `{name}` sets `{key}` both in config and in config_files; keep one"),
                    ));
                }
                let full = self.base_dir.join(path.get_ref());
                let too_big = std::fs::metadata(&full)
                    .map(|m| m.len() > MAX_CONFIG_FILE_BYTES)
                    .unwrap_or(false);
                if too_big {
                    return Err(src.error_span(
                        path,
                        format!(
                            "filter `{name}` reads {} for `{key}`, which is over {} KiB; a filter's config file must be smaller",
                            full.display(),
                            MAX_CONFIG_FILE_BYTES / 1024
                        ),
                    ));
                }
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    src.error_span(
                        path,
                        format!(
                            "filter `{name}` reads {} for `{key}`, but it cannot be read ({e}); fix the path (relative to the config file)",
                            full.display()
                        ),
                    )
                })?;
                f.config.insert(key.clone(), toml::Value::String(text));
            }
        }
        Ok(())
    }

    /// The rules that types alone cannot say: settings that would turn a
    /// mechanism off or stall it (a zero timeout, a breaker that never
    /// closes), ranges, and names that must refer to something.
    fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        self.validate_server(src)?;
        self.validate_state(src)?;
        self.validate_filters(src)?;
        for (name, u) in &self.upstreams {
            validate_upstream(src, name, u)?;
        }
        self.validate_routes(src)?;
        self.validate_telemetry(src)
    }

    fn validate_server(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        self.server.validate(src)?;
        let s = &self.server;
        // shutdown_grace = "0ms" is allowed: stopping at once, cutting what
        // is in flight, is a choice (the load balancer drained already) and
        // does what it says. So is [reload] debounce = "0ms": a reload on
        // the first write; one that reads a half-written file is refused,
        // the running config serves on, and the next write tries again.
        refuse(
            src,
            &["server"],
            &[
                (
                    "header_read_timeout",
                    s.header_read_timeout.0.is_zero(),
                    "gives no client time to send its request headers",
                    "use a duration like \"10s\"",
                ),
                (
                    "request_timeout",
                    s.request_timeout.0.is_zero(),
                    "would time out every upstream exchange at once",
                    "use a duration like \"30s\"",
                ),
                (
                    "max_header_bytes",
                    s.max_header_bytes == 0,
                    "would answer every request 431",
                    "use a size like 16384",
                ),
                (
                    "max_headers",
                    s.max_headers == 0,
                    "would answer every request 431",
                    "use a count like 100",
                ),
                (
                    "max_body_bytes",
                    s.max_body_bytes == 0,
                    "would answer every request that has a body 413",
                    "use a size like 1048576",
                ),
            ],
        )
    }

    fn validate_state(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let s = &self.state;
        if *s.backend.get_ref() == StateBackend::Redis {
            match &s.url {
                None => {
                    return Err(src.error_key(
                        &["state", "backend"],
                        "[state] backend \"redis\" needs a `url`, like \"redis://127.0.0.1:6379\"",
                    ));
                }
                Some(url) if !url.get_ref().starts_with("redis://") => {
                    return Err(src.error_span(
                        url,
                        format!(
                            "[state] url `{}` is not a Redis URL; write it like \"redis://127.0.0.1:6379/0\"",
                            url.get_ref()
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
                    s.timeout.0.is_zero(),
                    "would fail every state call as unavailable",
                    "use a duration like \"25ms\"",
                ),
                (
                    "pool_size",
                    *s.pool_size.get_ref() == 0,
                    "leaves no connection to Redis",
                    "use 1 or more, like 8",
                ),
                (
                    "max_entries",
                    *s.max_entries.get_ref() == 0,
                    "would refuse every counter",
                    "use a count like 1000000",
                ),
                (
                    "filter_max_entries",
                    s.filter_max_entries
                        .as_ref()
                        .is_some_and(|n| *n.get_ref() == 0),
                    "would refuse every filter's counters",
                    "use a count like 100000",
                ),
                (
                    "filter_max_bytes",
                    *s.filter_max_bytes.get_ref() == 0,
                    "would refuse every filter's counters",
                    "use a size like 16777216",
                ),
                (
                    "filter_max_window",
                    s.filter_max_window.0.is_zero()
                        || s.filter_max_window.0 > crate::state::MAX_WINDOW,
                    "is out of range",
                    "use 1ms to 2d",
                ),
            ],
        )
    }

    fn validate_filters(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        for (name, f) in &self.filters {
            // Filter names prefix shared-state keys and label metrics, so
            // they keep to a character set neither can confuse.
            if !is_plain_name(name) {
                return Err(src.error_key_name(
                    &["filters", name],
                    format!("filter name `{name}` may use only letters, digits, `-` and `_`"),
                ));
            }
            let plugin = f.plugin.get_ref();
            if !is_plain_name(plugin) {
                return Err(src.error_span(
                    &f.plugin,
                    format!("filter `{name}` names plugin `{plugin}`; a plugin name uses only letters, digits, `-` and `_`"),
                ));
            }
            // Settings first, the file system after: a mistake in the file
            // is reported the same whether or not the plugin is built.
            let memory = format!("use 1 to {MAX_MEMORY_LIMIT_MIB}");
            refuse(
                src,
                &["filters", name],
                &[
                    (
                        "failure_status",
                        !(100..=599).contains(&f.failure_status),
                        "is not an HTTP status",
                        "use one from 100 to 599",
                    ),
                    (
                        "timeout",
                        f.timeout.0.is_zero(),
                        "would interrupt every call at once",
                        "use a duration like \"50ms\"",
                    ),
                    (
                        "memory_limit_mib",
                        f.memory_limit_mib == 0 || f.memory_limit_mib > MAX_MEMORY_LIMIT_MIB,
                        "is out of range",
                        &memory,
                    ),
                    (
                        "instances",
                        f.instances == 0,
                        "keeps no instance ready, so every call would instantiate the plugin anew",
                        "use 1 or more, like 16",
                    ),
                    (
                        "state_max_entries",
                        f.state_max_entries
                            .as_ref()
                            .is_some_and(|n| *n.get_ref() == 0),
                        "would refuse every counter",
                        "use a count like 10000",
                    ),
                    (
                        "state_max_bytes",
                        f.state_max_bytes
                            .as_ref()
                            .is_some_and(|n| *n.get_ref() == 0),
                        "would refuse every counter",
                        "use a size like 1048576",
                    ),
                    (
                        "state_max_window",
                        f.state_max_window
                            .is_some_and(|w| w.0.is_zero() || w.0 > crate::state::MAX_WINDOW),
                        "is out of range",
                        "use 1ms to 2d",
                    ),
                ],
            )?;
            if let Some(i) = f
                .env
                .get_ref()
                .iter()
                .position(|v| v.is_empty() || v.contains('=') || v.contains('\0'))
            {
                return Err(src.error_key(
                    &["filters", name, "env", &i.to_string()],
                    format!(
                        "filter `{name}` grants environment variable {:?}, which is not a variable name",
                        f.env.get_ref()[i]
                    ),
                ));
            }
            for (guest, host) in &f.dirs {
                if !guest.starts_with('/') {
                    return Err(src.error_span(
                        host,
                        format!("filter `{name}` grants directory `{guest}`; the path the filter sees must start with `/`"),
                    ));
                }
                let full = self.base_dir.join(host.get_ref());
                if !full.is_dir() {
                    return Err(src.error_span(
                        host,
                        format!(
                            "filter `{name}` is granted {}, which is not a directory",
                            full.display()
                        ),
                    ));
                }
            }
            let path = self.plugin_path(plugin);
            if !path.is_file() {
                return Err(src.error_span(
                    &f.plugin,
                    format!(
                        "filter `{name}` uses plugin `{plugin}`, but {} does not exist; build the plugin or fix the name",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_routes(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let index = i.to_string();
            let at = |key: &'static str| ["route", index.as_str(), key];
            let id = r.id.get_ref().as_str();
            if let Some(first) = seen.insert(id, r.id.span().start) {
                let (line, _) = line_col(src.text, first);
                return Err(src.error_span(
                    &r.id,
                    format!(
                        "route id `{id}` is already used on line {line}; give each route its own id"
                    ),
                ));
            }
            if !r.path_prefix.get_ref().starts_with('/') {
                return Err(src.error_span(
                    &r.path_prefix,
                    format!(
                        "route `{id}` has path_prefix `{}`; it must start with `/`",
                        r.path_prefix.get_ref()
                    ),
                ));
            }
            let up = r.upstream.get_ref();
            if !self.upstreams.contains_key(up) {
                let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                return Err(src.error_span(
                    &r.upstream,
                    format!("route `{id}` sends to upstream `{up}`, which is not defined; define [upstreams.{up}] or use one of: {}", list_or_none(&known)),
                ));
            }
            for f in &r.filters {
                if !self.filters.contains_key(f.get_ref()) {
                    let known: Vec<&str> = self.filters.keys().map(String::as_str).collect();
                    return Err(src.error_span(
                        f,
                        format!("route `{id}` runs filter `{}`, which is not defined; define [filters.{}] or use one of: {}", f.get_ref(), f.get_ref(), list_or_none(&known)),
                    ));
                }
            }
            if let Some(methods) = &r.methods {
                src.require(!methods.is_empty(), &at("methods"), || {
                    format!("route `{id}` lists no methods, so it would match no request; remove `methods` to allow any")
                })?;
                for (n, m) in methods.iter().enumerate() {
                    let ok = http::Method::from_bytes(m.as_bytes()).is_ok()
                        && !m.chars().any(|c| c.is_ascii_lowercase());
                    src.require(ok, &["route", &index, "methods", &n.to_string()], || {
                        format!(
                            "route `{id}` lists method `{m}`; write methods in capitals, like \"GET\""
                        )
                    })?;
                }
            }
            let label = format!("route `{id}`");
            refuse_labelled(
                src,
                &["route", &index],
                &label,
                &[
                    (
                        "timeout",
                        r.timeout.is_some_and(|t| t.0.is_zero()),
                        "would time out every request at once",
                        "use a duration like \"30s\"",
                    ),
                    (
                        "try_timeout",
                        r.try_timeout.is_some_and(|t| t.0.is_zero()),
                        "would time out every try at once",
                        "use a duration like \"5s\"",
                    ),
                ],
            )?;
            if let Some(try_timeout) = r.try_timeout {
                let (overall, whose) = match r.timeout {
                    Some(t) => (t, "the route's timeout"),
                    None => (self.server.request_timeout, "[server] request_timeout"),
                };
                src.require(try_timeout.0 <= overall.0, &at("try_timeout"), || {
                    format!(
                        "try_timeout = {} in route `{id}` is longer than {whose}, {}, which ends the exchange first; make try_timeout at most that, or remove it to give one try all of it",
                        show(try_timeout),
                        show(overall)
                    )
                })?;
            }
            if let Some(retry) = &r.retry {
                validate_retry(src, &index, id, retry.get_ref())?;
            }
        }
        Ok(())
    }

    fn validate_telemetry(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        if let Some(t) = &self.tracing {
            let ok = t
                .endpoint
                .get_ref()
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(src.error_span(
                    &t.endpoint,
                    format!(
                        "[tracing] endpoint `{}` is not an http:// URL; give the collector's traces URL, like \"http://127.0.0.1:4318/v1/traces\"",
                        t.endpoint.get_ref()
                    ),
                ));
            }
            refuse(
                src,
                &["tracing"],
                &[
                    (
                        "sample_ratio",
                        !(0.0..=1.0).contains(&t.sample_ratio),
                        "is not a share",
                        "use 0 to 1 (1 keeps every trace)",
                    ),
                    (
                        "export_interval",
                        t.export_interval.0.is_zero(),
                        "would send spans in a busy loop",
                        "use a duration like \"5s\"",
                    ),
                    (
                        "export_timeout",
                        t.export_timeout.0.is_zero(),
                        "would time out every export at once",
                        "use a duration like \"10s\"",
                    ),
                    (
                        "max_queued_spans",
                        t.max_queued_spans == 0,
                        "would drop every span",
                        "use a count like 2048",
                    ),
                ],
            )?;
        }
        let b = &self.metrics.duration_buckets;
        let path = ["metrics", "duration_buckets"];
        src.require(!b.is_empty(), &path, || {
            "[metrics] duration_buckets is empty; list bucket bounds in seconds, like [0.01, 0.1, 1.0]".into()
        })?;
        for (i, x) in b.iter().enumerate() {
            let ok = x.is_finite() && *x > 0.0 && (i == 0 || b[i - 1] < *x);
            src.require(
                ok,
                &["metrics", "duration_buckets", &i.to_string()],
                || {
                    "[metrics] duration_buckets must be positive and strictly increasing; check this bound against the one before it".into()
                },
            )?;
        }
        Ok(())
    }
}

fn validate_upstream(src: &Source<'_>, name: &str, u: &UpstreamConfig) -> Result<(), ConfigError> {
    let instances = u.instances.get_ref();
    if instances.is_empty() {
        return Err(src.error_span(
            &u.instances,
            format!("upstream `{name}` has no instances; list at least one `host:port`"),
        ));
    }
    // Per-instance state (breaker, health, pool) is keyed by address;
    // one address twice would be one instance counted twice.
    let mut seen = std::collections::HashSet::new();
    for (i, instance) in instances.iter().enumerate() {
        let index = i.to_string();
        let addr = instance.address();
        src.require(
            parse_authority(addr).is_some(),
            &["upstreams", name, "instances", &index, "address"],
            || format!("upstream `{name}` has instance `{addr}`, which is not `host:port`; write it like \"127.0.0.1:3000\""),
        )?;
        src.require(
            seen.insert(addr),
            &["upstreams", name, "instances", &index, "address"],
            || format!("upstream `{name}` lists instance `{addr}` twice; list it once and give it a weight instead"),
        )?;
        let weight = ["upstreams", name, "instances", &index, "weight"];
        src.require(instance.weight() > 0, &weight, || {
            format!(
                "weight = 0 for instance `{addr}` of upstream `{name}` would never pick it; use 1 or more, or remove the instance"
            )
        })?;
    }
    if let Some(i) = u
        .failure_on
        .get_ref()
        .iter()
        .position(|f| !is_outcome(f, true))
    {
        return Err(src.error_key(
            &["upstreams", name, "failure_on", &i.to_string()],
            format!(
                "upstream `{name}` lists `{}` in failure_on; use connect, timeout, reset, 5xx or a status code",
                u.failure_on.get_ref()[i]
            ),
        ));
    }
    // max_idle_per_instance = 0 is allowed: keeping no idle connection is
    // a real choice (an instance that mishandles keep-alive, or one behind
    // a balancer that should see new connections); it costs a connect per
    // request and breaks nothing.
    refuse(
        src,
        &["upstreams", name],
        &[
            (
                "connect_timeout",
                u.connect_timeout.0.is_zero(),
                "would fail every connection attempt",
                "use a duration like \"2s\"",
            ),
            (
                "idle_timeout",
                u.idle_timeout.0.is_zero(),
                "would close every idle connection at once",
                "use a duration like \"60s\", or max_idle_per_instance = 0 to keep none",
            ),
            (
                "max_connections_per_instance",
                u.max_connections_per_instance == 0,
                "would send no request to any instance (every answer 503 pool-exhausted)",
                "use 1 or more, like 1024",
            ),
        ],
    )?;
    validate_breaker(src, name, &u.breaker)?;
    if let Some(h) = &u.health {
        validate_health(src, name, h)?;
    }
    if let Some(o) = &u.outlier {
        validate_outlier(src, name, o)?;
    }
    Ok(())
}

fn validate_breaker(
    src: &Source<'_>,
    name: &str,
    b: &crate::upstream::breaker::BreakerConfig,
) -> Result<(), ConfigError> {
    let table = ["upstreams", name, "breaker"];
    // consecutive_failures = 0 and failure_rate = 0 each turn one trigger
    // off, as documented; both off is how an upstream goes without a
    // breaker, and min_requests = 0 only makes the rate count from the
    // first request.
    refuse(
        src,
        &table,
        &[
            (
                "failure_rate",
                !(0.0..=1.0).contains(&b.failure_rate),
                "is not a share",
                "use 0 (off) to 1",
            ),
            (
                "window",
                b.window.0.is_zero(),
                "would count no request, so the failure rate could never open the breaker",
                "use a duration like \"10s\"",
            ),
            (
                "cool_down",
                b.cool_down.0.is_zero(),
                "would let requests through again as soon as the breaker opens",
                "use a duration like \"5s\"",
            ),
            (
                "half_open_probes",
                b.half_open_probes == 0,
                "lets no probe through, so an opened breaker would never close",
                "use 1 or more",
            ),
            (
                "successes_to_close",
                b.successes_to_close == 0,
                "would be read as 1: one successful probe would close the breaker",
                "use 1 or more, like 2",
            ),
        ],
    )?;
    not_below(
        src,
        &table,
        ("max_cool_down", b.max_cool_down),
        ("cool_down", b.cool_down),
    )
}

fn validate_health(
    src: &Source<'_>,
    name: &str,
    h: &crate::upstream::health::HealthConfig,
) -> Result<(), ConfigError> {
    let table = ["upstreams", name, "health"];
    refuse(
        src,
        &table,
        &[
            (
                "path",
                !h.path.starts_with('/'),
                "is not a path, so every check would fail",
                "start it with `/`, like \"/health\"",
            ),
            (
                "interval",
                h.interval.0 < MIN_HEALTH_INTERVAL,
                "is under 10ms, the shortest interval checks run at",
                "use a duration like \"5s\"",
            ),
            (
                "timeout",
                h.timeout.0.is_zero(),
                "would fail every check and take every instance out",
                "use a duration like \"1s\"",
            ),
            (
                "healthy_threshold",
                h.healthy_threshold == 0,
                "would be read as 1: one passed check would bring an instance back",
                "use 1 or more, like 2",
            ),
            (
                "unhealthy_threshold",
                h.unhealthy_threshold == 0,
                "would be read as 1: one failed check would take an instance out",
                "use 1 or more, like 3",
            ),
        ],
    )?;
    if let Some(i) = h
        .expected_status
        .iter()
        .position(|s| !(100..=599).contains(s))
    {
        return Err(src.error_key(
            &["upstreams", name, "health", "expected_status", &i.to_string()],
            format!(
                "{} expected_status lists {}, which is not an HTTP status; use statuses from 100 to 599",
                table_label(&table),
                h.expected_status[i]
            ),
        ));
    }
    Ok(())
}

fn validate_outlier(
    src: &Source<'_>,
    name: &str,
    o: &crate::upstream::outlier::OutlierConfig,
) -> Result<(), ConfigError> {
    let table = ["upstreams", name, "outlier"];
    if o.consecutive_5xx == 0 && o.consecutive_gateway_failures == 0 {
        return Err(src.error_key(
            &["upstreams", name, "outlier", "consecutive_5xx"],
            format!(
                "{} turns off both consecutive_5xx and consecutive_gateway_failures, so it would never eject an instance; set one of them, or remove the table to go without ejection",
                table_label(&table)
            ),
        ));
    }
    refuse(
        src,
        &table,
        &[
            (
                "base_ejection_time",
                o.base_ejection_time.0.is_zero(),
                "would eject an instance for no time at all",
                "use a duration like \"30s\"",
            ),
            (
                "max_ejected_percent",
                !(1..=100).contains(&o.max_ejected_percent),
                "is not a percentage of the cluster",
                "use 1 to 100 (one instance may be ejected whatever the share)",
            ),
        ],
    )?;
    not_below(
        src,
        &table,
        ("max_ejection_time", o.max_ejection_time),
        ("base_ejection_time", o.base_ejection_time),
    )
}

fn validate_retry(
    src: &Source<'_>,
    index: &str,
    id: &str,
    rc: &RetryConfig,
) -> Result<(), ConfigError> {
    let table = ["route", index, "retry"];
    if let Some(i) = rc.on.iter().position(|o| !is_outcome(o, false)) {
        return Err(src.error_key(
            &["route", index, "retry", "on", &i.to_string()],
            format!(
                "route `{id}` retries on `{}`; use connect, reset, timeout or a status code",
                rc.on[i]
            ),
        ));
    }
    let label = format!("route `{id}`'s retry");
    refuse_labelled(
        src,
        &table,
        &label,
        &[
            (
                "attempts",
                rc.attempts == 0 || rc.attempts > 10,
                "is out of range",
                "use 1 to 10 (tries in all, the first included)",
            ),
            (
                "backoff_base",
                rc.backoff_base.0.is_zero(),
                "would send retries at once, with no back-off",
                "use a duration like \"25ms\"",
            ),
            (
                "budget_ratio",
                !(0.0..=1.0).contains(&rc.budget_ratio),
                "is not a share",
                "use 0 to 1, like 0.2",
            ),
            (
                "budget_floor_per_second",
                !(rc.budget_floor_per_second >= 0.0 && rc.budget_floor_per_second.is_finite()),
                "is not a rate",
                "use 0 or more, like 1.0",
            ),
            (
                "budget_window",
                rc.budget_window.0 < MIN_BUDGET_WINDOW,
                "is under 10ms, the shortest window the budget counts over",
                "use a duration like \"10s\"",
            ),
        ],
    )?;
    let zero_budget = rc.budget_ratio == 0.0 && rc.budget_floor_per_second == 0.0;
    src.require(!zero_budget, &["route", index, "retry", "budget_ratio"], || {
        format!("route `{id}`'s retry has budget_ratio and budget_floor_per_second both 0, so the budget would allow no retry; raise one, or remove [route.retry] to go without retries")
    })?;
    not_below_labelled(
        src,
        &table,
        &label,
        ("backoff_max", rc.backoff_max),
        ("backoff_base", rc.backoff_base),
    )
}

/// The shortest health-check interval; the checker never runs faster.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

/// The shortest retry-budget window; the budget never counts over less.
const MIN_BUDGET_WINDOW: Duration = Duration::from_millis(10);

/// A setting refused: its key, whether its value is refused, what that
/// value would do, and what to write instead.
type Refusal<'r> = (&'r str, bool, &'r str, &'r str);

/// The first refusal that applies, at its key's value, as
/// "`key = value` in `[table]` `effect`; `instead`".
fn refuse(src: &Source<'_>, table: &[&str], refusals: &[Refusal<'_>]) -> Result<(), ConfigError> {
    refuse_labelled(src, table, &table_label(table), refusals)
}

fn refuse_labelled(
    src: &Source<'_>,
    table: &[&str],
    label: &str,
    refusals: &[Refusal<'_>],
) -> Result<(), ConfigError> {
    for &(key, refused, effect, instead) in refusals {
        if refused {
            let path = [table, &[key]].concat();
            let setting = match src.written(&path) {
                Some(value) => format!("{key} = {value}"),
                None => key.to_string(),
            };
            return Err(src.error_key(&path, format!("{setting} in {label} {effect}; {instead}")));
        }
    }
    Ok(())
}

/// Refuses a cap shorter than the base it caps (`max_cool_down` under
/// `cool_down`): the runtime would ignore it. The error points at the cap
/// when it was written, else at the base that outgrew its default cap.
fn not_below(
    src: &Source<'_>,
    table: &[&str],
    cap: (&str, Millis),
    base: (&str, Millis),
) -> Result<(), ConfigError> {
    not_below_labelled(src, table, &table_label(table), cap, base)
}

fn not_below_labelled(
    src: &Source<'_>,
    table: &[&str],
    label: &str,
    (cap, cap_value): (&str, Millis),
    (base, base_value): (&str, Millis),
) -> Result<(), ConfigError> {
    if cap_value.0 >= base_value.0 {
        return Ok(());
    }
    let cap_path = [table, &[cap]].concat();
    let at = if src.written(&cap_path).is_some() {
        cap_path
    } else {
        [table, &[base]].concat()
    };
    Err(src.error_key(
        &at,
        format!(
            "{cap} = {} in {label} is shorter than {base} = {}, so it would be ignored; make {cap} at least {base}",
            show(cap_value),
            show(base_value)
        ),
    ))
}

/// `[upstreams.api.breaker]` for a key path, quoting keys TOML would.
fn table_label(path: &[&str]) -> String {
    let keys: Vec<String> = path
        .iter()
        .map(|k| {
            if !k.is_empty() && is_plain_name(k) {
                k.to_string()
            } else {
                format!("{k:?}")
            }
        })
        .collect();
    format!("[{}]", keys.join("."))
}

/// Letters, digits, `-` and `_`, at least one.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
}

/// A duration as a user would write it: `"250ms"`, `"10s"`, `"2m"`.
fn show(d: Millis) -> String {
    let ms = d.0.as_millis();
    if ms != 0 && ms.is_multiple_of(60_000) {
        format!("\"{}m\"", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1000) {
        format!("\"{}s\"", ms / 1000)
    } else {
        format!("\"{ms}ms\"")
    }
}

/// A failure or retry condition: a kind of error, or a status code.
fn is_outcome(s: &str, allow_class: bool) -> bool {
    matches!(s, "connect" | "timeout" | "reset")
        || (allow_class && s == "5xx")
        || s.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c))
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "(none defined)".to_string()
    } else {
        names.join(", ")
    }
}

/// `host:port` with a numeric port.
pub fn parse_authority(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && !host.contains('/')).then_some((host, port))
}

/// toml's message, without its own rendering of the source line.
fn toml_message(e: &toml::de::Error) -> String {
    let m = e.message().trim().to_string();
    if m.starts_with("unknown field") {
        format!("{m}; remove it or correct its spelling")
    } else if m.starts_with("invalid type") {
        format!("{m}; change the value to that type")
    } else if m.starts_with("missing field") {
        format!("{m}; add it")
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "PORT" => Some("8081".into()),
            // Everything that would end a TOML string or start new syntax.
            "NASTY" => Some("a\"b\\c\nd]e#f\n[admin]\nlisten = \"127.0.0.1:1\"".into()),
            "LONG_NAME_FOR_AN_ADDRESS" => Some("127.0.0.1:7".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("t.toml", text, PathBuf::new(), &env)
    }

    const SERVER: &str = "[server]\nlisten = \"127.0.0.1:1\"\n";

    /// The error for `body` after a two-line `[server]` table, as
    /// (line, column, message).
    fn refused(body: &str) -> (usize, usize, String) {
        let e = parse(&format!("{SERVER}{body}")).expect_err(body);
        (e.line, e.column, e.message)
    }

    #[track_caller]
    fn assert_refused(body: &str, at: (usize, usize), phrase: &str) {
        let (line, column, message) = refused(body);
        assert_eq!((line, column), at, "{message}");
        assert!(message.contains(phrase), "{message}");
    }

    #[test]
    fn expands_variables_and_defaults() {
        let c = parse("[server]\nlisten = \"127.0.0.1:${PORT}\"\n").unwrap();
        assert_eq!(c.server.listen.port(), 8081);
        let c = parse("[server]\nlisten = \"${ADDR:-127.0.0.1:9}\"\n").unwrap();
        assert_eq!(c.server.listen.port(), 9);
    }

    #[test]
    fn a_variable_holding_toml_syntax_stays_one_string_value() {
        let c = parse(&format!(
            "{SERVER}[access_log]\npath = \"${{NASTY}}\"\n[metrics]\nduration_buckets = [\"${{NASTY}}\"]\n"
        ));
        // The array holds a string, so its type is what is refused, at the
        // array's element: the variable added no element and no table.
        let e = c.unwrap_err();
        assert_eq!((e.line, e.column), (6, 21), "{e}");
        let c = parse(&format!("{SERVER}[access_log]\npath = \"${{NASTY}}\"\n")).unwrap();
        assert_eq!(c.access_log.unwrap().path, env("NASTY").unwrap());
        assert_eq!(c.admin, None);
    }

    #[test]
    fn variables_in_comments_and_keys_are_left_alone() {
        let c = parse(
            "# ${NOPE} and an unclosed ${\n[server]\nlisten = \"127.0.0.1:1\" # ${NOPE}\n\n[upstreams.\"${PORT}\"]\ninstances = [\"127.0.0.1:2\"] # ${\n",
        )
        .unwrap();
        assert_eq!(c.upstreams.keys().collect::<Vec<_>>(), ["${PORT}"]);
    }

    #[test]
    fn missing_variable_names_it_with_position() {
        let e = parse("[server]\nlisten = \"${NOPE}\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 11));
        assert!(e.message.contains("`NOPE` is not set"), "{e}");
    }

    #[test]
    fn expansion_errors_point_at_the_dollar_as_written() {
        // Escapes before the variable are longer in the file than in the value.
        assert_refused(
            "[access_log]\npath = \"\\t\\u00e9\\\"x${NOPE}\"\n",
            (4, 20),
            "`NOPE` is not set",
        );
        // A multi-line string drops its first newline and a line-ending
        // backslash with the indentation after it.
        assert_refused(
            "[access_log]\npath = \"\"\"\nab \\\n    cd${NOPE}\"\"\"\n",
            (6, 7),
            "`NOPE` is not set",
        );
        assert_refused(
            "[access_log]\npath = '''\nx\\n${NOPE}'''\n",
            (5, 4),
            "`NOPE` is not set",
        );
        assert_refused(
            "[access_log]\npath = 'a ${9-x}'\n",
            (4, 11),
            "is not a valid variable name",
        );
        assert_refused(
            "[access_log]\npath = \"a ${NOPE\"\n",
            (4, 11),
            "`${` is not closed",
        );
    }

    #[test]
    fn a_variable_outside_a_string_is_a_syntax_error_with_a_hint() {
        let (line, column, message) = refused("[upstreams.a]\ninstances = [${PORT}]\n");
        assert_eq!((line, column), (4, 14), "{message}");
        assert!(
            message.contains("expanded only inside a string"),
            "{message}"
        );
    }

    #[test]
    fn positions_after_an_expanded_variable_are_those_of_the_file() {
        // The value is shorter than the variable on the same line...
        assert_refused(
            "[upstreams.a]\ninstances = [\"${LONG_NAME_FOR_AN_ADDRESS}\", \"nope\"]\n",
            (4, 45),
            "`nope`, which is not `host:port`",
        );
        // ...and spans lines where the variable did not, lines above.
        assert_refused(
            "[access_log]\npath = \"${NASTY}\"\n[tracing]\nendpoint = \"http://127.0.0.1:4318/\"\nexport_interval = \"0ms\"\n",
            (7, 19),
            "export_interval = \"0ms\" in [tracing]",
        );
    }

    #[test]
    fn zero_server_limits_are_refused_at_their_value() {
        let server = |extra: &str| {
            let e = parse(&format!("{SERVER}{extra}\n")).unwrap_err();
            (e.line, e.column, e.message)
        };
        let (line, column, m) = server("header_read_timeout = \"0ms\"");
        assert_eq!((line, column), (3, 23), "{m}");
        assert_eq!(
            m,
            "header_read_timeout = \"0ms\" in [server] gives no client time to send its request headers; use a duration like \"10s\""
        );
        let (line, column, m) = server("max_headers = 0");
        assert_eq!((line, column), (3, 15), "{m}");
        assert!(m.contains("would answer every request 431"), "{m}");
        let (line, column, m) = server("max_body_bytes = 0");
        assert_eq!((line, column), (3, 18), "{m}");
        assert!(m.contains("413"), "{m}");
        let (line, column, m) = server("max_headers = -1");
        assert_eq!((line, column), (3, 15), "{m}");
        let (line, column, m) = server("workers = 0");
        assert_eq!((line, column), (3, 11), "{m}");
        assert!(m.contains("workers must be at least 1"), "{m}");
    }

    const UP: &str = "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n";

    #[test]
    fn breaker_settings_that_would_stall_it_are_refused() {
        assert_refused(
            &format!("{UP}[upstreams.api.breaker]\nhalf_open_probes = 0\n"),
            (6, 20),
            "half_open_probes = 0 in [upstreams.api.breaker] lets no probe through",
        );
        assert_refused(
            &format!("{UP}[upstreams.api.breaker]\nsuccesses_to_close = 0\n"),
            (6, 22),
            "successes_to_close = 0",
        );
        assert_refused(
            &format!("{UP}[upstreams.api.breaker]\nwindow = \"0s\"\n"),
            (6, 10),
            "could never open the breaker",
        );
        assert_refused(
            &format!("{UP}[upstreams.api.breaker]\nfailure_rate = 1.5\n"),
            (6, 16),
            "use 0 (off) to 1",
        );
        // A cool-down over the default cap points at the cool-down...
        assert_refused(
            &format!("{UP}[upstreams.api.breaker]\ncool_down = \"2m\"\n"),
            (6, 13),
            "max_cool_down = \"1m\" in [upstreams.api.breaker] is shorter than cool_down = \"2m\"",
        );
        // ...a cap written under it, at the cap.
        assert_refused(
            &format!("{UP}[upstreams.api.breaker]\nmax_cool_down = \"1s\"\ncool_down = \"2s\"\n"),
            (6, 17),
            "make max_cool_down at least cool_down",
        );
        // Both triggers off is how an upstream goes without a breaker.
        parse(&format!(
            "{SERVER}{UP}[upstreams.api.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n"
        ))
        .unwrap();
    }

    #[test]
    fn health_and_outlier_settings_that_would_disable_them_are_refused() {
        let health = format!("{UP}[upstreams.api.health]\npath = \"/health\"\n");
        assert_refused(
            &format!("{health}interval = \"0ms\"\n"),
            (7, 12),
            "is under 10ms",
        );
        assert_refused(
            &format!("{health}healthy_threshold = 0\n"),
            (7, 21),
            "healthy_threshold = 0 in [upstreams.api.health]",
        );
        assert_refused(
            &format!("{health}expected_status = [200, 99]\n"),
            (7, 25),
            "lists 99, which is not an HTTP status",
        );
        assert_refused(
            &format!("{UP}[upstreams.api.health]\npath = \"health\"\n"),
            (6, 8),
            "start it with `/`",
        );
        let outlier = format!("{UP}[upstreams.api.outlier]\n");
        assert_refused(
            &format!("{outlier}max_ejected_percent = 150\n"),
            (6, 23),
            "use 1 to 100",
        );
        assert_refused(
            &format!("{outlier}consecutive_5xx = 0\nconsecutive_gateway_failures = 0\n"),
            (6, 19),
            "would never eject an instance",
        );
        assert_refused(
            &format!("{outlier}base_ejection_time = \"0s\"\n"),
            (6, 22),
            "for no time at all",
        );
    }

    #[test]
    fn upstream_limits_and_weights_are_checked_at_their_value() {
        assert_refused(
            "[upstreams.api]\ninstances = [\"127.0.0.1:3000\", { address = \"127.0.0.1:3001\", weight = 0 }]\n",
            (4, 71),
            "weight = 0 for instance `127.0.0.1:3001` of upstream `api` would never pick it",
        );
        assert_refused(
            &format!("{UP}max_connections_per_instance = 0\n"),
            (5, 32),
            "503 pool-exhausted",
        );
        assert_refused(
            &format!("{UP}connect_timeout = \"0ms\"\n"),
            (5, 19),
            "would fail every connection attempt",
        );
        assert_refused(
            &format!("{UP}idle_timeout = \"0s\"\n"),
            (5, 16),
            "max_idle_per_instance = 0 to keep none",
        );
        assert_refused(
            &format!("{UP}failure_on = [\"5xx\", \"6xx\"]\n"),
            (5, 22),
            "lists `6xx` in failure_on",
        );
        // No idle connection kept is a choice, not a breakage.
        parse(&format!("{SERVER}{UP}max_idle_per_instance = 0\n")).unwrap();
    }

    const ROUTE: &str = "[[route]]\nid = \"api\"\nupstream = \"api\"\n";

    #[test]
    fn route_timeouts_methods_and_retries_are_checked_at_their_value() {
        let route = |extra: &str| format!("{UP}\n{ROUTE}{extra}\n");
        assert_refused(
            &route("timeout = \"0ms\""),
            (9, 11),
            "would time out every request at once",
        );
        assert_refused(
            &route("timeout = \"5s\"\ntry_timeout = \"10s\""),
            (10, 15),
            "try_timeout = \"10s\" in route `api` is longer than the route's timeout, \"5s\"",
        );
        assert_refused(
            &route("try_timeout = \"1m\""),
            (9, 15),
            "longer than [server] request_timeout, \"30s\"",
        );
        assert_refused(
            &route("methods = [\"GET\", \"post\"]"),
            (9, 19),
            "lists method `post`",
        );
        assert_refused(&route("methods = []"), (9, 11), "would match no request");
        let retry = |extra: &str| route(&format!("[route.retry]\n{extra}"));
        assert_refused(
            &retry("attempts = 0"),
            (10, 12),
            "attempts = 0 in route `api`'s retry is out of range",
        );
        assert_refused(
            &retry("backoff_base = \"500ms\""),
            (10, 16),
            "backoff_max = \"250ms\" in route `api`'s retry is shorter than backoff_base = \"500ms\"",
        );
        assert_refused(
            &retry("backoff_base = \"0ms\""),
            (10, 16),
            "with no back-off",
        );
        assert_refused(
            &retry("budget_ratio = 0.0\nbudget_floor_per_second = 0.0"),
            (10, 16),
            "the budget would allow no retry",
        );
        assert_refused(
            &retry("on = [\"connect\", \"5xx\"]"),
            (10, 18),
            "retries on `5xx`",
        );
    }

    #[test]
    fn filter_settings_are_checked_at_their_value() {
        let filter = |extra: &str| format!("[filters.f]\nplugin = \"p\"\n{extra}\n");
        assert_refused(
            &filter("instances = 0"),
            (5, 13),
            "instances = 0 in [filters.f] keeps no instance ready",
        );
        assert_refused(
            &filter("timeout = \"0ms\""),
            (5, 11),
            "interrupt every call",
        );
        assert_refused(&filter("memory_limit_mib = 1024"), (5, 20), "use 1 to 256");
        assert_refused(
            &filter("failure_status = 99"),
            (5, 18),
            "is not an HTTP status",
        );
        assert_refused(
            &filter("env = [\"A\", \"\"]"),
            (5, 13),
            "not a variable name",
        );
        assert_refused(
            "[filters.\"a:b\"]\nplugin = \"p\"\n",
            (3, 10),
            "filter name `a:b`",
        );
    }

    #[test]
    fn state_telemetry_and_metrics_settings_are_checked_at_their_value() {
        assert_refused("[state]\ntimeout = \"0ms\"\n", (4, 11), "every state call");
        assert_refused(
            "[state]\npool_size = 0\n",
            (4, 13),
            "no connection to Redis",
        );
        let tracing = "[tracing]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
        assert_refused(
            &format!("{tracing}sample_ratio = 2.0\n"),
            (5, 16),
            "use 0 to 1",
        );
        assert_refused(
            &format!("{tracing}max_queued_spans = 0\n"),
            (5, 20),
            "would drop every span",
        );
        assert_refused(
            "[metrics]\nduration_buckets = [0.1, 0.5, 0.5]\n",
            (4, 31),
            "strictly increasing",
        );
        assert_refused("[metrics]\nduration_buckets = []\n", (4, 20), "is empty");
    }

    #[test]
    fn a_setting_left_to_its_default_is_reported_at_its_table() {
        let text = "# a comment\n[server]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.api.breaker]\nwindow = \"1s\"\n";
        let src = Source {
            file: "t.toml",
            text,
            doc: DeTable::parse(text).unwrap(),
        };
        let at = |path: &[&str]| {
            let e = src.error_key(path, "x");
            (e.line, e.column)
        };
        assert_eq!(at(&["upstreams", "api", "breaker", "window"]), (6, 10));
        assert_eq!(at(&["upstreams", "api", "breaker", "cool_down"]), (5, 1));
        assert_eq!(at(&["server", "max_connections"]), (2, 1));
        assert_eq!(at(&["server", "listen"]), (3, 10));
        assert_eq!(at(&["tracing", "export_timeout"]), (1, 1));
        assert_eq!(src.written(&["server", "listen"]), Some("\"127.0.0.1:1\""));
        assert_eq!(src.written(&["server", "max_connections"]), None);
        let name = src.error_key_name(&["upstreams", "api", "breaker"], "x");
        assert_eq!((name.line, name.column), (5, 16));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        // Found by fuzzing: the multiplication overflowed.
        assert!(parse_duration("307445734561825861m").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("525600m").is_ok());
    }

    #[test]
    fn a_zero_connection_setting_is_refused_at_its_value() {
        for (line, what) in [
            ("idle_timeout = \"0s\"", "idle_timeout must be at least 1ms"),
            (
                "http2_keepalive_interval = \"0ms\"",
                "http2_keepalive_interval must be at least 1ms",
            ),
            (
                "http2_keepalive_timeout = \"0s\"",
                "http2_keepalive_timeout must be at least 1ms",
            ),
            ("max_connections = 0", "max_connections must be at least 1"),
            (
                "max_connections_per_client = 0",
                "max_connections_per_client must be at least 1",
            ),
        ] {
            let text = format!("[server]\nlisten = \"127.0.0.1:9\"\n{line}\n");
            let e = Config::parse("t.toml", &text, PathBuf::new(), &env).unwrap_err();
            let column = line.find('=').unwrap() + 3;
            assert_eq!((e.line, e.column), (3, column), "{e}");
            assert!(e.message.contains(what), "{e}");
        }
        let c = Config::parse(
            "t.toml",
            "[server]\nlisten = \"127.0.0.1:9\"\nmax_connections_per_client = 4\n",
            PathBuf::new(),
            &env,
        )
        .unwrap();
        assert_eq!(
            c.server.max_connections_per_client.map(|n| n.into_inner()),
            Some(4)
        );
        assert_eq!(*c.server.max_connections.get_ref(), 10_000);
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_col("ab\ncdé f", 9), (2, 6));
    }

    #[test]
    fn string_offsets_follow_escapes() {
        let (value, at) = decode_with_offsets("\"a\\u00e9b\"").unwrap();
        assert_eq!(value, "aéb");
        assert_eq!(at, [1, 2, 2, 8, 9]);
        assert_eq!(decode_with_offsets("'a\\n'").unwrap().0, "a\\n");
        assert_eq!(decode_with_offsets("\"\"\"\r\nx\"\"\"").unwrap().0, "x");
    }
}
