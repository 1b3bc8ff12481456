//! The gateway's TOML configuration: the schema, `${VAR}` expansion, and the
//! checks that span fields. Every refusal names the file, line and column and
//! says in one sentence what to change.

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
}

impl ServerConfig {
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
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

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

/// Where the config text came from, for error positions.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
    fn error_span<T>(&self, s: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error_at(s.span().start, message)
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

/// Replaces `${NAME}` and `${NAME:-default}` with environment values.
/// Comment lines are left alone so a commented-out variable is no error.
fn expand_env(
    src: &Source<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(src.text.len());
    let mut offset = 0;
    for line in src.text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            offset += line.len();
            continue;
        }
        let mut rest = line;
        let mut at = offset;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| {
                src.error_at(
                    at + start,
                    "`${` is not closed; write `${NAME}` or `${NAME:-default}`",
                )
            })?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(src.error_at(
                    at + start,
                    format!("`${{{expr}}}` is not a valid variable name"),
                ));
            }
            match env(name).or_else(|| default.map(str::to_string)) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(src.error_at(
                        at + start,
                        format!(
                            "environment variable `{name}` is not set; set it or give a default as `${{{name}:-value}}`"
                        ),
                    ));
                }
            }
            let consumed = start + 2 + end + 1;
            rest = &rest[consumed..];
            at += consumed;
        }
        out.push_str(rest);
        offset += line.len();
    }
    Ok(out)
}

impl Config {
    /// Reads, expands, parses and validates a config file.
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
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let src = Source { file, text };
        let expanded = expand_env(&src, env)?;
        // Positions below refer to the expanded text; expansion keeps lines,
        // so lines stay exact and columns shift only after a variable.
        let src = Source {
            file,
            text: &expanded,
        };
        let mut config: Config = toml::from_str(&expanded).map_err(|e| {
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

    fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        self.server.validate(src)?;
        if *self.state.backend.get_ref() == StateBackend::Redis {
            match &self.state.url {
                None => {
                    return Err(src.error_span(
                        &self.state.backend,
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
        if self.state.timeout.0.is_zero() {
            return Err(src.error_span(&self.state.backend, "[state] timeout must be at least 1ms"));
        }
        for (what, n) in [
            ("pool_size", &self.state.pool_size),
            ("max_entries", &self.state.max_entries),
        ] {
            if *n.get_ref() == 0 {
                return Err(src.error_span(n, format!("[state] {what} must be at least 1")));
            }
        }

        for (name, f) in &self.filters {
            // Filter names prefix shared-state keys and label metrics, so
            // they keep to a character set neither can confuse.
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(src.error_span(
                    &f.plugin,
                    format!("filter name `{name}` may use only letters, digits, `-` and `_`"),
                ));
            }
            let plugin = f.plugin.get_ref();
            if plugin.is_empty()
                || !plugin
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(src.error_span(
                    &f.plugin,
                    format!("filter `{name}` names plugin `{plugin}`; a plugin name uses only letters, digits, `-` and `_`"),
                ));
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
            if !(100..=599).contains(&f.failure_status) {
                return Err(src.error_span(
                    &f.plugin,
                    format!(
                        "filter `{name}` has failure_status {}; use an HTTP status from 100 to 599",
                        f.failure_status
                    ),
                ));
            }
            if let Some(bad) = f
                .env
                .get_ref()
                .iter()
                .find(|v| v.is_empty() || v.contains('=') || v.contains('\0'))
            {
                return Err(src.error_span(
                    &f.env,
                    format!("filter `{name}` grants environment variable {bad:?}, which is not a variable name"),
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
            if f.memory_limit_mib == 0 || f.memory_limit_mib > MAX_MEMORY_LIMIT_MIB {
                return Err(src.error_span(
                    &f.plugin,
                    format!(
                        "filter `{name}` has memory_limit_mib {}; use 1 to {MAX_MEMORY_LIMIT_MIB}",
                        f.memory_limit_mib
                    ),
                ));
            }
        }
        for (name, u) in &self.upstreams {
            if u.instances.get_ref().is_empty() {
                return Err(src.error_span(
                    &u.instances,
                    format!("upstream `{name}` has no instances; list at least one `host:port`"),
                ));
            }
            for addr in u.instances.get_ref().iter().map(InstanceConfig::address) {
                if parse_authority(addr).is_none() {
                    return Err(src.error_span(
                        &u.instances,
                        format!("upstream `{name}` has instance `{addr}`, which is not `host:port`; write it like \"127.0.0.1:3000\""),
                    ));
                }
            }
            // Per-instance state (breaker, health, pool) is keyed by address;
            // one address twice would be one instance counted twice.
            let mut seen = std::collections::HashSet::new();
            for addr in u.instances.get_ref().iter().map(InstanceConfig::address) {
                if !seen.insert(addr) {
                    return Err(src.error_span(
                        &u.instances,
                        format!("upstream `{name}` lists instance `{addr}` twice; list it once and give it a weight instead"),
                    ));
                }
            }
        }
        for (name, u) in &self.upstreams {
            if let Some(bad) = u.failure_on.get_ref().iter().find(|f| !is_outcome(f, true)) {
                return Err(src.error_span(
                    &u.failure_on,
                    format!("upstream `{name}` lists `{bad}` in failure_on; use connect, timeout, reset, 5xx or a status code"),
                ));
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for r in &self.routes {
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
            if let Some(retry) = &r.retry {
                let rc = retry.get_ref();
                if let Some(bad) = rc.on.iter().find(|o| !is_outcome(o, false)) {
                    return Err(src.error_span(
                        retry,
                        format!("route `{id}` retries on `{bad}`; use connect, reset, timeout or a status code"),
                    ));
                }
                if rc.attempts == 0 || rc.attempts > 10 {
                    return Err(src.error_span(
                        retry,
                        format!("route `{id}` has retry attempts = {}; use 1 to 10 (tries in all, the first included)", rc.attempts),
                    ));
                }
                if !(0.0..=1.0).contains(&rc.budget_ratio) || rc.budget_floor_per_second < 0.0 {
                    return Err(src.error_span(
                        retry,
                        format!("route `{id}` has a retry budget_ratio outside 0 to 1 or a negative budget_floor_per_second"),
                    ));
                }
            }
            if let Some(methods) = &r.methods {
                for m in methods {
                    if http::Method::from_bytes(m.as_bytes()).is_err()
                        || m.chars().any(|c| c.is_ascii_lowercase())
                    {
                        return Err(src.error_span(&r.id, format!("route `{id}` lists method `{m}`; write methods in capitals, like \"GET\"")));
                    }
                }
            }
        }
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
            if !(0.0..=1.0).contains(&t.sample_ratio) {
                return Err(src.error_span(
                    &t.endpoint,
                    format!(
                        "[tracing] sample_ratio is {}; use 0 to 1 (1 keeps every trace)",
                        t.sample_ratio
                    ),
                ));
            }
        }
        let b = &self.metrics.duration_buckets;
        if b.is_empty()
            || b.windows(2).any(|w| w[0] >= w[1])
            || b.iter().any(|x| !x.is_finite() || *x <= 0.0)
        {
            return Err(src.error_at(
                0,
                "[metrics] duration_buckets must be positive and strictly increasing",
            ));
        }
        Ok(())
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
        (k == "PORT").then(|| "8081".to_string())
    }

    #[test]
    fn expands_variables_and_defaults() {
        let c = Config::parse(
            "t.toml",
            "[server]\nlisten = \"127.0.0.1:${PORT}\"\n",
            PathBuf::new(),
            &env,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 8081);
        let c = Config::parse(
            "t.toml",
            "[server]\nlisten = \"${ADDR:-127.0.0.1:9}\"\n",
            PathBuf::new(),
            &env,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9);
    }

    #[test]
    fn missing_variable_names_it_with_position() {
        let e = Config::parse(
            "t.toml",
            "[server]\nlisten = \"${NOPE}\"\n",
            PathBuf::new(),
            &env,
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (2, 11));
        assert!(e.message.contains("`NOPE` is not set"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
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
}
