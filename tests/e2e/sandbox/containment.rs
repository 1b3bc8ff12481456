//! What one hostile filter must not do to everyone else: hold the threads
//! that serve other routes, fill the shared state, make the host copy far
//! more than its own memory, bloat the scrape or forge log lines.

use crate::common::{self, Gateway, Redis, Upstream, metric, plugin_dir, tempdir};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The WAT filter that attacks the canonical ABI (tests/plugins/hostile-abi),
/// made a component with the gateway's own tool into the plugin folder.
///
/// Once per test run, and the file is replaced only when its bytes change:
/// every running gateway of the test binary whose plugin folder is the
/// shared one watches it, and a rewrite would reload them (or let one read
/// a half-written file).
fn hostile_abi() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        common::build_plugins();
        let out = plugin_dir().join("hostile-abi.wasm");
        let dir = tempdir::Dir::new();
        let fresh = dir.path().join("hostile-abi.wasm");
        common::componentize(
            &common::repo().join("tests/plugins/hostile-abi/filter.wat"),
            &fresh,
        );
        let bytes = std::fs::read(&fresh).unwrap();
        if std::fs::read(&out).ok().as_deref() != Some(&bytes[..]) {
            // Written beside it, then renamed: one event, a whole file.
            let part = plugin_dir().join("hostile-abi.wasm.part");
            std::fs::write(&part, &bytes).unwrap();
            std::fs::rename(&part, &out).unwrap();
        }
    });
}

fn routes(names: &[&str]) -> String {
    names
        .iter()
        .map(|f| {
            format!(
                "\n[[route]]\nid = \"{f}\"\npath_prefix = \"/{f}\"\nupstream = \"app\"\nfilters = [\"{f}\"]\n"
            )
        })
        .collect()
}

fn start(upstream: &Upstream, filters: &str, names: &[&str]) -> Gateway {
    let up = upstream.addr;
    Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        format!(
            "{}{filters}\n[upstreams.app]\ninstances = [\"{up}\"]\n{}",
            common::preamble(listen, admin),
            routes(names)
        )
    })
}

fn failures(gw: &Gateway, filter: &str, reason: &str) -> f64 {
    metric(
        &gw.metrics(),
        "gateway_plugin_failures_total",
        &[("filter", filter), ("reason", reason), ("phase", "request")],
    )
    .unwrap_or(0.0)
}

fn starts(gw: &Gateway, filter: &str, result: &str) -> f64 {
    metric(
        &gw.metrics(),
        "gateway_plugin_instance_starts_total",
        &[("filter", filter), ("result", result)],
    )
    .unwrap()
}

/// A filter whose first instance starts and whose later ones loop in
/// `configure`: once its instance is lost, its requests fail within the
/// call timeout (not the 2 s setup deadline), later ones fail at once while
/// start-ups back off, and a calm route never notices.
#[test]
fn instances_that_cannot_start_fail_their_own_requests_fast_and_back_off() {
    let upstream = Upstream::start("app");
    let gw = Arc::new(start(
        &upstream,
        r#"
[filters.stuck]
plugin = "hostile"
timeout = "50ms"
failure_status = 503
instances = 1
# The start-ups' own back-off is what is measured here, not the crash-loop
# suspension that would otherwise answer for it after 20 failures.
suspend_after = 0
config = { later_configure = "loop" }

[filters.calm]
plugin = "probe"
config = { name = "calm" }
"#,
        &["stuck", "calm"],
    ));
    assert_eq!(
        gw.get("/stuck", &[]).status,
        200,
        "the first instance serves"
    );
    assert_eq!(starts(&gw, "stuck", "ok"), 1.0);
    // Its only instance dies at its deadline; every later one loops.
    assert_eq!(gw.get("/stuck", &[("x-attack", "loop")]).status, 503);

    let hammer: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for _ in 0..40 {
                    let started = Instant::now();
                    let r = gw.get("/stuck", &[]);
                    slowest = slowest.max(started.elapsed());
                    assert_eq!(r.status, 503, "{}", r.body_text());
                    assert_eq!(r.body_text().trim(), "filter stuck failed (instantiate)");
                }
                slowest
            })
        })
        .collect();
    // The calm route answers all the while.
    let mut calm = 0;
    while calm < 2_000 && !hammer.iter().all(|t| t.is_finished()) {
        let r = gw.get("/calm", &[]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        calm += 1;
    }
    assert!(calm > 0);
    for t in hammer {
        let slowest = t.join().unwrap();
        // A request waits for a start-up at most its 50 ms call timeout;
        // the bound only tells that apart from the 2 s setup deadline.
        assert!(
            slowest < Duration::from_secs(1),
            "a request waited {slowest:?} for a start-up"
        );
    }
    let failed = starts(&gw, "stuck", "failed");
    let refused = failures(&gw, "stuck", "instantiate");
    assert_eq!(refused, 160.0);
    // Each failed start-up took its 2 s deadline on a setup thread, and
    // they back off: a handful, not one per request.
    assert!(
        (1.0..=6.0).contains(&failed),
        "{failed} start-ups for {refused} refused requests"
    );
    let log = gw.log();
    assert!(
        log.contains("configure ran past its 2 s setup deadline"),
        "the reason is named:\n{log}"
    );
    assert_eq!(
        failures(&gw, "calm", "instantiate") + failures(&gw, "calm", "deadline"),
        0.0
    );
}

/// `gateway check` names a configure that never ends, on one line.
#[test]
fn a_configure_that_never_ends_is_named_at_check() {
    let (ok, _, err) = common::check_config(
        "[filters.spin]\nplugin = \"hostile\"\nconfig = { configure_spins = true }\n",
    );
    assert!(!ok);
    assert!(
        err.contains("filter `spin` could not start: configure ran past its 2 s setup deadline"),
        "{err}"
    );
}

fn state_result(gw: &Gateway, upstream: &Upstream, path: &str, attack: &str) -> String {
    let r = gw.get(path, &[("x-attack", attack)]);
    assert_eq!(r.status, 200, "{path}: {}", r.body_text());
    upstream
        .last()
        .header("x-attack-result")
        .unwrap()
        .to_string()
}

/// One filter creating counters without end meets its own quota; another
/// filter's new counters are still made.
#[test]
fn a_filter_over_its_state_quota_is_refused_alone() {
    let upstream = Upstream::start("app");
    let gw = start(
        &upstream,
        r#"
[state]
max_entries = 1000

[filters.bomb]
plugin = "hostile"
state_max_entries = 64

# The default quota: a tenth of the store.
[filters.bomb2]
plugin = "hostile"

[filters.short]
plugin = "hostile"
state_max_window = "1h"

[filters.calm]
plugin = "hostile"
"#,
        &["bomb", "bomb2", "short", "calm"],
    );
    for _ in 0..4 {
        assert_eq!(
            state_result(&gw, &upstream, "/bomb", "state-bomb"),
            "created 16"
        );
    }
    let r = state_result(&gw, &upstream, "/bomb", "state-bomb");
    assert!(
        r.starts_with(
            "refused: invalid: state quota: filter `bomb` holds 64 counters; its quota is 64"
        ),
        "{r}"
    );
    for _ in 0..6 {
        assert_eq!(
            state_result(&gw, &upstream, "/bomb2", "state-bomb"),
            "created 16"
        );
    }
    let r = state_result(&gw, &upstream, "/bomb2", "state-bomb");
    assert!(r.contains("its quota is 100"), "{r}");
    // Two days is more than `short` may keep a counter.
    let r = state_result(&gw, &upstream, "/short", "state-bomb");
    assert!(
        r.starts_with("refused: invalid: state quota: window of 172800000 ms"),
        "{r}"
    );
    // The others' refusals left the store room for the calm filter.
    for _ in 0..20 {
        assert_eq!(state_result(&gw, &upstream, "/calm", "state-one"), "ok 1");
    }
    let scrape = gw.metrics();
    let quota = |filter: &str, limit: &str| {
        metric(
            &scrape,
            "gateway_state_quota_refusals_total",
            &[("filter", filter), ("limit", limit)],
        )
    };
    assert_eq!(quota("bomb", "entries"), Some(1.0));
    assert_eq!(quota("bomb2", "entries"), Some(1.0));
    assert_eq!(quota("short", "window"), Some(1.0));
    assert_eq!(quota("calm", "entries"), Some(0.0));
    assert_eq!(
        metric(
            &scrape,
            "gateway_state_calls_total",
            &[("backend", "memory"), ("result", "quota")]
        ),
        Some(3.0)
    );
}

/// The same quota against a real Redis, counted there per filter.
#[test]
fn redis_counts_each_filters_counters_against_its_quota() {
    let redis = Redis::start();
    let upstream = Upstream::start("app");
    let gw = start(
        &upstream,
        &format!(
            r#"
[state]
backend = "redis"
url = "{}"

[filters.bomb]
plugin = "hostile"
state_max_entries = 32

[filters.calm]
plugin = "hostile"
state_max_entries = 32
"#,
            redis.url()
        ),
        &["bomb", "calm"],
    );
    for _ in 0..2 {
        assert_eq!(
            state_result(&gw, &upstream, "/bomb", "state-bomb"),
            "created 16"
        );
    }
    let r = state_result(&gw, &upstream, "/bomb", "state-bomb");
    assert!(
        r.contains("state quota: the filter holds 32 counters; its quota is 32"),
        "{r}"
    );
    // Nothing of the refused call was written.
    let keys = redis.cli(&["--scan", "--pattern", "*bomb*"]);
    assert_eq!(keys.lines().filter(|k| k.contains(":bomb:")).count(), 32);
    for _ in 0..10 {
        assert_eq!(state_result(&gw, &upstream, "/calm", "state-one"), "ok 1");
    }
    assert_eq!(
        metric(
            &gw.metrics(),
            "gateway_state_quota_refusals_total",
            &[("filter", "bomb"), ("limit", "entries")]
        ),
        Some(1.0)
    );
}

/// Replies and host calls whose lists alias the same bytes, oversized
/// header names and heads, and a table grown past its limit: each fails
/// only its own call, under the reason it deserves.
#[test]
fn aliased_and_oversized_answers_are_refused() {
    hostile_abi();
    let upstream = Upstream::start("app");
    let gw = start(
        &upstream,
        r#"
[filters.abi]
plugin = "hostile-abi"
memory_limit_mib = 1
failure_status = 503

[filters.abi-big]
plugin = "hostile-abi"
failure_status = 503

[filters.hostile]
plugin = "hostile"
memory_limit_mib = 16
failure_status = 503
"#,
        &["abi", "abi-big", "hostile"],
    );
    // The peak resident memory, from /proc.
    let peak_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    };
    let refused = |path: &str, attack: &str, reason: &str| {
        let filter = &path[1..];
        let before = failures(&gw, filter, reason);
        let r = gw.get(path, &[("x-attack", attack)]);
        assert_eq!(r.status, 503, "{path} {attack}: {}", r.body_text());
        assert_eq!(
            r.body_text().trim(),
            format!("filter {filter} failed ({reason})"),
            "{path} {attack}"
        );
        assert!(r.headers.len() < 20, "{path} {attack}: the reply was sent");
        assert_eq!(
            failures(&gw, filter, reason),
            before + 1.0,
            "{path} {attack}"
        );
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 200, "{path} serves on after {attack}");
    };
    let peak_before = peak_kib();
    // A 1 MiB filter may hand the host 2 MiB a call; the lists describe
    // about 250 MiB (values), 6 MB (names) and 250 MiB (labels).
    refused("/abi", "a", "invalid-answer");
    refused("/abi", "n", "invalid-answer");
    refused("/abi", "l", "invalid-answer");
    let grown = peak_kib().saturating_sub(peak_before);
    assert!(grown < 16 * 1024, "peak resident memory grew {grown} KiB");
    refused("/abi", "t", "memory");
    // With 64 MiB of memory the lists are still cut off by the copy budget,
    // and the names by their length.
    refused("/abi-big", "a", "invalid-answer");
    refused("/abi-big", "n", "invalid-answer");
    refused("/hostile", "reply-long-names", "invalid-answer");
    refused("/hostile", "reply-big-head", "invalid-answer");
}

/// A plugin's log line with a line break, a carriage return, a terminal
/// escape and a bidi override stays one escaped field of one record, and so
/// does a trap backtrace naming a function with a forged line in its name.
#[test]
fn plugin_text_cannot_forge_log_lines() {
    hostile_abi();
    let upstream = Upstream::start("app");
    let gw = start(
        &upstream,
        r#"
[filters.hostile]
plugin = "hostile"

[filters.abi]
plugin = "hostile-abi"
"#,
        &["hostile", "abi"],
    );
    let r = gw.get("/hostile", &[("x-attack", "log-forge")]);
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    let r = gw.get("/abi", &[("x-attack", "f")]);
    assert_eq!(r.status, 500);
    let trap_id = r.header("x-request-id").unwrap().to_string();
    let log = gw.log();
    let forged = |l: &&str| l.contains("reload #9 applied");
    let lines: Vec<&str> = log.lines().filter(forged).collect();
    assert_eq!(lines.len(), 2, "{log}");
    for l in &lines {
        assert!(
            l.contains(&id) || l.contains(&trap_id),
            "every forged text sits in the record of its request: {l}"
        );
        assert!(!l.contains('\r') && !l.contains('\u{1b}') && !l.contains('\u{202e}'));
    }
    let logged = lines.iter().find(|l| l.contains(&id)).unwrap();
    assert!(
        logged.contains(r#"filter log filter="hostile""#)
            && logged.contains(r#"text="innocent\n2026-11-30T00:00:00.000000Z  INFO gateway::reload: reload #9 applied in 1 ms\r\u{1b}[2K\u{202e}""#),
        "{logged}"
    );
    // The backtrace's lines, the forged name's among them, are joined into
    // the one record of the failed call.
    let trapped = lines.iter().find(|l| l.contains(&trap_id)).unwrap();
    assert!(
        trapped.contains("filter call failed") && trapped.contains("!forged | 2026-11-30"),
        "{trapped}"
    );
}

/// A filter writing as many lines as each call allows, call after call, is
/// held to its lines a second; the next line let through says how many were
/// left out.
#[test]
fn a_filters_log_lines_are_limited_per_second() {
    let upstream = Upstream::start("app");
    let gw = start(
        &upstream,
        "[filters.flood]\nplugin = \"hostile\"\n",
        &["flood"],
    );
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(gw.get("/flood", &[("x-attack", "log-flood")]).status, 200);
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(gw.get("/flood", &[("x-attack", "log-flood")]).status, 200);
    let log = gw.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"filter log filter="flood""#))
        .collect();
    // 640 lines asked for in `took`, then 32 more a period later.
    let periods = took.as_secs() as usize + 2;
    assert!(
        lines.len() <= 100 * periods && lines.len() < 640,
        "{} lines in {took:?}",
        lines.len()
    );
    let reported: u64 = lines
        .iter()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|n| n.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        lines.len() as u64 + reported,
        21 * 32,
        "every line asked for was written or reported as left out"
    );
}

/// A configure error with a forged line stays on one line of `gateway check`.
#[test]
fn a_configure_error_cannot_forge_lines() {
    let (ok, _, err) = common::check_config(
        "[filters.liar]\nplugin = \"hostile\"\nconfig = { refuse_with = \"no\\n2026-11-30T00:00:00Z  INFO gateway: configuration OK\\u001b[1A\" }\n",
    );
    assert!(!ok);
    let line = err
        .lines()
        .find(|l| l.contains("refused its configuration"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(r"no\n2026-11-30T00:00:00Z  INFO gateway: configuration OK\u{1b}[1A"),
        "{line}"
    );
    assert!(!err.lines().any(|l| l.starts_with("2026-11-30")), "{err}");
}

/// A plugin spending every metric and label-set cap on label values as long
/// as allowed stays within its budget of the scrape.
#[test]
fn a_metrics_bomb_stays_within_its_budget() {
    let upstream = Upstream::start("app");
    let gw = start(
        &upstream,
        "[filters.bomb]\nplugin = \"hostile\"\ntimeout = \"10s\"\n",
        &["bomb"],
    );
    for n in 0..4 {
        let nonce = format!("n{n}");
        let r = gw.get(
            "/bomb",
            &[("x-attack", "metrics-bomb"), ("x-nonce", &nonce)],
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let scrape = gw.metrics();
    let bomb: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("gateway_plugin_hostile_bomb_"))
        .collect();
    let bytes: usize = bomb.iter().map(|l| l.len() + 1).sum();
    let overflow_bytes: usize = bomb
        .iter()
        .filter(|l| l.contains("overflow=\"true\""))
        .map(|l| l.len() + 1)
        .sum();
    // The budget's estimate holds for the series it admitted, and the
    // overflow series (one per metric) add little.
    assert!(
        bytes - overflow_bytes <= 512 * 1024,
        "{} bytes of admitted series",
        bytes - overflow_bytes
    );
    assert!(bytes <= 640 * 1024, "{bytes} bytes from one plugin");
    assert!(overflow_bytes > 0, "the rest folded into overflow series");
    assert!(
        metric(
            &scrape,
            "gateway_plugin_metric_overflow_total",
            &[("plugin", "hostile")]
        )
        .unwrap()
            > 0.0
    );
    assert!(scrape.len() < 1024 * 1024, "{} byte scrape", scrape.len());
}
