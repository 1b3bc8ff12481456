//! The floor of the gateway's stack: hyper's HTTP/1 server and hyper-util's
//! pooled client on one current-thread runtime, forwarding every request to
//! one upstream and doing nothing else (no routing, edge checks, metrics,
//! logs, ids or filters). What vs-nginx.sh measures for this program is the
//! least the gateway can cost per request while it keeps hyper; the
//! difference to `benches/vs-nginx/plain.toml` is what the gateway adds.
//!
//!   cargo build --release --example floor
//!   ../shared/bench/vs-nginx.sh -- target/release/examples/floor
//!
//! It reads the same LISTEN and UPSTREAM the vs-nginx configs do. With
//! `FLOOR_POOL=own` it keeps its upstream connections in the gateway's own
//! pool (`gateway::upstream::pool::InstancePool`: ready HTTP/1 senders per
//! thread, each given back when its response body ends) instead of in
//! hyper-util's client, so the two pools can be compared on the same load.

use bytes::Bytes;
use gateway::telemetry::Metrics;
use gateway::upstream::pool::{ConnectionSettings, InstancePool, UpstreamBody};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use opentelemetry::KeyValue;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

type Upstream = Client<HttpConnector, Full<Bytes>>;

/// Where requests go: hyper-util's client, or the gateway's pool.
enum Pool {
    HyperUtil(Box<Upstream>),
    Own(Arc<InstancePool>),
}

async fn forward(
    pool: Arc<Pool>,
    upstream: &'static str,
    base: &'static str,
    req: http::Request<Incoming>,
) -> Result<http::Response<Either<Incoming, UpstreamBody>>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match &*pool {
        Pool::HyperUtil(client) => {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{base}{path}")
                .parse()
                .expect("a valid upstream URI");
            parts.headers.remove(http::header::HOST);
            let resp = client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await
                .expect("the upstream answers");
            Ok(resp.map(Either::Left))
        }
        // Its connections take the origin form the client sent.
        Pool::Own(pool) => {
            let resp = pool
                .send(
                    upstream,
                    http::Request::from_parts(parts, Either::Left(Full::new(body))),
                )
                .await
                .expect("the upstream answers");
            Ok(resp.map(Either::Right))
        }
    }
}

fn main() -> std::io::Result<()> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:18082".into());
    let upstream = std::env::var("UPSTREAM").unwrap_or_else(|_| "127.0.0.1:18080".into());
    let base: &'static str = Box::leak(format!("http://{upstream}").into_boxed_str());
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    let own = std::env::var("FLOOR_POOL").is_ok_and(|v| v == "own");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let pool = Arc::new(if own {
            let metrics =
                Arc::new(Metrics::new(&[0.001, 0.01, 0.1]).map_err(std::io::Error::other)?);
            Pool::Own(Arc::new(InstancePool::new(
                [
                    KeyValue::new("upstream", "floor"),
                    KeyValue::new("endpoint", upstream),
                ],
                &metrics,
                ConnectionSettings {
                    connect_timeout: Duration::from_secs(1),
                    idle_timeout: Duration::from_secs(60),
                    max_idle: 256,
                },
            )))
        } else {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Pool::HyperUtil(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_max_idle_per_host(256)
                    .build(connector),
            ))
        });
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(pool.clone(), upstream, base, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
