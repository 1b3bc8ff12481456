//! What the connection pool does, counted: each connection opened and how
//! long connecting took, and for each answered try whether it rode a
//! connection that had carried an answer before (a pool hit) or a new one
//! (a miss). Connections are told apart by their local address, which the
//! connector reports with every response; a port the kernel hands out again
//! is forgotten when its new connection opens.

use crate::telemetry::Metrics;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::net::TcpStream;

/// Local addresses remembered per instance; past this the set starts over
/// (counting one miss too many per live connection, once).
const MAX_REMEMBERED: usize = 4096;

pub struct PoolStats {
    by_authority: HashMap<String, usize>,
    used: Vec<Mutex<HashSet<SocketAddr>>>,
    labels: Vec<[KeyValue; 2]>,
    upstream: [KeyValue; 1],
    metrics: Arc<Metrics>,
}

impl PoolStats {
    pub fn new(
        addrs: &[String],
        labels: Vec<[KeyValue; 2]>,
        upstream: KeyValue,
        metrics: Arc<Metrics>,
    ) -> PoolStats {
        for l in &labels {
            for result in ["hit", "miss"] {
                let mut attrs = l.to_vec();
                attrs.push(KeyValue::new("result", result));
                metrics.pool_requests.add(0, &attrs);
            }
        }
        PoolStats {
            by_authority: addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), i))
                .collect(),
            used: addrs.iter().map(|_| Mutex::new(HashSet::new())).collect(),
            labels,
            upstream: [upstream],
            metrics,
        }
    }

    fn opened(&self, uri: &Uri, local: Option<SocketAddr>, took: std::time::Duration) {
        self.metrics
            .connect_duration
            .record(took.as_secs_f64(), &self.upstream);
        let Some(i) = uri
            .authority()
            .and_then(|a| self.by_authority.get(a.as_str()))
        else {
            return;
        };
        self.metrics.connections_opened.add(1, &self.labels[*i]);
        if let Some(local) = local {
            self.used[*i].lock().remove(&local);
        }
    }

    /// Counts one answered try on instance `i` as a hit or a miss.
    pub fn answered(&self, i: usize, local: SocketAddr) {
        let fresh = {
            let mut used = self.used[i].lock();
            if used.len() >= MAX_REMEMBERED {
                used.clear();
            }
            used.insert(local)
        };
        let mut attrs = self.labels[i].to_vec();
        attrs.push(KeyValue::new("result", if fresh { "miss" } else { "hit" }));
        self.metrics.pool_requests.add(1, &attrs);
    }
}

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

impl tower_service::Service<Uri> for CountingConnector {
    type Response = TokioIo<TcpStream>;
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
            let io = inner.call(uri.clone()).await?;
            stats.opened(&uri, io.inner().local_addr().ok(), started.elapsed());
            Ok(io)
        })
    }
}
