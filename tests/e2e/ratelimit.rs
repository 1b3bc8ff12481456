//! End-to-end behaviour of the rate-limit plugin on the gateway's shared
//! state: exact counts and headers, sliding windows, several limits and
//! keys, and one limit enforced by two gateways through a real Redis that
//! goes away and comes back.

use crate::common::*;
use std::time::{Duration, Instant};

fn upstream_block(u: &Upstream) -> String {
    format!("[upstreams.app]\ninstances = [\"{}\"]\n\n", u.addr)
}

fn route(id: &str, prefix: &str, filters: &str) -> String {
    format!(
        "[[route]]\nid = \"{id}\"\npath_prefix = \"{prefix}\"\nupstream = \"app\"\nfilters = [{filters}]\n\n"
    )
}

fn ratelimit(name: &str, extra: &str, limits: &str) -> String {
    format!(
        "[filters.{name}]\nplugin = \"ratelimit\"\n[filters.{name}.config]\n{extra}\n{limits}\n"
    )
}

fn limit(name: &str, requests: u32, window: &str, extra: &str) -> String {
    format!(
        "[[filters.rl.config.limits]]\nname = \"{name}\"\nrequests = {requests}\nwindow = \"{window}\"\n{extra}\n"
    )
}

fn counted(gw: &Gateway, route: &str, limit: &str, result: &str) -> f64 {
    metric(
        &gw.metrics(),
        "gateway_plugin_ratelimit_requests_total",
        &[("route", route), ("limit", limit), ("result", result)],
    )
    .unwrap_or(0.0)
}

/// Sleeps until just after the next wall-clock-aligned boundary of `ms`
/// windows, so a burst of requests lands in one window.
fn next_window(ms: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(ms - now % ms + 10));
}

#[test]
fn fixed_window_allows_exactly_n_then_429_with_headers_and_again_after_it() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream_block(&up),
        ratelimit(
            "rl",
            "",
            &limit("burst", 5, "1500ms", "algorithm = \"fixed\"")
        ),
        route("api", "/", "\"rl\""),
    ));
    for i in 0..5 {
        let r = gw.get("/x", &[]);
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("ratelimit-limit"), Some("5"));
        assert_eq!(r.header("ratelimit-remaining"), Some(&*(4 - i).to_string()));
        assert_eq!(r.header("ratelimit-reset"), Some("2"), "1.5 s rounds up");
        assert!(r.header("retry-after").is_none());
    }
    let refused = gw.get("/x", &[]);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("ratelimit-limit"), Some("5"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(refused.body_text().contains("\"limit\":\"burst\""));
    assert_eq!(up.count(), 5, "the refused request never reached upstream");

    std::thread::sleep(Duration::from_millis(1600));
    let again = gw.get("/x", &[]);
    assert_eq!(again.status, 200, "a new window allows again");
    assert_eq!(again.header("ratelimit-remaining"), Some("4"));
    assert_eq!(counted(&gw, "api", "burst", "allowed"), 6.0);
    assert_eq!(counted(&gw, "api", "burst", "rejected"), 1.0);
}

#[test]
fn sliding_window_refuses_past_the_limit_and_carries_the_previous_window() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream_block(&up),
        ratelimit("rl", "", &limit("smooth", 4, "2s", "")),
        route("api", "/", "\"rl\""),
    ));
    next_window(2000);
    let statuses: Vec<u16> = (0..5).map(|_| gw.get("/x", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    // Early in the next window almost all of the previous one (5 counted,
    // the refusal included) still weighs: still refused, and told to wait
    // until enough of it has slid out, well over a second.
    next_window(2000);
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 429, "the previous window still counts");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((2..=4).contains(&retry), "retry-after {retry}");
    // A window later only the one refused request weighs in.
    next_window(2000);
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some("2"),
        "4 - (1 + 1 weighted ~1)"
    );
}

#[test]
fn several_limits_keys_and_routes_each_count_their_own() {
    let up = Upstream::start("app");
    let limits = format!(
        "{}{}{}",
        limit(
            "per-key",
            2,
            "10s",
            "algorithm = \"fixed\"\nkey = \"header:x-api-key\""
        ),
        limit(
            "per-route",
            3,
            "10s",
            "algorithm = \"fixed\"\nkey = \"route\""
        ),
        limit(
            "admin-only",
            1,
            "10s",
            "algorithm = \"fixed\"\nroutes = [\"admin\"]"
        ),
    );
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream_block(&up),
        ratelimit("rl", "", &limits),
        route("admin", "/admin", "\"rl\""),
        route("api", "/api", "\"rl\""),
    ));
    let key = |k: &'static str| [("x-api-key", k)];
    // Two per key: a third with the same key is refused by `per-key`...
    assert_eq!(gw.get("/api/a", &key("alpha")).status, 200);
    let r = gw.get("/api/a", &key("alpha"));
    assert_eq!(r.status, 200);
    // ...and the headers show the tightest limit (per-key, 0 left).
    assert_eq!(r.header("ratelimit-limit"), Some("2"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let r = gw.get("/api/a", &key("alpha"));
    assert_eq!(r.status, 429);
    assert!(r.body_text().contains("per-key"), "{}", r.body_text());
    // Another key has its own count, but the route's total (3, refusals
    // included) is now used up.
    let r = gw.get("/api/a", &key("beta"));
    assert_eq!(r.status, 429);
    assert!(r.body_text().contains("per-route"), "{}", r.body_text());
    // The admin route counts separately and has its own extra limit.
    assert_eq!(gw.get("/admin", &key("gamma")).status, 200);
    let r = gw.get("/admin", &key("gamma"));
    assert_eq!(r.status, 429);
    assert!(r.body_text().contains("admin-only"), "{}", r.body_text());
    assert_eq!(counted(&gw, "api", "per-key", "rejected"), 1.0);
    assert_eq!(counted(&gw, "api", "per-route", "rejected"), 1.0);
    assert_eq!(counted(&gw, "admin", "admin-only", "rejected"), 1.0);
    assert_eq!(up.count(), 3);
}

#[test]
fn a_missing_key_header_counts_by_client_address_instead() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream_block(&up),
        ratelimit(
            "rl",
            "",
            &limit(
                "per-key",
                2,
                "10s",
                "algorithm = \"fixed\"\nkey = \"header:x-api-key\""
            )
        ),
        route("api", "/", "\"rl\""),
    ));
    // Leaving the header out is not a way around the limit.
    let statuses: Vec<u16> = (0..3).map(|_| gw.get("/x", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(gw.get("/x", &[("x-api-key", "k1")]).status, 200);
}

fn shared_limit_gateway(up: &Upstream, redis: &Redis, on_error: &str) -> Gateway {
    Gateway::start(&format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"50ms\"\n\n{}{}{}",
        redis.url(),
        upstream_block(up),
        ratelimit(
            "rl",
            &format!("on_state_error = \"{on_error}\""),
            &limit("global", 6, "20s", "algorithm = \"fixed\"\nkey = \"route\""),
        ),
        route("api", "/", "\"rl\""),
    ))
}

#[test]
fn two_gateways_on_one_redis_enforce_one_limit_and_survive_an_outage() {
    let up = Upstream::start("app");
    let mut redis = Redis::start();
    let open = shared_limit_gateway(&up, &redis, "allow");
    let closed = shared_limit_gateway(&up, &redis, "deny");

    // Six requests in all, whichever gateway they reach.
    let mut ok = 0;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &open } else { &closed };
        match gw.get("/x", &[]).status {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 6, "one global limit across both gateways");
    assert_eq!(
        counted(&open, "api", "global", "rejected") + counted(&closed, "api", "global", "rejected"),
        4.0
    );

    // Redis goes away: each gateway applies its own on_state_error.
    redis.stop();
    let r = open.get("/x", &[]);
    assert_eq!(r.status, 200, "allow lets traffic through uncounted");
    let r = closed.get("/x", &[]);
    assert_eq!(r.status, 503, "deny refuses");
    assert_eq!(r.header("retry-after"), Some("1"));
    let scrape = closed.metrics();
    assert!(
        metric(
            &scrape,
            "gateway_state_calls_total",
            &[("backend", "redis"), ("result", "unavailable")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_plugin_ratelimit_state_errors_total",
            &[("route", "api"), ("decision", "deny")]
        ),
        Some(1.0)
    );
    assert!(
        closed.log().contains("state unavailable"),
        "{}",
        closed.log()
    );

    // Redis comes back empty; both gateways reconnect by themselves and
    // count again from zero.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed.get("/x", &[]).status != 200 {
        assert!(Instant::now() < deadline, "no recovery:\n{}", closed.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The open gateway lets requests through either way; its RateLimit
    // headers show when it counts again.
    let remaining = loop {
        let r = open.get("/x", &[]);
        assert_eq!(r.status, 200);
        if let Some(left) = r.header("ratelimit-remaining") {
            break left.parse::<usize>().unwrap();
        }
        assert!(Instant::now() < deadline, "no recovery:\n{}", open.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(remaining < 5, "both gateways' probes were counted");
    let statuses: Vec<u16> = (0..=remaining)
        .map(|_| open.get("/x", &[]).status)
        .collect();
    let mut expect = vec![200; remaining];
    expect.push(429);
    assert_eq!(statuses, expect, "the shared limit holds again");
}

#[test]
fn a_sliding_limit_on_redis_counts_in_one_key_per_window() {
    let up = Upstream::start("app");
    let redis = Redis::start();
    let gw = Gateway::start(&format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"gw\"\n\n{}{}{}",
        redis.url(),
        upstream_block(&up),
        ratelimit("rl", "", &limit("smooth", 3, "2s", "")),
        route("api", "/", "\"rl\""),
    ));
    next_window(2000);
    let statuses: Vec<u16> = (0..4).map(|_| gw.get("/x", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    // Reading the previous window's counter created nothing: one key, for
    // this window, holding every request, and expiring after two windows.
    let keys = redis.cli(&["--scan", "--pattern", "gw:rl:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(redis.cli(&["GET", keys[0]]).trim(), "4");
    let ttl: u64 = redis.cli(&["PTTL", keys[0]]).trim().parse().unwrap();
    assert!((3000..=4000).contains(&ttl), "ttl {ttl}");
}
