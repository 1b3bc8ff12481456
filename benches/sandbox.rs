//! What the sandbox costs per request, both phases through one filter (the
//! `probe` test filter: a header read and a header write per phase):
//!
//! - `guards`: call deadlines (epoch interruption) and memory limits on,
//!   each off, both off. The gateway always runs with both on; the
//!   difference is their price.
//! - `isolation`: `pooled` (a warm instance per call) against `request`
//!   (a fresh instance per request, made inline here: the worst case, as
//!   when requests outrun the refill).
//!
//! Needs the plugins built first (`make plugins`).

mod common;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway::plugin::{Decision, Filter, Guards, Runtime};
use gateway::telemetry::Metrics;
use std::sync::Arc;

fn request() -> gateway::plugin::host::RequestState {
    common::request_with(
        "/api/orders/42",
        &[("host", "api.example.com"), ("accept", "application/json")],
    )
}

async fn probe(rt: &Runtime, isolation: &str) -> Arc<Filter> {
    let table = format!("plugin = \"probe\"\nisolation = \"{isolation}\"\n[config]\nname = \"p\"");
    common::filter_at(rt, "probe", "probe", &common::plugin_path("probe"), &table).await
}

/// Both phases of one request, as the proxy runs them.
async fn both_phases(f: Arc<Filter>) {
    let (req, out, held) = f.on_request_held(request()).await;
    assert!(matches!(out, Ok(Decision::Continue)));
    let (_, resp, out) = f.on_response_held(req, common::response(), held).await;
    assert!(matches!(out, Ok(Decision::Continue)));
    assert!(resp.parts.headers.contains_key("x-chain-out"));
}

fn runtime(guards: Guards) -> Runtime {
    let metrics = Arc::new(Metrics::new(&[0.001, 0.01, 0.1]).unwrap());
    let state = Arc::new(gateway::state::State::memory(metrics.clone()));
    Runtime::with_guards(metrics, state, guards).unwrap()
}

fn guards(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("guards");
    for (name, deadlines, memory_limits) in [
        ("on", true, true),
        ("deadline off", false, true),
        ("memory limit off", true, false),
        ("both off", false, false),
    ] {
        let rt = runtime(Guards {
            deadlines,
            memory_limits,
        });
        let f = tokio.block_on(probe(&rt, "pooled"));
        g.bench_function(name, |b| {
            b.to_async(&tokio)
                .iter_batched(|| f.clone(), both_phases, BatchSize::SmallInput)
        });
    }
    g.finish();

    let mut g = c.benchmark_group("isolation");
    let rt = runtime(Guards::default());
    for isolation in ["pooled", "request"] {
        let f = tokio.block_on(probe(&rt, isolation));
        g.bench_function(isolation, |b| {
            b.to_async(&tokio)
                .iter_batched(|| f.clone(), both_phases, BatchSize::SmallInput)
        });
    }
    g.finish();
}

criterion_group!(benches, guards);
criterion_main!(benches);
