//! Upstreams: named groups of instances reached over pooled keep-alive
//! connections. `balancer` picks an instance, `breaker` keeps requests off
//! a failing one, `budget` bounds how much retries may add.

pub mod balancer;
pub mod breaker;
pub mod budget;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod replay;
mod snapshot;
pub mod stream;

use crate::config::{Outcome, RetryConfig, UpstreamConfig};
use crate::telemetry::Metrics;
use crate::telemetry::log_limit::LogLimit;
use balancer::{Balancer, Endpoint};
use breaker::{Breaker, Transition};
use budget::RetryBudget;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::KeyValue;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type UpstreamClient = Client<pool::CountingConnector, ClientBody>;

/// What a try sends: a body read whole, or the client's streamed as it
/// comes.
pub type ClientBody = http_body_util::Either<Full<Bytes>, replay::Replay>;

/// A request's body as the exchange has it.
pub enum RequestBody {
    /// Read whole (by filters, or a callout's): sent again on every try.
    Buffered(Bytes),
    /// Passed through as it arrives, and kept for a retry while it fits
    /// the limit; an exchange whose body outgrew it has no further try.
    Streamed(replay::StreamedBody),
}

/// A set of try outcomes, as `failure_on` and `retry.on` list them.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    connect: bool,
    timeout: bool,
    reset: bool,
    any_5xx: bool,
    codes: Vec<u16>,
    grpc: Vec<u8>,
}

impl FromIterator<Outcome> for Outcomes {
    fn from_iter<I: IntoIterator<Item = Outcome>>(list: I) -> Outcomes {
        let mut o = Outcomes::default();
        for outcome in list {
            match outcome {
                Outcome::Connect => o.connect = true,
                Outcome::Timeout => o.timeout = true,
                Outcome::Reset => o.reset = true,
                Outcome::Any5xx => o.any_5xx = true,
                Outcome::Status(code) => o.codes.push(code),
                Outcome::Grpc(code) => o.grpc.push(code),
            }
        }
        o
    }
}

impl Outcomes {
    pub fn matches(&self, t: TryOutcome) -> bool {
        match t {
            TryOutcome::Connect => self.connect,
            TryOutcome::Timeout => self.timeout,
            TryOutcome::Reset => self.reset,
            TryOutcome::Status(s) => (self.any_5xx && s >= 500) || self.codes.contains(&s),
        }
    }

    /// Whether a gRPC status in an answer's head is listed.
    pub fn matches_grpc(&self, status: Option<u8>) -> bool {
        status.is_some_and(|s| self.grpc.contains(&s))
    }
}

/// The gRPC status in a response's head: a trailers-only answer's.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u8> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    Status(u16),
    /// No connection: nothing was sent.
    Connect,
    Timeout,
    /// The connection failed after the request went out.
    Reset,
}

impl TryOutcome {
    fn kind(self) -> crate::telemetry::TryKind {
        match self {
            TryOutcome::Status(s) => crate::telemetry::TryKind::Status(s),
            TryOutcome::Connect => crate::telemetry::TryKind::Connect,
            TryOutcome::Timeout => crate::telemetry::TryKind::Timeout,
            TryOutcome::Reset => crate::telemetry::TryKind::Reset,
        }
    }

    fn label(self) -> &'static str {
        match self {
            TryOutcome::Status(s) => crate::telemetry::status_class(s),
            TryOutcome::Connect => "connect_error",
            TryOutcome::Timeout => "timeout",
            TryOutcome::Reset => "reset",
        }
    }
}

/// Limits on one instance's request-path log lines. A dead or failing
/// instance fails every request sent to it; its metrics count each, the
/// log needs a line a second to show it.
#[derive(Default)]
struct InstanceLogs {
    /// `try failed`, by how: no connection, timeout, or failed mid-request.
    try_failed: [LogLimit; 3],
    /// An instance past its outlier threshold that cannot be ejected stays
    /// past it, and says so on every failed try.
    not_ejected: LogLimit,
}

impl InstanceLogs {
    fn try_failed(&self, outcome: TryOutcome) -> &LogLimit {
        &self.try_failed[match outcome {
            TryOutcome::Connect => 0,
            TryOutcome::Timeout => 1,
            TryOutcome::Reset | TryOutcome::Status(_) => 2,
        }]
    }
}

/// Why the exchange failed without an upstream response.
#[derive(Debug)]
pub enum Failed {
    /// No instance could take the request; the reason is the
    /// `x-gateway-error` code.
    Unavailable(&'static str),
    Connect(String),
    Timeout,
    Error(String),
}

/// A route's retry policy, with its budget.
pub struct RetryPolicy {
    attempts: u32,
    on: Outcomes,
    non_idempotent: bool,
    backoff_base: Duration,
    backoff_max: Duration,
    budget: RetryBudget,
}

impl RetryPolicy {
    pub fn new(c: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            attempts: c.attempts.max(1),
            on: c.on.iter().map(|o| o.0).collect(),
            non_idempotent: c.non_idempotent,
            backoff_base: c.backoff_base.0,
            backoff_max: c.backoff_max.0,
            budget: RetryBudget::new(
                c.budget_ratio.get(),
                c.budget_floor_per_second,
                c.budget_window.0,
            ),
        }
    }

    /// Full jitter: anywhere from nothing to the capped exponential.
    fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.backoff_max);
        if cap.is_zero() {
            return cap;
        }
        Duration::from_micros(rand::rng().random_range(0..cap.as_micros().max(1) as u64))
    }
}

/// The `gateway_upstream_breaker_state` gauge's value for a state.
fn breaker_level(s: breaker::State) -> i64 {
    match s {
        breaker::State::Closed => 0,
        breaker::State::HalfOpen => 1,
        breaker::State::Open => 2,
    }
}

/// What `send` needs to know about the route.
pub struct Exchange<'a> {
    pub route: &'a opentelemetry::Value,
    pub retry: Option<&'a RetryPolicy>,
    pub try_timeout: Duration,
    pub deadline: Instant,
    pub request_id: &'a str,
    /// The request's trace, when tracing: each try gets a client span.
    pub trace: Option<&'a crate::telemetry::trace::RequestTrace<'a>>,
}

/// What `send` did, for the access log.
#[derive(Default, Debug)]
pub struct Tries {
    /// Tries sent.
    pub count: u32,
    /// The instance of the last try, as an index into the upstream's.
    pub last_instance: Option<usize>,
}

pub struct Upstream {
    pub name: Arc<str>,
    balancer: Balancer,
    breakers: Vec<Arc<Breaker>>,
    failure_on: Outcomes,
    max_in_flight: u32,
    /// How long a TCP route waits for a connection to an instance.
    connect_timeout: Duration,
    /// Plaintext HTTP/1 requests go over each instance's own connections;
    /// h2c and TLS ones by `client`.
    own_connections: bool,
    /// `https` with TLS to the instances, else `http`.
    scheme: &'static str,
    /// The h2c and TLS requests' client, and every instance's health checks'.
    pub client: UpstreamClient,
    /// `upstream` and `instance` labels per instance.
    labels: Vec<[KeyValue; 2]>,
    /// Per-try instruments, bound to each instance's labels.
    instruments: Vec<crate::telemetry::InstanceMetrics>,
    metrics: Arc<Metrics>,
    pool: Arc<pool::PoolStats>,
    pools: Vec<Arc<pool::InstancePool>>,
    health: Vec<Arc<health::Health>>,
    health_cfg: Option<health::HealthConfig>,
    outliers: Vec<Arc<outlier::Outlier>>,
    outlier_cfg: Option<outlier::OutlierConfig>,
    logs: Vec<InstanceLogs>,
    /// The health checker, stopped when the upstream is dropped.
    checker: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Closes idle connections past their timeout, stopped likewise.
    sweeper: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in [&self.checker, &self.sweeper] {
            if let Some(t) = task.lock().take() {
                t.abort();
            }
        }
    }
}

/// What a renewed upstream takes over from the one it replaces, for each
/// instance both list; decided by `assemble` from the two configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Carry {
    /// The client and its pooled connections (same connection settings).
    pub connections: bool,
    pub breakers: bool,
    pub health: bool,
    pub outliers: bool,
}

impl Upstream {
    pub fn new(name: &str, cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Upstream {
        Upstream::renewed(name, cfg, metrics, None)
    }

    /// The upstream for a new configuration, taking over from `previous`
    /// (the running upstream of that name) what `Carry` says. An instance's
    /// balancer record carries over whenever its weight is the same.
    pub fn renewed(
        name: &str,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
        previous: Option<(&Upstream, Carry)>,
    ) -> Upstream {
        let name: Arc<str> = name.into();
        let instances = &cfg.instances;
        let labels: Vec<[KeyValue; 2]> = instances
            .iter()
            .map(|i| {
                [
                    KeyValue::new("upstream", crate::telemetry::shared(&name)),
                    KeyValue::new("endpoint", i.address().to_string()),
                ]
            })
            .collect();
        let kept_client = previous.filter(|(_, carry)| carry.connections);
        let (client, pool) = match kept_client {
            Some((up, _)) => (up.client.clone(), up.pool.clone()),
            None => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(cfg.connect_timeout.0));
                connector.set_nodelay(true);
                let upstream_label = KeyValue::new("upstream", crate::telemetry::shared(&name));
                let pool = Arc::new(pool::PoolStats::new(
                    upstream_label.clone(),
                    metrics.clone(),
                ));
                let tls = cfg.tls.as_ref().and_then(|t| t.loaded.as_ref()).map(|t| {
                    // At zero from the start, so an alert has a series.
                    for reason in pool::DECLARED_TLS_FAILURES {
                        metrics.tls_upstream_handshake_failures.add(
                            0,
                            &[upstream_label.clone(), KeyValue::new("reason", reason)],
                        );
                    }
                    pool::UpstreamTls {
                        connector: tokio_rustls::TlsConnector::from(t.client_config.clone()),
                        server_name: t.server_name.clone(),
                        failures: metrics.tls_upstream_handshake_failures.clone(),
                        upstream: upstream_label,
                        handshake_timeout: cfg.connect_timeout.0,
                    }
                });
                // TLS URIs are `https`; the connector makes the TCP
                // connection either way.
                connector.enforce_http(tls.is_none());
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(cfg.idle_timeout.0)
                    .pool_max_idle_per_host(cfg.max_idle_per_instance)
                    .http2_only(cfg.protocol == crate::config::UpstreamProtocol::H2c)
                    .build(pool::CountingConnector::new(connector, pool.clone(), tls));
                (client, pool)
            }
        };
        // For each instance, the index it had before, if it is still listed.
        let before: Vec<Option<usize>> = instances
            .iter()
            .map(|i| {
                previous.and_then(|(up, _)| {
                    up.balancer
                        .endpoints()
                        .iter()
                        .position(|e| *e.addr == *i.address())
                })
            })
            .collect();
        let carried = |same: bool, i: usize| -> Option<(&Upstream, usize)> {
            match (same, previous, before[i]) {
                (true, Some((up, _)), Some(j)) => Some((up, j)),
                _ => None,
            }
        };
        let carry = previous.map(|(_, c)| c).unwrap_or_default();
        let n = instances.len();
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let inst = &instances[i];
                carried(true, i)
                    .map(|(up, j)| up.balancer.endpoints()[j].clone())
                    .filter(|e| e.weight == inst.weight().max(1))
                    .unwrap_or_else(|| Arc::new(Endpoint::new(inst.address(), inst.weight())))
            })
            .collect();
        let breakers: Vec<Arc<Breaker>> = (0..n)
            .map(|i| match carried(carry.breakers, i) {
                Some((up, j)) => up.breakers[j].clone(),
                None => Arc::new(Breaker::new(cfg.breaker.clone())),
            })
            .collect();
        let health: Vec<Arc<health::Health>> = (0..n)
            .map(|i| match carried(carry.health, i) {
                Some((up, j)) => up.health[j].clone(),
                None => Arc::default(),
            })
            .collect();
        // The old checker would go on writing to the health records this
        // one now shares until the old configuration's last request ends.
        if let Some((up, _)) = previous.filter(|_| carry.health)
            && let Some(t) = up.checker.lock().take()
        {
            t.abort();
        }
        let outliers: Vec<Arc<outlier::Outlier>> = (0..n)
            .map(|i| match carried(carry.outliers, i) {
                Some((up, j)) => up.outliers[j].clone(),
                None => Arc::default(),
            })
            .collect();
        let pools: Vec<Arc<pool::InstancePool>> = (0..n)
            .map(|i| match (kept_client, before[i]) {
                (Some((up, _)), Some(j)) => up.pools[j].clone(),
                _ => Arc::new(pool::InstancePool::new(
                    labels[i].clone(),
                    &metrics,
                    pool::ConnectionSettings {
                        connect_timeout: cfg.connect_timeout.0,
                        idle_timeout: cfg.idle_timeout.0,
                        max_idle: cfg.max_idle_per_instance,
                    },
                )),
            })
            .collect();
        pool.set_instances(
            instances
                .iter()
                .zip(&pools)
                .map(|(i, p)| (i.address().to_string(), p.clone())),
        );
        for (l, b) in labels.iter().zip(&breakers) {
            metrics.breaker_state.record(breaker_level(b.state()), l);
        }
        // Every instance reports its health from the start, checked or not:
        // one without active checks is in rotation, so 1, and an alert on
        // an upstream with no healthy instance has a series to read.
        for (l, h) in labels.iter().zip(&health) {
            metrics.upstream_healthy.record(h.is_healthy() as i64, l);
        }
        for reason in [
            "all-breakers-open",
            "no-healthy-instance",
            "pool-exhausted",
            "no-instance",
        ] {
            metrics.upstream_unavailable.add(
                0,
                &[
                    KeyValue::new("upstream", crate::telemetry::shared(&name)),
                    KeyValue::new("reason", reason),
                ],
            );
        }
        Upstream {
            instruments: labels
                .iter()
                .map(|l| crate::telemetry::InstanceMetrics::new(&metrics, l))
                .collect(),
            balancer: Balancer::new(cfg.strategy, endpoints),
            breakers,
            failure_on: cfg.failure_on.iter().map(|f| f.0).collect(),
            max_in_flight: cfg.max_connections_per_instance.max(1),
            connect_timeout: cfg.connect_timeout.0,
            own_connections: cfg.protocol == crate::config::UpstreamProtocol::Http1
                && cfg.tls.is_none(),
            scheme: if cfg.tls.is_some() { "https" } else { "http" },
            client,
            labels,
            metrics,
            name,
            pool,
            pools,
            health,
            health_cfg: cfg.health.clone(),
            outliers,
            outlier_cfg: cfg.outlier.clone(),
            logs: (0..n).map(|_| InstanceLogs::default()).collect(),
            checker: parking_lot::Mutex::new(None),
            sweeper: parking_lot::Mutex::new(None),
        }
    }

    /// Starts what runs beside the requests: the sweep of idle connections
    /// and the active health checks, if configured. The tasks hold only a
    /// weak reference, so dropping the upstream (a reload) stops them.
    pub fn start_tasks(self: &Arc<Self>) {
        self.start_sweeper();
        self.start_health_checks();
    }

    /// Closes idle connections once they pass the idle timeout, even when
    /// no request comes to take them. Sweeps four times per timeout, so a
    /// connection outlives it by at most a quarter.
    fn start_sweeper(self: &Arc<Self>) {
        let Some(every) = self.pools.first().map(|p| p.sweep_interval()) else {
            return;
        };
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                for p in &up.pools {
                    p.sweep();
                }
            }
        });
        *self.sweeper.lock() = Some(task);
    }

    fn start_health_checks(self: &Arc<Self>) {
        let Some(cfg) = self.health_cfg.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                let checks = up.balancer.endpoints().iter().map(|e| {
                    let uri = cfg
                        .path
                        .as_ref()
                        .map(|path| format!("{}://{}{}", up.scheme, e.addr, path));
                    let up = &up;
                    let cfg = &cfg;
                    async move {
                        let started = Instant::now();
                        let Some(uri) = uri else {
                            let connected = tokio::time::timeout(
                                cfg.timeout.0,
                                tokio::net::TcpStream::connect(&*e.addr),
                            )
                            .await;
                            return (matches!(connected, Ok(Ok(_))), started.elapsed());
                        };
                        let req = http::Request::get(uri)
                            .header(http::header::USER_AGENT, "gateway-health-check")
                            .body(http_body_util::Either::Left(Full::new(Bytes::new())));
                        let Ok(req) = req else {
                            return (false, started.elapsed());
                        };
                        let passed =
                            match tokio::time::timeout(cfg.timeout.0, up.client.request(req)).await
                            {
                                Ok(Ok(resp)) => cfg.passes(resp.status().as_u16()),
                                _ => false,
                            };
                        (passed, started.elapsed())
                    }
                });
                let results = futures_util::future::join_all(checks).await;
                for (i, (passed, took)) in results.into_iter().enumerate() {
                    up.instruments[i].health_checked(passed, took);
                    if let Some(now_healthy) = up.health[i].record(&cfg, passed) {
                        let e = &up.balancer.endpoints()[i];
                        tracing::warn!(
                            upstream = &*up.name,
                            instance = &*e.addr,
                            "health check: instance is now {}",
                            if now_healthy { "healthy" } else { "unhealthy" }
                        );
                        up.metrics
                            .upstream_healthy
                            .record(now_healthy as i64, &up.labels[i]);
                        let mut attrs = up.labels[i].to_vec();
                        attrs.push(KeyValue::new(
                            "to",
                            if now_healthy { "healthy" } else { "unhealthy" },
                        ));
                        up.metrics.health_transitions.add(1, &attrs);
                    }
                }
            }
        });
        *self.checker.lock() = Some(task);
    }

    /// Feeds passive outlier detection; ejects the instance when it crosses
    /// a threshold and the cluster can spare it.
    fn note_outlier(&self, i: usize, outcome: TryOutcome) {
        let Some(cfg) = &self.outlier_cfg else { return };
        let Some(reason) = self.outliers[i].record(cfg, outcome) else {
            return;
        };
        let now = Instant::now();
        let out = self.outliers.iter().filter(|o| o.ejected(now)).count();
        if out >= outlier::max_ejected(cfg, self.outliers.len()) {
            if let Some(suppressed) = self.logs[i].not_ejected.admit() {
                tracing::warn!(
                    upstream = &*self.name,
                    instance = &*self.balancer.endpoints()[i].addr,
                    "not ejected ({reason}): {out} of {} instances are out already{suppressed}",
                    self.outliers.len()
                );
            }
            return;
        }
        let d = self.outliers[i].eject(cfg, now);
        // Not rate-limited: an ejected instance gets no new tries and its
        // counts start over, so only tries already in flight could eject it
        // again before this ejection ends.
        tracing::warn!(
            upstream = &*self.name,
            instance = &*self.balancer.endpoints()[i].addr,
            "ejected for {} ms ({reason})",
            d.as_millis()
        );
        let mut attrs = self.labels[i].to_vec();
        attrs.push(KeyValue::new("reason", reason));
        self.metrics.outlier_ejections.add(1, &attrs);
    }

    /// Whether requests go by the multiplexing client (h2c, TLS), which can
    /// stream a request body.
    pub fn streams_requests(&self) -> bool {
        !self.own_connections
    }

    /// Whether instance `i` may be picked now: healthy, not ejected, its
    /// breaker letting tries through, and under its connection limit.
    fn pickable(&self, i: usize, now: Instant) -> bool {
        self.health[i].is_healthy()
            && !self.outliers[i].ejected(now)
            && self.breakers[i].pickable(now)
            && self.balancer.endpoints()[i].in_flight() < self.max_in_flight
    }

    /// Why no instance can be picked now, as `gateway_upstream_unavailable_total`
    /// labels it (and counts it).
    fn unavailable(&self, now: Instant) -> &'static str {
        let reason = if !(0..self.health.len())
            .any(|i| self.health[i].is_healthy() && !self.outliers[i].ejected(now))
        {
            "no-healthy-instance"
        } else if (0..self.breakers.len()).all(|i| !self.breakers[i].pickable(now)) {
            "all-breakers-open"
        } else if self
            .balancer
            .endpoints()
            .iter()
            .all(|e| e.in_flight() >= self.max_in_flight)
        {
            "pool-exhausted"
        } else {
            "no-instance"
        };
        self.metrics.upstream_unavailable.add(
            1,
            &[
                KeyValue::new("upstream", crate::telemetry::shared(&self.name)),
                KeyValue::new("reason", reason),
            ],
        );
        reason
    }

    /// Each instance's `upstream` and `endpoint` labels.
    pub fn instance_labels(&self) -> &[[KeyValue; 2]] {
        &self.labels
    }

    /// The address of instance `i`, as configured.
    pub fn instance_addr(&self, i: usize) -> Option<&str> {
        self.balancer.endpoints().get(i).map(|e| &*e.addr)
    }

    /// Whether `/ready` must fail: health is required and no instance is
    /// healthy.
    pub fn required_and_down(&self) -> bool {
        self.health_cfg.as_ref().is_some_and(|c| c.required)
            && !self.health.iter().any(|h| h.is_healthy())
    }

    /// One try on instance `i`: over its own HTTP/1 connections, or by the
    /// client (h2c and TLS).
    async fn exchange(
        &self,
        i: usize,
        req: http::Request<ClientBody>,
    ) -> Result<http::Response<pool::UpstreamBody>, pool::SendError> {
        if self.own_connections {
            return self.pools[i]
                .send(&self.balancer.endpoints()[i].addr, req)
                .await;
        }
        match self.client.request(req).await {
            Ok(resp) => {
                if let Some(conn) = resp.extensions().get::<pool::ConnectionUse>() {
                    self.pool.answered(&self.pools[i], conn);
                }
                Ok(resp.map(pool::UpstreamBody::unpooled))
            }
            Err(e) if e.is_connect() => Err(pool::SendError::Connect(format!("{e:#}"))),
            Err(e) => Err(pool::SendError::Failed(format!("{e:#}"))),
        }
    }

    /// The absolute URI for sending `origin` (path and query) to `instance`.
    pub fn uri_for(&self, instance: &str, origin: &http::Uri) -> Option<http::Uri> {
        let pq = origin.path_and_query().map_or("/", |p| p.as_str());
        http::Uri::builder()
            .scheme(self.scheme)
            .authority(instance)
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// Logs and counts a breaker transition. Every one is logged, without
    /// a rate limit: the state machine bounds them (a trip needs failures,
    /// leaving open waits out a cool-down that grows with each trip), and
    /// each says when an instance left or rejoined service.
    fn note(&self, i: usize, t: Option<Transition>) {
        let Some(t) = t else { return };
        let l = &self.labels[i];
        tracing::warn!(
            upstream = &*self.name,
            instance = &*self.balancer.endpoints()[i].addr,
            "circuit breaker {} -> {} ({})",
            t.from.label(),
            t.to.label(),
            t.reason
        );
        let mut attrs = l.to_vec();
        attrs.push(KeyValue::new("from", t.from.label()));
        attrs.push(KeyValue::new("to", t.to.label()));
        attrs.push(KeyValue::new("reason", t.reason));
        self.metrics.breaker_transitions.add(1, &attrs);
        self.metrics.breaker_state.record(breaker_level(t.to), l);
    }

    /// Sends the request: picks an instance its breaker admits, tries, and
    /// retries within the route's policy and budget on another instance.
    pub async fn send(
        &self,
        x: &Exchange<'_>,
        tries: &mut Tries,
        parts: http::request::Parts,
        body: RequestBody,
    ) -> Result<http::Response<pool::UpstreamBody>, Failed> {
        let idempotent = matches!(
            parts.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
                | http::Method::TRACE
        );
        let attempts = x.retry.map_or(1, |r| r.attempts);
        if let Some(r) = x.retry {
            r.budget.request(Instant::now());
        }
        let mut tried: Vec<usize> = Vec::new();
        let mut parts = Some(parts);
        let mut attempt = 0u32;
        // Whether this try already went back over tried instances: once per
        // try, so a cluster that cannot take the request ends the loop.
        let mut retried_tried = false;
        loop {
            let now = Instant::now();
            let eligible = |i: usize| self.pickable(i, now);
            let mut pick = self.balancer.pick(eligible, &tried);
            if pick.is_none() && !tried.is_empty() && !retried_tried {
                retried_tried = true;
                // Every other instance was tried: the same one again beats
                // giving up while the route still allows tries.
                tried.clear();
                pick = self.balancer.pick(eligible, &tried);
            }
            let Some(i) = pick else {
                return Err(Failed::Unavailable(self.unavailable(now)));
            };
            let endpoint = &self.balancer.endpoints()[i];
            self.instruments[i].picked();
            // The slot first, so a breaker probe is not spent on a try that
            // cannot be sent; picks race, so the limit is checked again here.
            let Some(slot) = endpoint.try_start(self.max_in_flight) else {
                tried.push(i);
                continue;
            };
            // Held across the try: if the request is cancelled (the client
            // goes away) the permit drops and a probe's slot comes back.
            let (permit, t) = self.breakers[i].admit(now);
            self.note(i, t);
            let Some(permit) = permit else {
                tried.push(i);
                continue;
            };
            let last_try = attempt + 1 >= attempts;
            let mut p = if last_try {
                parts.take().expect("parts are kept until the last try")
            } else {
                parts
                    .as_ref()
                    .expect("parts are kept until the last try")
                    .clone()
            };
            if !self.own_connections {
                p.uri = match self.uri_for(&endpoint.addr, &p.uri) {
                    Some(u) => u,
                    None => {
                        return Err(Failed::Error(format!(
                            "bad instance address {}",
                            endpoint.addr
                        )));
                    }
                };
            } else if !p.headers.contains_key(http::header::HOST)
                && let Ok(v) = http::HeaderValue::from_str(&endpoint.addr)
            {
                p.headers.insert(http::header::HOST, v);
            }
            let span = x
                .trace
                .map(|t| t.try_span(p.method.as_str(), &endpoint.addr, attempt, &mut p.headers));
            let sent = match &body {
                RequestBody::Buffered(b) => http_body_util::Either::Left(Full::new(b.clone())),
                RequestBody::Streamed(s) => match s.try_body() {
                    Some(s) => http_body_util::Either::Right(s),
                    None => return Err(Failed::Error("the streamed body was sent already".into())),
                },
            };
            let req = http::Request::from_parts(p, sent);
            let left = x.deadline.saturating_duration_since(now);
            let budget = x.try_timeout.min(left);
            let started = Instant::now();
            tries.count += 1;
            tries.last_instance = Some(i);
            let active = self.pools[i].connections.active();
            let result = tokio::time::timeout(budget, self.exchange(i, req)).await;
            drop(active);
            drop(slot);
            let (outcome, result) = match result {
                Err(_) => (TryOutcome::Timeout, Err(Failed::Timeout)),
                Ok(Err(pool::SendError::Connect(e))) => {
                    (TryOutcome::Connect, Err(Failed::Connect(e)))
                }
                Ok(Err(pool::SendError::Failed(e))) => (TryOutcome::Reset, Err(Failed::Error(e))),
                Ok(Ok(resp)) => (TryOutcome::Status(resp.status().as_u16()), Ok(resp)),
            };
            let grpc = match &result {
                Ok(resp) => grpc_status(resp.headers()),
                Err(_) => None,
            };
            let took = started.elapsed();
            endpoint.record_latency(took);
            self.instruments[i].tried(outcome.kind(), took);
            if let Some(span) = &span {
                match outcome {
                    TryOutcome::Status(s) => {
                        span.set_attribute(KeyValue::new("http.response.status_code", s as i64));
                        if s >= 500 {
                            span.failed(outcome.label());
                        }
                    }
                    _ => span.failed(outcome.label()),
                }
            }
            drop(span);
            self.note_outlier(i, outcome);
            let failed = self.failure_on.matches(outcome) || self.failure_on.matches_grpc(grpc);
            let t = permit.record(Instant::now(), !failed);
            self.note(i, t);
            if let Err(e) = &result
                && let Some(suppressed) = self.logs[i].try_failed(outcome).admit()
            {
                tracing::warn!(
                    upstream = &*self.name,
                    instance = &*endpoint.addr,
                    request_id = x.request_id,
                    "try {} failed: {e:?}{suppressed}",
                    attempt + 1
                );
            }

            let Some(policy) = x.retry else { return result };
            // A listed gRPC status is retried whatever the method (every
            // call is a POST): a call refused before it ran, as UNAVAILABLE
            // says, ran nowhere.
            let by_grpc = policy.on.matches_grpc(grpc);
            let wanted = !last_try
                && (policy.on.matches(outcome) || by_grpc)
                && (idempotent
                    || policy.non_idempotent
                    || outcome == TryOutcome::Connect
                    || by_grpc)
                && Instant::now() < x.deadline
                // A streamed body past the retry buffer cannot go again.
                && match &body {
                    RequestBody::Buffered(_) => true,
                    RequestBody::Streamed(s) => s.replayable(),
                };
            if !wanted {
                return result;
            }
            // Taken before the back-off: a request cancelled while it waits
            // leaves a retry counted that was never sent. It ages out of the
            // budget's window like any other, so nothing is held for good
            // and no guard is needed to give it back.
            if !policy.budget.try_retry(Instant::now()) {
                self.metrics.upstream_retries.add(
                    1,
                    &[
                        KeyValue::new("route", x.route.clone()),
                        KeyValue::new("result", "budget_exhausted"),
                    ],
                );
                return result;
            }
            self.metrics.upstream_retries.add(
                1,
                &[
                    KeyValue::new("route", x.route.clone()),
                    KeyValue::new("result", "sent"),
                ],
            );
            drop(result);
            tokio::time::sleep(
                policy
                    .backoff(attempt)
                    .min(x.deadline.saturating_duration_since(Instant::now())),
            )
            .await;
            tried.push(i);
            attempt += 1;
            retried_tried = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instance that takes connections and never answers on them.
    async fn silent_instance() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_renewed_upstream_keeps_the_state_of_the_instances_it_still_lists() {
        let metrics = Arc::new(Metrics::new(&[0.1]).unwrap());
        let cfg = |instances: &str| -> UpstreamConfig {
            toml::from_str(&format!(
                "instances = {instances}\n[health]\npath = \"/h\"\n"
            ))
            .unwrap()
        };
        let old = Upstream::new(
            "app",
            &cfg(r#"["127.0.0.1:1", "127.0.0.1:2"]"#),
            metrics.clone(),
        );
        let new_cfg = cfg(r#"["127.0.0.1:2", "127.0.0.1:3"]"#);
        let all = Carry {
            connections: true,
            breakers: true,
            health: true,
            outliers: true,
        };
        let up = Upstream::renewed("app", &new_cfg, metrics.clone(), Some((&old, all)));
        // 127.0.0.1:2 moved from index 1 to 0 and took its state along;
        // 127.0.0.1:3 starts afresh.
        assert!(Arc::ptr_eq(&up.breakers[0], &old.breakers[1]));
        assert!(Arc::ptr_eq(&up.health[0], &old.health[1]));
        assert!(Arc::ptr_eq(&up.outliers[0], &old.outliers[1]));
        assert!(Arc::ptr_eq(&up.pools[0], &old.pools[1]));
        assert!(!old.breakers.iter().any(|b| Arc::ptr_eq(b, &up.breakers[1])));
        assert!(!old.pools.iter().any(|p| Arc::ptr_eq(p, &up.pools[1])));

        let none = Carry::default();
        let fresh = Upstream::renewed("app", &new_cfg, metrics, Some((&old, none)));
        assert!(!Arc::ptr_eq(&fresh.breakers[0], &old.breakers[1]));
        assert!(!Arc::ptr_eq(&fresh.health[0], &old.health[1]));
        assert!(!Arc::ptr_eq(&fresh.outliers[0], &old.outliers[1]));
        assert!(!Arc::ptr_eq(&fresh.pools[0], &old.pools[1]));
    }

    #[tokio::test]
    async fn a_probe_cancelled_mid_try_gives_back_its_slots() {
        let addr = silent_instance().await;
        let cfg: UpstreamConfig = toml::from_str(&format!(
            "instances = [\"{addr}\"]\n[breaker]\nconsecutive_failures = 1\nfailure_rate = 0.0\ncool_down = \"1ms\"\nhalf_open_probes = 1\n"
        ))
        .unwrap();
        let up = Upstream::new("app", &cfg, Arc::new(Metrics::new(&[0.1]).unwrap()));
        let b = &up.breakers[0];
        let (permit, _) = b.admit(Instant::now());
        assert!(permit.unwrap().record(Instant::now(), false).is_some());
        tokio::time::sleep(Duration::from_millis(5)).await;

        let route = opentelemetry::Value::from("api");
        let x = Exchange {
            route: &route,
            retry: None,
            try_timeout: Duration::from_secs(10),
            deadline: Instant::now() + Duration::from_secs(10),
            request_id: "r1",
            trace: None,
        };
        let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        let mut tries = Tries::default();
        // The client goes away while the probe waits for its answer: the
        // request future is dropped mid-try.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(100),
            up.send(&x, &mut tries, parts, RequestBody::Buffered(Bytes::new())),
        )
        .await;
        assert!(cancelled.is_err(), "the instance never answers");
        assert_eq!(tries.count, 1, "the probe was sent");
        assert_eq!(b.state(), breaker::State::HalfOpen);
        assert!(
            b.pickable(Instant::now()),
            "the probe slot is free for the next request"
        );
        assert_eq!(up.balancer.endpoints()[0].in_flight(), 0);
    }
}
