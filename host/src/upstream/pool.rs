//! What the connection pool does, counted: each connection opened and how
//! long connecting took, and for each answered try whether it rode a
//! connection that had carried an answer before (a pool hit) or a new one
//! (a miss). Connections are told apart by their local address, which the
//! connector reports with every response; a port the kernel hands out again
//! is forgotten when its new connection opens.

use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
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

/// One instance's connections as the counters see them. Shared across
/// reloads with the connection pool it describes.
pub struct InstancePool {
    used: Mutex<HashSet<SocketAddr>>,
    labels: [KeyValue; 2],
}

impl InstancePool {
    pub fn new(labels: [KeyValue; 2], metrics: &Metrics) -> InstancePool {
        for result in ["hit", "miss"] {
            let mut attrs = labels.to_vec();
            attrs.push(KeyValue::new("result", result));
            metrics.pool_requests.add(0, &attrs);
        }
        InstancePool {
            used: Mutex::new(HashSet::new()),
            labels,
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

    fn opened(&self, uri: &Uri, local: Option<SocketAddr>, took: std::time::Duration) {
        self.metrics
            .connect_duration
            .record(took.as_secs_f64(), &self.upstream);
        let map = self.by_authority.load();
        let Some(inst) = uri.authority().and_then(|a| map.get(a.as_str())) else {
            return;
        };
        self.metrics.connections_opened.add(1, &inst.labels);
        if let Some(local) = local {
            inst.used.lock().remove(&local);
        }
    }

    /// Counts one answered try on `inst` as a hit or a miss.
    pub fn answered(&self, inst: &InstancePool, local: SocketAddr) {
        let fresh = {
            let mut used = inst.used.lock();
            if used.len() >= MAX_REMEMBERED {
                used.clear();
            }
            used.insert(local)
        };
        let mut attrs = inst.labels.to_vec();
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
