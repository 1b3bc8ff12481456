//! What a filter costs on the request path: one call on a warm instance,
//! and a chain of four filters through both phases.
//!
//! Needs the plugins built first (`make bench` does it).

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway::config::FilterConfig;
use gateway::plugin::host::{RequestInfo, RequestState, ResponseState};
use gateway::plugin::{Decision, Filter, Runtime};
use gateway::telemetry::Metrics;
use std::sync::Arc;

fn plugin_path(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/plugins/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

fn request() -> RequestState {
    let req = http::Request::builder()
        .method("GET")
        .uri("/api/orders/42?expand=items")
        .header("host", "api.example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header("authorization", "Bearer abc.def.ghi")
        .header("x-real-ip", "6.6.6.6")
        .header("x-request-id", "0123456789abcdef0123456789abcdef")
        .header("x-forwarded-for", "127.0.0.1")
        .header("cookie", "session=1234")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    RequestState {
        parts,
        info: Arc::new(RequestInfo {
            route: "api".into(),
            client_addr: "127.0.0.1:5555".parse().unwrap(),
            request_id: "0123456789abcdef0123456789abcdef".into(),
            scheme: "http",
        }),
        context: Vec::new(),
    }
}

fn response() -> ResponseState {
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("server", "upstream/1.0")
        .header("x-powered-by", "bench")
        .body(())
        .unwrap();
    ResponseState {
        parts: resp.into_parts().0,
    }
}

async fn filter(rt: &Runtime, name: &str, plugin: &str, config: &str) -> Arc<Filter> {
    let cfg: FilterConfig =
        toml::from_str(&format!("plugin = \"{plugin}\"\n[config]\n{config}")).unwrap();
    let loaded = rt.load(plugin, &plugin_path(plugin)).unwrap();
    Arc::new(rt.filter(name, loaded, &cfg).await.unwrap())
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new(&[0.001, 0.01, 0.1]).unwrap());
    let rt = Runtime::new(metrics).unwrap();
    eprintln!("pooling allocator: {}", rt.pooling);
    let (headers, chain) = tokio.block_on(async {
        let headers = filter(&rt, "headers", "headers", "").await;
        let mut chain = vec![headers.clone()];
        for i in 0..3 {
            chain.push(
                filter(
                    &rt,
                    &format!("probe{i}"),
                    "probe",
                    &format!("name = \"p{i}\""),
                )
                .await,
            );
        }
        (headers, chain)
    });

    c.bench_function("headers filter on-request, warm instance", |b| {
        b.to_async(&tokio).iter_batched(
            request,
            |req| {
                let f = headers.clone();
                async move {
                    let (req, out) = f.on_request(req).await;
                    assert!(matches!(out, Ok(Decision::Continue)));
                    req
                }
            },
            BatchSize::SmallInput,
        )
    });

    let probe = chain[1].clone();
    c.bench_function("probe filter on-request, warm instance", |b| {
        b.to_async(&tokio).iter_batched(
            request,
            |req| {
                let f = probe.clone();
                async move { f.on_request(req).await.0 }
            },
            BatchSize::SmallInput,
        )
    });

    c.bench_function("chain of four filters, on-request and on-response", |b| {
        b.to_async(&tokio).iter_batched(
            || (request(), response()),
            |(mut req, mut resp)| {
                let chain = chain.clone();
                async move {
                    for f in &chain {
                        let (r, out) = f.on_request(req).await;
                        assert!(matches!(out, Ok(Decision::Continue)));
                        req = r;
                    }
                    for f in chain.iter().rev() {
                        let (r, s, out) = f.on_response(req, resp).await;
                        assert!(matches!(out, Ok(Decision::Continue)));
                        req = r;
                        resp = s;
                    }
                    resp
                }
            },
            BatchSize::SmallInput,
        )
    });

    c.bench_function(
        "request and response built without filters (baseline)",
        |b| b.iter_batched(|| (), |()| (request(), response()), BatchSize::SmallInput),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
