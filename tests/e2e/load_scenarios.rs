//! The load scenarios as an operator runs them, `gateway scenario load-*
//! --short`: each starts its own upstreams and gateway and drives them with
//! oha (scripts/setup.sh installs it into target/tools), and these tests
//! read the story back from its `result.json` and `chart.png`.

use crate::common::{num as f, run_scenario as scenario};
use serde_json::Value;
use std::path::Path;

fn steps(result: &Value) -> &Vec<Value> {
    result["steps"].as_array().expect("a timeline of steps")
}

/// A real PNG: the signature, an IHDR of a chart's size, and more bytes
/// than an empty image of that size compresses to.
fn assert_chart(path: &Path) {
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(width >= 800 && height >= 600, "a {width}x{height} chart");
    assert!(
        png.len() > 20_000,
        "a chart of {} bytes has hardly anything drawn",
        png.len()
    );
}

#[test]
fn soak_serves_every_request_through_reloads_and_instance_kills_with_flat_memory() {
    let o = scenario("load-soak");
    assert!(o.passed, "the soak failed:\n{}", o.output);
    let r = &o.result;
    assert_eq!(r["unexpected_errors"], 0, "{}", o.output);
    assert_eq!(r["totals"]["not_2xx"], 0);
    // 60 s at 300/s; oha's steps start a few milliseconds apart.
    assert!(
        f(&r["totals"]["requests"]) > 0.9 * 60.0 * 300.0,
        "{}",
        r["totals"]
    );
    assert!(f(&r["reloads_done"]) >= 5.0, "{}", o.output);
    assert!(f(&r["kills_done"]) >= 2.0, "{}", o.output);
    let events: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert!(events.iter().filter(|e| **e == "kill b").count() >= 2);
    assert!(events.iter().filter(|e| **e == "b up").count() >= 2);
    for what in ["rss_kib", "fds"] {
        let flat = &r["flatness"][what];
        assert!(
            f(&flat["growth"]) <= 0.05,
            "{what} grew: {flat} ({})",
            r["flatness"]["definition"]
        );
        assert!(f(&flat["baseline"]) > 0.0);
    }
    assert!(r["samples"].as_array().unwrap().len() >= 50);
    assert_chart(&o.out.path().join("chart.png"));
}

#[test]
fn spike_offers_ten_times_the_base_rate_and_it_is_answered() {
    let o = scenario("load-spike");
    assert!(o.passed, "{}", o.output);
    let by_phase = |phase: &str| -> Vec<&Value> {
        steps(&o.result)
            .iter()
            .filter(|s| s["phase"] == phase)
            .collect()
    };
    let (base, spike, after) = (by_phase("base"), by_phase("spike"), by_phase("after"));
    assert!(!base.is_empty() && !spike.is_empty() && !after.is_empty());
    let base_offered = f(&base[0]["offered_rps"]);
    let base_answered = base.iter().map(|s| f(&s["rps"])).fold(0.0, f64::max);
    for s in &spike {
        assert_eq!(f(&s["offered_rps"]), 10.0 * base_offered);
        // The gateway kept up: the spike was answered, not just offered.
        assert!(f(&s["rps"]) > 5.0 * base_answered, "spike step {s}");
    }
    for s in after {
        assert_eq!(f(&s["offered_rps"]), base_offered);
        assert!(f(&s["rps"]) < 2.0 * base_offered, "after step {s}");
    }
    assert_eq!(o.result["totals"]["not_2xx"], 0);
    assert_chart(&o.out.path().join("chart.png"));
}

#[test]
fn breaker_opens_on_a_failing_instance_and_errors_stop() {
    let o = scenario("load-breaker");
    assert!(o.passed, "{}", o.output);
    let steps = steps(&o.result);
    let healthy: Vec<f64> = steps
        .iter()
        .filter(|s| s["phase"] == "healthy")
        .map(|s| f(&s["error_rate"]))
        .collect();
    let failing: Vec<f64> = steps
        .iter()
        .filter(|s| s["phase"] == "b failing")
        .map(|s| f(&s["error_rate"]))
        .collect();
    assert!(
        healthy.iter().all(|e| *e == 0.0),
        "errors before b failed: {healthy:?}"
    );
    // Errors reach the clients once b fails (no retries on this route)...
    assert!(
        failing.iter().cloned().fold(0.0, f64::max) > 0.05,
        "{failing:?}"
    );
    // ...until its breaker opens; a half-open probe may fail one request.
    for e in &failing[failing.len() - 2..] {
        assert!(*e < 0.01, "errors went on: {failing:?}");
    }
    assert!(f(&o.result["breaker_opened"]) >= 1.0);
    assert_chart(&o.out.path().join("chart.png"));
}

#[test]
fn rate_limit_refuses_the_share_above_the_limit() {
    let o = scenario("load-rate-limit");
    assert!(o.passed, "{}", o.output);
    let offered = f(&o.result["parameters"]["offered_rps"]);
    let limit = f(&o.result["parameters"]["limit_per_s"]);
    let totals = &o.result["totals"];
    let requests = f(&totals["requests"]);
    let refused = f(&totals["statuses"]["429"]);
    let served = f(&totals["2xx"]);
    assert_eq!(refused + served, requests, "only 2xx and 429: {totals}");
    let expected = (offered - limit) / offered;
    let share = refused / requests;
    assert!(
        (share - expected).abs() < 0.05,
        "{share:.3} refused, expected {expected:.3}"
    );
    assert_chart(&o.out.path().join("chart.png"));
}
