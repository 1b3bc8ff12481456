//! The wasm runtime: one engine for the process, plugins compiled once into
//! pre-instantiated components, and per filter a pool of warm instances
//! that every call borrows under a deadline and a memory limit.
//!
//! A failed call (trap, deadline, memory limit, invalid answer) discards the
//! instance it ran on; the next call gets a fresh one. The caller applies
//! the filter's failure policy.

pub mod bindings;
pub mod host;
pub mod inspect;

use crate::config::{FailurePolicy, FilterConfig, Isolation};
use crate::state::State;
use crate::telemetry::{FilterMetrics, Metrics, Phase, shared};
use bindings::{Action, Plugin, PluginPre, Reply};
use host::{HostState, RequestInfo, RequestState, ResponseState};
use opentelemetry::KeyValue;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap};

/// How often the epoch advances; call deadlines are counted in these ticks.
/// The WIT package filters are built against, as `gateway_build_info` shows it.
pub const WIT_PACKAGE: &str = "gateway:filter@0.1.0";
/// The interface a filter exports, as the component model names it.
pub const EXPORT_INTERFACE: &str = "gateway:filter/filter@0.1.0";
/// The wasmtime release the gateway embeds (pinned in Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

pub const EPOCH_TICK: Duration = Duration::from_millis(1);
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
    #[error("filter `{filter}` could not start: {reason}")]
    Instantiate {
        plugin: Arc<str>,
        filter: String,
        reason: String,
    },
    #[error("filter `{filter}` refused its configuration: {reason}")]
    Configure {
        plugin: Arc<str>,
        filter: String,
        reason: String,
    },
}

impl PluginError {
    /// The plugin the error is about.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Read { plugin, .. }
            | PluginError::Compile { plugin, .. }
            | PluginError::World { plugin, .. }
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
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
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
        Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(Runtime {
            engine,
            pooling,
            guards,
            linker,
            metrics,
            state,
            ticker_stop,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// `gateway plugin check`: whether `bytes` are a component this gateway
    /// can load as a filter, and if not, why in plain words.
    pub fn check_plugin(&self, bytes: &[u8]) -> Result<inspect::Fit, String> {
        inspect::check(&self.engine, &self.linker, bytes)
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
        let component = Component::new(&self.engine, bytes);
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
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .unwrap_or_else(|e| Err(wasmtime::Error::msg(format!("compiler thread: {e}"))));
        self.prepare(name, path, sha256, component)
    }

    fn prepare(
        &self,
        name: &str,
        path: &Path,
        sha256: String,
        component: wasmtime::Result<Component>,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let component = component.map_err(|e| PluginError::Compile {
            plugin: name.into(),
            path: path.into(),
            reason: format!("{e:#}"),
        })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
            .map_err(|e| PluginError::World {
                plugin: name.into(),
                path: path.into(),
                // The same words `gateway plugin check` gives, or the
                // linker's own where they find nothing to say.
                reason: match inspect::check_component(&self.engine, &self.linker, &component) {
                    Err(words) => words,
                    Ok(_) => format!("{e:#}"),
                },
            })?;
        Ok(Arc::new(LoadedPlugin {
            name: name.into(),
            path: path.into(),
            sha256,
            loaded_at: std::time::SystemTime::now(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
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
        let filter = Filter {
            bound: FilterMetrics::new(&self.metrics, [&attrs_request, &attrs_response]),
            attrs_request,
            attrs_response,
            name: name.clone(),
            plugin,
            config_json,
            policy: cfg.failure,
            failure_status: http::StatusCode::from_u16(cfg.failure_status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            deadline_ticks: ticks(cfg.timeout.0),
            // The epoch deadline ends running wasm on time; this one, a
            // little later, ends a call waiting outside wasm.
            wall_deadline: cfg.timeout.0 + WALL_DEADLINE_SLACK,
            memory_limit: cfg.memory_limit_mib as usize * 1024 * 1024,
            max_warm: cfg.instances,
            isolation: cfg.isolation,
            replenishing: AtomicBool::new(false),
            grants: host::Grants {
                // Variables missing from the gateway's environment are simply
                // absent for the filter too.
                env: cfg
                    .env
                    .get_ref()
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
                    .collect(),
                dirs: cfg
                    .dirs
                    .iter()
                    .map(|(guest, host)| (base_dir.join(host.get_ref()), guest.clone()))
                    .collect(),
            },
            guards: self.guards,
            warm: Mutex::new(Vec::new()),
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            state: self.state.clone(),
            route_ids,
        };
        let first = filter.instantiate().await.map_err(|f| match f {
            Setup::Configure(reason) => PluginError::Configure {
                plugin: filter.plugin.name.clone(),
                filter: name.to_string(),
                reason,
            },
            Setup::Failed(reason) => PluginError::Instantiate {
                plugin: filter.plugin.name.clone(),
                filter: name.to_string(),
                reason,
            },
        })?;
        filter.warm.lock().push(first);
        // Under request isolation the first requests find fresh instances
        // too, rather than making them inline.
        filter.replenish().await;
        Ok(filter)
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64
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
    pre: PluginPre<HostState>,
}

struct Warm {
    store: Store<HostState>,
    bindings: Plugin,
}

enum Setup {
    Configure(String),
    Failed(String),
}

/// A configured filter and its warm instances.
pub struct Filter {
    pub name: Arc<str>,
    pub plugin: Arc<LoadedPlugin>,
    pub policy: FailurePolicy,
    pub failure_status: http::StatusCode,
    config_json: String,
    deadline_ticks: u64,
    wall_deadline: Duration,
    memory_limit: usize,
    max_warm: usize,
    pub isolation: Isolation,
    replenishing: AtomicBool,
    grants: host::Grants,
    guards: Guards,
    /// Pooled: instances that served calls, kept for the next. Request
    /// isolation: fresh instances not yet used.
    warm: Mutex<Vec<Warm>>,
    engine: Engine,
    metrics: Arc<Metrics>,
    state: Arc<State>,
    route_ids: Arc<[String]>,
    attrs_request: [KeyValue; 3],
    attrs_response: [KeyValue; 3],
    /// Call counts and durations, bound to this filter's labels.
    bound: FilterMetrics,
}

/// What a filter call decided.
pub enum Decision {
    Continue,
    Respond(Reply),
}

impl Filter {
    async fn instantiate(&self) -> Result<Warm, Setup> {
        let limits = if self.guards.memory_limits {
            StoreLimitsBuilder::new()
                .memory_size(self.memory_limit)
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
            self.route_ids.clone(),
            limits,
            &self.grants,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(SETUP_DEADLINE));
        let bindings = self
            .plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Setup::Failed(format!("{e:#}")))?;
        match bindings
            .gateway_filter_filter()
            .call_configure(&mut store, &self.config_json)
            .await
        {
            Ok(Ok(())) => {
                let limits = &mut store.data_mut().limits;
                limits.configured_bytes = limits.memory_bytes;
                Ok(Warm { store, bindings })
            }
            Ok(Err(reason)) => Err(Setup::Configure(reason)),
            Err(e) => Err(Setup::Failed(format!("configure failed: {e:#}"))),
        }
    }

    /// Creates and configures one instance, then discards it: what every
    /// new instance costs, whether it refills the warm set or serves one
    /// request under request isolation (benches/languages.rs measures it).
    pub async fn instantiate_once(&self) -> Result<(), String> {
        match self.instantiate().await {
            Ok(_) => Ok(()),
            Err(Setup::Configure(why) | Setup::Failed(why)) => Err(why),
        }
    }

    /// Instances kept warm right now.
    pub fn warm_count(&self) -> usize {
        self.warm.lock().len()
    }

    /// An instance armed with the call deadline: the one the request holds
    /// (request isolation, response phase), a warm one, or a fresh one.
    async fn checkout(
        &self,
        phase: Phase,
        request: &Arc<RequestInfo>,
        held: Option<Held>,
    ) -> Result<Warm, Failure> {
        let phase_attrs = self.attrs(phase);
        self.bound.called(phase);
        self.plugin.calls.fetch_add(1, Ordering::Relaxed);
        let ready = match held {
            Some(Held(w)) => Some(w),
            None => self.warm.lock().pop(),
        };
        let mut warm = match ready {
            Some(w) => w,
            None => self.instantiate().await.map_err(|s| {
                let detail = match s {
                    Setup::Configure(r) | Setup::Failed(r) => r,
                };
                self.count_failure(phase_attrs, "instantiate");
                Failure {
                    reason: "instantiate",
                    detail,
                }
            })?,
        };
        let data = warm.store.data_mut();
        data.request = Some(request.clone());
        data.budget = host::CallBudget::default();
        warm.store.set_epoch_deadline(self.deadline_ticks);
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
        if data.budget.log_dropped > 0 {
            let request_id = data.request.as_ref().map_or("-", |r| r.request_id.as_str());
            tracing::warn!(
                filter = &*self.name,
                plugin = &*self.plugin.name,
                request_id,
                "{} log lines dropped: a call may write {}",
                data.budget.log_dropped,
                host::MAX_LOG_LINES_PER_CALL
            );
        }
        match result {
            Ok(_) => {
                data.request = None;
                match self.isolation {
                    Isolation::Request if hold => return Some(Held(warm)),
                    Isolation::Request => {}
                    Isolation::Pooled
                        if self.guards.memory_limits
                            && data.limits.grown_near(self.memory_limit) =>
                    {
                        self.metrics.plugin_instances_retired.add(
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
                    Isolation::Pooled => {
                        let mut pool = self.warm.lock();
                        if pool.len() < self.max_warm {
                            pool.push(warm);
                        }
                    }
                }
            }
            Err(f) => self.count_failure(phase_attrs, f.reason),
        }
        None
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
        self.metrics.plugin_failures.add(1, &attrs);
    }

    /// Runs a call, ending it at the deadline even where no wasm runs to
    /// see the epoch: a filter blocked in a WASI poll (a sleep) would
    /// otherwise hold its request for as long as it liked. The instance of
    /// a call cut off this way is discarded like any failed one.
    async fn within_deadline<T>(
        &self,
        call: impl std::future::Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        if !self.guards.deadlines {
            return call.await;
        }
        match tokio::time::timeout(self.wall_deadline, call).await {
            Ok(out) => out,
            Err(_) => Err(wasmtime::Error::new(Trap::Interrupt)
                .context("the call was still waiting in a host call at its deadline")),
        }
    }

    /// Makes fresh instances ready for request isolation, up to the warm
    /// count, so requests find one instead of instantiating.
    pub async fn replenish(&self) {
        if self.isolation != Isolation::Request {
            return;
        }
        while self.warm.lock().len() < self.max_warm {
            match self.instantiate().await {
                Ok(w) => self.warm.lock().push(w),
                Err(_) => return,
            }
        }
    }

    /// Under request isolation, refills the fresh instances in a task of
    /// its own once half are used, so requests rarely instantiate inline.
    pub fn replenish_later(self: &Arc<Self>) {
        if self.isolation != Isolation::Request
            || self.warm.lock().len() * 2 > self.max_warm
            || self.replenishing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let f = self.clone();
        tokio::spawn(async move {
            f.replenish().await;
            f.replenishing.store(false, Ordering::Release);
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
        let mut w = match self.checkout(Phase::Request, &req.info, None).await {
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
        let out = self
            .within_deadline(
                w.bindings
                    .gateway_filter_filter()
                    .call_on_request(&mut w.store, borrowed),
            )
            .await;
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
        let mut w = match self.checkout(Phase::Response, &req.info, held).await {
            Ok(w) => w,
            Err(f) => return (req, resp, Err(f)),
        };
        let table = &mut w.store.data_mut().table;
        let rq = table.push(req).expect("a filter's resource table has room");
        let rs = table
            .push(resp)
            .expect("a filter's resource table has room");
        let out = self
            .within_deadline(w.bindings.gateway_filter_filter().call_on_response(
                &mut w.store,
                Resource::new_borrow(rq.rep()),
                Resource::new_borrow(rs.rep()),
            ))
            .await;
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
    if r.headers.len() > 100 {
        return Err(invalid(format!(
            "answered with {} headers; the most is 100",
            r.headers.len()
        )));
    }
    for (name, value) in &r.headers {
        let n = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(format!("answered with an invalid header name {name:?}")))?;
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
    }
    Ok(())
}

/// Sorts a failed call into the reason it is counted under.
fn classify(e: wasmtime::Error) -> Failure {
    // wasmtime's message carries a multi-line wasm backtrace; one log
    // record must stay one line.
    let detail = format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    let reason = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "deadline",
        Some(Trap::StackOverflow) => "stack-overflow",
        Some(_) => "trap",
        None if detail.contains("forcing trap when growing memory") => "memory",
        None => "trap",
    };
    Failure { reason, detail }
}
