//! gRPC through the gateway with a real tonic service (the generated
//! `grpc.health.v1.Health`, served over HTTP/2 without TLS) and tonic's
//! generated client: statuses and trailers end to end, a filter's refusal
//! as a gRPC status, the client's deadline (`grpc-timeout`) honoured, and
//! a retry on UNAVAILABLE.

use crate::common::{Gateway, LoopbackServer, loopback_server, metric, preamble, tempdir};
use crate::observability::{GRPC_METRICS, assert_catalogued};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_service::Service;

/// The service name the upstream reports SERVING.
const SERVICE: &str = "echo.Echo";

/// A gRPC health service on loopback (h2c). The first `refuse_first` calls
/// are refused with UNAVAILABLE before reaching it; a call with `x-delay-ms`
/// metadata waits that long first.
struct GrpcUpstream {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    _server: LoopbackServer,
}

impl GrpcUpstream {
    fn start(refuse_first: usize) -> GrpcUpstream {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let (reporter, health) = tonic_health::server::health_reporter();
        let server = loopback_server(move |stream| {
            let (health, counted) = (health.clone(), counted.clone());
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let mut health = health.clone();
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < refuse_first {
                        return Ok(tonic::Status::unavailable("warming up").into_http());
                    }
                    let delay = req
                        .headers()
                        .get("x-delay-ms")
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    if let Some(ms) = delay {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    health.call(req).await
                }
            });
            serve_h2(stream, svc)
        });
        server
            .rt
            .block_on(reporter.set_service_status(SERVICE, ServingStatus::Serving));
        GrpcUpstream {
            addr: server.addr,
            calls,
            _server: server,
        }
    }
}

/// Serves HTTP/2 with prior knowledge on `stream` until it closes.
async fn serve_h2<S, B>(stream: tokio::net::TcpStream, svc: S)
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

/// A gateway with route `health` to `up` over h2c; `route` adds lines to
/// the route, `filters` defines filters.
fn gateway(up: &GrpcUpstream, route: &str, filters: &str) -> Gateway {
    let body = format!(
        "{filters}\n[upstreams.grpc]\ninstances = [\"{}\"]\nprotocol = \"h2c\"\n\n[[route]]\nid = \"health\"\npath_prefix = \"/grpc.health.v1.Health\"\nupstream = \"grpc\"\n{route}\n",
        up.addr
    );
    Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
        format!("{}{body}", preamble(addr, admin))
    })
}

type Channel = Client<HttpConnector, tonic::body::Body>;

/// tonic's generated client over an h2c connection to the gateway.
fn client(gw: &Gateway) -> HealthClient<Channel> {
    let http: Channel = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{}", gw.addr).parse().unwrap();
    HealthClient::with_origin(http, origin)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn check(service: &str) -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    })
}

fn grpc_responses(gw: &Gateway, status: &str) -> f64 {
    metric(
        &gw.metrics(),
        "gateway_grpc_responses_total",
        &[("route", "health"), ("grpc_status", status)],
    )
    .unwrap_or(0.0)
}

#[test]
fn calls_and_their_statuses_cross_the_gateway_with_trailers() {
    let up = GrpcUpstream::start(0);
    let gw = gateway(&up, "", "");
    runtime().block_on(async {
        let mut c = client(&gw);
        let ok = c.check(check(SERVICE)).await.expect("the call succeeds");
        assert_eq!(ok.get_ref().status, ServingStatus::Serving as i32);
        // The status comes in the trailers of a streamed answer: it must
        // reach the client as sent.
        let err = c.check(check("no.Such")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    });
    assert_eq!(grpc_responses(&gw, "0"), 1.0, "{}", gw.metrics());
    assert_eq!(grpc_responses(&gw, "5"), 1.0, "{}", gw.metrics());
    // What the catalogue lists of gRPC is in this scrape.
    let m = gw.metrics();
    assert_catalogued(&m, GRPC_METRICS, 1);
}

#[test]
fn a_filter_refusal_reaches_the_client_as_a_grpc_status() {
    let up = GrpcUpstream::start(0);
    let gw = gateway(
        &up,
        "filters = [\"deny\"]",
        "[filters.deny]\nplugin = \"probe\"\n[filters.deny.config]\nname = \"deny\"\nanswer = 403\n",
    );
    runtime().block_on(async {
        let err = client(&gw).check(check(SERVICE)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(err.message(), "HTTP 403");
    });
    assert_eq!(up.calls.load(Ordering::SeqCst), 0);
    assert_eq!(grpc_responses(&gw, "7"), 1.0, "{}", gw.metrics());
    // The raw answer: trailers-only, not an HTTP error body.
    let raw = runtime().block_on(async {
        let http: Client<HttpConnector, http_body_util::Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let req = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", gw.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
                0, 0, 0, 0, 0,
            ])))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    });
    let (parts, body) = raw;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(parts.headers["grpc-status"], "7");
    assert!(body.is_empty(), "{body:?}");
}

#[test]
fn the_clients_deadline_bounds_the_call() {
    let up = GrpcUpstream::start(0);
    let gw = gateway(&up, "timeout = \"10s\"", "");
    runtime().block_on(async {
        let mut req = check(SERVICE);
        req.set_timeout(Duration::from_millis(300));
        req.metadata_mut()
            .insert("x-delay-ms", "3000".parse().unwrap());
        let started = std::time::Instant::now();
        let err = client(&gw).check(req).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
    });
}

#[test]
fn unavailable_is_retried_when_the_route_says_so() {
    let up = GrpcUpstream::start(1);
    let gw = gateway(
        &up,
        "[route.retry]\nattempts = 2\non = [\"unavailable\"]\nbackoff_base = \"1ms\"",
        "",
    );
    runtime().block_on(async {
        let ok = client(&gw).check(check(SERVICE)).await.expect("retried");
        assert_eq!(ok.get_ref().status, ServingStatus::Serving as i32);
    });
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric(
            &gw.metrics(),
            "gateway_upstream_retries_total",
            &[("route", "health"), ("result", "sent")]
        ),
        Some(1.0)
    );
    // Without the retry the refusal reaches the client.
    let up = GrpcUpstream::start(1);
    let gw = gateway(&up, "", "");
    runtime().block_on(async {
        let err = client(&gw).check(check(SERVICE)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    });
    assert_eq!(grpc_responses(&gw, "14"), 1.0, "{}", gw.metrics());
}

/// A bidirectional echo over h2c: every data frame of the request is sent
/// back as it arrives, then `grpc-status: 0` in the trailers.
fn start_stream_echo() -> LoopbackServer {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    loopback_server(|stream| {
        let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Frame<bytes::Bytes>>(8);
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Frame::data(data)).await.is_err()
                    {
                        return;
                    }
                }
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = tx.send(Frame::trailers(trailers)).await;
            });
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(frames_of(rx)))
                    .unwrap(),
            )
        });
        serve_h2(stream, svc)
    })
}

/// The frames a channel receives, as a body's stream.
fn frames_of(
    rx: tokio::sync::mpsc::Receiver<hyper::body::Frame<bytes::Bytes>>,
) -> std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
            > + Send,
    >,
> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok(f), rx))
    }))
}

/// One gRPC message: the 5-byte prefix (uncompressed, length) and `payload`.
fn grpc_message(payload: &[u8]) -> bytes::Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    m.into()
}

#[test]
fn a_bidirectional_stream_flows_both_ways_before_either_side_ends() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let server = start_stream_echo();
    let echo = server.addr;
    let body = format!(
        "[upstreams.stream]\ninstances = [\"{echo}\"]\nprotocol = \"h2c\"\n\n[[route]]\nid = \"stream\"\npath_prefix = \"/echo.Echo\"\nupstream = \"stream\"\n"
    );
    let gw = Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
        format!("{}{body}", preamble(addr, admin))
    });
    runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut send = crate::common::h2_client(stream).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Frame<bytes::Bytes>>(8);
        let frames = frames_of(rx);
        let req = http::Request::post(format!("http://{}/echo.Echo/Chat", gw.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(frames))
            .unwrap();
        tx.send(Frame::data(grpc_message(b"first"))).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .expect("the answer starts while the request is still open")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame comes back before the request ends")
                .unwrap()
                .unwrap()
        };
        // Each message comes back before the next is sent: nothing waits
        // for the request to end.
        assert_eq!(next().await.into_data().unwrap(), grpc_message(b"first"));
        tx.send(Frame::data(grpc_message(b"second"))).await.unwrap();
        assert_eq!(next().await.into_data().unwrap(), grpc_message(b"second"));
        drop(tx);
        let trailers = next().await.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    });
    assert_eq!(
        metric(
            &gw.metrics(),
            "gateway_grpc_responses_total",
            &[("route", "stream"), ("grpc_status", "0")]
        ),
        Some(1.0)
    );
}

#[test]
fn a_call_over_a_tls_listener_keeps_its_trailers() {
    use prost::Message;
    let up = GrpcUpstream::start(0);
    let ca = crate::tls::Ca::new("Test CA");
    let dir = tempdir::Dir::new();
    ca.server("localhost", &["localhost"])
        .write(dir.path(), "server");
    let body = format!(
        "[server.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n\n[upstreams.grpc]\ninstances = [\"{}\"]\nprotocol = \"h2c\"\n\n[[route]]\nid = \"health\"\npath_prefix = \"/grpc.health.v1.Health\"\nupstream = \"grpc\"\n",
        up.addr
    );
    let gw = Gateway::start_with(dir, |addr, admin| {
        format!("{}{body}", preamble(addr, admin))
    });
    let (data, trailers) = runtime().block_on(async {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut send = crate::common::h2_client(stream).await;
        let call = HealthCheckRequest {
            service: SERVICE.into(),
        }
        .encode_to_vec();
        let req = http::Request::post("https://localhost/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(grpc_message(&call)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .cloned()
            .expect("the upstream's trailers");
        (collected.to_bytes(), trailers)
    });
    assert_eq!(trailers["grpc-status"], "0");
    let answer = tonic_health::pb::HealthCheckResponse::decode(&data[5..]).unwrap();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
}
