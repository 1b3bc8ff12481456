//! Telemetry: metrics (OpenTelemetry instruments exported in the Prometheus
//! text format on the admin listener's `/metrics`), traces (`trace`, OTLP)
//! and the access log (`access_log`).
//!
//! Names are given in full (`_total`, `_seconds`) rather than left to the
//! exporter's suffixing, so what is written here is exactly what an operator
//! queries.
//!
//! What is recorded on every request goes through instruments bound to
//! their labels when the route, filter or instance is built (`RouteMetrics`,
//! `FilterMetrics`, `InstanceMetrics`): a bound instrument records without
//! hashing and looking up its label set, which is most of what an unbound
//! record costs. The request-path histograms (request duration and sizes,
//! filter call and upstream try durations) are the Prometheus client's,
//! registered in the same registry: they record with a few atomic adds,
//! where the OpenTelemetry SDK's take a lock per record, which doubled the
//! metrics' cost per request. benches/metrics.rs measures all three ways.

pub mod access_log;
pub mod live;
pub mod log_limit;
pub mod tcp;
pub mod trace;

use arc_swap::ArcSwap;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Gauge, Histogram, Meter, MeterProvider,
};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use parking_lot::{Mutex, RwLock};
use prometheus::HistogramVec;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Plugin name and SHA-256 of each version in use, read at scrape time.
type PluginVersions = Arc<ArcSwap<Vec<(Arc<str>, String)>>>;
/// Each certificate name the listener presents, with the Unix time its
/// certificate ends.
type CertificateEnds = Arc<ArcSwap<Vec<(String, i64)>>>;

/// Bucket bounds of the byte-size histograms: 64 B to 16 MiB by fours.
const SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];
/// Bucket bounds of plugin histograms whose name ends in `_seconds`.
const PLUGIN_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of other plugin histograms (counts, scores): 1 to 10^6.
const PLUGIN_PLAIN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0,
];

/// Distinct label sets one plugin metric may have; more fold into one
/// `overflow="true"` series so a bad label cannot blow up cardinality.
pub const PLUGIN_SERIES_CAP: usize = 100;
/// Distinct metrics one plugin may create.
pub const PLUGIN_METRICS_CAP: usize = 32;
/// Label sets one plugin may have over all its metrics, and the bytes they
/// may add to a scrape (estimated as Prometheus' text writes them, a
/// histogram's buckets included); past either, new label sets fold into
/// their metric's `overflow="true"` series, so one plugin cannot bloat the
/// scrape however it spends its metric and label caps.
pub const PLUGIN_SERIES_BUDGET: usize = 1_000;
pub const PLUGIN_EXPOSITION_BUDGET: usize = 512 * 1024;
/// Longest label value a plugin may use, in bytes.
pub const PLUGIN_LABEL_VALUE_MAX: usize = 128;

/// Why a filter call failed, as counted in `gateway_plugin_failures_total`.
pub const FAILURE_REASONS: &[&str] = &[
    "trap",
    "deadline",
    "memory",
    "stack-overflow",
    "invalid-answer",
    "instantiate",
    "suspended",
];

/// Why a client connection was refused at accept, as counted in
/// `gateway_connections_refused_total` and sent as `x-gateway-error`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnectionRefusal {
    /// `[server] max_connections` are open.
    TooManyConnections,
    /// `[server] max_connections_per_client` are open from the client's address.
    TooManyClientConnections,
}

impl ConnectionRefusal {
    pub const ALL: [ConnectionRefusal; 2] = [
        ConnectionRefusal::TooManyConnections,
        ConnectionRefusal::TooManyClientConnections,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionRefusal::TooManyConnections => "too-many-connections",
            ConnectionRefusal::TooManyClientConnections => "too-many-client-connections",
        }
    }
}
/// The `reason` labels of `gateway_http_request_headers_dropped_total`.
pub const DROPPED_HEADER_REASONS: &[&str] = &["underscore", "untrusted_forwarding"];

pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    meter: Meter,
    pub http_requests: Counter<u64>,
    pub http_duration: HistogramVec,
    pub http_request_size: HistogramVec,
    pub http_response_size: HistogramVec,
    /// Requests in flight and client connections, read at scrape time.
    live: Arc<Live>,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: Counter<u64>,
    pub upstream_picks: Counter<u64>,
    pub health_checks: Counter<u64>,
    pub health_check_duration: Histogram<f64>,
    pub plugin_metric_overflow: Counter<u64>,
    pub access_log_dropped: Counter<u64>,
    /// TCP routes' connections and bytes.
    pub tcp: tcp::TcpMetrics,
    /// The plugin versions the running configuration uses, for
    /// `gateway_plugin_info`; replaced on every applied reload.
    plugin_versions: PluginVersions,
    certificate_ends: CertificateEnds,
    /// Finished TLS handshakes, by version and ALPN protocol.
    tls_handshakes: Counter<u64>,
    /// Failed TLS handshakes, by reason (`tls::HandshakeFailure`).
    tls_handshake_failures: Counter<u64>,
    grpc_responses: Counter<u64>,
    tunnels: Counter<u64>,
    tunnel_bytes: Counter<u64>,
    tunnels_closed: Counter<u64>,
    /// Failed TLS handshakes with upstream instances, by upstream and reason.
    pub tls_upstream_handshake_failures: Counter<u64>,
    /// Connection counts of every upstream instance alive, for the
    /// `gateway_upstream_connections_*` gauges read at scrape time.
    connection_gauges: Arc<Mutex<Vec<Weak<ConnectionGauge>>>>,
    pub plugin_calls: Counter<u64>,
    /// Filters' outbound calls, by filter, cluster and result.
    pub callouts: Counter<u64>,
    pub callout_duration: Histogram<f64>,
    pub plugin_failures: Counter<u64>,
    pub plugin_instances_retired: Counter<u64>,
    /// Instances made and configured, by filter and result.
    pub plugin_instance_starts: Counter<u64>,
    /// Filters suspended after failing call after call.
    pub plugin_suspensions: Counter<u64>,
    pub plugin_duration: HistogramVec,
    pub state_calls: Counter<u64>,
    pub upstream_requests: Counter<u64>,
    pub upstream_retries: Counter<u64>,
    pub upstream_unavailable: Counter<u64>,
    pub breaker_transitions: Counter<u64>,
    pub breaker_state: Gauge<i64>,
    pub upstream_healthy: Gauge<i64>,
    pub health_transitions: Counter<u64>,
    pub outlier_ejections: Counter<u64>,
    pub pool_requests: Counter<u64>,
    pub connections_opened: Counter<u64>,
    pub connect_duration: Histogram<f64>,
    pub state_duration: Histogram<f64>,
    pub reloads: Counter<u64>,
    connections_refused: Counter<u64>,
    /// Requests refused at the edge, by reason (`edge::RefusalKind`).
    requests_refused: Counter<u64>,
    /// Request headers removed before routing, by reason.
    headers_dropped: Counter<u64>,
    plugin_metrics: Mutex<PluginMetrics>,
    /// State calls refused by a filter's quota, by filter and limit.
    state_quota_refusals: Counter<u64>,
    /// The access log and the tracer, when configured; set once at start.
    pub access_log: OnceLock<access_log::AccessLog>,
    pub tracing: OnceLock<trace::Tracing>,
}

/// The metrics plugins made, and what each plugin has spent of its budget.
#[derive(Default)]
struct PluginMetrics {
    metrics: HashMap<String, PluginMetric>,
    spent: HashMap<String, Spent>,
}

#[derive(Default, Clone, Copy)]
struct Spent {
    series: usize,
    bytes: usize,
}

/// A metric a plugin made, and the label sets it has used so far.
struct PluginMetric {
    instrument: PluginInstrument,
    series: HashSet<Vec<(String, String)>>,
    /// Whether the log has said this metric overflowed (said once).
    overflowed: bool,
}

#[derive(Clone)]
enum PluginInstrument {
    Counter(Counter<f64>),
    Histogram(Histogram<f64>),
    Gauge(Gauge<f64>),
}

enum BoundPluginInstrument {
    Counter(BoundCounter<f64>),
    Histogram(BoundHistogram<f64>),
    /// Gauges have no bound form: the series' labels go with each value.
    Gauge(Gauge<f64>, Vec<KeyValue>),
}

/// One series of a plugin metric, resolved once: what a measurement with
/// the same name and labels records into, without the name formatting, the
/// checks and the lock that resolving takes.
pub struct PluginSeries {
    /// Bound to the series' labels: recording neither hashes nor looks
    /// them up.
    instrument: BoundPluginInstrument,
    /// Set when the series is the metric's overflow series: each
    /// measurement is also counted as overflow for the plugin.
    overflow: Option<BoundCounter<u64>>,
}

impl PluginSeries {
    pub fn record(&self, value: f64) {
        match &self.instrument {
            BoundPluginInstrument::Counter(c) => c.add(value),
            BoundPluginInstrument::Histogram(h) => h.record(value),
            BoundPluginInstrument::Gauge(g, attrs) => g.record(value, attrs),
        }
        if let Some(overflow) = &self.overflow {
            overflow.add(1);
        }
    }
}

/// About how many bytes a new series adds to the scrape: one line per
/// counter, one per bucket plus `_sum` and `_count` for a histogram, each
/// with the name, every label and a value.
fn exposition_bytes(
    name: &str,
    plugin: &str,
    labels: &[(String, String)],
    instrument: &PluginInstrument,
) -> usize {
    let labels: usize = labels
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + "plugin".len()
        + plugin.len()
        + 4;
    let line = name.len() + labels + 32;
    match instrument {
        PluginInstrument::Counter(_) | PluginInstrument::Gauge(_) => line,
        // Bucket lines also carry `le="…"` and the `_bucket` suffix.
        PluginInstrument::Histogram(_) => PLUGIN_HISTOGRAM_LINES * (line + 20),
    }
}

/// Lines one plugin histogram series writes: its largest bucket set, `+Inf`,
/// `_sum` and `_count`.
const PLUGIN_HISTOGRAM_LINES: usize = 14 + 3;

/// Whether a plugin's measurement is one the gateway records: finite and
/// not negative.
pub fn valid_plugin_value(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

/// Whether `s` may name a plugin metric or label: 1 to 64 of a-z, 0-9, _.
pub fn valid_plugin_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// How a filter's outbound call ended, as `gateway_callouts_total` counts.
pub const CALLOUT_RESULTS: &[&str] = &[
    "ok",
    "not_allowed",
    "invalid",
    "unavailable",
    "failed",
    "timeout",
    "too_large",
    "too_many",
];

/// What a plugin asks for through `counter-add` or `histogram-observe`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PluginMetricKind {
    Counter,
    Histogram,
    /// 0.2.0 filters only: the last value set.
    Gauge,
}

/// An attribute value shared without copying the string on every request.
pub fn shared(s: &Arc<str>) -> opentelemetry::Value {
    opentelemetry::Value::String(StringValue::from(s.clone()))
}

/// Text a plugin chose (a log message, an error, a trap's frame names) made
/// safe for one log record: line breaks, other control characters and the
/// invisible characters that reorder or split a line on a terminal are
/// written as escapes, and so is the backslash, so an escape in the output
/// always came from here. Such text can then neither start a line of its
/// own nor disguise the line it sits in.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    fn needs(c: char) -> bool {
        c.is_control()
            || c == '\\'
            || matches!(
                c,
                '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
            )
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    }
    if !text.chars().any(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Metrics {
    pub fn new(duration_buckets: &[f64]) -> anyhow::Result<Metrics> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_counter_suffixes()
            .without_target_info()
            .scope_info_enabled(false)
            .build()?;
        // Resident memory, CPU, open files and threads, read from /proc at
        // scrape time under the gateway's prefix.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "gateway",
            ),
        ))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("gateway");
        let buckets = duration_buckets.to_vec();
        let connections_refused = meter
            .u64_counter("gateway_connections_refused_total")
            .with_description("Client connections answered 503 and closed at accept, by reason (too-many-connections, too-many-client-connections)")
            .build();
        // At zero from start-up, so an alert has a series before the first refusal.
        for reason in ConnectionRefusal::ALL {
            connections_refused.add(0, &[KeyValue::new("reason", reason.as_str())]);
        }
        let live: Arc<Live> = Arc::default();
        observe_live(&meter, &live);
        let plugin_versions: PluginVersions = Arc::default();
        let certificate_ends: CertificateEnds = Arc::default();
        observe_certificates(&meter, &certificate_ends);
        let connection_gauges: Arc<Mutex<Vec<Weak<ConnectionGauge>>>> = Arc::default();
        observe_process(&meter, &plugin_versions, &connection_gauges);
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                prometheus::HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        Ok(Metrics {
            http_duration: histogram(
                "gateway_http_request_duration_seconds",
                "Time from receiving a request to sending the response head, by route",
                &["route"],
                &buckets,
            )?,
            http_request_size: histogram(
                "gateway_http_request_size_bytes",
                "Request body bytes read, by route",
                &["route"],
                SIZE_BUCKETS,
            )?,
            http_response_size: histogram(
                "gateway_http_response_size_bytes",
                "Response body bytes sent, by route",
                &["route"],
                SIZE_BUCKETS,
            )?,
            upstream_duration: histogram(
                "gateway_upstream_request_duration_seconds",
                "One try at an upstream instance, from sending to the response head",
                &["upstream", "endpoint"],
                &buckets,
            )?,
            plugin_duration: histogram(
                "gateway_plugin_call_duration_seconds",
                "Time spent in one filter call, by filter, plugin and phase",
                &["filter", "plugin", "phase"],
                &[1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1],
            )?,
            live,
            http_requests: meter
                .u64_counter("gateway_http_requests_total")
                .with_description("HTTP requests answered, by route, method and status")
                .build(),
            upstream_errors: meter
                .u64_counter("gateway_upstream_errors_total")
                .with_description("Failed tries by upstream, instance and kind (connect_error, timeout, reset, status_5xx)")
                .build(),
            upstream_picks: meter
                .u64_counter("gateway_upstream_picks_total")
                .with_description("Instances chosen by the load balancer")
                .build(),
            health_checks: meter
                .u64_counter("gateway_upstream_health_checks_total")
                .with_description("Active health checks by upstream, instance and result (passed, failed)")
                .build(),
            health_check_duration: meter
                .f64_histogram("gateway_upstream_health_check_duration_seconds")
                .with_description("Time one active health check took")
                .with_boundaries(vec![1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0])
                .build(),
            plugin_metric_overflow: meter
                .u64_counter("gateway_plugin_metric_overflow_total")
                .with_description("Plugin measurements folded into an overflow series because the metric had too many label sets, by plugin")
                .build(),
            access_log_dropped: meter
                .u64_counter("gateway_access_log_dropped_total")
                .with_description("Access log lines dropped because the writer fell behind")
                .build(),
            plugin_versions,
            certificate_ends,
            tls_handshakes: meter
                .u64_counter("gateway_tls_handshakes_total")
                .with_description("TLS handshakes completed on the proxy listener, by TLS version and ALPN protocol")
                .build(),
            tls_handshake_failures: meter
                .u64_counter("gateway_tls_handshake_failures_total")
                .with_description("TLS handshakes that failed on the proxy listener, by reason")
                .build(),
            grpc_responses: meter
                .u64_counter("gateway_grpc_responses_total")
                .with_description("gRPC calls answered, by route and grpc-status (from the answer's head or its trailers)")
                .build(),
            tunnels: meter
                .u64_counter("gateway_tunnels_total")
                .with_description("Upgraded connections (WebSockets) tunnelled, by route and protocol")
                .build(),
            tunnel_bytes: meter
                .u64_counter("gateway_tunnel_bytes_total")
                .with_description("Bytes carried by tunnels, by route and direction (to_upstream, to_client), counted when each tunnel closes")
                .build(),
            tunnels_closed: meter
                .u64_counter("gateway_tunnels_closed_total")
                .with_description("Tunnels closed, by reason: closed (by either side), idle, lifetime, shutdown, error")
                .build(),
            tls_upstream_handshake_failures: meter
                .u64_counter("gateway_tls_upstream_handshake_failures_total")
                .with_description("TLS handshakes with upstream instances that failed, by upstream and reason; each is also a connect error of its try")
                .build(),
            connection_gauges,
            plugin_calls: meter
                .u64_counter("gateway_plugin_calls_total")
                .with_description("Calls into filter plugins, by filter, plugin and phase")
                .build(),
            plugin_failures: meter
                .u64_counter("gateway_plugin_failures_total")
                .with_description("Filter calls that failed, by filter, plugin, phase and reason")
                .build(),
            plugin_instances_retired: meter
                .u64_counter("gateway_plugin_instances_retired_total")
                .with_description(
                    "Healthy filter instances retired instead of reused, by reason \
                     (memory: grown past three quarters of memory_limit_mib)",
                )
                .build(),
            plugin_instance_starts: meter
                .u64_counter("gateway_plugin_instance_starts_total")
                .with_description(
                    "Filter instances made and configured, by filter, plugin and result (ok, failed)",
                )
                .build(),
            plugin_suspensions: meter
                .u64_counter("gateway_plugin_suspensions_total")
                .with_description(
                    "Times a filter was suspended after failing suspend_after calls in a row \
                     (its failure policy answers, no instance is made, until the pause ends), \
                     by filter and plugin",
                )
                .build(),
            state_calls: meter
                .u64_counter("gateway_state_calls_total")
                .with_description(
                    "Shared-state calls from filters, by backend and result (ok, unavailable, invalid)",
                )
                .build(),
            callouts: meter
                .u64_counter("gateway_callouts_total")
                .with_description("Outbound calls filters made through the callout interface, by filter, cluster and result (ok, not_allowed, invalid, unavailable, failed, timeout, too_large, too_many)")
                .build(),
            callout_duration: meter
                .f64_histogram("gateway_callout_duration_seconds")
                .with_description("Time a filter's outbound call took, answer body included, by filter and cluster")
                .with_boundaries(vec![
                    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0,
                ])
                .build(),
            state_duration: meter
                .f64_histogram("gateway_state_call_duration_seconds")
                .with_description("Time one shared-state call took, by backend")
                .with_boundaries(vec![
                    1e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 2.5e-2, 0.1,
                ])
                .build(),
            upstream_requests: meter
                .u64_counter("gateway_upstream_requests_total")
                .with_description(
                    "Tries sent to upstream instances, by upstream, instance and outcome (status class, connect_error, timeout, reset)",
                )
                .build(),
            upstream_retries: meter
                .u64_counter("gateway_upstream_retries_total")
                .with_description("Retries by route: sent, or refused by the retry budget (budget_exhausted)")
                .build(),
            upstream_unavailable: meter
                .u64_counter("gateway_upstream_unavailable_total")
                .with_description("Requests no instance could take, answered 503, by upstream and reason")
                .build(),
            breaker_transitions: meter
                .u64_counter("gateway_circuit_breaker_transitions_total")
                .with_description("Circuit breaker state changes, by upstream, instance, from, to and reason")
                .build(),
            breaker_state: meter
                .i64_gauge("gateway_circuit_breaker_state")
                .with_description("Circuit breaker state per instance: 0 closed, 1 half-open, 2 open")
                .build(),
            upstream_healthy: meter
                .i64_gauge("gateway_upstream_healthy")
                .with_description("Active health check verdict per instance: 1 healthy, 0 unhealthy")
                .build(),
            health_transitions: meter
                .u64_counter("gateway_upstream_health_transitions_total")
                .with_description("Instances taken out of or brought back into rotation by health checks")
                .build(),
            outlier_ejections: meter
                .u64_counter("gateway_upstream_ejections_total")
                .with_description("Instances ejected by passive outlier detection, by upstream, instance and reason")
                .build(),
            pool_requests: meter
                .u64_counter("gateway_upstream_pool_requests_total")
                .with_description("Answered tries by whether they reused a pooled connection (hit) or a new one (miss)")
                .build(),
            connections_opened: meter
                .u64_counter("gateway_upstream_connections_opened_total")
                .with_description("Connections opened to upstream instances")
                .build(),
            connect_duration: meter
                .f64_histogram("gateway_upstream_connect_duration_seconds")
                .with_description("Time to open one upstream connection, by upstream")
                .with_boundaries(vec![1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0])
                .build(),
            reloads: meter
                .u64_counter("gateway_reloads_total")
                .with_description("Configuration and plugin reloads, by result (success, failure)")
                .build(),
            connections_refused,
            requests_refused: meter
                .u64_counter("gateway_http_requests_refused_total")
                .with_description(
                    "Requests refused before routing because an upstream could read them differently, by reason",
                )
                .build(),
            headers_dropped: meter
                .u64_counter("gateway_http_request_headers_dropped_total")
                .with_description(
                    "Request headers removed before filters ran, by reason (underscore: a `_` in the name; untrusted_forwarding: a client's forwarding header)",
                )
                .build(),
            plugin_metrics: Mutex::new(PluginMetrics::default()),
            state_quota_refusals: meter
                .u64_counter("gateway_state_quota_refusals_total")
                .with_description(
                    "Shared-state calls refused because the filter would pass its quota, by filter and limit (entries, bytes, window)",
                )
                .build(),
            tcp: tcp::TcpMetrics::new(&meter),
            access_log: OnceLock::new(),
            tracing: OnceLock::new(),
            registry,
            _provider: provider,
            meter,
        })
    }

    /// Starts the access log and the trace exporter the configuration asks
    /// for. Call once, on the runtime.
    pub fn start_outputs(&self, config: &crate::config::Config) -> anyhow::Result<()> {
        // At zero with or without an access log, so a rule on dropped
        // lines reads 0 rather than nothing.
        self.access_log_dropped.add(0, &[]);
        if let Some(a) = &config.access_log {
            let log =
                access_log::AccessLog::open(a, &config.base_dir, self.access_log_dropped.clone())?;
            let _ = self.access_log.set(log);
        }
        if let Some(t) = &config.tracing {
            let _ = self.tracing.set(trace::Tracing::start(t)?);
        }
        Ok(())
    }

    /// Creates both reload series at zero, so an alert on failures has a
    /// series to compare against from the start.
    pub fn declare_reloads(&self) {
        self.reloads.add(0, &[KeyValue::new("result", "success")]);
        self.reloads.add(0, &[KeyValue::new("result", "failure")]);
    }

    /// The edge's series, at zero.
    pub fn declare_edge(&self) {
        for kind in crate::edge::RefusalKind::ALL {
            self.requests_refused
                .add(0, &[KeyValue::new("reason", kind.code())]);
        }
        for reason in DROPPED_HEADER_REASONS {
            self.headers_dropped
                .add(0, &[KeyValue::new("reason", *reason)]);
        }
    }

    pub fn count_refusal(&self, kind: crate::edge::RefusalKind) {
        self.requests_refused
            .add(1, &[KeyValue::new("reason", kind.code())]);
    }

    pub fn count_dropped_headers(&self, reason: &'static str, n: usize) {
        debug_assert!(DROPPED_HEADER_REASONS.contains(&reason));
        if n > 0 {
            self.headers_dropped
                .add(n as u64, &[KeyValue::new("reason", reason)]);
        }
    }

    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.add(1, &[KeyValue::new("result", result)]);
    }

    /// Creates the series a filter will use, at zero, so a scrape shows them
    /// before the first request.
    pub fn declare_filter(&self, filter: &Arc<str>, plugin: &Arc<str>) {
        self.plugin_metric_overflow
            .add(0, &[KeyValue::new("plugin", shared(plugin))]);
        self.plugin_instances_retired.add(
            0,
            &[
                KeyValue::new("filter", shared(filter)),
                KeyValue::new("plugin", shared(plugin)),
                KeyValue::new("reason", "memory"),
            ],
        );
        self.plugin_suspensions.add(
            0,
            &[
                KeyValue::new("filter", shared(filter)),
                KeyValue::new("plugin", shared(plugin)),
            ],
        );
        for result in ["ok", "failed"] {
            self.plugin_instance_starts.add(
                0,
                &[
                    KeyValue::new("filter", shared(filter)),
                    KeyValue::new("plugin", shared(plugin)),
                    KeyValue::new("result", result),
                ],
            );
        }
        for phase in ["request", "response"] {
            let base = [
                KeyValue::new("filter", shared(filter)),
                KeyValue::new("plugin", shared(plugin)),
                KeyValue::new("phase", phase),
            ];
            self.plugin_calls.add(0, &base);
            for reason in FAILURE_REASONS {
                let mut attrs = base.to_vec();
                attrs.push(KeyValue::new("reason", *reason));
                self.plugin_failures.add(0, &attrs);
            }
        }
    }

    /// Every result of a filter's callouts to `cluster`, at zero.
    pub fn declare_callouts(&self, filter: &Arc<str>, cluster: &str) {
        for result in CALLOUT_RESULTS {
            self.callouts.add(
                0,
                &[
                    KeyValue::new("filter", shared(filter)),
                    KeyValue::new("cluster", cluster.to_string()),
                    KeyValue::new("result", *result),
                ],
            );
        }
        drop(self.callout_duration.bind(&[
            KeyValue::new("filter", shared(filter)),
            KeyValue::new("cluster", cluster.to_string()),
        ]));
    }

    /// The state backend's series, at zero.
    /// A filter's quota refusals, at zero.
    pub fn declare_state_quota(&self, filter: &Arc<str>) {
        for limit in QuotaLimit::ALL {
            self.add_state_quota(filter, limit.label(), 0);
        }
    }

    pub fn count_state_quota(&self, filter: &Arc<str>, limit: &'static str) {
        self.add_state_quota(filter, limit, 1);
    }

    fn add_state_quota(&self, filter: &Arc<str>, limit: &'static str, n: u64) {
        self.state_quota_refusals.add(
            n,
            &[
                KeyValue::new("filter", shared(filter)),
                KeyValue::new("limit", limit),
            ],
        );
    }

    pub fn declare_state(&self, backend: &'static str) {
        for result in ["ok", "unavailable", "invalid", "quota"] {
            self.state_calls.add(
                0,
                &[
                    KeyValue::new("backend", backend),
                    KeyValue::new("result", result),
                ],
            );
        }
        // Binding creates the series; it stays after the handle drops.
        drop(
            self.state_duration
                .bind(&[KeyValue::new("backend", backend)]),
        );
    }

    /// The retry series of a route, at zero: every route, so a rule or a
    /// panel on retries reads 0 for a route without a retry policy rather
    /// than nothing.
    pub fn declare_retries(&self, route: &opentelemetry::Value) {
        for result in ["sent", "budget_exhausted"] {
            self.upstream_retries.add(
                0,
                &[
                    KeyValue::new("route", route.clone()),
                    KeyValue::new("result", result),
                ],
            );
        }
    }

    /// Resolves and records at once; filters keep their series instead
    /// (`HostState`), so only the unit tests measure this way.
    #[cfg(test)]
    pub fn plugin_metric(
        &self,
        kind: PluginMetricKind,
        plugin: &str,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> bool {
        if !valid_plugin_value(value) {
            return false;
        }
        match self.plugin_series(kind, plugin, filter, name, labels) {
            Some(series) => {
                series.record(value);
                true
            }
            None => false,
        }
    }

    /// Whether a plugin may declare metric `name` of `kind` (a 0.2.0
    /// filter's `declare-metric`): the name is valid, not another kind's,
    /// and within the plugin's metric cap. Creates nothing; the metric
    /// appears with its first recorded series.
    pub fn plugin_metric_room(
        &self,
        kind: PluginMetricKind,
        plugin: &str,
        name: &str,
    ) -> Result<(), String> {
        if !valid_plugin_name(name) {
            return Err(format!(
                "`{}` is not a metric name: use 1 to 64 of a-z, 0-9 and _",
                escape(name)
            ));
        }
        if kind != PluginMetricKind::Counter && name.ends_with("_total") {
            return Err(
                format!("a {kind:?} may not be named `{name}`: `_total` is for counters")
                    .to_lowercase(),
            );
        }
        let prefix = format!("gateway_plugin_{}_", plugin.replace('-', "_"));
        let guard = self.plugin_metrics.lock();
        let counter = format!("{prefix}{name}_total");
        let other = format!("{prefix}{name}");
        let (own, theirs) = match kind {
            PluginMetricKind::Counter => (&counter, &other),
            _ => (&other, &counter),
        };
        match guard.metrics.get(own) {
            Some(pm) => {
                let same = matches!(
                    (&pm.instrument, kind),
                    (PluginInstrument::Counter(_), PluginMetricKind::Counter)
                        | (PluginInstrument::Histogram(_), PluginMetricKind::Histogram)
                        | (PluginInstrument::Gauge(_), PluginMetricKind::Gauge)
                );
                if same {
                    Ok(())
                } else {
                    Err(format!("`{name}` is already another kind of metric"))
                }
            }
            None if guard.metrics.contains_key(theirs) => {
                Err(format!("`{name}` is already another kind of metric"))
            }
            None => {
                let held = guard
                    .metrics
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .count();
                if held >= PLUGIN_METRICS_CAP {
                    Err(format!(
                        "the plugin already has {PLUGIN_METRICS_CAP} metrics, its most"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The series of a plugin's own metric: a counter
    /// `gateway_plugin_<plugin>_<name>_total` or a histogram
    /// `gateway_plugin_<plugin>_<name>`, labelled with the filter that
    /// recorded it, so two filters of one plugin (two rate limiters, say)
    /// keep apart. A histogram's buckets follow its unit: names ending
    /// `_seconds` get latency buckets, `_bytes` size buckets, others 1 to
    /// 10^6. The metric and the label set are created within the caps and
    /// budgets; `None` when refused (bad name or label, too many metrics, a
    /// name used for the other kind). The answer for the same arguments
    /// never changes, so callers may keep it.
    pub fn plugin_series(
        &self,
        kind: PluginMetricKind,
        plugin: &str,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
    ) -> Option<PluginSeries> {
        let valid = valid_plugin_name;
        if !valid(name) || labels.len() > 8 {
            return None;
        }
        if labels.iter().any(|(k, v)| {
            !valid(k)
                || ["plugin", "filter", "overflow"].contains(&k.as_str())
                || v.len() > PLUGIN_LABEL_VALUE_MAX
        }) {
            return None;
        }
        let prefix = format!("gateway_plugin_{}_", plugin.replace('-', "_"));
        let full = match kind {
            PluginMetricKind::Counter => format!("{prefix}{name}_total"),
            PluginMetricKind::Histogram | PluginMetricKind::Gauge => format!("{prefix}{name}"),
        };
        let mut guard = self.plugin_metrics.lock();
        let PluginMetrics { metrics, spent } = &mut *guard;
        if !metrics.contains_key(&full) {
            let per_plugin = metrics.keys().filter(|k| k.starts_with(&prefix)).count();
            // A histogram named like a counter's series (`x_total`) or the
            // other way round would clash in the exposition.
            let clash = match kind {
                PluginMetricKind::Counter => metrics.contains_key(&format!("{prefix}{name}")),
                PluginMetricKind::Histogram | PluginMetricKind::Gauge => {
                    name.ends_with("_total") || metrics.contains_key(&format!("{full}_total"))
                }
            };
            if per_plugin >= PLUGIN_METRICS_CAP || clash {
                return None;
            }
            let description = format!("Recorded by plugin {plugin}: {name}");
            let instrument = match kind {
                PluginMetricKind::Counter => PluginInstrument::Counter(
                    self.meter
                        .f64_counter(full.clone())
                        .with_description(description)
                        .build(),
                ),
                PluginMetricKind::Gauge => PluginInstrument::Gauge(
                    self.meter
                        .f64_gauge(full.clone())
                        .with_description(description)
                        .build(),
                ),
                PluginMetricKind::Histogram => {
                    let buckets = if name.ends_with("_seconds") {
                        PLUGIN_SECONDS_BUCKETS
                    } else if name.ends_with("_bytes") {
                        SIZE_BUCKETS
                    } else {
                        PLUGIN_PLAIN_BUCKETS
                    };
                    PluginInstrument::Histogram(
                        self.meter
                            .f64_histogram(full.clone())
                            .with_description(description)
                            .with_boundaries(buckets.to_vec())
                            .build(),
                    )
                }
            };
            metrics.insert(
                full.clone(),
                PluginMetric {
                    instrument,
                    series: HashSet::new(),
                    overflowed: false,
                },
            );
        }
        let pm = metrics.get_mut(&full).expect("inserted above");
        match (&pm.instrument, kind) {
            (PluginInstrument::Counter(_), PluginMetricKind::Counter)
            | (PluginInstrument::Histogram(_), PluginMetricKind::Histogram)
            | (PluginInstrument::Gauge(_), PluginMetricKind::Gauge) => {}
            _ => return None,
        }
        let mut key: Vec<(String, String)> = labels.to_vec();
        key.push(("filter".to_string(), filter.to_string()));
        key.sort();
        let mut attrs = vec![KeyValue::new("plugin", plugin.to_string())];
        let mut overflow = None;
        let known = pm.series.contains(&key);
        let budget = spent.entry(plugin.to_string()).or_default();
        let cost = if known {
            0
        } else {
            exposition_bytes(&full, plugin, &key, &pm.instrument)
        };
        let within = known
            || (pm.series.len() < PLUGIN_SERIES_CAP
                && budget.series < PLUGIN_SERIES_BUDGET
                && budget.bytes + cost <= PLUGIN_EXPOSITION_BUDGET);
        if within {
            if !known {
                budget.series += 1;
                budget.bytes += cost;
                pm.series.insert(key.clone());
            }
            attrs.extend(key.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        } else {
            attrs.push(KeyValue::new("filter", filter.to_string()));
            attrs.push(KeyValue::new("overflow", "true"));
            overflow = Some(
                self.plugin_metric_overflow
                    .bind(&[KeyValue::new("plugin", plugin.to_string())]),
            );
            if !pm.overflowed {
                pm.overflowed = true;
                tracing::warn!(
                    plugin,
                    metric = full,
                    "plugin metric over its label-set cap ({PLUGIN_SERIES_CAP} per metric) or the plugin's budget ({PLUGIN_SERIES_BUDGET} label sets, {PLUGIN_EXPOSITION_BUDGET} bytes of scrape): further ones are counted under overflow=\"true\""
                );
            }
        }
        let instrument = match &pm.instrument {
            PluginInstrument::Counter(c) => BoundPluginInstrument::Counter(c.bind(&attrs)),
            PluginInstrument::Histogram(h) => BoundPluginInstrument::Histogram(h.bind(&attrs)),
            PluginInstrument::Gauge(g) => BoundPluginInstrument::Gauge(g.clone(), attrs),
        };
        Some(PluginSeries {
            instrument,
            overflow,
        })
    }

    /// The meter the gateway's instruments come from (benches compare
    /// instrument kinds with it).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Makes `versions` (plugin name, SHA-256) the ones `gateway_plugin_info`
    /// shows: the plugins of the configuration now serving.
    pub fn set_plugin_versions(&self, versions: Vec<(Arc<str>, String)>) {
        self.plugin_versions.store(Arc::new(versions));
    }

    /// Counts a gRPC call's status.
    pub fn count_grpc(&self, route: &opentelemetry::Value, status: u8) {
        self.grpc_responses.add(
            1,
            &[
                KeyValue::new("route", route.clone()),
                KeyValue::new("grpc_status", i64::from(status).to_string()),
            ],
        );
    }

    /// Puts a route's tunnel series at zero, and every close reason.
    pub fn declare_tunnels(&self, route: &opentelemetry::Value, protocols: &[String]) {
        for p in protocols {
            self.add_tunnels(route, p, 0);
        }
        self.add_tunnel_bytes(route, 0, 0);
        for reason in TUNNEL_END_REASONS {
            self.tunnels_closed
                .add(0, &[KeyValue::new("reason", reason)]);
        }
    }

    /// Counts a tunnel opened on `route`; open until the guard drops.
    pub fn tunnel_opened(&self, route: &opentelemetry::Value, protocol: &str) -> TunnelOpen {
        self.add_tunnels(route, protocol, 1);
        self.live.tunnels_open.fetch_add(1, Ordering::Relaxed);
        TunnelOpen(self.live.clone())
    }

    /// Counts a tunnel's end and the bytes it carried each way.
    pub fn tunnel_closed(
        &self,
        route: &opentelemetry::Value,
        reason: &'static str,
        to_upstream: u64,
        to_client: u64,
    ) {
        self.add_tunnel_bytes(route, to_upstream, to_client);
        self.tunnels_closed
            .add(1, &[KeyValue::new("reason", reason)]);
    }

    fn add_tunnels(&self, route: &opentelemetry::Value, protocol: &str, n: u64) {
        self.tunnels.add(
            n,
            &[
                KeyValue::new("route", route.clone()),
                KeyValue::new("protocol", protocol.to_string()),
            ],
        );
    }

    fn add_tunnel_bytes(&self, route: &opentelemetry::Value, to_upstream: u64, to_client: u64) {
        for (direction, bytes) in [("to_upstream", to_upstream), ("to_client", to_client)] {
            self.tunnel_bytes.add(
                bytes,
                &[
                    KeyValue::new("route", route.clone()),
                    KeyValue::new("direction", direction),
                ],
            );
        }
    }

    /// The certificates the running configuration presents, by name, with
    /// the Unix time each ends.
    pub fn set_certificates(&self, ends: Vec<(String, i64)>) {
        self.certificate_ends.store(Arc::new(ends));
    }

    /// Puts each handshake failure reason at zero, so an alert on their
    /// rate has series before the first failure.
    pub fn declare_tls_failures(&self, reasons: &[&'static str]) {
        for reason in reasons {
            self.tls_handshake_failures
                .add(0, &[KeyValue::new("reason", *reason)]);
        }
    }

    pub fn count_tls_handshake(&self, version: &'static str, alpn: &'static str) {
        self.tls_handshakes.add(
            1,
            &[
                KeyValue::new("version", version),
                KeyValue::new("alpn", alpn),
            ],
        );
    }

    pub fn count_tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .add(1, &[KeyValue::new("reason", reason)]);
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.live.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.live.in_flight)
    }

    pub fn count_connection_refused(&self, reason: ConnectionRefusal) {
        self.connections_refused
            .add(1, &[KeyValue::new("reason", reason.as_str())]);
    }

    /// Counts a client connection open until the guard drops.
    pub fn connection_opened(&self) -> ConnectionOpen {
        self.live.connections.fetch_add(1, Ordering::Relaxed);
        self.live.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionOpen(self.live.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The gauges read when Prometheus scrapes: uptime, build, plugin versions,
/// upstream connections. They are up-down counters observed by callback
/// because those report only what the last callback saw, so an instance
/// or plugin version that went away leaves the scrape with it (an observed
/// gauge would keep its last value forever).
/// `gateway_tls_certificate_expiry_seconds`: read at scrape time from what
/// the running configuration presents, so a reload's new certificate, or a
/// name no longer served, shows at the next scrape.
fn observe_certificates(meter: &Meter, ends: &CertificateEnds) {
    let ends = ends.clone();
    meter
        .i64_observable_up_down_counter("gateway_tls_certificate_expiry_seconds")
        .with_description(
            "When the certificate presented for each name ends, in seconds since the Unix epoch",
        )
        .with_callback(move |o| {
            for (name, not_after) in ends.load().iter() {
                o.observe(*not_after, &[KeyValue::new("name", name.clone())]);
            }
        })
        .build();
}

fn observe_process(
    meter: &Meter,
    plugin_versions: &PluginVersions,
    connection_gauges: &Arc<Mutex<Vec<Weak<ConnectionGauge>>>>,
) {
    let started = Instant::now();
    meter
        .f64_observable_gauge("gateway_uptime_seconds")
        .with_description("Seconds since the gateway started")
        .with_callback(move |o| o.observe(started.elapsed().as_secs_f64(), &[]))
        .build();
    let build = [
        KeyValue::new("version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("wit", crate::build_info::WIT_PACKAGE),
        KeyValue::new("wasmtime", crate::build_info::WASMTIME_VERSION),
    ];
    meter
        .i64_observable_gauge("gateway_build_info")
        .with_description(
            "1, labelled with the gateway's version, its WIT package and wasmtime's version",
        )
        .with_callback(move |o| o.observe(1, &build))
        .build();
    let versions = plugin_versions.clone();
    meter
        .i64_observable_up_down_counter("gateway_plugin_info")
        .with_description(
            "1 for each plugin version the running configuration uses, by plugin and SHA-256",
        )
        .with_callback(move |o| {
            for (plugin, sha) in versions.load().iter() {
                o.observe(
                    1,
                    &[
                        KeyValue::new("plugin", shared(plugin)),
                        KeyValue::new("sha256", sha.clone()),
                    ],
                );
            }
        })
        .build();
    let gauges = connection_gauges.clone();
    meter
        .i64_observable_up_down_counter("gateway_upstream_connections_open")
        .with_description("Connections open to each upstream instance")
        .with_callback(move |o| {
            let mut g = gauges.lock();
            g.retain(|w| w.strong_count() > 0);
            for c in g.iter().filter_map(Weak::upgrade) {
                o.observe(c.open(), &c.labels);
            }
        })
        .build();
    let gauges = connection_gauges.clone();
    meter
        .i64_observable_up_down_counter("gateway_upstream_connections_idle")
        .with_description("Open connections to each upstream instance carrying no request")
        .with_callback(move |o| {
            for c in gauges.lock().iter().filter_map(Weak::upgrade) {
                o.observe(c.idle(), &c.labels);
            }
        })
        .build();
}

/// A request in flight; counted down on drop.
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection open; counted down on drop.
pub struct ConnectionOpen(Arc<Live>);

/// A tunnel counted open until dropped.
pub struct TunnelOpen(Arc<Live>);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a tunnel ended, as `gateway_tunnels_closed_total` labels it.
pub const TUNNEL_END_REASONS: [&str; 5] = ["closed", "idle", "lifetime", "shutdown", "error"];

impl Drop for ConnectionOpen {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts without labels that change on every request or connection:
/// kept in atomics (an add is one instruction) and read when Prometheus
/// scrapes, so they are also present, at zero, from start-up.
#[derive(Default)]
struct Live {
    in_flight: AtomicI64,
    connections_open: AtomicI64,
    connections: AtomicU64,
    tunnels_open: AtomicI64,
}

fn observe_live(meter: &Meter, live: &Arc<Live>) {
    let l = live.clone();
    meter
        .i64_observable_up_down_counter("gateway_http_requests_in_flight")
        .with_description("Requests being handled right now")
        .with_callback(move |o| o.observe(l.in_flight.load(Ordering::Relaxed), &[]))
        .build();
    let l = live.clone();
    meter
        .i64_observable_up_down_counter("gateway_http_connections_open")
        .with_description("Client connections open")
        .with_callback(move |o| o.observe(l.connections_open.load(Ordering::Relaxed), &[]))
        .build();
    let l = live.clone();
    meter
        .i64_observable_up_down_counter("gateway_tunnels_open")
        .with_description("Upgraded connections (WebSockets) being tunnelled right now")
        .with_callback(move |o| o.observe(l.tunnels_open.load(Ordering::Relaxed), &[]))
        .build();
    let l = live.clone();
    meter
        .u64_observable_counter("gateway_http_connections_total")
        .with_description("Client connections accepted")
        .with_callback(move |o| o.observe(l.connections.load(Ordering::Relaxed), &[]))
        .build();
}

/// A key for a small map of bound series: the method's index and the status.
type SeriesKey = u32;

/// One route's request instruments, bound to its label. The request
/// counter is bound per method and status as they first occur.
pub struct RouteMetrics {
    pub label: opentelemetry::Value,
    duration: prometheus::Histogram,
    request_size: prometheus::Histogram,
    pub response_size: prometheus::Histogram,
    requests: RwLock<HashMap<SeriesKey, BoundCounter<u64>, rustc_hash::FxBuildHasher>>,
    counter: Counter<u64>,
    /// Answers with a 5xx, for the admin page's error rate (the request
    /// counter above cannot be read back).
    server_errors: std::sync::atomic::AtomicU64,
}

/// Bound request counters one route may hold; past this (a client making
/// up methods cannot: they are `OTHER`; statuses are bounded) new ones are
/// recorded unbound.
const MAX_BOUND_REQUEST_SERIES: usize = 256;

impl RouteMetrics {
    /// The route's instruments, with its request series for `methods` at
    /// zero for a success and a server error, so error ratios have a
    /// denominator and a numerator from start-up.
    pub fn new(
        metrics: &Metrics,
        label: opentelemetry::Value,
        methods: &[&'static str],
    ) -> RouteMetrics {
        let route = [label.as_str()];
        let route = [&*route[0]];
        let rm = RouteMetrics {
            duration: metrics.http_duration.with_label_values(&route),
            request_size: metrics.http_request_size.with_label_values(&route),
            response_size: metrics.http_response_size.with_label_values(&route),
            requests: RwLock::default(),
            counter: metrics.http_requests.clone(),
            server_errors: std::sync::atomic::AtomicU64::new(0),
            label,
        };
        for m in methods {
            for status in [200, 500] {
                rm.requests_for(m, status).add(0);
            }
        }
        rm
    }

    fn attrs(&self, method: &'static str, status: u16) -> [KeyValue; 4] {
        [
            KeyValue::new("route", self.label.clone()),
            KeyValue::new("method", method),
            KeyValue::new("status", status_text(status)),
            KeyValue::new("status_class", status_class(status)),
        ]
    }

    fn requests_for(&self, method: &'static str, status: u16) -> BoundCounter<u64> {
        let key = (method_index(method) << 16) | status as u32;
        if let Some(c) = self.requests.read().get(&key) {
            return c.clone();
        }
        let mut map = self.requests.write();
        if map.len() >= MAX_BOUND_REQUEST_SERIES {
            return self.counter.bind(&self.attrs(method, status));
        }
        map.entry(key)
            .or_insert_with(|| self.counter.bind(&self.attrs(method, status)))
            .clone()
    }

    /// Records one answered request: its count, the time to the response
    /// head and the request body size.
    pub fn answered(&self, method: &'static str, status: u16, took: Duration, request_bytes: u64) {
        let key = (method_index(method) << 16) | status as u32;
        let bound = self.requests.read().get(&key).map(|c| c.add(1)).is_some();
        if !bound {
            // The first of its kind: bound now, with the read lock released.
            self.requests_for(method, status).add(1);
        }
        if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took.as_secs_f64());
        self.request_size.observe(request_bytes as f64);
    }

    /// The route's answered requests, 5xx answers and latency histogram
    /// since start, for the admin page's live traffic.
    pub fn totals(&self) -> live::Totals {
        use prometheus::core::Metric;
        let metric = self.duration.metric();
        let h = metric.get_histogram();
        live::Totals {
            count: h.get_sample_count(),
            errors: self.server_errors.load(Ordering::Relaxed),
            buckets: h
                .get_bucket()
                .iter()
                .filter(|b| b.upper_bound().is_finite())
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
        }
    }
}

/// One filter's per-call instruments, bound per phase.
pub struct FilterMetrics {
    calls: [BoundCounter<u64>; 2],
    duration: [prometheus::Histogram; 2],
}

/// A filter call's phase, as an index into bound instruments.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Request = 0,
    Response = 1,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
        }
    }
}

impl FilterMetrics {
    /// `attrs` are the filter's `filter`, `plugin` and `phase` labels for
    /// the request and response phases.
    pub fn new(metrics: &Metrics, attrs: [&[KeyValue; 3]; 2]) -> FilterMetrics {
        FilterMetrics {
            calls: attrs.map(|a| metrics.plugin_calls.bind(a)),
            duration: attrs.map(|a| {
                let values = a.each_ref().map(|kv| kv.value.as_str());
                metrics
                    .plugin_duration
                    .with_label_values(&values.each_ref().map(|v| &**v))
            }),
        }
    }

    pub fn called(&self, phase: Phase) {
        self.calls[phase as usize].add(1);
    }

    pub fn took(&self, phase: Phase, d: Duration) {
        self.duration[phase as usize].observe(d.as_secs_f64());
    }
}

/// How a try at an upstream instance ended, for its counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TryKind {
    Status(u16),
    Connect,
    Timeout,
    Reset,
}

const OUTCOMES: [&str; 8] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "connect_error",
    "timeout",
    "reset",
];
const ERROR_KINDS: [&str; 4] = ["connect_error", "timeout", "reset", "status_5xx"];

/// One upstream instance's per-try instruments, bound to its labels; all
/// series exist at zero from the moment the instance is configured.
pub struct InstanceMetrics {
    picks: BoundCounter<u64>,
    duration: prometheus::Histogram,
    outcomes: [BoundCounter<u64>; 8],
    errors: [BoundCounter<u64>; 4],
    health_checks: [BoundCounter<u64>; 2],
    health_duration: BoundHistogram<f64>,
}

impl InstanceMetrics {
    pub fn new(metrics: &Metrics, labels: &[KeyValue; 2]) -> InstanceMetrics {
        let with = |k: &'static str, v: &'static str| {
            let mut a = labels.to_vec();
            a.push(KeyValue::new(k, v));
            a
        };
        let counted = |c: &Counter<u64>, k, v| {
            let b = c.bind(&with(k, v));
            b.add(0);
            b
        };
        let picks = metrics.upstream_picks.bind(labels);
        picks.add(0);
        for (from, to, reason) in [
            ("closed", "open", "consecutive_failures"),
            ("closed", "open", "failure_rate"),
            ("open", "half_open", "cool_down_elapsed"),
            ("half_open", "open", "probe_failed"),
            ("half_open", "closed", "probes_succeeded"),
        ] {
            let mut a = labels.to_vec();
            a.extend([
                KeyValue::new("from", from),
                KeyValue::new("to", to),
                KeyValue::new("reason", reason),
            ]);
            metrics.breaker_transitions.add(0, &a);
        }
        for reason in ["consecutive_5xx", "consecutive_gateway_failures"] {
            metrics.outlier_ejections.add(0, &with("reason", reason));
        }
        for to in ["healthy", "unhealthy"] {
            metrics.health_transitions.add(0, &with("to", to));
        }
        InstanceMetrics {
            picks,
            duration: {
                let values = labels.each_ref().map(|kv| kv.value.as_str());
                metrics
                    .upstream_duration
                    .with_label_values(&values.each_ref().map(|v| &**v))
            },
            outcomes: OUTCOMES.map(|o| counted(&metrics.upstream_requests, "outcome", o)),
            errors: ERROR_KINDS.map(|k| counted(&metrics.upstream_errors, "kind", k)),
            health_checks: ["passed", "failed"]
                .map(|r| counted(&metrics.health_checks, "result", r)),
            health_duration: metrics.health_check_duration.bind(labels),
        }
    }

    pub fn picked(&self) {
        self.picks.add(1);
    }

    /// Records one try: its outcome, its duration, and an error by kind.
    pub fn tried(&self, kind: TryKind, took: Duration) {
        let (outcome, error) = match kind {
            TryKind::Status(s) => {
                let class = (s / 100).clamp(1, 5) as usize - 1;
                (class, (class == 4).then_some(3))
            }
            TryKind::Connect => (5, Some(0)),
            TryKind::Timeout => (6, Some(1)),
            TryKind::Reset => (7, Some(2)),
        };
        self.outcomes[outcome].add(1);
        if let Some(e) = error {
            self.errors[e].add(1);
        }
        self.duration.observe(took.as_secs_f64());
    }

    pub fn health_checked(&self, passed: bool, took: Duration) {
        self.health_checks[usize::from(!passed)].add(1);
        self.health_duration.record(took.as_secs_f64());
    }
}

/// Connections open to one upstream instance, and how many carry a try
/// now; read when Prometheus scrapes.
pub struct ConnectionGauge {
    labels: [KeyValue; 2],
    open: AtomicI64,
    active: AtomicI64,
}

impl ConnectionGauge {
    pub fn new(metrics: &Metrics, labels: [KeyValue; 2]) -> Arc<ConnectionGauge> {
        let g = Arc::new(ConnectionGauge {
            labels,
            open: AtomicI64::new(0),
            active: AtomicI64::new(0),
        });
        // Pruned here too, not only at scrape time, so a gateway nobody
        // scrapes does not collect one dead entry per reload.
        let mut all = metrics.connection_gauges.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&g));
        drop(all);
        g
    }

    pub fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed).max(0)
    }

    /// Open connections less those carrying a try: for HTTP/1.1, where a
    /// connection carries one exchange at a time, the idle ones.
    pub fn idle(&self) -> i64 {
        (self.open() - self.active.load(Ordering::Relaxed)).max(0)
    }

    /// Counts a connection open until the guard drops.
    pub fn opened(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// Counts a try in progress until the guard drops.
    pub fn active(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }
}

/// Counts a connection open until dropped (it lives with the connection).
pub struct ConnectionGuard(Arc<ConnectionGauge>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a try in progress until dropped.
pub struct ActiveGuard<'a>(&'a ConnectionGauge);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// "2xx", "4xx", ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method as a bounded label: the standard ones by name, others as OTHER.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// A method label's place, for keys of bound series.
fn method_index(label: &str) -> u32 {
    const ORDER: [&str; 10] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
    ];
    ORDER.iter().position(|m| *m == label).unwrap_or(9) as u32
}

/// The status as a label value, without formatting on the request path.
fn status_text(status: u16) -> opentelemetry::Value {
    http::StatusCode::from_u16(status)
        .map(|s| opentelemetry::Value::from(s.as_str().to_string()))
        .unwrap_or_else(|_| opentelemetry::Value::from("other"))
}

/// The route label for requests that matched none.
pub const NO_ROUTE: &str = "-";

/// Which part of a filter's quota refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLimit {
    Entries,
    Bytes,
    Window,
}

impl QuotaLimit {
    pub const ALL: [QuotaLimit; 3] = [QuotaLimit::Entries, QuotaLimit::Bytes, QuotaLimit::Window];

    pub fn label(self) -> &'static str {
        match self {
            QuotaLimit::Entries => "entries",
            QuotaLimit::Bytes => "bytes",
            QuotaLimit::Window => "window",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_keeps_to_one_line_and_shows_what_it_hid() {
        assert!(matches!(
            escape("plain text, \"quoted\""),
            std::borrow::Cow::Borrowed(_)
        ));
        let forged = "ok\n2026-01-01T00:00:00Z  INFO gateway: forged\r\u{1b}[2K\u{202e}\u{2028}\\n";
        let out = escape(forged);
        assert_eq!(
            out,
            r"ok\n2026-01-01T00:00:00Z  INFO gateway: forged\r\u{1b}[2K\u{202e}\u{2028}\\n"
        );
        assert!(!out.chars().any(|c| c.is_control()));
        // Every character is either kept or written as a visible escape.
        for c in ['\0', '\u{7f}', '\u{85}', '\u{200f}', '\u{2066}', '\u{feff}'] {
            let e = escape(&c.to_string()).into_owned();
            assert!(e.starts_with('\\') && e.is_ascii(), "{c:?} became {e:?}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plugin_counters_keep_filters_apart_and_cap_their_series() {
        let m = Metrics::new(&[0.1]).unwrap();
        let l = labels(&[("limit", "a")]);
        assert!(m.plugin_metric(
            PluginMetricKind::Counter,
            "ratelimit",
            "rl-api",
            "requests",
            &l,
            2.0
        ));
        assert!(m.plugin_metric(
            PluginMetricKind::Counter,
            "ratelimit",
            "rl-admin",
            "requests",
            &l,
            1.0
        ));
        let out = m.render();
        assert!(
            out.contains(r#"gateway_plugin_ratelimit_requests_total{filter="rl-api",limit="a",plugin="ratelimit"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"gateway_plugin_ratelimit_requests_total{filter="rl-admin",limit="a",plugin="ratelimit"} 1"#),
            "{out}"
        );
        // The gateway's own labels cannot be forged by a plugin.
        for reserved in ["filter", "plugin", "overflow"] {
            let forged = labels(&[(reserved, "x")]);
            assert!(!m.plugin_metric(
                PluginMetricKind::Counter,
                "ratelimit",
                "rl-api",
                "requests",
                &forged,
                1.0
            ));
        }
        for i in 0..PLUGIN_SERIES_CAP + 5 {
            let l = labels(&[("k", &i.to_string())]);
            assert!(m.plugin_metric(PluginMetricKind::Counter, "p", "f", "many", &l, 1.0));
        }
        assert!(
            m.render().contains(
                r#"gateway_plugin_p_many_total{filter="f",overflow="true",plugin="p"} 5"#
            )
        );
        assert!(
            m.render()
                .contains(r#"gateway_plugin_metric_overflow_total{plugin="p"} 5"#)
        );
        // Histograms share the cap and the naming rules; a name cannot be
        // both a counter and a histogram.
        let l = labels(&[("k", "a")]);
        assert!(m.plugin_metric(
            PluginMetricKind::Histogram,
            "p",
            "f",
            "wait_seconds",
            &l,
            0.2
        ));
        assert!(!m.plugin_metric(PluginMetricKind::Histogram, "p", "f", "many", &l, 1.0));
        assert!(!m.plugin_metric(PluginMetricKind::Histogram, "p", "f", "x_total", &l, 1.0));
        let out = m.render();
        assert!(
            out.contains(
                r#"gateway_plugin_p_wait_seconds_bucket{filter="f",k="a",plugin="p",le="0.25"} 1"#
            ),
            "{out}"
        );
    }
}
