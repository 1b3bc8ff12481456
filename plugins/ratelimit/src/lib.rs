//! The rate-limit filter: several limits per route, each counting requests
//! per client address, header value (an API key), context value (a tenant
//! or subject an auth filter set) or route, over a fixed or sliding window.
//! Counters live in the gateway's shared state, so replicas that share a
//! Redis enforce one limit together.
//!
//! A refused request gets 429 with `Retry-After`; every response carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` for the
//! limit closest to refusing.

mod window;

use filter_sdk::v2::state::{self, CounterOp};
use filter_sdk::v2::{
    self, Action, Declared, Filter, Metric, Needs, Reply, Request, Response, host,
};
use serde::Deserialize;
use window::{Algorithm, Verdict};

/// The context entry that carries a request's verdict to `on_response`,
/// which may run on another instance.
const CONTEXT_KEY: &str = "ratelimit";

/// The most counter operations one state call may carry (the WIT's limit).
const MAX_STATE_OPS: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    limits: Vec<LimitConfig>,
    /// What a request gets when the shared state cannot be reached:
    /// `allow` lets it through uncounted, `deny` refuses it.
    #[serde(default)]
    on_state_error: OnStateError,
    /// The status of a request refused because the state is unavailable.
    #[serde(default = "default_state_error_status")]
    state_error_status: u16,
    /// Send the RateLimit-* headers on allowed responses too.
    #[serde(default = "default_true")]
    headers: bool,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnStateError {
    #[default]
    Allow,
    Deny,
}

impl OnStateError {
    /// The `decision` label of the state errors counter.
    fn label(self) -> &'static str {
        match self {
            OnStateError::Allow => "allow",
            OnStateError::Deny => "deny",
        }
    }
}

v2::label_enum! {
    /// The `result` label of the requests counter: what one limit made of
    /// a request.
    enum Outcome {
        Allowed => "allowed",
        Rejected => "rejected",
        /// Counted, but another limit refused the request.
        AllowedOtherRejected => "allowed_other_rejected",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitConfig {
    /// Names the limit in metrics and in the counter keys.
    name: String,
    /// Requests allowed per window.
    requests: u32,
    /// "500ms", "1s", "10m", "1h", "1d".
    window: String,
    /// What is counted: "client", "route", "header:<name>", "context:<key>".
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    algorithm: Algorithm,
    /// Only these route ids; every route the filter runs on if absent.
    routes: Option<Vec<String>>,
    /// Count each route separately (true) or all routes together.
    #[serde(default = "default_true")]
    per_route: bool,
    /// When the key's header or context value is absent: count by client
    /// address instead (`client`, so leaving the header out is no way
    /// around the limit) or skip this limit (`skip`).
    #[serde(default)]
    when_missing: WhenMissing,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
enum WhenMissing {
    #[default]
    Client,
    Skip,
}

fn default_key() -> String {
    "client".into()
}
fn default_true() -> bool {
    true
}
fn default_state_error_status() -> u16 {
    503
}

enum KeySource {
    Client,
    Route,
    Header(String),
    Context(String),
}

struct Limit {
    name: String,
    requests: u32,
    window_ms: u64,
    key: KeySource,
    algorithm: Algorithm,
    routes: Option<Vec<String>>,
    per_route: bool,
    when_missing: WhenMissing,
}

struct Settings {
    limits: Vec<Limit>,
    on_state_error: OnStateError,
    state_error_status: u16,
    headers: bool,
}

fn parse_window(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = s[..split].parse().ok()?;
    let unit = match &s[split..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let ms = n.checked_mul(unit)?;
    (1..=86_400_000).contains(&ms).then_some(ms)
}

fn parse(config: &str) -> Result<Settings, String> {
    let c: Config = v2::parse_config("ratelimit", config)?;
    if c.limits.is_empty() {
        return Err("ratelimit: `limits` is empty; add at least one [[limits]]".into());
    }
    if !(400..=599).contains(&c.state_error_status) {
        return Err(format!(
            "ratelimit: state_error_status {} is not a 4xx or 5xx status",
            c.state_error_status
        ));
    }
    // Every limit's counters travel in one state call, which carries at
    // most 16 operations: a fixed limit takes one, a sliding limit two.
    let ops: usize = c
        .limits
        .iter()
        .map(|l| match l.algorithm {
            Algorithm::Fixed => 1,
            Algorithm::Sliding => 2,
        })
        .sum();
    if ops > MAX_STATE_OPS {
        return Err(format!(
            "ratelimit: these limits need {ops} counters per request, over the {MAX_STATE_OPS} one state call carries; use fewer limits or fixed windows"
        ));
    }
    let mut limits = Vec::new();
    for l in c.limits {
        let valid_name = !l.name.is_empty()
            && l.name.len() <= 64
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid_name {
            return Err(format!(
                "ratelimit: limit name {:?} must be 1 to 64 letters, digits, `-` or `_`",
                l.name
            ));
        }
        if limits.iter().any(|x: &Limit| x.name == l.name) {
            return Err(format!("ratelimit: two limits are named {:?}", l.name));
        }
        if l.requests == 0 {
            return Err(format!(
                "ratelimit: limit {:?} allows 0 requests; use at least 1 (or remove the route)",
                l.name
            ));
        }
        let window_ms = parse_window(&l.window).ok_or_else(|| {
            format!(
                "ratelimit: limit {:?} has window {:?}; write it like \"1s\", \"10m\" or \"1h\" (at most \"1d\")",
                l.name, l.window
            )
        })?;
        let key = match l.key.as_str() {
            "client" => KeySource::Client,
            "route" => KeySource::Route,
            k => match k.split_once(':') {
                Some(("header", h)) if !h.is_empty() => KeySource::Header(h.to_ascii_lowercase()),
                Some(("context", c)) if !c.is_empty() => KeySource::Context(c.to_string()),
                _ => {
                    return Err(format!(
                        "ratelimit: limit {:?} has key {:?}; use \"client\", \"route\", \"header:<name>\" or \"context:<key>\"",
                        l.name, l.key
                    ));
                }
            },
        };
        limits.push(Limit {
            name: l.name,
            requests: l.requests,
            window_ms,
            key,
            algorithm: l.algorithm,
            routes: l.routes,
            per_route: l.per_route,
            when_missing: l.when_missing,
        });
    }
    Ok(Settings {
        limits,
        on_state_error: c.on_state_error,
        state_error_status: c.state_error_status,
        headers: c.headers,
    })
}

/// The client as counted: its IPv4 address, or its IPv6 /64 (one host
/// usually holds a whole /64, so counting single addresses would let it
/// rotate through billions of keys). The port is dropped: one client, many
/// connections.
fn client_key(addr: &str) -> String {
    let ip = match addr.rsplit_once(':') {
        Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            ip.trim_start_matches('[').trim_end_matches(']')
        }
        _ => addr,
    };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(std::net::IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map_or(ip.to_string(), |v4| v4.to_string()),
        _ => ip.to_string(),
    }
}

/// FNV-1a: a stable hash, so every replica derives the same key, and
/// API keys or tokens never appear in the state store as themselves.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The counter key of `limit` for this request, or None to skip it.
fn key_for(limit: &Limit, req: &Request, route: &str) -> Option<String> {
    let client = || format!("ip={}", client_key(&req.client_addr()));
    let value = match &limit.key {
        KeySource::Client => client(),
        KeySource::Route => "route".to_string(),
        KeySource::Header(h) => match req.header(h) {
            Some(v) => format!("h={:016x}", fnv1a(&v)),
            None => match limit.when_missing {
                WhenMissing::Client => client(),
                WhenMissing::Skip => return None,
            },
        },
        KeySource::Context(k) => match req.get_context(k) {
            Some(v) => format!("c={:016x}", fnv1a(v.as_bytes())),
            None => match limit.when_missing {
                WhenMissing::Client => client(),
                WhenMissing::Skip => return None,
            },
        },
    };
    let scope = if limit.per_route { route } else { "*" };
    Some(format!("{}:{scope}:{value}", limit.name))
}

/// The filter's counters with their label names, in the order `declared`
/// gives the values. The names and labels are those the plugin had under
/// filter API 0.1, which dashboards and alerts know.
const COUNTERS: [(&str, &[&str]); 2] = [
    ("requests", &["route", "limit", "result"]),
    ("state_errors", &["route", "decision"]),
];

/// The counters, declared by every instance in `configure`.
struct Metrics {
    requests: Metric,
    state_errors: Metric,
}

impl Metrics {
    fn declare() -> Result<Metrics, String> {
        let [requests, state_errors] = COUNTERS;
        Ok(Metrics {
            requests: Metric::counter(requests.0, requests.1)?,
            state_errors: Metric::counter(state_errors.0, state_errors.1)?,
        })
    }

    /// The metric of a counter `declared` names.
    fn by_name(&self, name: &str) -> Option<Metric> {
        let metrics = [self.requests, self.state_errors];
        COUNTERS
            .iter()
            .zip(metrics)
            .find_map(|((n, _), m)| (*n == name).then_some(m))
    }

    fn count(&self, route: &str, limit: &str, result: Outcome) {
        self.requests.inc(&[route, limit, result.label()]);
    }
}

impl Limit {
    fn applies_to(&self, route: &str) -> bool {
        self.routes
            .as_ref()
            .is_none_or(|routes| routes.iter().any(|r| r == route))
    }
}

/// Every series of the filter's counters that the configuration names, at
/// zero: for each route a limit applies to, that limit with each result,
/// and the route's state errors with the configured decision. A limit
/// without `routes` applies to every route the filter runs on, which a
/// filter cannot learn, so it is declared for every route of the gateway
/// (`route_ids`, in their order): on a route the filter does not run on,
/// its series stay at zero. Routes come outermost, so past `DECLARE_MAX`
/// what is left out is whole routes, the last ones.
fn declared(s: &Settings, route_ids: &[String]) -> Declared {
    let results = Outcome::labels(Outcome::ALL);
    let mut d = Declared::new();
    for route in route_ids {
        let limits: Vec<&str> = s
            .limits
            .iter()
            .filter(|l| l.applies_to(route))
            .map(|l| l.name.as_str())
            .collect();
        if limits.is_empty() {
            continue;
        }
        d.product(
            "requests",
            &[
                ("route", &[route]),
                ("limit", &limits),
                ("result", &results),
            ],
        );
        d.product(
            "state_errors",
            &[
                ("route", &[route]),
                ("decision", &[s.on_state_error.label()]),
            ],
        );
    }
    d
}

/// The headers for the verdict closest to refusing.
fn rate_headers(v: &Verdict) -> Vec<(String, Vec<u8>)> {
    vec![
        ("ratelimit-limit".into(), v.limit.to_string().into_bytes()),
        (
            "ratelimit-remaining".into(),
            v.remaining.to_string().into_bytes(),
        ),
        ("ratelimit-reset".into(), v.reset_s.to_string().into_bytes()),
    ]
}

struct RateLimit {
    s: Settings,
    m: Metrics,
}

impl Filter for RateLimit {
    fn configure(config: &str) -> Result<(Self, Needs), String> {
        let s = parse(config)?;
        let route_ids = host::route_ids();
        v2::check_route_ids(
            "ratelimit",
            s.limits.iter().flat_map(|l| l.routes.iter().flatten()),
            &route_ids,
        )?;
        let m = Metrics::declare()?;
        declared(&s, &route_ids).zero(|name| m.by_name(name), "too many routes and limits");
        // Headers and state only: both bodies stream past.
        Ok((RateLimit { s, m }, Needs::NONE))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let (s, m) = (&self.s, &self.m);
        let route = req.route();
        let now_ms = host::now_ms();
        // Every applicable limit's counters go to the state in one call.
        let mut applied: Vec<(&Limit, usize)> = Vec::new();
        let mut ops: Vec<CounterOp> = Vec::new();
        for limit in &s.limits {
            if !limit.applies_to(&route) {
                continue;
            }
            let Some(key) = key_for(limit, req, &route) else {
                continue;
            };
            applied.push((limit, ops.len()));
            ops.extend(limit.algorithm.ops(&key, limit.window_ms, now_ms));
        }
        if applied.is_empty() {
            return Action::Continue;
        }
        let counters = match state::counter_add_many(&ops) {
            Ok(c) => c,
            Err(e) => {
                let decision = s.on_state_error.label();
                m.state_errors.inc(&[&route, decision]);
                v2::log!(
                    Warn,
                    "rate limits not checked ({e:?}); on_state_error = {decision}"
                );
                return match s.on_state_error {
                    OnStateError::Allow => Action::Continue,
                    OnStateError::Deny => Action::Respond(Reply {
                        status: s.state_error_status,
                        headers: vec![
                            ("content-type".into(), b"application/json".to_vec()),
                            ("retry-after".into(), b"1".to_vec()),
                        ],
                        body: br#"{"error":"rate_limit_unavailable"}"#.to_vec(),
                    }),
                };
            }
        };
        let verdicts: Vec<(&Limit, Verdict)> = applied
            .iter()
            .map(|(limit, at)| {
                let v = limit.algorithm.verdict(
                    &counters[*at..],
                    limit.requests,
                    limit.window_ms,
                    now_ms,
                );
                (*limit, v)
            })
            .collect();
        let refused = verdicts.iter().find(|(_, v)| !v.allowed);
        for (limit, v) in &verdicts {
            let result = if !v.allowed {
                Outcome::Rejected
            } else if refused.is_some() {
                Outcome::AllowedOtherRejected
            } else {
                Outcome::Allowed
            };
            m.count(&route, &limit.name, result);
        }
        if let Some((limit, v)) = refused {
            v2::log!(
                Debug,
                "limit {} refused the request; retry in {} s",
                limit.name,
                v.retry_after_s
            );
            let mut headers = rate_headers(v);
            headers.push((
                "retry-after".into(),
                v.retry_after_s.to_string().into_bytes(),
            ));
            headers.push(("content-type".into(), b"application/json".to_vec()));
            return Action::Respond(Reply {
                status: 429,
                headers,
                body: format!(
                    "{{\"error\":\"rate_limited\",\"limit\":\"{}\",\"retry_after\":{}}}",
                    limit.name, v.retry_after_s
                )
                .into_bytes(),
            });
        }
        if s.headers {
            // The tightest limit: fewest requests left, then longest to reset.
            if let Some((_, v)) = verdicts
                .iter()
                .min_by_key(|(_, v)| (v.remaining, std::cmp::Reverse(v.reset_s)))
                && let Err(e) = req.set_context(
                    CONTEXT_KEY,
                    &format!("{} {} {}", v.limit, v.remaining, v.reset_s),
                )
            {
                // The limits were checked and counted; only the headers
                // that report them are lost, which is no reason to fail a
                // request they allowed.
                v2::log!(
                    Warn,
                    "the RateLimit headers cannot travel to the response: {}",
                    e.name()
                );
            }
        }
        Action::Continue
    }

    fn on_response(&mut self, req: &Request, resp: &Response) -> Action {
        // A 429 carries the headers of the limit that refused it; another
        // rate-limit filter earlier in the chain must not overwrite them.
        if resp.status() == 429 {
            return Action::Continue;
        }
        if let Some(v) = req.get_context(CONTEXT_KEY) {
            let mut parts = v.split(' ');
            for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
                if let Some(p) = parts.next() {
                    let _ = resp.set_header(name, p.as_bytes());
                }
            }
        }
        Action::Continue
    }
}

v2::export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_units_and_bounds() {
        assert_eq!(parse_window("250ms"), Some(250));
        assert_eq!(parse_window("10s"), Some(10_000));
        assert_eq!(parse_window("1h"), Some(3_600_000));
        assert_eq!(parse_window("1d"), Some(86_400_000));
        assert_eq!(parse_window("2d"), None);
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("5"), None);
    }

    #[test]
    fn clients_are_counted_by_ipv4_address_or_ipv6_slash_64() {
        assert_eq!(client_key("10.1.2.3:5555"), "10.1.2.3");
        assert_eq!(client_key("[2001:db8:1:2:aaaa::1]:80"), "2001:db8:1:2::/64");
        assert_eq!(
            client_key("[2001:db8:1:2:bbbb::9]:81"),
            client_key("[2001:db8:1:2:aaaa::1]:80")
        );
        assert_eq!(client_key("[::ffff:10.0.0.1]:80"), "10.0.0.1");
    }

    /// The default configuration's limits (config/gateway.toml).
    const DEFAULT: &str = r#"{"limits": [
        {"name": "per-client", "requests": 10, "window": "1s"},
        {"name": "per-tenant", "requests": 1000, "window": "1m",
         "key": "context:tenant", "when_missing": "skip"}
    ]}"#;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_route_and_limit_is_declared_with_every_result() {
        let s = parse(DEFAULT).unwrap();
        let d = declared(&s, &ids(&["echo", "tenants"]));
        assert_eq!(d.count("requests"), 2 * 2 * 3);
        assert_eq!(d.values("requests", "route"), ["echo", "tenants"]);
        assert_eq!(d.values("requests", "limit"), ["per-client", "per-tenant"]);
        assert_eq!(
            d.values("requests", "result"),
            Outcome::labels(Outcome::ALL)
        );
        assert_eq!(d.count("state_errors"), 2);
        assert_eq!(d.values("state_errors", "decision"), ["allow"]);
        assert_eq!(d.dropped, 0);
    }

    #[test]
    fn limits_named_for_routes_are_declared_on_those_routes_only() {
        let s = parse(
            r#"{"on_state_error": "deny", "limits": [
                {"name": "a", "requests": 1, "window": "1s", "routes": ["api"]},
                {"name": "b", "requests": 1, "window": "1s", "routes": ["api", "admin"]}
            ]}"#,
        )
        .unwrap();
        let d = declared(&s, &ids(&["api", "admin", "static"]));
        let pairs: Vec<(&str, &str)> = d
            .series
            .iter()
            .filter(|(c, l)| *c == "requests" && l[2].1 == "rejected")
            .map(|(_, l)| (l[0].1.as_str(), l[1].1.as_str()))
            .collect();
        assert_eq!(pairs, [("api", "a"), ("api", "b"), ("admin", "b")]);
        // No limit on `static`: no state call, no state error there.
        assert_eq!(d.values("state_errors", "route"), ["api", "admin"]);
        assert_eq!(d.values("state_errors", "decision"), ["deny"]);
    }

    #[test]
    fn declared_series_carry_their_counters_label_names_in_order() {
        let s = parse(DEFAULT).unwrap();
        for (counter, labels) in &declared(&s, &ids(&["echo", "tenants"])).series {
            let (_, names) = COUNTERS.iter().find(|(c, _)| c == counter).unwrap();
            let given: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(given, *names, "{counter}");
        }
    }

    #[test]
    fn many_routes_are_declared_up_to_the_budget() {
        let s = parse(DEFAULT).unwrap();
        let routes: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
        let d = declared(&s, &routes);
        // 6 series a route: the first 8 routes fit, then part of the 9th.
        assert_eq!(d.count("requests"), v2::DECLARE_MAX);
        assert_eq!(d.dropped, 20 * 6 - v2::DECLARE_MAX);
        assert_eq!(d.values("requests", "route")[0], "r0");
        assert_eq!(d.count("state_errors"), 20);
    }
}
