//! The request pipeline, one phase after another:
//!
//! ```text
//! drop `_` headers → refuse what upstreams read two ways (transfer
//!   codings, upgrades, hosts, paths) → route → strip hop-by-hop, set
//!   forwarding headers
//!   → filters on-request (config order; any may answer early)
//!   → read body (bounded) → upstream (timeout) → strip hop-by-hop
//!   → filters on-response (reverse order) → metrics
//! ```
//!
//! Every refusal the gateway itself makes goes through [`local_reply`], so
//! each has the same shape: a status, a one-line reason, the request id.

use crate::config::FailurePolicy;
use crate::edge::{self, Refusal, RefusalKind};
use crate::plugin::bindings::Reply;
use crate::plugin::host::{BodyRefusal, BodySlot, OverLimit};
use crate::plugin::host::{
    CONTEXT_CLIENT_SAN, CONTEXT_CLIENT_SUBJECT, RequestId, RequestInfo, RequestState, ResponseState,
};
use crate::plugin::{Decision, Failure, Filter, Held};
use crate::routing::normalize_path;
use crate::serving::{ConnectionHold, Gateway};
use crate::telemetry::access_log::{self, Entry};
use crate::telemetry::method_label;
use crate::telemetry::trace::{self, RequestTrace};
use crate::tls;
use crate::upstream::{Failed, RequestBody};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use opentelemetry::KeyValue;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub type ProxyBody = Either<crate::upstream::pool::UpstreamBody, Full<Bytes>>;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_GATEWAY_ERROR: HeaderName = HeaderName::from_static("x-gateway-error");

/// An answer the gateway makes itself.
pub fn local_reply(
    status: StatusCode,
    code: &'static str,
    message: &str,
    request_id: &RequestId,
) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "{message}\n"
    )))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_GATEWAY_ERROR, HeaderValue::from_static(code));
    h.insert(X_REQUEST_ID, request_id.header());
    r
}

/// The gateway's answer to a request refused at the edge, counted by kind.
fn refuse(gw: &Gateway, refusal: Refusal, request_id: &RequestId) -> Response<ProxyBody> {
    gw.metrics.count_refusal(refusal.kind);
    local_reply(
        refusal.kind.status(),
        refusal.kind.code(),
        &format!("bad request: {}", refusal.message),
        request_id,
    )
}

fn reply_response(reply: Reply) -> Response<ProxyBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(reply.body))));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in reply.headers {
        // Validated when the filter answered.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(&v),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn failure_reply(
    filter: &Filter,
    failure: &Failure,
    request_id: &RequestId,
) -> Response<ProxyBody> {
    let msg = format!("filter {} failed ({})", filter.name, failure.reason);
    local_reply(filter.failure_status, "filter-failed", &msg, request_id)
}

fn log_failure(filter: &Filter, phase: &str, failure: &Failure, request_id: &RequestId) {
    // A filter that fails tends to fail every request: a line a second per
    // filter, phase and reason shows it, `gateway_plugin_failures_total`
    // counts each call.
    static LINES: std::sync::LazyLock<crate::telemetry::log_limit::KeyedLogLimit> =
        std::sync::LazyLock::new(Default::default);
    let Some(suppressed) = LINES.admit((&*filter.name, phase, failure.reason)) else {
        return;
    };
    let policy = match filter.policy {
        FailurePolicy::FailClosed => "fail-closed",
        FailurePolicy::FailOpen => "fail-open",
    };
    tracing::warn!(
        filter = &*filter.name,
        plugin = &*filter.plugin.name,
        phase,
        reason = failure.reason,
        policy,
        request_id = request_id.as_str(),
        detail = failure.detail.as_str(),
        "filter call failed{suppressed}"
    );
}

/// What the pipeline learned about a request, for its metrics and its
/// access log line.
#[derive(Default)]
struct Trail {
    /// The matched route's index.
    route: Option<usize>,
    request_id: Option<RequestId>,
    answered_by: AnsweredBy,
    /// The instance last tried, as an index into the route's upstream.
    instance: Option<usize>,
    tries: u32,
    bytes_received: u64,
    /// The tenant a filter established; looked up only for the access log.
    tenant: Option<String>,
    want_tenant: bool,
    /// The request is a gRPC call (`content-type: application/grpc…`).
    grpc: bool,
}

#[derive(Default)]
enum AnsweredBy {
    #[default]
    Gateway,
    Upstream,
    Filter(Arc<str>),
}

/// Serves one request end to end.
///
/// Boxed: the request's state is kilobytes, and hyper moves the future it
/// is given from place to place before and while polling it; moving a
/// pointer instead of the state is cheaper than the allocation.
pub fn handle(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> Pin<Box<dyn Future<Output = Response<ObservedBody>> + Send>> {
    Box::pin(serve_request(gw, req, client))
}

async fn serve_request(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    client: SocketAddr,
) -> Response<ObservedBody> {
    let started = Instant::now();
    let in_flight = gw.metrics.in_flight();
    let method = method_label(req.method());
    let trace = gw
        .metrics
        .tracing
        .get()
        .map(|t| t.request(req.headers(), req.method().as_str(), req.uri().path()));
    let session = req.extensions().get::<Arc<tls::Session>>();
    let log = gw.metrics.access_log.get().map(|_| {
        Box::new(Entry {
            time: access_log::now_rfc3339(),
            client: client.to_string(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            trace_id: match &trace {
                Some(t) => Some(t.trace_id()),
                None => trace::trace_id_of(req.headers()),
            },
            tls: session.map(|s| s.version.to_string()),
            client_cert: session
                .and_then(|s| s.client.as_ref())
                .map(|c| c.subject.clone()),
            ..Entry::default()
        })
    });
    let mut trail = Trail {
        want_tenant: log.is_some(),
        grpc: crate::grpc::is_grpc(req.headers()),
        ..Trail::default()
    };
    let resp = pipeline(&gw, req, client, trace.as_ref(), &mut trail).await;
    // Counted by the HTTP status the answer stands for, so the 5xx alerts
    // see a gRPC call the gateway failed; the client gets it as gRPC.
    let status = resp.status().as_u16();
    let resp = match (&trail.grpc, &trail.answered_by) {
        (true, AnsweredBy::Gateway | AnsweredBy::Filter(_)) => {
            crate::grpc::trailers_only(resp, Either::Right(Full::new(Bytes::new())))
        }
        _ => resp,
    };
    let rt = trail.route.map(|i| &gw.route_runtime[i]);
    let grpc_count = match (trail.grpc, rt) {
        (true, Some(rt)) => match crate::upstream::grpc_status(resp.headers()) {
            Some(code) => {
                gw.metrics.count_grpc(&rt.label, code);
                None
            }
            // In the trailers, if they come.
            None => Some((gw.metrics.clone(), rt.label.clone())),
        },
        _ => None,
    };
    let rm = rt.map_or(&gw.unrouted, |rt| &rt.metrics);
    rm.answered(method, status, started.elapsed(), trail.bytes_received);
    if let Some(t) = &trace {
        t.end(status);
    }
    drop(in_flight);
    let log = log.map(|mut e| {
        e.request_id = trail
            .request_id
            .take()
            .map_or_else(String::new, |id| id.as_str().to_string());
        e.route = rt.map_or(NO_ROUTE, |rt| &*rt.id).to_string();
        e.status = status;
        e.upstream = rt
            .zip(trail.instance)
            .and_then(|(rt, i)| rt.upstream.instance_addr(i))
            .map(str::to_string);
        e.tries = trail.tries;
        e.bytes_received = trail.bytes_received;
        e.tenant = trail.tenant.take();
        e.answered_by = match &trail.answered_by {
            AnsweredBy::Gateway => "gateway".to_string(),
            AnsweredBy::Upstream => "upstream".to_string(),
            AnsweredBy::Filter(f) => format!("filter:{f}"),
        };
        PendingLine {
            entry: e,
            metrics: gw.metrics.clone(),
            started,
        }
    });
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        ObservedBody {
            inner: body,
            sent: 0,
            size: rm.response_size.clone(),
            log,
            grpc: grpc_count,
        },
    )
}

/// An access log line waiting for the response body to end.
struct PendingLine {
    entry: Box<Entry>,
    metrics: Arc<crate::telemetry::Metrics>,
    started: Instant,
}

/// The response body as it goes to the client, counted: when it ends (or
/// the client leaves) its size is recorded and the access log line written.
pub struct ObservedBody {
    inner: ProxyBody,
    sent: u64,
    size: prometheus::Histogram,
    log: Option<PendingLine>,
    /// For a gRPC call whose status comes in the trailers: where to count it.
    grpc: Option<(Arc<crate::telemetry::Metrics>, opentelemetry::Value)>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = <ProxyBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref()
                && let Some((metrics, route)) = this.grpc.take()
                && let Some(code) = crate::upstream::grpc_status(trailers)
            {
                metrics.count_grpc(&route, code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.size.observe(self.sent as f64);
        if let Some(mut p) = self.log.take()
            && let Some(log) = p.metrics.access_log.get()
        {
            p.entry.bytes_sent = self.sent;
            p.entry.duration_ms = p.started.elapsed().as_secs_f64() * 1000.0;
            log.write(&p.entry);
        }
    }
}

pub use crate::telemetry::NO_ROUTE;

/// The context entries a request starts with: on a TLS connection with a
/// verified client certificate, its subject and subject alternative names
/// (comma-separated), for filters to authorise by. Filters cannot set
/// `tls.` keys (`plugin::host`), so what they read here is the handshake's.
fn tls_context(session: Option<&tls::Session>) -> Vec<(String, String)> {
    match session.and_then(|s| s.client.as_ref()) {
        Some(c) => vec![
            (CONTEXT_CLIENT_SUBJECT.to_string(), c.subject.clone()),
            (CONTEXT_CLIENT_SAN.to_string(), c.san.join(",")),
        ],
        None => Vec::new(),
    }
}

async fn pipeline(
    gw: &Gateway,
    req: Request<Incoming>,
    client: SocketAddr,
    trace: Option<&RequestTrace<'_>>,
    trail: &mut Trail,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let trust = gw.server.trust_forwarded;
    let session = parts.extensions.get::<Arc<tls::Session>>().cloned();
    let scheme = if session.is_some() { "https" } else { "http" };

    let request_id = parts
        .headers
        .get(&X_REQUEST_ID)
        .filter(|_| trust)
        .and_then(RequestId::given)
        .unwrap_or_else(RequestId::random);
    trail.request_id = Some(request_id.clone());

    if !gw.server.underscores_in_headers {
        let dropped = edge::drop_underscore_headers(&mut parts.headers);
        gw.metrics.count_dropped_headers("underscore", dropped);
    }
    if let Err(r) = edge::check_protocol(&parts) {
        return refuse(gw, r, &request_id);
    }
    // A WebSocket over HTTP/2 (RFC 8441) is routed, filtered and sent
    // upstream as the HTTP/1.1 handshake it stands for.
    let over_h2 = edge::extended_connect(&parts);
    let from_h2 = over_h2.is_some();
    let upgrade = match over_h2 {
        Some(protocol) if protocol == "websocket" => {
            parts.method = http::Method::GET;
            Some(protocol)
        }
        Some(protocol) => {
            let r = Refusal::new(
                RefusalKind::UpgradeNotSupported,
                format!("`{protocol}` over HTTP/2 is not supported; only websocket is"),
            );
            return refuse(gw, r, &request_id);
        }
        None => match edge::upgrade_request(&parts) {
            Ok(u) => u,
            Err(r) => return refuse(gw, r, &request_id),
        },
    };
    let host = match edge::request_host(&parts) {
        Ok(h) => h,
        Err(r) => return refuse(gw, r, &request_id),
    };
    let path = match normalize_path(parts.uri.path(), gw.server.path_parameters) {
        Ok(p) => p,
        Err(e) => {
            let r = Refusal {
                kind: RefusalKind::BadPath,
                message: e.to_string().into(),
            };
            return refuse(gw, r, &request_id);
        }
    };
    let route_path = crate::routing::without_parameters(&path);
    let Some(route) = gw.routes.find(host.as_ref(), &route_path, &parts.method) else {
        return local_reply(
            StatusCode::NOT_FOUND,
            "no-route",
            "no route matches this request",
            &request_id,
        );
    };
    if edge::is_trace(&parts.method) && !route.lists_method(&parts.method) {
        return refuse(gw, edge::trace_refusal(&parts.method), &request_id);
    }
    let rt = &gw.route_runtime[route.index];
    trail.route = Some(route.index);
    let upgrade = match upgrade {
        Some(protocol) if !rt.upgrades.contains(&protocol) => {
            let r = Refusal::new(
                RefusalKind::UpgradeNotSupported,
                format!("route `{}` does not upgrade to `{protocol}`", rt.id),
            );
            return refuse(gw, r, &request_id);
        }
        Some(protocol) => match parts.extensions.remove::<OnUpgrade>() {
            Some(client) => Some(Upgrade {
                protocol,
                client,
                hold: parts.extensions.remove::<ConnectionHold>(),
                over_h2: from_h2,
            }),
            // HTTP/2 carries no Upgrade: hyper offers none to take.
            None => {
                let r = Refusal::new(
                    RefusalKind::UpgradeNotSupported,
                    "this connection cannot be upgraded",
                );
                return refuse(gw, r, &request_id);
            }
        },
        None => None,
    };
    if let Some(t) = trace {
        t.routed(parts.method.as_str(), &rt.id);
        t.set_attribute(KeyValue::new(
            "gateway.request_id",
            request_id.as_str().to_string(),
        ));
    }

    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > gw.server.max_body_bytes as u64
    {
        let msg = format!(
            "request body of {len} bytes is over the limit of {}",
            gw.server.max_body_bytes
        );
        return local_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            &msg,
            &request_id,
        );
    }

    edge::strip_hop_by_hop(&mut parts.headers);
    // The gateway answers `100-continue` itself when it reads the body.
    parts.headers.remove(header::EXPECT);
    let removed = edge::set_forwarding_headers(
        &mut parts.headers,
        client.ip(),
        host.as_ref(),
        scheme,
        trust,
    );
    gw.metrics
        .count_dropped_headers("untrusted_forwarding", removed);
    parts.headers.insert(X_REQUEST_ID, request_id.header());
    // The upstream gets the normalised path, so it acts on what filters saw.
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    parts.uri = match http::Uri::builder().path_and_query(pq).build() {
        Ok(u) => u,
        Err(_) => {
            return local_reply(
                StatusCode::BAD_REQUEST,
                "bad-path",
                "bad request: invalid query",
                &request_id,
            );
        }
    };
    // Routing, filters (`authority()`), X-Forwarded-Host and the upstream
    // all see this one host.
    match host.as_ref().map(|h| HeaderValue::from_str(&h.authority())) {
        Some(Ok(v)) => {
            parts.headers.insert(header::HOST, v);
        }
        _ => {
            parts.headers.remove(header::HOST);
        }
    }

    let info = Arc::new(RequestInfo {
        route: rt.id.clone(),
        client_addr: client,
        request_id: request_id.clone(),
        scheme,
    });
    let mut state = RequestState {
        parts,
        info,
        context: tls_context(session.as_deref()),
        body: Default::default(),
    };

    // Filters on the way in. `passed` are those whose on-request continued
    // (or that asked for no on-request call): they, and only they, see the
    // response on the way out, if they asked for that call. Under request
    // isolation a filter's instance is held from one phase to the other.
    let mut passed: Vec<(&Arc<Filter>, Option<Held>)> = Vec::with_capacity(rt.filters.len());
    let mut early: Option<Response<ProxyBody>> = None;
    let mut client_body = ClientBody::Unread(body);
    for f in &rt.filters {
        if !f.plugin.phases.request {
            passed.push((f, None));
            continue;
        }
        // The body is read for the first filter that asks, once, up to the
        // most any filter of the chain asks for.
        if let Some(need) = f.needs.request_body {
            if let ClientBody::Unread(_) = client_body {
                let most = rt
                    .filters
                    .iter()
                    .filter_map(|f| f.needs.request_body)
                    .map(|n| n.max_bytes)
                    .max()
                    .unwrap_or(0);
                let ClientBody::Unread(incoming) =
                    std::mem::replace(&mut client_body, ClientBody::Read)
                else {
                    unreachable!("matched above")
                };
                let read = tokio::time::timeout(rt.timeout, read_up_to(incoming, most)).await;
                match read {
                    Ok(Ok(ReadAhead::Whole(b))) => state.body = BodySlot::Whole(b),
                    Ok(Ok(ReadAhead::Over(frames, rest))) => {
                        state.body = BodySlot::TooLarge;
                        client_body = ClientBody::Prefixed(frames, rest);
                    }
                    Ok(Err(_)) => {
                        early = Some(local_reply(
                            StatusCode::BAD_REQUEST,
                            "bad-body",
                            "the request body could not be read",
                            &request_id,
                        ));
                        break;
                    }
                    Err(_) => {
                        early = Some(local_reply(
                            StatusCode::REQUEST_TIMEOUT,
                            "body-timeout",
                            "the request body did not arrive in time",
                            &request_id,
                        ));
                        break;
                    }
                }
            }
            if let OverLimit::Refuse(status) = need.over_limit
                && state.body.read(Some(need)) == Err(BodyRefusal::TooLarge)
            {
                let msg = format!(
                    "request body is over the {} bytes filter `{}` reads",
                    need.max_bytes, f.name
                );
                early = Some(local_reply(status, "body-too-large", &msg, &request_id));
                trail.answered_by = AnsweredBy::Filter(f.name.clone());
                break;
            }
        }
        let span = trace.map(|t| t.filter_span(&f.name, &f.plugin.name, "request"));
        let (s, outcome, held) = f.on_request_held(state).await;
        f.replenish_later();
        state = s;
        match outcome {
            Ok(Decision::Continue) => passed.push((f, held)),
            Ok(Decision::Respond(reply)) => {
                if let Some(s) = &span {
                    s.set_attribute(KeyValue::new("gateway.answered", reply.status as i64));
                }
                early = Some(reply_response(reply));
                trail.answered_by = AnsweredBy::Filter(f.name.clone());
                break;
            }
            Err(failure) => {
                if let Some(s) = &span {
                    s.failed(failure.reason);
                }
                log_failure(f, "request", &failure, &request_id);
                if f.policy == FailurePolicy::FailClosed {
                    early = Some(failure_reply(f, &failure, &request_id));
                    trail.answered_by = AnsweredBy::Filter(f.name.clone());
                    break;
                }
            }
        }
    }

    let response = match early {
        Some(r) => r,
        None => {
            let response_filters = passed.iter().any(|(f, _)| f.plugin.phases.response);
            // The route's timeout bounds reading the body and every try
            // together, once; filters have deadlines of their own.
            let deadline = Instant::now() + rt.timeout;
            if trail.grpc {
                // Hop-by-hop, but gRPC servers may ask for it: the client
                // takes trailers.
                state
                    .parts
                    .headers
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            if let Some(u) = &upgrade {
                // Hop-by-hop, so removed with the rest; the upstream must
                // see the handshake as the client sent it.
                let h = &mut state.parts.headers;
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Ok(v) = HeaderValue::from_str(&u.protocol) {
                    h.insert(header::UPGRADE, v);
                }
                if u.over_h2 {
                    // RFC 8441 has no key; the HTTP/1.1 handshake needs one.
                    h.insert(SEC_WEBSOCKET_KEY, websocket_key());
                }
            }
            match forward(
                gw,
                rt,
                &mut state,
                client_body,
                deadline,
                trace,
                trail,
                response_filters,
                upgrade,
            )
            .await
            {
                Ok(r) => {
                    trail.answered_by = AnsweredBy::Upstream;
                    r
                }
                Err(r) => r,
            }
        }
    };

    // Filters on the way out, in reverse.
    let (resp_parts, resp_body) = response.into_parts();
    let mut resp_state = ResponseState {
        parts: resp_parts,
        body: Default::default(),
    };
    let mut body = resp_body;
    // Read once, for the most any filter on the way out asks for.
    let most = passed
        .iter()
        .filter(|(f, _)| f.plugin.phases.response)
        .filter_map(|(f, _)| f.needs.response_body)
        .map(|n| n.max_bytes)
        .max();
    if let Some(most) = most {
        match read_response(body, most).await {
            Some((slot, b)) => {
                resp_state.body = slot;
                body = b;
            }
            None => {
                let (p, b) = local_reply(
                    StatusCode::BAD_GATEWAY,
                    "upstream-error",
                    "the upstream's response body broke off",
                    &request_id,
                )
                .into_parts();
                resp_state.parts = p;
                resp_state.body = BodySlot::Released;
                body = b;
            }
        }
    }
    for (f, held) in passed.into_iter().rev() {
        if !f.plugin.phases.response {
            continue;
        }
        if let Some(need) = f.needs.response_body
            && let OverLimit::Refuse(status) = need.over_limit
            && resp_state.body.read(Some(need)) == Err(BodyRefusal::TooLarge)
        {
            let msg = format!(
                "the response body is over the {} bytes filter `{}` reads",
                need.max_bytes, f.name
            );
            let (p, b) = local_reply(status, "body-too-large", &msg, &request_id).into_parts();
            resp_state.parts = p;
            resp_state.body = BodySlot::Released;
            body = b;
            trail.answered_by = AnsweredBy::Filter(f.name.clone());
            continue;
        }
        let span = trace.map(|t| t.filter_span(&f.name, &f.plugin.name, "response"));
        let (rq, rs, outcome) = f.on_response_held(state, resp_state, held).await;
        state = rq;
        resp_state = rs;
        let replacement = match outcome {
            Ok(Decision::Continue) => None,
            Ok(Decision::Respond(reply)) => {
                if most.is_some() {
                    resp_state.body = BodySlot::Whole(Bytes::from(reply.body.clone()));
                }
                Some(reply_response(reply))
            }
            Err(failure) => {
                if let Some(s) = &span {
                    s.failed(failure.reason);
                }
                log_failure(f, "response", &failure, &request_id);
                let closed = f.policy == FailurePolicy::FailClosed;
                if closed && most.is_some() {
                    // The failure answer is its own; the body read is gone.
                    resp_state.body = BodySlot::Released;
                }
                closed.then(|| failure_reply(f, &failure, &request_id))
            }
        };
        if let Some(r) = replacement {
            trail.answered_by = AnsweredBy::Filter(f.name.clone());
            let (p, b) = r.into_parts();
            resp_state.parts = p;
            body = b;
        }
    }
    if trail.want_tenant {
        trail.tenant = state
            .context
            .iter()
            .find(|(k, _)| k == "tenant")
            // A filter chose it: JSON escapes line breaks, not the
            // characters that reorder a line on a terminal.
            .map(|(_, v)| crate::telemetry::escape(v).into_owned());
    }
    let mut parts = resp_state.parts;
    match resp_state.body {
        // Read by filters (and perhaps replaced): sent as it is now. A
        // HEAD response keeps the length its GET would have.
        BodySlot::Whole(b) if state.parts.method != http::Method::HEAD => {
            if parts.headers.contains_key(header::CONTENT_LENGTH) || !b.is_empty() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            }
            body = Either::Right(Full::new(b));
        }
        _ => {}
    }
    if !parts.headers.contains_key(&X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID, request_id.header());
    }
    Response::from_parts(parts, body)
}

/// Reads the body (bounded), sends the request upstream and returns its
/// response, or the gateway's answer when that fails.
#[allow(clippy::too_many_arguments)] // until one request context holds them
async fn forward(
    gw: &Gateway,
    rt: &crate::serving::RouteRuntime,
    state: &mut RequestState,
    body: ClientBody,
    deadline: Instant,
    trace: Option<&RequestTrace<'_>>,
    trail: &mut Trail,
    response_filters: bool,
    upgrade: Option<Upgrade>,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    let info = state.info.clone();
    let request_id = &info.request_id;
    let limit = gw.server.max_body_bytes;
    // What filters read (and may have replaced) goes as it is. Any other
    // body streams to the upstream as it arrives (client streams and
    // bidirectional gRPC calls included), kept for a retry up to
    // `retry_buffer_bytes` on a route that retries.
    let filtered = match std::mem::take(&mut state.body) {
        BodySlot::Whole(b) => Some(b),
        _ => None,
    };
    state.body = BodySlot::Released;
    // What of a streamed body is kept to send again: only a route that
    // retries keeps any.
    let keep = if rt.retry.is_some() {
        gw.server.retry_buffer_bytes
    } else {
        0
    };
    let (buffered, streamed) = match (filtered, body) {
        (Some(b), _) => (Some(b), None),
        // No body at all: nothing to stream, nothing to keep.
        (None, ClientBody::Unread(b)) if http_body::Body::is_end_stream(&b) => {
            (Some(Bytes::new()), None)
        }
        // A small body of known length is read before the upstream is
        // asked: a client sending it slowly holds no upstream connection,
        // and a retry can send it again. A gRPC call's never is (its
        // client may wait for answers before it sends more).
        (None, ClientBody::Unread(b))
            if !trail.grpc
                && http_body::Body::size_hint(&b)
                    .exact()
                    .is_some_and(|n| n <= gw.server.retry_buffer_bytes as u64) =>
        {
            match tokio::time::timeout_at(deadline.into(), b.collect()).await {
                Ok(Ok(c)) => (Some(c.to_bytes()), None),
                Ok(Err(_)) => return Err(BodyFailure::Broken.reply(limit, request_id)),
                Err(_) => return Err(BodyFailure::Timeout.reply(limit, request_id)),
            }
        }
        (None, ClientBody::Unread(b)) => {
            let s = crate::upstream::replay::StreamedBody::new(b, keep, limit as u64);
            (None, Some(s))
        }
        (None, ClientBody::Prefixed(ahead, rest)) => {
            let s = crate::upstream::replay::StreamedBody::after(ahead, rest, keep, limit as u64);
            (None, Some(s))
        }
        (None, ClientBody::Read) => (Some(Bytes::new()), None),
    };
    trail.bytes_received = buffered.as_ref().map_or(0, |b| b.len() as u64);

    // Filters on the way out are shown the request as it was sent; without
    // any, the request moves upstream without a copy.
    let mut parts = if response_filters {
        state.parts.clone()
    } else {
        std::mem::replace(&mut state.parts, Request::new(()).into_parts().0)
    };
    parts.version = http::Version::HTTP_11;
    let body = match (buffered, streamed.clone()) {
        (Some(body), _) => {
            if body.is_empty()
                && parts.method != http::Method::POST
                && parts.method != http::Method::PUT
            {
                parts.headers.remove(header::CONTENT_LENGTH);
            } else {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            RequestBody::Buffered(body)
        }
        (None, Some(s)) => RequestBody::Streamed(s),
        (None, None) => RequestBody::Buffered(Bytes::new()),
    };
    let upstream = &rt.upstream;
    // A gRPC client's deadline bounds the call, each try and all of them.
    let (try_timeout, deadline) = match crate::grpc::timeout(&parts.headers) {
        // Checked: the header may name a deadline past the clock's range.
        Some(t) => (
            rt.try_timeout.min(t),
            Instant::now()
                .checked_add(t)
                .map_or(deadline, |d| deadline.min(d)),
        ),
        None => (rt.try_timeout, deadline),
    };
    let exchange = crate::upstream::Exchange {
        route: &rt.label,
        retry: rt.retry.as_deref(),
        try_timeout,
        deadline,
        request_id: request_id.as_str(),
        trace,
    };
    let mut tries = crate::upstream::Tries::default();
    let sent = upstream.send(&exchange, &mut tries, parts, body).await;
    trail.instance = tries.last_instance;
    trail.tries = tries.count;
    if let Some(s) = &streamed {
        trail.bytes_received = s.bytes_read();
        // A try cut short by the client's body is the client's failure,
        // and so is one that ran out of time while the body still came.
        let failure = match (&sent, s.cut()) {
            (Err(_), Some(crate::upstream::replay::Cut::TooLarge)) => Some(BodyFailure::TooLarge),
            (Err(_), Some(crate::upstream::replay::Cut::Client)) => Some(BodyFailure::Broken),
            (Err(Failed::Timeout), None) if !s.finished() => Some(BodyFailure::Timeout),
            _ => None,
        };
        if let Some(f) = failure {
            return Err(f.reply(limit, request_id));
        }
    }
    match sent {
        Err(Failed::Unavailable(code)) => {
            let msg = match code {
                "all-breakers-open" => {
                    "every instance of the upstream is failing; try again shortly"
                }
                _ => "no upstream instance can take the request",
            };
            Err(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                msg,
                request_id,
            ))
        }
        Err(Failed::Timeout) => Err(local_reply(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            "the upstream did not answer in time",
            request_id,
        )),
        Err(Failed::Connect(_)) => Err(local_reply(
            StatusCode::BAD_GATEWAY,
            "upstream-connect",
            "the upstream could not be reached",
            request_id,
        )),
        Err(Failed::Error(_)) => Err(local_reply(
            StatusCode::BAD_GATEWAY,
            "upstream-error",
            "the upstream failed to answer",
            request_id,
        )),
        Ok(resp) => {
            let (mut p, b) = resp.into_parts();
            let switched = p.status == StatusCode::SWITCHING_PROTOCOLS;
            let agreed = p.headers.get(header::UPGRADE).cloned();
            edge::strip_hop_by_hop(&mut p.headers);
            let mut body = Either::Left(b);
            match (switched, upgrade, p.extensions.remove::<OnUpgrade>()) {
                (false, _, _) => {}
                (true, Some(u), Some(upstream)) => {
                    if u.over_h2 {
                        // An HTTP/2 client is told by a 200 with no body
                        // (RFC 8441 §5); the handshake's accept key is the
                        // HTTP/1.1 leg's alone.
                        p.status = StatusCode::OK;
                        p.headers.remove(SEC_WEBSOCKET_ACCEPT);
                        body = Either::Right(Full::new(Bytes::new()));
                    } else {
                        p.headers
                            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        if let Some(v) = agreed {
                            p.headers.insert(header::UPGRADE, v);
                        }
                    }
                    let limits = crate::tunnel::Limits {
                        idle: gw.server.tunnel_idle_timeout.0,
                        lifetime: gw.server.tunnel_max_lifetime.0,
                    };
                    tokio::spawn(crate::tunnel::run(
                        u.client,
                        upstream,
                        limits,
                        gw.metrics.clone(),
                        rt.label.clone(),
                        u.protocol,
                        u.hold.map(|h| h.0),
                    ));
                }
                // A 101 nobody asked for (or on a connection that cannot
                // switch) would leave the client reading another protocol.
                (true, _, _) => {
                    return Err(local_reply(
                        StatusCode::BAD_GATEWAY,
                        "upstream-error",
                        "the upstream switched protocols unasked",
                        request_id,
                    ));
                }
            }
            Ok(Response::from_parts(p, body))
        }
    }
}

/// Why the client's request body could not be read.
enum BodyFailure {
    Timeout,
    TooLarge,
    Broken,
}

impl BodyFailure {
    fn reply(self, limit: usize, request_id: &RequestId) -> Response<ProxyBody> {
        match self {
            BodyFailure::Timeout => local_reply(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "the request body did not arrive in time",
                request_id,
            ),
            BodyFailure::TooLarge => local_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                &format!("request body is over the limit of {limit} bytes"),
                request_id,
            ),
            BodyFailure::Broken => local_reply(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "the request body could not be read",
                request_id,
            ),
        }
    }
}

/// The client's request body on its way to the upstream.
enum ClientBody {
    /// Not touched: read (or streamed) only when sent.
    Unread(Incoming),
    /// Read for filters: it is in the request's `BodySlot`.
    Read,
    /// Read for filters past their limit: the frames read, then the rest.
    Prefixed(Vec<Bytes>, Incoming),
}

/// A body read ahead for filters.
enum ReadAhead<B> {
    Whole(Bytes),
    /// Over the limit: the frames read so far, and the body with the rest.
    Over(Vec<Bytes>, B),
}

/// Reads `body` whole if it is at most `max` bytes; stops once it is
/// more, keeping what was read. Trailers are not kept: a body a filter
/// reads is sent on whole, without them.
async fn read_up_to<B>(mut body: B, max: usize) -> Result<ReadAhead<B>, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut frames = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len();
        frames.push(data);
        if total > max {
            return Ok(ReadAhead::Over(frames, body));
        }
    }
    Ok(ReadAhead::Whole(match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().expect("one frame"),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(total);
            for f in frames {
                whole.extend_from_slice(&f);
            }
            whole.freeze()
        }
    }))
}

/// Reads a response body for filters: whole when it is at most `most`
/// bytes, else what was read goes back in front of the rest, to stream on.
/// `None` when the upstream broke off while it was read.
async fn read_response(body: ProxyBody, most: usize) -> Option<(BodySlot, ProxyBody)> {
    Some(match body {
        Either::Left(upstream) => match read_up_to(upstream, most).await {
            Ok(ReadAhead::Whole(b)) => (BodySlot::Whole(b.clone()), Either::Right(Full::new(b))),
            Ok(ReadAhead::Over(frames, mut rest)) => {
                rest.unread(frames);
                (BodySlot::TooLarge, Either::Left(rest))
            }
            Err(_) => return None,
        },
        Either::Right(full) => {
            let b = full
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let slot = if b.len() > most {
                BodySlot::TooLarge
            } else {
                BodySlot::Whole(b.clone())
            };
            (slot, Either::Right(Full::new(b)))
        }
    })
}

/// A request to switch protocols, and what the switch needs: the client's
/// side of it and the hold on its connection.
struct Upgrade {
    protocol: String,
    client: OnUpgrade,
    hold: Option<ConnectionHold>,
    /// An HTTP/2 extended CONNECT, answered 200 rather than 101.
    over_h2: bool,
}

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn websocket_key() -> HeaderValue {
    use base64::Engine;
    let key: [u8; 16] = rand::random();
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    HeaderValue::try_from(text).expect("base64 is a valid header value")
}
