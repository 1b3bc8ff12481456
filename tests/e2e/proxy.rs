//! End-to-end behaviour of the proxy: routing, the filter chain, header
//! hygiene, path normalisation, limits, upstream failures, shutdown.

use crate::common::*;
use std::time::{Duration, Instant};

fn upstream_block(name: &str, u: &Upstream) -> String {
    format!("[upstreams.{name}]\ninstances = [\"{}\"]\n\n", u.addr)
}

fn probe(name: &str, extra: &str) -> String {
    format!(
        "[filters.{name}]\nplugin = \"probe\"\n[filters.{name}.config]\nname = \"{name}\"\n{extra}\n\n"
    )
}

#[test]
fn routes_by_host_path_and_method() {
    let (a, b, c, d) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
        Upstream::start("d"),
    );
    let gw = Gateway::start(
        &Body::new()
            .upstream("a", &[&a])
            .upstream("b", &[&b])
            .upstream("c", &[&c])
            .upstream("d", &[&d])
            .route(Route::new("by-host", "a").host("api.example.com"))
            .route(Route::new("wildcard", "d").host("*.tenants.example.com"))
            .route(
                Route::new("writes", "c")
                    .prefix("/orders")
                    .methods(&["POST"]),
            )
            .route(Route::new("orders", "b").prefix("/orders"))
            .to_toml(),
    );
    let r = gw.get("/anything", &[("host", "API.example.com:8080")]);
    assert_eq!(r.header("x-upstream"), Some("a"));
    let r = gw.get("/x", &[("host", "acme.tenants.example.com")]);
    assert_eq!(r.header("x-upstream"), Some("d"));
    let r = gw.get("/orders/7", &[]);
    assert_eq!(r.header("x-upstream"), Some("b"));
    let r = gw.request("POST", "/orders", &[], b"{}");
    assert_eq!(r.header("x-upstream"), Some("c"));
    assert_eq!(c.last().body, b"{}");
    // A prefix matches whole segments only.
    let r = gw.get("/ordersx", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-gateway-error"), Some("no-route"));
    assert_eq!(r.body_text(), "no route matches this request\n");
    assert_eq!(a.count() + b.count() + c.count() + d.count(), 4);
}

#[test]
fn chain_runs_in_order_and_an_early_answer_stops_it() {
    let up = Upstream::start("up");
    let gw = Gateway::start(
        &Body::new()
            .upstream("up", &[&up])
            .filter("p1", "probe", "name = \"p1\"\nset_context = \"who\"")
            .filter("p2", "probe", "name = \"p2\"")
            .filter("p3", "probe", "name = \"p3\"\nread_context = \"who\"")
            .filter("deny", "probe", "name = \"deny\"\nanswer = 403")
            .route(
                Route::new("all", "up")
                    .prefix("/all")
                    .filters(&["p1", "p2", "p3"]),
            )
            .route(
                Route::new("stop", "up")
                    .prefix("/stop")
                    .filters(&["p1", "deny", "p3"]),
            )
            .to_toml(),
    );
    let r = gw.get("/all", &[]);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-chain"), Some("p1,p2,p3"), "request order");
    assert_eq!(
        seen.header("x-context"),
        Some("p1"),
        "context passed along the chain"
    );
    assert_eq!(
        r.header("x-chain-out"),
        Some("p3,p2,p1"),
        "response order is reversed"
    );

    let before = up.count();
    let r = gw.get("/stop", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-answered-by"), Some("deny"));
    assert_eq!(r.body_text(), "answered by deny\n");
    assert_eq!(
        r.header("x-chain-out"),
        Some("p1"),
        "only filters before the answer see the response"
    );
    assert_eq!(
        up.count(),
        before,
        "the upstream is not called after an early answer"
    );
}

#[test]
fn header_filter_edits_reach_upstream_and_client() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[filters.headers]\nplugin = \"headers\"\n[filters.headers.config]\n\
         add_request = {{ \"x-gateway\" = \"yes\" }}\nadd_response = {{ \"x-frame-options\" = \"DENY\" }}\n\
         strip_request_extra = [\"x-debug\"]\nmax_header_count = 20\n\n\
         [[route]]\nid = \"r\"\nupstream = \"up\"\nfilters = [\"headers\"]\n",
        upstream_block("up", &up)
    ));
    let r = gw.get(
        "/leaky",
        &[
            ("x-real-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-debug", "1"),
            ("x-kept", "ok"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in [
        "x-real-ip",
        "x-original-url",
        "x-http-method-override",
        "x-debug",
    ] {
        assert_eq!(seen.header(h), None, "{h} must be stripped");
    }
    assert_eq!(seen.header("x-kept"), Some("ok"));
    assert_eq!(seen.header("x-gateway"), Some("yes"));
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    // Too many headers: the filter's cap (20) answers 431 before the upstream.
    let many: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-h{i}"), "v".to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let before = up.count();
    let r = gw.get("/", &refs);
    assert_eq!(r.status, 431);
    assert_eq!(up.count(), before);

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_headers_headers_removed_total",
            &[("header", "x-original-url"), ("phase", "request")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_headers_headers_removed_total",
            &[("header", "server"), ("phase", "response")]
        ),
        Some(1.0)
    );
}

#[test]
fn trapping_filter_fails_closed_or_is_skipped_when_open() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}[filters.open]\nplugin = \"probe\"\nfailure = \"fail-open\"\n[filters.open.config]\nname = \"open\"\ntrap = \"request\"\n\n\
         [filters.closed]\nplugin = \"probe\"\nfailure_status = 503\n[filters.closed.config]\nname = \"closed\"\ntrap = \"request\"\n\n\
         [[route]]\nid = \"closed\"\npath_prefix = \"/closed\"\nupstream = \"up\"\nfilters = [\"closed\", \"after\"]\n\n\
         [[route]]\nid = \"open\"\npath_prefix = \"/open\"\nupstream = \"up\"\nfilters = [\"open\", \"after\"]\n",
        upstream_block("up", &up),
        probe("after", ""),
    ));
    for _ in 0..3 {
        let r = gw.get("/closed", &[]);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-gateway-error"), Some("filter-failed"));
        assert_eq!(r.body_text(), "filter closed failed (trap)\n");
    }
    assert_eq!(up.count(), 0);
    let r = gw.get("/open", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("x-chain"),
        Some("after"),
        "the failing filter was skipped, the next one ran"
    );
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_failures_total",
            &[
                ("filter", "closed"),
                ("phase", "request"),
                ("reason", "trap")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_failures_total",
            &[("filter", "open"), ("phase", "request"), ("reason", "trap")]
        ),
        Some(1.0)
    );
    assert!(
        gw.log().contains("filter call failed"),
        "the failure is logged"
    );
}

#[test]
fn filters_cannot_set_gateway_managed_headers() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}[[route]]\nid = \"r\"\nupstream = \"up\"\nfilters = [\"sneaky\"]\n",
        upstream_block("up", &up),
        probe("sneaky", "try_set_header = \"connection\""),
    ));
    gw.get("/", &[]);
    let v = up.last().header("x-set-result").unwrap().to_string();
    assert_eq!(
        v,
        "refused: `connection` is managed by the gateway and cannot be set by a filter"
    );
}

#[test]
fn hop_by_hop_headers_are_stripped_including_those_named_in_connection() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[[route]]\nid = \"r\"\nupstream = \"up\"\n",
        upstream_block("up", &up)
    ));
    let r = gw.raw(
        b"GET /leaky HTTP/1.1\r\nhost: test.local\r\nconnection: close, X-Forwarded-For, x-custom\r\n\
          x-custom: secret\r\nx-forwarded-for: 6.6.6.6\r\nkeep-alive: timeout=100\r\nte: trailers\r\n\
          proxy-connection: keep-alive\r\nx-request-id: forged\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in [
        "x-custom",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(seen.header(h), None, "{h} must not reach the upstream");
    }
    // The gateway's own forwarding headers, not the client's.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header_count("x-forwarded-for"), 1);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("test.local"));
    let id = seen.header("x-request-id").unwrap();
    assert_ne!(id, "forged");
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "the client learns the id too"
    );
    // And on the way back: what the upstream's Connection names is dropped.
    assert_eq!(r.header("x-internal"), None);
    assert_eq!(r.header("keep-alive"), None);
}

#[test]
fn paths_are_normalised_once_or_refused() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[[route]]\nid = \"public\"\npath_prefix = \"/public\"\nupstream = \"up\"\n",
        upstream_block("up", &up)
    ));
    // Each of these reaches the route, and the upstream gets the clean path.
    for (raw, want) in [
        ("/public/a/../b", "/public/b"),
        ("//public///b", "/public/b"),
        ("/public/./b?q=1", "/public/b?q=1"),
        ("/public/x/%2e%2e/b", "/public/b"),
        ("/public/x/%2E%2e/b", "/public/b"),
        ("/public/%7Euser", "/public/~user"),
    ] {
        let r = gw.get(raw, &[]);
        assert_eq!(r.status, 200, "{raw}");
        assert_eq!(up.last().uri, want, "{raw}");
    }
    // Climbing out of the route's prefix lands outside it, not in it.
    let r = gw.get("/public/../private/x", &[]);
    assert_eq!(r.status, 404);
    let r = gw.get("/public/%2e%2e/private", &[]);
    assert_eq!(r.status, 404);
    // Ambiguous encodings are refused before any routing.
    let before = up.count();
    for raw in [
        "/public/a%2fb",
        "/public/a%2F..%2Fb",
        "/public/a%5cb",
        "/public/%00",
        "/..",
        "/public/%zz",
    ] {
        let r = gw.get(raw, &[]);
        assert_eq!(r.status, 400, "{raw}");
        assert_eq!(r.header("x-gateway-error"), Some("bad-path"), "{raw}");
    }
    assert_eq!(up.count(), before);
}

#[test]
fn limits_answer_413_and_431() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[[route]]\nid = \"r\"\nupstream = \"up\"\n",
        upstream_block("up", &up)
    ));
    // Declared too large: refused without reading.
    let r = gw.request("POST", "/", &[], &[b'x'; 2000]);
    assert_eq!(r.status, 413);
    // Chunked, discovered while reading.
    let mut req =
        b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = gw.raw(&req);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-gateway-error"), Some("body-too-large"));
    // Under the limit passes.
    let r = gw.request("POST", "/", &[], &[b'z'; 1000]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body.len(), 1000);
    // Header block too large, and too many header lines.
    let big = "v".repeat(9000);
    assert_eq!(gw.get("/", &[("x-big", &big)]).status, 431);
    let many: Vec<(String, String)> = (0..60).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(gw.get("/", &refs).status, 431);
}

#[test]
fn upstream_failures_answer_502_and_504() {
    let up = Upstream::start("up");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "{}[upstreams.dead]\ninstances = [\"127.0.0.1:{dead}\"]\n\n\
         [[route]]\nid = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n\
         [[route]]\nid = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"up\"\ntimeout = \"300ms\"\n",
        upstream_block("up", &up)
    ));
    let r = gw.get("/dead", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-gateway-error"), Some("upstream-connect"));
    let started = Instant::now();
    let r = gw.get("/slow/3000", &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-gateway-error"), Some("upstream-timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the route timeout, not the upstream, decided"
    );
}

#[test]
fn slow_client_headers_are_cut_off() {
    use std::io::{Read, Write};
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[[route]]\nid = \"r\"\nupstream = \"up\"\n",
        upstream_block("up", &up)
    ));
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The header_read_timeout is 1s: the gateway ends the connection.
    let _ = s.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "connection held for {waited:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer {text:?}"
    );
    assert_eq!(up.count(), 0);
}

#[test]
fn h2c_prior_knowledge_is_served() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[[route]]\nid = \"r\"\nupstream = \"up\"\n",
        upstream_block("up", &up)
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("http://h2.test/x/../y")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        resp.status().as_u16()
    });
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/y");
    assert_eq!(
        seen.header("host"),
        Some("h2.test"),
        "the HTTP/2 authority becomes the upstream's Host"
    );
}

#[test]
fn metrics_show_requests_durations_in_flight_and_plugin_calls() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}[[route]]\nid = \"r\"\nupstream = \"up\"\nfilters = [\"p\"]\n",
        upstream_block("up", &up),
        probe("p", ""),
    ));
    let before = gw.metrics();
    // Declared at start-up, before any request.
    assert_eq!(
        metric(
            &before,
            "gateway_plugin_failures_total",
            &[
                ("filter", "p"),
                ("reason", "deadline"),
                ("phase", "request")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &before,
            "gateway_plugin_calls_total",
            &[("filter", "p"), ("phase", "request")]
        ),
        Some(0.0)
    );
    for _ in 0..5 {
        assert_eq!(gw.get("/", &[]).status, 200);
    }
    assert_eq!(gw.get("/status/503", &[]).status, 503);
    gw.request("BREW", "/", &[], b"");
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "gateway_http_requests_total",
            &[("route", "r"), ("method", "GET"), ("status_class", "2xx")]
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_http_requests_total",
            &[("route", "r"), ("method", "GET"), ("status_class", "5xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_http_requests_total",
            &[("route", "r"), ("method", "OTHER"), ("status_class", "2xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_http_request_duration_seconds_count",
            &[("route", "r")]
        ),
        Some(7.0)
    );
    assert_eq!(
        metric(&m, "gateway_http_requests_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_calls_total",
            &[("filter", "p"), ("phase", "request")]
        ),
        Some(7.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_calls_total",
            &[("filter", "p"), ("phase", "response")]
        ),
        Some(7.0)
    );
    // Health and readiness.
    assert_eq!(
        raw(
            gw.admin,
            b"GET /health HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        .status,
        200
    );
    assert_eq!(
        raw(
            gw.admin,
            b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        .status,
        200
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let up = Upstream::start("up");
    let mut gw = Gateway::start(&format!(
        "{}[[route]]\nid = \"r\"\nupstream = \"up\"\n",
        upstream_block("up", &up)
    ));
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        raw(
            addr,
            b"GET /slow/1000 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
    });
    // Wait until the upstream has the request, so it is truly in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    gw.signal(15);
    std::thread::sleep(Duration::from_millis(200));
    // New connections are no longer accepted.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "hello from up\n");
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(gw.log().contains("SIGTERM received; draining"));
}

#[test]
fn a_looping_or_memory_hungry_filter_fails_only_its_own_step() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{}[filters.spin]\nplugin = \"probe\"\ntimeout = \"20ms\"\n[filters.spin.config]\nname = \"spin\"\nmisbehave = \"loop\"\n\n\
         [filters.hog]\nplugin = \"probe\"\nmemory_limit_mib = 8\n[filters.hog.config]\nname = \"hog\"\nmisbehave = \"memory\"\n\n\
         [[route]]\nid = \"spin\"\npath_prefix = \"/spin\"\nupstream = \"up\"\nfilters = [\"spin\"]\n\n\
         [[route]]\nid = \"hog\"\npath_prefix = \"/hog\"\nupstream = \"up\"\nfilters = [\"hog\"]\n\n\
         [[route]]\nid = \"fine\"\npath_prefix = \"/fine\"\nupstream = \"up\"\nfilters = [\"ok\"]\n",
        upstream_block("up", &up),
        probe("ok", ""),
        "",
    ));
    for _ in 0..2 {
        let started = Instant::now();
        let r = gw.get("/spin", &[]);
        assert_eq!(r.status, 500);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the deadline stopped the loop"
        );
        assert_eq!(gw.get("/hog", &[]).status, 500);
        // The other route, and its filter, are untouched.
        let r = gw.get("/fine", &[]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 2);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_failures_total",
            &[("filter", "spin"), ("reason", "deadline")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_failures_total",
            &[("filter", "hog"), ("reason", "memory")]
        ),
        Some(2.0)
    );
}

/// A filter that fails call after call is suspended: its failure policy
/// answers at once and no instance is made, until a pause ends; then one
/// more failure suspends it again for longer. Counted, logged once, shown
/// on `/admin/plugins`; other filters are untouched.
#[test]
fn a_filter_in_a_crash_loop_is_suspended_for_a_growing_pause() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[filters.crash]\nplugin = \"probe\"\nsuspend_after = 3\n\
         [filters.crash.config]\nname = \"crash\"\ntrap = \"request\"\n\n\
         [filters.open]\nplugin = \"probe\"\nfailure = \"fail-open\"\nsuspend_after = 2\n\
         [filters.open.config]\nname = \"open\"\ntrap = \"request\"\n\n{}\
         [[route]]\nid = \"crash\"\npath_prefix = \"/crash\"\nupstream = \"up\"\nfilters = [\"crash\"]\n\n\
         [[route]]\nid = \"open\"\npath_prefix = \"/open\"\nupstream = \"up\"\nfilters = [\"open\"]\n\n\
         [[route]]\nid = \"calm\"\npath_prefix = \"/calm\"\nupstream = \"up\"\nfilters = [\"calm\"]\n",
        upstream_block("up", &up),
        probe("calm", ""),
    ));
    let crash = &[("filter", "crash")];
    let starts = |gw: &Gateway| {
        metric(
            &gw.metrics(),
            "gateway_plugin_instance_starts_total",
            &[("filter", "crash"), ("result", "ok")],
        )
        .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(
            gw.get("/crash", &[]).body_text(),
            "filter crash failed (trap)\n"
        );
    }
    let made = starts(&gw);
    for _ in 0..5 {
        let r = gw.get("/crash", &[]);
        assert_eq!(r.status, 500);
        assert_eq!(r.body_text(), "filter crash failed (suspended)\n");
    }
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "gateway_plugin_suspensions_total", crash),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_failures_total",
            &[("filter", "crash"), ("reason", "suspended")]
        ),
        Some(5.0)
    );
    assert_eq!(starts(&gw), made, "no instance was made while suspended");
    let plugins: serde_json::Value =
        serde_json::from_slice(&gw.admin("GET", "/admin/plugins").body).unwrap();
    let probe = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "probe")
        .unwrap();
    let suspended: Vec<&str> = probe["suspended"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["filter"].as_str().unwrap())
        .collect();
    assert_eq!(suspended, ["crash"], "{probe:#}");
    assert_eq!(
        gw.log().matches("filter suspended").count(),
        1,
        "one line per suspension"
    );
    // Others are untouched; a fail-open filter's suspension skips it.
    assert_eq!(gw.get("/calm", &[]).status, 200);
    for _ in 0..4 {
        assert_eq!(gw.get("/open", &[]).status, 200);
    }
    assert_eq!(
        metric(
            &gw.metrics(),
            "gateway_plugin_suspensions_total",
            &[("filter", "open")]
        ),
        Some(1.0)
    );

    // After the first pause (1 s) a call runs again; it fails, and that
    // one failure suspends the filter again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        gw.get("/crash", &[]).body_text(),
        "filter crash failed (trap)\n"
    );
    assert_eq!(
        gw.get("/crash", &[]).body_text(),
        "filter crash failed (suspended)\n"
    );
    assert_eq!(
        metric(&gw.metrics(), "gateway_plugin_suspensions_total", crash),
        Some(2.0)
    );
}
