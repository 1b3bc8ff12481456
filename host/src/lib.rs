//! An API gateway whose request filters are WebAssembly components.
//!
//! `config` reads the TOML, `routing` normalises paths and picks routes,
//! `proxy` runs the request pipeline, `plugin` hosts the filters,
//! `upstream` forwards, `state` keeps plugins' shared counters, `telemetry`
//! counts, `server` and `admin` listen, `reload` swaps in new
//! configurations and plugin versions while serving.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod echo;
pub mod edge;
pub mod listeners;
pub mod per_worker;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;

use anyhow::Context;
use arc_swap::ArcSwap;
use config::{Config, ServerConfig};
use plugin::{Filter, LoadedPlugin, Runtime};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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
    /// Request instruments bound to this route.
    pub metrics: telemetry::RouteMetrics,
    pub filters: Vec<Arc<Filter>>,
    pub upstream: Arc<Upstream>,
    pub timeout: Duration,
    pub try_timeout: Duration,
    /// Shared with the next configuration while the route's retry settings
    /// stay the same, so the retry budget carries over a reload.
    pub retry: Option<Arc<upstream::RetryPolicy>>,
    retry_config: Option<config::RetryConfig>,
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
    /// Request instruments for requests no route matched (`route="-"`).
    pub unrouted: telemetry::RouteMetrics,
    /// Counts the configurations applied since start-up (0 is the first).
    pub generation: u64,
    /// The plugin versions the filters run.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// The files this configuration was read from, which the watcher
    /// follows: plugin files and filters' `config_files`.
    pub plugin_files: Vec<PathBuf>,
    pub config_files: Vec<PathBuf>,
    pub plugin_dir: PathBuf,
    /// What was built from which settings, for the next reload to compare.
    filter_configs: BTreeMap<String, config::FilterConfig>,
    upstream_configs: BTreeMap<String, config::UpstreamConfig>,
    route_ids: Arc<[String]>,
}

impl Gateway {
    /// Loads every plugin, configures every filter and resolves every route.
    /// With `previous` (a reload), what did not change is taken from it; see
    /// the `reload` module.
    pub async fn build(
        config: Config,
        runtime: &Runtime,
        metrics: Arc<Metrics>,
        cache: &mut reload::PluginCache,
        previous: Option<&Gateway>,
    ) -> Result<(Gateway, reload::BuildReport), plugin::PluginError> {
        let mut report = reload::BuildReport::default();
        let mut plugins: BTreeMap<String, Arc<LoadedPlugin>> = BTreeMap::new();
        let mut filters: HashMap<String, Arc<Filter>> = HashMap::new();
        let route_ids: Arc<[String]> = config
            .routes
            .iter()
            .map(|r| r.id.get_ref().clone())
            .collect();
        let route_ids = match previous {
            Some(p) if p.route_ids == route_ids => p.route_ids.clone(),
            _ => route_ids,
        };
        for (name, fc) in &config.filters {
            let plugin_name = fc.plugin.get_ref();
            let plugin = match plugins.get(plugin_name) {
                Some(p) => p.clone(),
                None => {
                    let (p, compiled) = cache
                        .get(runtime, plugin_name, &config.plugin_path(plugin_name))
                        .await?;
                    if compiled {
                        report.plugins_compiled.push(plugin_name.clone());
                    } else {
                        report.plugins_reused.push(plugin_name.clone());
                    }
                    plugins.insert(plugin_name.clone(), p.clone());
                    p
                }
            };
            let kept = previous.and_then(|p| {
                let f = p.filters.get(name)?;
                (Arc::ptr_eq(&f.plugin, &plugin)
                    && p.filter_configs.get(name) == Some(fc)
                    && Arc::ptr_eq(&p.route_ids, &route_ids))
                .then(|| f.clone())
            });
            let filter = match kept {
                Some(f) => {
                    report.filters_kept.push(name.clone());
                    f
                }
                None => {
                    report.filters_configured.push(name.clone());
                    Arc::new(
                        runtime
                            .filter(name, plugin, fc, &config.base_dir, route_ids.clone())
                            .await?,
                    )
                }
            };
            filters.insert(name.clone(), filter);
        }
        // Upstreams last: nothing after this can fail, so a refused reload
        // never starts a health checker.
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        for (n, u) in &config.upstreams {
            let before =
                previous.and_then(|p| Some((p.upstreams.get(n)?, p.upstream_configs.get(n)?)));
            let up = match before {
                Some((up, cfg)) if cfg == u => {
                    report.upstreams_kept.push(n.clone());
                    up.clone()
                }
                _ => {
                    if before.is_some() {
                        report.upstreams_renewed.push(n.clone());
                    }
                    let up = Arc::new(Upstream::renewed(
                        n,
                        u,
                        metrics.clone(),
                        before.map(|(up, cfg)| (&**up, cfg)),
                    ));
                    up.start_tasks();
                    up
                }
            };
            upstreams.insert(n.clone(), up);
        }
        let route_runtime = config
            .routes
            .iter()
            .map(|r| {
                let id: Arc<str> = r.id.get_ref().as_str().into();
                let retry_config = r.retry.as_ref().map(|c| c.get_ref().clone());
                let kept_retry = previous.and_then(|p| {
                    p.route_runtime
                        .iter()
                        .find(|old| old.id == id && old.retry_config == retry_config)
                        .and_then(|old| old.retry.clone())
                });
                let label = telemetry::shared(&id);
                let methods: Vec<&'static str> = match &r.methods {
                    Some(ms) => ms
                        .iter()
                        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                        .map(|m| telemetry::method_label(&m))
                        .collect(),
                    None => vec!["GET"],
                };
                if retry_config.is_some() {
                    metrics.declare_retries(&label);
                }
                RouteRuntime {
                    metrics: telemetry::RouteMetrics::new(&metrics, label.clone(), &methods),
                    label,
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
                    retry: kept_retry.or_else(|| {
                        retry_config
                            .as_ref()
                            .map(|c| Arc::new(upstream::RetryPolicy::new(c)))
                    }),
                    retry_config,
                }
            })
            .collect();
        let plugin_files = plugins.keys().map(|p| config.plugin_path(p)).collect();
        let plugin_dir = config.base_dir.join(&config.plugins.dir);
        let config_files = config
            .filters
            .values()
            .flat_map(|f| f.config_files.values())
            .map(|p| config.base_dir.join(p.get_ref()))
            .collect();
        let Config {
            server,
            filters: filter_configs,
            upstreams: upstream_configs,
            routes,
            ..
        } = config;
        Ok((
            Gateway {
                routes: routing::RouteTable::new(&routes),
                route_runtime,
                filters,
                upstreams,
                unrouted: telemetry::RouteMetrics::new(
                    &metrics,
                    opentelemetry::Value::from(proxy::NO_ROUTE),
                    &["GET"],
                ),
                metrics,
                server,
                generation: 0,
                plugins: plugins.into_values().collect(),
                plugin_files,
                config_files,
                plugin_dir,
                filter_configs,
                upstream_configs,
                route_ids,
            },
            report,
        ))
    }
}

/// State shared by the listeners.
pub struct Shared {
    current: ArcSwap<Gateway>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
}

impl Shared {
    pub fn new(gw: Gateway, metrics: Arc<Metrics>) -> Shared {
        metrics.set_plugin_versions(plugin_versions(&gw));
        Shared {
            current: ArcSwap::from_pointee(gw),
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Makes `gw` the configuration new requests are served with.
    pub fn swap(&self, gw: Gateway) {
        self.metrics.set_plugin_versions(plugin_versions(&gw));
        self.current.store(Arc::new(gw));
    }
}

fn plugin_versions(gw: &Gateway) -> Vec<(Arc<str>, String)> {
    gw.plugins
        .iter()
        .map(|p| (p.name.clone(), p.sha256.clone()))
        .collect()
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
    let mut cache = reload::PluginCache::default();
    let (gw, _) = Gateway::build(config, &runtime, metrics, &mut cache, None).await?;
    Ok(format!(
        "configuration OK: {} routes, {} filters loaded",
        routes,
        gw.filters.len()
    ))
}

/// `gateway plugin check FILE`: whether the file is a filter this gateway
/// can load. `Ok` describes it; `Err` says what is missing or mismatched.
pub fn check_plugin_file(path: &std::path::Path) -> anyhow::Result<Result<String, String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("cannot read {}: {e}", path.display()))),
    };
    let metrics = Arc::new(Metrics::new(
        &config::MetricsConfig::default().duration_buckets,
    )?);
    let runtime = Runtime::new(metrics)?;
    Ok(match runtime.check_plugin(&bytes) {
        Ok(fit) => Ok(format!("{}: {fit}", path.display())),
        Err(why) => Err(format!("{} is not a filter plugin: {why}", path.display())),
    })
}

/// `gateway plugin componentize MODULE -o OUT`: a core module (binary or
/// WAT) written against the world `plugin`, made a component.
pub fn componentize_file(module: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let component = plugin::inspect::componentize(&bytes)
        .map_err(|why| anyhow::anyhow!("{}: {why}", module.display()))?;
    std::fs::write(out, component).with_context(|| format!("cannot write {}", out.display()))
}

/// `gateway run`: serve until SIGTERM or SIGINT, then drain; reload on
/// file changes, SIGHUP and `POST /admin/reload`.
pub async fn run(source: ConfigSource, inherited: listeners::Inherited) -> anyhow::Result<()> {
    let config = load_config(&source)?;
    let metrics = Arc::new(Metrics::new(&config.metrics.duration_buckets)?);
    let state = Arc::new(state::State::from_config(&config.state, metrics.clone()));
    tracing::info!("plugin state in {}", state.backend());
    let runtime = Arc::new(Runtime::with_state(metrics.clone(), state)?);
    metrics.start_outputs(&config)?;
    let listen = config.server.listen;
    let workers = config.server.worker_count();
    let grace = config.server.shutdown_grace.0;
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let echo_listen = config.echo.as_ref().map(|e| e.listen);

    // The echo upstream starts first so the gateway never forwards to a
    // port nobody has opened yet.
    if let Some(addr) = echo_listen {
        let l = listeners::listen(inherited.echo, addr, "[echo]").await?;
        tracing::info!("echo upstream on {}", l.local_addr()?);
        tokio::spawn(echo::serve(l));
    }
    let reloader =
        reload::Reloader::start(source, config, runtime.clone(), metrics.clone()).await?;
    let shared = reloader.shared.clone();

    let listener = listeners::listen(inherited.server, listen, "[server]").await?;
    tracing::info!("gateway listening on {}", listener.local_addr()?);
    if let Some(addr) = admin_listen {
        let l = listeners::listen(inherited.admin, addr, "[admin]").await?;
        tracing::info!("admin listening on {}", l.local_addr()?);
        tokio::spawn(admin::serve(l, reloader.clone()));
    }
    let watcher = tokio::spawn(reloader.clone().watch());
    let hangups = {
        let reloader = reloader.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading");
                let _ = reloader.reload("sighup").await;
            }
        })
    };

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
    tracing::info!("{workers} worker thread(s) serving connections");
    server::serve(listener, workers, shared, stop_rx, grace)
        .await
        .context("cannot start the worker threads")?;
    signals.abort();
    hangups.abort();
    watcher.abort();
    drop(reloader);
    drop(runtime);
    // Queued spans go out before the process ends.
    if metrics.tracing.get().is_some() {
        let m = metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = m.tracing.get() {
                t.shutdown()
            }
        })
        .await;
    }
    Ok(())
}
