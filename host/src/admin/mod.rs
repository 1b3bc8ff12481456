//! The admin listener: `/metrics` for Prometheus, `/health` (the process is
//! up), `/ready` (its workers accept, it is not draining, and
//! every upstream whose health is `required` has a healthy instance),
//! `POST /admin/reload` and `/admin/plugins` (what is loaded, and how the
//! last reload went).

use crate::reload::Reloader;
use crate::server::{self, CurrentSettings};
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

async fn route(reloader: &Arc<Reloader>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let shared = &reloader.shared;
    if req.uri().path() == "/admin/reload" {
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST\n".into(),
            );
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
    match req.uri().path() {
        "/admin/plugins" => json(StatusCode::OK, reloader.describe()),
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
            "not found; try /metrics, /health, /ready, /admin/plugins or POST /admin/reload\n"
                .into(),
        ),
    }
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
            accepted = server::accept(&listener) => accepted,
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

pub async fn serve(listener: TcpListener, reloader: Arc<Reloader>) {
    let mut current = CurrentSettings::new(&reloader.shared.current().server);
    loop {
        let (stream, peer) = server::accept(&listener).await;
        let settings = current.get(&reloader.shared.current().server).clone();
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let handler = move |req| {
                let reloader = reloader.clone();
                async move { route(&reloader, &req).await }
            };
            // The admin listener lives as long as the process.
            let never = std::future::pending();
            server::serve_connection(stream, peer, &settings, handler, never).await;
        });
    }
}
