//! What a filter costs by the language it is written in: the four example
//! filters of plugins/examples (server-timing in Rust, shard-header in
//! JavaScript, deny-paths in Python, require-user-agent in WAT), each
//!
//! - `call`: one `on_request` on a warm instance, the request path's cost;
//! - `instantiate`: creating and configuring a new instance, what a warm
//!   set refill or a request under `isolation = "request"` costs.
//!
//! Needs `make examples` first (`make bench` does it), which builds them
//! into target/examples.

mod common;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway::plugin::{Decision, Filter, Runtime};
use gateway::telemetry::Metrics;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// (language, plugin, its settings as a `[filters.NAME]` table body).
const EXAMPLES: [(&str, &str, &str); 4] = [
    ("rust", "server-timing", "[config]\nmetric = \"edge\""),
    (
        "javascript",
        "shard-header",
        "[config]\nheader = \"x-shard\"\nshards = 8",
    ),
    (
        "python",
        "deny-paths",
        "[config]\ndeny = [\"/api/admin\", \"/api/internal\"]",
    ),
    ("wat", "require-user-agent", ""),
];

fn request() -> gateway::plugin::host::RequestState {
    common::request_with(
        "/api/orders/42",
        &[
            ("host", "api.example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
        ],
    )
}

async fn example(rt: &Runtime, plugin: &str, settings: &str) -> Arc<Filter> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/examples/{plugin}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make examples` first",
        path.display()
    );
    let table = format!("plugin = \"{plugin}\"\ninstances = 1\n{settings}");
    common::filter_at(rt, plugin, plugin, &path, &table).await
}

fn languages(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new(&[0.001, 0.01, 0.1]).unwrap());
    let rt = Runtime::new(metrics).unwrap();
    let filters: Vec<(&str, Arc<Filter>)> = EXAMPLES
        .iter()
        .map(|(lang, plugin, settings)| (*lang, tokio.block_on(example(&rt, plugin, settings))))
        .collect();

    let mut g = c.benchmark_group("call");
    for (lang, f) in &filters {
        g.bench_function(*lang, |b| {
            b.to_async(&tokio).iter_batched(
                request,
                |req| {
                    let f = f.clone();
                    async move {
                        let (_, out) = f.on_request(req).await;
                        match out {
                            Ok(Decision::Continue) => {}
                            Ok(Decision::Respond(r)) => panic!("{}: answered {}", f.name, r.status),
                            Err(e) => panic!("{}: {e:?}", f.name),
                        }
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("instantiate");
    // Tens of microseconds to milliseconds each: fewer samples, longer runs.
    g.sample_size(30).measurement_time(Duration::from_secs(10));
    for (lang, f) in &filters {
        g.bench_function(*lang, |b| {
            b.to_async(&tokio).iter(|| {
                let f = f.clone();
                async move { f.instantiate_once().await.unwrap() }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, languages);
criterion_main!(benches);
