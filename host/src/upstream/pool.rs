//! What the connection pool does, counted: each connection opened and how
//! long connecting took, connections open and in use, and for each answered
//! try whether it rode a connection that had carried an answer before (a
//! pool hit) or a new one (a miss). Each connection carries a flag the
//! client copies into every response it answers, so telling the two apart
//! is one atomic swap.

use crate::telemetry::{ConnectionGauge, ConnectionGuard, Metrics};
use arc_swap::ArcSwap;
use http::Uri;
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
use std::time::Instant;
use tokio::net::TcpStream;

/// One instance's connections as the counters see them. Shared across
/// reloads with the connection pool it describes.
pub struct InstancePool {
    labels: [KeyValue; 2],
    /// Answered tries on a reused (`hit`) and a new (`miss`) connection.
    hit_miss: [BoundCounter<u64>; 2],
    /// Connections open and in use, for the scrape.
    pub connections: Arc<ConnectionGauge>,
}

impl InstancePool {
    pub fn new(labels: [KeyValue; 2], metrics: &Metrics) -> InstancePool {
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
        }
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
        self.metrics
            .connect_duration
            .record(took.as_secs_f64(), &self.upstream);
        let map = self.by_authority.load();
        let inst = uri.authority().and_then(|a| map.get(a.as_str()))?;
        self.metrics.connections_opened.add(1, &inst.labels);
        Some(inst.connections.opened())
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

/// The HTTP connector, counting what it opens.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    stats: Arc<PoolStats>,
}

impl CountingConnector {
    pub fn new(inner: HttpConnector, stats: Arc<PoolStats>) -> CountingConnector {
        CountingConnector { inner, stats }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to an upstream instance, counted open while it lives.
pub struct CountedStream {
    inner: TcpStream,
    used: ConnectionUse,
    _open: Option<ConnectionGuard>,
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.used.clone())
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
        Box::pin(async move {
            let started = Instant::now();
            let io = inner.call(uri.clone()).await?.into_inner();
            let open = stats.opened(&uri, started.elapsed());
            Ok(TokioIo::new(CountedStream {
                inner: io,
                used: ConnectionUse::default(),
                _open: open,
            }))
        })
    }
}
