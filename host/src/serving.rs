//! What requests are served with: the [`Gateway`] built from one
//! configuration, and the [`Shared`] handle that swaps it on reload.

use crate::config::{FilterConfig, RetryConfig, ServerConfig, UpstreamConfig};
use crate::plugin::{Filter, LoadedPlugin};
use crate::routing::RouteTable;
use crate::telemetry::{Metrics, RouteMetrics};
use crate::tls::Terminator;
use crate::upstream::{RetryPolicy, Upstream};
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// What one route needs at request time, resolved once at load.
pub struct RouteRuntime {
    pub id: Arc<str>,
    pub label: opentelemetry::Value,
    /// Request instruments bound to this route.
    pub metrics: RouteMetrics,
    pub filters: Vec<Arc<Filter>>,
    pub upstream: Arc<Upstream>,
    pub timeout: Duration,
    pub try_timeout: Duration,
    /// Shared with the next configuration while the route's retry settings
    /// stay the same, so the retry budget carries over a reload.
    pub retry: Option<Arc<RetryPolicy>>,
    /// Protocols a request may upgrade to, lowercase.
    pub upgrades: Vec<String>,
}

/// Keeps a client connection counted (against the limits, and by a
/// graceful shutdown's wait) while something outlives its HTTP exchange:
/// an upgraded connection's tunnel holds it until the tunnel closes. Put
/// into the extensions of requests that ask to upgrade.
#[derive(Clone)]
pub struct ConnectionHold(pub Arc<dyn std::any::Any + Send + Sync>);

/// Everything a request is served with. Replaced whole on reload; requests
/// hold the version they started with.
pub struct Gateway {
    pub server: ServerConfig,
    pub routes: RouteTable,
    pub route_runtime: Vec<RouteRuntime>,
    pub filters: HashMap<String, Arc<Filter>>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub metrics: Arc<Metrics>,
    /// Request instruments for requests no route matched (`route="-"`).
    pub unrouted: RouteMetrics,
    /// Counts the configurations applied since start-up (0 is the first).
    pub generation: u64,
    /// The plugin versions the filters run.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// The files this configuration was read from, which the watcher
    /// follows: plugin files and filters' `config_files`.
    pub plugin_files: Vec<PathBuf>,
    pub config_files: Vec<PathBuf>,
    /// `[server.tls]`'s certificates, keys and client CAs, and the CAs and
    /// client certificates of upstreams' `tls`.
    pub tls_files: Vec<PathBuf>,
    pub plugin_dir: PathBuf,
    /// Handshakes new connections when `[server.tls]` is set.
    pub tls: Option<Arc<Terminator>>,
    /// The TCP routes, by listener.
    pub tcp: crate::l4::Routes,
    /// What was built from which settings, for the next reload to compare.
    pub(crate) built: Built,
}

/// State shared by the listeners.
pub struct Shared {
    current: ArcSwap<Gateway>,
    pub metrics: Arc<Metrics>,
    /// The worker threads are accepting. Until then `/ready` says
    /// `starting`: with a socket handed over at start, the kernel queues
    /// connections before anyone serves them.
    pub serving: AtomicBool,
    /// `/ready` answers 503 and HTTP/1 answers close their connection, so
    /// a load balancer moves traffic away while it is still served.
    pub draining: AtomicBool,
    /// SIGTERM or SIGINT came: draining cannot be undone.
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn new(gw: Gateway, metrics: Arc<Metrics>) -> Shared {
        metrics.set_plugin_versions(plugin_versions(&gw));
        metrics.set_certificates(certificates(&gw));
        Shared {
            current: ArcSwap::from_pointee(gw),
            metrics,
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Makes `gw` the configuration new requests are served with.
    pub fn swap(&self, gw: Gateway) {
        self.metrics.set_plugin_versions(plugin_versions(&gw));
        self.metrics.set_certificates(certificates(&gw));
        self.current.store(Arc::new(gw));
    }
}

fn certificates(gw: &Gateway) -> Vec<(String, i64)> {
    gw.tls
        .as_ref()
        .map(|t| t.certificates.clone())
        .unwrap_or_default()
}

fn plugin_versions(gw: &Gateway) -> Vec<(Arc<str>, String)> {
    gw.plugins
        .iter()
        .map(|p| (p.name.clone(), p.sha256.clone()))
        .collect()
}

/// The settings a gateway was built from, which the next build compares
/// its own with.
#[derive(Default)]
pub struct Built {
    /// Each filter's settings and the content hash of the plugin it ran.
    pub(crate) filters: BTreeMap<String, (FilterConfig, String)>,
    pub(crate) upstreams: BTreeMap<String, UpstreamConfig>,
    /// Each route's retry settings, by route id.
    pub(crate) retries: HashMap<String, RetryConfig>,
    pub(crate) route_ids: Arc<[String]>,
}
