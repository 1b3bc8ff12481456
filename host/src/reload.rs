//! Hot reload: a new configuration and new plugin files taken up while the
//! gateway serves, without a restart and without failing a request.
//!
//! A reload builds the whole next [`Gateway`] off the request path and then
//! swaps it in at once; requests in flight finish on the one they started
//! with, which is dropped (with its filters' instances) when the last of
//! them ends. What did not change is carried over rather than rebuilt:
//! plugins by content hash, filters whose plugin, settings and routes are
//! the same (with their warm instances), upstreams whose settings are the
//! same (and, when only some settings changed, the connection pool and each
//! remaining instance's breaker, health and outlier state). A reload that
//! fails at any step changes nothing and says why in the log, in
//! `gateway_reloads_total{result="failure"}` and on `/admin/plugins`.
//!
//! Reloads come from a file watcher (the config file, the plugin files and
//! `config_files` it names), from SIGHUP and from `POST /admin/reload`.

use crate::assemble::{BuildReport, PluginCache};
use crate::config::{Config, ConfigSource};
use crate::plugin::Runtime;
use crate::serving::{Gateway, Shared};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Settings a running gateway cannot change: its sockets and threads, its drain time,
/// its state backend, its histogram buckets, its watcher, its access log
/// and its trace exporter. A reload that changes
/// them applies the rest and says these wait for a restart.
struct RestartOnly {
    listen: std::net::SocketAddr,
    workers: usize,
    grace: Duration,
    drain_delay: Duration,
    admin: Option<std::net::SocketAddr>,
    echo: Option<std::net::SocketAddr>,
    redirect: Option<std::net::SocketAddr>,
    state: crate::config::StateConfig,
    buckets: Vec<f64>,
    reload: crate::config::ReloadConfig,
    access_log: Option<crate::config::AccessLogConfig>,
    tracing: Option<crate::config::TracingConfig>,
}

impl RestartOnly {
    fn of(c: &Config) -> RestartOnly {
        RestartOnly {
            listen: c.server.listen,
            workers: c.server.worker_count(),
            grace: c.server.shutdown_grace.0,
            drain_delay: c.server.drain_delay.0,
            admin: c.admin.as_ref().map(|a| a.listen),
            echo: c.echo.as_ref().map(|e| e.listen),
            redirect: c.server.tls.as_ref().and_then(|t| t.redirect_listen),
            state: c.state.clone(),
            buckets: c.metrics.duration_buckets.clone(),
            reload: c.reload.clone(),
            access_log: c.access_log.clone(),
            tracing: c.tracing.clone(),
        }
    }

    fn differences(&self, new: &RestartOnly) -> Vec<&'static str> {
        [
            (self.listen != new.listen, "[server] listen"),
            (self.workers != new.workers, "[server] workers"),
            (self.grace != new.grace, "[server] shutdown_grace"),
            (self.drain_delay != new.drain_delay, "[server] drain_delay"),
            (self.admin != new.admin, "[admin] listen"),
            (self.echo != new.echo, "[echo] listen"),
            (
                self.redirect != new.redirect,
                "[server.tls] redirect_listen",
            ),
            (self.state != new.state, "[state]"),
            (self.buckets != new.buckets, "[metrics] duration_buckets"),
            (self.reload != new.reload, "[reload]"),
            (self.access_log != new.access_log, "[access_log]"),
            (self.tracing != new.tracing, "[tracing]"),
        ]
        .into_iter()
        .filter_map(|(changed, what)| changed.then_some(what))
        .collect()
    }
}

/// One reload attempt, as the admin endpoint shows it.
#[derive(Clone)]
struct Attempt {
    at: SystemTime,
    /// The generation serving after it.
    generation: u64,
    /// Routes the new configuration adds and removes.
    routes: (Vec<String>, Vec<String>),
    trigger: &'static str,
    took: Duration,
    outcome: Result<BuildReport, String>,
    needs_restart: Vec<&'static str>,
}

/// Reload attempts the admin page lists.
const HISTORY: usize = 20;

impl Status {
    fn remember(&mut self, attempt: Attempt) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(attempt);
    }

    /// The latest reload attempt; start-up is not one.
    fn last(&self) -> Option<&Attempt> {
        self.history.back().filter(|a| a.trigger != "start")
    }
}

#[derive(Default)]
struct Status {
    /// The latest attempts, newest last, for the admin page.
    history: std::collections::VecDeque<Attempt>,
    running_since: Option<SystemTime>,
    /// The last error per plugin, kept until a reload succeeds.
    plugin_errors: HashMap<String, (SystemTime, String)>,
}

struct Builder {
    cache: PluginCache,
    restart_only: RestartOnly,
}

/// Builds and swaps in new configurations, one at a time.
pub struct Reloader {
    pub shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    source: ConfigSource,
    builder: tokio::sync::Mutex<Builder>,
    status: Mutex<Status>,
    /// Earlier configurations, alive while requests still hold them.
    retired: Mutex<Vec<Weak<Gateway>>>,
    watch: crate::config::ReloadConfig,
    /// Woken by every applied reload, so the watcher follows the new files.
    applied: tokio::sync::Notify,
    /// The TCP routes' listeners, opened and closed as configurations
    /// change.
    pub tcp: Arc<crate::tcp_server::Server>,
}

/// What `reload` answers: the new generation, or why nothing changed.
pub type ReloadResult = Result<(u64, BuildReport), String>;

impl Reloader {
    /// The first build, at start-up: the configuration must load.
    pub async fn start(
        source: ConfigSource,
        config: Config,
        runtime: Arc<Runtime>,
        metrics: Arc<crate::telemetry::Metrics>,
        inherited_tcp: Vec<std::net::TcpListener>,
    ) -> anyhow::Result<Arc<Reloader>> {
        let watch = config.reload.clone();
        let mut builder = Builder {
            cache: PluginCache::default(),
            restart_only: RestartOnly::of(&config),
        };
        let (gw, report) =
            crate::assemble::build(config, &runtime, metrics.clone(), &mut builder.cache, None)
                .await?;
        builder.cache.trim(&gw.plugins);
        metrics.declare_reloads();
        metrics.declare_edge();
        metrics.declare_tls_failures(&crate::tls::HandshakeFailure::ALL.map(|f| f.as_str()));
        let mut status = Status {
            running_since: Some(SystemTime::now()),
            ..Status::default()
        };
        status.history.push_back(Attempt {
            at: SystemTime::now(),
            generation: gw.generation,
            routes: (
                gw.routes.routes().iter().map(|r| r.id.clone()).collect(),
                Vec::new(),
            ),
            trigger: "start",
            took: Duration::ZERO,
            outcome: Ok(report),
            needs_restart: Vec::new(),
        });
        let shared = Arc::new(Shared::new(gw, metrics));
        let tcp = crate::tcp_server::Server::new(shared.clone(), inherited_tcp)?;
        let current = shared.current();
        let bound = tcp.bind_new(&current.tcp).map_err(anyhow::Error::msg)?;
        tcp.apply(bound, &current.tcp);
        drop(current);
        Ok(Arc::new(Reloader {
            tcp,
            shared,
            runtime,
            source,
            builder: tokio::sync::Mutex::new(builder),
            status: Mutex::new(status),
            retired: Mutex::new(Vec::new()),
            watch,
            applied: tokio::sync::Notify::new(),
        }))
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Reads the configuration and plugins again and swaps them in; on any
    /// error the running configuration stays. Reloads run one at a time.
    pub async fn reload(&self, trigger: &'static str) -> ReloadResult {
        let mut builder = self.builder.lock().await;
        let started = Instant::now();
        let metrics = self.shared.metrics.clone();
        let config = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                self.failed(trigger, started, None, &msg);
                return Err(msg);
            }
        };
        let needs_restart = builder.restart_only.differences(&RestartOnly::of(&config));
        let previous = self.shared.current();
        let built = crate::assemble::build(
            config,
            &self.runtime,
            metrics.clone(),
            &mut builder.cache,
            Some(&previous),
        )
        .await;
        let (mut gw, report) = match built {
            Ok(b) => b,
            Err(e) => {
                // Versions compiled for this attempt are not kept beyond the
                // spares, however many broken attempts come.
                builder.cache.trim(&previous.plugins);
                let msg = e.to_string();
                self.failed(trigger, started, Some(e.plugin()), &msg);
                return Err(msg);
            }
        };
        gw.generation = previous.generation + 1;
        let generation = gw.generation;
        let routes = {
            let ids = |g: &Gateway| -> Vec<String> {
                g.routes.routes().iter().map(|r| r.id.clone()).collect()
            };
            let (old, new) = (ids(&previous), ids(&gw));
            (
                new.iter().filter(|id| !old.contains(id)).cloned().collect(),
                old.into_iter().filter(|id| !new.contains(id)).collect(),
            )
        };
        // A TCP route's port that cannot be bound refuses the whole
        // configuration, as a plugin that cannot load does.
        let bound = match self.tcp.bind_new(&gw.tcp) {
            Ok(b) => b,
            Err(msg) => {
                builder.cache.trim(&previous.plugins);
                self.failed(trigger, started, None, &msg);
                return Err(msg);
            }
        };
        builder.cache.trim(&gw.plugins);
        // Every plugin the configuration names has loaded; errors of
        // plugins it no longer names are history.
        self.status.lock().plugin_errors.clear();
        self.shared.swap(gw);
        self.tcp.apply(bound, &self.shared.current().tcp);
        self.applied.notify_one();
        {
            let mut retired = self.retired.lock();
            retired.retain(|w| w.strong_count() > 0);
            retired.push(Arc::downgrade(&previous));
        }
        drop(previous);
        metrics.count_reload(true);
        let took = started.elapsed();
        if !needs_restart.is_empty() {
            tracing::warn!(
                "reload #{generation}: {} changed; that takes a restart, the rest is applied",
                needs_restart.join(", ")
            );
        }
        tracing::info!(
            trigger,
            "reload #{generation} applied in {} ms: plugins compiled {:?}, reused {:?}; filters configured {:?}, kept {:?}; upstreams renewed {:?}, kept {:?}",
            took.as_millis(),
            report.plugins_compiled,
            report.plugins_reused,
            report.filters_configured,
            report.filters_kept,
            report.upstreams_renewed,
            report.upstreams_kept,
        );
        let mut status = self.status.lock();
        status.running_since = Some(SystemTime::now());
        status.remember(Attempt {
            at: SystemTime::now(),
            generation,
            routes,
            trigger,
            took,
            outcome: Ok(report.clone()),
            needs_restart,
        });
        Ok((generation, report))
    }

    fn failed(&self, trigger: &'static str, started: Instant, plugin: Option<&str>, msg: &str) {
        tracing::error!(
            trigger,
            "reload refused, the running configuration stays: {msg}"
        );
        self.shared.metrics.count_reload(false);
        let now = SystemTime::now();
        let mut status = self.status.lock();
        if let Some(p) = plugin {
            status
                .plugin_errors
                .insert(p.to_string(), (now, msg.to_string()));
        }
        let generation = self.shared.current().generation;
        status.remember(Attempt {
            at: now,
            generation,
            routes: Default::default(),
            trigger,
            took: started.elapsed(),
            outcome: Err(msg.to_string()),
            needs_restart: Vec::new(),
        });
    }

    /// Earlier configurations still held by requests in flight.
    pub fn retired_alive(&self) -> usize {
        let mut retired = self.retired.lock();
        retired.retain(|w| w.strong_count() > 0);
        retired.len()
    }

    /// `/admin/plugins`: per plugin its file, version, load time, warm
    /// instances, calls and failures and last reload error, and the last
    /// reload.
    pub fn describe(&self) -> Value {
        let gw = self.shared.current();
        let status = self.status.lock();
        let mut plugins: Vec<Value> = gw
            .plugins
            .iter()
            .map(|p| {
                let filters: Vec<&Arc<crate::plugin::Filter>> = gw
                    .filters
                    .values()
                    .filter(|f| Arc::ptr_eq(&f.plugin, p))
                    .collect();
                let mut names: Vec<&str> = filters.iter().map(|f| &*f.name).collect();
                names.sort_unstable();
                json!({
                    "name": &*p.name,
                    "file": p.path.display().to_string(),
                    "sha256": p.sha256,
                    "wit": p.wit_version(),
                    "loaded_at": rfc3339(p.loaded_at),
                    "filters": names,
                    "instances_warm": filters.iter().map(|f| f.warm_count()).sum::<usize>(),
                    // Filters whose failure policy answers for now.
                    "suspended": filters
                        .iter()
                        .filter_map(|f| f.guard.suspended_until().map(|until| json!({
                            "filter": &*f.name,
                            "until": rfc3339(until),
                        })))
                        .collect::<Vec<_>>(),
                    "calls": p.calls.load(std::sync::atomic::Ordering::Relaxed),
                    "failures": p.failures.load(std::sync::atomic::Ordering::Relaxed),
                    "last_reload_error": status.plugin_errors.get(&*p.name).map(|(at, msg)| json!({
                        "at": rfc3339(*at),
                        "error": msg,
                    })),
                })
            })
            .collect();
        // A plugin whose first version failed to load has no entry above;
        // its error must still show.
        for (name, (at, msg)) in &status.plugin_errors {
            if !gw.plugins.iter().any(|p| &*p.name == name) {
                plugins.push(json!({
                    "name": name,
                    "last_reload_error": {"at": rfc3339(*at), "error": msg},
                }));
            }
        }
        json!({
            "generation": gw.generation,
            "config": match &self.source {
                ConfigSource::File(p) => p.display().to_string(),
                ConfigSource::Embedded => "<embedded>".to_string(),
            },
            "retired_generations_alive": self.retired_alive(),
            "running_since": status.running_since.map(rfc3339),
            "last_reload": status.last().map(attempt_json),
            "plugins": plugins,
            "compile_cache": self.runtime.compile_cache().map(|c| json!({
                "dir": c.dir().display().to_string(),
                "counts": c.counts(),
            })),
        })
    }

    /// Runs the watcher until the process ends; returns at once (after a
    /// log line) when the configuration is not a file or watching fails.
    /// `watching` is told once the files are watched (or dropped when
    /// nothing will be), so serving can wait for it: an edit made as soon
    /// as the gateway answers is then seen.
    pub async fn watch(self: Arc<Self>, watching: tokio::sync::oneshot::Sender<()>) {
        if matches!(self.source, ConfigSource::Embedded) || !self.watch.watch {
            return;
        }
        if let Err(e) = self.watch_loop(watching).await {
            tracing::error!(
                "file watcher stopped, reload with SIGHUP or POST /admin/reload: {e:#}"
            );
        }
    }

    async fn watch_loop(&self, watching: tokio::sync::oneshot::Sender<()>) -> anyhow::Result<()> {
        let mut watching = Some(watching);
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let _ = tx.send(ev);
        })?;
        let mut watched: HashSet<PathBuf> = HashSet::new();
        loop {
            let targets = self.watch_targets();
            let dirs = targets.dirs();
            for d in watched.difference(&dirs) {
                let _ = watcher.unwatch(d);
            }
            watched.retain(|d| dirs.contains(d));
            for d in &dirs {
                if !watched.contains(d) {
                    match watcher.watch(d, notify::RecursiveMode::NonRecursive) {
                        Ok(()) => {
                            watched.insert(d.clone());
                        }
                        // Retried on the next event or reload.
                        Err(e) => tracing::warn!("cannot watch {}: {e}", d.display()),
                    }
                }
            }
            if let Some(w) = watching.take() {
                let _ = w.send(());
            }
            // Wait for a change to a file the configuration depends on, or
            // for a reload by other means (SIGHUP, the admin endpoint), after
            // which the files to follow may be others.
            let reloaded = loop {
                tokio::select! {
                    ev = rx.recv() => {
                        let Some(ev) = ev else { anyhow::bail!("the watcher's channel closed") };
                        if let Some(path) = relevant(&ev, &targets) {
                            tracing::debug!("{} changed", path.display());
                            break false;
                        }
                    }
                    _ = self.applied.notified() => break true,
                }
            };
            if reloaded {
                continue;
            }
            // Editors and copies write in bursts: wait for a quiet spell, but
            // not forever while a file keeps changing.
            let first = Instant::now();
            let quiet = self.watch.debounce.0;
            let mut quiet_until = first + quiet;
            loop {
                let deadline = quiet_until.min(first + DEBOUNCE_MAX.max(quiet));
                tokio::select! {
                    ev = rx.recv() => {
                        let Some(ev) = ev else { anyhow::bail!("the watcher's channel closed") };
                        if relevant(&ev, &targets).is_some() {
                            quiet_until = Instant::now() + quiet;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                }
            }
            // A failed reload (a half-copied file, say) is logged and
            // counted; the next write to the file tries again.
            let _ = self.reload("watch").await;
        }
    }

    /// The files whose change triggers a reload: the config file, each
    /// plugin file the running configuration loads, each of its filters'
    /// `config_files` and `[server.tls]`'s certificates and keys.
    fn watch_targets(&self) -> Watched {
        let ConfigSource::File(config) = &self.source else {
            return Watched::default();
        };
        let gw = self.shared.current();
        let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let mut files = vec![absolute(config)];
        files.extend(gw.plugin_files.iter().map(absolute));
        files.extend(gw.config_files.iter().map(absolute));
        files.extend(gw.tls_files.iter().map(absolute));
        Watched {
            files,
            plugin_dir: Some(absolute(&gw.plugin_dir)),
        }
    }
}

/// The longest a stream of changes delays a reload.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// What the watcher follows: the files the running configuration was read
/// from, and every `.wasm` file in its plugin folder (so a plugin copied in
/// after a config naming it was refused is taken up when it lands).
#[derive(Debug, Default)]
struct Watched {
    files: Vec<PathBuf>,
    plugin_dir: Option<PathBuf>,
}

impl Watched {
    fn dirs(&self) -> HashSet<PathBuf> {
        self.files
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .chain(self.plugin_dir.clone())
            .collect()
    }

    fn covers(&self, p: &Path) -> bool {
        self.files.iter().any(|t| {
            t == p
                // A Kubernetes ConfigMap volume swaps a `..data` symlink
                // beside the files rather than writing them.
                || (p.file_name().is_some_and(|n| n == "..data") && t.parent() == p.parent())
        }) || (self.plugin_dir.as_deref() == p.parent()
            && p.extension().is_some_and(|e| e == "wasm"))
    }
}

/// The watched file an event is about, if it is one that may change its
/// content: writes, creations, renames, removals and touches, but not
/// reads (the gateway's own reads of the files would loop).
fn relevant(ev: &notify::Result<notify::Event>, watched: &Watched) -> Option<PathBuf> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!("file watcher: {e}");
            return None;
        }
    };
    let changes = match ev.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    };
    if !changes {
        return None;
    }
    ev.paths.iter().find(|p| watched.covers(p)).cloned()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Reloader {
    /// The latest reload attempts, newest first, with what each changed
    /// in words (or why it was refused), for the admin page.
    pub fn history(&self) -> Value {
        let now = SystemTime::now();
        let status = self.status.lock();
        Value::Array(
            status
                .history
                .iter()
                .rev()
                .map(|a| {
                    json!({
                        "at": rfc3339(a.at),
                        "seconds_ago": now.duration_since(a.at).unwrap_or_default().as_secs_f64(),
                        "trigger": a.trigger,
                        "result": if a.outcome.is_ok() { "success" } else { "failure" },
                        "generation": a.generation,
                        "took_ms": a.took.as_secs_f64() * 1000.0,
                        "changes": change_lines(a),
                        "error": a.outcome.as_ref().err(),
                    })
                })
                .collect(),
        )
    }
}

/// An attempt's changes as sentences: routes added and removed, plugins
/// compiled, filters configured anew, upstreams renewed, and settings
/// that wait for a restart.
fn change_lines(a: &Attempt) -> Vec<String> {
    let Ok(report) = &a.outcome else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut each = |what: &str, names: &[String], how: &str| {
        lines.extend(names.iter().map(|n| format!("{what} {n} {how}")));
    };
    each(
        "route",
        &a.routes.0,
        if a.trigger == "start" {
            "served"
        } else {
            "added"
        },
    );
    each("route", &a.routes.1, "removed");
    each("plugin", &report.plugins_compiled, "compiled");
    each("filter", &report.filters_configured, "configured");
    each("upstream", &report.upstreams_renewed, "renewed");
    lines.extend(
        a.needs_restart
            .iter()
            .map(|s| format!("{s} changed: applied at the next restart")),
    );
    if lines.is_empty() {
        lines.push("nothing changed".to_string());
    }
    lines
}

fn attempt_json(a: &Attempt) -> Value {
    let mut v = json!({
        "at": rfc3339(a.at),
        "trigger": a.trigger,
        "took_ms": a.took.as_secs_f64() * 1000.0,
        "result": if a.outcome.is_ok() { "success" } else { "failure" },
    });
    match &a.outcome {
        Ok(report) => {
            v["changes"] = serde_json::to_value(report).unwrap_or(Value::Null);
            v["needs_restart"] = json!(a.needs_restart);
        }
        Err(msg) => v["error"] = json!(msg),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
        RenameMode,
    };

    fn ev(kind: EventKind, path: &str) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn only_changes_to_watched_files_count() {
        let targets = Watched {
            files: vec![
                PathBuf::from("/etc/gw/gateway.toml"),
                PathBuf::from("/srv/plugins/auth.wasm"),
                PathBuf::from("/etc/gw/keys/jwks.json"),
            ],
            plugin_dir: Some(PathBuf::from("/srv/plugins")),
        };
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let hit = |kind, path| relevant(&ev(kind, path), &targets).is_some();
        assert!(hit(write, "/etc/gw/gateway.toml"));
        assert!(hit(write, "/srv/plugins/auth.wasm"));
        assert!(hit(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/srv/plugins/auth.wasm"
        ));
        assert!(hit(
            EventKind::Create(CreateKind::File),
            "/srv/plugins/auth.wasm"
        ));
        assert!(hit(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/etc/gw/gateway.toml"
        ));
        // `touch` asks for a reload; the gateway's own reads must not.
        assert!(hit(
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            "/etc/gw/gateway.toml"
        ));
        assert!(!hit(
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
            "/etc/gw/gateway.toml"
        ));
        assert!(!hit(
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            "/srv/plugins/auth.wasm"
        ));
        assert!(!hit(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/srv/plugins/auth.wasm"
        ));
        assert!(hit(write, "/etc/gw/keys/jwks.json"));
        // Files beside the watched ones: a temporary file, not a plugin.
        assert!(!hit(write, "/etc/gw/.gateway.toml.swp"));
        assert!(!hit(write, "/srv/plugins/notes.txt"));
        assert!(!hit(write, "/srv/plugins/sub/x.wasm"));
        // Any plugin file dropped in the plugin folder, named yet or not.
        assert!(hit(write, "/srv/plugins/other.wasm"));
        // A ConfigMap's `..data` swap beside the config, but not elsewhere.
        assert!(hit(EventKind::Create(CreateKind::Any), "/etc/gw/..data"));
        assert!(!hit(EventKind::Create(CreateKind::Any), "/tmp/..data"));
        assert!(relevant(&Err(notify::Error::generic("gone")), &targets).is_none());
    }
}
