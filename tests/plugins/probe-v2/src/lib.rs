//! A 0.2.0 filter the end-to-end tests drive through the request path:
//!
//! - every request: appends `v2:NAME` to `x-chain` on the way in and to
//!   `x-chain-out` on the way out, like the 0.1.0 probe, so a mixed chain's
//!   order shows;
//! - `request_body`: reads the request body, reports its length in
//!   `x-body-length` (or the refusal in `x-body-error`) and, with
//!   `upper_request_body`, sends it upstream in upper case;
//! - `response_body`: reads the response body and, with `append`, adds that
//!   text to it;
//! - `/kv/set/KEY/VALUE/TTL_MS`, `/kv/get/KEY`, `/kv/del/KEY`,
//!   `/kv/cas/KEY/EXPECTED/NEW` (`-` expects nothing): answers the kv call's
//!   result as the body;
//! - `/callout/CLUSTER/PATH...`: answers with what `GET /PATH` on CLUSTER
//!   answered (status, body), or 599 and the error.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit/v0.2" });

use exports::gateway::filter::filter::Guest;
use gateway::filter::callout::{self, OutboundRequest};
use gateway::filter::host::{self, MetricKind};
use gateway::filter::kv;
use gateway::filter::types::{
    Action, BodyLimit, Needs, OverLimit, Reply, Request, Response,
};
use serde::Deserialize;
use std::cell::Cell;
use std::sync::OnceLock;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    name: String,
    /// Bytes of the request (response) body to read.
    request_body: Option<u32>,
    response_body: Option<u32>,
    /// "pass", or a status to refuse a larger body with.
    #[serde(default)]
    over_limit: Option<serde_json::Value>,
    #[serde(default)]
    upper_request_body: bool,
    append: Option<String>,
    /// Timeout for callouts, in ms (the filter's callout_timeout otherwise).
    callout_timeout_ms: Option<u32>,
    /// Trap in on-response, after reading the body.
    #[serde(default)]
    trap_response: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

thread_local! {
    static CALLS: Cell<Option<u32>> = const { Cell::new(None) };
    static LAST_BODY: Cell<Option<u32>> = const { Cell::new(None) };
}

fn config() -> &'static Config {
    CONFIG.get().expect("configured")
}

fn over_limit() -> Result<OverLimit, String> {
    match &config().over_limit {
        None => Ok(OverLimit::Pass),
        Some(serde_json::Value::String(s)) if s == "pass" => Ok(OverLimit::Pass),
        Some(serde_json::Value::Number(n)) => Ok(OverLimit::Refuse(
            n.as_u64().ok_or("over_limit: a status")? as u16,
        )),
        Some(_) => Err("at `over_limit`: \"pass\" or a status".into()),
    }
}

fn mark(existing: Option<Vec<u8>>, name: &str) -> Vec<u8> {
    let mut v = existing.unwrap_or_default();
    if !v.is_empty() {
        v.push(b',');
    }
    v.extend_from_slice(b"v2:");
    v.extend_from_slice(name.as_bytes());
    v
}

fn answer(status: u16, body: impl Into<Vec<u8>>) -> Action {
    Action::Respond(Reply {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: body.into(),
    })
}

fn kv(path: &str) -> Action {
    let parts: Vec<&str> = path.split('/').collect();
    let shown = |r: Result<String, kv::StateError>| match r {
        Ok(s) => answer(200, s),
        Err(e) => answer(503, format!("{e:?}")),
    };
    match parts.as_slice() {
        ["set", key, value, ttl] => shown(
            kv::set(key, value.as_bytes(), ttl.parse().unwrap_or(60_000)).map(|()| "ok".into()),
        ),
        ["get", key] => shown(kv::get(key).map(|v| match v {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => "none".into(),
        })),
        ["del", key] => shown(kv::delete(key).map(|b| b.to_string())),
        ["cas", key, expected, new] => {
            let expected = (*expected != "-").then(|| expected.as_bytes().to_vec());
            shown(kv::compare_and_set(key, expected.as_deref(), new.as_bytes(), 60_000).map(|b| b.to_string()))
        }
        _ => answer(400, "unknown kv call"),
    }
}

fn call_out(path: &str) -> Action {
    let (cluster, rest) = path.split_once('/').unwrap_or((path, ""));
    let sent = callout::send(&OutboundRequest {
        cluster: cluster.to_string(),
        method: "GET".into(),
        path_and_query: format!("/{rest}"),
        headers: vec![("x-from".into(), b"probe-v2".to_vec())],
        body: Vec::new(),
        timeout_ms: config().callout_timeout_ms,
    });
    match sent {
        Ok(r) => answer(r.status, r.body),
        Err(e) => answer(599, format!("{e:?}")),
    }
}

struct Probe;

impl Guest for Probe {
    fn configure(settings: String) -> Result<Needs, String> {
        let c: Config = serde_json::from_str(&settings).map_err(|e| e.to_string())?;
        let _ = CONFIG.set(c);
        let over = over_limit()?;
        let calls = host::declare_metric(MetricKind::Counter, "probe_calls", &["phase".into()])?;
        CALLS.set(Some(calls));
        let last = host::declare_metric(MetricKind::Gauge, "last_body_bytes", &[])?;
        LAST_BODY.set(Some(last));
        let c = config();
        Ok(Needs {
            request_body: c.request_body.map(|max| BodyLimit {
                max_bytes: max,
                over_limit: over,
            }),
            response_body: c.response_body.map(|max| BodyLimit {
                max_bytes: max,
                over_limit: over,
            }),
        })
    }

    fn on_request(req: &Request) -> Action {
        if let Some(m) = CALLS.get() {
            host::record_metric(m, &["request".into()], 1.0);
        }
        let c = config();
        let path = req.path();
        if let Some(rest) = path.strip_prefix("/kv/") {
            return kv(rest);
        }
        if let Some(rest) = path.strip_prefix("/callout/") {
            return call_out(rest);
        }
        let _ = req.set_header("x-chain", &mark(req.header("x-chain"), &c.name));
        if c.request_body.is_some() {
            match req.body() {
                Ok(body) => {
                    let _ = req.set_header("x-body-length", body.len().to_string().as_bytes());
                    if let Some(g) = LAST_BODY.get() {
                        host::record_metric(g, &[], body.len() as f64);
                    }
                    if c.upper_request_body {
                        let _ = req.set_body(&body.to_ascii_uppercase());
                    }
                }
                Err(e) => {
                    let _ = req.set_header("x-body-error", format!("{e:?}").as_bytes());
                }
            }
        }
        Action::Continue
    }

    fn on_response(_req: &Request, resp: &Response) -> Action {
        let c = config();
        let _ = resp.set_header("x-chain-out", &mark(resp.header("x-chain-out"), &c.name));
        if c.response_body.is_some() {
            match resp.body() {
                Ok(mut body) => {
                    if c.trap_response {
                        panic!("probe {} traps after reading {} bytes", c.name, body.len());
                    }
                    if let Some(a) = &c.append {
                        body.extend_from_slice(a.as_bytes());
                        if let Err(e) = resp.set_body(&body) {
                            let _ = resp.set_header("x-body-error", format!("{e:?}").as_bytes());
                        }
                    }
                }
                Err(e) => {
                    let _ = resp.set_header("x-body-error", format!("{e:?}").as_bytes());
                }
            }
        }
        Action::Continue
    }
}

export!(Probe);
