//! Filter API 0.2: a 0.1.0 and a 0.2.0 plugin in one chain, bodies read
//! and replaced both ways (and refused or streamed past a filter's limit),
//! key-value state on memory and a real redis-server, and outbound calls
//! through the configured clusters.

use crate::common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The suite's preamble with room for the bodies these tests send.
fn preamble_v2(listen: SocketAddr, admin: SocketAddr) -> String {
    preamble(listen, admin).replace("max_body_bytes = 1024", "max_body_bytes = 1048576")
}

fn start(body: &str) -> Gateway {
    build_plugins();
    let body = body.to_string();
    Gateway::start_with(tempdir::Dir::new(), move |addr, admin| {
        format!("{}{body}", preamble_v2(addr, admin))
    })
}

fn route(upstream: &Upstream, filters: &str) -> String {
    format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n\n[[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [{filters}]\n",
        upstream.addr
    )
}

#[test]
fn a_0_1_and_a_0_2_filter_serve_in_one_chain_in_order() {
    let up = Upstream::start("app");
    let gw = start(&format!(
        "[filters.old]\nplugin = \"probe\"\n[filters.old.config]\nname = \"old\"\n\n\
         [filters.new]\nplugin = \"probe_v2\"\n[filters.new.config]\nname = \"new\"\n\n{}",
        route(&up, "\"old\", \"new\"")
    ));
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-chain"), Some("old,v2:new"));
    // On the way out in reverse: the 0.2.0 filter first.
    assert_eq!(r.header("x-chain-out"), Some("v2:new,old"));
    let plugins: serde_json::Value =
        serde_json::from_str(&gw.admin("GET", "/admin/plugins").body_text()).unwrap();
    let wit = |name: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["wit"].clone())
    };
    assert_eq!(wit("probe_v2"), Some("0.2.0".into()), "{plugins}");
    assert_eq!(wit("probe"), Some("0.1.0".into()), "{plugins}");
    // `gateway plugin check` names the version it found.
    let out = gateway_command()
        .args(["plugin", "check"])
        .arg(plugin_dir().join("probe_v2.wasm"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("a gateway:filter@0.2.0 plugin component"),
        "{said}"
    );
    assert!(
        said.contains("exports gateway:filter/filter@0.2.0"),
        "{said}"
    );
    // Its metric, declared once by handle, is counted.
    let scrape = gw.metrics();
    assert_eq!(
        metric(
            &scrape,
            "gateway_plugin_probe_v2_probe_calls_total",
            &[("filter", "new"), ("phase", "request")]
        ),
        Some(1.0),
        "{scrape}"
    );
}

#[test]
fn a_filter_reads_and_replaces_the_request_and_response_bodies() {
    let up = Upstream::start("app");
    let gw = start(&format!(
        "[filters.b]\nplugin = \"probe_v2\"\n[filters.b.config]\nname = \"b\"\nrequest_body = 1000\nresponse_body = 1000\nupper_request_body = true\nappend = \"+filtered\"\n\n{}",
        route(&up, "\"b\"")
    ));
    let r = gw.request("POST", "/echo", &[], b"hello body");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = up.last();
    assert_eq!(seen.header("x-body-length"), Some("10"));
    assert_eq!(seen.body, b"HELLO BODY");
    assert_eq!(seen.header("content-length"), Some("10"));
    assert_eq!(r.body_text(), "hello from app\n+filtered");
    assert_eq!(
        r.header("content-length"),
        Some("hello from app\n+filtered".len().to_string().as_str())
    );
    // A gauge, declared by handle, holds the last value set.
    assert_eq!(gw.request("POST", "/echo", &[], b"four").status, 200);
    let scrape = gw.metrics();
    assert!(
        scrape.contains("# TYPE gateway_plugin_probe_v2_last_body_bytes gauge"),
        "{scrape}"
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_plugin_probe_v2_last_body_bytes",
            &[("filter", "b")]
        ),
        Some(4.0),
        "{scrape}"
    );
}

#[test]
fn a_filter_failing_after_reading_the_response_body_answers_by_its_policy() {
    let up = Upstream::start("app");
    let gw = start(&format!(
        "[filters.b]\nplugin = \"probe_v2\"\n[filters.b.config]\nname = \"b\"\nresponse_body = 1000\ntrap_response = true\n\n{}",
        route(&up, "\"b\"")
    ));
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 500, "{}", r.body_text());
    assert!(
        !r.body_text().contains("hello from app"),
        "{}",
        r.body_text()
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[test]
fn a_body_over_a_filters_limit_is_refused_or_streams_past_by_its_policy() {
    let up = Upstream::start("app");
    let gw = start(&format!(
        "[filters.strict]\nplugin = \"probe_v2\"\n[filters.strict.config]\nname = \"strict\"\nrequest_body = 8\nover_limit = 413\n\n\
         [filters.lenient]\nplugin = \"probe_v2\"\n[filters.lenient.config]\nname = \"lenient\"\nrequest_body = 8\nresponse_body = 4\nappend = \"!\"\n\n\
         [upstreams.app]\ninstances = [\"{}\"]\n\n\
         [[route]]\nid = \"strict\"\npath_prefix = \"/strict\"\nupstream = \"app\"\nfilters = [\"strict\"]\n\n\
         [[route]]\nid = \"lenient\"\npath_prefix = \"/lenient\"\nupstream = \"app\"\nfilters = [\"lenient\"]\n",
        up.addr
    ));
    let r = gw.request("POST", "/strict", &[], b"more than eight bytes");
    assert_eq!(r.status, 413, "{}", r.body_text());
    assert_eq!(r.header("x-gateway-error"), Some("body-too-large"));
    assert_eq!(up.count(), 0, "a refused body never goes upstream");
    // Within the limit it passes.
    assert_eq!(gw.request("POST", "/strict", &[], b"short").status, 200);

    // `pass`: the filter runs, is told the body is too large, and the
    // whole body (and the whole response) still arrive.
    let r = gw.request("POST", "/lenient", &[], b"more than eight bytes");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = up.last();
    assert_eq!(seen.body, b"more than eight bytes");
    assert!(seen.header("x-body-error").unwrap().contains("too-large"));
    assert_eq!(r.body_text(), "hello from app\n");
    assert!(r.header("x-body-error").unwrap().contains("too-large"));
}

#[test]
fn a_toml_body_limit_lowers_what_the_filter_asked_for() {
    let up = Upstream::start("app");
    let gw = start(&format!(
        "[filters.b]\nplugin = \"probe_v2\"\nrequest_body_limit = 4\n[filters.b.config]\nname = \"b\"\nrequest_body = 1000\nover_limit = 413\n\n{}",
        route(&up, "\"b\"")
    ));
    assert_eq!(gw.request("POST", "/", &[], b"abcd").status, 200);
    assert_eq!(gw.request("POST", "/", &[], b"abcde").status, 413);
}

#[test]
fn key_value_state_sets_reads_expires_and_compares_on_memory() {
    let up = Upstream::start("app");
    let gw = start(&format!(
        "[filters.k]\nplugin = \"probe_v2\"\n[filters.k.config]\nname = \"k\"\n\n\
         [filters.other]\nplugin = \"probe_v2\"\n[filters.other.config]\nname = \"other\"\n\n\
         [upstreams.app]\ninstances = [\"{}\"]\n\n\
         [[route]]\nid = \"other\"\npath_prefix = \"/\"\nhost = \"other.local\"\nupstream = \"app\"\nfilters = [\"other\"]\n\n\
         [[route]]\nid = \"k\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"k\"]\n",
        up.addr
    ));
    kv_behaves(&gw);
}

fn kv_behaves(gw: &Gateway) {
    let text = |path: &str| {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body_text());
        r.body_text()
    };
    assert_eq!(text("/kv/get/a"), "none");
    assert_eq!(text("/kv/set/a/one/60000"), "ok");
    assert_eq!(text("/kv/get/a"), "one");
    // Keys are private to the filter.
    let other = gw.get("/kv/get/a", &[("host", "other.local")]);
    assert_eq!(other.body_text(), "none");
    // compare-and-set changes only what it expected.
    assert_eq!(text("/kv/cas/a/two/three"), "false");
    assert_eq!(text("/kv/cas/a/one/two"), "true");
    assert_eq!(text("/kv/get/a"), "two");
    assert_eq!(text("/kv/cas/b/-/first"), "true");
    assert_eq!(text("/kv/cas/b/-/second"), "false");
    assert_eq!(text("/kv/del/a"), "true");
    assert_eq!(text("/kv/del/a"), "false");
    assert_eq!(text("/kv/get/a"), "none");
    // A value expires with its lifetime.
    assert_eq!(text("/kv/set/t/short/100"), "ok");
    assert_eq!(text("/kv/get/t"), "short");
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(text("/kv/get/t"), "none");
    let scrape = gw.metrics();
    assert!(
        metric(&scrape, "gateway_state_calls_total", &[("result", "ok")]).unwrap_or(0.0) >= 14.0,
        "{scrape}"
    );
}

fn redis_gateway(redis: &Redis, up: &Upstream) -> Gateway {
    start(&format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"200ms\"\n\n\
         [filters.k]\nplugin = \"probe_v2\"\n[filters.k.config]\nname = \"k\"\n\n\
         [filters.other]\nplugin = \"probe_v2\"\n[filters.other.config]\nname = \"other\"\n\n\
         [upstreams.app]\ninstances = [\"{}\"]\n\n\
         [[route]]\nid = \"other\"\npath_prefix = \"/\"\nhost = \"other.local\"\nupstream = \"app\"\nfilters = [\"other\"]\n\n\
         [[route]]\nid = \"k\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"k\"]\n",
        redis.url(),
        up.addr
    ))
}

#[test]
fn key_value_state_behaves_the_same_on_redis_and_is_shared_by_replicas() {
    let redis = Redis::start();
    let up = Upstream::start("app");
    let a = redis_gateway(&redis, &up);
    kv_behaves(&a);
    // The value lives in Redis under the gateway's prefix, apart from
    // counters.
    assert_eq!(a.get("/kv/set/shared/x/60000", &[]).body_text(), "ok");
    let keys = redis.cli(&["--raw", "keys", "*kv:k:shared*"]);
    assert!(keys.contains("kv:k:shared"), "{keys}");

    // Two gateways race compare-and-set on one key: each round, exactly
    // one of the two wins.
    let b = redis_gateway(&redis, &up);
    assert_eq!(b.get("/kv/get/shared", &[]).body_text(), "x");
    for round in 0..20 {
        let key = format!("race{round}");
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| a.get(&format!("/kv/cas/{key}/-/a"), &[]).body_text());
            let hb = s.spawn(|| b.get(&format!("/kv/cas/{key}/-/b"), &[]).body_text());
            (ha.join().unwrap(), hb.join().unwrap())
        });
        let wins = [&ra, &rb].iter().filter(|r| r.as_str() == "true").count();
        assert_eq!(wins, 1, "round {round}: {ra} {rb}");
        let winner = if ra == "true" { "a" } else { "b" };
        assert_eq!(a.get(&format!("/kv/get/{key}"), &[]).body_text(), winner);
    }
}

#[test]
fn callouts_reach_allowed_clusters_fail_fast_on_dead_ones_and_refuse_others() {
    let app = Upstream::start("app");
    let authz = Upstream::start("authz");
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n\n\
         [upstreams.authz]\ninstances = [\"{}\"]\n\n\
         [upstreams.dead]\ninstances = [\"{dead}\"]\n\n\
         [upstreams.secret]\ninstances = [\"{}\"]\n\n\
         [filters.c]\nplugin = \"probe_v2\"\ntimeout = \"500ms\"\ncallouts = [\"authz\", \"dead\"]\ncallout_timeout = \"300ms\"\n[filters.c.config]\nname = \"c\"\n\n\
         [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"c\"]\n",
        app.addr, authz.addr, authz.addr
    ));
    let r = gw.get("/callout/authz/check/me", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), "hello from authz\n");
    let seen = authz.last();
    assert_eq!(seen.uri, "/check/me");
    assert_eq!(seen.header("x-from"), Some("probe-v2"));
    assert!(seen.header("x-request-id").is_some());
    // The cluster's own answer comes back as it is.
    assert_eq!(gw.get("/callout/authz/status/403", &[]).status, 403);

    // A dead cluster fails the call, not the filter, within its deadline.
    let started = std::time::Instant::now();
    let r = gw.get("/callout/dead/x", &[]);
    assert_eq!(r.status, 599, "{}", r.body_text());
    assert!(
        r.body_text().starts_with("CalloutError::Failed"),
        "{}",
        r.body_text()
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    // A cluster the filter's callouts do not list is refused, though it
    // exists; nothing reaches it.
    let before = authz.count();
    let r = gw.get("/callout/secret/x", &[]);
    assert_eq!(r.status, 599);
    assert!(
        r.body_text().starts_with("CalloutError::NotAllowed"),
        "{}",
        r.body_text()
    );
    assert_eq!(authz.count(), before);

    let scrape = gw.metrics();
    let count = |cluster: &str, result: &str| {
        metric(
            &scrape,
            "gateway_callouts_total",
            &[("filter", "c"), ("cluster", cluster), ("result", result)],
        )
    };
    assert_eq!(count("authz", "ok"), Some(2.0), "{scrape}");
    assert_eq!(count("dead", "failed"), Some(1.0), "{scrape}");
    assert_eq!(count("-", "not_allowed"), Some(1.0), "{scrape}");
    assert_eq!(count("authz", "timeout"), Some(0.0), "declared at zero");
    crate::observability::assert_catalogued(&scrape, crate::observability::CALLOUT_METRICS, 2);
}

#[test]
fn a_callout_slower_than_its_timeout_ends_in_time_and_is_counted() {
    let app = Upstream::start("app");
    let slow = Upstream::start("slow");
    let gw = start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n\n[upstreams.slow]\ninstances = [\"{}\"]\n\n\
         [filters.c]\nplugin = \"probe_v2\"\ntimeout = \"1s\"\ncallouts = [\"slow\"]\ncallout_timeout = \"100ms\"\n[filters.c.config]\nname = \"c\"\n\n\
         [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"c\"]\n",
        app.addr, slow.addr
    ));
    let started = std::time::Instant::now();
    let r = gw.get("/callout/slow/slow/800", &[]);
    assert_eq!(r.body_text(), "CalloutError::Timeout");
    assert!(started.elapsed() < Duration::from_millis(700));
    let scrape = gw.metrics();
    assert_eq!(
        metric(
            &scrape,
            "gateway_callouts_total",
            &[("cluster", "slow"), ("result", "timeout")]
        ),
        Some(1.0),
        "{scrape}"
    );
}

#[test]
fn a_callout_to_a_cluster_that_is_not_defined_is_refused_at_the_setting() {
    let (ok, _, err) = check_config(
        "[upstreams.app]\ninstances = [\"127.0.0.1:9\"]\n\n\
         [filters.c]\nplugin = \"probe_v2\"\ncallouts = [\"app\", \"nowhere\"]\n\n\
         [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"c\"]\n",
    );
    assert!(!ok);
    assert!(
        err.contains("filter `c` may call upstream `nowhere`, which is not defined"),
        "{err}"
    );
    assert!(err.contains("CONFIG:12:20:"), "{err}");
}

/// FNV-1a, to compare what the client sent with what the upstream got.
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

const FNV_START: u64 = 0xcbf29ce484222325;

/// An upstream that reads each request body as it comes and answers its
/// length and hash, or (for paths under `/fail`) 503 once it has read it.
fn counting_upstream() -> LoopbackServer {
    use http_body_util::BodyExt;
    loopback_server(|stream| async move {
        let svc =
            hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let fail = req.uri().path().starts_with("/fail");
                let te = req
                    .headers()
                    .get("transfer-encoding")
                    .map(|v| v.to_str().unwrap_or("").to_string());
                let mut body = req.into_body();
                let (mut n, mut h) = (0u64, FNV_START);
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        n += data.len() as u64;
                        h = fnv(h, &data);
                    }
                }
                if fail {
                    return Ok::<_, hyper::Error>(
                        hyper::Response::builder()
                            .status(503)
                            .body(http_body_util::Full::new(bytes::Bytes::from("failing")))
                            .unwrap(),
                    );
                }
                Ok(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(format!(
                        "bytes={n} hash={h:x} te={}",
                        te.unwrap_or_default()
                    )),
                )))
            });
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    })
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_100_mib_upload_streams_through_a_route_without_body_filters_in_constant_memory() {
    let up = counting_upstream();
    build_plugins();
    let addr = up.addr;
    let gw = Gateway::start_with(tempdir::Dir::new(), move |listen, admin| {
        format!(
            "{}[upstreams.app]\ninstances = [\"{addr}\"]\n\n\
             [filters.h]\nplugin = \"probe_v2\"\n[filters.h.config]\nname = \"h\"\n\n\
             [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"h\"]\ntimeout = \"60s\"\n",
            preamble(listen, admin)
                .replace("max_body_bytes = 1024", "max_body_bytes = 209715200")
                .replace("request_timeout = \"2s\"", "request_timeout = \"60s\"")
        )
    });
    // Warm: the first request's allocations are not the upload's.
    assert_eq!(gw.request("POST", "/", &[], b"warm").status, 200);
    let before = peak_rss_kib(gw.pid());

    const TOTAL: usize = 100 * 1024 * 1024;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut sent_hash = FNV_START;
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    use std::io::Write;
    write!(
        s,
        "POST /upload HTTP/1.1\r\nhost: test.local\r\ncontent-length: {TOTAL}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut left = TOTAL;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).unwrap();
        sent_hash = fnv(sent_hash, &chunk[..n]);
        left -= n;
    }
    let r = read_response(&mut std::io::BufReader::new(s));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        r.body_text(),
        format!("bytes={TOTAL} hash={sent_hash:x} te="),
        "the upstream got every byte, in order, under the client's content-length"
    );
    let grown_mib = (peak_rss_kib(gw.pid()).saturating_sub(before)) / 1024;
    assert!(
        grown_mib < 32,
        "the gateway's peak memory grew {grown_mib} MiB for a 100 MiB upload"
    );
}

fn retrying_gateway(up: &LoopbackServer, dead: &str) -> Gateway {
    build_plugins();
    let addr = up.addr;
    let dead = dead.to_string();
    Gateway::start_with(tempdir::Dir::new(), move |listen, admin| {
        format!(
            "{}[upstreams.app]\ninstances = [\"{dead}\", \"{addr}\"]\nstrategy = \"round_robin\"\n\
             [upstreams.app.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n\n\
             [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             [route.retry]\nattempts = 2\non = [\"connect\", \"503\"]\nnon_idempotent = true\nbackoff_base = \"1ms\"\n",
            preamble(listen, admin).replace(
                "max_body_bytes = 1024",
                "max_body_bytes = 1048576\nretry_buffer_bytes = 16384"
            )
        )
    })
}

#[test]
fn a_streamed_body_is_sent_again_on_a_retry_while_it_fits_the_retry_buffer() {
    let up = counting_upstream();
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = retrying_gateway(&up, &dead);
    let body: Vec<u8> = (0..10_000).map(|i| (i % 13) as u8 + b'a').collect();
    let want = format!("bytes={} hash={:x} te=", body.len(), fnv(FNV_START, &body));
    // Round robin starts anywhere: over a few requests, some land on the
    // dead instance first and are retried with the whole body. Sent
    // chunked (no length known ahead), the body streams and is replayed;
    // with a length, it is read first.
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    for i in 0..6 {
        let r = if i % 2 == 0 {
            let mut raw = b"POST / HTTP/1.1\r\nhost: test.local\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
            raw.extend_from_slice(&chunked);
            gw.raw(&raw)
        } else {
            gw.request("POST", "/", &[], &body)
        };
        assert_eq!(r.status, 200, "{}", r.body_text());
        let te = if i % 2 == 0 { "chunked" } else { "" };
        assert_eq!(r.body_text(), want.replace("te=", &format!("te={te}")));
    }
    // Each try takes the next instance: once a request has been retried,
    // every later one starts on the dead instance, so at least five of
    // the six (two of them chunked) were sent twice.
    let scrape = gw.metrics();
    assert!(
        metric(
            &scrape,
            "gateway_upstream_retries_total",
            &[("result", "sent")]
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{scrape}"
    );
}

#[test]
fn a_streamed_body_past_the_retry_buffer_gets_one_try() {
    let up = counting_upstream();
    let gw = retrying_gateway(&up, &format!("localhost:{}", up.addr.port()));
    // Both instances are the one upstream: a 503 would be retried for a
    // body the buffer holds, but not for a longer one.
    let small = vec![b'x'; 1000];
    let large = vec![b'y'; 100_000];
    let r = gw.request("POST", "/fail", &[], &small);
    assert_eq!(r.status, 503);
    let r = gw.request("POST", "/fail", &[], &large);
    assert_eq!(r.status, 503);
    let scrape = gw.metrics();
    assert_eq!(
        metric(
            &scrape,
            "gateway_upstream_retries_total",
            &[("result", "sent")]
        ),
        Some(1.0),
        "only the small body was retried: {scrape}"
    );
}

#[test]
fn filters_waiting_on_callouts_hold_no_worker() {
    let app = Upstream::start("app");
    let slow = Upstream::start("slow");
    let gw = start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n\n[upstreams.slow]\ninstances = [\"{}\"]\n\n\
         [filters.c]\nplugin = \"probe_v2\"\ntimeout = \"2s\"\ninstances = 16\ncallouts = [\"slow\"]\n[filters.c.config]\nname = \"c\"\n\n\
         [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"c\"]\n",
        app.addr, slow.addr
    ));
    // Eight calls each wait 500 ms on their callout, more than the
    // gateway has worker threads: were a worker held while its filter
    // waits, they would take turns (2 s and more on two workers), and a
    // plain request would queue behind them.
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let waiting: Vec<_> = (0..8)
            .map(|_| s.spawn(|| gw.get("/callout/slow/slow/500", &[])))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let plain_started = std::time::Instant::now();
        let r = gw.get("/plain", &[]);
        assert_eq!(r.status, 200);
        assert!(
            plain_started.elapsed() < Duration::from_millis(300),
            "a plain request took {:?} while callouts waited",
            plain_started.elapsed()
        );
        for w in waiting {
            let r = w.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body_text());
            assert_eq!(r.body_text(), "hello from slow\n");
        }
    });
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "eight 500 ms callouts took {:?}",
        started.elapsed()
    );
}
