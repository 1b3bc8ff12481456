//! What the gateway lends a `gateway:filter@0.2.0` filter: the same request
//! and response (with their bodies), typed refusals, metrics by handle,
//! key-value state and outbound calls. The checks and limits are 0.1.0's,
//! shared with `host`; only the answers' types differ.

use super::bindings::v2::gateway::filter::{callout, crypto, host, kv, state, types};
use super::host::{
    BodyRefusal, ContextRefusal, HeaderRefusal, HostState, Needs, RequestState, ResponseState,
    append, set, set_context, stats,
};
use crate::state::{CounterOp, KvAnswer, KvOp, StateError};
use crate::telemetry::{PluginMetricKind, shared};
use crate::upstream::{Exchange, Failed, RequestBody, Tries, Upstream};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Resource;

/// Outbound calls one filter call may make.
pub const MAX_CALLOUTS_PER_CALL: u32 = 8;

/// What a 0.2.0 instance holds beyond a 0.1.0 one.
#[derive(Default)]
pub struct Extras {
    /// The bodies its filter reads (the same for every instance).
    pub needs: Needs,
    /// Where its outbound calls may go; `None` during `configure`.
    pub callouts: Option<Arc<Callouts>>,
    /// Metrics it declared, by handle.
    metrics: Vec<Declared>,
    /// Series it recorded, by handle and label values: a filter recording
    /// the same series on every request resolves it once (`None`: refused).
    series: rustc_hash::FxHashMap<(u32, Vec<String>), Option<crate::telemetry::PluginSeries>>,
}

struct Declared {
    kind: PluginMetricKind,
    name: String,
    labels: Vec<String>,
}

/// The upstream clusters of the configuration serving now, by name, for
/// filters' outbound calls. Filters outlive a reload that keeps them, so
/// they look their clusters up here at each call rather than hold them.
#[derive(Default)]
pub struct Clusters(ArcSwap<HashMap<String, Arc<Upstream>>>);

impl Clusters {
    pub fn replace(&self, clusters: HashMap<String, Arc<Upstream>>) {
        self.0.store(Arc::new(clusters));
    }

    fn get(&self, name: &str) -> Option<Arc<Upstream>> {
        self.0.load().get(name).cloned()
    }
}

/// One filter's outbound calls: the clusters it may call and their limits.
pub struct Callouts {
    pub filter: Arc<str>,
    pub allowed: Vec<String>,
    pub timeout: Duration,
    pub body_limit: usize,
    pub clusters: Arc<Clusters>,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// The `route` label retries would be counted under (a callout is
    /// never retried).
    label: opentelemetry::Value,
}

impl Callouts {
    pub fn new(
        filter: Arc<str>,
        allowed: Vec<String>,
        timeout: Duration,
        body_limit: usize,
        clusters: Arc<Clusters>,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Callouts {
        for cluster in &allowed {
            metrics.declare_callouts(&filter, cluster);
        }
        let label = opentelemetry::Value::from(format!("callout:{filter}"));
        Callouts {
            filter,
            allowed,
            timeout,
            body_limit,
            clusters,
            metrics,
            label,
        }
    }

    fn count(&self, cluster: &str, result: &'static str, took: Option<Duration>) {
        let cluster = if self.allowed.iter().any(|c| c == cluster) {
            cluster.to_string()
        } else {
            // A filter naming clusters it may not call must not mint series.
            "-".to_string()
        };
        let attrs = [
            KeyValue::new("filter", shared(&self.filter)),
            KeyValue::new("cluster", cluster),
        ];
        if let Some(t) = took {
            self.metrics
                .callout_duration
                .record(t.as_secs_f64(), &attrs);
        }
        let [f, c] = attrs;
        self.metrics
            .callouts
            .add(1, &[f, c, KeyValue::new("result", result)]);
    }
}

fn header_error(r: HeaderRefusal) -> types::HeaderError {
    match r {
        HeaderRefusal::InvalidName(_) => types::HeaderError::InvalidName,
        HeaderRefusal::InvalidValue(_) => types::HeaderError::InvalidValue,
        HeaderRefusal::Protected(_) => types::HeaderError::Protected,
        HeaderRefusal::TooManyFields(_) => types::HeaderError::TooManyFields,
        HeaderRefusal::TooLarge(_) => types::HeaderError::TooLarge,
    }
}

fn body_error(r: BodyRefusal) -> types::BodyError {
    match r {
        BodyRefusal::NotRequested => types::BodyError::NotRequested,
        BodyRefusal::TooLarge => types::BodyError::TooLarge,
        BodyRefusal::Unavailable => types::BodyError::Unavailable,
    }
}

/// `body()` for either message: the body a filter asked for, copied out.
fn read_body(
    slot: &super::host::BodySlot,
    need: Option<super::host::BodyNeed>,
) -> Result<Vec<u8>, types::BodyError> {
    slot.read(need).map(|b| b.to_vec()).map_err(body_error)
}

/// `set-body()` for either message.
fn replace_body(
    slot: &mut super::host::BodySlot,
    need: Option<super::host::BodyNeed>,
    body: Vec<u8>,
) -> Result<(), types::BodyError> {
    slot.replace(need, body).map_err(body_error)
}

fn header_stats(h: &http::HeaderMap) -> types::HeaderStats {
    let s = stats(h);
    types::HeaderStats {
        count: s.count,
        bytes: s.bytes,
    }
}

/// A 0.2.0 `configure` answer as the host's `Needs`, checked.
pub fn needs(n: types::Needs) -> Result<Needs, String> {
    let one = |b: Option<types::BodyLimit>, which: &str| {
        b.map(|b| {
            let max = b.max_bytes as usize;
            if max == 0 || max > super::host::MAX_BODY_NEED {
                return Err(format!(
                    "asked for up to {max} bytes of the {which} body; ask for 1 to {}",
                    super::host::MAX_BODY_NEED
                ));
            }
            let over_limit = match b.over_limit {
                types::OverLimit::Pass => super::host::OverLimit::Pass,
                types::OverLimit::Refuse(s) => super::host::OverLimit::Refuse(
                    http::StatusCode::from_u16(s)
                        .ok()
                        .filter(|_| (400..=599).contains(&s))
                        .ok_or_else(|| {
                            format!("over-limit status {s} for the {which} body; use 400 to 599")
                        })?,
                ),
            };
            Ok(super::host::BodyNeed {
                max_bytes: max,
                over_limit,
            })
        })
        .transpose()
    };
    Ok(Needs {
        request_body: one(n.request_body, "request")?,
        response_body: one(n.response_body, "response")?,
    })
}

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    super::host::request_reads!();
    fn header_stats(&mut self, r: Resource<RequestState>) -> wasmtime::Result<types::HeaderStats> {
        Ok(header_stats(&self.table.get(&r)?.parts.headers))
    }
    fn set_header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(set(&mut self.table.get_mut(&r)?.parts.headers, &name, &value).map_err(header_error))
    }
    fn append_header(
        &mut self,
        r: Resource<RequestState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(append(&mut self.table.get_mut(&r)?.parts.headers, &name, &value).map_err(header_error))
    }
    fn set_context(
        &mut self,
        r: Resource<RequestState>,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::ContextError>> {
        if key.is_empty() {
            return Ok(Err(types::ContextError::InvalidKey));
        }
        let ctx = &mut self.table.get_mut(&r)?.context;
        Ok(set_context(ctx, key, value).map_err(|e| match e {
            ContextRefusal::InvalidKey => types::ContextError::InvalidKey,
            ContextRefusal::ValueTooLong => types::ContextError::ValueTooLong,
            ContextRefusal::Reserved => types::ContextError::Reserved,
            ContextRefusal::TooManyEntries => types::ContextError::TooManyEntries,
        }))
    }
    fn body(
        &mut self,
        r: Resource<RequestState>,
    ) -> wasmtime::Result<Result<Vec<u8>, types::BodyError>> {
        Ok(read_body(
            &self.table.get(&r)?.body,
            self.v2.needs.request_body,
        ))
    }
    fn set_body(
        &mut self,
        r: Resource<RequestState>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::BodyError>> {
        let need = self.v2.needs.request_body;
        Ok(replace_body(&mut self.table.get_mut(&r)?.body, need, body))
    }
    fn drop(&mut self, _r: Resource<RequestState>) -> wasmtime::Result<()> {
        // The gateway owns the request and takes it back after the call.
        Ok(())
    }
}

impl types::HostResponse for HostState {
    super::host::response_reads!();
    fn set_status(&mut self, r: Resource<ResponseState>, status: u16) -> wasmtime::Result<bool> {
        match http::StatusCode::from_u16(status) {
            Ok(s) if (200..=599).contains(&status) => {
                self.table.get_mut(&r)?.parts.status = s;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    fn header_stats(&mut self, r: Resource<ResponseState>) -> wasmtime::Result<types::HeaderStats> {
        Ok(header_stats(&self.table.get(&r)?.parts.headers))
    }
    fn set_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(set(&mut self.table.get_mut(&r)?.parts.headers, &name, &value).map_err(header_error))
    }
    fn append_header(
        &mut self,
        r: Resource<ResponseState>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(append(&mut self.table.get_mut(&r)?.parts.headers, &name, &value).map_err(header_error))
    }
    fn body(
        &mut self,
        r: Resource<ResponseState>,
    ) -> wasmtime::Result<Result<Vec<u8>, types::BodyError>> {
        Ok(read_body(
            &self.table.get(&r)?.body,
            self.v2.needs.response_body,
        ))
    }
    fn set_body(
        &mut self,
        r: Resource<ResponseState>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::BodyError>> {
        let need = self.v2.needs.response_body;
        Ok(replace_body(&mut self.table.get_mut(&r)?.body, need, body))
    }
    fn drop(&mut self, _r: Resource<ResponseState>) -> wasmtime::Result<()> {
        Ok(())
    }
}

fn log_level(level: host::LogLevel) -> super::bindings::LogLevel {
    use super::bindings::LogLevel as L;
    match level {
        host::LogLevel::Trace => L::Trace,
        host::LogLevel::Debug => L::Debug,
        host::LogLevel::Info => L::Info,
        host::LogLevel::Warn => L::Warn,
        host::LogLevel::Error => L::Error,
    }
}

/// Most label names a declared metric may have.
const MAX_METRIC_LABELS: usize = 8;

impl host::Host for HostState {
    fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        self.write_log(log_level(level), message, "log");
        Ok(())
    }
    fn log_enabled(&mut self, level: host::LogLevel) -> wasmtime::Result<bool> {
        Ok(self.log_enabled_at(log_level(level)))
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
    fn declare_metric(
        &mut self,
        kind: host::MetricKind,
        name: String,
        label_names: Vec<String>,
    ) -> wasmtime::Result<Result<u32, String>> {
        let kind = match kind {
            host::MetricKind::Counter => PluginMetricKind::Counter,
            host::MetricKind::Gauge => PluginMetricKind::Gauge,
            host::MetricKind::Histogram => PluginMetricKind::Histogram,
        };
        if let Some(i) = self
            .v2
            .metrics
            .iter()
            .position(|d| d.kind == kind && d.name == name && d.labels == label_names)
        {
            return Ok(Ok(i as u32));
        }
        if label_names.len() > MAX_METRIC_LABELS {
            return Ok(Err(format!(
                "{} label names; a metric may have {MAX_METRIC_LABELS}",
                label_names.len()
            )));
        }
        for (i, l) in label_names.iter().enumerate() {
            if !crate::telemetry::valid_plugin_name(l) {
                return Ok(Err(format!(
                    "`{}` is not a label name: use 1 to 64 of a-z, 0-9 and _",
                    crate::telemetry::escape(l)
                )));
            }
            if ["plugin", "filter", "overflow"].contains(&l.as_str()) {
                return Ok(Err(format!("`{l}` is a label the gateway sets")));
            }
            if label_names[..i].contains(l) {
                return Ok(Err(format!("`{l}` is named twice")));
            }
        }
        // Handles are few (a plugin has at most 32 metrics); an instance
        // declaring in a loop meets the same cap.
        if self.v2.metrics.len() >= 64 {
            return Ok(Err("an instance may declare 64 metrics".into()));
        }
        if let Err(why) = self.metrics.plugin_metric_room(kind, &self.plugin, &name) {
            return Ok(Err(why));
        }
        self.v2.metrics.push(Declared {
            kind,
            name,
            labels: label_names,
        });
        Ok(Ok(self.v2.metrics.len() as u32 - 1))
    }
    fn record_metric(
        &mut self,
        metric: u32,
        label_values: Vec<String>,
        value: f64,
    ) -> wasmtime::Result<()> {
        let Some(d) = self.v2.metrics.get(metric as usize) else {
            return Ok(());
        };
        if d.labels.len() != label_values.len() {
            tracing::debug!(
                filter = &*self.filter,
                metric = d.name.as_str(),
                "record ignored: {} label values for {} names",
                label_values.len(),
                d.labels.len()
            );
            return Ok(());
        }
        let valid = match d.kind {
            PluginMetricKind::Gauge => value.is_finite(),
            _ => crate::telemetry::valid_plugin_value(value),
        };
        if !valid {
            return Ok(());
        }
        let key = (metric, label_values);
        if let Some(known) = self.v2.series.get(&key) {
            if let Some(series) = known {
                series.record(value);
            }
            return Ok(());
        }
        let labels: Vec<(String, String)> = d.labels.iter().cloned().zip(key.1.clone()).collect();
        let series =
            self.metrics
                .plugin_series(d.kind, &self.plugin, &self.filter, &d.name, &labels);
        match &series {
            Some(s) => s.record(value),
            None => tracing::debug!(
                filter = &*self.filter,
                metric = d.name.as_str(),
                "record refused: a label value too long, or past the metric's caps"
            ),
        }
        if self.v2.series.len() < super::host::MAX_KEPT_SERIES {
            self.v2.series.insert(key, series);
        }
        Ok(())
    }
}

fn state_error(e: StateError) -> state::StateError {
    match e {
        StateError::Unavailable(m) => state::StateError::Unavailable(m),
        StateError::Invalid(m) => state::StateError::Invalid(m),
        e @ StateError::Quota(..) => state::StateError::Full(e.to_string()),
    }
}

impl state::Host for HostState {
    async fn counter_add(
        &mut self,
        key: String,
        delta: i64,
        window_ms: u64,
    ) -> wasmtime::Result<Result<state::Counter, state::StateError>> {
        Ok(self
            .counters(vec![CounterOp::new(key, delta, window_ms)])
            .await
            .map(|mut v| v.remove(0)))
    }

    async fn counter_add_many(
        &mut self,
        ops: Vec<state::CounterOp>,
    ) -> wasmtime::Result<Result<Vec<state::Counter>, state::StateError>> {
        if ops.len() > crate::state::MAX_OPS {
            return Ok(Err(state::StateError::Invalid(format!(
                "{} operations in one call; send at most {}",
                ops.len(),
                crate::state::MAX_OPS
            ))));
        }
        let ops = ops
            .into_iter()
            .map(|o| CounterOp::new(o.key, o.delta, o.window_ms))
            .collect();
        Ok(self.counters(ops).await)
    }
}

impl HostState {
    async fn counters(
        &mut self,
        ops: Vec<CounterOp>,
    ) -> Result<Vec<state::Counter>, state::StateError> {
        self.add_counters(&ops)
            .await
            .map(|out| {
                out.into_iter()
                    .map(|c| state::Counter {
                        value: c.value,
                        ttl_ms: c.ttl_ms,
                    })
                    .collect()
            })
            .map_err(state_error)
    }

    async fn kv_call(&mut self, key: &str, op: KvOp) -> Result<KvAnswer, state::StateError> {
        self.spend_state_call().map_err(state_error)?;
        self.state
            .kv(&self.state_owner, key, op)
            .await
            .map_err(state_error)
    }
}

fn ttl(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl kv::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, state::StateError>> {
        Ok(match self.kv_call(&key, KvOp::Get).await {
            Ok(KvAnswer::Value(v)) => Ok(v.map(|b| b.to_vec())),
            Ok(KvAnswer::Done(_)) => Ok(None),
            Err(e) => Err(e),
        })
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<(), state::StateError>> {
        let op = KvOp::Set {
            value: value.into(),
            ttl: ttl(ttl_ms),
        };
        Ok(self.kv_call(&key, op).await.map(|_| ()))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, state::StateError>> {
        Ok(self
            .kv_call(&key, KvOp::Delete)
            .await
            .map(|a| a == KvAnswer::Done(true)))
    }

    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, state::StateError>> {
        let op = KvOp::CompareAndSet {
            expected: expected.map(Bytes::from),
            value: value.into(),
            ttl: ttl(ttl_ms),
        };
        Ok(self
            .kv_call(&key, op)
            .await
            .map(|a| a == KvAnswer::Done(true)))
    }
}

impl callout::Host for HostState {
    async fn send(
        &mut self,
        request: callout::OutboundRequest,
    ) -> wasmtime::Result<Result<callout::OutboundResponse, callout::CalloutError>> {
        let Some(access) = self.v2.callouts.clone() else {
            return Ok(Err(callout::CalloutError::NotAllowed(
                "outbound calls are not available in configure".into(),
            )));
        };
        let cluster = request.cluster.clone();
        if !access.allowed.contains(&cluster) {
            access.count(&cluster, "not_allowed", None);
            return Ok(Err(callout::CalloutError::NotAllowed(format!(
                "`{}` is not in this filter's callouts",
                crate::telemetry::escape(&cluster)
            ))));
        }
        if self.budget.callouts >= MAX_CALLOUTS_PER_CALL {
            access.count(&cluster, "too_many", None);
            return Ok(Err(callout::CalloutError::TooManyCalls));
        }
        self.budget.callouts += 1;
        let Some(upstream) = access.clusters.get(&cluster) else {
            access.count(&cluster, "unavailable", None);
            return Ok(Err(callout::CalloutError::Unavailable(format!(
                "cluster `{cluster}` is not in the configuration serving now"
            ))));
        };
        let request_id = self
            .request
            .as_ref()
            .map(|r| r.request_id.clone())
            .unwrap_or_else(super::host::RequestId::random);
        let parts = match outbound_parts(&request, &request_id, access.body_limit) {
            Ok(p) => p,
            Err(why) => {
                access.count(&cluster, "invalid", None);
                return Ok(Err(callout::CalloutError::InvalidRequest(why)));
            }
        };
        // The call's own deadline bounds the wait, whatever was asked.
        let asked = request
            .timeout_ms
            .map_or(access.timeout, |ms| Duration::from_millis(ms as u64));
        let started = Instant::now();
        let timeout = asked.min(self.deadline.saturating_duration_since(started));
        let deadline = started + timeout;
        let exchange = Exchange {
            route: &access.label,
            retry: None,
            try_timeout: timeout,
            deadline,
            request_id: request_id.as_str(),
            trace: None,
        };
        let mut tries = Tries::default();
        let body = RequestBody::Buffered(Bytes::from(request.body));
        let sent = upstream.send(&exchange, &mut tries, parts, body).await;
        let (result, answer) = match sent {
            Err(Failed::Unavailable(why)) => (
                "unavailable",
                Err(callout::CalloutError::Unavailable(why.to_string())),
            ),
            Err(Failed::Timeout) => ("timeout", Err(callout::CalloutError::Timeout)),
            Err(Failed::Connect(e) | Failed::Error(e)) => (
                "failed",
                Err(callout::CalloutError::Failed(
                    crate::telemetry::escape(&e).into_owned(),
                )),
            ),
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                let read = Limited::new(b, access.body_limit).collect();
                match tokio::time::timeout_at(deadline.into(), read).await {
                    Err(_) => ("timeout", Err(callout::CalloutError::Timeout)),
                    Ok(Err(e))
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some() =>
                    {
                        ("too_large", Err(callout::CalloutError::ResponseTooLarge))
                    }
                    Ok(Err(e)) => (
                        "failed",
                        Err(callout::CalloutError::Failed(format!(
                            "the answer's body broke off: {e}"
                        ))),
                    ),
                    Ok(Ok(body)) => (
                        "ok",
                        Ok(callout::OutboundResponse {
                            status: p.status.as_u16(),
                            headers: p
                                .headers
                                .iter()
                                .filter(|(n, _)| !crate::edge::is_hop_by_hop(n))
                                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                                .collect(),
                            body: body.to_bytes().to_vec(),
                        }),
                    ),
                }
            }
        };
        access.count(&cluster, result, Some(started.elapsed()));
        Ok(answer)
    }
}

/// The request head a callout sends, or why it cannot be sent.
fn outbound_parts(
    r: &callout::OutboundRequest,
    request_id: &super::host::RequestId,
    body_limit: usize,
) -> Result<http::request::Parts, String> {
    let method = http::Method::from_bytes(r.method.as_bytes())
        .map_err(|_| format!("`{}` is not a method", crate::telemetry::escape(&r.method)))?;
    if !r.path_and_query.starts_with('/') {
        return Err("the path must start with `/`".into());
    }
    let uri = http::Uri::builder()
        .path_and_query(r.path_and_query.as_str())
        .build()
        .map_err(|_| {
            format!(
                "`{}` is not a path and query",
                crate::telemetry::escape(&r.path_and_query)
            )
        })?;
    if r.body.len() > body_limit {
        return Err(format!(
            "a body of {} bytes; this filter's callout_body_limit is {body_limit}",
            r.body.len()
        ));
    }
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    if r.headers.len() > super::host::MAX_HEADER_FIELDS {
        return Err(format!(
            "{} headers; the most is {}",
            r.headers.len(),
            super::host::MAX_HEADER_FIELDS
        ));
    }
    for (name, value) in &r.headers {
        let n = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{}` is not a header name", crate::telemetry::escape(name)))?;
        if super::host::is_protected(&n) {
            continue;
        }
        let v = http::HeaderValue::from_bytes(value)
            .map_err(|_| format!("the value of `{n}` is not a header value"))?;
        parts.headers.append(n, v);
    }
    if !r.body.is_empty() || matches!(parts.method, http::Method::POST | http::Method::PUT) {
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(r.body.len()),
        );
    }
    parts.headers.insert(
        http::HeaderName::from_static("x-request-id"),
        request_id.header(),
    );
    Ok(parts)
}

impl crypto::Host for HostState {
    fn verify_rs256(
        &mut self,
        key: crypto::RsaPublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(super::host::verify_rs256(
            key.n, key.e, &message, &signature,
        ))
    }

    fn verify_es256(
        &mut self,
        key: crypto::P256PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<bool> {
        Ok(super::host::verify_es256(
            &key.x, &key.y, &message, &signature,
        ))
    }
}

/// A 0.2.0 answer as the gateway's decision type (0.1.0's: the same shape).
pub fn action(a: types::Action) -> super::bindings::Action {
    match a {
        types::Action::Continue => super::bindings::Action::Continue,
        types::Action::Respond(r) => super::bindings::Action::Respond(super::bindings::Reply {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }),
    }
}
