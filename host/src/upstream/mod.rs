//! Upstreams: named groups of instances reached over pooled keep-alive
//! connections. `balancer` picks an instance, `breaker` keeps requests off
//! a failing one, `budget` bounds how much retries may add.

pub mod balancer;
pub mod breaker;
pub mod budget;

use crate::config::UpstreamConfig;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

pub struct Upstream {
    pub name: Arc<str>,
    instances: Vec<String>,
    next: AtomicUsize,
    pub client: UpstreamClient,
}

impl Upstream {
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout.0));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout.0)
            .pool_max_idle_per_host(cfg.max_idle_per_instance)
            .build(connector);
        Upstream {
            name: name.into(),
            instances: cfg.instances.get_ref().clone(),
            next: AtomicUsize::new(0),
            client,
        }
    }

    /// The next instance, in turn.
    pub fn pick(&self) -> &str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
        &self.instances[i]
    }

    /// The absolute URI for sending `origin` (path and query) to `instance`.
    pub fn uri_for(&self, instance: &str, origin: &http::Uri) -> Option<http::Uri> {
        let pq = origin.path_and_query().map_or("/", |p| p.as_str());
        http::Uri::builder()
            .scheme("http")
            .authority(instance)
            .path_and_query(pq)
            .build()
            .ok()
    }
}
