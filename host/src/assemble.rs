//! Builds the [`Gateway`] a configuration describes. On a reload, what did
//! not change is taken from the gateway being served rather than built
//! again: plugins by content hash, filters whose plugin, settings and
//! routes are the same (with their warm instances), upstreams whose
//! settings are the same (and, when only some changed, the connection
//! pools and each remaining instance's breaker, health and outlier state),
//! and a route's retry budget while its retry settings stay.
//!
//! What is reused is decided first, from settings and plugin hashes alone
//! ([`Plan`]), and only then built, so the decisions are tested without
//! compiling a plugin or opening a socket.

use crate::config::{Config, Pin};
use crate::plugin::{Filter, LoadedPlugin, PluginError, Runtime, content_hash, read_plugin};
use crate::routing::RouteTable;
use crate::serving::{Built, Gateway, RouteRuntime};
use crate::telemetry::{self, Metrics, RouteMetrics};
use crate::tls::Terminator;
use crate::upstream::{Carry, RetryPolicy, Upstream};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Compiled plugins by name and content hash. Versions in use are always
/// kept; of the others, the most recently used few stay, so flipping back
/// and forth between two versions compiles each once.
#[derive(Default)]
pub struct PluginCache {
    entries: HashMap<(String, String), Cached>,
    uses: u64,
}

struct Cached {
    plugin: Arc<LoadedPlugin>,
    last_used: u64,
}

/// Versions not in use that the cache keeps.
const SPARE_VERSIONS: usize = 8;

impl PluginCache {
    /// The plugin `name` as its file now reads, compiled only if this
    /// content has not been seen; `true` when it was compiled now. A file
    /// whose hash is not the one `pin` names is refused before it is
    /// compiled.
    pub async fn get(
        &mut self,
        runtime: &Runtime,
        name: &str,
        path: &Path,
        pin: Option<Pin<'_>>,
    ) -> Result<(Arc<LoadedPlugin>, bool), PluginError> {
        let bytes = read_plugin(name, path)?;
        let hash = content_hash(&bytes);
        if let Some(pin) = pin
            && !pin.sha256.eq_ignore_ascii_case(&hash)
        {
            return Err(PluginError::Unpinned {
                plugin: name.into(),
                reason: format!(
                    "{}: filter `{}` pins plugin `{name}` to SHA-256 {}, but {} has {hash}; it is not loaded",
                    pin.at,
                    pin.filter,
                    pin.sha256.to_ascii_lowercase(),
                    path.display()
                ),
            });
        }
        self.uses += 1;
        let key = (name.to_string(), hash);
        if let Some(c) = self.entries.get_mut(&key) {
            c.last_used = self.uses;
            // A version compiled from another path (the plugin folder
            // moved) is the same code; reuse it.
            return Ok((c.plugin.clone(), false));
        }
        let plugin = runtime.compile(name, path, bytes, key.1.clone()).await?;
        self.entries.insert(
            key,
            Cached {
                plugin: plugin.clone(),
                last_used: self.uses,
            },
        );
        Ok((plugin, true))
    }

    /// Drops versions no longer needed: all but those in `in_use` and the
    /// most recently used spares.
    pub fn trim(&mut self, in_use: &[Arc<LoadedPlugin>]) {
        let used = |p: &Arc<LoadedPlugin>| in_use.iter().any(|u| Arc::ptr_eq(u, p));
        let mut spare: Vec<(u64, (String, String))> = self
            .entries
            .iter()
            .filter(|(_, c)| !used(&c.plugin))
            .map(|(k, c)| (c.last_used, k.clone()))
            .collect();
        spare.sort_unstable_by_key(|(used, _)| std::cmp::Reverse(*used));
        for (_, k) in spare.into_iter().skip(SPARE_VERSIONS) {
            self.entries.remove(&k);
        }
    }
}

/// What a build reused and what it made anew, for the log and the admin
/// endpoint.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BuildReport {
    pub plugins_compiled: Vec<String>,
    pub plugins_reused: Vec<String>,
    pub filters_configured: Vec<String>,
    pub filters_kept: Vec<String>,
    pub upstreams_kept: Vec<String>,
    pub upstreams_renewed: Vec<String>,
}

/// What a build does with one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStep {
    /// The running filter, with its warm instances, serves on.
    Keep,
    /// A new filter is configured from the plugin.
    Configure,
}

/// What a build does with one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamStep {
    /// The running upstream serves on: its settings are the same.
    Keep,
    /// A new upstream, taking over from the running one what `Carry` says.
    Renew(Carry),
    /// A new upstream; nothing ran under this name.
    New,
}

/// Every reuse decision of one build.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The route ids are the ones the running filters were configured
    /// with (filters may read them at `configure`).
    pub same_routes: bool,
    pub filters: BTreeMap<String, FilterStep>,
    pub upstreams: BTreeMap<String, UpstreamStep>,
    /// Routes whose retry budget carries over, by id.
    pub kept_retries: Vec<String>,
}

impl Plan {
    /// Decides what of `previous` the build of `config` reuses, given the
    /// content hash of each plugin `config` names.
    pub fn new(
        previous: Option<&Built>,
        config: &Config,
        plugin_hashes: &BTreeMap<String, String>,
    ) -> Plan {
        let empty = Built::default();
        let (previous, first) = match previous {
            Some(p) => (p, false),
            None => (&empty, true),
        };
        let same_routes = !first
            && config
                .routes
                .iter()
                .map(|r| r.id.as_str())
                .eq(previous.route_ids.iter().map(String::as_str));
        let filters = config
            .filters
            .iter()
            .map(|(name, fc)| {
                let hash = plugin_hashes.get(fc.plugin.as_str());
                let kept = previous.filters.get(name).is_some_and(|(old, old_hash)| {
                    same_routes && old == fc && Some(old_hash) == hash
                });
                let step = if kept {
                    FilterStep::Keep
                } else {
                    FilterStep::Configure
                };
                (name.clone(), step)
            })
            .collect();
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, new)| {
                let step = match previous.upstreams.get(name) {
                    None => UpstreamStep::New,
                    Some(old) if old == new => UpstreamStep::Keep,
                    Some(old) => UpstreamStep::Renew(Carry {
                        connections: old.connect_timeout == new.connect_timeout
                            && old.idle_timeout == new.idle_timeout
                            && old.max_idle_per_instance == new.max_idle_per_instance
                            && old.protocol == new.protocol
                            // A renewed CA or client certificate takes new
                            // connections; open ones were verified with the old.
                            && old.tls == new.tls,
                        breakers: old.breaker == new.breaker,
                        health: old.health == new.health,
                        outliers: old.outlier == new.outlier,
                    }),
                };
                (name.clone(), step)
            })
            .collect();
        let kept_retries = config
            .routes
            .iter()
            .filter(|r| {
                r.retry
                    .as_ref()
                    .is_some_and(|new| previous.retries.get(r.id.as_str()) == Some(new))
            })
            .map(|r| r.id.to_string())
            .collect();
        Plan {
            same_routes,
            filters,
            upstreams,
            kept_retries,
        }
    }
}

/// Loads every plugin, configures every filter and resolves every route.
/// With `previous` (a reload), what the [`Plan`] keeps is taken from it.
pub async fn build(
    config: Config,
    runtime: &Runtime,
    metrics: Arc<Metrics>,
    cache: &mut PluginCache,
    previous: Option<&Gateway>,
) -> Result<(Gateway, BuildReport), PluginError> {
    let mut report = BuildReport::default();
    let mut plugins: BTreeMap<String, Arc<LoadedPlugin>> = BTreeMap::new();
    for fc in config.filters.values() {
        let name = fc.plugin.as_str();
        if plugins.contains_key(name) {
            continue;
        }
        let (p, compiled) = cache
            .get(runtime, name, &config.plugin_path(name), config.pin(name))
            .await?;
        if compiled {
            report.plugins_compiled.push(name.to_string());
        } else {
            report.plugins_reused.push(name.to_string());
        }
        plugins.insert(name.to_string(), p);
    }
    let hashes = plugins
        .iter()
        .map(|(n, p)| (n.clone(), p.sha256.clone()))
        .collect();
    let plan = Plan::new(previous.map(|p| &p.built), &config, &hashes);
    let route_ids: Arc<[String]> = match previous {
        Some(p) if plan.same_routes => p.built.route_ids.clone(),
        _ => config.routes.iter().map(|r| r.id.to_string()).collect(),
    };

    let mut filters: HashMap<String, Arc<Filter>> = HashMap::new();
    for (name, fc) in &config.filters {
        let kept = previous
            .filter(|_| plan.filters[name] == FilterStep::Keep)
            .and_then(|p| p.filters.get(name));
        let filter = match kept {
            Some(f) => {
                report.filters_kept.push(name.clone());
                f.clone()
            }
            None => {
                report.filters_configured.push(name.clone());
                let plugin = plugins[fc.plugin.as_str()].clone();
                let made = runtime
                    .filter(name, plugin, fc, &config.base_dir, route_ids.clone())
                    .await;
                Arc::new(made.map_err(|e| at_the_setting(&config, e))?)
            }
        };
        filters.insert(name.clone(), filter);
    }

    // Upstreams last: nothing after this can fail, so a refused reload
    // never starts a health checker.
    let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
    for (name, cfg) in &config.upstreams {
        let running = previous.and_then(|p| p.upstreams.get(name));
        let up = match (plan.upstreams[name], running) {
            (UpstreamStep::Keep, Some(up)) => {
                report.upstreams_kept.push(name.clone());
                up.clone()
            }
            (step, running) => {
                let carried = match step {
                    UpstreamStep::Renew(carry) => running.map(|up| (&**up, carry)),
                    _ => None,
                };
                if carried.is_some() {
                    report.upstreams_renewed.push(name.clone());
                }
                let up = Arc::new(Upstream::renewed(name, cfg, metrics.clone(), carried));
                up.start_tasks();
                up
            }
        };
        upstreams.insert(name.clone(), up);
    }
    // Filters' outbound calls go to this configuration's clusters from now.
    runtime.clusters().replace(upstreams.clone());

    let route_runtime = config
        .routes
        .iter()
        .map(|r| {
            let id: Arc<str> = r.id.as_str().into();
            let kept_retry = previous
                .filter(|_| plan.kept_retries.iter().any(|k| **k == *id))
                .and_then(|p| p.route_runtime.iter().find(|old| old.id == id))
                .and_then(|old| old.retry.clone());
            let label = telemetry::shared(&id);
            let methods: Vec<&'static str> = match &r.methods {
                Some(ms) => ms
                    .iter()
                    .map(|m| telemetry::method_label(m.as_method()))
                    .collect(),
                None => vec!["GET"],
            };
            metrics.declare_retries(&label);
            // Compared with, and counted under, the lowercase name a request's
            // Upgrade is read as.
            let upgrades: Vec<String> = r.upgrades.iter().map(|u| u.to_ascii_lowercase()).collect();
            if !upgrades.is_empty() {
                metrics.declare_tunnels(&label, &upgrades);
            }
            let timeout = r.timeout.unwrap_or(config.server.request_timeout).0;
            RouteRuntime {
                metrics: RouteMetrics::new(&metrics, label.clone(), &methods),
                label,
                id,
                filters: r
                    .filters
                    .iter()
                    .map(|f| filters[f.as_str()].clone())
                    .collect(),
                upstream: upstreams[r.upstream.as_str()].clone(),
                timeout,
                try_timeout: r.try_timeout.map_or(timeout, |t| t.0),
                retry: kept_retry
                    .or_else(|| r.retry.as_ref().map(|c| Arc::new(RetryPolicy::new(c)))),
                upgrades,
            }
        })
        .collect();
    let plugin_files = plugins.keys().map(|p| config.plugin_path(p)).collect();
    let plugin_dir = config.base_dir.join(&config.plugins.dir);
    let config_files = config
        .filters
        .values()
        .flat_map(|f| f.config_files.values())
        .map(|p| config.base_dir.join(p))
        .collect();
    let tls_loaded = config.server.tls.as_ref().and_then(|t| t.loaded.as_ref());
    let tls = tls_loaded.map(|t| Arc::new(Terminator::new(t)));
    let upstream_tls_files = config
        .upstreams
        .values()
        .filter_map(|u| u.tls.as_ref()?.loaded.as_ref())
        .flat_map(|t| t.files.paths.iter().cloned());
    let tls_files = tls_loaded
        .map(|t| t.files.paths.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(upstream_tls_files)
        .collect();
    let built = Built {
        filters: config
            .filters
            .iter()
            .map(|(n, f)| {
                (
                    n.clone(),
                    (f.clone(), plugins[f.plugin.as_str()].sha256.clone()),
                )
            })
            .collect(),
        retries: config
            .routes
            .iter()
            .filter_map(|r| Some((r.id.to_string(), r.retry.clone()?)))
            .collect(),
        upstreams: config.upstreams.clone(),
        route_ids,
    };
    let tcp = crate::l4::Routes::new(
        &config.tcp_routes,
        &upstreams,
        &metrics,
        previous.map(|p| &p.tcp),
    );
    Ok((
        Gateway {
            routes: RouteTable::new(&config.routes),
            route_runtime,
            filters,
            upstreams,
            unrouted: RouteMetrics::new(
                &metrics,
                opentelemetry::Value::from(telemetry::NO_ROUTE),
                &["GET"],
            ),
            metrics,
            server: config.server,
            generation: 0,
            plugins: plugins.into_values().collect(),
            plugin_files,
            config_files,
            tls_files,
            plugin_dir,
            tls,
            tcp,
            built,
        },
        report,
    ))
}

/// A filter's refusal of one of its settings, pointed at the line and
/// column of that setting under `[filters.NAME.config]`.
fn at_the_setting(config: &Config, e: PluginError) -> PluginError {
    match e {
        PluginError::Configure {
            plugin,
            filter,
            reason,
            at: None,
        } => {
            let at = crate::plugin::refused_setting(&reason).and_then(|(path, _)| {
                let full: Vec<&str> = ["filters", filter.as_str(), "config"]
                    .into_iter()
                    .chain(path.iter().map(String::as_str))
                    .collect();
                config.position(&full)
            });
            PluginError::Configure {
                plugin,
                filter,
                reason,
                at,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A plugin folder with an (empty) plugin file `p.wasm`: the
    /// configuration checks that it exists; the plan never reads it.
    fn plugin_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.wasm"), b"").unwrap();
        dir
    }

    const BASE: &str = r#"
[filters.a]
plugin = "p"
[filters.b]
plugin = "p"
config = { x = 1 }

[upstreams.api]
instances = ["127.0.0.1:3000", "127.0.0.1:3001"]
[upstreams.api.health]
path = "/health"

[upstreams.web]
instances = ["127.0.0.1:4000"]

[[route]]
id = "one"
upstream = "api"
filters = ["a", "b"]
[route.retry]
attempts = 3

[[route]]
id = "two"
upstream = "web"
[route.retry]
attempts = 2
"#;

    fn config(body: &str) -> Config {
        let dir = plugin_dir();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndir = \"{}\"\n{body}",
            dir.display()
        );
        Config::parse("t.toml", &text, dir, &|_| None).unwrap()
    }

    fn hashes(p: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("p".to_string(), p.to_string())])
    }

    /// What `build` records of a configuration, as it would for the next
    /// reload to compare with.
    fn built(c: &Config, hash: &str) -> Built {
        Built {
            filters: c
                .filters
                .iter()
                .map(|(n, f)| (n.clone(), (f.clone(), hash.to_string())))
                .collect(),
            upstreams: c.upstreams.clone(),
            retries: c
                .routes
                .iter()
                .filter_map(|r| Some((r.id.clone(), r.retry.clone()?)))
                .collect(),
            route_ids: c.routes.iter().map(|r| r.id.clone()).collect(),
        }
    }

    #[test]
    fn a_first_build_makes_everything() {
        let plan = Plan::new(None, &config(BASE), &hashes("h1"));
        assert!(!plan.same_routes);
        assert!(plan.filters.values().all(|s| *s == FilterStep::Configure));
        assert!(plan.upstreams.values().all(|s| *s == UpstreamStep::New));
        assert!(plan.kept_retries.is_empty());
    }

    #[test]
    fn an_unchanged_configuration_keeps_everything() {
        let before = built(&config(BASE), "h1");
        let plan = Plan::new(Some(&before), &config(BASE), &hashes("h1"));
        assert!(plan.same_routes);
        assert!(plan.filters.values().all(|s| *s == FilterStep::Keep));
        assert!(plan.upstreams.values().all(|s| *s == UpstreamStep::Keep));
        assert_eq!(plan.kept_retries, ["one", "two"]);
    }

    #[test]
    fn a_new_plugin_version_configures_its_filters_anew() {
        let before = built(&config(BASE), "h1");
        let plan = Plan::new(Some(&before), &config(BASE), &hashes("h2"));
        assert!(plan.filters.values().all(|s| *s == FilterStep::Configure));
        assert!(plan.upstreams.values().all(|s| *s == UpstreamStep::Keep));
    }

    #[test]
    fn only_the_filter_whose_settings_changed_is_configured() {
        let before = built(&config(BASE), "h1");
        let changed = config(&BASE.replace("config = { x = 1 }", "config = { x = 2 }"));
        let plan = Plan::new(Some(&before), &changed, &hashes("h1"));
        assert_eq!(plan.filters["a"], FilterStep::Keep);
        assert_eq!(plan.filters["b"], FilterStep::Configure);
    }

    #[test]
    fn filters_are_configured_anew_when_the_routes_change() {
        // Filters read the route ids at configure time.
        let before = built(&config(BASE), "h1");
        let more = config(&format!(
            "{BASE}\n[[route]]\nid = \"three\"\nupstream = \"web\"\n"
        ));
        let plan = Plan::new(Some(&before), &more, &hashes("h1"));
        assert!(!plan.same_routes);
        assert!(plan.filters.values().all(|s| *s == FilterStep::Configure));
        assert!(plan.upstreams.values().all(|s| *s == UpstreamStep::Keep));
        assert_eq!(plan.kept_retries, ["one", "two"]);
    }

    #[test]
    fn an_upstream_renewed_carries_what_its_change_leaves_meaningful() {
        let before = built(&config(BASE), "h1");
        let health = config(&BASE.replace("path = \"/health\"", "path = \"/ready\""));
        let plan = Plan::new(Some(&before), &health, &hashes("h1"));
        assert_eq!(
            plan.upstreams["api"],
            UpstreamStep::Renew(Carry {
                connections: true,
                breakers: true,
                health: false,
                outliers: true,
            })
        );
        assert_eq!(plan.upstreams["web"], UpstreamStep::Keep);

        let connect = config(&BASE.replace(
            "instances = [\"127.0.0.1:4000\"]",
            "instances = [\"127.0.0.1:4000\"]\nconnect_timeout = \"1s\"\n[upstreams.web.breaker]\nconsecutive_failures = 9",
        ));
        let plan = Plan::new(Some(&before), &connect, &hashes("h1"));
        assert_eq!(
            plan.upstreams["web"],
            UpstreamStep::Renew(Carry {
                connections: false,
                breakers: false,
                health: true,
                outliers: true,
            })
        );
    }

    #[test]
    fn an_upstream_under_a_new_name_is_new_and_a_changed_retry_starts_a_new_budget() {
        let before = built(&config(BASE), "h1");
        let renamed = config(
            &BASE
                .replace("[upstreams.web]", "[upstreams.site]")
                .replace("upstream = \"web\"", "upstream = \"site\"")
                .replace("attempts = 2", "attempts = 4"),
        );
        let plan = Plan::new(Some(&before), &renamed, &hashes("h1"));
        assert_eq!(plan.upstreams["site"], UpstreamStep::New);
        assert_eq!(plan.kept_retries, ["one"]);
    }
}
