//! `[[route]]` and `[route.retry]`: which requests go where, through which
//! filters, with which deadlines and retries.

use super::types::Outcome;
use super::{ConfigError, HostPattern, Method, Millis, Ratio, RetryOn, Source, refuse_labelled};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub id: String,
    /// Exact host, or `*.example.com` for any subdomain; any host if absent.
    pub host: Option<HostPattern>,
    /// Matched on whole path segments of the normalised path.
    #[serde(default = "defaults::path_prefix")]
    pub path_prefix: String,
    /// Allowed methods; any if absent.
    pub methods: Option<Vec<Method>>,
    pub upstream: String,
    /// Filter names, run in this order on the request and in reverse on the
    /// response.
    #[serde(default)]
    pub filters: Vec<String>,
    /// The whole exchange with the upstream, every try and back-off included.
    pub timeout: Option<Millis>,
    /// One try; the overall `timeout` when absent.
    pub try_timeout: Option<Millis>,
    /// Retries; none when absent.
    pub retry: Option<RetryConfig>,
    /// Protocols an HTTP/1.1 request may switch to (`Upgrade`), after the
    /// route's filters let its handshake through; `[]` refuses upgrades.
    #[serde(default = "defaults::upgrades")]
    pub upgrades: Vec<String>,
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
    pub on: Vec<RetryOn>,
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
    pub budget_ratio: Ratio,
    /// ...plus this many per second.
    #[serde(default = "defaults::budget_floor")]
    pub budget_floor_per_second: f64,
    #[serde(default = "defaults::budget_window")]
    pub budget_window: Millis,
}

/// The shortest retry-budget window; the budget never counts over less.
pub const MIN_BUDGET_WINDOW: Duration = Duration::from_millis(10);

/// The rules within the routes: ids, prefixes, methods, timeouts and retry
/// settings. What routes refer to is checked in `validate`.
pub(super) fn validate(routes: &[RouteConfig], src: &Source<'_>) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let index = i.to_string();
        let at = |key: &'static str| ["route", index.as_str(), key];
        let id = r.id.as_str();
        let id_at = src.find(&at("id")).at;
        // Ids label metrics and name routes to filters and in the logs.
        if id.is_empty() {
            return Err(src.error_at(
                id_at,
                "a route's id is empty; give each route a name, like \"api\"",
            ));
        }
        src.unique_id(&mut seen, "route", id, id_at)?;
        src.require(r.path_prefix.starts_with('/'), &at("path_prefix"), || {
            format!(
                "route `{id}` has path_prefix `{}`; it must start with `/`",
                r.path_prefix
            )
        })?;
        if let Some(methods) = &r.methods {
            src.require(!methods.is_empty(), &at("methods"), || {
                format!("route `{id}` lists no methods, so it would match no request; remove `methods` to allow any")
            })?;
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
        if let Some(retry) = &r.retry {
            retry.validate(src, &index, id)?;
        }
        for (n, protocol) in r.upgrades.iter().enumerate() {
            let at = ["route", index.as_str(), "upgrades", &n.to_string()];
            let token = !protocol.is_empty()
                && protocol
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
            src.require(token, &at, || {
                format!("route `{id}` lists upgrade `{protocol}`, which is not a protocol name like \"websocket\"")
            })?;
            src.require(!protocol.eq_ignore_ascii_case("h2c"), &at, || {
                format!("route `{id}` lists upgrade `h2c`, which the gateway never forwards (it serves the request over HTTP/1.1); remove it")
            })?;
        }
    }
    Ok(())
}

impl RetryConfig {
    fn validate(&self, src: &Source<'_>, index: &str, id: &str) -> Result<(), ConfigError> {
        let table = ["route", index, "retry"];
        let label = format!("route `{id}`'s retry");
        refuse_labelled(
            src,
            &table,
            &label,
            &[
                (
                    "attempts",
                    self.attempts == 0 || self.attempts > 10,
                    "is out of range",
                    "use 1 to 10 (tries in all, the first included)",
                ),
                (
                    "backoff_base",
                    self.backoff_base.0.is_zero(),
                    "would send retries at once, with no back-off",
                    "use a duration like \"25ms\"",
                ),
                (
                    "budget_floor_per_second",
                    !(self.budget_floor_per_second >= 0.0
                        && self.budget_floor_per_second.is_finite()),
                    "is not a rate",
                    "use 0 or more, like 1.0",
                ),
                (
                    "budget_window",
                    self.budget_window.0 < MIN_BUDGET_WINDOW,
                    "is under 10ms, the shortest window the budget counts over",
                    "use a duration like \"10s\"",
                ),
            ],
        )?;
        let zero_budget = self.budget_ratio.get() == 0.0 && self.budget_floor_per_second == 0.0;
        src.require(!zero_budget, &["route", index, "retry", "budget_ratio"], || {
            format!("route `{id}`'s retry has budget_ratio and budget_floor_per_second both 0, so the budget would allow no retry; raise one, or remove [route.retry] to go without retries")
        })?;
        src.not_below_labelled(
            &table,
            &label,
            ("backoff_max", self.backoff_max),
            ("backoff_base", self.backoff_base),
        )
    }
}

mod defaults {
    use super::*;
    pub fn path_prefix() -> String {
        "/".to_string()
    }
    pub fn upgrades() -> Vec<String> {
        vec!["websocket".to_string()]
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<RetryOn> {
        [
            Outcome::Connect,
            Outcome::Reset,
            Outcome::Timeout,
            Outcome::Status(502),
            Outcome::Status(503),
            Outcome::Status(504),
        ]
        .map(RetryOn)
        .to_vec()
    }
    pub fn backoff_base() -> Millis {
        Millis(Duration::from_millis(25))
    }
    pub fn backoff_max() -> Millis {
        Millis(Duration::from_millis(250))
    }
    pub fn budget_ratio() -> Ratio {
        Ratio::try_from(0.2).expect("0.2 is a share")
    }
    pub fn budget_floor() -> f64 {
        1.0
    }
    pub fn budget_window() -> Millis {
        Millis(Duration::from_secs(10))
    }
}
