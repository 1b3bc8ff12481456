//! An API gateway whose request filters are WebAssembly components.
//!
//! `config` reads the TOML, `routing` normalises paths and picks routes,
//! `proxy` runs the request pipeline, `plugin` hosts the filters,
//! `upstream` forwards, `state` keeps plugins' shared counters, `telemetry`
//! counts, `server` and `admin` listen.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod echo;
pub mod plugin;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;

use anyhow::Context;
use arc_swap::ArcSwap;
use config::{Config, ServerConfig};
use plugin::{Filter, LoadedPlugin, Runtime};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use telemetry::Metrics;
use upstream::Upstream;

pub mod clock {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    /// Nanoseconds since the first call in this process; never goes back.
    pub fn monotonic_ns() -> u64 {
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// What one route needs at request time, resolved once at load.
pub struct RouteRuntime {
    pub id: Arc<str>,
    pub label: opentelemetry::Value,
    pub filters: Vec<Arc<Filter>>,
    pub upstream: Arc<Upstream>,
    pub timeout: Duration,
    pub try_timeout: Duration,
    pub retry: Option<upstream::RetryPolicy>,
}

/// Everything a request is served with. Replaced whole on reload; requests
/// hold the version they started with.
pub struct Gateway {
    pub server: ServerConfig,
    pub routes: routing::RouteTable,
    pub route_runtime: Vec<RouteRuntime>,
    pub filters: HashMap<String, Arc<Filter>>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// Loads every plugin, configures every filter and resolves every route.
    pub async fn build(
        config: Config,
        runtime: &Runtime,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Gateway> {
        let mut plugins: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        let mut filters: HashMap<String, Arc<Filter>> = HashMap::new();
        let route_ids: Arc<[String]> = config
            .routes
            .iter()
            .map(|r| r.id.get_ref().clone())
            .collect();
        for (name, fc) in &config.filters {
            let plugin_name = fc.plugin.get_ref();
            let plugin = match plugins.get(plugin_name) {
                Some(p) => p.clone(),
                None => {
                    let p = runtime.load(plugin_name, &config.plugin_path(plugin_name))?;
                    plugins.insert(plugin_name.clone(), p.clone());
                    p
                }
            };
            filters.insert(
                name.clone(),
                Arc::new(runtime.filter(name, plugin, fc, route_ids.clone()).await?),
            );
        }
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(n, u)| (n.clone(), Arc::new(Upstream::new(n, u, metrics.clone()))))
            .collect();
        for u in upstreams.values() {
            u.start_health_checks();
        }
        let route_runtime = config
            .routes
            .iter()
            .map(|r| {
                let id: Arc<str> = r.id.get_ref().as_str().into();
                RouteRuntime {
                    label: telemetry::shared(&id),
                    id,
                    filters: r
                        .filters
                        .iter()
                        .map(|f| filters[f.get_ref()].clone())
                        .collect(),
                    upstream: upstreams[r.upstream.get_ref()].clone(),
                    timeout: r.timeout.unwrap_or(config.server.request_timeout).0,
                    try_timeout: r
                        .try_timeout
                        .or(r.timeout)
                        .unwrap_or(config.server.request_timeout)
                        .0,
                    retry: r
                        .retry
                        .as_ref()
                        .map(|c| upstream::RetryPolicy::new(c.get_ref())),
                }
            })
            .collect();
        Ok(Gateway {
            routes: routing::RouteTable::new(&config.routes),
            route_runtime,
            filters,
            upstreams,
            metrics,
            server: config.server,
        })
    }
}

/// State shared by the listeners.
pub struct Shared {
    current: ArcSwap<Gateway>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
}

impl Shared {
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }
}

/// Where the config came from: a file, or the copy built into the binary.
pub enum ConfigSource {
    File(std::path::PathBuf),
    Embedded,
}

pub fn load_config(source: &ConfigSource) -> Result<Config, config::ConfigError> {
    match source {
        ConfigSource::File(p) => Config::load(p),
        ConfigSource::Embedded => Config::parse(
            "<embedded config/gateway.toml>",
            config::EMBEDDED_DEFAULT,
            std::path::PathBuf::from("config"),
            &|k| std::env::var(k).ok(),
        ),
    }
}

/// `gateway check`: parse, validate and load every plugin, then stop.
pub async fn check(source: &ConfigSource) -> anyhow::Result<String> {
    let config = load_config(source)?;
    let metrics = Arc::new(Metrics::new(&config.metrics.duration_buckets)?);
    let state = Arc::new(state::State::from_config(&config.state, metrics.clone()));
    let runtime = Runtime::with_state(metrics.clone(), state)?;
    let routes = config.routes.len();
    let gw = Gateway::build(config, &runtime, metrics).await?;
    Ok(format!(
        "configuration OK: {} routes, {} filters loaded",
        routes,
        gw.filters.len()
    ))
}

/// `gateway run`: serve until SIGTERM or SIGINT, then drain.
pub async fn run(source: ConfigSource) -> anyhow::Result<()> {
    let config = load_config(&source)?;
    let metrics = Arc::new(Metrics::new(&config.metrics.duration_buckets)?);
    let state = Arc::new(state::State::from_config(&config.state, metrics.clone()));
    tracing::info!("plugin state in {}", state.backend());
    let runtime = Runtime::with_state(metrics.clone(), state)?;
    let listen = config.server.listen;
    let grace = config.server.shutdown_grace.0;
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let echo_listen = config.echo.as_ref().map(|e| e.listen);

    // The echo upstream starts first so the gateway never forwards to a
    // port nobody has opened yet.
    if let Some(addr) = echo_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for [echo]"))?;
        tracing::info!("echo upstream on {}", l.local_addr()?);
        tokio::spawn(echo::serve(l));
    }
    let gw = Gateway::build(config, &runtime, metrics.clone()).await?;
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(gw),
        metrics,
        draining: AtomicBool::new(false),
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for [server]"))?;
    tracing::info!("gateway listening on {}", listener.local_addr()?);
    if let Some(addr) = admin_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for [admin]"))?;
        tracing::info!("admin listening on {}", l.local_addr()?);
        tokio::spawn(admin::serve(l, shared.clone()));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = {
        let shared = shared.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let name = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
            tracing::info!("{name} received; draining");
            shared
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = stop_tx.send(true);
        })
    };
    server::serve(listener, shared, stop_rx, grace).await;
    signals.abort();
    drop(runtime);
    Ok(())
}
