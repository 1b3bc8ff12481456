//! Listeners: accept connections, speak HTTP/1.1 or h2c (told apart by the
//! HTTP/2 preface), enforce the header-read timeout and header limits, and
//! on shutdown stop accepting and let in-flight requests finish.

use crate::Shared;
use crate::config::ServerConfig;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// hyper refuses read buffers below this, so smaller header limits are
/// raised to it.
const MIN_HEADER_BUFFER: usize = 8192;

fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout.0)
        // Over-long heads and too many headers are answered 431 by hyper.
        .max_buf_size(cfg.max_header_bytes.max(MIN_HEADER_BUFFER))
        .max_headers(cfg.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes.min(u32::MAX as usize) as u32);
    b
}

/// Serves the proxy on `listener` until `shutdown` turns true, then waits up
/// to `grace` for open requests to finish.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    // Rebuilt when a reload brings new limits; connections keep the limits
    // they were accepted with. Only the settings are held here, not the
    // configuration, which must be free to drop after its last request.
    let mut built_for = shared.current().server.clone();
    let mut conn_builder = Arc::new(builder(&built_for));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let now = shared.current();
                if now.server != built_for {
                    built_for = now.server.clone();
                    conn_builder = Arc::new(builder(&built_for));
                }
                drop(now);
                let open = shared.metrics.connection_opened();
                let shared = shared.clone();
                let svc = service_fn(move |req| {
                    let gw = shared.current();
                    async move { Ok::<_, std::convert::Infallible>(crate::proxy::handle(gw, req, peer).await) }
                });
                let b = conn_builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _open = open;
                    let conn = b.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; waiting up to {grace:?} for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}
