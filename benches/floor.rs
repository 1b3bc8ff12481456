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
//! `FLOOR_POOL=own` it keeps its upstream connections itself instead of in
//! hyper-util's client: per thread, ready HTTP/1 senders in a stack, each
//! put back when its response body ends, so the two pools can be compared
//! on the same load.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

type Upstream = Client<HttpConnector, Full<Bytes>>;

thread_local! {
    /// Idle connections to the upstream, most recently used on top.
    static IDLE: RefCell<Vec<SendRequest<Full<Bytes>>>> = const { RefCell::new(Vec::new()) };
}

/// A response body that gives its connection back once it has ended.
struct Pooled {
    inner: Incoming,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Pooled {
    fn give_back(&mut self) {
        if let Some(s) = self.sender.take() {
            IDLE.with(|idle| idle.borrow_mut().push(s));
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let out = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(out, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.give_back();
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

async fn own_pool(
    upstream: &'static str,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Pooled>, Infallible> {
    let idle = IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    });
    let mut sender = match idle {
        Some(s) => s,
        None => {
            let stream = tokio::net::TcpStream::connect(upstream)
                .await
                .expect("the upstream accepts");
            stream.set_nodelay(true).expect("nodelay");
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            sender
        }
    };
    let resp = sender
        .send_request(req)
        .await
        .expect("the upstream answers");
    let (parts, inner) = resp.into_parts();
    let mut body = Pooled {
        inner,
        sender: Some(sender),
    };
    if body.inner.is_end_stream() {
        body.give_back();
    }
    Ok(http::Response::from_parts(parts, body))
}

async fn forward(
    client: Option<Upstream>,
    upstream: &'static str,
    base: &'static str,
    req: http::Request<Incoming>,
) -> Result<http::Response<http_body_util::Either<Incoming, Pooled>>, Infallible> {
    use http_body_util::Either;
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let req = match client {
        Some(client) => {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("{base}{path}")
                .parse()
                .expect("a valid upstream URI");
            parts.headers.remove(http::header::HOST);
            let resp = client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await
                .expect("the upstream answers");
            return Ok(resp.map(Either::Left));
        }
        // A connection of our own takes the origin form the client sent.
        None => http::Request::from_parts(parts, Full::new(body)),
    };
    own_pool(upstream, req).await.map(|r| r.map(Either::Right))
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let client = (!own).then(|| client.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| forward(client.clone(), upstream, base, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
