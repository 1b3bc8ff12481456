//! The classic incident, in miniature: a payments service turns slow and
//! failing, clients retry aggressively, and the gateway's own retries
//! multiply the load on it. A healthy catalog service sits behind the same
//! gateway. Run once with circuit breakers and the retry budget off, once
//! with them on, and compare what payments received.
//!
//! The assertions are on counts (amplification, fail-fast answers), never
//! on timing; the latencies are printed for the record:
//! `cargo test --release --test e2e cascade:: -- --nocapture`.

use crate::common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Client threads hammering payments, and how long the incident lasts.
const PAYMENT_CLIENTS: usize = 4;
const INCIDENT: Duration = Duration::from_secs(3);
/// Every client stops after this many requests, whatever the clock says.
const MAX_REQUESTS_PER_CLIENT: usize = 400;

struct Figures {
    client_requests: usize,
    payments_received: usize,
    failed_fast: usize,
    catalog_ms: Vec<f64>,
    payments_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn replay(protected: bool) -> Figures {
    let pay: Vec<Upstream> = (0..2).map(|_| Upstream::start("payments")).collect();
    let catalog = Upstream::start("catalog");
    let (breaker, budget) = if protected {
        (
            "consecutive_failures = 3\nfailure_rate = 0.0\ncool_down = \"500ms\"",
            "budget_ratio = 0.2\nbudget_floor_per_second = 1.0",
        )
    } else {
        // Breakers off and a budget too large to bind: retries unchecked.
        (
            "consecutive_failures = 0\nfailure_rate = 0.0",
            "budget_ratio = 1.0\nbudget_floor_per_second = 10000.0",
        )
    };
    let gw = Arc::new(Gateway::start(&format!(
        "[upstreams.payments]\ninstances = [\"{}\", \"{}\"]\n[upstreams.payments.breaker]\n{breaker}\n\n\
         [upstreams.catalog]\ninstances = [\"{}\"]\n\n\
         [[route]]\nid = \"payments\"\npath_prefix = \"/slow\"\nupstream = \"payments\"\ntimeout = \"2s\"\ntry_timeout = \"150ms\"\n\
         [route.retry]\nattempts = 4\non = [\"timeout\", \"503\"]\nbackoff_base = \"5ms\"\nbackoff_max = \"20ms\"\n{budget}\n\n\
         [[route]]\nid = \"catalog\"\npath_prefix = \"/catalog\"\nupstream = \"catalog\"\n",
        pay[0].addr, pay[1].addr, catalog.addr
    )));
    let payments_ms = Arc::new(Mutex::new(Vec::new()));
    let failed_fast = Arc::new(Mutex::new(0usize));
    let requests = Arc::new(Mutex::new(0usize));
    let end = Instant::now() + INCIDENT;
    // Payments answers after 100-300 ms with 503: slow and failing.
    let mut threads: Vec<_> = (0..PAYMENT_CLIENTS)
        .map(|c| {
            let (gw, ms, fast, n) = (
                gw.clone(),
                payments_ms.clone(),
                failed_fast.clone(),
                requests.clone(),
            );
            std::thread::spawn(move || {
                for k in 0..MAX_REQUESTS_PER_CLIENT {
                    if Instant::now() >= end {
                        break;
                    }
                    let delay = 100 + 50 * ((c + k) % 5);
                    let t = Instant::now();
                    let r = gw.get(&format!("/slow/{delay}/status/503"), &[]);
                    ms.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                    *n.lock().unwrap() += 1;
                    if r.header("x-gateway-error") == Some("all-breakers-open") {
                        *fast.lock().unwrap() += 1;
                    }
                    // The client retries at once too: aggressive.
                }
            })
        })
        .collect();
    let catalog_ms = Arc::new(Mutex::new(Vec::new()));
    {
        let (gw, ms) = (gw.clone(), catalog_ms.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..MAX_REQUESTS_PER_CLIENT {
                if Instant::now() >= end {
                    break;
                }
                let t = Instant::now();
                assert_eq!(gw.get("/catalog/item", &[]).status, 200);
                ms.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let mut catalog_ms = catalog_ms.lock().unwrap().clone();
    let mut payments_ms = payments_ms.lock().unwrap().clone();
    catalog_ms.sort_by(f64::total_cmp);
    payments_ms.sort_by(f64::total_cmp);
    let payments_received = pay.iter().map(Upstream::count).sum();
    let client_requests = *requests.lock().unwrap();
    let failed_fast = *failed_fast.lock().unwrap();
    Figures {
        client_requests,
        payments_received,
        failed_fast,
        catalog_ms,
        payments_ms,
    }
}

fn report(name: &str, f: &Figures) {
    println!(
        "{name}: {} client requests to payments, {} reached it (x{:.2}), {} failed fast; \
         payments p50 {:.0} ms p99 {:.0} ms; catalog p50 {:.1} ms p99 {:.1} ms ({} requests)",
        f.client_requests,
        f.payments_received,
        f.payments_received as f64 / f.client_requests.max(1) as f64,
        f.failed_fast,
        percentile(&f.payments_ms, 0.5),
        percentile(&f.payments_ms, 0.99),
        percentile(&f.catalog_ms, 0.5),
        percentile(&f.catalog_ms, 0.99),
        f.catalog_ms.len(),
    );
}

#[test]
fn breakers_and_the_retry_budget_stop_the_retry_storm() {
    let open = replay(false);
    report("unprotected", &open);
    let guarded = replay(true);
    report("protected", &guarded);

    // Unprotected, every client request costs payments up to four tries.
    let amplification = open.payments_received as f64 / open.client_requests as f64;
    assert!(
        amplification > 3.0,
        "retries multiply the load: x{amplification:.2}"
    );
    assert_eq!(open.failed_fast, 0);

    // Protected, payments sees at most about one try per request (retries
    // within 20% plus the floor), and most requests are answered at once.
    let bound = guarded.client_requests as f64 * 1.2 + INCIDENT.as_secs_f64() * 1.0 + 1.0;
    assert!(
        (guarded.payments_received as f64) <= bound,
        "{} tries for {} requests",
        guarded.payments_received,
        guarded.client_requests
    );
    assert!(
        guarded.failed_fast * 2 > guarded.client_requests,
        "breakers answer most requests at once: {} of {}",
        guarded.failed_fast,
        guarded.client_requests
    );
    // Failing fast frees the clients: they send more, payments gets less.
    assert!(guarded.payments_received < open.payments_received);
}
