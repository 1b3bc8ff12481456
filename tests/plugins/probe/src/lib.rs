//! A filter the end-to-end tests configure to do one observable thing:
//! append its name to `x-chain` on the way in and out (so the order of the
//! chain shows), answer early with a status, trap in a chosen phase, or pass
//! a value along the chain's context.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use exports::gateway::filter::filter::Guest;
use gateway::filter::types::{Action, Reply, Request, Response};
use serde::Deserialize;
use std::sync::OnceLock;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    name: String,
    /// Answer every request with this status instead of continuing.
    answer: Option<u16>,
    /// "configure", "request" or "response": trap (panic) in that phase.
    trap: Option<String>,
    /// "loop": spin forever on request; "memory": allocate until refused.
    misbehave: Option<String>,
    /// Set this context key to the filter's name on the way in.
    set_context: Option<String>,
    /// Copy this context key into the `x-context` request header.
    read_context: Option<String>,
    /// Try to set this request header; the host's verdict goes to `x-set-result`.
    try_set_header: Option<String>,
    /// Record each request's path length in the histogram `path_bytes`,
    /// labelled with the method (and declare it at zero when configured).
    #[serde(default)]
    observe_paths: bool,
    /// Copy what the filter is shown of the request (`authority()`,
    /// `path()`, `scheme()`) into `x-seen-authority`, `x-seen-path` and
    /// `x-seen-scheme`, so a test can compare it with what the upstream got.
    #[serde(default)]
    report_view: bool,
    /// Do nothing in either phase: the cost of a call itself.
    #[serde(default)]
    idle: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get().expect("configured")
}

fn mark(existing: Option<Vec<u8>>, name: &str) -> Vec<u8> {
    match existing {
        Some(mut v) => {
            v.extend_from_slice(b",");
            v.extend_from_slice(name.as_bytes());
            v
        }
        None => name.as_bytes().to_vec(),
    }
}

struct Probe;

impl Guest for Probe {
    fn configure(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(|e| format!("probe: {e}"))?;
        if c.trap.as_deref() == Some("configure") {
            return Err(format!(
                "probe {} refuses its configuration on purpose",
                c.name
            ));
        }
        if c.observe_paths {
            gateway::filter::host::counter_add("paths", &[("method".into(), "GET".into())], 0.0);
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(req: &Request) -> Action {
        let c = config();
        if c.idle {
            return Action::Continue;
        }
        if c.trap.as_deref() == Some("request") {
            panic!("probe {} traps on request", c.name);
        }
        match c.misbehave.as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("memory") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => {}
        }
        let _ = req.set_header("x-chain", &mark(req.header("x-chain"), &c.name));
        if c.observe_paths {
            let labels = [("method".to_string(), req.method())];
            gateway::filter::host::histogram_observe(
                "path_bytes",
                &labels,
                req.path().len() as f64,
            );
            gateway::filter::host::counter_add("paths", &labels, 1.0);
        }
        if c.report_view {
            let authority = req.authority().unwrap_or_else(|| "<none>".into());
            let _ = req.set_header("x-seen-authority", authority.as_bytes());
            let _ = req.set_header("x-seen-path", req.path().as_bytes());
            let _ = req.set_header("x-seen-scheme", req.scheme().as_bytes());
        }
        if let Some(key) = &c.set_context {
            req.set_context(key, &c.name);
        }
        if let Some(key) = &c.read_context {
            let v = req.get_context(key).unwrap_or_else(|| "<none>".into());
            let _ = req.set_header("x-context", v.as_bytes());
        }
        if let Some(name) = &c.try_set_header {
            let verdict = match req.set_header(name, b"probe") {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("refused: {e}"),
            };
            let _ = req.set_header("x-set-result", verdict.as_bytes());
        }
        match c.answer {
            Some(status) => Action::Respond(Reply {
                status,
                headers: vec![("x-answered-by".into(), c.name.clone().into_bytes())],
                body: format!("answered by {}\n", c.name).into_bytes(),
            }),
            None => Action::Continue,
        }
    }

    fn on_response(_req: &Request, resp: &Response) -> Action {
        let c = config();
        if c.idle {
            return Action::Continue;
        }
        if c.trap.as_deref() == Some("response") {
            panic!("probe {} traps on response", c.name);
        }
        let _ = resp.set_header("x-chain-out", &mark(resp.header("x-chain-out"), &c.name));
        Action::Continue
    }
}

export!(Probe);
