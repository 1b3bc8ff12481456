//! The sandbox through the real gateway binary: the `hostile` test filter
//! (tests/plugins/hostile) attacks the host in the way each request's
//! `x-attack` header names, and every attack must fail only its own step.

mod containment;

use crate::common::{Gateway, RawResponse, Upstream, metric, tempdir};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A gateway with the hostile filter on `/hostile` (fail-closed, 503),
/// on `/open` (fail-open), on `/granted` (granted one variable and a
/// directory as `/etc`), under request isolation on `/isolated`, and a calm
/// route `/calm` through the probe filter.
fn start(upstream: &Upstream) -> Gateway {
    start_with_server(upstream, "")
}

/// `start` with `server` added to the `[server]` table.
fn start_with_server(upstream: &Upstream, server: &str) -> Gateway {
    let dir = tempdir::Dir::new();
    let etc = dir.path().join("granted-etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "granted:x:0:0\n").unwrap();
    let up = upstream.addr;
    Gateway::start_with_env(
        dir,
        &[
            ("SANDBOX_GRANTED", "yes-granted"),
            ("SANDBOX_SECRET", "must-not-leak"),
        ],
        |listen, admin| {
            let mut c = crate::common::preamble(listen, admin).replacen(
                "[server]\n",
                &format!("[server]\n{server}"),
                1,
            );
            c.push_str(&format!(
                r#"
[filters.hostile]
plugin = "hostile"
failure_status = 503
timeout = "50ms"
memory_limit_mib = 16
# Each attack's own failure is what is checked here; a run of attacks
# would otherwise suspend the filter (tested in proxy.rs).
suspend_after = 0

[filters.open]
plugin = "hostile"
failure = "fail-open"
timeout = "50ms"
memory_limit_mib = 16

# The same with time for ten thousand host calls of 1 MiB each: lifting
# every argument into the host is what takes the time.
[filters.absurd]
plugin = "hostile"
timeout = "10s"

[filters.granted]
plugin = "hostile"
env = ["SANDBOX_GRANTED", "SANDBOX_ABSENT"]
dirs = {{ "/etc" = "granted-etc" }}

[filters.isolated]
plugin = "hostile"
isolation = "request"
instances = 2

[filters.calm]
plugin = "probe"
config = {{ name = "calm" }}

[upstreams.app]
instances = ["{up}"]
"#
            ));
            // Each filter on a route of its own name.
            for f in ["hostile", "open", "absurd", "granted", "isolated", "calm"] {
                c.push_str(&format!(
                    "\n[[route]]\nid = \"{f}\"\npath_prefix = \"/{f}\"\nupstream = \"app\"\nfilters = [\"{f}\"]\n"
                ));
            }
            c
        },
    )
}

fn attack(gw: &Gateway, path: &str, attack: &str) -> RawResponse {
    gw.get(path, &[("x-attack", attack)])
}

/// Failed calls of `filter` for `reason`, both phases.
fn failures(gw: &Gateway, filter: &str, reason: &str) -> f64 {
    let scrape = gw.metrics();
    ["request", "response"]
        .iter()
        .map(|phase| {
            metric(
                &scrape,
                "gateway_plugin_failures_total",
                &[("filter", filter), ("reason", reason), ("phase", phase)],
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// A request without an attack on the same route passes, on a healthy
/// instance.
fn still_serves(gw: &Gateway, upstream: &Upstream, path: &str) {
    let r = gw.get(path, &[]);
    assert_eq!(r.status, 200, "{path}: {}", r.body_text());
    assert_eq!(r.header("x-hostile-out"), Some("ok"));
    assert_eq!(upstream.last().header("x-hostile"), Some("passed"));
}

#[test]
fn every_failing_attack_fails_only_its_own_step() {
    let upstream = Upstream::start("app");
    let gw = start(&upstream);
    // (attack, reason counted, phase)
    let cases = [
        ("loop", "deadline", "request"),
        // Asleep in a WASI poll, where the epoch deadline cannot reach.
        ("sleep", "deadline", "request"),
        ("memory", "memory", "request"),
        ("recursion", "stack-overflow", "request"),
        ("panic", "trap", "request"),
        ("unreachable", "trap", "request"),
        ("invalid-utf8", "trap", "request"),
        ("reply-status", "invalid-answer", "request"),
        ("reply-huge-header", "invalid-answer", "request"),
        ("reply-many-headers", "invalid-answer", "request"),
        ("reply-hop-by-hop", "invalid-answer", "request"),
        ("reply-bad-header-value", "invalid-answer", "request"),
        ("reply-huge-body", "invalid-answer", "request"),
        ("response-panic", "trap", "response"),
        // `set-context` has no error result: a key, value or entry count
        // past its limit fails the call.
        ("context-huge-key", "trap", "request"),
        ("context-huge-value", "trap", "request"),
        ("context-many-keys", "trap", "request"),
    ];
    let mut logged = std::collections::HashSet::new();
    for (name, reason, phase) in cases {
        let before = failures(&gw, "hostile", reason);
        let seen = upstream.count();
        let r = attack(&gw, "/hostile", name);
        assert_eq!(r.status, 503, "{name}: {}", r.body_text());
        assert_eq!(r.header("x-gateway-error"), Some("filter-failed"), "{name}");
        assert_eq!(
            r.body_text().trim(),
            format!("filter hostile failed ({reason})"),
            "{name}"
        );
        // Fail-closed on the way in: nothing reached the upstream.
        let forwarded = if phase == "request" { 0 } else { 1 };
        assert_eq!(upstream.count() - seen, forwarded, "{name}");
        assert_eq!(failures(&gw, "hostile", reason), before + 1.0, "{name}");
        // Failure lines are limited to one a second per filter, phase and
        // reason, so only the first of a kind is looked up by request id;
        // every one is counted above.
        if !logged.insert((reason, phase)) {
            still_serves(&gw, &upstream, "/hostile");
            continue;
        }
        let request_id = r.header("x-request-id").unwrap().to_string();
        let line = gw
            .log()
            .lines()
            .find(|l| l.contains(&request_id) && l.contains("filter call failed"))
            .unwrap_or_else(|| panic!("{name}: no log line for {request_id}:\n{}", gw.log()))
            .to_string();
        for part in [
            "plugin=\"hostile\"".to_string(),
            format!("reason=\"{reason}\""),
            format!("phase=\"{phase}\""),
        ] {
            assert!(line.contains(&part), "{name}: {part} missing in {line}");
        }
        if name == "panic" {
            // This plugin has no SDK and so Rust's own panic hook, which
            // writes to standard error: both of its lines reach the log,
            // tagged with the request.
            let log = gw.log();
            let stderr: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&request_id) && l.contains("source=\"stderr\""))
                .collect();
            assert!(
                stderr
                    .iter()
                    .any(|l| l.contains("panicked at") && l.contains("src/lib.rs:")),
                "no panic line for {request_id}:\n{log}"
            );
            assert!(
                stderr.iter().any(|l| l.contains("hostile panic")),
                "{stderr:#?}"
            );
        }
        still_serves(&gw, &upstream, "/hostile");
    }
    // Fail-open: the same attacks skip the filter and the request goes on.
    for name in ["loop", "memory", "panic", "reply-status"] {
        let seen = upstream.count();
        let r = attack(&gw, "/open", name);
        assert_eq!(r.status, 200, "{name} (fail-open): {}", r.body_text());
        assert_eq!(upstream.count() - seen, 1, "{name}");
    }
    assert!(failures(&gw, "open", "deadline") >= 1.0);
    // Under request isolation every request gets a fresh instance, and its
    // on-response runs on the instance its on-request ran on; pooled
    // instances carry on from call to call.
    let count = |path: &str| {
        let r = attack(&gw, path, "count");
        assert_eq!(r.status, 200);
        (
            upstream
                .last()
                .header("x-attack-result")
                .unwrap()
                .to_string(),
            r.header("x-count-out").unwrap().to_string(),
        )
    };
    for _ in 0..3 {
        assert_eq!(count("/isolated"), ("call 1".to_string(), "1".to_string()));
    }
    let (first, _) = count("/hostile");
    let (second, out) = count("/hostile");
    let n = |s: &str| s.trim_start_matches("call ").parse::<u32>().unwrap();
    assert_eq!(n(&second), n(&first) + 1, "pooled instance reused");
    assert_eq!(out, n(&second).to_string());
    // The same attacks under request isolation.
    for (name, reason) in [("loop", "deadline"), ("panic", "trap")] {
        let before = failures(&gw, "isolated", reason);
        assert_eq!(attack(&gw, "/isolated", name).status, 500, "{name}");
        assert_eq!(failures(&gw, "isolated", reason), before + 1.0);
        still_serves(&gw, &upstream, "/isolated");
    }
}

#[test]
fn hostile_host_calls_are_refused_cleanly() {
    let upstream = Upstream::start("app");
    let gw = start(&upstream);
    let result = |name: &str| -> String {
        let r = attack(&gw, "/hostile", name);
        assert_eq!(r.status, 200, "{name}: {}", r.body_text());
        let seen = upstream.last();
        seen.header("x-attack-result")
            .unwrap_or_else(|| panic!("{name}: no x-attack-result"))
            .to_string()
    };

    // A 1 MiB header value is refused; the request goes on without it.
    let r = result("huge-header");
    assert!(r.starts_with("refused:"), "{r}");
    assert!(r.contains("8192"), "{r}");
    assert_eq!(upstream.last().header("x-huge"), None);

    // Ten thousand headers: the message is capped, the rest refused.
    let r = result("many-headers");
    let seen = upstream.last();
    let many = seen
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-many-"))
        .count();
    assert!(
        many > 0 && seen.headers.len() <= 256,
        "{} headers",
        seen.headers.len()
    );
    assert_eq!(r, format!("accepted {many} refused {}", 10_000 - many));

    // Framing, connection and routing headers stay the gateway's.
    assert_eq!(result("hop-by-hop"), "refused 8 of 8");
    let seen = upstream.last();
    assert_eq!(seen.header("host"), Some("test.local"));
    assert_eq!(seen.header("connection"), None);
    assert_eq!(seen.header("transfer-encoding"), None);

    // Absurd arguments and call counts to every host interface.
    let log_before = gw.log().lines().count();
    let r = attack(&gw, "/absurd", "absurd-host-calls");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = upstream
        .last()
        .header("x-attack-result")
        .unwrap()
        .to_string();
    assert!(r.contains("state-refused="), "{r}");
    let refused: u64 = r
        .split_whitespace()
        .find_map(|p| p.strip_prefix("state-refused="))
        .unwrap()
        .parse()
        .unwrap();
    // The 1 MiB key (the first of the call's 16 state calls), the
    // 10,000-op batch (refused before it counts), and of the 1,000 small
    // calls all but the 15 left in the budget.
    assert_eq!(refused, 1 + 1 + (1_000 - 15), "{r}");
    assert!(r.contains("crypto-false=2"), "{r}");
    // Ten thousand 1 MiB log lines became at most 32 lines, cut to 4 KiB,
    // and one line saying how many were dropped.
    let new_log: Vec<String> = gw
        .log()
        .lines()
        .skip(log_before)
        .map(String::from)
        .collect();
    let from_filter = new_log
        .iter()
        .filter(|l| l.contains("filter=\"hostile\""))
        .count();
    assert!(from_filter <= 34, "{from_filter} log lines");
    assert!(
        new_log.iter().any(|l| l.contains("log lines dropped")),
        "{new_log:?}"
    );
    assert!(new_log.iter().all(|l| l.len() < 5 * 1024));
    // Its counters: bad names and label sets refused, the rest capped.
    let scrape = gw.metrics();
    let series = scrape
        .lines()
        .filter(|l| l.starts_with("gateway_plugin_hostile_"))
        .count();
    assert!(series <= 101, "{series} series from one filter");

    still_serves(&gw, &upstream, "/hostile");
    still_serves(&gw, &upstream, "/absurd");
}

#[test]
fn filters_get_no_files_environment_or_network_unless_granted() {
    let upstream = Upstream::start("app");
    let gw = start(&upstream);
    let result = |path: &str, name: &str, headers: &[(&str, &str)]| {
        let mut h = vec![("x-attack", name)];
        h.extend_from_slice(headers);
        let r = gw.get(path, &h);
        assert_eq!(r.status, 200, "{path} {name}: {}", r.body_text());
        let seen = upstream.last();
        (
            seen.header("x-attack-result").unwrap_or("").to_string(),
            seen,
        )
    };
    let (r, seen) = result("/hostile", "read-file", &[]);
    assert!(r.starts_with("denied"), "{r}");
    assert!(
        seen.header("x-attack-dir")
            .unwrap_or("")
            .starts_with("denied"),
        "{seen:?}"
    );
    let (r, seen) = result("/hostile", "env", &[("x-env-name", "SANDBOX_SECRET")]);
    assert_eq!(r, "missing");
    assert_eq!(seen.header("x-attack-env-count"), Some("0"));
    let (r, _) = result("/hostile", "env", &[("x-env-name", "HOME")]);
    assert_eq!(r, "missing");
    let target = upstream.addr.to_string();
    let before = upstream.count();
    let (r, _) = result("/hostile", "connect", &[("x-connect-to", &target)]);
    assert!(r.starts_with("denied"), "{r}");
    assert_eq!(
        upstream.count(),
        before + 1,
        "only the proxied request arrived"
    );

    // What the configuration grants, and only that.
    let (r, seen) = result("/granted", "env", &[("x-env-name", "SANDBOX_GRANTED")]);
    assert_eq!(r, "found: yes-granted");
    assert_eq!(seen.header("x-attack-env-count"), Some("1"));
    let (r, _) = result("/granted", "env", &[("x-env-name", "SANDBOX_SECRET")]);
    assert_eq!(r, "missing");
    let (r, _) = result("/granted", "read-file", &[]);
    assert_eq!(r, "read 14 bytes");
    // Granted directories are read-only.
    let (r, _) = result("/granted", "write-file", &[]);
    assert!(r.starts_with("denied"), "{r}");
    let (r, _) = result("/granted", "read-file", &[]);
    assert_eq!(r, "read 14 bytes");
}

#[test]
fn other_routes_are_unaffected_while_a_hostile_one_is_hammered() {
    let upstream = Upstream::start("app");
    let gw = Arc::new(start(&upstream));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let attackers: Vec<_> = ["loop", "memory", "panic", "recursion"]
        .into_iter()
        .map(|name| {
            let gw = gw.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 200 && Instant::now() < deadline {
                    let r = attack(&gw, "/hostile", name);
                    assert_eq!(r.status, 503, "{name}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut calm = 0;
    for _ in 0..300 {
        let r = gw.get("/calm", &[]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.header("x-chain-out"), Some("calm"));
        calm += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let attacks: usize = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(attacks >= 4, "the attackers ran");
    assert_eq!(calm, 300);
    // Every attack was counted, and the calm filter never failed.
    let scrape = gw.metrics();
    let counted: f64 = ["deadline", "memory", "trap", "stack-overflow"]
        .iter()
        .map(|r| {
            metric(
                &scrape,
                "gateway_plugin_failures_total",
                &[("filter", "hostile"), ("reason", r)],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(counted, attacks as f64);
    for reason in [
        "deadline",
        "memory",
        "trap",
        "stack-overflow",
        "invalid-answer",
    ] {
        assert_eq!(
            metric(
                &scrape,
                "gateway_plugin_failures_total",
                &[("filter", "calm"), ("reason", reason)],
            ),
            Some(0.0)
        );
    }
    still_serves(&gw, &upstream, "/hostile");
}

/// A guest whose memory only grows (1 MiB kept per call, under a 16 MiB
/// limit) is retired once past three quarters of its limit, between calls:
/// no request meets the trap it was heading for.
#[test]
fn instances_grown_near_their_memory_limit_are_retired_not_reused() {
    let upstream = Upstream::start("app");
    // One worker: sequential calls then meet the same instance, so each
    // instance's calls can be counted in a row (with more, each worker's
    // calls go to the instances it keeps).
    let gw = start_with_server(&upstream, "workers = 1\n");
    let retired = || {
        metric(
            &gw.metrics(),
            "gateway_plugin_instances_retired_total",
            &[("filter", "hostile"), ("reason", "memory")],
        )
    };
    assert_eq!(retired(), Some(0.0), "declared at zero");
    let mut calls_per_instance = Vec::new();
    for i in 0..40 {
        let r = attack(&gw, "/hostile", "leak");
        assert_eq!(r.status, 200, "request {i}: {}", r.body_text());
        let n: u32 = upstream
            .last()
            .header("x-attack-result")
            .and_then(|v| v.strip_prefix("call "))
            .unwrap()
            .parse()
            .unwrap();
        if n == 1 {
            calls_per_instance.push(0);
        }
        if let Some(last) = calls_per_instance.last_mut() {
            *last += 1;
        }
    }
    assert_eq!(failures(&gw, "hostile", "memory"), 0.0);
    let retired = retired().unwrap();
    assert!(
        retired >= 3.0,
        "{retired} retired; calls per instance {calls_per_instance:?}"
    );
    // Each instance served until it held about 12 of its 16 MiB.
    assert!(
        calls_per_instance[..calls_per_instance.len() - 1]
            .iter()
            .all(|&n| (6..=13).contains(&n)),
        "{calls_per_instance:?}"
    );
}

/// A call's post-return cleanup (freeing its answer; in a language with a
/// collector, possibly a collection) runs after the filter has answered.
/// It has a deadline of its own, the filter's `timeout` again, rather than
/// what the call left of its own: an answer given in time stands, and a
/// cleanup that never ends still fails its call.
#[test]
fn cleanup_after_an_answer_has_a_deadline_of_its_own() {
    let plugins = tempdir::Dir::new();
    crate::common::componentize(
        &crate::common::repo().join("tests/plugins/slow-cleanup/filter.wat"),
        &plugins.path().join("slow-cleanup.wasm"),
    );
    let up = Upstream::start("app");
    let addr = up.addr;
    let gw = Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        let preamble = crate::common::preamble_with_plugins(listen, admin, plugins.path());
        format!(
            "{preamble}[upstreams.app]\ninstances = [\"{addr}\"]\n\
             [filters.slow]\nplugin = \"slow-cleanup\"\ntimeout = \"1s\"\nfailure = \"fail-open\"\n\
             [[route]]\nid = \"r\"\nupstream = \"app\"\nfilters = [\"slow\"]\n"
        )
    });
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.count(), 1);
    let scrape = gw.metrics();
    let failed = |phase: &str| -> Vec<(String, f64)> {
        crate::common::series(&scrape, "gateway_plugin_failures_total")
            .into_iter()
            .filter(|(l, v)| l["filter"] == "slow" && l["phase"] == phase && *v > 0.0)
            .map(|(l, v)| (l["reason"].clone(), v))
            .collect()
    };
    // 600 ms of work and as much cleanup, each within its own 1 s.
    assert_eq!(
        failed("request"),
        [],
        "the request phase answered in time:\n{}",
        gw.log()
    );
    // A cleanup that never ends is cut at its own 1 s.
    assert_eq!(failed("response"), [("deadline".to_string(), 1.0)]);
}
