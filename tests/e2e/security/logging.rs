//! A flood of failing requests must not become a flood of log lines written
//! by the workers serving it: each kind of request-path line is written at
//! most once a second, and the next one written says how many like it were
//! left out.

use crate::common::*;
use std::time::{Duration, Instant};

const FLOOD: usize = 500;
const CLIENTS: usize = 4;

/// Sends `FLOOD` requests to `path` from `CLIENTS` threads, each answered
/// `status`; returns how long that took.
fn flood(gw: &Gateway, path: &str, headers: &[(&str, &str)], status: u16) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                for _ in 0..FLOOD / CLIENTS {
                    let r = gw.get(path, headers);
                    assert_eq!(r.status, status, "{path}: {}", r.body_text());
                }
            });
        }
    });
    started.elapsed()
}

/// For each log line containing `needle`, how many lines it says were left
/// out before it.
fn suppressed_counts(gw: &Gateway, needle: &str) -> Vec<u64> {
    gw.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| {
            l.split_once(" similar suppressed)")
                .and_then(|(before, _)| before.rsplit_once('(')?.1.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Requests that fail one way, and the log line each failure writes.
struct Case {
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    line: &'static str,
}

#[test]
fn a_flood_of_failures_logs_a_line_a_second_and_counts_the_rest() {
    let app = Upstream::start("app");
    // Nothing listens there: every try fails to connect.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        r#"
[filters.hostile]
plugin = "hostile"
failure_status = 503
timeout = "50ms"
memory_limit_mib = 16
# Every call of the flood must fail on its own, not as a suspension.
suspend_after = 0

[upstreams.app]
instances = ["{}"]

# The breaker off, so that every request tries the dead instance.
[upstreams.dead]
instances = ["{dead}"]
[upstreams.dead.breaker]
consecutive_failures = 0
failure_rate = 0.0

[[route]]
id = "dead"
path_prefix = "/dead"
upstream = "dead"

[[route]]
id = "hostile"
path_prefix = "/hostile"
upstream = "app"
filters = ["hostile"]
"#,
        app.addr
    ));
    let cases = [
        Case {
            path: "/dead",
            headers: &[],
            status: 502,
            line: "try 1 failed",
        },
        Case {
            path: "/hostile",
            headers: &[("x-attack", "panic")],
            status: 503,
            line: "filter call failed",
        },
    ];
    for Case {
        path,
        headers,
        status,
        line: needle,
    } in cases
    {
        let took = flood(&gw, path, headers, status);
        let lines = suppressed_counts(&gw, needle);
        let allowed = took.as_secs_f64().ceil() as usize + 1;
        assert!(
            !lines.is_empty() && lines.len() <= allowed,
            "{path}: {} lines of {needle:?} for {FLOOD} failures in {took:?}",
            lines.len()
        );
        // The first line after a quiet second tells how many were left out.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(gw.get(path, headers).status, status);
        let lines = suppressed_counts(&gw, needle);
        let last = *lines.last().unwrap();
        assert!(last > 0, "{path}: the last line reports none left out");
        // Every failure was either written or counted once.
        let reported: u64 = lines.iter().sum::<u64>() + lines.len() as u64;
        assert_eq!(reported, FLOOD as u64 + 1, "{path}: {lines:?}");
    }
    assert_eq!(app.count(), 0, "fail-closed: nothing reached the upstream");
}
