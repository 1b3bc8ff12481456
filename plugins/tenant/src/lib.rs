//! The tenant filter: finds the request's tenant (from the context an auth
//! filter set, a trusted header, or the subdomain), refuses a request whose
//! tenant does not own the route, removes every client-sent copy of the
//! tenant header and sets the trusted one for the upstream.

mod config;

use config::{Settings, Source, Unlisted, valid_tenant};
use filter_sdk::v2::{self, Action, Declared, Filter, Metric, Needs, Reply, Request, host};

/// A tenant and where it came from.
struct Found {
    tenant: String,
    source: Source,
}

/// Why a request is refused.
enum Refusal {
    /// A source yielded something that is not a tenant id.
    Invalid { source: Source },
    /// Two sources (or two copies of the header) name different tenants.
    Conflict { first: Found, other: Found },
    /// No source yielded a tenant, and one is required.
    NoTenant,
    /// The route lists its owners and the tenant is not one of them.
    NotOwner { tenant: String },
    /// The path names another tenant (or none) at `{tenant}`.
    PathMismatch {
        tenant: String,
        in_path: Option<String>,
    },
    /// The route is not in `routes` and `unlisted_routes = "deny"`.
    Unlisted { tenant: Option<String> },
}

v2::label_enum! {
    /// The `reason` label of the refusal counters: a `Refusal` without its
    /// details.
    enum Reason {
        Invalid => "invalid",
        Conflict => "conflict",
        NoTenant => "no_tenant",
        NotOwner => "not_owner",
        PathMismatch => "path_mismatch",
        Unlisted => "unlisted_route",
    }
}

impl Reason {
    /// Whether the refusal stopped an attempt at another tenant's
    /// resources, counted in `cross_tenant` too.
    fn cross_tenant(self) -> bool {
        match self {
            Reason::Conflict | Reason::NotOwner | Reason::PathMismatch => true,
            Reason::Invalid | Reason::NoTenant | Reason::Unlisted => false,
        }
    }
}

v2::label_enum! {
    /// The `result` label of the requests counter.
    enum Outcome {
        Allowed => "allowed",
        Refused => "refused",
    }
}

/// The `tenant` label of a request without a (valid) tenant.
const NO_TENANT: &str = "-";

impl Refusal {
    fn reason(&self) -> Reason {
        match self {
            Refusal::Invalid { .. } => Reason::Invalid,
            Refusal::Conflict { .. } => Reason::Conflict,
            Refusal::NoTenant => Reason::NoTenant,
            Refusal::NotOwner { .. } => Reason::NotOwner,
            Refusal::PathMismatch { .. } => Reason::PathMismatch,
            Refusal::Unlisted { .. } => Reason::Unlisted,
        }
    }

    fn cross_tenant(&self) -> bool {
        self.reason().cross_tenant()
    }

    /// The tenant the request counts against: the one that would have won,
    /// never an unvalidated value (it becomes a metric label).
    fn tenant(&self) -> &str {
        match self {
            Refusal::Conflict { first, .. } => &first.tenant,
            Refusal::NotOwner { tenant } | Refusal::PathMismatch { tenant, .. } => tenant,
            Refusal::Unlisted { tenant: Some(t) } => t,
            Refusal::Invalid { .. } | Refusal::NoTenant | Refusal::Unlisted { tenant: None } => {
                NO_TENANT
            }
        }
    }

    /// The answer. Every cross-tenant refusal reads the same, so a prober
    /// does not learn which check stopped it.
    fn reply(&self) -> Reply {
        let (status, body): (u16, &[u8]) = match self {
            Refusal::Invalid { .. } => {
                (400, br#"{"error":"bad_request","reason":"invalid_tenant"}"#)
            }
            Refusal::NoTenant => (403, br#"{"error":"forbidden","reason":"no_tenant"}"#),
            Refusal::Unlisted { .. } => (
                403,
                br#"{"error":"forbidden","reason":"route_not_allowed"}"#,
            ),
            _ => (403, br#"{"error":"forbidden","reason":"cross_tenant"}"#),
        };
        Reply {
            status,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("cache-control".into(), b"no-store".to_vec()),
            ],
            body: body.to_vec(),
        }
    }

    /// One log line; only validated tenant ids and the route id go in it.
    fn describe(&self, route: &str) -> String {
        match self {
            Refusal::Invalid { source } => {
                format!(
                    "refused on route {route:?}: the {} source gave an invalid tenant id",
                    source.name()
                )
            }
            Refusal::Conflict { first, other } => format!(
                "cross-tenant request refused on route {route:?}: {} says {:?}, {} says {:?}",
                first.source.name(),
                first.tenant,
                other.source.name(),
                other.tenant
            ),
            Refusal::NoTenant => format!("refused on route {route:?}: no tenant"),
            Refusal::NotOwner { tenant } => {
                format!(
                    "cross-tenant request refused on route {route:?}: tenant {tenant:?} does not own it"
                )
            }
            Refusal::PathMismatch { tenant, in_path } => match in_path {
                Some(p) => format!(
                    "cross-tenant request refused on route {route:?}: tenant {tenant:?}, path names tenant {p:?}"
                ),
                None => format!(
                    "cross-tenant request refused on route {route:?}: tenant {tenant:?}, path has no tenant id where the template wants one"
                ),
            },
            Refusal::Unlisted { .. } => {
                format!("refused: route {route:?} is not listed in `routes`")
            }
        }
    }
}

fn validated(v: String, source: Source) -> Result<String, Refusal> {
    if valid_tenant(&v) {
        Ok(v)
    } else {
        Err(Refusal::Invalid { source })
    }
}

/// The first label under `suffix` (`.api.example.com`) of an authority,
/// port and a final dot removed, lower case. A deeper name such as
/// `a.acme.api.example.com` yields `a.acme`, which is not a tenant id and is
/// refused rather than guessed at.
fn subdomain_of(authority: &str, suffix: &str) -> Option<String> {
    if authority.starts_with('[') {
        return None; // an IPv6 literal has no subdomain
    }
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label = host.strip_suffix(suffix)?;
    (!label.is_empty()).then(|| label.to_string())
}

/// What one source says.
fn read(s: &Settings, req: &Request, source: Source) -> Result<Option<String>, Refusal> {
    match source {
        Source::Context => req
            .get_context(&s.context_key)
            .map(|v| validated(v, source))
            .transpose(),
        Source::Header => {
            let mut tenant: Option<String> = None;
            for raw in req.header_all(&s.header) {
                let v = validated(String::from_utf8(raw).unwrap_or_default(), source)?;
                match &tenant {
                    None => tenant = Some(v),
                    Some(t) if *t == v => {}
                    // Two different copies: someone added one.
                    Some(t) => {
                        return Err(Refusal::Conflict {
                            first: Found {
                                tenant: t.clone(),
                                source,
                            },
                            other: Found { tenant: v, source },
                        });
                    }
                }
            }
            Ok(tenant)
        }
        Source::Subdomain => {
            let suffix = s.subdomain_suffix.as_deref().expect("checked in configure");
            req.authority()
                .and_then(|a| subdomain_of(&a, suffix))
                .map(|v| validated(v, source))
                .transpose()
        }
    }
}

/// Asks every source, so that a later one contradicting the winner is caught
/// rather than ignored.
fn resolve(s: &Settings, req: &Request) -> Result<Option<Found>, Refusal> {
    let mut winner: Option<Found> = None;
    for &source in &s.sources {
        let Some(tenant) = read(s, req, source)? else {
            continue;
        };
        match &winner {
            None => winner = Some(Found { tenant, source }),
            Some(w) if w.tenant == tenant => {}
            Some(w) => {
                return Err(Refusal::Conflict {
                    first: Found {
                        tenant: w.tenant.clone(),
                        source: w.source,
                    },
                    other: Found { tenant, source },
                });
            }
        }
    }
    Ok(winner)
}

fn authorize(s: &Settings, route: &str, path: &str, found: Option<&Found>) -> Result<(), Refusal> {
    let owner = s.routes.get(route);
    let unlisted = || match s.unlisted {
        Unlisted::Allow => Ok(()),
        Unlisted::Deny => Err(Refusal::Unlisted {
            tenant: found.map(|f| f.tenant.clone()),
        }),
    };
    let Some(f) = found else {
        // A listed route has owners to check, which no tenant can pass.
        if s.require_tenant || owner.is_some() {
            return Err(Refusal::NoTenant);
        }
        return unlisted();
    };
    let Some(owner) = owner else {
        return unlisted();
    };
    if let Some(ts) = &owner.tenants
        && ts.binary_search(&f.tenant).is_err()
    {
        return Err(Refusal::NotOwner {
            tenant: f.tenant.clone(),
        });
    }
    if let Some(t) = &owner.template {
        // Exact comparison is enough: the gateway has resolved dot segments
        // and decoded unreserved escapes, and a segment that still holds an
        // escape contains `%`, which no tenant id does.
        let in_path = t.tenant_in(path);
        if in_path != Some(f.tenant.as_str()) {
            return Err(Refusal::PathMismatch {
                tenant: f.tenant.clone(),
                in_path: in_path.filter(|p| valid_tenant(p)).map(str::to_string),
            });
        }
    }
    Ok(())
}

/// The filter's counters with their label names, in the order `declared`
/// gives the values. The names and labels are those the plugin had under
/// filter API 0.1, which dashboards and alerts know.
const COUNTERS: [(&str, &[&str]); 3] = [
    ("requests", &["tenant", "route", "result"]),
    ("refused", &["route", "reason"]),
    ("cross_tenant", &["route", "reason"]),
];

/// The counters, declared by every instance in `configure`.
struct Metrics {
    requests: Metric,
    refused: Metric,
    cross_tenant: Metric,
}

impl Metrics {
    fn declare() -> Result<Metrics, String> {
        let [requests, refused, cross_tenant] = COUNTERS;
        Ok(Metrics {
            requests: Metric::counter(requests.0, requests.1)?,
            refused: Metric::counter(refused.0, refused.1)?,
            cross_tenant: Metric::counter(cross_tenant.0, cross_tenant.1)?,
        })
    }

    /// The metric of a counter `declared` names.
    fn by_name(&self, name: &str) -> Option<Metric> {
        let metrics = [self.requests, self.refused, self.cross_tenant];
        COUNTERS
            .iter()
            .zip(metrics)
            .find_map(|((n, _), m)| (*n == name).then_some(m))
    }

    fn count_request(&self, tenant: &str, route: &str, result: Outcome) {
        self.requests.inc(&[tenant, route, result.label()]);
    }

    fn refuse(&self, route: &str, r: Refusal) -> Action {
        let reason = r.reason().label();
        if r.cross_tenant() {
            self.cross_tenant.inc(&[route, reason]);
            v2::log!(Info, "{}", r.describe(route));
        } else {
            v2::log!(Debug, "{}", r.describe(route));
        }
        self.refused.inc(&[route, reason]);
        self.count_request(r.tenant(), route, Outcome::Refused);
        Action::Respond(r.reply())
    }
}

/// The answer when the tenant found cannot be passed on (`what`: the
/// trusted header or the context entry). Forwarding without it would hand
/// the upstream, or the filters after this one, a request they cannot
/// attribute to its tenant; stop instead.
fn internal_error(what: &str) -> Action {
    Action::Respond(Reply {
        status: 500,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: format!(r#"{{"error":"internal","reason":"{what}"}}"#).into_bytes(),
    })
}

/// Every series of the filter's counters that the configuration names, at
/// zero, for the routes in `routes` (or, when that is empty, every route of
/// the gateway, as the filter cannot learn which ones it runs on):
///
/// - `refused{route,reason}` with every reason and `cross_tenant` with the
///   cross-tenant ones;
/// - `requests{tenant,route,result}` with both results, for `-` (no tenant)
///   and the tenants that own the route, or every tenant the configuration
///   names when the route lists no owners (the tenants from tokens or
///   headers are not known before they come).
///
/// Routes come outermost and the tenants in sorted order, so past
/// `DECLARE_MAX` (16 routes for `refused`; for `requests`, routes times
/// tenants) the last routes and tenants are left to appear when counted.
fn declared(s: &Settings, route_ids: &[String]) -> Declared {
    let mut routes: Vec<&str> = s.routes.keys().map(String::as_str).collect();
    routes.sort();
    if routes.is_empty() {
        routes = route_ids.iter().map(String::as_str).collect();
    }
    let mut everyone: Vec<&str> = s
        .routes
        .values()
        .flat_map(|o| o.tenants.iter().flatten())
        .map(String::as_str)
        .collect();
    everyone.sort();
    everyone.dedup();
    let reasons = Reason::labels(Reason::ALL);
    let cross: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| r.cross_tenant())
        .map(|r| r.label())
        .collect();
    let results = Outcome::labels(Outcome::ALL);
    let mut d = Declared::new();
    for &route in &routes {
        let owners = s.routes.get(route).and_then(|o| o.tenants.as_ref());
        let tenants: Vec<&str> = std::iter::once(NO_TENANT)
            .chain(match owners {
                Some(ts) => ts.iter().map(String::as_str).collect(),
                None => everyone.clone(),
            })
            .collect();
        d.product("refused", &[("route", &[route]), ("reason", &reasons)]);
        d.product("cross_tenant", &[("route", &[route]), ("reason", &cross)]);
        d.product(
            "requests",
            &[
                ("tenant", &tenants),
                ("route", &[route]),
                ("result", &results),
            ],
        );
    }
    d
}

struct Tenant {
    s: Settings,
    m: Metrics,
}

impl Filter for Tenant {
    // Decides on the way in only: no call on the way out.
    const RESPONSE_PHASE: bool = false;

    fn configure(config: &str) -> Result<(Self, Needs), String> {
        let s = config::parse(config)?;
        let route_ids = host::route_ids();
        v2::check_route_ids("tenant", s.routes.keys(), &route_ids)?;
        let m = Metrics::declare()?;
        declared(&s, &route_ids).zero(|name| m.by_name(name), "too many routes and tenants");
        // Headers and context only: both bodies stream past.
        Ok((Tenant { s, m }, Needs::NONE))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let (s, m) = (&self.s, &self.m);
        let route = req.route();
        // The header is read (when it is a source) before it is removed.
        let found = match resolve(s, req) {
            Ok(f) => f,
            Err(r) => return m.refuse(&route, r),
        };
        // Whatever the client sent under either name must not reach the
        // upstream, which trusts `upstream_header` to come from us.
        req.remove_header(&s.header);
        req.remove_header(&s.upstream_header);
        if let Err(r) = authorize(s, &route, &req.path(), found.as_ref()) {
            return m.refuse(&route, r);
        }
        let Some(f) = found else {
            m.count_request(NO_TENANT, &route, Outcome::Allowed);
            return Action::Continue;
        };
        if let Err(e) = req.set_header(&s.upstream_header, f.tenant.as_bytes()) {
            v2::log!(Error, "could not set {}: {}", s.upstream_header, e.name());
            return internal_error("tenant_header");
        }
        // Later filters (a rate limit per tenant, say) count and decide by
        // this entry: going on without it would let them miss the tenant.
        if f.source != Source::Context
            && let Err(e) = req.set_context(&s.context_key, &f.tenant)
        {
            v2::log!(
                Error,
                "could not set the context entry {:?}: {}",
                s.context_key,
                e.name()
            );
            return internal_error("tenant_context");
        }
        m.count_request(&f.tenant, &route, Outcome::Allowed);
        Action::Continue
    }
}

v2::export_filter!(Tenant);

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A refusal of each kind, as the filter builds them.
    fn every_refusal() -> Vec<Refusal> {
        let found = |t: &str| Found {
            tenant: t.into(),
            source: Source::Context,
        };
        vec![
            Refusal::Invalid {
                source: Source::Header,
            },
            Refusal::Conflict {
                first: found("a"),
                other: found("b"),
            },
            Refusal::NoTenant,
            Refusal::NotOwner { tenant: "a".into() },
            Refusal::PathMismatch {
                tenant: "a".into(),
                in_path: None,
            },
            Refusal::Unlisted { tenant: None },
        ]
    }

    #[test]
    fn every_refusal_has_a_declared_reason() {
        let reasons: Vec<Reason> = every_refusal().iter().map(Refusal::reason).collect();
        assert_eq!(reasons, Reason::ALL);
        let cross: Vec<&str> = every_refusal()
            .iter()
            .filter(|r| r.cross_tenant())
            .map(|r| r.reason().label())
            .collect();
        assert_eq!(cross, ["conflict", "not_owner", "path_mismatch"]);
        // A refusal's tenant label is a validated tenant or `-`.
        for r in every_refusal() {
            assert!(r.tenant() == NO_TENANT || valid_tenant(r.tenant()));
        }
    }

    #[test]
    fn the_default_configuration_declares_its_route() {
        let s =
            config::parse(r#"{"routes": {"tenants": {"path_template": "/tenants/{tenant}/"}}}"#)
                .unwrap();
        let d = declared(&s, &ids(&["echo", "tenants"]));
        assert_eq!(d.values("refused", "route"), ["tenants"]);
        assert_eq!(d.values("refused", "reason"), Reason::labels(Reason::ALL));
        assert_eq!(d.count("refused"), 6);
        assert_eq!(d.count("cross_tenant"), 3);
        // No tenant is named: only requests without one.
        assert_eq!(d.values("requests", "tenant"), ["-"]);
        assert_eq!(d.values("requests", "result"), ["allowed", "refused"]);
        assert_eq!(d.count("requests"), 2);
        assert_eq!(d.series.len(), 11);
    }

    #[test]
    fn owners_are_declared_on_their_routes_and_everyone_elsewhere() {
        let s = config::parse(
            r#"{"routes": {
                "orders": {"tenants": ["globex", "acme"]},
                "billing": {"tenants": ["acme"], "path_template": "/t/{tenant}/"},
                "shared": {"path_template": "/s/{tenant}/"}
            }}"#,
        )
        .unwrap();
        let d = declared(&s, &ids(&["orders", "billing", "shared", "echo"]));
        let allowed: Vec<(&str, &str)> = d
            .series
            .iter()
            .filter(|(c, l)| *c == "requests" && l[2].1 == "allowed")
            .map(|(_, l)| (l[1].1.as_str(), l[0].1.as_str()))
            .collect();
        assert_eq!(
            allowed,
            [
                ("billing", "-"),
                ("billing", "acme"),
                ("orders", "-"),
                ("orders", "acme"),
                ("orders", "globex"),
                ("shared", "-"),
                ("shared", "acme"),
                ("shared", "globex"),
            ]
        );
        assert_eq!(
            d.values("cross_tenant", "route"),
            ["billing", "orders", "shared"]
        );
    }

    #[test]
    fn declared_series_carry_their_counters_label_names_in_order() {
        let s = config::parse(r#"{"routes": {"orders": {"tenants": ["acme"]}}}"#).unwrap();
        for (counter, labels) in &declared(&s, &ids(&["orders"])).series {
            let (_, names) = COUNTERS.iter().find(|(c, _)| c == counter).unwrap();
            let given: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(given, *names, "{counter}");
        }
    }

    #[test]
    fn without_routes_every_gateway_route_is_declared() {
        let s = config::parse("{}").unwrap();
        let d = declared(&s, &ids(&["a", "b"]));
        assert_eq!(d.values("refused", "route"), ["a", "b"]);
        assert_eq!(d.count("refused"), 12);
        assert_eq!(d.count("requests"), 4);
    }
}
