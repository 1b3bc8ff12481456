//! What reading and replacing a body costs a 0.2.0 filter, by body size:
//! one `on-request` on a warm instance that reads the request body and
//! sets it back transformed (the `probe_v2` test filter, upper-casing it),
//! against the same call on a request whose filter asked for no body. The
//! difference over the sizes is the cost per KiB: the copy into the
//! guest, its work on the bytes, and the copy back.
//!
//! Needs the plugins built first (`make plugins`).

mod common;

use common::plugin_path;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::plugin::host::{BodySlot, RequestState};
use gateway::plugin::{Decision, Runtime};
use gateway::telemetry::Metrics;
use std::sync::Arc;

fn request(body: Option<bytes::Bytes>) -> RequestState {
    let mut r = common::request_with("/api/orders", &[("host", "api.example.com")]);
    if let Some(b) = body {
        r.body = BodySlot::Whole(b);
    }
    r
}

fn bodies(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new(&[0.1]).unwrap());
    let rt = Runtime::new(metrics).unwrap();
    let path = plugin_path("probe_v2");
    let (reads, ignores) = tokio.block_on(async {
        let reads = common::filter_at(
            &rt,
            "reads",
            "probe_v2",
            &path,
            "plugin = \"probe_v2\"\nmemory_limit_mib = 64\n[config]\nname = \"reads\"\nrequest_body = 4194304\nupper_request_body = true\n",
        )
        .await;
        let ignores = common::filter_at(
            &rt,
            "ignores",
            "probe_v2",
            &path,
            "plugin = \"probe_v2\"\n[config]\nname = \"ignores\"\n",
        )
        .await;
        (reads, ignores)
    });
    let mut g = c.benchmark_group("request_body");
    g.bench_function("no body asked", |b| {
        b.to_async(&tokio).iter_batched(
            || request(None),
            |req| async {
                let (_, out) = ignores.on_request(req).await;
                assert!(matches!(out, Ok(Decision::Continue)));
            },
            BatchSize::SmallInput,
        )
    });
    for kib in [1usize, 16, 64, 256] {
        let body = bytes::Bytes::from(vec![b'a'; kib * 1024]);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("read and replace", format!("{kib} KiB")),
            &body,
            |b, body| {
                b.to_async(&tokio).iter_batched(
                    || request(Some(body.clone())),
                    |req| async {
                        let (req, out) = reads.on_request(req).await;
                        assert!(matches!(out, Ok(Decision::Continue)));
                        assert!(matches!(&req.body, BodySlot::Whole(b) if b[0] == b'A'));
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bodies);
criterion_main!(benches);
