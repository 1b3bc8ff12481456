//! `[server]`, `[admin]`, `[echo]`, `[plugins]` and `[reload]`: the
//! listeners, their limits and how file changes are taken up.

use super::{ConfigError, Millis, Source, TlsConfig, refuse};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long a client may take to send its request headers.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: Millis,
    /// Default time for the whole upstream exchange, per route overridable.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Millis,
    /// Largest request head (request line plus headers), answered with 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header lines in a request, answered with 431.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Largest request body, answered with 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// A request body of declared length up to this is read before the
    /// upstream is asked; a longer (or chunked) one streams, and a route
    /// that retries keeps this much of it to send again (a longer body
    /// gets one try).
    #[serde(default = "defaults::retry_buffer_bytes")]
    pub retry_buffer_bytes: usize,
    /// Keep the client's `X-Forwarded-*` and `X-Request-Id` (only behind a
    /// trusted proxy); otherwise the gateway replaces them.
    #[serde(default)]
    pub trust_forwarded: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Millis,
    /// How long the gateway keeps serving after SIGTERM with `/ready`
    /// answering 503, so a load balancer polling it stops sending before
    /// the listener closes; longer than the balancer's check interval
    /// times the checks it needs to mark a server down. Skipped when the
    /// gateway was drained already (`POST /admin/drain`, `gateway drain`).
    #[serde(default)]
    pub drain_delay: Millis,
    /// How long a connection may sit with no request in progress (an
    /// HTTP/1.1 keep-alive between requests, an HTTP/2 connection with no
    /// open stream) before the gateway closes it.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Millis,
    /// How often the gateway pings an HTTP/2 client...
    #[serde(default = "defaults::http2_keepalive_interval")]
    pub http2_keepalive_interval: Millis,
    /// ...and how long it waits for the answer before dropping the
    /// connection, so a vanished peer does not hold its streams open.
    #[serde(default = "defaults::http2_keepalive_timeout")]
    pub http2_keepalive_timeout: Millis,
    /// Client connections open at once on the listener; past it a new
    /// connection is answered 503 `too-many-connections` and closed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client IP address; past it a new
    /// one is answered 503 `too-many-client-connections`. No limit when absent.
    pub max_connections_per_client: Option<usize>,
    /// What to do with `;` parameters in path segments (`/a;jsessionid=1`),
    /// which Java upstreams strip before resolving `..`.
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Pass request headers whose names contain `_`. Off by default, as in
    /// nginx: CGI-style upstreams read `X_User` as `X-User`.
    #[serde(default)]
    pub underscores_in_headers: bool,
    /// Threads serving client connections, each with a single-threaded
    /// runtime of its own; one per core the process may run on when absent.
    /// Read at start.
    pub workers: Option<usize>,
    /// TLS on this listener; plaintext HTTP/1.1 and h2c when absent.
    pub tls: Option<TlsConfig>,
    /// An upgraded connection (a WebSocket) with no byte either way for
    /// this long is closed...
    #[serde(default = "defaults::tunnel_idle_timeout")]
    pub tunnel_idle_timeout: Millis,
    /// ...and one open this long is closed however busy.
    #[serde(default = "defaults::tunnel_max_lifetime")]
    pub tunnel_max_lifetime: Millis,
}

impl ServerConfig {
    /// How many threads serve client connections.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Refuses zeros that would silently turn a protection off (or close
    /// every connection at once, or answer every request with an error).
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        for (key, d) in [
            ("tunnel_idle_timeout", self.tunnel_idle_timeout),
            ("tunnel_max_lifetime", self.tunnel_max_lifetime),
            ("idle_timeout", self.idle_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
        ] {
            src.require(!d.0.is_zero(), &["server", key], || {
                format!("[server] {key} must be at least 1ms")
            })?;
        }
        src.require(
            self.max_connections != 0,
            &["server", "max_connections"],
            || "[server] max_connections must be at least 1".into(),
        )?;
        src.require(
            self.max_connections_per_client != Some(0),
            &["server", "max_connections_per_client"],
            || "[server] max_connections_per_client must be at least 1; leave it out for no per-client limit".into(),
        )?;
        src.require(self.workers != Some(0), &["server", "workers"], || {
            "[server] workers must be at least 1; leave it out for one per core".into()
        })?;
        // shutdown_grace = "0ms" is allowed: stopping at once, cutting what
        // is in flight, is a choice (the load balancer drained already) and
        // does what it says.
        refuse(
            src,
            &["server"],
            &[
                (
                    "header_read_timeout",
                    self.header_read_timeout.0.is_zero(),
                    "gives no client time to send its request headers",
                    "use a duration like \"10s\"",
                ),
                (
                    "request_timeout",
                    self.request_timeout.0.is_zero(),
                    "would time out every upstream exchange at once",
                    "use a duration like \"30s\"",
                ),
                (
                    "max_header_bytes",
                    self.max_header_bytes == 0,
                    "would answer every request 431",
                    "use a size like 16384",
                ),
                (
                    "max_headers",
                    self.max_headers == 0,
                    "would answer every request 431",
                    "use a count like 100",
                ),
                (
                    "max_body_bytes",
                    self.max_body_bytes == 0,
                    "would answer every request that has a body 413",
                    "use a size like 1048576",
                ),
            ],
        )
    }
}

/// The policy for `;` parameters in path segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathParameters {
    /// Answer 400 to any path with a `;` (or `%3B`) in a segment.
    #[default]
    Refuse,
    /// Keep parameters on segments whose name (before the first `;`) is
    /// not empty, `.` or `..`; refuse the rest.
    Keep,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// What `Authorization: Bearer` must carry on the mutating endpoints
    /// (`POST /admin/reload`). Off loopback they are refused without one;
    /// `GATEWAY_ADMIN_TOKEN` gives it when this is unset.
    #[serde(default)]
    pub token: Option<String>,
}

/// The shortest admin token accepted: long enough that guessing it over
/// the network is hopeless.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

impl AdminConfig {
    /// The token mutating calls must carry: the configured one, else
    /// `GATEWAY_ADMIN_TOKEN` when it is long enough.
    pub fn token(&self, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.token
            .clone()
            .or_else(|| env("GATEWAY_ADMIN_TOKEN").filter(|t| t.len() >= MIN_ADMIN_TOKEN_BYTES))
    }

    /// A warning when anyone who can reach the admin listener could reload
    /// the gateway were it not for the refusal: not on loopback, no token.
    pub fn exposure_warning(&self, token: Option<&str>) -> Option<String> {
        (!self.listen.ip().is_loopback() && token.is_none()).then(|| {
            format!(
                "[admin] listen {} is not on loopback and no token is set: POST /admin/reload is refused (401) until [admin] token or GATEWAY_ADMIN_TOKEN gives one",
                self.listen
            )
        })
    }
}

/// An echo upstream the gateway runs itself, for demos and tests.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Where plugin files are found, relative to the config file.
    #[serde(default = "defaults::plugin_dir")]
    pub dir: PathBuf,
    /// Keep compiled plugins on disk, so a restart loads them instead of
    /// compiling them again. Read at start; a reload keeps the cache the
    /// gateway started with.
    #[serde(default = "defaults::compile_cache")]
    pub compile_cache: bool,
    /// Where: relative to the config file; by default
    /// `$XDG_CACHE_HOME/gateway/plugins` (or `~/.cache/gateway/plugins`).
    pub compile_cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: defaults::plugin_dir(),
            compile_cache: defaults::compile_cache(),
            compile_cache_dir: None,
        }
    }
}

/// Where compiled plugins are kept when `[plugins]` names no directory:
/// `$XDG_CACHE_HOME/gateway/plugins`, else `$HOME/.cache/gateway/plugins`;
/// none when neither variable is set.
pub fn default_compile_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("gateway").join("plugins"))
}

/// How file changes are taken up while serving. `debounce = "0ms"` is
/// allowed: a reload on the first write; one that reads a half-written
/// file is refused, the running config serves on, and the next write
/// tries again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file, a plugin file or a filter's
    /// `config_files` change. SIGHUP and `POST /admin/reload` work either way.
    #[serde(default = "defaults::watch")]
    pub watch: bool,
    /// How long the files must stay unchanged before a reload starts, so a
    /// burst of writes (an editor, a copy) makes one reload.
    #[serde(default = "defaults::debounce")]
    pub debounce: Millis,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: defaults::watch(),
            debounce: defaults::debounce(),
        }
    }
}

mod defaults {
    use super::*;
    pub fn header_read_timeout() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn request_timeout() -> Millis {
        Millis(Duration::from_secs(30))
    }
    pub fn shutdown_grace() -> Millis {
        Millis(Duration::from_secs(30))
    }
    pub fn idle_timeout() -> Millis {
        Millis(Duration::from_secs(60))
    }
    pub fn tunnel_idle_timeout() -> Millis {
        Millis(Duration::from_secs(60))
    }
    pub fn tunnel_max_lifetime() -> Millis {
        Millis(Duration::from_secs(24 * 3600))
    }
    pub fn http2_keepalive_interval() -> Millis {
        Millis(Duration::from_secs(20))
    }
    pub fn http2_keepalive_timeout() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub fn retry_buffer_bytes() -> usize {
        64 * 1024
    }
    pub fn watch() -> bool {
        true
    }
    pub fn debounce() -> Millis {
        Millis(Duration::from_millis(100))
    }
    pub fn plugin_dir() -> PathBuf {
        PathBuf::from("../plugins/dist")
    }
    pub fn compile_cache() -> bool {
        true
    }
}
