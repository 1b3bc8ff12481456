//! Traces leave by OTLP (HTTP/protobuf) to a collector on loopback: a
//! server span per request, child of the client's `traceparent`; a span per
//! filter call and a client span per upstream try, children of the server
//! span; and the upstream receives the `traceparent` of its try's span.

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An OTLP/HTTP traces receiver: answers every POST 200 and keeps the
/// spans it decoded.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let kept = kept.clone();
                std::thread::spawn(move || serve(conn, kept));
            }
        });
        Collector { addr, spans }
    }

    /// Waits until spans of `trace_id` (hex) include `want` of them.
    fn wait_for(&self, trace_id: &str, want: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if found.len() >= want {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "only {} spans of {trace_id} after 10 s: {found:?}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(conn: std::net::TcpStream, kept: Arc<Mutex<Vec<Span>>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let req = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP protobuf body");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                kept.lock().unwrap().extend(ss.spans);
            }
        }
        conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn traced_gateway(collector: &Collector, up: &Upstream) -> Gateway {
    traced_gateway_sampling(collector, up, 1.0)
}

fn traced_gateway_sampling(collector: &Collector, up: &Upstream, ratio: f64) -> Gateway {
    Gateway::start(&format!(
        "[tracing]\nendpoint = \"http://{}/v1/traces\"\nexport_interval = \"50ms\"\nservice_name = \"edge\"\nsample_ratio = {ratio:?}\n\n\
         [access_log]\npath = \"access.log\"\n\n\
         [upstreams.app]\ninstances = [\"{}\"]\n\n\
         [filters.p1]\nplugin = \"probe\"\n[filters.p1.config]\nname = \"p1\"\n\n\
         [[route]]\nid = \"app\"\npath_prefix = \"/app\"\nupstream = \"app\"\nfilters = [\"p1\"]\n",
        collector.addr, up.addr
    ))
}

#[test]
fn spans_link_client_gateway_filters_and_upstream() {
    let collector = Collector::start();
    let up = Upstream::start("app");
    let gw = traced_gateway(&collector, &up);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = gw.get(
        "/app/orders",
        &[("traceparent", &format!("00-{trace_id}-{client_span}-01"))],
    );
    assert_eq!(r.status, 200);

    // Server, two filter calls, one upstream try.
    let spans = collector.wait_for(trace_id, 4);
    assert_eq!(spans.len(), 4, "{spans:?}");
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(hex(&server.parent_span_id), client_span);
    assert_eq!(server.name, "GET app");
    let filters: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("filter p1 "))
        .collect();
    assert_eq!(filters.len(), 2, "{spans:?}");
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("a client span per try");
    for child in filters.iter().chain([&client]) {
        assert_eq!(child.parent_span_id, server.span_id, "{child:?}");
        assert!(child.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(child.end_time_unix_nano <= server.end_time_unix_nano);
    }
    // The upstream got the try's span as its parent, in the same trace.
    let seen = up.last();
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{trace_id}-{}-01", hex(&client.span_id)).as_str())
    );

    // A request without a traceparent starts a trace of its own, which the
    // upstream joins and the access log names.
    let r = gw.get("/app/x", &[]);
    assert_eq!(r.status, 200);
    let tp = up.last().header("traceparent").unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    let spans = collector.wait_for(parts[1], 4);
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert!(server.parent_span_id.is_empty(), "a root span");
    let id = r.header("x-request-id").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(gw.dir.path().join("access.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(id)) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["trace_id"], parts[1]);
            break;
        }
        assert!(Instant::now() < deadline, "no access log line for {id}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_did_not_sample_is_not_exported_but_still_propagated() {
    let collector = Collector::start();
    let up = Upstream::start("app");
    let gw = traced_gateway(&collector, &up);
    let unsampled = "11111111111111111111111111111111";
    let r = gw.get(
        "/app/a",
        &[(
            "traceparent",
            &format!("00-{unsampled}-00f067aa0ba902b7-00"),
        )],
    );
    assert_eq!(r.status, 200);
    let tp = up.last().header("traceparent").unwrap().to_string();
    assert!(
        tp.starts_with(&format!("00-{unsampled}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    // A sampled request after it: once its spans arrived, the unsampled
    // one's would have too.
    let sampled = "22222222222222222222222222222222";
    gw.get(
        "/app/b",
        &[("traceparent", &format!("00-{sampled}-00f067aa0ba902b7-01"))],
    );
    collector.wait_for(sampled, 4);
    std::thread::sleep(Duration::from_millis(200));
    let leaked = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| hex(&s.trace_id) == unsampled)
        .count();
    assert_eq!(leaked, 0);
}

#[test]
fn the_sample_ratio_decides_for_new_traces() {
    let collector = Collector::start();
    let up = Upstream::start("app");
    let gw = traced_gateway_sampling(&collector, &up, 0.0);
    for _ in 0..20 {
        assert_eq!(gw.get("/app/a", &[]).status, 200);
        let tp = up.last().header("traceparent").unwrap().to_string();
        assert!(tp.ends_with("-00"), "kept at a ratio of 0: {tp}");
    }
    // A client's sampled trace is kept whatever the ratio; once it is
    // exported, none of the twenty was.
    let sampled = "33333333333333333333333333333333";
    gw.get(
        "/app/b",
        &[("traceparent", &format!("00-{sampled}-00f067aa0ba902b7-01"))],
    );
    collector.wait_for(sampled, 4);
    std::thread::sleep(Duration::from_millis(200));
    let all = collector.spans.lock().unwrap().len();
    assert_eq!(all, 4, "only the client-sampled trace is exported");
}
