//! The admin listener: `/metrics` for Prometheus, `/health` (the process is
//! up), `/ready` (its workers accept, it is not draining, and
//! every upstream whose health is `required` has a healthy instance),
//! `POST /admin/reload`, `POST /admin/drain` (and `DELETE` to undo it),
//! `/admin/plugins` (what is loaded, and how the last reload went),
//! `/admin/state` (everything the page shows) and the page itself at `/`,
//! from files built into the binary.
//!
//! Reading is open to whoever reaches the listener; changing (reload, drain) takes
//! `Authorization: Bearer <token>` when a token is set, and is refused
//! outright off loopback when none is.

use crate::reload::Reloader;
use crate::server::{self, CurrentSettings};
use crate::telemetry::live::Live;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut s = serde_json::to_string_pretty(&body).expect("JSON values serialise");
    s.push('\n');
    text(status, "application/json", s)
}

/// The page's files, built in: no CDN, nothing fetched at run time.
const PAGE: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("page/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    ),
    (
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("page/app.css"),
    ),
];

/// Only the page's own script and style, and fetches to this listener: an
/// injected `<script>` or inline handler does not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", content_type)
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid response")
}

/// Who may change the gateway through the admin listener.
pub struct Access {
    /// What `Authorization: Bearer` must carry, when set.
    pub token: Option<String>,
    /// The listener is on a loopback address.
    pub loopback: bool,
}

impl Access {
    /// `None` when a mutating request carrying `authorization` may go
    /// ahead, else why it may not.
    fn refusal(&self, authorization: Option<&http::HeaderValue>) -> Option<&'static str> {
        match &self.token {
            Some(token) => {
                let given = authorization
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                (!same_secret(given.as_bytes(), token.as_bytes()))
                    .then_some("this call needs the admin token: Authorization: Bearer <token>\n")
            }
            None if self.loopback => None,
            None => Some(
                "the admin listener is not on loopback and no admin token is set: set [admin] token or GATEWAY_ADMIN_TOKEN to allow changes\n",
            ),
        }
    }

    /// The 401 for a mutating request that may not go ahead.
    fn refuse(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let why = self.refusal(req.headers().get(http::header::AUTHORIZATION))?;
        let mut resp = text(StatusCode::UNAUTHORIZED, "text/plain", why.into());
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"gateway admin\""),
        );
        Some(resp)
    }

    fn required(&self) -> bool {
        self.token.is_some() || !self.loopback
    }
}

/// Compares without stopping at the first difference, so the time taken
/// tells nothing of how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

/// What the admin listener serves from.
pub struct Admin {
    pub reloader: Arc<Reloader>,
    pub access: Access,
    live: Live,
    started: std::time::Instant,
}

/// How often the live traffic gets a point.
const LIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl Admin {
    pub fn new(reloader: Arc<Reloader>, access: Access) -> Arc<Admin> {
        Arc::new(Admin {
            reloader,
            access,
            live: Live::default(),
            started: std::time::Instant::now(),
        })
    }

    /// Takes a point of every route's traffic each interval, for as long
    /// as the admin listener serves.
    async fn sample_live(self: Arc<Self>) {
        let mut tick = tokio::time::interval(LIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let gw = self.reloader.shared.current();
            self.live.sample(
                std::time::Instant::now(),
                gw.route_runtime
                    .iter()
                    .map(|r| (r.id.clone(), r.metrics.totals())),
            );
        }
    }

    /// `/admin/state`: routes with their chains, TCP routes, upstream instances,
    /// filters and their plugins, recent reloads and live traffic.
    fn state(&self) -> serde_json::Value {
        let gw = self.reloader.shared.current();
        let now = std::time::SystemTime::now();
        let routes: Vec<serde_json::Value> = gw
            .routes
            .routes()
            .iter()
            .zip(&gw.route_runtime)
            .map(|(route, rt)| {
                let mut v = route.describe();
                v["upstream"] = (*rt.upstream.name).into();
                v["filters"] = rt
                    .filters
                    .iter()
                    .map(|f| &*f.name)
                    .collect::<Vec<_>>()
                    .into();
                v
            })
            .collect();
        let mut upstreams: Vec<(&String, &Arc<crate::upstream::Upstream>)> =
            gw.upstreams.iter().collect();
        upstreams.sort_by(|a, b| a.0.cmp(b.0));
        let mut filters: Vec<&Arc<crate::plugin::Filter>> = gw.filters.values().collect();
        filters.sort_by(|a, b| a.name.cmp(&b.name));
        let plugins: Vec<serde_json::Value> = filters
            .iter()
            .map(|f| {
                let p = &f.plugin;
                serde_json::json!({
                    "filter": &*f.name,
                    "plugin": p.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "sha256": p.sha256,
                    "wit": p.wit_version(),
                    "calls": p.calls.load(Ordering::Relaxed),
                    "failures": p.failures.load(Ordering::Relaxed),
                    // Failing so often its failure policy answers for it.
                    "crash_loop": f.guard.suspended_until().is_some(),
                    "loaded_seconds_ago": now.duration_since(p.loaded_at).unwrap_or_default().as_secs_f64(),
                })
            })
            .collect();
        serde_json::json!({
            "generation": gw.generation,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "admin": {"token_required": self.access.required()},
            "routes": routes,
            "tcp_routes": gw.tcp.describe(),
            "upstreams": upstreams.iter().map(|(_, u)| u.describe()).collect::<Vec<_>>(),
            "plugins": plugins,
            "reloads": self.reloader.history(),
            "live": self.live.json(std::time::Instant::now(), LIVE_INTERVAL),
        })
    }
}

async fn route(admin: &Arc<Admin>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reloader = &admin.reloader;
    let shared = &reloader.shared;
    if req.uri().path() == "/admin/drain" {
        return drain(admin, req);
    }
    if req.uri().path() == "/admin/reload" {
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST\n".into(),
            );
        }
        if let Some(refusal) = admin.access.refuse(req) {
            return refusal;
        }
        // 200 with what changed, or 422 with why the files were refused;
        // either way the gateway keeps serving.
        // In a task of its own, so a client that hangs up mid-compile does
        // not cancel the reload half way.
        let task = {
            let reloader = reloader.clone();
            tokio::spawn(async move { reloader.reload("admin").await })
        };
        let outcome = task
            .await
            .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
        return match outcome {
            Ok((generation, changes)) => json(
                StatusCode::OK,
                serde_json::json!({"result": "success", "generation": generation, "changes": changes}),
            ),
            Err(error) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "result": "failure",
                    "generation": shared.current().generation,
                    "error": error,
                }),
            ),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    if let Some((_, content_type, body)) = PAGE.iter().find(|(p, ..)| *p == req.uri().path()) {
        return page(content_type, body);
    }
    match req.uri().path() {
        "/admin/plugins" => json(StatusCode::OK, reloader.describe()),
        "/admin/state" => {
            let mut resp = json(StatusCode::OK, admin.state());
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            resp
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/health" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" if !shared.serving.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".into(),
        ),
        "/ready" if shared.draining.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/ready" => {
            let gw = shared.current();
            let mut down: Vec<&str> = gw
                .upstreams
                .iter()
                .filter(|(_, u)| u.required_and_down())
                .map(|(n, _)| n.as_str())
                .collect();
            down.sort();
            if down.is_empty() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "no healthy instance in required upstream(s): {}\n",
                        down.join(", ")
                    ),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try / (the page), /metrics, /health, /ready, /admin/state, /admin/plugins, POST /admin/reload or POST /admin/drain\n"
                .into(),
        ),
    }
}

/// `POST /admin/drain`: `/ready` answers 503 from now on, and HTTP/1
/// answers close their connections, while requests are still served, so
/// load balancers move away before the process is stopped. `DELETE`
/// undoes it, unless the process is stopping. Changes need what a reload
/// needs.
fn drain(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let shared = &admin.reloader.shared;
    let drain = match *req.method() {
        Method::POST => true,
        Method::DELETE => false,
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST to drain, DELETE to serve again\n".into(),
            );
        }
    };
    if let Some(refusal) = admin.access.refuse(req) {
        return refusal;
    }
    if !drain && shared.stopping.load(Ordering::Relaxed) {
        return text(
            StatusCode::CONFLICT,
            "text/plain",
            "the gateway is stopping; it cannot serve again\n".into(),
        );
    }
    let was = shared.draining.swap(drain, Ordering::Relaxed);
    if was != drain {
        tracing::info!(
            "{}",
            if drain {
                "draining: /ready answers 503 while requests are still served"
            } else {
                "drain undone: /ready answers again"
            }
        );
    }
    json(StatusCode::OK, serde_json::json!({"draining": drain}))
}

/// Serves the admin endpoints on `listener`. Connections are kept to the
/// proxy's `[server]` timeouts (a head within `header_read_timeout`, idle
/// ones closed after `idle_timeout`) but not to its connection limits, so a
/// full proxy can still be scraped.
/// Answers on the admin listener while the first configuration loads
/// (compiling its plugins takes seconds for a JavaScript or Python filter
/// the compile cache does not hold yet): `/health` 200, everything else 503
/// `starting`, so a supervisor polling `/ready` sees a live process that is
/// not ready rather than a refused connection. Hands the listener back
/// once `loaded` fires (or is dropped), for `serve`.
pub async fn while_starting(
    listener: TcpListener,
    server: &crate::config::ServerConfig,
    loaded: tokio::sync::oneshot::Receiver<()>,
) -> TcpListener {
    let settings = CurrentSettings::new(server).get(server).clone();
    tokio::pin!(loaded);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::listeners::accept(&listener) => accepted,
            _ = &mut loaded => return listener,
        };
        let settings = settings.clone();
        tokio::spawn(async move {
            let handler = |req: Request<Incoming>| async move {
                match req.uri().path() {
                    "/health" => text(StatusCode::OK, "text/plain", "ok\n".into()),
                    _ => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "starting\n".into(),
                    ),
                }
            };
            // Answered and closed: the next request finds `serve`.
            let soon = tokio::time::sleep(std::time::Duration::from_secs(5));
            server::serve_connection(stream, peer, &settings, handler, soon).await;
        });
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let mut current = CurrentSettings::new(&admin.reloader.shared.current().server);
    tokio::spawn(admin.clone().sample_live());
    loop {
        let (stream, peer) = crate::listeners::accept(&listener).await;
        let settings = current.get(&admin.reloader.shared.current().server).clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let handler = move |req| {
                let admin = admin.clone();
                async move { route(&admin, &req).await }
            };
            // The admin listener lives as long as the process.
            let never = std::future::pending();
            server::serve_connection(stream, peer, &settings, handler, never).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn changes_off_loopback_need_a_token_and_refuse_all_without_one() {
        let open_loopback = Access {
            token: None,
            loopback: true,
        };
        assert_eq!(open_loopback.refusal(None), None);
        assert!(!open_loopback.required());

        let public_without_token = Access {
            token: None,
            loopback: false,
        };
        assert!(public_without_token.refusal(None).is_some());
        assert!(
            public_without_token
                .refusal(Some(&bearer("anything-at-all-1234")))
                .is_some()
        );
        assert!(public_without_token.required());

        for loopback in [true, false] {
            let with_token = Access {
                token: Some("0123456789abcdef0123".into()),
                loopback,
            };
            assert_eq!(
                with_token.refusal(Some(&bearer("0123456789abcdef0123"))),
                None
            );
            for wrong in [
                "",
                "0123456789abcdef012",
                "0123456789abcdef01234",
                "x123456789abcdef0123",
            ] {
                assert!(
                    with_token.refusal(Some(&bearer(wrong))).is_some(),
                    "{wrong:?}"
                );
            }
            assert!(with_token.refusal(None).is_some());
            let basic = http::HeaderValue::from_static("Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM=");
            assert!(with_token.refusal(Some(&basic)).is_some());
        }
    }

    #[test]
    fn the_page_files_are_built_in_and_refer_only_to_each_other() {
        let html = PAGE[0].2;
        assert!(html.contains("assets/app.js") && html.contains("assets/app.css"));
        // Nothing inline for the policy to refuse, nothing from elsewhere.
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
