//! The wasm runtime: one engine for the process, plugins compiled once into
//! pre-instantiated components, and per filter a pool of warm instances
//! that every call borrows under a deadline and a memory limit.
//!
//! A failed call (trap, deadline, memory limit, invalid answer) discards the
//! instance it ran on; the next call gets a fresh one. The caller applies
//! the filter's failure policy.

pub mod bindings;
pub mod compile_cache;
pub mod host;
pub mod host_v2;
pub mod inspect;
pub mod oci;
mod output;

use crate::config::{FailurePolicy, FilterConfig, Isolation};
use crate::per_worker::PerWorker;
use crate::state::State;
use crate::telemetry::{FilterMetrics, Metrics, Phase, escape, shared};
use bindings::{Action, Reply, v1, v2};
use compile_cache::CompileCache;
use host::{HostState, Needs, RequestInfo, RequestState, ResponseState};
use opentelemetry::KeyValue;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap, UpdateDeadline};

pub use crate::build_info::{EXPORT_INTERFACE, WASMTIME_VERSION, WIT_PACKAGE};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Table entries (function references) one table may hold: what the
/// pooling allocator reserves per table by default, so an instance meets the
/// same limit whichever allocator runs it. Growth past it counts as a
/// memory failure.
const MAX_TABLE_ELEMENTS: usize = 20_000;
/// Instantiation and `configure` run under this deadline rather than the
/// per-call one: a plugin's start-up may legitimately take longer.
const SETUP_DEADLINE: Duration = Duration::from_secs(2);
/// How much later than its epoch deadline a call blocked outside wasm is
/// ended.
const WALL_DEADLINE_SLACK: Duration = Duration::from_millis(10);

/// Why a plugin could not be loaded or a filter configured; each names the
/// plugin it concerns, for the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {source}")]
    Read {
        plugin: Arc<str>,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Compile {
        plugin: Arc<str>,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} does not match the gateway:filter world: {reason}")]
    World {
        plugin: Arc<str>,
        path: PathBuf,
        reason: String,
    },
    /// The file's hash is not the one a filter pins: where the pin is,
    /// which hash it wants and which the file has.
    #[error("{reason}")]
    Unpinned { plugin: Arc<str>, reason: String },
    #[error("filter `{filter}` could not start: {reason}")]
    Instantiate {
        plugin: Arc<str>,
        filter: String,
        reason: String,
    },
    #[error(
        "{}filter `{filter}` refused its configuration: {reason}",
        .at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default()
    )]
    Configure {
        plugin: Arc<str>,
        filter: String,
        reason: String,
        /// `FILE:LINE:COL` of the setting refused, when the filter named it.
        at: Option<String>,
    },
}

impl PluginError {
    /// The plugin the error is about.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Read { plugin, .. }
            | PluginError::Compile { plugin, .. }
            | PluginError::World { plugin, .. }
            | PluginError::Unpinned { plugin, .. }
            | PluginError::Instantiate { plugin, .. }
            | PluginError::Configure { plugin, .. } => plugin,
        }
    }
}

/// Why one call failed, with the label it is counted under.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: &'static str,
    pub detail: String,
}

/// The process-wide wasm runtime.
pub struct Runtime {
    engine: Engine,
    /// Whether instances come from the pooling allocator (else on demand).
    pub pooling: bool,
    guards: Guards,
    linker: Linker<HostState>,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    ticker_stop: Arc<AtomicBool>,
    /// Whether the epoch ticker runs.
    ticker: Mutex<bool>,
    /// Threads of their own for making and configuring instances, so a
    /// plugin whose start-up loops or crawls never holds a thread that
    /// serves requests.
    setup: Option<tokio::runtime::Runtime>,
    setup_handle: tokio::runtime::Handle,
    /// Compiled plugins kept on disk across restarts, where one is used.
    compile_cache: Option<Arc<CompileCache>>,
    /// The clusters filters' outbound calls go to: the serving
    /// configuration's, replaced with it.
    clusters: Arc<host_v2::Clusters>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        // Dropping a tokio runtime blocks, which an async caller may not do;
        // its threads end on their own once their tasks yield.
        if let Some(rt) = self.setup.take() {
            rt.shutdown_background();
        }
    }
}

/// Threads that make instances: two, so one slow start-up does not hold
/// every other filter's.
const SETUP_THREADS: usize = 2;
/// Instances one filter may be making at once; further requests for a fresh
/// instance wait for these rather than start more.
const SETUP_PER_FILTER: usize = 2;
/// After a failed start-up, a filter's next attempt waits this long,
/// doubling with each further failure up to `SETUP_BACKOFF_MAX`.
const SETUP_BACKOFF_MIN: Duration = Duration::from_millis(100);
const SETUP_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Most instances a pooled filter makes ahead when it is loaded.
const POOLED_AHEAD: usize = 4;
/// A suspended filter's first pause, doubling with each suspension in a
/// row up to the last.
const SUSPEND_FIRST: Duration = Duration::from_secs(1);
const SUSPEND_MAX: Duration = Duration::from_secs(60);

/// A filter that fails call after call (a crash loop: every call traps,
/// and every trap costs a new instance) is suspended for a while: its
/// failure policy answers at once, and no instance is made. After the
/// pause one failure is enough to suspend it again, for twice as long; one
/// good call ends it.
#[derive(Default)]
pub struct CrashGuard {
    /// Failed calls since the last good one.
    failures_in_a_row: AtomicU32,
    /// Until when calls are refused, on `crate::clock`'s scale (0: not).
    suspended_until_ns: AtomicU64,
    /// Suspensions since the last good call: the next pause's doubling, and
    /// whether a single failure suspends again.
    suspensions: AtomicU32,
}

impl CrashGuard {
    /// Why a call may not run now, when the filter is suspended.
    fn refusal(&self, now_ns: u64) -> Option<String> {
        let until = self.suspended_until_ns.load(Ordering::Relaxed);
        (now_ns < until).then(|| {
            format!(
                "suspended after failing call after call; calls resume in {} ms",
                (until - now_ns) / 1_000_000
            )
        })
    }

    fn succeeded(&self) {
        // Loads first: the common case writes nothing.
        if self.failures_in_a_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_a_row.store(0, Ordering::Relaxed);
        }
        if self.suspensions.load(Ordering::Relaxed) != 0 {
            self.suspensions.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; answers the pause when this one suspends the
    /// filter.
    fn failed(&self, suspend_after: u32, now_ns: u64) -> Option<Duration> {
        if suspend_after == 0 {
            return None;
        }
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let on_probation = self.suspensions.load(Ordering::Relaxed) > 0;
        if in_a_row < suspend_after && !on_probation {
            return None;
        }
        // Racing failures suspend once: the one that moves the deadline.
        let until = self.suspended_until_ns.load(Ordering::Relaxed);
        if now_ns < until {
            return None;
        }
        let doublings = self.suspensions.fetch_add(1, Ordering::Relaxed).min(6);
        let pause = SUSPEND_FIRST
            .saturating_mul(1 << doublings)
            .min(SUSPEND_MAX);
        let next = now_ns.saturating_add(pause.as_nanos() as u64);
        self.suspended_until_ns
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        Some(pause)
    }

    /// Whether the filter is suspended now, and until when (wall clock).
    pub fn suspended_until(&self) -> Option<std::time::SystemTime> {
        let now = crate::clock::monotonic_ns();
        let until = self.suspended_until_ns.load(Ordering::Relaxed);
        (now < until).then(|| std::time::SystemTime::now() + Duration::from_nanos(until - now))
    }
}

/// The limits every call runs under. Both are always on in the gateway;
/// turning them off exists to measure what they cost (`cargo bench --bench
/// sandbox`).
#[derive(Debug, Clone, Copy)]
pub struct Guards {
    /// Interrupt a call at its deadline.
    pub deadlines: bool,
    /// Cap each instance's linear memory.
    pub memory_limits: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            deadlines: true,
            memory_limits: true,
        }
    }
}

fn engine_config(pooling: bool, guards: Guards) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true);
    // Deadlines without per-instruction fuel accounting: generated code only
    // checks a counter that one ticker thread advances.
    cfg.epoch_interruption(guards.deadlines);
    if pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // Instances in use at once are bounded by worker threads times chain
        // length, plus each filter's warm set; these totals leave room for
        // a few dozen filters with their default warm counts.
        pool.total_component_instances(1_000);
        pool.total_core_instances(4_000);
        pool.total_memories(1_000);
        pool.total_tables(4_000);
        // The largest memory a filter may be configured with; slots reserve
        // address space, not memory.
        pool.max_memory_size(crate::config::MAX_MEMORY_LIMIT_MIB as usize * 1024 * 1024);
        // Keep a little of each freed slot's memory resident so reusing it is
        // cheap, and decommit the rest.
        pool.linear_memory_keep_resident(64 * 1024);
        pool.table_keep_resident(16 * 1024);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

impl Runtime {
    /// A runtime whose filters share in-memory state.
    pub fn new(metrics: Arc<Metrics>) -> anyhow::Result<Runtime> {
        let state = Arc::new(State::memory(metrics.clone()));
        Runtime::with_state(metrics, state)
    }

    pub fn with_state(metrics: Arc<Metrics>, state: Arc<State>) -> anyhow::Result<Runtime> {
        Runtime::with_guards(metrics, state, Guards::default())
    }

    pub fn with_guards(
        metrics: Arc<Metrics>,
        state: Arc<State>,
        guards: Guards,
    ) -> anyhow::Result<Runtime> {
        // The pooling allocator reserves address space up front; where that
        // is refused (small virtual memory limits), fall back to on-demand
        // allocation rather than refuse to start.
        let (engine, pooling) = match Engine::new(&engine_config(true, guards)) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(
                    "pooling allocator unavailable ({e:#}); allocating instances on demand"
                );
                (Engine::new(&engine_config(false, guards))?, false)
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        v1::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        v2::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let setup = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SETUP_THREADS)
            .thread_name("filter-setup")
            .enable_all()
            .build()?;
        let setup_handle = setup.handle().clone();
        Ok(Runtime {
            engine,
            pooling,
            guards,
            linker,
            metrics,
            state,
            ticker_stop,
            ticker: Mutex::new(false),
            setup: Some(setup),
            setup_handle,
            compile_cache: None,
            clusters: Default::default(),
        })
    }

    /// Keeps compiled plugins in `dir` (see `compile_cache`). A directory
    /// that cannot be used is logged and the runtime compiles every time.
    pub fn use_compile_cache(&mut self, dir: &Path) {
        match CompileCache::open(dir, &self.engine) {
            Ok(c) => {
                tracing::info!("compiled plugins are kept in {}", dir.display());
                self.compile_cache = Some(Arc::new(c));
            }
            Err(why) => {
                tracing::warn!("no compile cache: {why}; plugins are compiled at every start")
            }
        }
    }

    pub fn compile_cache(&self) -> Option<&CompileCache> {
        self.compile_cache.as_deref()
    }

    /// Compiles a component, or loads it from the compile cache.
    fn component(
        engine: &Engine,
        cache: Option<&CompileCache>,
        binary: &[u8],
    ) -> wasmtime::Result<Component> {
        match cache {
            Some(c) => c.component(engine, binary),
            None => Component::new(engine, binary),
        }
    }

    /// Starts advancing the epoch, which call deadlines count. Not before
    /// the first filter: a gateway without filters has no thread waking
    /// every tick.
    fn start_ticker(&self) -> std::io::Result<()> {
        let mut started = self.ticker.lock();
        if !*started {
            let (e, stop) = (self.engine.clone(), self.ticker_stop.clone());
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        e.increment_epoch();
                    }
                })?;
            *started = true;
        }
        Ok(())
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where filters' outbound calls find their clusters; the assembler
    /// replaces them with each configuration's.
    pub fn clusters(&self) -> &Arc<host_v2::Clusters> {
        &self.clusters
    }

    /// `gateway plugin check`: whether `bytes` are a component this gateway
    /// can load as a filter, and if not, why in plain words.
    pub fn check_plugin(&self, bytes: &[u8]) -> Result<inspect::Fit, String> {
        inspect::check(&self.engine, &self.linker, bytes, |binary| {
            Runtime::component(&self.engine, self.compile_cache(), binary)
        })
    }

    /// Compiles a plugin file and checks it against the world.
    pub fn load(&self, name: &str, path: &Path) -> Result<Arc<LoadedPlugin>, PluginError> {
        let bytes = read_plugin(name, path)?;
        self.load_bytes(name, path, &bytes)
    }

    pub fn load_bytes(
        &self,
        name: &str,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let component = inspect::component_binary(bytes)
            .map_err(wasmtime::Error::msg)
            .and_then(|binary| {
                Ok((
                    Runtime::component(&self.engine, self.compile_cache(), &binary)?,
                    inspect::declared_phases(&binary),
                ))
            });
        self.prepare(name, path, content_hash(bytes), component)
    }

    /// Like `load_bytes`, but compiles on a blocking thread: compiling takes
    /// tens to hundreds of milliseconds, which must not stall the async
    /// workers serving requests during a reload.
    pub async fn compile(
        &self,
        name: &str,
        path: &Path,
        bytes: Vec<u8>,
        sha256: String,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let engine = self.engine.clone();
        let cache = self.compile_cache.clone();
        let component = tokio::task::spawn_blocking(move || {
            let binary = inspect::component_binary(&bytes).map_err(wasmtime::Error::msg)?;
            Ok((
                Runtime::component(&engine, cache.as_deref(), &binary)?,
                inspect::declared_phases(&binary),
            ))
        })
        .await
        .unwrap_or_else(|e| Err(wasmtime::Error::msg(format!("compiler thread: {e}"))));
        self.prepare(name, path, sha256, component)
    }

    fn prepare(
        &self,
        name: &str,
        path: &Path,
        sha256: String,
        component: wasmtime::Result<(Component, inspect::Phases)>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let (component, phases) = component.map_err(|e| PluginError::Compile {
            plugin: name.into(),
            path: path.into(),
            reason: escape(&format!("{e:#}")).into_owned(),
        })?;
        // The interface a component exports says its version.
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(|pre| match v2::PluginPre::new(pre.clone()) {
                Ok(p) => Ok(Pre::V2(p)),
                Err(_) => v1::PluginPre::new(pre).map(Pre::V1),
            })
            .map_err(|e| PluginError::World {
                plugin: name.into(),
                path: path.into(),
                // The same words `gateway plugin check` gives, or the
                // linker's own where they find nothing to say.
                reason: match inspect::check_component(&self.engine, &self.linker, &component) {
                    Err(words) => escape(&words).into_owned(),
                    Ok(_) => escape(&format!("{e:#}")).into_owned(),
                },
            })?;
        Ok(Arc::new(LoadedPlugin {
            name: name.into(),
            path: path.into(),
            sha256,
            loaded_at: std::time::SystemTime::now(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            phases,
            pre,
        }))
    }

    /// A filter: a loaded plugin with its settings. One instance is created
    /// and configured now, so a bad configuration is refused at load.
    /// `route_ids` are the configuration's routes, which `configure` may
    /// check its settings against.
    pub async fn filter(
        &self,
        name: &str,
        plugin: Arc<LoadedPlugin>,
        cfg: &FilterConfig,
        base_dir: &Path,
        route_ids: Arc<[String]>,
    ) -> Result<Filter, PluginError> {
        self.start_ticker().map_err(|e| PluginError::Instantiate {
            plugin: plugin.name.clone(),
            filter: name.to_string(),
            reason: format!("the epoch ticker thread could not start: {e}"),
        })?;
        let config_json = serde_json::to_string(&cfg.config).expect("a TOML table is valid JSON");
        let name: Arc<str> = name.into();
        self.metrics.declare_filter(&name, &plugin.name);
        let attrs = |phase: &'static str| {
            [
                KeyValue::new("filter", shared(&name)),
                KeyValue::new("plugin", shared(&plugin.name)),
                KeyValue::new("phase", phase),
            ]
        };
        let (attrs_request, attrs_response) = (attrs("request"), attrs("response"));
        let memory_limit = cfg.memory_limit_mib.get() as usize * 1024 * 1024;
        let maker = Arc::new(Maker {
            name: name.clone(),
            plugin: plugin.clone(),
            config_json,
            memory_limit,
            max_warm: cfg.instances,
            isolation: cfg.isolation,
            grants: host::Grants {
                // Variables missing from the gateway's environment are simply
                // absent for the filter too.
                env: cfg
                    .env
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
                    .collect(),
                dirs: cfg
                    .dirs
                    .iter()
                    .map(|(guest, host)| (base_dir.join(host), guest.clone()))
                    .collect(),
            },
            guards: self.guards,
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            state_owner: self.state.owner(&name, {
                let d = self.state.default_quota();
                crate::state::Quota {
                    max_entries: cfg.state_max_entries.unwrap_or(d.max_entries),
                    max_bytes: cfg.state_max_bytes.unwrap_or(d.max_bytes),
                    max_window: cfg.state_max_window.map_or(d.max_window, |w| w.0),
                }
            }),
            log: host::LogPolicy {
                level: cfg.log_level,
                quota: Arc::new(crate::telemetry::log_limit::LogQuota::new(
                    host::MAX_LOG_LINES_PER_SECOND,
                )),
            },
            route_ids,
            body_limits: (cfg.request_body_limit, cfg.response_body_limit),
            needs: std::sync::OnceLock::new(),
            callouts: (!cfg.callouts.is_empty()).then(|| {
                Arc::new(host_v2::Callouts::new(
                    name.clone(),
                    cfg.callouts.clone(),
                    cfg.callout_timeout.0,
                    cfg.callout_body_limit,
                    self.clusters.clone(),
                    self.metrics.clone(),
                ))
            }),
            warm: PerWorker::default(),
            replenishing: AtomicBool::new(false),
            permits: tokio::sync::Semaphore::new(SETUP_PER_FILTER),
            waiting: AtomicUsize::new(0),
            returned: tokio::sync::Notify::new(),
            backoff: Mutex::new(Backoff::default()),
            setup: self.setup_handle.clone(),
        });
        let filter = Filter {
            bound: FilterMetrics::new(&self.metrics, [&attrs_request, &attrs_response]),
            attrs_request,
            attrs_response,
            name: name.clone(),
            plugin,
            policy: cfg.failure,
            failure_status: http::StatusCode::from_u16(cfg.failure_status.get())
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            timeout: cfg.timeout.0,
            // The epoch deadline ends running wasm on time; this one, a
            // little later, ends a call waiting outside wasm.
            wall_deadline: cfg.timeout.0 + WALL_DEADLINE_SLACK,
            isolation: cfg.isolation,
            maker: maker.clone(),
            guard: CrashGuard::default(),
            suspend_after: cfg.suspend_after,
            needs: Needs::default(),
        };
        // Start-up runs on the setup threads here too: a reload must not
        // stall the threads serving requests.
        let m = maker.clone();
        let first = self
            .setup_handle
            .spawn(async move { m.instantiate().await })
            .await
            .unwrap_or_else(|e| Err(Setup::Failed(format!("the setup thread failed: {e}"))));
        let first = first.map_err(|f| match f {
            Setup::Configure(reason) => PluginError::Configure {
                plugin: filter.plugin.name.clone(),
                filter: name.to_string(),
                reason,
                at: None,
            },
            Setup::Failed(reason) => PluginError::Instantiate {
                plugin: filter.plugin.name.clone(),
                filter: name.to_string(),
                reason,
            },
        })?;
        maker.warm.push(first);
        let mut filter = filter;
        filter.needs = maker.needs.get().copied().unwrap_or_default();
        // The first requests find instances ready rather than wait for one.
        let m = maker.clone();
        let _ = self
            .setup_handle
            .spawn(async move { m.replenish().await })
            .await;
        Ok(filter)
    }
}

/// The setting a `configure` error names, by the convention the WIT
/// states: a message that starts with ``at `PATH`: `` refuses the setting
/// at PATH (keys joined by `.`, array positions in brackets:
/// `limits[0].rate`). Answers the path's segments and the rest of the
/// message.
pub fn refused_setting(reason: &str) -> Option<(Vec<String>, &str)> {
    let rest = reason.strip_prefix("at `")?;
    let (path, message) = rest.split_once("`: ")?;
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (key, indices) = part.split_once('[').map_or((part, ""), |(k, i)| (k, i));
        if !key.is_empty() {
            segments.push(key.to_string());
        }
        for index in indices.split('[') {
            let n = index.strip_suffix(']').unwrap_or(index);
            if !n.is_empty() {
                n.parse::<usize>().ok()?;
                segments.push(n.to_string());
            }
        }
    }
    (!segments.is_empty()).then_some((segments, message))
}

/// Reads a plugin file, naming the plugin in the error.
pub fn read_plugin(name: &str, path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|source| PluginError::Read {
        plugin: name.into(),
        path: path.into(),
        source,
    })
}

/// The SHA-256 of a plugin file, in hex: what identifies a version.
pub fn content_hash(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A compiled plugin, ready to instantiate: one version of one file.
pub struct LoadedPlugin {
    pub name: Arc<str>,
    pub path: PathBuf,
    /// SHA-256 of the file this was compiled from.
    pub sha256: String,
    pub loaded_at: std::time::SystemTime,
    /// Calls and failed calls to this version, over all its filters.
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// The calls the plugin asked for; the proxy skips the others.
    pub phases: inspect::Phases,
    pre: Pre,
}

impl LoadedPlugin {
    /// The WIT package version the plugin was built against.
    pub fn wit_version(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
        }
    }
}

/// A plugin ready to instantiate, by the version of the world it exports.
enum Pre {
    V1(v1::PluginPre<HostState>),
    V2(v2::PluginPre<HostState>),
}

enum Bindings {
    V1(v1::Plugin),
    V2(v2::Plugin),
}

struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
}

enum Setup {
    Configure(String),
    Failed(String),
}

impl Setup {
    fn reason(&self) -> &str {
        match self {
            Setup::Configure(r) | Setup::Failed(r) => r,
        }
    }
}

/// The pace of a filter's start-ups: after a failure, further attempts wait
/// out a pause that doubles with each failure in a row, so a plugin whose
/// instances cannot start costs each request a refusal, not a start-up.
#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
    last: String,
}

impl Backoff {
    /// Why no instance may be started now, while a pause runs.
    fn refusal(&self) -> Option<String> {
        let until = self.until?;
        let now = Instant::now();
        (now < until).then(|| {
            format!(
                "new instances keep failing to start ({} in a row, last: {}); the next attempt is in {} ms",
                self.failures,
                self.last,
                (until - now).as_millis()
            )
        })
    }

    fn record<T>(&mut self, made: &Result<T, Setup>) {
        match made {
            Ok(_) => *self = Backoff::default(),
            Err(s) => {
                self.failures = self.failures.saturating_add(1);
                let doublings = (self.failures - 1).min(16);
                let pause = SETUP_BACKOFF_MIN
                    .saturating_mul(1 << doublings)
                    .min(SETUP_BACKOFF_MAX);
                self.until = Some(Instant::now() + pause);
                self.last = s.reason().to_string();
            }
        }
    }
}

/// What making an instance of a filter takes, shared with the setup threads
/// that do it, and the instances made ahead.
struct Maker {
    name: Arc<str>,
    plugin: Arc<LoadedPlugin>,
    config_json: String,
    memory_limit: usize,
    max_warm: usize,
    isolation: Isolation,
    grants: host::Grants,
    guards: Guards,
    engine: Engine,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    state_owner: Arc<crate::state::Owner>,
    log: host::LogPolicy,
    route_ids: Arc<[String]>,
    /// The TOML's body limits, which lower (or make) the filter's own.
    body_limits: (Option<usize>, Option<usize>),
    /// What the first instance's `configure` answered, with the TOML's
    /// limits applied: every instance of the filter reads the same bodies.
    needs: std::sync::OnceLock<Needs>,
    /// A 0.2.0 filter's outbound calls.
    callouts: Option<Arc<host_v2::Callouts>>,
    /// Pooled: instances that served calls, kept for the next. Request
    /// isolation: fresh instances not yet used. A call takes from its
    /// worker's and, when those are gone, from the others' before anyone
    /// makes a new one.
    warm: PerWorker<Warm>,
    replenishing: AtomicBool,
    /// Start-ups of this filter running at once.
    permits: tokio::sync::Semaphore,
    /// Requests waiting for an instance, and the signal that one was kept:
    /// a waiting request takes whichever comes first, a fresh instance or
    /// one another request has finished with.
    waiting: AtomicUsize,
    returned: tokio::sync::Notify,
    backoff: Mutex<Backoff>,
    setup: tokio::runtime::Handle,
}

/// How long a call runs before it starts handing its thread back at each
/// epoch tick. Calls that do a filter's usual work (microseconds) never
/// yield, so a busy scheduler cannot make them miss their deadline while
/// queued; one that spins yields from here on.
const YIELD_AFTER: Duration = Duration::from_millis(2);

/// Ends a guest at its deadline, and until then, once it has run for
/// `YIELD_AFTER`, hands its thread back to the scheduler at every epoch
/// tick: a guest that spins until its deadline shares the thread with other
/// requests instead of holding it.
fn yield_until_deadline(
    store: wasmtime::StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    let now = Instant::now();
    let data = store.data();
    if now >= data.deadline {
        return Ok(UpdateDeadline::Interrupt);
    }
    if now.saturating_duration_since(data.call_started) < YIELD_AFTER {
        return Ok(UpdateDeadline::Continue(1));
    }
    Ok(UpdateDeadline::YieldCustom(
        1,
        Box::pin(tokio::task::yield_now()),
    ))
}

/// Follows the guest in and out of wasm. When a filter call's export
/// returns, its answer is made; what runs next is the component's
/// post-return cleanup (freeing the answer; in Python or JavaScript
/// possibly a collection), which gets a deadline of its own rather than
/// what the export left of the call's: a filter that answered in time is
/// not failed by its runtime's housekeeping.
fn track_export_return(
    mut store: wasmtime::StoreContextMut<'_, HostState>,
    hook: wasmtime::CallHook,
) -> wasmtime::Result<()> {
    let d = store.data_mut();
    match hook {
        wasmtime::CallHook::CallingWasm => d.wasm_depth += 1,
        wasmtime::CallHook::ReturningFromWasm => {
            d.wasm_depth = d.wasm_depth.saturating_sub(1);
            if d.wasm_depth == 0 && d.in_export {
                d.in_export = false;
                let now = Instant::now();
                let ran = now.saturating_duration_since(d.call_started);
                d.export_returned_ns
                    .store(ran.as_nanos().max(1) as u64, Ordering::Relaxed);
                d.call_started = now;
                d.deadline = now + d.post_return_budget;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The most a filter may hand the host in one call (strings and lists it
/// passes or answers with): twice its memory limit. Lists whose elements
/// all point at the same bytes would otherwise make the host copy far more
/// than the filter's memory holds.
fn hostcall_fuel(memory_limit: usize) -> usize {
    memory_limit.saturating_mul(2)
}

/// A start-up step's failure in one line: its deadline named as such.
fn setup_failure(step: &str, e: wasmtime::Error) -> String {
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return format!(
            "{step} ran past its {} s setup deadline",
            SETUP_DEADLINE.as_secs()
        );
    }
    format!("{step} failed: {}", one_line(&e))
}

impl Maker {
    async fn instantiate(&self) -> Result<Warm, Setup> {
        let made = self.make().await;
        if let Err(s) = &made {
            // Start-ups back off after a failure, so these lines are few.
            tracing::warn!(
                filter = &*self.name,
                plugin = &*self.plugin.name,
                reason = s.reason(),
                "a new instance could not start"
            );
        }
        self.metrics.plugin_instance_starts.add(
            1,
            &[
                KeyValue::new("filter", shared(&self.name)),
                KeyValue::new("plugin", shared(&self.plugin.name)),
                KeyValue::new("result", if made.is_ok() { "ok" } else { "failed" }),
            ],
        );
        made
    }

    async fn make(&self) -> Result<Warm, Setup> {
        let limits = if self.guards.memory_limits {
            StoreLimitsBuilder::new()
                .memory_size(self.memory_limit)
                .table_elements(MAX_TABLE_ELEMENTS)
                .trap_on_grow_failure(true)
                .build()
        } else {
            StoreLimitsBuilder::new().build()
        };
        let state = HostState::new(
            self.name.clone(),
            self.plugin.name.clone(),
            self.metrics.clone(),
            self.state.clone(),
            self.state_owner.clone(),
            self.log.clone(),
            self.route_ids.clone(),
            limits,
            &self.grants,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if self.guards.memory_limits {
            store.set_hostcall_fuel(hostcall_fuel(self.memory_limit));
        }
        store.epoch_deadline_callback(yield_until_deadline);
        if self.guards.deadlines {
            store.call_hook(track_export_return);
        }
        let now = Instant::now();
        store.data_mut().call_started = now;
        store.data_mut().deadline = now + SETUP_DEADLINE;
        store.set_epoch_deadline(1);
        let bindings = match &self.plugin.pre {
            Pre::V1(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V1),
            Pre::V2(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V2),
        };
        let bindings = match bindings {
            Ok(b) => b,
            Err(e) => {
                store.data_mut().flush_output();
                return Err(Setup::Failed(setup_failure("instantiation", e)));
            }
        };
        let configured = match &bindings {
            Bindings::V1(b) => b
                .gateway_filter_filter()
                .call_configure(&mut store, &self.config_json)
                .await
                .map(|r| r.map(|()| Ok(Needs::default()))),
            Bindings::V2(b) => b
                .gateway_filter_filter()
                .call_configure(&mut store, &self.config_json)
                .await
                .map(|r| r.map(host_v2::needs)),
        };
        store.data_mut().flush_output();
        match configured {
            Ok(Ok(Ok(needs))) => {
                let needs = self.needs.get_or_init(|| self.with_body_limits(needs));
                let data = store.data_mut();
                data.v2.needs = *needs;
                data.v2.callouts = self.callouts.clone();
                data.limits.configured_bytes = data.limits.memory_bytes;
                Ok(Warm { store, bindings })
            }
            Ok(Ok(Err(reason))) => Err(Setup::Configure(format!(
                "its configure answer is refused: {reason}"
            ))),
            Ok(Err(reason)) => Err(Setup::Configure(escape(&reason).into_owned())),
            Err(e) => Err(Setup::Failed(setup_failure("configure", e))),
        }
    }

    /// The bodies a filter reads: what it asked for, within the TOML's
    /// limits; a TOML limit alone asks for the body, refusing a larger one.
    fn with_body_limits(&self, asked: Needs) -> Needs {
        let apply = |need: Option<host::BodyNeed>, limit: Option<usize>, status| match (need, limit)
        {
            (Some(n), Some(l)) => Some(host::BodyNeed {
                max_bytes: n.max_bytes.min(l),
                ..n
            }),
            (None, Some(l)) => Some(host::BodyNeed {
                max_bytes: l,
                over_limit: host::OverLimit::Refuse(status),
            }),
            (n, None) => n,
        };
        Needs {
            request_body: apply(
                asked.request_body,
                self.body_limits.0,
                http::StatusCode::PAYLOAD_TOO_LARGE,
            ),
            response_body: apply(
                asked.response_body,
                self.body_limits.1,
                http::StatusCode::BAD_GATEWAY,
            ),
        }
    }

    /// A fresh instance for a request that found none ready, made on the
    /// setup threads. The request waits at most `wait`; an instance that
    /// arrives later is kept for the next request.
    async fn fresh(self: &Arc<Self>, wait: Duration) -> Result<Warm, String> {
        if let Some(why) = self.backoff.lock().refusal() {
            return Err(why);
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<Warm, String>>();
        let me = self.clone();
        self.setup.spawn(async move {
            let Ok(_turn) = me.permits.acquire().await else {
                return;
            };
            // The request gave up while this waited for its turn, or a
            // failure meanwhile set a pause: nothing to make.
            if tx.is_closed() {
                return;
            }
            if let Some(why) = me.backoff.lock().refusal() {
                let _ = tx.send(Err(why));
                return;
            }
            let made = me.instantiate().await;
            me.backoff.lock().record(&made);
            match made {
                Ok(w) => {
                    if let Err(Ok(w)) = tx.send(Ok(w)) {
                        me.keep(w);
                    }
                }
                Err(s) => {
                    let _ = tx.send(Err(s.reason().to_string()));
                }
            }
        });
        let _waiting = Waiting::new(&self.waiting);
        let first_ready = async {
            tokio::pin!(rx);
            loop {
                tokio::select! {
                    made = &mut rx => {
                        return made.unwrap_or_else(|_| Err("the setup thread stopped".into()));
                    }
                    () = self.returned.notified() => {
                        if let Some(w) = self.warm.pop() {
                            return Ok(w);
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(wait, first_ready).await {
            Ok(made) => made,
            Err(_) => Err(format!(
                "no instance was ready within the {} ms call timeout; one is being made",
                wait.as_millis()
            )),
        }
    }

    /// Keeps an unused instance for a later request, if there is room, and
    /// hands it to a request waiting for one.
    fn keep(&self, w: Warm) {
        if !self.warm.push_within(w, self.max_warm) {
            return;
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.returned.notify_one();
        }
    }

    /// Makes fresh instances ready ahead: under request isolation up to the
    /// warm count, so requests find one instead of instantiating; pooled,
    /// one for each thread that may call at once, so a filter just loaded
    /// (a reload under load) meets its first concurrent calls warm.
    async fn replenish(&self) {
        let target = match self.isolation {
            Isolation::Request => self.max_warm,
            Isolation::Pooled => self.max_warm.min(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(POOLED_AHEAD),
            ),
        };
        while self.warm.len() < target {
            if self.backoff.lock().refusal().is_some() {
                return;
            }
            let made = self.instantiate().await;
            self.backoff.lock().record(&made);
            match made {
                Ok(w) => self.keep(w),
                Err(_) => return,
            }
        }
    }
}

/// Counts a request among those waiting for an instance while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A configured filter and its warm instances.
pub struct Filter {
    pub name: Arc<str>,
    pub plugin: Arc<LoadedPlugin>,
    pub policy: FailurePolicy,
    pub failure_status: http::StatusCode,
    timeout: Duration,
    wall_deadline: Duration,
    pub isolation: Isolation,
    /// How instances are made, and the limits, metrics and warm set they
    /// share with the setup threads.
    maker: Arc<Maker>,
    attrs_request: [KeyValue; 3],
    attrs_response: [KeyValue; 3],
    /// Call counts and durations, bound to this filter's labels.
    bound: FilterMetrics,
    pub guard: CrashGuard,
    suspend_after: u32,
    /// The bodies the filter reads (none for a 0.1.0 filter).
    pub needs: Needs,
}

/// What a filter call decided.
pub enum Decision {
    Continue,
    Respond(Reply),
}

impl Filter {
    /// Creates and configures one instance, then discards it: what every
    /// new instance costs, whether it refills the warm set or serves one
    /// request under request isolation (benches/languages.rs measures it).
    pub async fn instantiate_once(&self) -> Result<(), String> {
        match self.maker.instantiate().await {
            Ok(_) => Ok(()),
            Err(s) => Err(s.reason().to_string()),
        }
    }

    /// Instances kept warm right now.
    pub fn warm_count(&self) -> usize {
        self.maker.warm.len()
    }

    /// An instance armed with the call deadline: the one the request holds
    /// (request isolation, response phase), a warm one, or a fresh one.
    async fn checkout(
        &self,
        phase: Phase,
        request: &Arc<RequestInfo>,
        held: Option<Held>,
        started: Instant,
    ) -> Result<Warm, Failure> {
        let phase_attrs = self.attrs(phase);
        self.bound.called(phase);
        self.plugin.calls.fetch_add(1, Ordering::Relaxed);
        if self.suspend_after > 0
            && let Some(detail) = self.guard.refusal(crate::clock::monotonic_ns())
        {
            self.count_failure(phase_attrs, "suspended");
            return Err(Failure {
                reason: "suspended",
                detail,
            });
        }
        let ready = match held {
            Some(Held(w)) => Some(w),
            None => self.maker.warm.pop(),
        };
        let mut warm = match ready {
            Some(w) => w,
            // Boxed: the wait for a fresh instance is the rare path, and
            // its state inline would grow every call's future.
            None => Box::pin(self.maker.fresh(self.timeout))
                .await
                .map_err(|detail| {
                    self.count_failure(phase_attrs, "instantiate");
                    let f = Failure {
                        reason: "instantiate",
                        detail,
                    };
                    self.note_failure(&f);
                    f
                })?,
        };
        let data = warm.store.data_mut();
        data.request = Some(request.clone());
        data.budget = host::CallBudget::default();
        data.call_started = started;
        data.deadline = started + self.timeout;
        data.in_export = true;
        data.wasm_depth = 0;
        data.post_return_budget = self.timeout;
        data.export_returned_ns.store(0, Ordering::Relaxed);
        warm.store.set_epoch_deadline(1);
        Ok(warm)
    }

    /// Records the call. A failed call's instance is dropped (a trapped
    /// instance may be in any state). A good one goes back to the pool,
    /// or under request isolation is handed back to be `hold`, or dropped.
    fn checkin<R>(
        &self,
        mut warm: Warm,
        phase: Phase,
        started: Instant,
        result: &Result<R, Failure>,
        hold: bool,
    ) -> Option<Held> {
        self.bound.took(phase, started.elapsed());
        let phase_attrs = self.attrs(phase);
        let data = warm.store.data_mut();
        data.flush_output();
        if data.budget.log_dropped > 0 {
            let request_id = data.request.as_ref().map_or("-", |r| r.request_id.as_str());
            tracing::warn!(
                filter = &*self.name,
                plugin = &*self.plugin.name,
                request_id,
                dropped = data.budget.log_dropped,
                "log lines dropped: a call may write {}",
                host::MAX_LOG_LINES_PER_CALL
            );
        }
        match result {
            Ok(_) => {
                self.guard.succeeded();
                data.request = None;
                match self.isolation {
                    Isolation::Request if hold => return Some(Held(warm)),
                    Isolation::Request => {}
                    Isolation::Pooled
                        if self.maker.guards.memory_limits
                            && data.limits.grown_near(self.maker.memory_limit) =>
                    {
                        self.maker.metrics.plugin_instances_retired.add(
                            1,
                            &[
                                KeyValue::new("filter", shared(&self.name)),
                                KeyValue::new("plugin", shared(&self.plugin.name)),
                                KeyValue::new("reason", "memory"),
                            ],
                        );
                        tracing::debug!(
                            filter = &*self.name,
                            "instance retired at {} bytes of memory",
                            data.limits.memory_bytes
                        );
                    }
                    Isolation::Pooled => self.maker.keep(warm),
                }
            }
            Err(f) => {
                self.count_failure(phase_attrs, f.reason);
                self.note_failure(f);
            }
        }
        None
    }

    /// Counts a failed call towards suspension, and suspends the filter
    /// when it is one too many: logged once per suspension, and counted.
    fn note_failure(&self, f: &Failure) {
        let Some(pause) = self
            .guard
            .failed(self.suspend_after, crate::clock::monotonic_ns())
        else {
            return;
        };
        self.maker.metrics.plugin_suspensions.add(
            1,
            &[
                KeyValue::new("filter", shared(&self.name)),
                KeyValue::new("plugin", shared(&self.plugin.name)),
            ],
        );
        tracing::warn!(
            filter = &*self.name,
            plugin = &*self.plugin.name,
            pause_ms = pause.as_millis() as u64,
            last_reason = f.reason,
            last_detail = f.detail.as_str(),
            "filter suspended: it failed {} calls in a row (or again after a suspension); \
             its failure policy answers until the pause ends",
            self.suspend_after
        );
    }

    fn attrs(&self, phase: Phase) -> &[KeyValue; 3] {
        match phase {
            Phase::Request => &self.attrs_request,
            Phase::Response => &self.attrs_response,
        }
    }

    fn count_failure(&self, phase_attrs: &[KeyValue; 3], reason: &'static str) {
        self.plugin.failures.fetch_add(1, Ordering::Relaxed);
        let mut attrs = phase_attrs.to_vec();
        attrs.push(KeyValue::new("reason", reason));
        self.maker.metrics.plugin_failures.add(1, &attrs);
    }

    /// Runs a call, ending it at the deadline even where no wasm runs to
    /// see the epoch: a filter blocked in a WASI poll (a sleep) would
    /// otherwise hold its request for as long as it liked. The instance of
    /// a call cut off this way is discarded like any failed one.
    async fn within_deadline<T>(
        &self,
        started: Instant,
        returned: Arc<AtomicU64>,
        call: impl std::future::Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        if !self.maker.guards.deadlines {
            return call.await;
        }
        // Most calls finish at their first poll, with no timer made; only a
        // call that waits (in a host call, or yielding after a long run)
        // starts one, so the deadline costs nothing when nothing waits.
        let deadline = tokio::time::Instant::from_std(started + self.wall_deadline);
        let mut call = std::pin::pin!(call);
        let first = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await;
        if let Some(out) = first {
            return out;
        }
        let mut call = Box::pin(call);
        let mut deadline = deadline;
        loop {
            match tokio::time::timeout_at(deadline, &mut call).await {
                Ok(out) => return out,
                Err(_) => {
                    // The export returned meanwhile: its cleanup has a
                    // deadline of its own, counted from then.
                    let at = returned.load(Ordering::Relaxed);
                    let moved = tokio::time::Instant::from_std(
                        started + Duration::from_nanos(at) + self.wall_deadline,
                    );
                    if at > 0 && moved > deadline {
                        deadline = moved;
                        continue;
                    }
                    return Err(wasmtime::Error::new(Trap::Interrupt)
                        .context("the call was still waiting in a host call at its deadline"));
                }
            }
        }
    }

    /// Under request isolation, refills the fresh instances on the setup
    /// threads once half are used, so requests rarely wait for one.
    pub fn replenish_later(&self) {
        let m = &self.maker;
        if m.isolation != Isolation::Request
            || m.warm.len() * 2 > m.max_warm
            || m.replenishing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let m = m.clone();
        self.maker.setup.spawn(async move {
            m.replenish().await;
            m.replenishing.store(false, Ordering::Release);
        });
    }

    /// Calls `on-request`. The request is lent to the filter for the call
    /// and always handed back, whatever the call's outcome.
    pub async fn on_request(&self, req: RequestState) -> (RequestState, Result<Decision, Failure>) {
        let (req, result, _) = self.on_request_held(req).await;
        (req, result)
    }

    /// Like `on_request`; under request isolation it also hands back the
    /// instance, for the same request's `on_response_held`.
    pub async fn on_request_held(
        &self,
        req: RequestState,
    ) -> (RequestState, Result<Decision, Failure>, Option<Held>) {
        let started = Instant::now();
        let mut w = match self
            .checkout(Phase::Request, &req.info, None, started)
            .await
        {
            Ok(w) => w,
            Err(f) => return (req, Err(f), None),
        };
        let res = w
            .store
            .data_mut()
            .table
            .push(req)
            .expect("a filter's resource table has room");
        let borrowed = Resource::new_borrow(res.rep());
        let returned = w.store.data().export_returned_ns.clone();
        let out = match &w.bindings {
            Bindings::V1(b) => {
                self.within_deadline(
                    started,
                    returned,
                    b.gateway_filter_filter()
                        .call_on_request(&mut w.store, borrowed),
                )
                .await
            }
            Bindings::V2(b) => self
                .within_deadline(
                    started,
                    returned,
                    b.gateway_filter_filter()
                        .call_on_request(&mut w.store, borrowed),
                )
                .await
                .map(host_v2::action),
        };
        let req = w
            .store
            .data_mut()
            .table
            .delete(res)
            .expect("the request is still in the table");
        let result = decide(out);
        let held = self.checkin(w, Phase::Request, started, &result, true);
        (req, result, held)
    }

    /// Calls `on-response`, lending both the request and the response.
    pub async fn on_response(
        &self,
        req: RequestState,
        resp: ResponseState,
    ) -> (RequestState, ResponseState, Result<Decision, Failure>) {
        self.on_response_held(req, resp, None).await
    }

    /// Like `on_response`, on the instance `on_request_held` handed back.
    pub async fn on_response_held(
        &self,
        req: RequestState,
        resp: ResponseState,
        held: Option<Held>,
    ) -> (RequestState, ResponseState, Result<Decision, Failure>) {
        let started = Instant::now();
        let mut w = match self
            .checkout(Phase::Response, &req.info, held, started)
            .await
        {
            Ok(w) => w,
            Err(f) => return (req, resp, Err(f)),
        };
        let table = &mut w.store.data_mut().table;
        let rq = table.push(req).expect("a filter's resource table has room");
        let rs = table
            .push(resp)
            .expect("a filter's resource table has room");
        let returned = w.store.data().export_returned_ns.clone();
        let (rq_b, rs_b) = (
            Resource::new_borrow(rq.rep()),
            Resource::new_borrow(rs.rep()),
        );
        let out = match &w.bindings {
            Bindings::V1(b) => {
                self.within_deadline(
                    started,
                    returned,
                    b.gateway_filter_filter()
                        .call_on_response(&mut w.store, rq_b, rs_b),
                )
                .await
            }
            Bindings::V2(b) => self
                .within_deadline(
                    started,
                    returned,
                    b.gateway_filter_filter()
                        .call_on_response(&mut w.store, rq_b, rs_b),
                )
                .await
                .map(host_v2::action),
        };
        let table = &mut w.store.data_mut().table;
        let resp = table
            .delete(rs)
            .expect("the response is still in the table");
        let req = table.delete(rq).expect("the request is still in the table");
        let result = decide(out);
        self.checkin(w, Phase::Response, started, &result, false);
        (req, resp, result)
    }
}

/// An instance one request keeps from its `on-request` to its
/// `on-response` under request isolation, then drops.
pub struct Held(Warm);

fn decide(out: wasmtime::Result<Action>) -> Result<Decision, Failure> {
    match out {
        Ok(Action::Continue) => Ok(Decision::Continue),
        Ok(Action::Respond(reply)) => validate_reply(&reply).map(|()| Decision::Respond(reply)),
        Err(e) => Err(classify(e)),
    }
}

/// The largest body a filter may answer with.
pub const MAX_REPLY_BODY: usize = 1024 * 1024;

fn validate_reply(r: &Reply) -> Result<(), Failure> {
    let invalid = |detail: String| Failure {
        reason: "invalid-answer",
        detail,
    };
    if !(200..=599).contains(&r.status) {
        return Err(invalid(format!(
            "answered with status {}, outside 200..=599",
            r.status
        )));
    }
    if r.body.len() > MAX_REPLY_BODY {
        return Err(invalid(format!(
            "answered with a {} byte body; the most is {MAX_REPLY_BODY}",
            r.body.len()
        )));
    }
    if r.headers.len() > host::MAX_HEADER_FIELDS {
        return Err(invalid(format!(
            "answered with {} headers; the most is {}",
            r.headers.len(),
            host::MAX_HEADER_FIELDS
        )));
    }
    let mut block = 0usize;
    for (name, value) in &r.headers {
        if name.len() > host::MAX_HEADER_NAME {
            return Err(invalid(format!(
                "answered with a header name of {} bytes; the most is {}",
                name.len(),
                host::MAX_HEADER_NAME
            )));
        }
        let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(format!(
                "answered with an invalid header name \"{}\"",
                escape(name)
            ))
        })?;
        if host::is_protected(&n) {
            return Err(invalid(format!(
                "answered with `{n}`, which the gateway manages"
            )));
        }
        if value.len() > host::MAX_HEADER_VALUE || http::HeaderValue::from_bytes(value).is_err() {
            return Err(invalid(format!(
                "answered with an invalid or oversized value for `{n}`"
            )));
        }
        block += name.len() + value.len();
        if block > host::MAX_HEADER_BLOCK {
            return Err(invalid(format!(
                "answered with headers over {} bytes",
                host::MAX_HEADER_BLOCK
            )));
        }
    }
    Ok(())
}

/// Sorts a failed call into the reason it is counted under.
fn classify(e: wasmtime::Error) -> Failure {
    let detail = one_line(&e);
    let reason = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline",
        Some(Trap::StackOverflow) => "stack-overflow",
        Some(_) => "trap",
        // A memory or table grown past its limit, refused by the limiter
        // or by the allocator's slot.
        None if detail.contains("forcing trap when growing")
            || detail.contains("growth failure to be a trap") =>
        {
            "memory"
        }
        // Lists whose elements share bytes, answered or passed to an
        // import, past the filter's hostcall budget.
        None if detail.contains("fuel allocated for hostcalls has been exhausted") => {
            "invalid-answer"
        }
        None => "trap",
    };
    Failure { reason, detail }
}

/// A wasmtime error on one line with the guest's text escaped: its message
/// carries a multi-line wasm backtrace whose frame names the guest chose,
/// and one log record must stay one line the guest cannot shape.
fn one_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    escape(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::refused_setting;

    #[test]
    fn a_configure_error_names_its_setting_by_the_wits_convention() {
        let (path, rest) = refused_setting("at `limits[1].rate`: rate must be positive").unwrap();
        assert_eq!(path, ["limits", "1", "rate"]);
        assert_eq!(rest, "rate must be positive");
        let (path, _) = refused_setting("at `m[0][2]`: x").unwrap();
        assert_eq!(path, ["m", "0", "2"]);
        for plain in [
            "ratelimit: `limits` is empty",
            "at `limits[x]`: not an index",
            "at ``: nothing named",
            "at `unclosed: x",
        ] {
            assert!(refused_setting(plain).is_none(), "{plain}");
        }
    }
}
