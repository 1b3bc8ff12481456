//! What the metrics cost per request: every instrument the request path
//! records for a request through one route with one filter (both phases)
//! and one upstream try, with the instruments the gateway uses.
//!
//! - `bound`: as the gateway records: in-flight up and down, the request
//!   counter, duration and request size, the response size, the filter's
//!   two calls and durations, the instance's pick, outcome and try
//!   duration, the pool's hit-or-miss bookkeeping (which tells reused
//!   connections from new ones by their local address) and the
//!   connection-in-use gauge.
//! - `otel_histograms_bound`: the same, with OpenTelemetry histograms
//!   (bound) in place of the Prometheus client's lock-free ones.
//! - `otel_unbound`: everything through OpenTelemetry with label sets
//!   passed on each record, as its instruments are used without binding.
//!
//! The goal: under 210 ns a request, all instruments included.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::telemetry::{
    FilterMetrics, InstanceMetrics, Metrics, Phase, RouteMetrics, TryKind, shared,
};
use gateway::upstream::pool::{ConnectionSettings, ConnectionUse, InstancePool, PoolStats};
use opentelemetry::KeyValue;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn metrics() -> Arc<Metrics> {
    Arc::new(
        Metrics::new(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let m = metrics();
    let route: Arc<str> = "api".into();
    let rm = RouteMetrics::new(&m, shared(&route), &["GET"]);
    let filter_attrs = |phase: &'static str| {
        [
            KeyValue::new("filter", "auth"),
            KeyValue::new("plugin", "auth"),
            KeyValue::new("phase", phase),
        ]
    };
    let (fa_req, fa_resp) = (filter_attrs("request"), filter_attrs("response"));
    let fm = FilterMetrics::new(&m, [&fa_req, &fa_resp]);
    let labels = [
        KeyValue::new("upstream", "orders"),
        KeyValue::new("endpoint", "127.0.0.1:9000"),
    ];
    let im = InstanceMetrics::new(&m, &labels);
    let pool = PoolStats::new(KeyValue::new("upstream", "orders"), m.clone());
    let settings = ConnectionSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        max_idle: 64,
    };
    let inst = Arc::new(InstancePool::new(labels.clone(), &m, settings));
    pool.set_instances([("127.0.0.1:9000".to_string(), inst.clone())]);
    let conn = ConnectionUse::default();
    let took = Duration::from_micros(420);

    let mut g = c.benchmark_group("metrics_per_request");
    g.bench_function("bound", |b| {
        b.iter(|| {
            let in_flight = m.in_flight();
            fm.called(Phase::Request);
            fm.took(Phase::Request, black_box(Duration::from_micros(7)));
            im.picked();
            let active = inst.connections.active();
            drop(active);
            pool.answered(&inst, black_box(&conn));
            im.tried(black_box(TryKind::Status(200)), black_box(took));
            fm.called(Phase::Response);
            fm.took(Phase::Response, black_box(Duration::from_micros(5)));
            rm.answered("GET", black_box(200), black_box(took), black_box(512));
            drop(in_flight);
            rm.response_size.observe(black_box(2048.0));
        })
    });

    // The same measurements with OpenTelemetry histograms in place of the
    // Prometheus client's, bound too: why the request-path histograms are
    // not OpenTelemetry instruments (the SDK's take a lock per record).
    let meter = m.meter();
    let otel_hist = |name: &str| meter.f64_histogram(format!("bench_{name}")).build();
    let (h_plugin, h_upstream, h_http, h_req, h_resp) = (
        otel_hist("plugin"),
        otel_hist("upstream"),
        otel_hist("http"),
        otel_hist("request_size"),
        otel_hist("response_size"),
    );
    let route_attrs = [KeyValue::new("route", shared(&route))];
    let (hb_plugin_req, hb_plugin_resp) = (h_plugin.bind(&fa_req), h_plugin.bind(&fa_resp));
    let hb_upstream = h_upstream.bind(&labels);
    let (hb_http, hb_req, hb_resp) = (
        h_http.bind(&route_attrs),
        h_req.bind(&route_attrs),
        h_resp.bind(&route_attrs),
    );
    let request_counter = m.http_requests.bind(&[
        KeyValue::new("route", shared(&route)),
        KeyValue::new("method", "GET"),
        KeyValue::new("status", "200"),
        KeyValue::new("status_class", "2xx"),
    ]);
    g.bench_function("otel_histograms_bound", |b| {
        b.iter(|| {
            let in_flight = m.in_flight();
            fm.called(Phase::Request);
            hb_plugin_req.record(black_box(7e-6));
            im.picked();
            let active = inst.connections.active();
            drop(active);
            pool.answered(&inst, black_box(&conn));
            im.tried(black_box(TryKind::Status(200)), black_box(took));
            hb_upstream.record(black_box(4.2e-4));
            fm.called(Phase::Response);
            hb_plugin_resp.record(black_box(5e-6));
            request_counter.add(1);
            hb_http.record(black_box(4.2e-4));
            hb_req.record(black_box(512.0));
            drop(in_flight);
            hb_resp.record(black_box(2048.0));
        })
    });

    // Everything through OpenTelemetry, label sets given on every record,
    // as instruments are used without binding: what binding saves.
    let request_attrs = [
        KeyValue::new("route", shared(&route)),
        KeyValue::new("method", "GET"),
        KeyValue::new("status", "200"),
        KeyValue::new("status_class", "2xx"),
    ];
    let mut outcome_attrs = labels.to_vec();
    outcome_attrs.push(KeyValue::new("outcome", "2xx"));
    let mut pool_attrs = labels.to_vec();
    pool_attrs.push(KeyValue::new("result", "hit"));
    g.bench_function("otel_unbound", |b| {
        b.iter(|| {
            let in_flight = m.in_flight();
            m.plugin_calls.add(1, &fa_req);
            h_plugin.record(black_box(7e-6), &fa_req);
            m.upstream_picks.add(1, &labels);
            m.pool_requests.add(1, &pool_attrs);
            m.upstream_requests.add(1, &outcome_attrs);
            h_upstream.record(black_box(4.2e-4), &labels);
            m.plugin_calls.add(1, &fa_resp);
            h_plugin.record(black_box(5e-6), &fa_resp);
            m.http_requests.add(1, &request_attrs);
            h_http.record(black_box(4.2e-4), &route_attrs);
            h_req.record(black_box(512.0), &route_attrs);
            drop(in_flight);
            h_resp.record(black_box(2048.0), &route_attrs);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
