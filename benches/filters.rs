//! What a filter costs on the request path: one call on a warm instance of
//! each shipped plugin, the rate limiter on the memory and on a real Redis
//! state, and chains through both phases.
//!
//! Needs the plugins built first (`make bench` does it) and, for the Redis
//! figure, `redis-server` (`make setup` installs it).

mod common;

use common::{plugin_path, response};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gateway::plugin::host::{RequestState, ResponseState};
use gateway::plugin::{Decision, Filter, Runtime};
use gateway::telemetry::Metrics;
use std::sync::Arc;

fn request() -> RequestState {
    common::request_with(
        "/api/orders/42?expand=items",
        &[
            ("host", "api.example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
            ("authorization", "Bearer abc.def.ghi"),
            ("x-real-ip", "6.6.6.6"),
            ("x-request-id", "0123456789abcdef0123456789abcdef"),
            ("x-forwarded-for", "127.0.0.1"),
            ("cookie", "session=1234"),
            ("x-api-key", BENCH_KEY),
        ],
    )
}

async fn filter(rt: &Runtime, name: &str, plugin: &str, config: &str) -> Arc<Filter> {
    let table = format!("plugin = \"{plugin}\"\n[config]\n{config}");
    common::filter_at(rt, name, plugin, &plugin_path(plugin), &table).await
}

/// The API key the bench requests carry, and the auth filter's entry for it.
const BENCH_KEY: &str = "bench-key-0123456789";

fn auth_config() -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(BENCH_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "[[config.api_keys]]\nsha256 = \"{hash}\"\nsubject = \"bench\"\ntenant = \"acme\"\nscopes = [\"orders\"]\n"
    )
}

const TENANT_CONFIG: &str = "[config.routes.api]\ntenants = [\"acme\", \"globex\"]\n";

/// Two limits, as a production route has: a burst and a sustained rate,
/// both far above what the bench sends so every call is allowed.
const RATELIMIT_CONFIG: &str = "[[config.limits]]\nname = \"burst\"\nrequests = 4000000000\nwindow = \"1s\"\n[[config.limits]]\nname = \"hourly\"\nrequests = 4000000000\nwindow = \"1h\"\nkey = \"header:x-api-key\"\n";

fn with_tenant(mut req: RequestState) -> RequestState {
    req.context.push(("tenant".into(), "acme".into()));
    req
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisServer(std::process::Child, u16);

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
            ])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(RedisServer(child, port));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_request_bench(
    c: &mut Criterion,
    tokio: &tokio::runtime::Runtime,
    name: &str,
    f: &Arc<Filter>,
    make: fn() -> RequestState,
) {
    c.bench_function(name, |b| {
        b.to_async(tokio).iter_batched(
            make,
            |req| {
                let f = f.clone();
                async move {
                    let (req, out) = f.on_request(req).await;
                    assert!(matches!(out, Ok(Decision::Continue)), "{}", f.name);
                    req
                }
            },
            BatchSize::SmallInput,
        )
    });
}

/// Runs a request and its response through a chain, both phases, as the
/// proxy does; panics unless every filter lets them through.
async fn through_chain(
    chain: Vec<Arc<Filter>>,
    mut req: RequestState,
    mut resp: ResponseState,
) -> ResponseState {
    for f in &chain {
        let (r, out) = f.on_request(req).await;
        assert!(matches!(out, Ok(Decision::Continue)), "{}", f.name);
        req = r;
    }
    for f in chain.iter().rev() {
        let (r, s, out) = f.on_response(req, resp).await;
        assert!(matches!(out, Ok(Decision::Continue)), "{}", f.name);
        req = r;
        resp = s;
    }
    resp
}

fn shipped(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new(&[0.001, 0.01, 0.1]).unwrap());
    let rt = Runtime::new(metrics.clone()).unwrap();
    let (headers, auth, tenant, ratelimit) = tokio.block_on(async {
        (
            filter(&rt, "headers", "headers", "").await,
            filter(&rt, "auth", "auth", &auth_config()).await,
            filter(&rt, "tenant", "tenant", TENANT_CONFIG).await,
            filter(&rt, "ratelimit", "ratelimit", RATELIMIT_CONFIG).await,
        )
    });
    on_request_bench(c, &tokio, "auth filter on-request, API key", &auth, request);
    on_request_bench(
        c,
        &tokio,
        "tenant filter on-request, owner check",
        &tenant,
        || with_tenant(request()),
    );
    on_request_bench(
        c,
        &tokio,
        "ratelimit filter on-request, two sliding limits, memory state",
        &ratelimit,
        request,
    );

    let chain = [headers, auth, tenant, ratelimit];
    c.bench_function(
        "the four shipped plugins, on-request and on-response",
        |b| {
            b.to_async(&tokio).iter_batched(
                || (request(), response()),
                |(req, resp)| through_chain(chain.to_vec(), req, resp),
                BatchSize::SmallInput,
            )
        },
    );

    let Some(redis) = RedisServer::start() else {
        eprintln!("redis-server not found: skipping the Redis state figure (make setup)");
        return;
    };
    let cfg: gateway::config::StateConfig = toml::from_str(&format!(
        "backend = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\ntimeout = \"1s\"",
        redis.1
    ))
    .unwrap();
    let redis_rt = tokio.block_on(async {
        let state = Arc::new(gateway::state::State::from_config(&cfg, metrics.clone()));
        Runtime::with_state(metrics.clone(), state).unwrap()
    });
    let limited = tokio.block_on(filter(
        &redis_rt,
        "ratelimit",
        "ratelimit",
        RATELIMIT_CONFIG,
    ));
    on_request_bench(
        c,
        &tokio,
        "ratelimit filter on-request, two sliding limits, Redis state on loopback",
        &limited,
        request,
    );
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

    // A filter that returns at once: what the call itself costs, the same
    // request handed through every iteration so nothing else is timed.
    let idle = tokio.block_on(filter(&rt, "idle", "probe", "name = \"idle\"\nidle = true"));
    let mut held = Some(request());
    c.bench_function("idle filter on-request, warm instance", |b| {
        b.iter(|| {
            let req = held.take().unwrap();
            let (req, out) = tokio.block_on(idle.on_request(req));
            assert!(matches!(out, Ok(Decision::Continue)));
            held = Some(req);
        })
    });

    // The same call from 64 tasks spread over a multi-thread runtime's
    // workers, as the gateway makes it: instances move between cores and
    // calls meet on the filter's pool. Per call, wall time (with two
    // workers busy, about half the CPU a call takes); request construction
    // included, as in the baseline below.
    let workers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared_probe = probe.clone();
    c.bench_function("probe filter on-request, 64 tasks over every worker", |b| {
        b.iter_custom(|iters| {
            let f = shared_probe.clone();
            workers.block_on(async move {
                let per_task = iters.div_ceil(64);
                let started = std::time::Instant::now();
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let f = f.clone();
                        tokio::spawn(async move {
                            for _ in 0..per_task {
                                let (_, out) = f.on_request(request()).await;
                                if let Err(e) = &out {
                                    panic!("{}: {}", e.reason, e.detail);
                                }
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                started
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * 64) as f64)
            })
        })
    });

    c.bench_function("chain of four filters, on-request and on-response", |b| {
        b.to_async(&tokio).iter_batched(
            || (request(), response()),
            |(req, resp)| through_chain(chain.clone(), req, resp),
            BatchSize::SmallInput,
        )
    });

    c.bench_function(
        "request and response built without filters (baseline)",
        |b| b.iter_batched(|| (), |()| (request(), response()), BatchSize::SmallInput),
    );
}

criterion_group!(benches, bench, shipped);
criterion_main!(benches);
