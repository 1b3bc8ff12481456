//! The filter's settings, read from `[filters.NAME.config]` and checked
//! whole, so a bad one refuses the load at its place in the TOML.

use filter_sdk::v2::{DurationMs, parse_config, refusal};
use serde::Deserialize;

/// Headers the filter always sends, with values of its own: a client
/// cannot supply them.
pub const ALWAYS_SENT: &[&str] = &[
    "x-request-id",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-for",
];

/// Headers the gateway manages on a request, a reply and a callout; the
/// filter can neither send nor copy them.
const MANAGED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// The longest a value may live in kv by default (the filter's
/// `state_max_window`).
const MAX_CACHE_TTL_MS: u64 = 2 * 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The upstream (`[upstreams.NAME]`) that answers; also in the filter's
    /// `callouts`.
    cluster: String,
    /// Put before the request's path: `/authz` asks `/authz/orders/1`.
    #[serde(default)]
    path_prefix: String,
    /// The method of the check; the client's when absent.
    #[serde(default)]
    method: Option<String>,
    #[serde(default = "default_headers_to_send")]
    headers_to_send: Vec<String>,
    #[serde(default)]
    headers_from_authz: Vec<String>,
    #[serde(default = "default_headers_to_client")]
    headers_to_client: Vec<String>,
    /// How long an allow answer is reused for the same check; 0 asks every
    /// time.
    #[serde(default)]
    allow_cache_ttl: DurationMs,
    #[serde(default)]
    failure_mode_allow: bool,
    #[serde(default = "default_failure_status")]
    failure_status: u16,
    #[serde(default)]
    timeout_ms: Option<u32>,
}

fn default_headers_to_send() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_headers_to_client() -> Vec<String> {
    vec!["www-authenticate".into(), "location".into()]
}

fn default_failure_status() -> u16 {
    503
}

/// The checked settings; header names lower case, once each.
#[derive(Debug, PartialEq, Eq)]
pub struct Settings {
    pub cluster: String,
    pub path_prefix: String,
    pub method: Option<String>,
    pub headers_to_send: Vec<String>,
    pub headers_from_authz: Vec<String>,
    pub headers_to_client: Vec<String>,
    pub allow_cache_ttl_ms: u64,
    pub failure_mode_allow: bool,
    pub failure_status: u16,
    pub timeout_ms: Option<u32>,
}

pub fn parse(json: &str) -> Result<Settings, String> {
    let c: Config = parse_config("ext-authz", json)?;
    let bad = |path: &str, message: String| Err(refusal(path, &format!("ext-authz: {message}")));
    if c.cluster.is_empty() {
        return bad("cluster", "names no upstream".into());
    }
    let p = &c.path_prefix;
    if !p.is_empty()
        && (!p.starts_with('/')
            || p.ends_with('/')
            || p.bytes()
                .any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f))
    {
        return bad(
            "path_prefix",
            format!(
                "`{p}` is not a path prefix: it starts with `/`, does not end with one, and has no query"
            ),
        );
    }
    if let Some(m) = &c.method
        && (m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return bad(
            "method",
            format!("`{m}` is not a method (upper case letters)"),
        );
    }
    let headers_to_send = names(
        &c.headers_to_send,
        "headers_to_send",
        &[ALWAYS_SENT, MANAGED],
    )?;
    let headers_from_authz = names(&c.headers_from_authz, "headers_from_authz", &[MANAGED])?;
    let headers_to_client = names(&c.headers_to_client, "headers_to_client", &[MANAGED])?;
    if c.allow_cache_ttl.0 > MAX_CACHE_TTL_MS {
        return bad("allow_cache_ttl", "must be at most 2d".into());
    }
    if !(400..=599).contains(&c.failure_status) {
        return bad(
            "failure_status",
            format!("{} is not an error status (400 to 599)", c.failure_status),
        );
    }
    if c.timeout_ms == Some(0) {
        return bad("timeout_ms", "must be at least 1".into());
    }
    Ok(Settings {
        cluster: c.cluster,
        path_prefix: c.path_prefix,
        method: c.method,
        headers_to_send,
        headers_from_authz,
        headers_to_client,
        allow_cache_ttl_ms: c.allow_cache_ttl.0,
        failure_mode_allow: c.failure_mode_allow,
        failure_status: c.failure_status,
        timeout_ms: c.timeout_ms,
    })
}

/// Header names in lower case, once each; refused when not a name or in
/// one of `refused`.
fn names(list: &[String], setting: &str, refused: &[&[&str]]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let name = h.to_ascii_lowercase();
        let why = if name.is_empty() || !name.bytes().all(is_token) {
            "is not a header name"
        } else if ALWAYS_SENT.contains(&name.as_str()) && refused.contains(&ALWAYS_SENT) {
            "is always sent, with the gateway's value"
        } else if MANAGED.contains(&name.as_str()) {
            "is managed by the gateway"
        } else {
            if !out.contains(&name) {
                out.push(name);
            }
            continue;
        };
        return Err(refusal(
            &format!("{setting}[{i}]"),
            &format!("ext-authz: `{h}` {why}"),
        ));
    }
    Ok(out)
}

/// A `tchar` of RFC 9110, the bytes of a header name.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_all_it_needs() {
        let s = parse(r#"{"cluster": "authz"}"#).unwrap();
        assert_eq!(
            s,
            Settings {
                cluster: "authz".into(),
                path_prefix: String::new(),
                method: None,
                headers_to_send: vec!["authorization".into(), "cookie".into()],
                headers_from_authz: vec![],
                headers_to_client: vec!["www-authenticate".into(), "location".into()],
                allow_cache_ttl_ms: 0,
                failure_mode_allow: false,
                failure_status: 503,
                timeout_ms: None,
            }
        );
    }

    #[test]
    fn every_setting_is_read() {
        let s = parse(
            r#"{"cluster": "authz", "path_prefix": "/check", "method": "POST",
                "headers_to_send": ["Authorization", "x-api-key", "authorization"],
                "headers_from_authz": ["x-user"], "headers_to_client": [],
                "allow_cache_ttl": 30, "failure_mode_allow": true, "failure_status": 500,
                "timeout_ms": 200}"#,
        )
        .unwrap();
        assert_eq!(s.path_prefix, "/check");
        assert_eq!(s.method.as_deref(), Some("POST"));
        assert_eq!(s.headers_to_send, ["authorization", "x-api-key"]);
        assert_eq!(s.headers_from_authz, ["x-user"]);
        assert!(s.headers_to_client.is_empty());
        assert_eq!(s.allow_cache_ttl_ms, 30_000);
        assert!(s.failure_mode_allow);
        assert_eq!((s.failure_status, s.timeout_ms), (500, Some(200)));
    }

    #[test]
    fn bad_settings_are_refused_at_their_path() {
        for (json, message) in [
            (
                r#"{"cluster": ""}"#,
                "at `cluster`: ext-authz: names no upstream",
            ),
            (
                r#"{"cluster": "a", "path_prefix": "/x/"}"#,
                "at `path_prefix`: ext-authz: `/x/` is not a path prefix: it starts with `/`, does not end with one, and has no query",
            ),
            (
                r#"{"cluster": "a", "path_prefix": "x"}"#,
                "at `path_prefix`: ext-authz: `x` is not a path prefix: it starts with `/`, does not end with one, and has no query",
            ),
            (
                r#"{"cluster": "a", "method": "get"}"#,
                "at `method`: ext-authz: `get` is not a method (upper case letters)",
            ),
            (
                r#"{"cluster": "a", "headers_to_send": ["X-Request-Id"]}"#,
                "at `headers_to_send[0]`: ext-authz: `X-Request-Id` is always sent, with the gateway's value",
            ),
            (
                r#"{"cluster": "a", "headers_to_send": ["host"]}"#,
                "at `headers_to_send[0]`: ext-authz: `host` is managed by the gateway",
            ),
            (
                r#"{"cluster": "a", "headers_from_authz": ["x-ok", "transfer-encoding"]}"#,
                "at `headers_from_authz[1]`: ext-authz: `transfer-encoding` is managed by the gateway",
            ),
            (
                r#"{"cluster": "a", "headers_to_client": ["bad header"]}"#,
                "at `headers_to_client[0]`: ext-authz: `bad header` is not a header name",
            ),
            (
                r#"{"cluster": "a", "allow_cache_ttl": "3d"}"#,
                "at `allow_cache_ttl`: ext-authz: must be at most 2d",
            ),
            (
                r#"{"cluster": "a", "failure_status": 200}"#,
                "at `failure_status`: ext-authz: 200 is not an error status (400 to 599)",
            ),
            (
                r#"{"cluster": "a", "timeout_ms": 0}"#,
                "at `timeout_ms`: ext-authz: must be at least 1",
            ),
        ] {
            assert_eq!(parse(json).unwrap_err(), message, "{json}");
        }
        assert_eq!(
            parse("{}").unwrap_err(),
            "ext-authz: missing field `cluster`"
        );
        // A header the gateway sets upstream itself may still come from
        // the service (it replaces the client's).
        assert!(parse(r#"{"cluster": "a", "headers_from_authz": ["x-forwarded-for"]}"#).is_ok());
    }
}
