//! `gateway plugin test`: runs a filter against requests described in a
//! TOML file, without a gateway or an upstream, and prints what it decided
//! for each: its answer or the request as it would go upstream, what it
//! did on the way back, and (on standard error, as the gateway logs them)
//! the lines it wrote. Expectations in the file make it a test: the exit
//! status is 1 when a request did not get what it expects.
//!
//! The filter runs exactly as it would in the gateway: the same runtime,
//! limits, deadline and host functions, with its settings from the file
//! passed to `configure`.

use crate::config::FilterConfig;
use crate::plugin::host::{RequestId, RequestInfo, RequestState, ResponseState};
use crate::plugin::{Decision, Failure, Runtime};
use crate::telemetry::Metrics;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

/// The requests file: `[[request]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsFile {
    #[serde(rename = "request")]
    requests: Vec<TestRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// What the request shows, for the report.
    name: Option<String>,
    #[serde(default = "get")]
    method: String,
    /// The path, with its query string if any.
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The route id the filter sees (default `test`).
    route: Option<String>,
    /// The upstream's response, for `on-response` (default: 200, no
    /// headers).
    response: Option<TestResponse>,
    expect: Option<Expect>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestResponse {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

/// What a request must get. On the way in: `action`, and with `respond`
/// the reply's `status`, `headers` and `body`; with `continue`, `headers`
/// the request must carry upstream and `absent` those it must not. `response`
/// holds the same for the way back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    action: Option<ExpectedAction>,
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    absent: Vec<String>,
    body: Option<String>,
    response: Option<Box<Expect>>,
}

static NOTHING_EXPECTED: Expect = Expect {
    action: None,
    status: None,
    headers: BTreeMap::new(),
    absent: Vec::new(),
    body: None,
    response: None,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ExpectedAction {
    Continue,
    Respond,
}

/// Runs `plugin` with the settings in `config` (a TOML table, as
/// `[filters.NAME.config]` holds it) against every request in `requests`.
/// Answers the report and whether every expectation held.
pub async fn run(
    plugin: &Path,
    config: Option<&Path>,
    requests: &Path,
) -> anyhow::Result<(String, bool)> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let settings: toml::Table = match config {
        Some(p) => toml::from_str(&read(p)?)
            .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?,
        None => toml::Table::new(),
    };
    let file: RequestsFile = {
        let text = read(requests)?;
        toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| {
                let before = &text[..s.start];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(":{line}:{col}")
            });
            anyhow::anyhow!(
                "{}{}: {}",
                requests.display(),
                at.unwrap_or_default(),
                e.message()
            )
        })?
    };
    if file.requests.is_empty() {
        bail!("{}: no [[request]] to run", requests.display());
    }
    let name = plugin
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| crate::config::is_plain_name(s))
        .unwrap_or("filter")
        .to_string();
    let mut table = toml::Table::new();
    table.insert("plugin".into(), toml::Value::String(name.clone()));
    table.insert("config".into(), toml::Value::Table(settings));
    let cfg =
        FilterConfig::deserialize(toml::Value::Table(table)).context("the filter's settings")?;

    let metrics = Arc::new(Metrics::new(
        &crate::config::MetricsConfig::default().duration_buckets,
    )?);
    let mut runtime = Runtime::new(metrics)?;
    if let Some(dir) = crate::config::default_compile_cache_dir() {
        runtime.use_compile_cache(&dir);
    }
    let loaded = runtime.load(&name, plugin)?;
    let mut routes: Vec<String> = file
        .requests
        .iter()
        .map(|r| r.route.clone().unwrap_or_else(|| "test".into()))
        .collect();
    routes.sort();
    routes.dedup();
    let base = plugin.parent().unwrap_or(Path::new("."));
    let filter = runtime
        .filter(&name, loaded, &cfg, base, routes.into())
        .await?;

    let mut report = String::new();
    let mut failed = 0;
    for (i, r) in file.requests.iter().enumerate() {
        let title = r
            .name
            .clone()
            .unwrap_or_else(|| format!("{} {}", r.method, r.path));
        let _ = writeln!(report, "request {}: {title}", i + 1);
        let (lines, problems) = one(&filter, r).await?;
        report.push_str(&lines);
        if problems.is_empty() {
            let _ = writeln!(report, "  as expected\n");
        } else {
            failed += 1;
            for p in problems {
                let _ = writeln!(report, "  FAILED: {p}");
            }
            report.push('\n');
        }
    }
    let total = file.requests.len();
    let _ = writeln!(
        report,
        "{total} requests: {} as expected, {failed} not",
        total - failed
    );
    Ok((report, failed == 0))
}

fn header_map(headers: &BTreeMap<String, String>) -> anyhow::Result<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("header name `{k}`"))?,
            http::HeaderValue::from_str(v).with_context(|| format!("value of `{k}`"))?,
        );
    }
    Ok(map)
}

fn show_headers(out: &mut String, headers: &http::HeaderMap) {
    for (k, v) in headers {
        let _ = writeln!(out, "    {k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
}

/// One request through the filter: what it did, and how that differs from
/// what was expected.
async fn one(
    filter: &crate::plugin::Filter,
    r: &TestRequest,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut out = String::new();
    let mut problems = Vec::new();
    let mut request = http::Request::builder()
        .method(r.method.as_str())
        .uri(r.path.as_str())
        .body(())
        .with_context(|| format!("the request {} {}", r.method, r.path))?;
    *request.headers_mut() = header_map(&r.headers)?;
    if !request.headers().contains_key(http::header::HOST) {
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
    }
    let (parts, ()) = request.into_parts();
    let state = RequestState {
        parts,
        info: Arc::new(RequestInfo {
            route: r.route.as_deref().unwrap_or("test").into(),
            client_addr: "127.0.0.1:40000".parse().expect("an address"),
            request_id: RequestId::random(),
            scheme: "http",
        }),
        context: Vec::new(),
        body: Default::default(),
    };
    let _ = writeln!(
        out,
        "  {} {}  (request id {})",
        r.method,
        r.path,
        state.info.request_id.as_str()
    );
    let expect = r.expect.as_ref();
    let (state, decided) = filter.on_request(state).await;
    let went_on = describe(
        &mut out,
        "on-request",
        decided,
        &state.parts.headers,
        expect,
        &mut problems,
    );
    if !went_on {
        return Ok((out, problems));
    }
    let upstream = r.response.as_ref();
    let mut response = http::Response::builder()
        .status(upstream.map_or(200, |u| u.status))
        .body(())
        .context("the upstream response")?;
    if let Some(u) = upstream {
        *response.headers_mut() = header_map(&u.headers)?;
    }
    let (parts, ()) = response.into_parts();
    if filter.plugin.phases.response {
        let (_, resp, decided) = filter
            .on_response(
                state,
                ResponseState {
                    parts,
                    body: Default::default(),
                },
            )
            .await;
        describe(
            &mut out,
            "on-response",
            decided,
            &resp.parts.headers,
            expect.and_then(|e| e.response.as_deref()),
            &mut problems,
        );
    } else if expect
        .and_then(|e| e.response.as_deref())
        .is_some_and(|e| e.action == Some(ExpectedAction::Respond))
    {
        problems.push(
            "on-response: expected respond, but the filter asks for no on-response call".into(),
        );
    }
    Ok((out, problems))
}

/// Prints one phase's decision and checks it against `expect`; true when
/// the request went on.
fn describe(
    out: &mut String,
    phase: &str,
    decided: Result<Decision, Failure>,
    headers: &http::HeaderMap,
    expect: Option<&Expect>,
    problems: &mut Vec<String>,
) -> bool {
    let e = expect.unwrap_or(&NOTHING_EXPECTED);
    match decided {
        Ok(Decision::Continue) => {
            let _ = writeln!(out, "  {phase}: continue; the headers now:");
            show_headers(out, headers);
            if e.action == Some(ExpectedAction::Respond) {
                problems.push(format!("{phase}: expected respond, got continue"));
            }
            check_headers(phase, headers, e, problems);
            true
        }
        Ok(Decision::Respond(reply)) => {
            let _ = writeln!(out, "  {phase}: respond {}", reply.status);
            let mut map = http::HeaderMap::new();
            for (k, v) in &reply.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_bytes(v),
                ) {
                    map.append(k, v);
                }
            }
            show_headers(out, &map);
            let body = String::from_utf8_lossy(&reply.body);
            let _ = writeln!(out, "    body: {:?}", body);
            if e.action == Some(ExpectedAction::Continue) {
                problems.push(format!(
                    "{phase}: expected continue, got respond {}",
                    reply.status
                ));
            }
            if let Some(s) = e.status.filter(|s| *s != reply.status) {
                problems.push(format!(
                    "{phase}: expected status {s}, got {}",
                    reply.status
                ));
            }
            if let Some(b) = e.body.as_ref().filter(|b| !body.contains(b.as_str())) {
                problems.push(format!("{phase}: expected the body to contain {b:?}"));
            }
            check_headers(phase, &map, e, problems);
            false
        }
        Err(f) => {
            let _ = writeln!(out, "  {phase}: FAILED ({}): {}", f.reason, f.detail);
            problems.push(format!(
                "{phase}: the call failed ({}): {}",
                f.reason, f.detail
            ));
            false
        }
    }
}

fn check_headers(phase: &str, headers: &http::HeaderMap, e: &Expect, problems: &mut Vec<String>) {
    for (k, want) in &e.headers {
        match headers
            .get(k.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
        {
            Some(got) if got == want.as_str() => {}
            Some(got) => problems.push(format!("{phase}: expected {k}: {want}, got {k}: {got}")),
            None => problems.push(format!("{phase}: expected {k}: {want}, but it is absent")),
        }
    }
    for k in &e.absent {
        if headers.contains_key(k.as_str()) {
            problems.push(format!("{phase}: expected no {k} header"));
        }
    }
}
