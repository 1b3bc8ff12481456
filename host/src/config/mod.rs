//! The gateway's TOML configuration. Each section's schema and its own
//! rules live in a file of their own (`server`, `filters`, `upstreams`,
//! `routes`, `telemetry`, `state`); values that can be judged alone check
//! themselves as they are read (`types`); `validate` holds the rules that
//! span sections; `env` expands `${VAR}` inside string values.
//!
//! Every refusal names the file, line and column of the offending value as
//! written (variables expanded or not) and says in one sentence what to
//! change. The schema types carry no positions: where a setting was
//! written is looked up in the parsed document by its key path, so the
//! rest of the gateway receives plain values.

mod env;
mod filters;
mod routes;
mod server;
mod state;
mod tcp;
mod telemetry;
#[cfg(test)]
mod tests;
mod tls;
mod types;
mod upstreams;
mod validate;

pub use env::Env;
pub use filters::{FailurePolicy, FilterConfig, FilterLogLevel, Isolation, MAX_CONFIG_FILE_BYTES};
pub use routes::{MIN_BUDGET_WINDOW, RetryConfig, RouteConfig};
pub use server::{
    AdminConfig, EchoConfig, MIN_ADMIN_TOKEN_BYTES, PathParameters, PluginsConfig, ReloadConfig,
    ServerConfig, default_compile_cache_dir,
};
pub use state::{MAX_WINDOW, StateBackend, StateConfig};
pub use tcp::{CLIENT_HELLO_TIMEOUT, ProxyProtocol, TcpRouteConfig};
pub use telemetry::{AccessLogConfig, MetricsConfig, TracingConfig};
pub use tls::{
    ClientAuth, LoadedCertificate, LoadedTls, LoadedUpstreamTls, SniCertificate, TlsConfig,
    UpstreamTlsConfig, crypto_provider,
};
pub use types::{
    FailureOn, HostPattern, MAX_MEMORY_LIMIT_MIB, MemoryMib, Method, Millis, Outcome, PluginName,
    Ratio, RetryOn, ServerNames, Status, is_plain_name,
};
pub use upstreams::{
    BreakerConfig, HealthConfig, InstanceConfig, MIN_HEALTH_INTERVAL, OutlierConfig, Strategy,
    UpstreamConfig, UpstreamProtocol, WeightedInstance, parse_authority,
};

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::de::{DeTable, DeValue};

/// The configuration shipped in the binary, served when `config/gateway.toml`
/// is not found next to the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/gateway.toml");

/// A configuration refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub echo: Option<EchoConfig>,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where plugins keep shared counters.
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub reload: ReloadConfig,
    pub access_log: Option<AccessLogConfig>,
    pub tracing: Option<TracingConfig>,
    #[serde(default)]
    pub filters: BTreeMap<String, FilterConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default, rename = "tcp_route")]
    pub tcp_routes: Vec<TcpRouteConfig>,
    /// The directory relative paths are resolved from (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The text it was read from, for refusals found after loading.
    #[serde(skip)]
    pub origin: Option<Arc<Origin>>,
}

/// A configuration's file name and text, kept so that a refusal found once
/// it is loaded (a filter's `configure` refusing a setting) still names the
/// line and column the user wrote it at.
#[derive(Debug)]
pub struct Origin {
    pub file: String,
    pub text: String,
}

/// Where the config came from: a file, or the copy built into the binary.
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl ConfigSource {
    /// Reads, parses, expands and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::Embedded => Config::parse(
                "<embedded config/gateway.toml>",
                EMBEDDED_DEFAULT,
                PathBuf::from("config"),
                &|k| std::env::var(k).ok(),
            ),
        }
    }
}

/// The hash a filter requires of its plugin file, and where it says so.
#[derive(Debug, Clone)]
pub struct Pin<'c> {
    pub filter: &'c str,
    pub sha256: &'c str,
    /// `FILE:LINE:COL` of the pin.
    pub at: String,
}

impl Config {
    /// Reads, parses, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&file, &text, base, &|k| std::env::var(k).ok())
    }

    /// Parses config text; `file` names it in errors.
    pub fn parse(
        file: &str,
        text: &str,
        base_dir: PathBuf,
        env: &Env<'_>,
    ) -> Result<Config, ConfigError> {
        let mut doc = DeTable::parse(text).map_err(|e| env::syntax_error(file, text, &e))?;
        env::expand_table(doc.get_mut(), text, env)
            .map_err(|(at, message)| error_at(file, text, at, message))?;
        let src = Source { file, text, doc };
        // The document is kept for positions; the config is built from a copy.
        let mut config = Config::deserialize(toml::de::Deserializer::from(src.doc.clone()))
            .map_err(|e| {
                let at = e.span().map_or(0, |s| s.start);
                src.error_at(at, src.with_subject(at, toml_message(&e)))
            })?;
        config.base_dir = base_dir;
        config.origin = Some(Arc::new(Origin {
            file: file.to_string(),
            text: text.to_string(),
        }));
        config.validate(&src)?;
        for (name, f) in &mut config.filters {
            f.read_files(&src, name, &config.base_dir)?;
        }
        config.state.load(&src, &config.base_dir)?;
        if let Some(tls) = &mut config.server.tls {
            tls.load(&src, &config.base_dir)?;
        }
        for (name, u) in &mut config.upstreams {
            if let Some(tls) = &mut u.tls {
                tls.load(&src, name, &config.base_dir, u.protocol)?;
            }
        }
        Ok(config)
    }

    /// The plugin file a filter names.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        self.base_dir
            .join(&self.plugins.dir)
            .join(format!("{plugin}.wasm"))
    }

    /// The hash a filter pins plugin `plugin` to, if any filter does
    /// (validation saw that all that do agree).
    pub fn pin(&self, plugin: &str) -> Option<Pin<'_>> {
        self.filters
            .iter()
            .find(|(_, f)| f.plugin.as_str() == plugin && f.sha256.is_some())
            .map(|(name, f)| Pin {
                filter: name,
                sha256: f.sha256.as_deref().unwrap_or_default(),
                at: self
                    .position(&["filters", name, "sha256"])
                    .unwrap_or_else(|| format!("[filters.{name}] sha256")),
            })
    }

    /// `FILE:LINE:COL` of the setting at `path` (keys, and array positions
    /// as numbers), or of the nearest table on it that was written.
    pub fn position(&self, path: &[&str]) -> Option<String> {
        let o = self.origin.as_ref()?;
        let doc = DeTable::parse(&o.text).ok()?;
        let src = Source {
            file: &o.file,
            text: &o.text,
            doc,
        };
        let (line, column) = line_col(&o.text, src.find(path).at);
        Some(format!("{}:{line}:{column}", o.file))
    }

    /// Where compiled plugins are kept, if anywhere.
    pub fn compile_cache_dir(&self) -> Option<PathBuf> {
        if !self.plugins.compile_cache {
            return None;
        }
        match &self.plugins.compile_cache_dir {
            Some(d) => Some(self.base_dir.join(d)),
            None => server::default_compile_cache_dir(),
        }
    }

    /// Each section's own rules, then those that span sections.
    fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        self.server.validate(src)?;
        self.state.validate(src)?;
        for (name, f) in &self.filters {
            f.validate(src, name, &self.base_dir)?;
        }
        for (name, u) in &self.upstreams {
            u.validate(src, name)?;
        }
        routes::validate(&self.routes, src)?;
        tcp::validate(&self.tcp_routes, src)?;
        if let Some(t) = &self.tracing {
            t.validate(src)?;
        }
        self.metrics.validate(src)?;
        validate::across_sections(self, src)
    }
}

/// The config file as written, and its parsed document. Every position
/// reported, from TOML, from `${VAR}` expansion or from validation, is a
/// byte offset into `text`, the text the user sees in their editor.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    /// The document after expansion, its spans still into `text`. Where a
    /// setting was written is looked up here by its key path, so the
    /// runtime types need no `Spanned` just to be reported on.
    doc: Spanned<DeTable<'a>>,
}

/// What `Source::find` found of a key path.
struct Found<'s, 'a> {
    /// The value at the end of the path; None when the path stops early.
    value: Option<&'s Spanned<DeValue<'a>>>,
    /// Where to point: the value's start, or the start of the nearest
    /// table on the path that was written.
    at: usize,
    /// The start of the last key name on the path that was found.
    name_at: usize,
}

impl<'a> Source<'a> {
    fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        error_at(self.file, self.text, offset, message)
    }

    /// An error at the value of the setting at `path`, like
    /// `["upstreams", "api", "breaker", "half_open_probes"]`; an array's
    /// element is named by its index (`["route", "2", "timeout"]`). For a
    /// setting left to its default, the error points at the nearest table
    /// that was written.
    fn error_key(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        self.error_at(self.find(path).at, message)
    }

    /// Like `error_key`, but at the last key's name rather than its value:
    /// for a name refused as a name.
    fn error_key_name(&self, path: &[&str], message: impl Into<String>) -> ConfigError {
        self.error_at(self.find(path).name_at, message)
    }

    /// `Err(error_key(path, message()))` unless `ok`.
    fn require(
        &self,
        ok: bool,
        path: &[&str],
        message: impl FnOnce() -> String,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.error_key(path, message()))
        }
    }

    /// Records `id`, written at `at`, as taken among the `kind`s (`route`,
    /// `tcp_route`); refuses it when an earlier one took it.
    fn unique_id<'i>(
        &self,
        seen: &mut std::collections::HashMap<&'i str, usize>,
        kind: &str,
        id: &'i str,
        at: usize,
    ) -> Result<(), ConfigError> {
        match seen.insert(id, at) {
            Some(first) => {
                let (line, _) = line_col(self.text, first);
                Err(self.error_at(
                    at,
                    format!(
                        "{kind} id `{id}` is already used on line {line}; give each route its own id"
                    ),
                ))
            }
            None => Ok(()),
        }
    }

    /// The value at `path` as the user wrote it (`"0ms"`, `0`), when it
    /// was written.
    fn written(&self, path: &[&str]) -> Option<&str> {
        let v = self.find(path).value?;
        self.text.get(v.span())
    }

    /// A value's own check says "a route lists …": name the route, upstream
    /// or filter whose table holds the value at `offset`.
    fn with_subject(&self, offset: usize, message: String) -> String {
        // A table written with a header spans the header only: the value
        // belongs to the last table that starts before it.
        let starts_before = |v: &&Spanned<DeValue<'_>>| v.span().start <= offset;
        let top = self.doc.get_ref();
        let subject = if let Some(rest) = message.strip_prefix("a route ") {
            let route = match top.get("route").map(Spanned::get_ref) {
                Some(DeValue::Array(items)) => items.iter().rfind(starts_before),
                _ => None,
            };
            let id = route.and_then(|r| match r.get_ref() {
                DeValue::Table(t) => match t.get("id").map(Spanned::get_ref) {
                    Some(DeValue::String(id)) => Some(id.to_string()),
                    _ => None,
                },
                _ => None,
            });
            id.map(|id| format!("route `{id}` {rest}"))
        } else if let Some(rest) = message.strip_prefix("an upstream ") {
            let name = match top.get("upstreams").map(Spanned::get_ref) {
                Some(DeValue::Table(t)) => t
                    .iter()
                    .filter(|(_, v)| starts_before(v))
                    .max_by_key(|(_, v)| v.span().start)
                    .map(|(k, _)| k.get_ref().to_string()),
                _ => None,
            };
            name.map(|n| format!("upstream `{n}` {rest}"))
        } else {
            None
        };
        subject.unwrap_or(message)
    }

    fn find(&self, path: &[&str]) -> Found<'_, 'a> {
        let mut found = Found {
            value: None,
            at: self.doc.span().start,
            name_at: self.doc.span().start,
        };
        let mut node: Option<&Spanned<DeValue<'_>>> = None;
        for (i, seg) in path.iter().enumerate() {
            let next = match node.map(Spanned::get_ref) {
                None => self.doc.get_ref().get_key_value(*seg),
                Some(DeValue::Table(t)) => t.get_key_value(*seg),
                // An array's element has no name: its value stands for it.
                Some(DeValue::Array(items)) => {
                    let item = seg.parse::<usize>().ok().and_then(|n| items.get(n));
                    let Some(v) = item else { return found };
                    node = Some(v);
                    found = Found {
                        value: (i + 1 == path.len()).then_some(v),
                        at: v.span().start,
                        name_at: v.span().start,
                    };
                    continue;
                }
                Some(_) => None,
            };
            let Some((key, v)) = next else { return found };
            node = Some(v);
            found = Found {
                value: (i + 1 == path.len()).then_some(v),
                at: v.span().start,
                name_at: key.span().start,
            };
        }
        found
    }
}

fn error_at(file: &str, text: &str, offset: usize, message: impl Into<String>) -> ConfigError {
    let (line, column) = line_col(text, offset);
    ConfigError {
        file: file.to_string(),
        line,
        column,
        message: message.into(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A setting refused: its key, whether its value is refused, what that
/// value would do, and what to write instead.
type Refusal<'r> = (&'r str, bool, &'r str, &'r str);

/// The first refusal that applies, at its key's value, as
/// "`key = value` in `[table]` `effect`; `instead`".
fn refuse(src: &Source<'_>, table: &[&str], refusals: &[Refusal<'_>]) -> Result<(), ConfigError> {
    refuse_labelled(src, table, &table_label(table), refusals)
}

fn refuse_labelled(
    src: &Source<'_>,
    table: &[&str],
    label: &str,
    refusals: &[Refusal<'_>],
) -> Result<(), ConfigError> {
    for &(key, refused, effect, instead) in refusals {
        if refused {
            let path = [table, &[key]].concat();
            let setting = match src.written(&path) {
                Some(value) => format!("{key} = {value}"),
                None => key.to_string(),
            };
            return Err(src.error_key(&path, format!("{setting} in {label} {effect}; {instead}")));
        }
    }
    Ok(())
}

/// Refuses a cap shorter than the base it caps (`max_cool_down` under
/// `cool_down`): the runtime would ignore it. The error points at the cap
/// when it was written, else at the base that outgrew its default cap.
impl Source<'_> {
    fn not_below(
        &self,
        table: &[&str],
        cap: (&str, Millis),
        base: (&str, Millis),
    ) -> Result<(), ConfigError> {
        self.not_below_labelled(table, &table_label(table), cap, base)
    }

    fn not_below_labelled(
        &self,
        table: &[&str],
        label: &str,
        (cap, cap_value): (&str, Millis),
        (base, base_value): (&str, Millis),
    ) -> Result<(), ConfigError> {
        if cap_value.0 >= base_value.0 {
            return Ok(());
        }
        let cap_path = [table, &[cap]].concat();
        let cap_written = self.written(&cap_path).is_some();
        let at = if cap_written {
            cap_path
        } else {
            [table, &[base]].concat()
        };
        let default = if cap_written {
            String::new()
        } else {
            format!(" ({cap} is not written: {cap_value} is its default, so set it)")
        };
        Err(self.error_key(
            &at,
            format!(
                "{cap} = {cap_value} in {label} is shorter than {base} = {base_value}, so it would be ignored; make {cap} at least {base}{default}"
            ),
        ))
    }
}

/// `[upstreams.api.breaker]` for a key path, quoting keys TOML would.
fn table_label(path: &[&str]) -> String {
    let keys: Vec<String> = path
        .iter()
        .map(|k| {
            if !k.is_empty() && is_plain_name(k) {
                k.to_string()
            } else {
                format!("{k:?}")
            }
        })
        .collect();
    format!("[{}]", keys.join("."))
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "(none defined)".to_string()
    } else {
        names.join(", ")
    }
}

/// toml's message, without its own rendering of the source line.
fn toml_message(e: &toml::de::Error) -> String {
    // Rust's names for the expected types, in the words of the file.
    let mut m = e.message().trim().to_string();
    for (rust, toml) in [
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected path string", "expected a path as a string"),
        ("invalid type: map,", "invalid type: table,"),
        ("invalid type: sequence,", "invalid type: list,"),
    ] {
        m = m.replace(rust, toml);
    }
    if let Some(at) = m.find("expected struct ") {
        m.replace_range(at.., "expected a table");
    }
    if m.starts_with("unknown variant") {
        format!("{m}; use one of those")
    } else if m.starts_with("invalid value") {
        format!("{m}; change the value")
    } else if m.starts_with("unknown field") {
        format!("{m}; remove it or correct its spelling")
    } else if m.starts_with("invalid type") {
        format!("{m}; change the value to that type")
    } else if m.starts_with("missing field") {
        format!("{m}; add it")
    } else {
        m
    }
}
