//! The auth filter: authenticates a request by an API key (kept in the
//! configuration only as its SHA-256) or a JWT bearer token (HS256, RS256,
//! ES256), checks the scopes the route asks for, and passes who the caller
//! is along the chain (`subject`, `tenant`, `scopes`, `auth.method`).
//!
//! Refusals follow RFC 6750: 401 with a `Bearer` challenge when credentials
//! are missing or invalid, 403 with `insufficient_scope` when they are valid
//! but not enough. Every attempt is counted by method, result and reason.
//!
//! Tokens are verified inside the guest; benches/jwt.rs measures what that
//! costs against native verification.

mod cache;
mod config;
mod jwt;
mod keys;

use cache::Lru;
use config::{MAX_CONTEXT_VALUE, Policy, Settings};
use filter_sdk::v2::{
    self, Action, ContextError, Declared, Filter, Metric, Needs, Reply, Request, host,
};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::sync::Arc;

/// Who a credential belongs to, as later filters will see it.
pub struct Identity {
    subject: Option<String>,
    tenant: Option<String>,
    /// The scopes granted, sorted for lookup.
    scopes: Vec<String>,
    /// The same, space-separated, as the `scopes` context value.
    scope_text: String,
}

impl Identity {
    /// Refuses values the gateway would refuse to carry in the context, so
    /// an oversized claim refuses the credential rather than failing the
    /// request once the credential was accepted.
    fn new(
        subject: Option<String>,
        tenant: Option<String>,
        mut scopes: Vec<String>,
    ) -> Result<Identity, String> {
        scopes.sort();
        scopes.dedup();
        let scope_text = scopes.join(" ");
        for (what, v) in [
            ("subject", subject.as_deref().unwrap_or("")),
            ("tenant", tenant.as_deref().unwrap_or("")),
            ("scopes", &scope_text),
        ] {
            if v.len() > MAX_CONTEXT_VALUE {
                return Err(format!(
                    "{what} is {} bytes; the chain's context carries at most {MAX_CONTEXT_VALUE}",
                    v.len()
                ));
            }
        }
        Ok(Identity {
            subject,
            tenant,
            scopes,
            scope_text,
        })
    }
}

v2::label_enum! {
    /// The `reason` label of the attempts counter, and the
    /// `error_description` of a 401.
    pub enum Reason {
        Ok => "ok",
        Missing => "missing",
        Malformed => "malformed",
        BadSignature => "bad_signature",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        WrongAudience => "wrong_audience",
        WrongIssuer => "wrong_issuer",
        MissingClaim => "missing_claim",
        UnknownKey => "unknown_key",
        AlgNotAllowed => "alg_not_allowed",
        UnknownApiKey => "unknown_api_key",
        InsufficientScope => "insufficient_scope",
    }
}

impl Reason {
    /// Whether an attempt with credentials of `method` can end with this
    /// reason: the attempts declared at zero for each method enabled.
    fn applies_to(self, method: Method) -> bool {
        match self {
            // No credentials is the only thing counted without a method.
            Reason::Missing => matches!(method, Method::None),
            Reason::Ok | Reason::Malformed | Reason::InsufficientScope => {
                !matches!(method, Method::None)
            }
            Reason::UnknownApiKey => matches!(method, Method::ApiKey),
            Reason::BadSignature
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::WrongAudience
            | Reason::WrongIssuer
            | Reason::MissingClaim
            | Reason::UnknownKey
            | Reason::AlgNotAllowed => matches!(method, Method::Jwt),
        }
    }

    /// The results an attempt with this reason is counted with: only `ok`
    /// passes, and `missing` on an anonymous route.
    fn results(self, anonymous_routes: bool) -> &'static [bool] {
        match self {
            Reason::Ok => &[true],
            Reason::Missing if anonymous_routes => &[false, true],
            _ => &[false],
        }
    }
}

v2::label_enum! {
    /// The `method` label of the attempts counter, and the `auth.method`
    /// context value.
    enum Method {
        None => "none",
        Jwt => "jwt",
        ApiKey => "api_key",
    }
}

/// The `result` label of the attempts counter.
fn result_label(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// What a request presented.
enum Credential {
    None,
    Bearer(String),
    ApiKey(Vec<u8>),
    Malformed(Method, &'static str),
}

thread_local! {
    // An instance serves one request at a time and is reused, so tokens it
    // verified stay here for the next request it serves.
    static TOKENS: RefCell<Lru<jwt::Verified>> = RefCell::new(Lru::new(0));
}

/// The filter's counter and its label names, in the order `declared` gives
/// the values: the name and labels the plugin had under filter API 0.1,
/// which dashboards and alerts know.
const ATTEMPTS: (&str, &[&str]) = ("attempts", &["method", "result", "reason"]);

/// The counter, declared by every instance in `configure`.
struct Metrics {
    attempts: Metric,
}

impl Metrics {
    fn declare() -> Result<Metrics, String> {
        Ok(Metrics {
            attempts: Metric::counter(ATTEMPTS.0, ATTEMPTS.1)?,
        })
    }

    /// The metric of a counter `declared` names.
    fn by_name(&self, name: &str) -> Option<Metric> {
        (name == ATTEMPTS.0).then_some(self.attempts)
    }

    fn count(&self, method: Method, allowed: bool, reason: Reason) {
        self.attempts
            .inc(&[method.label(), result_label(allowed), reason.label()]);
    }
}

/// The credential a request carries. A bearer token is looked at only when
/// JWTs are configured, an API key only when keys are: an `Authorization`
/// header meant for the upstream is not this filter's business otherwise.
/// A bearer token wins over an API key.
fn credential(req: &Request, s: &Settings) -> Credential {
    if s.jwt.is_some() {
        let values = req.header_all("authorization");
        if values.len() > 1 {
            return Credential::Malformed(Method::Jwt, "several Authorization headers");
        }
        if let Some(v) = values.first() {
            // RFC 6750 §2.1: the scheme is case-insensitive, then one or
            // more spaces, then the token. Another scheme is not ours.
            let bearer = v.len() >= 6
                && v[..6].eq_ignore_ascii_case(b"bearer")
                && (v.len() == 6 || v[6] == b' ');
            if bearer {
                return match std::str::from_utf8(&v[6..]).map(str::trim) {
                    Ok(t) if !t.is_empty() => Credential::Bearer(t.to_string()),
                    _ => Credential::Malformed(Method::Jwt, "empty or non-UTF-8 bearer token"),
                };
            }
        }
    }
    if !s.api_keys.is_empty() {
        let mut values = req.header_all(&s.api_key_header);
        if values.len() > 1 {
            return Credential::Malformed(Method::ApiKey, "several API key headers");
        }
        if let Some(v) = values.pop() {
            return if v.is_empty() {
                Credential::Malformed(Method::ApiKey, "empty API key")
            } else {
                Credential::ApiKey(v)
            };
        }
        if let (Some(name), Some(query)) = (&s.api_key_query, req.query()) {
            return match query_param(&query, name) {
                Ok(Some(v)) if !v.is_empty() => Credential::ApiKey(v),
                Ok(Some(_)) => Credential::Malformed(Method::ApiKey, "empty API key"),
                Ok(None) => Credential::None,
                Err(why) => Credential::Malformed(Method::ApiKey, why),
            };
        }
    }
    Credential::None
}

/// The decoded value of one query parameter (form encoding: `+` is a
/// space). Given twice it is refused: which one counts would be a guess.
fn query_param(query: &str, name: &str) -> Result<Option<Vec<u8>>, &'static str> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k).as_deref() != Some(name.as_bytes()) {
            continue;
        }
        if found.is_some() {
            return Err("API key query parameter given twice");
        }
        found = Some(percent_decode(v).ok_or("bad percent-encoding in the API key")?);
    }
    Ok(found)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                // Digit by digit: from_str_radix would also take "%+f".
                let digit = |j: usize| (*b.get(j)? as char).to_digit(16);
                out.push((digit(i + 1)? << 4 | digit(i + 2)?) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn authenticate_jwt(token: &str, s: &Settings) -> Result<Arc<Identity>, jwt::Refusal> {
    let j = s
        .jwt
        .as_ref()
        .expect("bearer tokens are read only with jwt set");
    let now = host::now_ms() as f64 / 1000.0;
    let digest = sha256(token.as_bytes());
    TOKENS.with_borrow_mut(|cache| {
        if let Some(v) = cache.get(&digest) {
            return match jwt::check_time(v.exp, v.nbf, now, j.leeway) {
                Ok(()) => Ok(v.identity.clone()),
                Err(refusal) => {
                    // An expired token never becomes valid again.
                    if refusal.0 == Reason::Expired {
                        cache.remove(&digest);
                    }
                    Err(refusal)
                }
            };
        }
        let v = jwt::verify(token, j, now)?;
        let identity = v.identity.clone();
        cache.insert(digest, v);
        Ok(identity)
    })
}

fn policy<'a>(req: &Request, s: &'a Settings) -> &'a Policy {
    // Asking for the route costs a host call; skip it when no route differs.
    if s.routes.is_empty() {
        return &s.default_policy;
    }
    s.routes.get(&req.route()).unwrap_or(&s.default_policy)
}

/// Every attempt the configuration makes possible, at zero: each method it
/// enables (`none`, for requests without credentials, always) with every
/// reason that method can end with and the result that reason is counted
/// with. At most 17 series, well under `DECLARE_MAX`.
fn declared(s: &Settings) -> Declared {
    let anonymous_routes = s.routes.values().any(|p| p.anonymous);
    let mut d = Declared::new();
    for &method in Method::ALL {
        let enabled = match method {
            Method::None => true,
            Method::Jwt => s.jwt.is_some(),
            Method::ApiKey => !s.api_keys.is_empty(),
        };
        if !enabled {
            continue;
        }
        for &reason in Reason::ALL.iter().filter(|r| r.applies_to(method)) {
            let results: Vec<&str> = reason
                .results(anonymous_routes)
                .iter()
                .map(|&allowed| result_label(allowed))
                .collect();
            d.product(
                "attempts",
                &[
                    ("method", &[method.label()]),
                    ("result", &results),
                    ("reason", &[reason.label()]),
                ],
            );
        }
    }
    d
}

fn refuse(auth: &Auth, policy: &Policy, method: Method, reason: Reason, detail: &str) -> Action {
    auth.m.count(method, false, reason);
    v2::log!(
        Debug,
        "refused {} credentials: {} ({detail})",
        method.label(),
        reason.label()
    );
    let realm = &auth.s.realm;
    let (status, challenge, error) = match reason {
        // RFC 6750 §3.1: no error code when the request had no credentials.
        Reason::Missing => (401, format!("Bearer realm=\"{realm}\""), "unauthorized"),
        Reason::InsufficientScope => (
            403,
            format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                policy.scope_text
            ),
            "insufficient_scope",
        ),
        _ => (
            401,
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                reason.label()
            ),
            "invalid_token",
        ),
    };
    Action::Respond(Reply {
        status,
        headers: vec![
            ("www-authenticate".into(), challenge.into_bytes()),
            ("content-type".into(), b"application/json".to_vec()),
            ("cache-control".into(), b"no-store".to_vec()),
        ],
        body: format!(
            "{{\"error\":\"{error}\",\"reason\":\"{}\"}}\n",
            reason.label()
        )
        .into_bytes(),
    })
}

/// Puts who the caller is in the context, for the filters after this one.
/// The error names the entry the gateway refused.
fn pass_on(
    req: &Request,
    method: Method,
    identity: &Identity,
) -> Result<(), (&'static str, ContextError)> {
    let scopes = (!identity.scope_text.is_empty()).then_some(identity.scope_text.as_str());
    for (key, value) in [
        ("auth.method", Some(method.label())),
        ("subject", identity.subject.as_deref()),
        ("tenant", identity.tenant.as_deref()),
        ("scopes", scopes),
    ] {
        if let Some(value) = value {
            req.set_context(key, value).map_err(|e| (key, e))?;
        }
    }
    Ok(())
}

struct Auth {
    s: Settings,
    m: Metrics,
}

impl Filter for Auth {
    // Decides on the way in only: no call on the way out.
    const RESPONSE_PHASE: bool = false;

    fn configure(config: &str) -> Result<(Self, Needs), String> {
        let s = config::parse(config)?;
        v2::check_route_ids("auth", s.routes.keys(), &host::route_ids())?;
        TOKENS.set(Lru::new(s.cache_size));
        let m = Metrics::declare()?;
        declared(&s).zero(|name| m.by_name(name), "too many routes");
        // Headers only: both bodies stream past.
        Ok((Auth { s, m }, Needs::NONE))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let s = &self.s;
        let policy = policy(req, s);
        let (method, identity) = match credential(req, s) {
            Credential::None if policy.anonymous => {
                self.m.count(Method::None, true, Reason::Missing);
                return Action::Continue;
            }
            Credential::None => {
                return refuse(
                    self,
                    policy,
                    Method::None,
                    Reason::Missing,
                    "no credentials",
                );
            }
            Credential::Malformed(method, detail) => {
                return refuse(self, policy, method, Reason::Malformed, detail);
            }
            Credential::Bearer(token) => match authenticate_jwt(&token, s) {
                Ok(identity) => (Method::Jwt, identity),
                Err((reason, detail)) => {
                    return refuse(self, policy, Method::Jwt, reason, detail);
                }
            },
            Credential::ApiKey(key) => match s.api_keys.get(&sha256(&key)) {
                Some(identity) => (Method::ApiKey, identity.clone()),
                None => {
                    return refuse(
                        self,
                        policy,
                        Method::ApiKey,
                        Reason::UnknownApiKey,
                        "no configured key has this hash",
                    );
                }
            },
        };
        let granted = |need: &String| identity.scopes.binary_search(need).is_ok();
        if !policy.scopes.iter().all(granted) {
            return refuse(
                self,
                policy,
                method,
                Reason::InsufficientScope,
                "a required scope is not granted",
            );
        }

        // The filters after this one (tenant, rate limits) decide by these
        // entries; going on without one would pass the caller off as
        // someone without a tenant or scopes. The values fit (`Identity`
        // checked them), so a refusal means the request already carries the
        // most entries the gateway allows: fail it, whatever the filter's
        // failure policy says, as the tenant filter does when it cannot set
        // its trusted header.
        if let Err((key, e)) = pass_on(req, method, &identity) {
            v2::log!(
                Error,
                "could not set the context entry {key:?}: {}",
                e.name()
            );
            return Action::Respond(Reply {
                status: 500,
                headers: vec![
                    ("content-type".into(), b"application/json".to_vec()),
                    ("cache-control".into(), b"no-store".to_vec()),
                ],
                body: b"{\"error\":\"internal\",\"reason\":\"auth_context\"}\n".to_vec(),
            });
        }
        if s.strip_credentials {
            // Only what this filter reads as a credential: an Authorization
            // header is someone else's when JWTs are not configured.
            if s.jwt.is_some() {
                req.remove_header("authorization");
            }
            if !s.api_keys.is_empty() {
                req.remove_header(&s.api_key_header);
            }
        }
        self.m.count(method, true, Reason::Ok);
        Action::Continue
    }
}

v2::export_filter!(Auth);

#[cfg(test)]
mod tests {
    use super::*;

    /// The default configuration's (config/gateway.toml), with one key.
    const API_KEYS: &str = r#"{"required_scopes": ["orders"], "api_keys": [{
        "sha256": "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873",
        "subject": "demo-acme", "tenant": "acme", "scopes": ["orders"]}]}"#;

    fn attempts(d: &Declared) -> Vec<String> {
        d.series
            .iter()
            .map(|(c, l)| {
                assert_eq!(*c, ATTEMPTS.0);
                let names: Vec<&str> = l.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(names, ATTEMPTS.1);
                format!("{} {} {}", l[0].1, l[1].1, l[2].1)
            })
            .collect()
    }

    #[test]
    fn every_reason_belongs_to_a_method_and_has_a_result() {
        for &r in Reason::ALL {
            assert!(
                Method::ALL.iter().any(|&m| r.applies_to(m)),
                "{r:?} is never counted"
            );
            assert!(!r.results(false).is_empty());
        }
        // Only `missing` is counted without credentials, and it is never
        // counted with them.
        let none: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| r.applies_to(Method::None))
            .collect();
        assert_eq!(none, [Reason::Missing]);
        // Every refusal a token check can give is declared for `jwt`.
        for r in [
            Reason::Malformed,
            Reason::BadSignature,
            Reason::Expired,
            Reason::NotYetValid,
            Reason::WrongAudience,
            Reason::WrongIssuer,
            Reason::MissingClaim,
            Reason::UnknownKey,
            Reason::AlgNotAllowed,
        ] {
            assert!(r.applies_to(Method::Jwt), "{r:?}");
        }
    }

    #[test]
    fn api_keys_alone_declare_the_key_and_no_credential_attempts() {
        let d = declared(&config::parse(API_KEYS).unwrap());
        assert_eq!(
            attempts(&d),
            [
                "none denied missing",
                "api_key allowed ok",
                "api_key denied malformed",
                "api_key denied unknown_api_key",
                "api_key denied insufficient_scope",
            ]
        );
    }

    #[test]
    fn tokens_and_anonymous_routes_add_their_attempts() {
        let config = r#"{"api_keys": [{
            "sha256": "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873",
            "subject": "demo"}],
            "jwt": {"keys": [{"alg": "HS256", "secret": "0123456789abcdef0123456789abcdef"}]},
            "routes": {"public": {"anonymous": true}}}"#;
        let d = declared(&config::parse(config).unwrap());
        let a = attempts(&d);
        assert_eq!(a[..2], ["none denied missing", "none allowed missing"]);
        let jwt: Vec<&String> = a.iter().filter(|s| s.starts_with("jwt ")).collect();
        // Every reason but `missing` and `unknown_api_key`.
        assert_eq!(jwt.len(), Reason::ALL.len() - 2);
        assert_eq!(jwt[0], "jwt allowed ok");
        assert_eq!(a.len(), 2 + jwt.len() + 4);
        assert!(a.len() <= v2::DECLARE_MAX);
        assert_eq!(d.dropped, 0);
    }
}
