//! The incident scenarios as an operator runs them, `gateway scenario NAME
//! --short`: each starts its own upstreams and gateway, checks its own
//! story (exit status 1 when it did not go its way), and these tests read
//! the numbers back from its `result.json` to hold the story's direction.

use crate::common::{num as f, run_scenario};
use serde_json::Value;

/// Runs the scenario, asserts it passed and kept its scrape, and returns
/// its `result.json`.
fn scenario(name: &str) -> Value {
    let run = run_scenario(name);
    assert!(run.passed, "{name} failed:\n{}", run.output);
    assert!(
        run.out.path().join("metrics.txt").exists(),
        "{name} kept no scrape"
    );
    assert_eq!(run.result["passed"], true, "{:#}", run.result);
    run.result
}

#[test]
fn black_friday_breakers_and_the_budget_stop_the_retry_storm() {
    let r = scenario("black-friday");
    let open = f(&r["unprotected"]["amplification"]);
    let guarded = f(&r["protected"]["amplification"]);
    let floor = f(&r["budget_floor_share"]);
    assert!(open > 1.5, "unprotected retries multiply the load: x{open}");
    assert!(
        guarded <= 1.2 + floor,
        "protected: x{guarded} over 1.2 + floor {floor}"
    );
    assert!(guarded < open);
    assert!(f(&r["protected"]["fail_fast_share"]) >= 0.5, "{r:#}");
    assert_eq!(f(&r["unprotected"]["fail_fast_share"]), 0.0);
    for phase in ["unprotected", "protected"] {
        let catalog = &r[phase]["catalog"];
        assert!(f(&catalog["count"]) > 0.0);
        assert_eq!(
            f(&catalog["2xx"]),
            f(&catalog["count"]),
            "{phase}: {catalog}"
        );
    }
}

#[test]
fn cascade_a_bulkhead_keeps_the_healthy_route_flat() {
    let r = scenario("cascade");
    let base = f(&r["baseline"]["catalog"]["p99_ms"]);
    let open = f(&r["unprotected"]["catalog"]["p99_ms"]);
    let guarded = f(&r["protected"]["catalog"]["p99_ms"]);
    assert!(base > 0.0);
    assert!(
        open > 2.0 * base,
        "unprotected p99 {open} vs baseline {base}"
    );
    assert!(
        guarded <= 2.0 * base,
        "protected p99 {guarded} vs baseline {base}"
    );
    assert_eq!(f(&r["protected"]["catalog"]["errors"]), 0.0);
    // The excess reports were shed, not queued.
    assert!(f(&r["protected"]["reports"]["5xx"]) > 0.0, "{r:#}");
}

#[test]
fn rate_limit_surge_refuses_only_the_surging_client() {
    let r = scenario("rate-limit-surge");
    assert!(f(&r["surger_429"]) > 0.0);
    assert_eq!(f(&r["others_429"]), 0.0);
    let limit = f(&r["parameters"]["per_client_limit"]);
    let first = f(&r["surger_first_429_after"]);
    assert!(
        (0.7 * limit..=1.4 * limit).contains(&first),
        "first 429 after {first} requests, limit {limit}"
    );
    assert!(f(&r["rejected_metric"]) >= f(&r["surger_429"]));
    assert_eq!(
        f(&r["others_during"]["2xx"]),
        f(&r["others_during"]["count"])
    );
}

#[test]
fn plugin_crash_fails_closed_on_its_route_only() {
    let r = scenario("plugin-crash");
    let checkout = &r["checkout"];
    assert!(f(&checkout["count"]) > 0.0);
    assert_eq!(
        f(&r["checkout_fail_closed"]),
        f(&checkout["count"]),
        "{r:#}"
    );
    assert_eq!(f(&r["others_failed"]), 0.0);
    for route in ["catalog", "search"] {
        assert!(f(&r[route]["count"]) > 0.0);
        assert_eq!(f(&r[route]["2xx"]), f(&r[route]["count"]));
    }
    assert!(f(&r["plugin_failures_metric"]) > 0.0);
    assert!(f(&r["suspensions_metric"]) >= 1.0);
    // Suspended, the filter stops running: fewer traps than requests.
    assert!(f(&r["traps_metric"]) >= 1.0);
    assert!(f(&r["traps_metric"]) < f(&checkout["count"]));
}

#[test]
fn reload_under_load_fails_no_request() {
    let r = scenario("reload-under-load");
    assert!(f(&r["requests"]) > 0.0);
    assert_eq!(f(&r["failed"]), 0.0, "{r:#}");
    assert!(f(&r["reloads_succeeded"]) >= 3.0);
    assert_eq!(f(&r["reloads_succeeded"]), f(&r["reloads_attempted"]));
    let swaps = r["reloads"]
        .as_array()
        .expect("the reloads")
        .iter()
        .filter(|x| x["what"] == "plugin file swapped" && x["plugin_file_serving"] == true)
        .count();
    assert!(swaps >= 1, "a plugin swap served: {r:#}");
    assert!(f(&r["generation"]) >= f(&r["reloads_succeeded"]));
}
