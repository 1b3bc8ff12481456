//! What the gateway lends a filter: the request and response resources and
//! the `host` interface. Every import is bounded, so a hostile filter gets a
//! refusal, never an unbounded allocation in the host.

use super::bindings::v1::gateway::filter::crypto::{self, P256PublicKey, RsaPublicKey};
use super::bindings::v1::gateway::filter::state;
use super::bindings::v1::gateway::filter::{host, types};
use super::bindings::{HeaderStats, LogLevel};
use super::bindings::{StateCounter, StateCounterOp, WitStateError};
use super::output::Captured;
use crate::config::FilterLogLevel;
use crate::state::{CounterOp, Owner, State, StateError};
use crate::telemetry::log_limit::LogQuota;
use crate::telemetry::{Metrics, PluginMetricKind, PluginSeries};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::sync::Arc;
use wasmtime::StoreLimits;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Largest header value a filter may set.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;
/// Longest header name a filter may set or answer with.
pub const MAX_HEADER_NAME: usize = 256;
/// Plugin metric series one instance keeps resolved; past it, further ones
/// are resolved at every call.
pub(super) const MAX_KEPT_SERIES: usize = 256;

type SeriesKey = (PluginMetricKind, String, Vec<(String, String)>);

/// Largest context key and value, and how many entries a request may carry.
pub const MAX_CONTEXT_KEY: usize = 128;
pub const MAX_CONTEXT_VALUE: usize = 4 * 1024;
pub const MAX_CONTEXT_ENTRIES: usize = 64;
/// Context keys the gateway sets from the TLS handshake: a verified client
/// certificate's subject (RFC 4514) and its subject alternative names
/// (`DNS:…`, `URI:…`, `email:…`, `IP:…`, comma-separated). Keys under
/// `tls.` are the gateway's: a filter setting one is refused, so a later
/// filter cannot be handed a forged identity.
pub const CONTEXT_CLIENT_SUBJECT: &str = "tls.client-subject";
pub const CONTEXT_CLIENT_SAN: &str = "tls.client-san";
const GATEWAY_CONTEXT_PREFIX: &str = "tls.";
/// Longest log message kept; the rest is cut.
pub const MAX_LOG_MESSAGE: usize = 4 * 1024;
/// Host resources (WASI handles, the lent request and response) one
/// instance may hold at once.
pub const MAX_RESOURCES: usize = 1024;
/// Log lines one filter call may write; the rest are dropped and counted in
/// one line at the end of the call, so a looping filter cannot flood the log.
pub const MAX_LOG_LINES_PER_CALL: u32 = 32;
/// Log lines one filter may write a second over all its calls; the rest are
/// left out and the next line let through says how many.
pub const MAX_LOG_LINES_PER_SECOND: u64 = 100;
/// Shared-state calls one filter call may make (each may be a Redis round
/// trip); past it they are refused as invalid.
pub const MAX_STATE_CALLS_PER_CALL: u32 = 16;
/// Header fields a message may reach through a filter's edits (as many as
/// a filter's own reply may carry, and what common servers accept), and
/// the bytes its names and values may total: a filter adding headers in a
/// loop is refused, not allowed to grow the message without bound.
pub const MAX_HEADER_FIELDS: usize = 100;
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// A request's id, made once: the header value the upstream and the client
/// are sent, which every log line, span and filter reads as text. Clones
/// share its bytes.
#[derive(Debug, Clone)]
pub struct RequestId(http::HeaderValue);

impl RequestId {
    /// A new random id: 32 hex digits.
    pub fn random() -> RequestId {
        let mut hex = [0u8; 32];
        let n = rand::random::<u128>();
        for (i, b) in hex.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((n >> (124 - 4 * i)) & 0xf) as usize];
        }
        RequestId(http::HeaderValue::from_bytes(&hex).expect("hex digits"))
    }

    /// The id a trusted client or proxy sent, if it is usable as one:
    /// visible ASCII, 1 to 128 bytes.
    pub fn given(v: &http::HeaderValue) -> Option<RequestId> {
        let text = v.to_str().ok()?;
        (!text.is_empty() && text.len() <= 128).then(|| RequestId(v.clone()))
    }

    pub fn as_str(&self) -> &str {
        // Made from hex digits or checked by `given`.
        self.0.to_str().unwrap_or("-")
    }

    pub fn header(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

/// What is fixed about a request once it is routed.
#[derive(Debug)]
pub struct RequestInfo {
    pub route: Arc<str>,
    pub client_addr: SocketAddr,
    pub request_id: RequestId,
    pub scheme: &'static str,
}

/// The request while a filter looks at it.
#[derive(Debug)]
pub struct RequestState {
    pub parts: http::request::Parts,
    pub info: Arc<RequestInfo>,
    pub context: Vec<(String, String)>,
    /// The body, where a filter of the chain asked for it.
    pub body: BodySlot,
}

/// The response while a filter looks at it.
#[derive(Debug)]
pub struct ResponseState {
    pub parts: http::response::Parts,
    pub body: BodySlot,
}

/// A message body as filters see it. Only a body some filter of the chain
/// asked for is ever read into memory; every other one streams.
#[derive(Debug, Default)]
pub enum BodySlot {
    /// Not read: no filter asked for it (or not yet).
    #[default]
    Streaming,
    /// Read whole.
    Whole(bytes::Bytes),
    /// Larger than the most any filter asked for: it streams on unread.
    TooLarge,
    /// Gone by this phase (the request body, once sent upstream).
    Released,
}

/// The most of a body a filter may ask to read.
pub const MAX_BODY_NEED: usize = 16 * 1024 * 1024;

/// What one filter asked for of a body: at most `max_bytes`, and what a
/// larger one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyNeed {
    pub max_bytes: usize,
    pub over_limit: OverLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Answer the client with this status.
    Refuse(http::StatusCode),
    /// Let the body stream past the filter unread.
    Pass,
}

/// The bodies a filter reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub request_body: Option<BodyNeed>,
    pub response_body: Option<BodyNeed>,
}

/// Why a filter's `body` or `set-body` call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    NotRequested,
    TooLarge,
    Unavailable,
}

impl BodySlot {
    /// The body for a filter that asked for it with `need`.
    pub fn read(&self, need: Option<BodyNeed>) -> Result<bytes::Bytes, BodyRefusal> {
        let need = need.ok_or(BodyRefusal::NotRequested)?;
        match self {
            BodySlot::Whole(b) if b.len() <= need.max_bytes => Ok(b.clone()),
            BodySlot::Whole(_) | BodySlot::TooLarge => Err(BodyRefusal::TooLarge),
            BodySlot::Streaming | BodySlot::Released => Err(BodyRefusal::Unavailable),
        }
    }

    /// Replaces the body, for a filter that asked for it with `need`: only
    /// a body that was read can be replaced, and only within the limit.
    pub fn replace(&mut self, need: Option<BodyNeed>, body: Vec<u8>) -> Result<(), BodyRefusal> {
        self.read(need)?;
        if body.len() > need.map_or(0, |n| n.max_bytes) {
            return Err(BodyRefusal::TooLarge);
        }
        *self = BodySlot::Whole(body.into());
        Ok(())
    }
}

/// The store data of one filter instance.
pub struct HostState {
    pub table: ResourceTable,
    wasi: WasiCtx,
    pub limits: Limits,
    pub filter: Arc<str>,
    pub plugin: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub state: Arc<State>,
    /// The filter's handle on the state, under its quota.
    pub state_owner: Arc<Owner>,
    /// Which of the filter's log lines are written, and how many a second.
    pub log: LogPolicy,
    /// What the instance prints, logged after each call.
    stdout: Captured,
    stderr: Captured,
    /// Every route id in the configuration the filter was loaded with.
    pub route_ids: Arc<[String]>,
    /// The request being served, for the log (shared, not copied, per call).
    pub request: Option<Arc<RequestInfo>>,
    /// What the current call has used of its per-call budgets.
    pub budget: CallBudget,
    /// Plugin metric series this instance has recorded, by kind, name and
    /// labels (`None`: refused).
    series: rustc_hash::FxHashMap<SeriesKey, Option<PluginSeries>>,
    /// When the running call or start-up began and when it ends; the epoch
    /// callback checks them at every tick.
    pub call_started: std::time::Instant,
    pub deadline: std::time::Instant,
    /// How deep the guest is in wasm (host functions call back into it to
    /// allocate), so the call hook can tell when the export itself returned.
    pub wasm_depth: u32,
    /// Whether a filter call's export is running; once it returns, its
    /// post-return cleanup runs under a deadline of its own,
    /// `post_return_budget` from then.
    pub in_export: bool,
    pub post_return_budget: std::time::Duration,
    /// Nanoseconds after the call started at which the export returned (0
    /// while it runs), read by the wall-clock deadline, which moves with it.
    pub export_returned_ns: Arc<std::sync::atomic::AtomicU64>,
    /// What 0.2.0 filters have beyond 0.1.0's.
    pub v2: super::host_v2::Extras,
}

/// The store's resource limits, and the size of the largest linear memory
/// the instance has grown to. Memories never shrink, so that is its size
/// now: an instance near its limit is one allocation away from a trap.
pub struct Limits {
    inner: StoreLimits,
    pub memory_bytes: usize,
    /// `memory_bytes` once the instance was configured, before it served.
    pub configured_bytes: usize,
}

impl Limits {
    pub fn new(inner: StoreLimits) -> Limits {
        Limits {
            inner,
            memory_bytes: 0,
            configured_bytes: 0,
        }
    }

    /// Whether the instance has grown past three quarters of `limit` while
    /// serving. Memories never shrink, and a guest with a garbage collector
    /// (JavaScript's, say) may let its heap grow close to the limit before
    /// collecting: retiring such an instance turns the trap a later request
    /// would meet into a fresh instance. One that started that large is
    /// kept, or it would be retired after every call.
    pub fn grown_near(&self, limit: usize) -> bool {
        self.memory_bytes > limit / 4 * 3 && self.memory_bytes > self.configured_bytes
    }
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_bytes = self.memory_bytes.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Counts against the per-call limits on host calls; reset for every call.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallBudget {
    pub log_lines: u32,
    pub log_dropped: u32,
    pub state_calls: u32,
    pub callouts: u32,
}

impl HostState {
    pub fn new(
        filter: Arc<str>,
        plugin: Arc<str>,
        metrics: Arc<Metrics>,
        state: Arc<State>,
        state_owner: Arc<Owner>,
        log: LogPolicy,
        route_ids: Arc<[String]>,
        limits: StoreLimits,
        grants: &Grants,
    ) -> HostState {
        let (stdout, stderr) = (Captured::default(), Captured::default());
        HostState {
            table: {
                // WASI handles (streams, pollables) a filter opens live in
                // this table, outside its memory limit; cap them.
                let mut t = ResourceTable::new();
                t.set_max_capacity(MAX_RESOURCES);
                t
            },
            wasi: grants.wasi(&stdout, &stderr),
            limits: Limits::new(limits),
            filter,
            plugin,
            metrics,
            state,
            state_owner,
            log,
            stdout,
            stderr,
            route_ids,
            request: None,
            budget: CallBudget::default(),
            series: Default::default(),
            call_started: std::time::Instant::now(),
            deadline: std::time::Instant::now(),
            wasm_depth: 0,
            in_export: false,
            post_return_budget: std::time::Duration::ZERO,
            export_returned_ns: Default::default(),
            v2: Default::default(),
        }
    }
}

/// What a filter's configuration grants it beyond the world's imports.
/// Nothing by default: no files, no environment, no network, no standard
/// input; standard output and error go to the gateway's log (see
/// `output`).
#[derive(Debug, Default, Clone)]
pub struct Grants {
    /// Environment variables, read when the filter is configured.
    pub env: Vec<(String, String)>,
    /// Directories readable (never writable) by the filter: (host, guest).
    pub dirs: Vec<(std::path::PathBuf, String)>,
}

impl Grants {
    fn wasi(&self, stdout: &Captured, stderr: &Captured) -> WasiCtx {
        let mut b = WasiCtx::builder();
        b.stdout(stdout.clone());
        b.stderr(stderr.clone());
        // No sockets: TCP, UDP and name lookup off, and every address
        // refused should one be turned on. These are wasmtime-wasi's
        // defaults; stated here so that a change of default cannot open
        // the network to filters.
        b.allow_tcp(false);
        b.allow_udp(false);
        b.allow_ip_name_lookup(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
        for (k, v) in &self.env {
            b.env(k, v);
        }
        for (host, guest) in &self.dirs {
            // Checked at configuration load; a directory removed since is
            // left out rather than failing the instance.
            if let Err(e) = b.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly) {
                tracing::warn!("cannot grant {}: {e:#}", host.display());
            }
        }
        b.build()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Headers a filter may not set: the gateway owns message framing and the
/// connection, and `host` decides routing.
pub fn is_protected(name: &HeaderName) -> bool {
    crate::edge::is_hop_by_hop(name)
        || name == http::header::HOST
        || name == http::header::CONTENT_LENGTH
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

/// Why `set-context` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextRefusal {
    InvalidKey,
    ValueTooLong,
    Reserved,
    TooManyEntries,
}

impl ContextRefusal {
    pub fn message(self) -> String {
        match self {
            ContextRefusal::InvalidKey | ContextRefusal::ValueTooLong => format!(
                "key or value too long (limits {MAX_CONTEXT_KEY} and {MAX_CONTEXT_VALUE} bytes)"
            ),
            ContextRefusal::Reserved => format!(
                "keys under `{GATEWAY_CONTEXT_PREFIX}` are set by the gateway from the TLS handshake"
            ),
            ContextRefusal::TooManyEntries => {
                format!("the request already carries {MAX_CONTEXT_ENTRIES} entries")
            }
        }
    }
}

pub(super) fn set_context(
    ctx: &mut Vec<(String, String)>,
    key: String,
    value: String,
) -> Result<(), ContextRefusal> {
    if key.len() > MAX_CONTEXT_KEY {
        return Err(ContextRefusal::InvalidKey);
    }
    if value.len() > MAX_CONTEXT_VALUE {
        return Err(ContextRefusal::ValueTooLong);
    }
    if key.starts_with(GATEWAY_CONTEXT_PREFIX) {
        return Err(ContextRefusal::Reserved);
    }
    if let Some(entry) = ctx.iter_mut().find(|(k, _)| *k == key) {
        entry.1 = value;
    } else if ctx.len() >= MAX_CONTEXT_ENTRIES {
        return Err(ContextRefusal::TooManyEntries);
    } else {
        ctx.push((key, value));
    }
    Ok(())
}

/// Why a header edit is refused; its words are what 0.1.0 filters get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderRefusal {
    InvalidName(String),
    InvalidValue(String),
    Protected(String),
    TooManyFields(String),
    TooLarge(String),
}

impl HeaderRefusal {
    pub fn message(self) -> String {
        match self {
            HeaderRefusal::InvalidName(m)
            | HeaderRefusal::InvalidValue(m)
            | HeaderRefusal::Protected(m)
            | HeaderRefusal::TooManyFields(m)
            | HeaderRefusal::TooLarge(m) => m,
        }
    }
}

fn checked(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), HeaderRefusal> {
    if name.len() > MAX_HEADER_NAME {
        return Err(HeaderRefusal::InvalidName(format!(
            "a header name of {} bytes; the most a filter may set is {MAX_HEADER_NAME}",
            name.len()
        )));
    }
    let n = header_name(name).ok_or_else(|| {
        HeaderRefusal::InvalidName(format!(
            "`{}` is not a valid header name",
            crate::telemetry::escape(name)
        ))
    })?;
    if is_protected(&n) {
        return Err(HeaderRefusal::Protected(format!(
            "`{n}` is managed by the gateway and cannot be set by a filter"
        )));
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(HeaderRefusal::InvalidValue(format!(
            "the value of `{n}` is {} bytes; the most a filter may set is {MAX_HEADER_VALUE}",
            value.len()
        )));
    }
    let v = HeaderValue::from_bytes(value).map_err(|_| {
        HeaderRefusal::InvalidValue(format!(
            "the value for `{n}` has characters not allowed in a header"
        ))
    })?;
    Ok((n, v))
}

pub(super) fn get_one(h: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    h.get(name).map(|v| v.as_bytes().to_vec())
}

pub(super) fn get_all(h: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    match header_name(name) {
        Some(n) => h.get_all(n).iter().map(|v| v.as_bytes().to_vec()).collect(),
        None => Vec::new(),
    }
}

pub(super) fn names(h: &HeaderMap) -> Vec<String> {
    h.keys().map(|k| k.as_str().to_string()).collect()
}

pub fn stats(h: &HeaderMap) -> HeaderStats {
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    HeaderStats {
        count: h.len() as u32,
        bytes: bytes.min(u32::MAX as usize) as u32,
    }
}

/// Refuses an edit that would take the message past the field or byte caps.
/// `replaces` is whether the edit replaces the name's values (set) rather
/// than adding one (append).
fn room_for(
    h: &HeaderMap,
    n: &HeaderName,
    v: &HeaderValue,
    replaces: bool,
) -> Result<(), HeaderRefusal> {
    let adds_field = !(replaces && h.contains_key(n));
    if adds_field && h.len() >= MAX_HEADER_FIELDS {
        return Err(HeaderRefusal::TooManyFields(format!(
            "the message already has {} header fields; a filter may take it to at most {MAX_HEADER_FIELDS}",
            h.len()
        )));
    }
    let bytes = stats(h).bytes as usize;
    if bytes + n.as_str().len() + v.len() > MAX_HEADER_BLOCK {
        return Err(HeaderRefusal::TooLarge(format!(
            "the headers would exceed {MAX_HEADER_BLOCK} bytes"
        )));
    }
    Ok(())
}

pub(super) fn set(h: &mut HeaderMap, name: &str, value: &[u8]) -> Result<(), HeaderRefusal> {
    let (n, v) = checked(name, value)?;
    room_for(h, &n, &v, true)?;
    h.insert(n, v);
    Ok(())
}

pub(super) fn append(h: &mut HeaderMap, name: &str, value: &[u8]) -> Result<(), HeaderRefusal> {
    let (n, v) = checked(name, value)?;
    if h.get_all(&n).iter().count() >= 64 {
        return Err(HeaderRefusal::TooManyFields(format!(
            "`{n}` already has 64 values"
        )));
    }
    room_for(h, &n, &v, false)?;
    h.append(n, v);
    Ok(())
}

pub(super) fn remove(h: &mut HeaderMap, name: &str) -> bool {
    match header_name(name) {
        Some(n) if !is_protected(&n) => h.remove(n).is_some(),
        _ => false,
    }
}

impl types::Host for HostState {}

/// The request calls every WIT version answers alike (reads, header
/// removal, context reads), expanded into each version's `HostRequest`.
macro_rules! request_reads {
    () => {
        fn method(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<String> {
            Ok(self.table.get(&r)?.parts.method.as_str().to_string())
        }
        fn path(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<String> {
            Ok(self.table.get(&r)?.parts.uri.path().to_string())
        }
        fn query(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<Option<String>> {
            Ok(self.table.get(&r)?.parts.uri.query().map(str::to_string))
        }
        fn authority(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<Option<String>> {
            let p = &self.table.get(&r)?.parts;
            Ok($crate::edge::authority(p).map(str::to_string))
        }
        fn scheme(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<String> {
            Ok(self.table.get(&r)?.info.scheme.to_string())
        }
        fn client_addr(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<String> {
            Ok(self.table.get(&r)?.info.client_addr.to_string())
        }
        fn route(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<String> {
            Ok(self.table.get(&r)?.info.route.to_string())
        }
        fn request_id(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<String> {
            Ok(self.table.get(&r)?.info.request_id.as_str().to_string())
        }
        fn header(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
            name: String,
        ) -> wasmtime::Result<Option<Vec<u8>>> {
            Ok($crate::plugin::host::get_one(
                &self.table.get(&r)?.parts.headers,
                &name,
            ))
        }
        fn header_all(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
            name: String,
        ) -> wasmtime::Result<Vec<Vec<u8>>> {
            Ok($crate::plugin::host::get_all(
                &self.table.get(&r)?.parts.headers,
                &name,
            ))
        }
        fn header_names(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
        ) -> wasmtime::Result<Vec<String>> {
            Ok($crate::plugin::host::names(
                &self.table.get(&r)?.parts.headers,
            ))
        }
        fn remove_header(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
            name: String,
        ) -> wasmtime::Result<bool> {
            Ok($crate::plugin::host::remove(
                &mut self.table.get_mut(&r)?.parts.headers,
                &name,
            ))
        }
        fn get_context(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::RequestState>,
            key: String,
        ) -> wasmtime::Result<Option<String>> {
            let ctx = &self.table.get(&r)?.context;
            Ok(ctx.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
        }
    };
}
pub(super) use request_reads;

/// The response calls every WIT version answers alike.
macro_rules! response_reads {
    () => {
        fn status(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::ResponseState>,
        ) -> wasmtime::Result<u16> {
            Ok(self.table.get(&r)?.parts.status.as_u16())
        }
        fn header(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::ResponseState>,
            name: String,
        ) -> wasmtime::Result<Option<Vec<u8>>> {
            Ok($crate::plugin::host::get_one(
                &self.table.get(&r)?.parts.headers,
                &name,
            ))
        }
        fn header_all(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::ResponseState>,
            name: String,
        ) -> wasmtime::Result<Vec<Vec<u8>>> {
            Ok($crate::plugin::host::get_all(
                &self.table.get(&r)?.parts.headers,
                &name,
            ))
        }
        fn header_names(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::ResponseState>,
        ) -> wasmtime::Result<Vec<String>> {
            Ok($crate::plugin::host::names(
                &self.table.get(&r)?.parts.headers,
            ))
        }
        fn remove_header(
            &mut self,
            r: wasmtime::component::Resource<$crate::plugin::host::ResponseState>,
            name: String,
        ) -> wasmtime::Result<bool> {
            Ok($crate::plugin::host::remove(
                &mut self.table.get_mut(&r)?.parts.headers,
                &name,
            ))
        }
    };
}
pub(super) use response_reads;

impl types::HostRequest for HostState {
    request_reads!();
    fn header_stats(&mut self, r: Resource<RequestState>) -> wasmtime::Result<HeaderStats> {
        Ok(stats(&self.table.get(&r)?.parts.headers))
    }
    fn set_header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            set(&mut self.table.get_mut(&r)?.parts.headers, &name, &value)
                .map_err(HeaderRefusal::message),
        )
    }
    fn append_header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            append(&mut self.table.get_mut(&r)?.parts.headers, &name, &value)
                .map_err(HeaderRefusal::message),
        )
    }
    fn set_context(
        &mut self,
        r: Resource<RequestState>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        // 0.1.0 has no error result: a refusal traps.
        match set_context(&mut self.table.get_mut(&r)?.context, key, value) {
            Ok(()) => Ok(()),
            Err(refusal) => wasmtime::bail!("set-context refused: {}", refusal.message()),
        }
    }
    fn drop(&mut self, _r: Resource<RequestState>) -> wasmtime::Result<()> {
        // The gateway owns the request and takes it back after the call.
        Ok(())
    }
}

impl types::HostResponse for HostState {
    response_reads!();
    fn set_status(
        &mut self,
        r: Resource<ResponseState>,
        status: u16,
    ) -> wasmtime::Result<Result<(), String>> {
        match http::StatusCode::from_u16(status) {
            Ok(s) if (200..=599).contains(&status) => {
                self.table.get_mut(&r)?.parts.status = s;
                Ok(Ok(()))
            }
            _ => Ok(Err(format!(
                "{status} is not a status a filter may set; use 200 to 599"
            ))),
        }
    }
    fn header_stats(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<HeaderStats> {
        Ok(stats(&self.table.get(&r)?.parts.headers))
    }
    fn set_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            set(&mut self.table.get_mut(&r)?.parts.headers, &name, &value)
                .map_err(HeaderRefusal::message),
        )
    }
    fn append_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            append(&mut self.table.get_mut(&r)?.parts.headers, &name, &value)
                .map_err(HeaderRefusal::message),
        )
    }
    fn drop(&mut self, _r: Resource<ResponseState>) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// How severe a level is, least first.
fn rank(level: LogLevel) -> FilterLogLevel {
    match level {
        LogLevel::Trace => FilterLogLevel::Trace,
        LogLevel::Debug => FilterLogLevel::Debug,
        LogLevel::Info => FilterLogLevel::Info,
        LogLevel::Warn => FilterLogLevel::Warn,
        LogLevel::Error => FilterLogLevel::Error,
    }
}

/// Which of a filter's log lines are written: those at `level` or more
/// severe, at most `quota` a second over all its instances.
#[derive(Clone)]
pub struct LogPolicy {
    pub level: FilterLogLevel,
    pub quota: Arc<LogQuota>,
}

impl HostState {
    /// Writes one of the filter's lines, from `source` (`log`, `stdout` or
    /// `stderr`), under its level, its per-call budget and its quota.
    /// Whether a line at `level` passes the filter's `log_level`.
    pub(super) fn log_enabled_at(&self, level: LogLevel) -> bool {
        rank(level) >= self.log.level
    }

    pub(super) fn write_log(&mut self, level: LogLevel, mut message: String, source: &'static str) {
        if !self.log_enabled_at(level) {
            return;
        }
        if self.budget.log_lines >= MAX_LOG_LINES_PER_CALL {
            self.budget.log_dropped += 1;
            return;
        }
        self.budget.log_lines += 1;
        let Some(suppressed) = self.log.quota.admit() else {
            return;
        };
        // Recorded only when lines were left out.
        let suppressed = (suppressed.0 > 0).then_some(suppressed.0);
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let filter = &*self.filter;
        let plugin = &*self.plugin;
        let request_id = self.request.as_ref().map_or("-", |r| r.request_id.as_str());
        // The filter's words go in a field of the gateway's record, which
        // the log writes quoted with every line break and control character
        // escaped: a filter cannot start a line or pass one off as ours.
        let text = message.as_str();
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "gateway::filter", filter, plugin, request_id, source, suppressed, text, "filter log")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "gateway::filter", filter, plugin, request_id, source, suppressed, text, "filter log")
            }
            LogLevel::Info => {
                tracing::info!(target: "gateway::filter", filter, plugin, request_id, source, suppressed, text, "filter log")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "gateway::filter", filter, plugin, request_id, source, suppressed, text, "filter log")
            }
            LogLevel::Error => {
                tracing::error!(target: "gateway::filter", filter, plugin, request_id, source, suppressed, text, "filter log")
            }
        }
    }

    /// Logs what the instance printed since the last time: standard output
    /// at `info`, standard error (where panics and tracebacks go) at `warn`.
    pub fn flush_output(&mut self) {
        let streams = [
            (self.stdout.take(), LogLevel::Info, "stdout"),
            (self.stderr.take(), LogLevel::Warn, "stderr"),
        ];
        for ((lines, dropped), level, stream) in streams {
            for line in lines {
                self.write_log(level, line, stream);
            }
            if dropped > 0 {
                self.write_log(
                    level,
                    format!(
                        "{dropped} more bytes left out: a call's output is kept up to {} bytes",
                        super::output::MAX_OUTPUT_PER_CALL
                    ),
                    stream,
                );
            }
        }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        self.write_log(level, message, "log");
        Ok(())
    }
    fn route_ids(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.route_ids.to_vec())
    }
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }
    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::clock::monotonic_ns())
    }
    fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<()> {
        self.plugin_metric(PluginMetricKind::Counter, name, labels, value);
        Ok(())
    }
    fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<()> {
        self.plugin_metric(PluginMetricKind::Histogram, name, labels, value);
        Ok(())
    }
}

impl HostState {
    /// Records a plugin measurement. The series its name and labels resolve
    /// to is kept in the instance, so a filter recording the same series on
    /// every request resolves it once, not at every call.
    pub(super) fn plugin_metric(
        &mut self,
        kind: PluginMetricKind,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) {
        let key = (kind, name, labels);
        let valid = match kind {
            PluginMetricKind::Gauge => value.is_finite(),
            _ => crate::telemetry::valid_plugin_value(value),
        };
        let recorded = valid
            && match self.series.get(&key) {
                Some(known) => known.as_ref().map(|s| s.record(value)).is_some(),
                None => {
                    let series = self.metrics.plugin_series(
                        kind,
                        &self.plugin,
                        &self.filter,
                        &key.1,
                        &key.2,
                    );
                    let recorded = series.as_ref().map(|s| s.record(value)).is_some();
                    if self.series.len() < MAX_KEPT_SERIES {
                        self.series.insert(key.clone(), series);
                    }
                    recorded
                }
            };
        if !recorded {
            tracing::debug!(
                filter = &*self.filter,
                name = key.1.as_str(),
                "{kind:?} refused: bad name, label or value, or too many metrics"
            );
        }
    }
}

impl HostState {
    /// Spends one of the call's state calls; the refusal once they are
    /// spent.
    pub(super) fn spend_state_call(&mut self) -> Result<(), StateError> {
        if self.budget.state_calls >= MAX_STATE_CALLS_PER_CALL {
            return Err(StateError::Invalid(format!(
                "more than {MAX_STATE_CALLS_PER_CALL} state and kv calls in one filter call"
            )));
        }
        self.budget.state_calls += 1;
        Ok(())
    }

    /// Counter updates for either WIT version, within the call's budget.
    pub(super) async fn add_counters(
        &mut self,
        ops: &[CounterOp],
    ) -> Result<Vec<crate::state::Counter>, StateError> {
        self.spend_state_call()?;
        self.state.add(&self.state_owner, ops).await
    }

    async fn state_add(&mut self, ops: Vec<CounterOp>) -> Result<Vec<StateCounter>, WitStateError> {
        match self.add_counters(&ops).await {
            Ok(out) => Ok(out
                .into_iter()
                .map(|c| StateCounter {
                    value: c.value,
                    ttl_ms: c.ttl_ms,
                })
                .collect()),
            Err(StateError::Unavailable(m)) => Err(WitStateError::Unavailable(m)),
            Err(StateError::Invalid(m)) => Err(WitStateError::Invalid(m)),
            // The 0.1 interface has no quota error; its words say which.
            Err(e @ StateError::Quota(..)) => Err(WitStateError::Invalid(e.to_string())),
        }
    }
}

impl state::Host for HostState {
    async fn counter_add(
        &mut self,
        key: String,
        delta: i64,
        window_ms: u64,
    ) -> wasmtime::Result<Result<StateCounter, WitStateError>> {
        Ok(self
            .state_add(vec![CounterOp::new(key, delta, window_ms)])
            .await
            .map(|mut v| v.remove(0)))
    }

    async fn counter_add_many(
        &mut self,
        ops: Vec<StateCounterOp>,
    ) -> wasmtime::Result<Result<Vec<StateCounter>, WitStateError>> {
        // Refuse an oversized list before copying its keys.
        if ops.len() > crate::state::MAX_OPS {
            return Ok(Err(WitStateError::Invalid(format!(
                "{} operations in one call; send at most {}",
                ops.len(),
                crate::state::MAX_OPS
            ))));
        }
        let ops = ops
            .into_iter()
            .map(|o| CounterOp::new(o.key, o.delta, o.window_ms))
            .collect();
        Ok(self.state_add(ops).await)
    }
}

/// Largest message a filter may ask to verify: a JWT's signed part is far
/// smaller; the cap keeps one call's host CPU bounded.
pub const MAX_SIGNED_MESSAGE: usize = 64 * 1024;

impl crypto::Host for HostState {
    fn verify_rs256(
        &mut self,
        key: RsaPublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(verify_rs256(key.n, key.e, &message, &signature))
    }

    fn verify_es256(
        &mut self,
        key: P256PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(verify_es256(&key.x, &key.y, &message, &signature))
    }
}

/// RS256 over `message` with the key (n, e), for both WIT versions.
pub(super) fn verify_rs256(n: Vec<u8>, e: Vec<u8>, message: &[u8], signature: &[u8]) -> bool {
    if message.len() > MAX_SIGNED_MESSAGE {
        return false;
    }
    let key = ring::signature::RsaPublicKeyComponents { n, e };
    key.verify(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        message,
        signature,
    )
    .is_ok()
}

/// ES256 over `message` with the P-256 point (x, y), for both WIT versions.
pub(super) fn verify_es256(x: &[u8], y: &[u8], message: &[u8], signature: &[u8]) -> bool {
    if message.len() > MAX_SIGNED_MESSAGE || x.len() != 32 || y.len() != 32 {
        return false;
    }
    let mut point = [0u8; 65];
    point[0] = 0x04;
    point[1..33].copy_from_slice(x);
    point[33..].copy_from_slice(y);
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
    key.verify(message, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn host_state() -> HostState {
        let metrics = Arc::new(Metrics::new(&[0.1]).unwrap());
        let state = Arc::new(State::memory(metrics.clone()));
        let owner = state.owner(&"f".into(), state.default_quota());
        HostState::new(
            "f".into(),
            "p".into(),
            metrics,
            state,
            owner,
            LogPolicy {
                level: FilterLogLevel::Trace,
                quota: Arc::new(LogQuota::new(MAX_LOG_LINES_PER_SECOND)),
            },
            Arc::from(Vec::new()),
            StoreLimits::default(),
            &Grants::default(),
        )
    }

    #[test]
    fn es256_checks_are_real_and_bounded() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let key = || P256PublicKey {
            x: point[1..33].to_vec(),
            y: point[33..].to_vec(),
        };
        let mut h = host_state();
        let sign = |m: &[u8]| pair.sign(&rng, m).unwrap().as_ref().to_vec();
        let message = b"header.payload".to_vec();
        let sig = sign(&message);
        use crypto::Host;
        assert!(h.verify_es256(key(), message.clone(), sig.clone()).unwrap());
        let mut tampered = sig.clone();
        tampered[10] ^= 1;
        assert!(!h.verify_es256(key(), message.clone(), tampered).unwrap());
        assert!(
            !h.verify_es256(key(), b"header.other".to_vec(), sig)
                .unwrap()
        );
        let short = P256PublicKey {
            x: vec![1; 31],
            y: vec![1; 32],
        };
        assert!(!h.verify_es256(short, message, vec![0; 64]).unwrap());
        let big = vec![b'a'; MAX_SIGNED_MESSAGE + 1];
        let big_sig = sign(&big);
        assert!(
            !h.verify_es256(key(), big, big_sig).unwrap(),
            "over the cap is refused even when the signature is good"
        );
    }

    #[test]
    fn a_series_resolved_once_records_like_one_resolved_every_time() {
        use host::Host;
        let mut h = host_state();
        let l = |v: &str| vec![("k".to_string(), v.to_string())];
        for _ in 0..3 {
            h.counter_add("kept".into(), l("a"), 2.0).unwrap();
        }
        // Refusals are kept too, and stay refusals.
        for _ in 0..2 {
            h.counter_add("Bad-Name".into(), l("a"), 1.0).unwrap();
        }
        // A bad value is refused whatever the series.
        h.counter_add("kept".into(), l("a"), f64::NAN).unwrap();
        assert_eq!(h.series.len(), 2);
        // Label sets past the cap fold into the overflow series, which
        // counts every measurement as overflow, kept or not.
        for i in 0..crate::telemetry::PLUGIN_SERIES_CAP + 3 {
            for _ in 0..2 {
                h.counter_add("many".into(), l(&i.to_string()), 1.0)
                    .unwrap();
            }
        }
        let scrape = h.metrics.render();
        assert!(
            scrape.contains(r#"gateway_plugin_p_kept_total{filter="f",k="a",plugin="p"} 6"#),
            "{scrape}"
        );
        assert!(!scrape.contains("Bad-Name") && !scrape.contains("bad_name"));
        assert!(
            scrape.contains(
                r#"gateway_plugin_p_many_total{filter="f",overflow="true",plugin="p"} 6"#
            ),
            "{scrape}"
        );
        assert!(scrape.contains(r#"gateway_plugin_metric_overflow_total{plugin="p"} 6"#));
    }

    #[test]
    fn rs256_refuses_garbage_keys_without_panicking() {
        use crypto::Host;
        let mut h = host_state();
        let key = RsaPublicKey {
            n: vec![0xff; 16],
            e: vec![1, 0, 1],
        };
        assert!(!h.verify_rs256(key, b"m".to_vec(), vec![0; 256]).unwrap());
    }
}
