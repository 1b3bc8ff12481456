//! The header filter: removes request headers a client must not be able to
//! set (spoofed identity, method overrides, internal routing hints), removes
//! response headers that leak what runs behind the gateway, adds configured
//! headers both ways, and refuses requests with too many or too large headers.

use filter_sdk::v2::{self, Action, Declared, Filter, Metric, Needs, Reply, Request, Response};
use serde::Deserialize;
use std::collections::BTreeMap;

v2::label_enum! {
    /// The `type` label of the violations counter: what a request tried.
    enum Violation {
        /// Claims another client address than the connection's.
        SpoofedClientIp => "spoofed-client-ip",
        /// Asks a framework to route by another path than the one checked.
        UrlOverride => "url-override",
        /// Asks the upstream to take another host than the one routed.
        HostOverride => "host-override",
        /// Asks a framework to run another method than the one checked.
        MethodOverride => "method-override",
        /// Claims a user or tenant that only the gateway may assert.
        SpoofedIdentity => "spoofed-identity",
        /// Next.js's internal header, which skips its middleware
        /// (CVE-2025-29927).
        MiddlewareBypass => "middleware-bypass",
        /// httpoxy: CGI-style upstreams turn `Proxy` into HTTP_PROXY.
        Httpoxy => "httpoxy",
        /// A header stripped by the configuration but on none of the lists.
        Other => "other",
        /// Refused: the headers take more bytes than allowed.
        OversizedHeaders => "oversized-headers",
        /// Refused: more header lines than allowed.
        TooManyHeaders => "too-many-headers",
    }
}

/// Request headers a client could use to impersonate someone, bypass a
/// control or steer the upstream, by what they attempt: together the
/// default list of headers to strip, and how a stripped header is counted
/// (one not listed here counts as `other`). The gateway itself removes the
/// client's forwarding headers unless `trust_forwarded` is on; behind a
/// trusted proxy this list still strips the ones that proxy does not own.
/// `X-Forwarded-For`, `-Proto` and `-Host` are left to the gateway, which
/// writes them.
const STRIP_BY_VIOLATION: &[(Violation, &[&str])] = &[
    (
        Violation::SpoofedClientIp,
        &[
            "x-real-ip",
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-cluster-client-ip",
            "x-original-forwarded-for",
            "x-originating-ip",
            "x-remote-ip",
            "x-remote-addr",
            "forwarded",
            "x-forwarded-server",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-scheme",
            "x-forwarded-ssl",
            "x-forwarded-uri",
        ],
    ),
    (Violation::UrlOverride, &["x-original-url", "x-rewrite-url"]),
    (Violation::HostOverride, &["x-original-host", "x-host"]),
    (
        Violation::MethodOverride,
        &[
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ],
    ),
    (
        Violation::SpoofedIdentity,
        &[
            "x-user-id",
            "x-remote-user",
            "x-auth-user",
            "x-authenticated-user",
            "x-tenant-id",
        ],
    ),
    (Violation::MiddlewareBypass, &["x-middleware-subrequest"]),
    (Violation::Httpoxy, &["proxy"]),
];

/// What a stripped request header (lower case) is an attempt at.
fn classify(name: &str) -> Violation {
    STRIP_BY_VIOLATION
        .iter()
        .find(|(_, names)| names.contains(&name))
        .map_or(Violation::Other, |(v, _)| *v)
}

v2::label_enum! {
    /// The `reason` label of the refusals counter.
    enum Refusal {
        TooManyHeaders => "too many headers",
        HeadersTooLarge => "headers too large",
    }
}

impl Refusal {
    fn violation(self) -> Violation {
        match self {
            Refusal::TooManyHeaders => Violation::TooManyHeaders,
            Refusal::HeadersTooLarge => Violation::OversizedHeaders,
        }
    }
}

v2::label_enum! {
    /// The `phase` label of the removals counter.
    enum Phase {
        Request => "request",
        Response => "response",
    }
}

/// Response headers that tell an attacker what software runs upstream.
const DEFAULT_REMOVE_RESPONSE: &[&str] = &[
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
    "x-generator",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Replaces the default list of request headers to strip.
    strip_request: Option<Vec<String>>,
    /// Added to the request headers to strip (default list or `strip_request`).
    #[serde(default)]
    strip_request_extra: Vec<String>,
    /// Replaces the default list of response headers to remove.
    remove_response: Option<Vec<String>>,
    #[serde(default)]
    add_request: BTreeMap<String, String>,
    #[serde(default)]
    add_response: BTreeMap<String, String>,
    /// Most header lines a request may carry; more is answered with 431.
    #[serde(default = "default_max_count")]
    max_header_count: u32,
    /// Most bytes (names plus values) a request's headers may take.
    #[serde(default = "default_max_bytes")]
    max_header_bytes: u32,
}

fn default_max_count() -> u32 {
    100
}
fn default_max_bytes() -> u32 {
    16 * 1024
}

struct Settings {
    /// Sorted, for binary search.
    strip_request: Vec<String>,
    /// What each of `strip_request` is an attempt at, at the same index.
    strip_violation: Vec<Violation>,
    remove_response: Vec<String>,
    add_request: Vec<(String, Vec<u8>)>,
    add_response: Vec<(String, Vec<u8>)>,
    max_header_count: u32,
    max_header_bytes: u32,
}

fn lower_all(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

fn parse(config: &str) -> Result<Settings, String> {
    let c: Config = v2::parse_config("headers", config)?;
    let defaults = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let strip = c.strip_request.unwrap_or_else(|| {
        STRIP_BY_VIOLATION
            .iter()
            .flat_map(|(_, names)| defaults(names))
            .collect()
    });
    let check =
        |what: &str, m: &BTreeMap<String, String>| -> Result<Vec<(String, Vec<u8>)>, String> {
            m.iter()
                .map(|(k, v)| {
                    if k.is_empty()
                        || !k
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                    {
                        return Err(format!("headers: {what} has an invalid header name {k:?}"));
                    }
                    Ok((k.to_ascii_lowercase(), v.clone().into_bytes()))
                })
                .collect()
        };
    let strip_request = lower_all(strip.into_iter().chain(c.strip_request_extra));
    Ok(Settings {
        strip_violation: strip_request.iter().map(|n| classify(n)).collect(),
        strip_request,
        remove_response: lower_all(
            c.remove_response
                .unwrap_or_else(|| defaults(DEFAULT_REMOVE_RESPONSE)),
        ),
        add_request: check("add_request", &c.add_request)?,
        add_response: check("add_response", &c.add_response)?,
        max_header_count: c.max_header_count,
        max_header_bytes: c.max_header_bytes,
    })
}

/// The filter's counters with their label names, in the order `declared`
/// gives the values. The names and labels are those the plugin had under
/// filter API 0.1, which dashboards and alerts know.
const COUNTERS: [(&str, &[&str]); 3] = [
    ("headers_removed", &["phase", "header"]),
    ("requests_refused", &["reason"]),
    ("violations", &["type"]),
];

/// The counters, declared by every instance in `configure`.
struct Metrics {
    removed: Metric,
    refused: Metric,
    violations: Metric,
}

impl Metrics {
    fn declare() -> Result<Metrics, String> {
        let [removed, refused, violations] = COUNTERS;
        Ok(Metrics {
            removed: Metric::counter(removed.0, removed.1)?,
            refused: Metric::counter(refused.0, refused.1)?,
            violations: Metric::counter(violations.0, violations.1)?,
        })
    }

    /// The metric of a counter `declared` names.
    fn by_name(&self, name: &str) -> Option<Metric> {
        let metrics = [self.removed, self.refused, self.violations];
        COUNTERS
            .iter()
            .zip(metrics)
            .find_map(|((n, _), m)| (*n == name).then_some(m))
    }

    fn removed(&self, phase: Phase, name: &str) {
        self.removed.inc(&[phase.label(), name]);
    }

    fn violation(&self, v: Violation) {
        self.violations.inc(&[v.label()]);
    }

    fn refuse(&self, why: Refusal) -> Action {
        self.refused.inc(&[why.label()]);
        self.violation(why.violation());
        Action::Respond(Reply {
            status: 431,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: format!("request refused: {}\n", why.label()).into_bytes(),
        })
    }
}

/// Every series of the filter's counters, at zero: each header it may
/// remove in each phase, each refusal and each violation type. Nothing here
/// depends on traffic, so these are all the series the filter ever counts
/// (unless a list of headers runs past `DECLARE_MAX`).
fn declared(s: &Settings) -> Declared {
    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let mut d = Declared::new();
    for (phase, headers) in [
        (Phase::Request, names(&s.strip_request)),
        (Phase::Response, names(&s.remove_response)),
    ] {
        d.product(
            "headers_removed",
            &[("phase", &[phase.label()]), ("header", &headers)],
        );
    }
    d.product(
        "requests_refused",
        &[("reason", &Refusal::labels(Refusal::ALL))],
    );
    d.product(
        "violations",
        &[("type", &Violation::labels(Violation::ALL))],
    );
    d
}

/// The violation types one request showed.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    fn insert(&mut self, v: Violation) {
        self.0 |= 1 << v as u32;
    }
    fn contains(&self, v: Violation) -> bool {
        self.0 & (1 << v as u32) != 0
    }
}

struct Headers {
    s: Settings,
    m: Metrics,
}

impl Filter for Headers {
    fn configure(config: &str) -> Result<(Self, Needs), String> {
        let s = parse(config)?;
        let m = Metrics::declare()?;
        declared(&s).zero(|name| m.by_name(name), "too many headers listed");
        // Headers only: both bodies stream past.
        Ok((Headers { s, m }, Needs::NONE))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let (s, m) = (&self.s, &self.m);
        let stats = req.header_stats();
        if stats.count > s.max_header_count {
            return m.refuse(Refusal::TooManyHeaders);
        }
        if stats.bytes > s.max_header_bytes {
            return m.refuse(Refusal::HeadersTooLarge);
        }
        // One call for the names present, then removals only for those on
        // the list: far cheaper than asking for every listed name.
        let mut seen = Seen::default();
        for name in req.header_names() {
            if let Ok(i) = s.strip_request.binary_search(&name)
                && req.remove_header(&name)
            {
                v2::log!(Debug, "stripped request header {name}");
                m.removed(Phase::Request, &name);
                seen.insert(s.strip_violation[i]);
            }
        }
        // Once per type per request, however many headers tried it.
        for &v in Violation::ALL {
            if seen.contains(v) {
                m.violation(v);
            }
        }
        for (name, value) in &s.add_request {
            if let Err(e) = req.set_header(name, value) {
                v2::log!(Warn, "could not add {name}: {}", e.name());
            }
        }
        Action::Continue
    }

    fn on_response(&mut self, _req: &Request, resp: &Response) -> Action {
        let (s, m) = (&self.s, &self.m);
        for name in resp.header_names() {
            if s.remove_response.binary_search(&name).is_ok() && resp.remove_header(&name) {
                m.removed(Phase::Response, &name);
            }
        }
        for (name, value) in &s.add_response {
            if let Err(e) = resp.set_header(name, value) {
                v2::log!(Warn, "could not add {name}: {}", e.name());
            }
        }
        Action::Continue
    }
}

v2::export_filter!(Headers);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_headers_are_classified_by_what_they_attempt() {
        assert_eq!(classify("x-real-ip"), Violation::SpoofedClientIp);
        assert_eq!(classify("forwarded"), Violation::SpoofedClientIp);
        assert_eq!(classify("x-forwarded-server"), Violation::SpoofedClientIp);
        assert_eq!(classify("cf-connecting-ip"), Violation::SpoofedClientIp);
        assert_eq!(classify("x-forwarded-prefix"), Violation::SpoofedClientIp);
        assert_eq!(classify("x-original-url"), Violation::UrlOverride);
        assert_eq!(classify("x-rewrite-url"), Violation::UrlOverride);
        assert_eq!(classify("x-host"), Violation::HostOverride);
        assert_eq!(
            classify("x-http-method-override"),
            Violation::MethodOverride
        );
        assert_eq!(classify("x-tenant-id"), Violation::SpoofedIdentity);
        assert_eq!(classify("x-remote-user"), Violation::SpoofedIdentity);
        assert_eq!(
            classify("x-middleware-subrequest"),
            Violation::MiddlewareBypass
        );
        assert_eq!(classify("proxy"), Violation::Httpoxy);
        assert_eq!(classify("x-debug"), Violation::Other);
        // A name is on one list only.
        let mut all: Vec<&str> = STRIP_BY_VIOLATION
            .iter()
            .flat_map(|(_, names)| names.iter().copied())
            .collect();
        let listed = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), listed);
    }

    #[test]
    fn refusals_are_violations_too() {
        assert_eq!(
            Refusal::ALL
                .iter()
                .map(|r| r.violation())
                .collect::<Vec<_>>(),
            [Violation::TooManyHeaders, Violation::OversizedHeaders]
        );
        // The labels stay what dashboards already know.
        assert_eq!(
            Refusal::labels(Refusal::ALL),
            ["too many headers", "headers too large"]
        );
    }

    #[test]
    fn a_request_counts_each_violation_type_once() {
        let mut seen = Seen::default();
        for v in [
            Violation::SpoofedClientIp,
            Violation::Httpoxy,
            Violation::SpoofedClientIp,
        ] {
            seen.insert(v);
        }
        let counted: Vec<Violation> = Violation::ALL
            .iter()
            .copied()
            .filter(|&v| seen.contains(v))
            .collect();
        assert_eq!(counted, [Violation::SpoofedClientIp, Violation::Httpoxy]);
        // Every type fits in the set.
        assert!(Violation::ALL.len() <= 32);
    }

    #[test]
    fn every_series_is_declared_at_configure() {
        let s = parse(r#"{"strip_request_extra": ["X-Debug"], "max_header_count": 64}"#).unwrap();
        assert_eq!(
            s.strip_violation[s.strip_request.binary_search(&"x-debug".into()).unwrap()],
            Violation::Other
        );
        let d = declared(&s);
        assert_eq!(d.dropped, 0);
        // The default lists, plus the extra one.
        assert_eq!(d.count("headers_removed"), 31 + 1 + 6);
        let request: Vec<&str> = d
            .series
            .iter()
            .filter(|(c, l)| *c == "headers_removed" && l[0].1 == "request")
            .map(|(_, l)| l[1].1.as_str())
            .collect();
        assert_eq!(request, s.strip_request);
        assert_eq!(
            d.values("headers_removed", "phase"),
            ["request", "response"]
        );
        assert_eq!(
            d.values("requests_refused", "reason"),
            Refusal::labels(Refusal::ALL)
        );
        // Every type, the refusals' included.
        assert_eq!(
            d.values("violations", "type"),
            Violation::labels(Violation::ALL)
        );
        for r in Refusal::ALL {
            assert!(
                d.values("violations", "type")
                    .contains(&r.violation().label())
            );
        }
        assert_eq!(d.series.len(), 38 + 2 + 10);
    }

    #[test]
    fn declared_series_carry_their_counters_label_names_in_order() {
        let s = parse("{}").unwrap();
        for (counter, labels) in &declared(&s).series {
            let (_, names) = COUNTERS.iter().find(|(c, _)| c == counter).unwrap();
            let given: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(given, *names, "{counter}");
        }
    }
}
