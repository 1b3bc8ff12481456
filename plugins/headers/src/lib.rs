//! The header filter: removes request headers a client must not be able to
//! set (spoofed identity, method overrides, internal routing hints), removes
//! response headers that leak what runs behind the gateway, adds configured
//! headers both ways, and refuses requests with too many or too large headers.

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use exports::gateway::filter::filter::Guest;
use gateway::filter::host::{self, LogLevel};
use gateway::filter::types::{Action, Reply, Request, Response};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Request headers a client could use to impersonate someone, bypass a
/// control or steer the upstream. The gateway already replaces the
/// `X-Forwarded-*` family itself; these are the others.
const DEFAULT_STRIP_REQUEST: &[&str] = &[
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "forwarded",
    "x-forwarded-server",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-user-id",
    "x-remote-user",
    "x-auth-user",
    "x-authenticated-user",
    "x-tenant-id",
    "x-middleware-subrequest",
    // httpoxy: CGI-style upstreams turn `Proxy` into HTTP_PROXY.
    "proxy",
];

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
    strip_request: Vec<String>,
    remove_response: Vec<String>,
    add_request: Vec<(String, Vec<u8>)>,
    add_response: Vec<(String, Vec<u8>)>,
    max_header_count: u32,
    max_header_bytes: u32,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn lower_all(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

fn parse(config: &str) -> Result<Settings, String> {
    let c: Config = serde_json::from_str(config).map_err(|e| format!("headers: {e}"))?;
    let defaults = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let strip = c
        .strip_request
        .unwrap_or_else(|| defaults(DEFAULT_STRIP_REQUEST));
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
    Ok(Settings {
        strip_request: lower_all(strip.into_iter().chain(c.strip_request_extra)),
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

fn settings() -> &'static Settings {
    SETTINGS.get().expect("configure runs before any request")
}

fn removed(phase: &str, name: &str) {
    host::counter_add(
        "headers_removed",
        &[
            ("phase".into(), phase.into()),
            ("header".into(), name.into()),
        ],
        1.0,
    );
}

fn refuse(status: u16, why: &str) -> Action {
    host::counter_add("requests_refused", &[("reason".into(), why.into())], 1.0);
    Action::Respond(Reply {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: format!("request refused: {why}\n").into_bytes(),
    })
}

struct Headers;

impl Guest for Headers {
    fn configure(config: String) -> Result<(), String> {
        let s = parse(&config)?;
        // A second configure on the same instance keeps the first settings;
        // the gateway gives each instance exactly one.
        let _ = SETTINGS.set(s);
        Ok(())
    }

    fn on_request(req: &Request) -> Action {
        let s = settings();
        let stats = req.header_stats();
        if stats.count > s.max_header_count {
            return refuse(431, "too many headers");
        }
        if stats.bytes > s.max_header_bytes {
            return refuse(431, "headers too large");
        }
        // One call for the names present, then removals only for those on
        // the list: far cheaper than asking for every listed name.
        for name in req.header_names() {
            if s.strip_request.binary_search(&name).is_ok() && req.remove_header(&name) {
                host::log(LogLevel::Debug, &format!("stripped request header {name}"));
                removed("request", &name);
            }
        }
        for (name, value) in &s.add_request {
            if let Err(e) = req.set_header(name, value) {
                host::log(LogLevel::Warn, &format!("could not add {name}: {e}"));
            }
        }
        Action::Continue
    }

    fn on_response(_req: &Request, resp: &Response) -> Action {
        let s = settings();
        for name in resp.header_names() {
            if s.remove_response.binary_search(&name).is_ok() && resp.remove_header(&name) {
                removed("response", &name);
            }
        }
        for (name, value) in &s.add_response {
            if let Err(e) = resp.set_header(name, value) {
                host::log(LogLevel::Warn, &format!("could not add {name}: {e}"));
            }
        }
        Action::Continue
    }
}

export!(Headers);
