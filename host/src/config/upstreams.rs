//! `[upstreams.NAME]` and its `breaker`, `health` and `outlier` tables:
//! the instances a route sends to, how one is picked, and what keeps
//! requests off a failing one.

use super::{
    ConfigError, FailureOn, Millis, Outcome, Source, UpstreamTlsConfig, refuse, table_label,
};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Each instance as `"host:port"` or `{ address = "host:port", weight = 3 }`.
    pub instances: Vec<InstanceConfig>,
    /// How an instance is picked for each try.
    #[serde(default)]
    pub strategy: Strategy,
    /// The circuit breaker every instance gets.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// What counts as a failure for the breakers: `connect`, `timeout`,
    /// `reset`, `5xx`, or a status code such as `"429"`.
    #[serde(default = "defaults::failure_on")]
    pub failure_on: Vec<FailureOn>,
    /// Active health checks; none when absent.
    pub health: Option<HealthConfig>,
    /// Passive outlier ejection; none when absent.
    pub outlier: Option<OutlierConfig>,
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
    /// `http1`, or `h2c` for HTTP/2 without TLS (prior knowledge). With
    /// `tls`, HTTP/2 is used wherever the instance offers it by ALPN.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the instances: `tls = true`, or a table with `ca_file`,
    /// `server_name` and a client certificate (`cert_file`, `key_file`).
    pub tls: Option<UpstreamTlsConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2c,
}

/// One upstream instance: an address, with a weight for `weighted`.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceConfig {
    Address(String),
    Weighted(WeightedInstance),
}

/// A string or a table, read as written rather than tried one way and then
/// the other, so a mistake inside the table is reported at itself.
impl<'de> Deserialize<'de> for InstanceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = InstanceConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<InstanceConfig, E> {
                Ok(InstanceConfig::Address(s.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<InstanceConfig, A::Error> {
                WeightedInstance::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(InstanceConfig::Weighted)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedInstance {
    pub address: String,
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

impl InstanceConfig {
    pub fn address(&self) -> &str {
        match self {
            InstanceConfig::Address(a) => a,
            InstanceConfig::Weighted(w) => &w.address,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            InstanceConfig::Address(_) => 1,
            InstanceConfig::Weighted(w) => w.weight,
        }
    }
}

/// `host:port` with a port a connection can be made to (1 to 65535).
pub fn parse_authority(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host_ok = !host.is_empty()
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#@".contains(c));
    host_ok.then_some((host, port))
}

/// The shortest health-check interval; the checker never runs faster.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

impl UpstreamConfig {
    pub(super) fn validate(&self, src: &Source<'_>, name: &str) -> Result<(), ConfigError> {
        src.require(
            !self.instances.is_empty(),
            &["upstreams", name, "instances"],
            || format!("upstream `{name}` has no instances; list at least one `host:port`"),
        )?;
        // Per-instance state (breaker, health, pool) is keyed by address;
        // one address twice would be one instance counted twice.
        let mut seen = std::collections::HashSet::new();
        for (i, instance) in self.instances.iter().enumerate() {
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
        // max_idle_per_instance = 0 is allowed: keeping no idle connection
        // is a real choice (an instance that mishandles keep-alive, or one
        // behind a balancer that should see new connections); it costs a
        // connect per request and breaks nothing.
        refuse(
            src,
            &["upstreams", name],
            &[
                (
                    "connect_timeout",
                    self.connect_timeout.0.is_zero(),
                    "would fail every connection attempt",
                    "use a duration like \"2s\"",
                ),
                (
                    "idle_timeout",
                    self.idle_timeout.0.is_zero(),
                    "would close every idle connection at once",
                    "use a duration like \"60s\", or max_idle_per_instance = 0 to keep none",
                ),
                (
                    "max_connections_per_instance",
                    self.max_connections_per_instance == 0,
                    "would send no request to any instance (every answer 503 pool-exhausted)",
                    "use 1 or more, like 1024",
                ),
            ],
        )?;
        self.breaker.validate(src, name)?;
        if let Some(h) = &self.health {
            h.validate(src, name)?;
        }
        if let Some(o) = &self.outlier {
            o.validate(src, name)?;
        }
        Ok(())
    }
}

impl BreakerConfig {
    fn validate(&self, src: &Source<'_>, name: &str) -> Result<(), ConfigError> {
        let table = ["upstreams", name, "breaker"];
        // consecutive_failures = 0 and failure_rate = 0 each turn one
        // trigger off, as documented; both off is how an upstream goes
        // without a breaker, and min_requests = 0 only makes the rate count
        // from the first request.
        refuse(
            src,
            &table,
            &[
                (
                    "failure_rate",
                    !(0.0..=1.0).contains(&self.failure_rate),
                    "is not a share",
                    "use 0 (off) to 1",
                ),
                (
                    "window",
                    self.window.0.is_zero(),
                    "would count no request, so the failure rate could never open the breaker",
                    "use a duration like \"10s\"",
                ),
                (
                    "cool_down",
                    self.cool_down.0.is_zero(),
                    "would let requests through again as soon as the breaker opens",
                    "use a duration like \"5s\"",
                ),
                (
                    "half_open_probes",
                    self.half_open_probes == 0,
                    "lets no probe through, so an opened breaker would never close",
                    "use 1 or more",
                ),
                (
                    "successes_to_close",
                    self.successes_to_close == 0,
                    "would be read as 1: one successful probe would close the breaker",
                    "use 1 or more, like 2",
                ),
            ],
        )?;
        src.not_below(
            &table,
            ("max_cool_down", self.max_cool_down),
            ("cool_down", self.cool_down),
        )
    }
}

impl HealthConfig {
    fn validate(&self, src: &Source<'_>, name: &str) -> Result<(), ConfigError> {
        let table = ["upstreams", name, "health"];
        refuse(
            src,
            &table,
            &[
                (
                    "path",
                    self.path.as_ref().is_some_and(|p| !p.starts_with('/')),
                    "is not a path, so every check would fail",
                    "start it with `/`, like \"/health\"",
                ),
                (
                    "interval",
                    self.interval.0 < MIN_HEALTH_INTERVAL,
                    "is under 10ms, the shortest interval checks run at",
                    "use a duration like \"5s\"",
                ),
                (
                    "timeout",
                    self.timeout.0.is_zero(),
                    "would fail every check and take every instance out",
                    "use a duration like \"1s\"",
                ),
                (
                    "healthy_threshold",
                    self.healthy_threshold == 0,
                    "would be read as 1: one passed check would bring an instance back",
                    "use 1 or more, like 2",
                ),
                (
                    "unhealthy_threshold",
                    self.unhealthy_threshold == 0,
                    "would be read as 1: one failed check would take an instance out",
                    "use 1 or more, like 3",
                ),
            ],
        )?;
        if let Some(i) = self
            .expected_status
            .iter()
            .position(|s| !(100..=599).contains(s))
        {
            return Err(src.error_key(
                &["upstreams", name, "health", "expected_status", &i.to_string()],
                format!(
                    "{} expected_status lists {}, which is not an HTTP status; use statuses from 100 to 599",
                    table_label(&table),
                    self.expected_status[i]
                ),
            ));
        }
        Ok(())
    }
}

impl OutlierConfig {
    fn validate(&self, src: &Source<'_>, name: &str) -> Result<(), ConfigError> {
        let table = ["upstreams", name, "outlier"];
        src.require(
            self.consecutive_5xx != 0 || self.consecutive_gateway_failures != 0,
            &["upstreams", name, "outlier", "consecutive_5xx"],
            || format!(
                "{} turns off both consecutive_5xx and consecutive_gateway_failures, so it would never eject an instance; set one of them, or remove the table to go without ejection",
                table_label(&table)
            ),
        )?;
        refuse(
            src,
            &table,
            &[
                (
                    "base_ejection_time",
                    self.base_ejection_time.0.is_zero(),
                    "would eject an instance for no time at all",
                    "use a duration like \"30s\"",
                ),
                (
                    "max_ejected_percent",
                    !(1..=100).contains(&self.max_ejected_percent),
                    "is not a percentage of the cluster",
                    "use 1 to 100 (one instance may be ejected whatever the share)",
                ),
            ],
        )?;
        src.not_below(
            &table,
            ("max_ejection_time", self.max_ejection_time),
            ("base_ejection_time", self.base_ejection_time),
        )
    }
}

mod defaults {
    use super::*;
    pub fn failure_on() -> Vec<FailureOn> {
        [
            Outcome::Connect,
            Outcome::Timeout,
            Outcome::Reset,
            Outcome::Any5xx,
        ]
        .map(FailureOn)
        .to_vec()
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
    pub fn max_connections() -> u32 {
        1024
    }
    pub fn weight() -> u32 {
        1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The instance with the fewest requests in flight.
    LeastConnections,
    /// In proportion to the weights, spread evenly (nginx's smooth
    /// weighted round robin: no bursts to the heaviest instance).
    Weighted,
    /// Power of two choices: two instances at random, the one with the
    /// lower in-flight count times latency average wins (Finagle's and
    /// linkerd's default: near least-loaded without a global scan).
    P2c,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker; 0 turns this trigger off.
    #[serde(default = "breaker_defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// Share of failed requests (0 to 1) over `window` that opens it; 0
    /// turns this trigger off.
    #[serde(default = "breaker_defaults::failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "breaker_defaults::window")]
    pub window: Millis,
    /// Requests the window must hold before the rate counts.
    #[serde(default = "breaker_defaults::min_requests")]
    pub min_requests: u32,
    /// How long the breaker stays open after its first trip; each trip in
    /// a row doubles it, up to `max_cool_down`.
    #[serde(default = "breaker_defaults::cool_down")]
    pub cool_down: Millis,
    #[serde(default = "breaker_defaults::max_cool_down")]
    pub max_cool_down: Millis,
    /// Requests let through at once while half-open.
    #[serde(default = "breaker_defaults::half_open_probes")]
    pub half_open_probes: u32,
    /// Successful probes that close the breaker.
    #[serde(default = "breaker_defaults::successes_to_close")]
    pub successes_to_close: u32,
}

mod breaker_defaults {
    use super::Millis;
    use std::time::Duration;
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn failure_rate() -> f64 {
        0.5
    }
    pub fn window() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn min_requests() -> u32 {
        20
    }
    pub fn cool_down() -> Millis {
        Millis(Duration::from_secs(5))
    }
    pub fn max_cool_down() -> Millis {
        Millis(Duration::from_secs(60))
    }
    pub fn half_open_probes() -> u32 {
        1
    }
    pub fn successes_to_close() -> u32 {
        2
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: breaker_defaults::consecutive_failures(),
            failure_rate: breaker_defaults::failure_rate(),
            window: breaker_defaults::window(),
            min_requests: breaker_defaults::min_requests(),
            cool_down: breaker_defaults::cool_down(),
            max_cool_down: breaker_defaults::max_cool_down(),
            half_open_probes: breaker_defaults::half_open_probes(),
            successes_to_close: breaker_defaults::successes_to_close(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The path an HTTP GET checks on each instance; without it, a check
    /// is a TCP connection made within the timeout (for the instances of
    /// TCP routes).
    pub path: Option<String>,
    #[serde(default = "health_defaults::interval")]
    pub interval: Millis,
    #[serde(default = "health_defaults::timeout")]
    pub timeout: Millis,
    /// Statuses that pass; any 2xx when absent.
    #[serde(default)]
    pub expected_status: Vec<u16>,
    #[serde(default = "health_defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "health_defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// `/ready` on the admin listener fails while no instance is healthy.
    #[serde(default)]
    pub required: bool,
}

mod health_defaults {
    use super::Millis;
    use std::time::Duration;
    pub fn interval() -> Millis {
        Millis(Duration::from_secs(5))
    }
    pub fn timeout() -> Millis {
        Millis(Duration::from_secs(1))
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx answers or failures to reach the instance, in a row (0: off).
    #[serde(default = "outlier_defaults::consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Connect failures, timeouts, resets, 502, 503 and 504, in a row (0: off).
    #[serde(default = "outlier_defaults::consecutive_gateway_failures")]
    pub consecutive_gateway_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long.
    #[serde(default = "outlier_defaults::base_ejection_time")]
    pub base_ejection_time: Millis,
    #[serde(default = "outlier_defaults::max_ejection_time")]
    pub max_ejection_time: Millis,
    /// The most of the cluster ejected at once, in percent; one instance
    /// may always be ejected.
    #[serde(default = "outlier_defaults::max_ejected_percent")]
    pub max_ejected_percent: u32,
}

mod outlier_defaults {
    use super::Millis;
    use std::time::Duration;
    pub fn consecutive_5xx() -> u32 {
        5
    }
    pub fn consecutive_gateway_failures() -> u32 {
        5
    }
    pub fn base_ejection_time() -> Millis {
        Millis(Duration::from_secs(30))
    }
    pub fn max_ejection_time() -> Millis {
        Millis(Duration::from_secs(300))
    }
    pub fn max_ejected_percent() -> u32 {
        50
    }
}
