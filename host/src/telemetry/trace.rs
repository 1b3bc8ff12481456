//! Traces: a server span per request, a span per filter call and a client
//! span per upstream try, exported by OTLP over HTTP/protobuf when
//! `[tracing]` is configured. The W3C `traceparent` a client sends is the
//! parent of the server span; each try carries its client span's
//! `traceparent` to the upstream, so the upstream's spans join the trace.
//!
//! Without `[tracing]` nothing here runs and a client's `traceparent`
//! passes through untouched, as any other header.

use crate::config::TracingConfig;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use std::time::Duration;

/// Largest answer read from the collector; its answers are small.
const MAX_COLLECTOR_ANSWER: usize = 64 * 1024;

/// The exporter's HTTP client: the gateway's own hyper client, run on the
/// gateway's runtime. The batch processor exports from a thread of its
/// own, outside the runtime, so each request is spawned onto it.
struct OtlpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpClient")
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let send = async move {
            let (parts, body) = request.into_parts();
            let resp = tokio::time::timeout(
                timeout,
                client.request(http::Request::from_parts(parts, Full::new(body))),
            )
            .await??;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_COLLECTOR_ANSWER)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        self.runtime.spawn(send).await?
    }
}

/// The tracer, when `[tracing]` is configured.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Starts the exporter. Must be called on the gateway's runtime.
    pub fn start(cfg: &TracingConfig) -> anyhow::Result<Tracing> {
        let client = OtlpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            runtime: tokio::runtime::Handle::current(),
            timeout: cfg.export_timeout.0,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.export_timeout.0)
            .build()?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(cfg.export_interval.0)
                    .with_max_queue_size(cfg.max_queued_spans)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // A sampled client keeps its trace whole; otherwise the ratio
            // decides, by trace id, so every replica agrees.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio.get(),
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("gateway");
        Ok(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The server span of a request, child of the client's `traceparent`
    /// if it sent a valid one.
    pub fn request(&self, headers: &HeaderMap, method: &str, path: &str) -> RequestTrace<'_> {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", path.to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            tracing: self,
            cx: parent.with_span(span),
        }
    }

    /// Sends what is queued and stops the exporter; blocks, so call it
    /// off the runtime's workers.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("trace exporter did not shut down cleanly: {e}");
        }
    }
}

/// One request's trace: its server span, and the parent of its filter and
/// upstream spans.
pub struct RequestTrace<'a> {
    tracing: &'a Tracing,
    cx: Context,
}

impl RequestTrace<'_> {
    /// The trace id, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Names the server span after the route, once it is known.
    pub fn routed(&self, method: &str, route: &str) {
        let span = self.cx.span();
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route.to_string()));
    }

    pub fn set_attribute(&self, kv: KeyValue) {
        self.cx.span().set_attribute(kv);
    }

    /// Ends the server span with the status answered.
    pub fn end(&self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
        if status >= 500 {
            span.set_status(Status::error(format!("answered {status}")));
        }
        span.end();
    }

    /// A span for one filter call.
    pub fn filter_span(&self, filter: &str, plugin: &str, phase: &'static str) -> ChildSpan {
        let span = self
            .tracing
            .tracer
            .span_builder(format!("filter {filter} {phase}"))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new("gateway.filter", filter.to_string()),
                KeyValue::new("gateway.plugin", plugin.to_string()),
                KeyValue::new("gateway.phase", phase),
            ])
            .start_with_context(&self.tracing.tracer, &self.cx);
        ChildSpan(self.cx.with_span(span))
    }

    /// A client span for one try at `instance`; its `traceparent` goes into
    /// `headers`, replacing the client's.
    pub fn try_span(
        &self,
        method: &str,
        instance: &str,
        attempt: u32,
        headers: &mut HeaderMap,
    ) -> ChildSpan {
        let span = self
            .tracing
            .tracer
            .span_builder(method.to_string())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("server.address", instance.to_string()),
                KeyValue::new("http.request.resend_count", attempt as i64),
            ])
            .start_with_context(&self.tracing.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        headers.remove("tracestate");
        self.tracing
            .propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        ChildSpan(cx)
    }
}

/// A filter or upstream span, ended by `ok`, `failed` or drop.
pub struct ChildSpan(Context);

impl ChildSpan {
    pub fn set_attribute(&self, kv: KeyValue) {
        self.0.span().set_attribute(kv);
    }

    /// Marks the span failed, with why.
    pub fn failed(&self, why: &str) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new("error.type", why.to_string()));
        span.set_status(Status::error(why.to_string()));
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// The trace id in a client's `traceparent`, for the access log when the
/// gateway does not trace itself.
pub fn trace_id_of(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_ascii_lowercase())
}
