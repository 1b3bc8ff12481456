//! Upstream connections. HTTP/1 instances keep their own: ready senders
//! per worker thread, each given back when its answer has been read, so a
//! request's exchange with the upstream stays on the thread that serves
//! it (hyper-util's pooled client, shared by every thread, costs 15–25%
//! more CPU per request: `benches/floor.rs`). h2c and TLS instances and
//! health checks use hyper-util's client, whose one connection multiplexes
//! (over TLS, HTTP/2 when the instance offers it by ALPN, else HTTP/1.1).
//!
//! Both are counted alike: each connection opened and how long connecting
//! took, connections open and in use, and for each answered try whether
//! it rode a connection that had carried an answer before (a pool hit) or
//! a new one (a miss). A hyper-util connection carries a flag the client
//! copies into every response it answers, so telling the two apart is one
//! atomic swap.

use crate::per_worker::PerWorker;
use crate::telemetry::{ConnectionGauge, ConnectionGuard, Metrics};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry::metrics::BoundCounter;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How an instance's connections are made and kept.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    pub connect_timeout: Duration,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per instance, over all worker threads.
    pub max_idle: usize,
}

type Sender = http1::SendRequest<super::ClientBody>;

struct IdleConnection {
    sender: Sender,
    since: Instant,
}

/// One instance's connections: the idle HTTP/1 ones, and what the counters
/// see of all. Shared across reloads that keep the connection settings.
pub struct InstancePool {
    labels: [KeyValue; 2],
    /// Answered tries on a reused (`hit`) and a new (`miss`) connection.
    hit_miss: [BoundCounter<u64>; 2],
    /// Connections open and in use, for the scrape.
    pub connections: Arc<ConnectionGauge>,
    idle: PerWorker<IdleConnection>,
    settings: ConnectionSettings,
    metrics: Arc<Metrics>,
}

/// A connection checked out for one try.
struct Checkout {
    sender: Sender,
    /// It carried an answer before.
    reused: bool,
}

/// Why a try got no answer on its own connection.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The connection failed after the request may have gone out.
    Failed(String),
}

impl InstancePool {
    pub fn new(
        labels: [KeyValue; 2],
        metrics: &Arc<Metrics>,
        settings: ConnectionSettings,
    ) -> InstancePool {
        let hit_miss = ["hit", "miss"].map(|result| {
            let mut attrs = labels.to_vec();
            attrs.push(KeyValue::new("result", result));
            let c = metrics.pool_requests.bind(&attrs);
            c.add(0);
            c
        });
        metrics.connections_opened.add(0, &labels);
        InstancePool {
            connections: ConnectionGauge::new(metrics, labels.clone()),
            labels,
            hit_miss,
            idle: PerWorker::default(),
            settings,
            metrics: metrics.clone(),
        }
    }

    /// Sends `req` to the instance at `addr` over HTTP/1, on an idle
    /// connection of this thread's or a new one. A request that never left
    /// (its idle connection had closed) is sent again on another.
    pub async fn send(
        self: &Arc<Self>,
        addr: &str,
        mut req: http::Request<super::ClientBody>,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        loop {
            let mut c = self.checkout(addr).await.map_err(SendError::Connect)?;
            if let Err(e) = c.sender.ready().await {
                if c.reused {
                    continue;
                }
                return Err(SendError::Failed(format!("{e:#}")));
            }
            match c.sender.try_send_request(req).await {
                Ok(resp) => {
                    self.hit_miss[usize::from(!c.reused)].add(1);
                    // A switched connection belongs to its tunnel now.
                    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Ok(resp.map(UpstreamBody::unpooled));
                    }
                    return Ok(UpstreamBody::pooled(resp, c.sender, self.clone()));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if c.reused => req = unsent,
                    _ => return Err(SendError::Failed(format!("{:#}", e.into_error()))),
                },
            }
        }
    }

    async fn checkout(&self, addr: &str) -> Result<Checkout, String> {
        while let Some(idle) = self.idle.pop_home() {
            if self.usable(&idle) {
                return Ok(Checkout {
                    sender: idle.sender,
                    reused: true,
                });
            }
        }
        let started = Instant::now();
        let stream =
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Err(_) => {
                    return Err(format!(
                        "connecting to {addr} took over {:?}",
                        self.settings.connect_timeout
                    ));
                }
                Ok(Err(e)) => return Err(format!("connecting to {addr}: {e}")),
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let open = self.opened(started.elapsed());
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{e:#}"))?;
        // Driven on this thread's runtime; it ends, closing the socket,
        // when the upstream closes or the last sender is dropped.
        // With upgrades, so a `101` hands the connection to a tunnel.
        tokio::spawn(async move {
            let _open = open;
            let _ = conn.with_upgrades().await;
        });
        Ok(Checkout {
            sender,
            reused: false,
        })
    }

    /// Counts a connection made in `took`; the guard counts it open until
    /// it drops.
    fn opened(&self, took: Duration) -> ConnectionGuard {
        self.metrics
            .connect_duration
            .record(took.as_secs_f64(), std::slice::from_ref(&self.labels[0]));
        self.metrics.connections_opened.add(1, &self.labels);
        self.connections.opened()
    }

    fn usable(&self, c: &IdleConnection) -> bool {
        !c.sender.is_closed() && c.since.elapsed() < self.settings.idle_timeout
    }

    /// Keeps a connection whose answer has been read in full for the next
    /// request of this thread, unless enough are kept.
    fn give_back(&self, sender: Sender) {
        if !sender.is_closed() {
            self.idle.push_within(
                IdleConnection {
                    sender,
                    since: Instant::now(),
                },
                self.settings.max_idle,
            );
        }
    }

    /// Closes idle connections past the idle timeout or closed by the
    /// upstream.
    /// Idle connections kept, over all worker threads.
    pub fn max_idle(&self) -> usize {
        self.settings.max_idle
    }

    pub fn sweep(&self) {
        self.idle.retain(|c| self.usable(c));
    }

    /// How often the idle connections are swept.
    pub fn sweep_interval(&self) -> Duration {
        (self.settings.idle_timeout / 4).max(Duration::from_millis(10))
    }
}

/// An upstream response body. On a kept HTTP/1 connection, the connection
/// goes back to its pool once the body has been read to its end; a body
/// dropped before that closes it.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Sender, Arc<InstancePool>)>,
    /// Frames read ahead (for a filter that found the body over its
    /// limit), handed out again before the rest, last first.
    replay: Vec<Bytes>,
}

impl UpstreamBody {
    fn pooled(
        resp: http::Response<Incoming>,
        sender: Sender,
        pool: Arc<InstancePool>,
    ) -> http::Response<UpstreamBody> {
        resp.map(|inner| {
            let mut body = UpstreamBody {
                inner,
                back: Some((sender, pool)),
                replay: Vec::new(),
            };
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    /// A body on a hyper-util connection, which its client keeps.
    pub fn unpooled(inner: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner,
            back: None,
            replay: Vec::new(),
        }
    }

    /// Puts `frames`, read from this body, back in front of what is left.
    pub fn unread(&mut self, mut frames: Vec<Bytes>) {
        frames.reverse();
        self.replay = frames;
    }

    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.give_back(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(data) = self.replay.pop() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let out = Pin::new(&mut self.inner).poll_frame(cx);
        match &out {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            // A failed body's connection is not kept.
            Poll::Ready(Some(Err(_))) => self.back = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.replay.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.replay.is_empty() {
            return self.inner.size_hint();
        }
        let ahead: u64 = self.replay.iter().map(|b| b.len() as u64).sum();
        let rest = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}

/// The pool of one upstream's client: which instance each new connection
/// belongs to. A reload that keeps the client swaps in the new instances.
pub struct PoolStats {
    by_authority: ArcSwap<HashMap<String, Arc<InstancePool>>>,
    upstream: [KeyValue; 1],
    metrics: Arc<Metrics>,
}

impl PoolStats {
    pub fn new(upstream: KeyValue, metrics: Arc<Metrics>) -> PoolStats {
        // Binding creates the series, at zero; it stays after the handle drops.
        drop(
            metrics
                .connect_duration
                .bind(std::slice::from_ref(&upstream)),
        );
        PoolStats {
            by_authority: ArcSwap::from_pointee(HashMap::new()),
            upstream: [upstream],
            metrics,
        }
    }

    /// The instances new connections are counted under, by address.
    pub fn set_instances(&self, instances: impl IntoIterator<Item = (String, Arc<InstancePool>)>) {
        self.by_authority
            .store(Arc::new(instances.into_iter().collect()));
    }

    /// Counts a new connection; the guard counts it open until it drops.
    fn opened(&self, uri: &Uri, took: std::time::Duration) -> Option<ConnectionGuard> {
        let map = self.by_authority.load();
        match uri.authority().and_then(|a| map.get(a.as_str())) {
            Some(inst) => Some(inst.opened(took)),
            None => {
                self.metrics
                    .connect_duration
                    .record(took.as_secs_f64(), &self.upstream);
                None
            }
        }
    }

    /// Counts one answered try on `inst` as a hit or a miss, by the flag
    /// of the connection that carried it.
    pub fn answered(&self, inst: &InstancePool, conn: &ConnectionUse) {
        let fresh = !conn.0.swap(true, Ordering::Relaxed);
        inst.hit_miss[usize::from(fresh)].add(1);
    }
}

/// Whether a connection has carried an answer already; the client puts
/// its connection's flag into every response's extensions.
#[derive(Clone, Default)]
pub struct ConnectionUse(Arc<AtomicBool>);

/// The HTTP connector, counting what it opens, and speaking TLS over
/// what it opens when the upstream says so.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    stats: Arc<PoolStats>,
    tls: Option<UpstreamTls>,
}

/// How an upstream's connections speak TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: tokio_rustls::TlsConnector,
    /// The name verified; each instance's host when None.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// `gateway_tls_upstream_handshake_failures_total`, bound to no label yet.
    pub failures: opentelemetry::metrics::Counter<u64>,
    pub upstream: KeyValue,
    /// How long a handshake may take: the upstream's connect_timeout.
    pub handshake_timeout: Duration,
}

impl CountingConnector {
    pub fn new(
        inner: HttpConnector,
        stats: Arc<PoolStats>,
        tls: Option<UpstreamTls>,
    ) -> CountingConnector {
        CountingConnector { inner, stats, tls }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to an upstream instance, counted open while it lives.
pub struct CountedStream {
    inner: UpstreamStream,
    used: ConnectionUse,
    _open: Option<ConnectionGuard>,
}

enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        match &self.inner {
            UpstreamStream::Plain(s) => s.connected().extra(self.used.clone()),
            UpstreamStream::Tls(s) => {
                let (tcp, session) = s.get_ref();
                let connected = tcp.connected().extra(self.used.clone());
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

/// Delegates each `AsyncRead`/`AsyncWrite` call to the stream inside.
macro_rules! either_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.inner {
            UpstreamStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            UpstreamStream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        either_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        either_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        either_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        either_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        either_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// The handshake failures an upstream with TLS declares at zero: the
/// certificate problems an alert watches for.
pub const DECLARED_TLS_FAILURES: [&str; 3] = ["name-mismatch", "unknown-issuer", "expired"];

/// Why a TLS handshake with an upstream failed, as
/// `gateway_tls_upstream_handshake_failures_total` labels it.
fn upstream_handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
            "name-mismatch"
        }
        Some(E::InvalidCertificate(C::UnknownIssuer)) => "unknown-issuer",
        Some(E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => "expired",
        Some(E::InvalidCertificate(_)) => "bad-certificate",
        Some(E::AlertReceived(_)) => "refused-by-upstream",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(_) => "other",
        None if e.kind() == std::io::ErrorKind::TimedOut => "timeout",
        None => "closed",
    }
}

/// The name a TLS connection to `uri`'s instance verifies.
fn server_name_of(uri: &Uri) -> Option<rustls::pki_types::ServerName<'static>> {
    let host = uri.host()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string()).ok()
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = TokioIo<CountedStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let stats = self.stats.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let started = Instant::now();
            let tcp = inner.call(uri.clone()).await?.into_inner();
            let stream = match tls {
                None => UpstreamStream::Plain(tcp),
                Some(tls) => {
                    let name = tls
                        .server_name
                        .clone()
                        .or_else(|| server_name_of(&uri))
                        .ok_or_else(|| format!("{uri} has no host to verify a certificate for"))?;
                    let handshake = tls.connector.connect(name, tcp);
                    let done = tokio::time::timeout(tls.handshake_timeout, handshake)
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                    match done {
                        Ok(s) => UpstreamStream::Tls(Box::new(s)),
                        Err(e) => {
                            let reason = upstream_handshake_failure(&e);
                            tls.failures
                                .add(1, &[tls.upstream.clone(), KeyValue::new("reason", reason)]);
                            return Err(format!(
                                "TLS handshake with {} failed ({reason}): {e}",
                                uri.authority().map_or("", |a| a.as_str())
                            )
                            .into());
                        }
                    }
                }
            };
            let open = stats.opened(&uri, started.elapsed());
            Ok(TokioIo::new(CountedStream {
                inner: stream,
                used: ConnectionUse::default(),
                _open: open,
            }))
        })
    }
}
