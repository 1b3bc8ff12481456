//! `[filters.NAME]`: a plugin with its own settings, its limits and what
//! it is granted. Several filters may share one plugin file with different
//! `config` tables.

use super::{
    ConfigError, MemoryMib, Millis, PluginName, Source, Status, is_plain_name, refuse,
    state::window_in_range,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Answer the client with the filter's `failure_status`.
    FailClosed,
    /// Skip the filter and go on with the chain.
    FailOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Pooled,
    Request,
}

/// The least severe of a filter's log lines the gateway writes: its
/// `host.log` calls and what it prints to standard output (`info`) and
/// standard error (`warn`). Lines below it are dropped before they count
/// against the filter's log budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterLogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The plugin's name: the file `<plugin>.wasm` in `[plugins] dir`.
    pub plugin: PluginName,
    /// The SHA-256 (hex) the plugin file must have; a file with another is
    /// refused at start and at every reload, and the running version
    /// serves on. `gateway plugin hash FILE` prints it.
    pub sha256: Option<String>,
    #[serde(default = "defaults::failure")]
    pub failure: FailurePolicy,
    /// The status answered under `fail-closed`.
    #[serde(default = "defaults::failure_status")]
    pub failure_status: Status,
    /// The most time one call may take before it is interrupted.
    #[serde(default = "defaults::timeout")]
    pub timeout: Millis,
    /// The most linear memory one instance may grow to, in MiB.
    #[serde(default = "defaults::memory_limit_mib")]
    pub memory_limit_mib: MemoryMib,
    /// Warm instances kept for reuse (under `request` isolation: fresh
    /// instances made ready ahead).
    #[serde(default = "defaults::instances")]
    pub instances: usize,
    /// `pooled`: instances are reused from call to call. `request`: every
    /// request gets a fresh instance for its on-request and on-response, so
    /// nothing a request leaves in the instance's memory reaches another.
    #[serde(default)]
    pub isolation: Isolation,
    /// The least severe of the filter's own log lines that are written.
    #[serde(default)]
    pub log_level: FilterLogLevel,
    /// Failed calls in a row after which the filter is suspended: for a
    /// pause (1 s, doubling while it keeps failing, up to a minute) its
    /// failure policy answers without a call and no instance is made.
    /// 0: never.
    #[serde(default = "defaults::suspend_after")]
    pub suspend_after: u32,
    /// Environment variables the filter may read, by name; their values are
    /// taken from the gateway's environment when the filter is configured.
    /// None by default.
    #[serde(default)]
    pub env: Vec<String>,
    /// Directories the filter may read (never write): `"/guest/path" =
    /// "host/path"`, host paths relative to the config file. None by default.
    #[serde(default)]
    pub dirs: BTreeMap<String, PathBuf>,
    /// This filter's shared-state quota, where it differs from `[state]`'s
    /// `filter_max_entries`, `filter_max_bytes` and `filter_max_window`.
    pub state_max_entries: Option<usize>,
    pub state_max_bytes: Option<usize>,
    pub state_max_window: Option<Millis>,
    /// Upstream clusters a 0.2.0 filter may call (`callout.send`); none
    /// by default.
    #[serde(default)]
    pub callouts: Vec<String>,
    /// How long one callout waits when the filter names no timeout; never
    /// past the filter call's own `timeout`.
    #[serde(default = "defaults::callout_timeout")]
    pub callout_timeout: Millis,
    /// The largest body a callout may send or receive, in bytes.
    #[serde(default = "defaults::callout_body_limit")]
    pub callout_body_limit: usize,
    /// The most of the request (response) body buffered for a 0.2.0
    /// filter, in bytes: lowers what its `configure` asked for, or asks
    /// for the body (refusing a larger one with 413, or 502) where it
    /// asked for none.
    pub request_body_limit: Option<usize>,
    pub response_body_limit: Option<usize>,
    /// The filter's own settings, handed to its `configure` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Files the gateway reads for the filter, which has no filesystem of
    /// its own: each `key = "path"` puts the file's text into `config` under
    /// `key` (a JWKS document, say). Paths are relative to the config file.
    #[serde(default)]
    pub config_files: BTreeMap<String, PathBuf>,
}

/// `NAME` as a shell would read it: a letter or `_`, then letters, digits
/// and `_`.
fn is_variable_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The most of a body a filter may be given, and a callout may carry.
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The largest file `config_files` may hand a filter.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

impl FilterConfig {
    /// Settings first, the file system after: a mistake in the file is
    /// reported the same whether or not the plugin is built.
    pub(super) fn validate(
        &self,
        src: &Source<'_>,
        name: &str,
        base_dir: &Path,
    ) -> Result<(), ConfigError> {
        // Filter names prefix shared-state keys and label metrics, so they
        // keep to a character set neither can confuse.
        if !is_plain_name(name) {
            return Err(src.error_key_name(
                &["filters", name],
                format!("filter name `{name}` may use only letters, digits, `-` and `_`"),
            ));
        }
        if let Some(pin) = &self.sha256 {
            src.require(
                pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
                &["filters", name, "sha256"],
                || {
                    format!(
                        "[filters.{name}] sha256 must be 64 hex digits, as `gateway plugin hash FILE` prints"
                    )
                },
            )?;
        }
        refuse(
            src,
            &["filters", name],
            &[
                (
                    "timeout",
                    self.timeout.0.is_zero(),
                    "would interrupt every call at once",
                    "use a duration like \"50ms\"",
                ),
                (
                    "instances",
                    self.instances == 0,
                    "keeps no instance ready, so every call would instantiate the plugin anew",
                    "use 1 or more, like 16",
                ),
                (
                    "state_max_entries",
                    self.state_max_entries == Some(0),
                    "would refuse every counter",
                    "use a count like 10000",
                ),
                (
                    "state_max_bytes",
                    self.state_max_bytes == Some(0),
                    "would refuse every counter",
                    "use a size like 1048576",
                ),
                (
                    "callout_timeout",
                    self.callout_timeout.0.is_zero(),
                    "would end every callout at once",
                    "use a duration like \"1s\"",
                ),
                (
                    "callout_body_limit",
                    self.callout_body_limit == 0 || self.callout_body_limit > MAX_BODY_LIMIT,
                    "is out of range",
                    "use 1 to 16777216 bytes",
                ),
                (
                    "request_body_limit",
                    self.request_body_limit
                        .is_some_and(|n| n == 0 || n > MAX_BODY_LIMIT),
                    "is out of range",
                    "use 1 to 16777216 bytes",
                ),
                (
                    "response_body_limit",
                    self.response_body_limit
                        .is_some_and(|n| n == 0 || n > MAX_BODY_LIMIT),
                    "is out of range",
                    "use 1 to 16777216 bytes",
                ),
                (
                    "state_max_window",
                    self.state_max_window.is_some_and(|w| !window_in_range(w)),
                    "is out of range",
                    "use 1ms to 2d",
                ),
            ],
        )?;
        if let Some(i) = self.env.iter().position(|v| !is_variable_name(v)) {
            return Err(src.error_key(
                &["filters", name, "env", &i.to_string()],
                format!(
                    "filter `{name}` grants environment variable {:?}, which is not a variable name",
                    self.env[i]
                ),
            ));
        }
        for (guest, host) in &self.dirs {
            let at = ["filters", name, "dirs", guest.as_str()];
            src.require(guest.starts_with('/'), &at, || {
                format!("filter `{name}` grants directory `{guest}`; the path the filter sees must start with `/`")
            })?;
            let full = base_dir.join(host);
            src.require(full.is_dir(), &at, || {
                format!(
                    "filter `{name}` is granted {}, which is not a directory",
                    full.display()
                )
            })?;
        }
        for key in self.config_files.keys() {
            src.require(
                !self.config.contains_key(key),
                &["filters", name, "config_files", key],
                || {
                    format!(
                        "filter `{name}` sets `{key}` both in config and in config_files; keep one"
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Inlines `config_files` into `config`, read relative to `base_dir`.
    pub(super) fn read_files(
        &mut self,
        src: &Source<'_>,
        name: &str,
        base_dir: &Path,
    ) -> Result<(), ConfigError> {
        for (key, path) in &self.config_files {
            let at = ["filters", name, "config_files", key.as_str()];
            let full = base_dir.join(path);
            let too_big = std::fs::metadata(&full)
                .map(|m| m.len() > MAX_CONFIG_FILE_BYTES)
                .unwrap_or(false);
            src.require(!too_big, &at, || {
                format!(
                    "filter `{name}` reads {} for `{key}`, which is over {} KiB; a filter's config file must be smaller",
                    full.display(),
                    MAX_CONFIG_FILE_BYTES / 1024
                )
            })?;
            let text = std::fs::read_to_string(&full).map_err(|e| {
                src.error_key(
                    &at,
                    format!(
                        "filter `{name}` reads {} for `{key}`, but it cannot be read ({e}); fix the path (relative to the config file)",
                        full.display()
                    ),
                )
            })?;
            self.config.insert(key.clone(), toml::Value::String(text));
        }
        Ok(())
    }
}

mod defaults {
    use super::*;
    pub fn failure() -> FailurePolicy {
        FailurePolicy::FailClosed
    }
    pub fn suspend_after() -> u32 {
        20
    }
    pub fn failure_status() -> Status {
        Status::try_from(500).expect("500 is a status")
    }
    pub fn timeout() -> Millis {
        Millis(Duration::from_millis(50))
    }
    pub fn callout_timeout() -> Millis {
        Millis(Duration::from_secs(1))
    }
    pub fn callout_body_limit() -> usize {
        1024 * 1024
    }
    pub fn memory_limit_mib() -> MemoryMib {
        MemoryMib::new_const(64)
    }
    pub fn instances() -> usize {
        16
    }
}
