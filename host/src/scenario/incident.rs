//! Incidents replayed on loopback, each as a before and after: what
//! happens without the gateway's protections and with them. Every scenario
//! checks its own story and fails (exit status 1) when it did not go the
//! way it should, so an operator running it sees the same verdict as the
//! tests.

use super::Options;
use super::harness::{
    Clients, Gateway, GatewayConfig, Sample, Summary, Table, Target, Upstream, closed_loop, hold,
    length, open_loop, percentile, round, share, tell,
};
use serde_json::json;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub async fn run(name: &str, options: &Options) -> anyhow::Result<()> {
    match name {
        "black-friday" => black_friday(options).await,
        "cascade" => cascade(options).await,
        "rate-limit-surge" => rate_limit_surge(options).await,
        "plugin-crash" => plugin_crash(options).await,
        "reload-under-load" => reload_under_load(options).await,
        _ => anyhow::bail!("{name} is not an incident scenario"),
    }
}

/// Pending requests at most in any open loop here: far above what the
/// rates need, low enough that a stalled gateway cannot exhaust memory.
const MAX_IN_FLIGHT: usize = 4000;

fn ms(x: f64) -> String {
    format!("{x:.1}")
}

// ---------------------------------------------------------------------
// black-friday
// ---------------------------------------------------------------------

/// Payments: 60% of answers are 503, each after 200 ms.
const PAYMENTS_FAILURE_SHARE: f64 = 0.6;
const PAYMENTS_LATENCY: Duration = Duration::from_millis(200);
const PAYMENTS_RPS: f64 = 40.0;
const CATALOG_RPS: f64 = 60.0;
/// Protected: retries may add this share of the route's requests...
const BUDGET_RATIO: f64 = 0.2;
/// ...plus this many a second.
const BUDGET_FLOOR_PER_SECOND: f64 = 1.0;

struct Shopping {
    /// Client tries sent to payments (client retries included).
    payments_sent: u64,
    payments_received: u64,
    payments: Summary,
    /// Payment requests that finally failed, and of those the ones an open
    /// breaker answered at once.
    payments_failed: u64,
    failed_fast: u64,
    /// How long the last try of a failed payment took (median).
    failure_p50_ms: f64,
    catalog: Summary,
    elapsed: Duration,
}

impl Shopping {
    fn amplification(&self) -> f64 {
        self.payments_received as f64 / self.payments_sent.max(1) as f64
    }

    fn fail_fast_share(&self) -> f64 {
        share(self.failed_fast, self.payments_failed)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "payments_client_requests": self.payments_sent,
            "payments_received": self.payments_received,
            "amplification": round(self.amplification(), 3),
            "payments_failed": self.payments_failed,
            "failed_fast": self.failed_fast,
            "fail_fast_share": round(self.fail_fast_share(), 3),
            "failure_p50_ms": round(self.failure_p50_ms, 2),
            "payments": self.payments.to_json(),
            "catalog": self.catalog.to_json(),
            "seconds": round(self.elapsed.as_secs_f64(), 2),
        })
    }
}

async fn black_friday(options: &Options) -> anyhow::Result<()> {
    let phase = length(options, Duration::from_secs(6), Duration::from_secs(45));
    let (open, _) = shopping(options, false, phase).await?;
    let (guarded, kept) = shopping(options, true, phase).await?;

    // The budget's floor, as a share of what clients sent: on top of the
    // ratio, the gateway may retry this many times a second however few
    // requests there were.
    let floor = BUDGET_FLOOR_PER_SECOND * guarded.elapsed.as_secs_f64()
        / guarded.payments_sent.max(1) as f64;
    let bound = 1.0 + BUDGET_RATIO + floor;
    let mut problems = Vec::new();
    if open.amplification() < 1.5 {
        problems.push(format!(
            "unprotected, retries should multiply the load on payments; it was x{:.2}",
            open.amplification()
        ));
    }
    if guarded.amplification() > bound {
        problems.push(format!(
            "protected amplification x{:.2} is over the budget's bound x{bound:.2}",
            guarded.amplification()
        ));
    }
    if guarded.amplification() >= open.amplification() {
        problems.push("protection did not lower the amplification".into());
    }
    if guarded.fail_fast_share() < 0.5 {
        problems.push(format!(
            "protected, most payment failures should be answered at once by an open breaker; {:.0}% were",
            guarded.fail_fast_share() * 100.0
        ));
    }
    for (phase, f) in [("unprotected", &open), ("protected", &guarded)] {
        if f.catalog.failures() > 0 {
            problems.push(format!(
                "{phase}: {} catalog requests failed",
                f.catalog.failures()
            ));
        }
    }
    let catalog_allowance = 2.0 * open.catalog.p99_ms.max(5.0);
    if guarded.catalog.p99_ms > catalog_allowance {
        problems.push(format!(
            "protected catalog p99 {:.1} ms is over twice the unprotected one",
            guarded.catalog.p99_ms
        ));
    }

    let mut table = Table::new(&[
        "phase",
        "pay sent",
        "pay received",
        "amplification",
        "pay failed",
        "fail-fast",
        "failure ms",
        "pay p50 ms",
        "pay p99 ms",
        "catalog p50 ms",
        "catalog p99 ms",
    ]);
    for (phase, f) in [("unprotected", &open), ("protected", &guarded)] {
        table.row(vec![
            phase.into(),
            f.payments_sent.to_string(),
            f.payments_received.to_string(),
            format!("x{:.2}", f.amplification()),
            f.payments_failed.to_string(),
            format!("{:.0}%", f.fail_fast_share() * 100.0),
            ms(f.failure_p50_ms),
            ms(f.payments.p50_ms),
            ms(f.payments.p99_ms),
            ms(f.catalog.p50_ms),
            ms(f.catalog.p99_ms),
        ]);
    }
    let story = vec![
        format!(
            "Black Friday: payments turns slow ({} ms) and fails {:.0}% of requests; clients retry up to 3 times on errors.",
            PAYMENTS_LATENCY.as_millis(),
            PAYMENTS_FAILURE_SHARE * 100.0
        ),
        format!(
            "Unprotected (gateway retries up to 4 tries, no budget, no breaker), every request clients sent cost payments x{:.2}.",
            open.amplification()
        ),
        format!(
            "Protected (breakers, a retry budget of {:.0}% + {BUDGET_FLOOR_PER_SECOND}/s, tight timeouts): x{:.2} (bound x{bound:.2}: 1 + ratio + floor {floor:.3}), and {:.0}% of failures came back at once from an open breaker: a failed payment took {:.1} ms (median) instead of {:.0} ms.",
            BUDGET_RATIO * 100.0,
            guarded.amplification(),
            guarded.fail_fast_share() * 100.0,
            guarded.failure_p50_ms,
            open.failure_p50_ms
        ),
        format!(
            "The catalog stayed served throughout: p99 {:.1} ms unprotected, {:.1} ms protected.",
            open.catalog.p99_ms, guarded.catalog.p99_ms
        ),
    ];
    let result = json!({
        "unprotected": open.to_json(),
        "protected": guarded.to_json(),
        "amplification_bound": round(bound, 3),
        "budget_floor_share": round(floor, 4),
        "parameters": {
            "phase_seconds": phase.as_secs_f64(),
            "payments_rps": PAYMENTS_RPS,
            "catalog_rps": CATALOG_RPS,
            "payments_failure_share": PAYMENTS_FAILURE_SHARE,
            "payments_latency_ms": PAYMENTS_LATENCY.as_millis() as u64,
            "client_tries": 3,
            "budget_ratio": BUDGET_RATIO,
            "budget_floor_per_second": BUDGET_FLOOR_PER_SECOND,
        },
    });
    let told = tell(options, "black-friday", &story, &table, result, &problems);
    hold(options, &kept.gateway).await?;
    told
}

/// A phase's gateway and upstreams, kept running for `--hold`.
struct Kept {
    gateway: Gateway,
    _upstreams: Vec<Upstream>,
}

async fn shopping(
    options: &Options,
    protected: bool,
    phase: Duration,
) -> anyhow::Result<(Shopping, Kept)> {
    let mut payments = Vec::new();
    for _ in 0..2 {
        let p = Upstream::start("payments").await?;
        p.set_latency(PAYMENTS_LATENCY);
        p.set_failures(PAYMENTS_FAILURE_SHARE, 503);
        payments.push(p);
    }
    let catalog = Upstream::start("catalog").await?;
    catalog.set_latency(Duration::from_millis(2));
    let (breaker, route, retry) = if protected {
        (
            // Opens on five failures in a row or half failing over ten
            // requests; stays open for 1 s, doubling while it keeps failing.
            "consecutive_failures = 5\nfailure_rate = 0.5\nmin_requests = 10\ncool_down = \"1s\"",
            "timeout = \"1s\"\ntry_timeout = \"400ms\"",
            format!(
                "attempts = 2\non = [\"connect\", \"reset\", \"timeout\", \"503\"]\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\nbudget_ratio = {BUDGET_RATIO}\nbudget_floor_per_second = {BUDGET_FLOOR_PER_SECOND}"
            ),
        )
    } else {
        (
            // Breakers off, and a budget too large to ever bind.
            "consecutive_failures = 0\nfailure_rate = 0.0",
            "timeout = \"10s\"\ntry_timeout = \"2s\"",
            "attempts = 4\non = [\"connect\", \"reset\", \"timeout\", \"503\"]\nbackoff_base = \"5ms\"\nbackoff_max = \"20ms\"\nbudget_ratio = 1.0\nbudget_floor_per_second = 10000.0".to_string(),
        )
    };
    let body = format!(
        "[upstreams.payments]\ninstances = [\"{}\", \"{}\"]\n\n[upstreams.payments.breaker]\n{breaker}\n\n\
         [upstreams.catalog]\ninstances = [\"{}\"]\n\n\
         [[route]]\nid = \"payments\"\npath_prefix = \"/payments\"\nupstream = \"payments\"\n{route}\n\n\
         [route.retry]\n{retry}\n\n\
         [[route]]\nid = \"catalog\"\npath_prefix = \"/catalog\"\nupstream = \"catalog\"\n",
        payments[0].addr, payments[1].addr, catalog.addr
    );
    let gateway = Gateway::start_plain(options, &body).await?;
    let targets = [
        Target::new("payments", "/payments/charge").weight(PAYMENTS_RPS as u32),
        Target::new("catalog", "/catalog/item").weight(CATALOG_RPS as u32),
    ];
    let clients = Clients {
        timeout: Duration::from_secs(3),
        tries: 3,
    };
    let run = open_loop(
        gateway.listen,
        &targets,
        PAYMENTS_RPS + CATALOG_RPS,
        phase,
        &clients,
        MAX_IN_FLIGHT,
    )
    .await;
    gateway.scrape().await?;
    let pay = Summary::route(&run, "payments");
    let failed: Vec<&Sample> = run
        .samples
        .iter()
        .filter(|s| s.route == "payments" && !(200..400).contains(&s.status))
        .collect();
    let failed_fast = failed
        .iter()
        .filter(|s| s.gateway_error.as_deref() == Some("all-breakers-open"))
        .count() as u64;
    let mut failure_ms: Vec<f64> = failed
        .iter()
        .map(|s| s.last_try.as_secs_f64() * 1e3)
        .collect();
    failure_ms.sort_by(f64::total_cmp);
    let shopping = Shopping {
        failure_p50_ms: percentile(&failure_ms, 0.5),
        payments_sent: pay.sent,
        payments_received: payments.iter().map(Upstream::received).sum(),
        payments_failed: failed.len() as u64,
        failed_fast,
        payments: pay,
        catalog: Summary::route(&run, "catalog"),
        elapsed: run.elapsed,
    };
    payments.push(catalog);
    Ok((
        shopping,
        Kept {
            gateway,
            _upstreams: payments,
        },
    ))
}

// ---------------------------------------------------------------------
// cascade
// ---------------------------------------------------------------------

/// The app's workers: requests it serves at once, the rest queue.
const APP_WORKERS: usize = 8;
/// Reports may use at most this many of them when protected.
const REPORTS_SHARE_OF_WORKERS: usize = 4;
const CATALOG_LATENCY: Duration = Duration::from_millis(10);
/// The reports' database turned slow.
const REPORTS_LATENCY: Duration = Duration::from_millis(500);
const CASCADE_CATALOG_RPS: f64 = 100.0;
const CASCADE_REPORTS_RPS: f64 = 30.0;

async fn cascade(options: &Options) -> anyhow::Result<()> {
    let phase = length(options, Duration::from_secs(4), Duration::from_secs(40));
    let (baseline, _) = shared_app(options, None, phase).await?;
    let (open, _) = shared_app(options, Some(false), phase).await?;
    let (guarded, kept) = shared_app(options, Some(true), phase).await?;

    let base = baseline.catalog.p99_ms;
    let mut problems = Vec::new();
    if open.catalog.p99_ms <= 2.0 * base {
        problems.push(format!(
            "unprotected, the slow reports should have dragged the catalog's p99 ({:.1} ms) above twice its baseline ({base:.1} ms)",
            open.catalog.p99_ms
        ));
    }
    if guarded.catalog.p99_ms > 2.0 * base {
        problems.push(format!(
            "protected, the catalog's p99 {:.1} ms is over twice its baseline {base:.1} ms",
            guarded.catalog.p99_ms
        ));
    }
    if guarded.catalog.failures() > 0 {
        problems.push(format!(
            "protected, {} catalog requests failed",
            guarded.catalog.failures()
        ));
    }
    let mut table = Table::new(&[
        "phase",
        "catalog p50 ms",
        "catalog p99 ms",
        "catalog failed",
        "reports ok",
        "reports shed",
        "reports p99 ms",
        "app queue peak",
    ]);
    for (name, p) in [
        ("baseline", &baseline),
        ("unprotected", &open),
        ("protected", &guarded),
    ] {
        table.row(vec![
            name.into(),
            ms(p.catalog.p50_ms),
            ms(p.catalog.p99_ms),
            p.catalog.failures().to_string(),
            p.reports.classes[2].to_string(),
            (p.reports.count - p.reports.classes[2]).to_string(),
            ms(p.reports.p99_ms),
            p.peak_waiting.to_string(),
        ]);
    }
    let story = vec![
        format!(
            "One app instance with {APP_WORKERS} workers serves /catalog ({} ms) and /reports, whose database turns slow ({} ms).",
            CATALOG_LATENCY.as_millis(),
            REPORTS_LATENCY.as_millis()
        ),
        format!("Baseline, the catalog alone at {CASCADE_CATALOG_RPS} rps: p99 {base:.1} ms."),
        format!(
            "Unprotected, {CASCADE_REPORTS_RPS} reports a second take every worker and the catalog queues behind them: p99 {:.1} ms ({:.1}x), {} failed. It wasn't the database: the catalog never touches it.",
            open.catalog.p99_ms,
            open.catalog.p99_ms / base.max(0.001),
            open.catalog.failures()
        ),
        format!(
            "Protected (reports limited to {REPORTS_SHARE_OF_WORKERS} connections per instance, a breaker, timeouts and a retry budget), the excess reports are shed at the gateway and the catalog's p99 is {:.1} ms ({:.1}x baseline).",
            guarded.catalog.p99_ms,
            guarded.catalog.p99_ms / base.max(0.001)
        ),
    ];
    let result = json!({
        "baseline": baseline.to_json(),
        "unprotected": open.to_json(),
        "protected": guarded.to_json(),
        "baseline_catalog_p99_ms": round(base, 2),
        "unprotected_ratio": round(open.catalog.p99_ms / base.max(0.001), 2),
        "protected_ratio": round(guarded.catalog.p99_ms / base.max(0.001), 2),
        "parameters": {
            "phase_seconds": phase.as_secs_f64(),
            "app_workers": APP_WORKERS,
            "reports_max_connections_per_instance": REPORTS_SHARE_OF_WORKERS,
            "catalog_latency_ms": CATALOG_LATENCY.as_millis() as u64,
            "reports_latency_ms": REPORTS_LATENCY.as_millis() as u64,
            "catalog_rps": CASCADE_CATALOG_RPS,
            "reports_rps": CASCADE_REPORTS_RPS,
        },
    });
    let told = tell(options, "cascade", &story, &table, result, &problems);
    hold(options, &kept.gateway).await?;
    told
}

struct SharedApp {
    catalog: Summary,
    reports: Summary,
    peak_waiting: usize,
}

impl SharedApp {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "catalog": self.catalog.to_json(),
            "reports": self.reports.to_json(),
            "app_queue_peak": self.peak_waiting,
        })
    }
}

/// One phase on a fresh app instance: the catalog alone (`None`), or with
/// the slow reports through an unprotected or a protected configuration.
async fn shared_app(
    options: &Options,
    protected: Option<bool>,
    phase: Duration,
) -> anyhow::Result<(SharedApp, Kept)> {
    let app = Upstream::start("app").await?;
    app.set_capacity(APP_WORKERS);
    app.set_latency(CATALOG_LATENCY);
    app.set_path_latency("/reports", REPORTS_LATENCY);
    let body = if protected == Some(true) {
        // Two upstreams naming the same instance: a bulkhead. Reports may
        // hold only part of the app's workers; when they are all busy the
        // gateway answers 503 pool-exhausted at once instead of queueing.
        format!(
            "[upstreams.catalog]\ninstances = [\"{app}\"]\n\n\
             [upstreams.reports]\ninstances = [\"{app}\"]\nmax_connections_per_instance = {REPORTS_SHARE_OF_WORKERS}\n\n\
             [upstreams.reports.breaker]\nconsecutive_failures = 5\nfailure_rate = 0.5\nmin_requests = 10\ncool_down = \"1s\"\n\n\
             [[route]]\nid = \"catalog\"\npath_prefix = \"/catalog\"\nupstream = \"catalog\"\ntimeout = \"2s\"\n\n\
             [[route]]\nid = \"reports\"\npath_prefix = \"/reports\"\nupstream = \"reports\"\ntimeout = \"1s\"\ntry_timeout = \"800ms\"\n\n\
             [route.retry]\nattempts = 2\non = [\"connect\", \"reset\"]\nbudget_ratio = 0.2\nbudget_floor_per_second = 1.0\n",
            app = app.addr
        )
    } else {
        // One upstream for both routes, no limit below the default, the
        // default 30 s request timeout: what a first configuration looks like.
        format!(
            "[upstreams.app]\ninstances = [\"{app}\"]\n\n\
             [[route]]\nid = \"catalog\"\npath_prefix = \"/catalog\"\nupstream = \"app\"\n\n\
             [[route]]\nid = \"reports\"\npath_prefix = \"/reports\"\nupstream = \"app\"\n",
            app = app.addr
        )
    };
    let gateway = Gateway::start_plain(options, &body).await?;
    let mut targets =
        vec![Target::new("catalog", "/catalog/item").weight(CASCADE_CATALOG_RPS as u32)];
    let mut rate = CASCADE_CATALOG_RPS;
    if protected.is_some() {
        targets.push(Target::new("reports", "/reports/daily").weight(CASCADE_REPORTS_RPS as u32));
        rate += CASCADE_REPORTS_RPS;
    }
    let clients = Clients {
        timeout: Duration::from_secs(2),
        tries: 1,
    };
    let run = open_loop(
        gateway.listen,
        &targets,
        rate,
        phase,
        &clients,
        MAX_IN_FLIGHT,
    )
    .await;
    gateway.scrape().await?;
    let phase = SharedApp {
        catalog: Summary::route(&run, "catalog"),
        reports: Summary::route(&run, "reports"),
        peak_waiting: app.peak_waiting(),
    };
    Ok((
        phase,
        Kept {
            gateway,
            _upstreams: vec![app],
        },
    ))
}

// ---------------------------------------------------------------------
// rate-limit-surge
// ---------------------------------------------------------------------

/// Requests a second each client may send.
const PER_CLIENT_LIMIT: u32 = 20;
const SURGE_RPS: f64 = 200.0;
const SURGE_CONNECTIONS: usize = 10;
const SURGE_PAUSE: Duration = Duration::from_millis(50);
/// Each well-behaved client, at half its limit.
const CALM_RPS: f64 = 10.0;
const CALM_CLIENTS: u8 = 3;

async fn rate_limit_surge(options: &Options) -> anyhow::Result<()> {
    let calm_phase = length(options, Duration::from_secs(3), Duration::from_secs(15));
    let surge_phase = length(options, Duration::from_secs(6), Duration::from_secs(60));
    let api = Upstream::start("api").await?;
    api.set_latency(Duration::from_millis(2));
    let body = format!(
        "[upstreams.api]\ninstances = [\"{}\"]\n\n\
         [filters.ratelimit]\nplugin = \"ratelimit\"\n\n\
         [[filters.ratelimit.config.limits]]\nname = \"per-client\"\nrequests = {PER_CLIENT_LIMIT}\nwindow = \"1s\"\nkey = \"client\"\n\n\
         [[route]]\nid = \"api\"\npath_prefix = \"/api\"\nupstream = \"api\"\nfilters = [\"ratelimit\"]\n",
        api.addr
    );
    let gateway = Gateway::start_plain(options, &body).await?;
    // Each client from its own loopback address, as the limit counts by
    // client address.
    let calm: Vec<Target> = (0..CALM_CLIENTS)
        .map(|i| {
            Target::new(&format!("client-{}", i + 1), "/api/orders").source(IpAddr::from([
                127,
                0,
                0,
                11 + i,
            ]))
        })
        .collect();
    let surger = Target::new("surger", "/api/orders").source(IpAddr::from([127, 0, 0, 10]));
    let clients = Clients::default();
    let calm_rate = CALM_RPS * f64::from(CALM_CLIENTS);

    // Before: the calm clients alone.
    let before = open_loop(
        gateway.listen,
        &calm,
        calm_rate,
        calm_phase,
        &clients,
        MAX_IN_FLIGHT,
    )
    .await;
    // The surge: each calm client keeps its own rate alongside.
    let (during, surge) = tokio::join!(
        open_loop(
            gateway.listen,
            &calm,
            calm_rate,
            surge_phase,
            &clients,
            MAX_IN_FLIGHT
        ),
        // The surging client hammers as fast as its connections answer:
        // SURGE_CONNECTIONS at once, each pausing SURGE_PAUSE between
        // requests (about SURGE_RPS while the gateway answers at once).
        closed_loop(
            gateway.listen,
            std::slice::from_ref(&surger),
            SURGE_CONNECTIONS,
            SURGE_PAUSE,
            surge_phase,
            &clients,
        ),
    );
    let scrape = gateway.scrape().await?;
    let rejected_metric = scrape
        .value(
            "gateway_plugin_ratelimit_requests_total",
            &[("result", "rejected")],
        )
        .unwrap_or(0.0);

    let calm_before = Summary::of(&before.samples, before.elapsed);
    let calm_during = Summary::of(&during.samples, during.elapsed);
    let surged = Summary::of(&surge.samples, surge.elapsed);
    let served_rps = surged.classes[2] as f64 / surge.elapsed.as_secs_f64();
    let mut problems = Vec::new();
    if surged.status(429) == 0 {
        problems.push("the surging client got no 429".into());
    }
    // The limit bites at the limit: the first refusal comes after about
    // `PER_CLIENT_LIMIT` requests were let through. Refused requests count
    // too (a client that keeps hammering stays refused), so over the whole
    // surge it is served at most its limit a second, usually far less.
    let first_refused = surge.samples.iter().position(|s| s.status == 429);
    let (low, high) = (
        (0.7 * f64::from(PER_CLIENT_LIMIT)) as usize,
        (1.4 * f64::from(PER_CLIENT_LIMIT)) as usize,
    );
    if !first_refused.is_some_and(|n| (low..=high).contains(&n)) {
        problems.push(format!(
            "the surging client's first 429 came after {first_refused:?} requests, not about its limit of {PER_CLIENT_LIMIT}"
        ));
    }
    let most = f64::from(PER_CLIENT_LIMIT) * (surge.elapsed.as_secs_f64() + 1.0);
    if surged.classes[2] as f64 > most {
        problems.push(format!(
            "the surging client was served {} requests, more than its limit allows ({most:.0})",
            surged.classes[2]
        ));
    }
    let calm_429 = calm_before.status(429) + calm_during.status(429);
    if calm_429 > 0 {
        problems.push(format!("the calm clients got {calm_429} 429s"));
    }
    if calm_during.failures() > 0 {
        problems.push(format!(
            "{} calm requests failed during the surge",
            calm_during.failures()
        ));
    }
    // "Unchanged" allows for scheduling noise on a busy machine: within
    // twice the calm p99, or 10 ms of it.
    let allowance = (2.0 * calm_before.p99_ms).max(calm_before.p99_ms + 10.0);
    if calm_during.p99_ms > allowance {
        problems.push(format!(
            "the calm clients' p99 went from {:.1} ms to {:.1} ms during the surge",
            calm_before.p99_ms, calm_during.p99_ms
        ));
    }
    if (rejected_metric as u64) < surged.status(429) {
        problems.push(format!(
            "the gateway counted {rejected_metric} rejections, clients saw {} 429s",
            surged.status(429)
        ));
    }

    let mut table = Table::new(&[
        "client", "phase", "rps sent", "2xx", "429", "p50 ms", "p99 ms",
    ]);
    let mut per_client = serde_json::Map::new();
    for (phase, run) in [("calm", &before), ("surge", &during)] {
        for t in &calm {
            let s = Summary::route(run, &t.route);
            table.row(vec![
                t.route.clone(),
                phase.into(),
                format!("{:.1}", s.rps),
                s.classes[2].to_string(),
                s.status(429).to_string(),
                ms(s.p50_ms),
                ms(s.p99_ms),
            ]);
            per_client.insert(format!("{}/{phase}", t.route), s.to_json());
        }
    }
    table.row(vec![
        "surger".into(),
        "surge".into(),
        format!("{:.1}", surged.rps),
        surged.classes[2].to_string(),
        surged.status(429).to_string(),
        ms(surged.p50_ms),
        ms(surged.p99_ms),
    ]);
    let story = vec![
        format!(
            "{CALM_CLIENTS} clients send {CALM_RPS} requests a second each through the shipped ratelimit filter ({PER_CLIENT_LIMIT} a second per client address)."
        ),
        format!(
            "Then one client surges to about {SURGE_RPS} a second ({:.0} measured, {SURGE_CONNECTIONS} connections hammering): its first {} requests pass, then it gets 429s ({} in all; the gateway counted {rejected_metric}). Its refused requests count too, so while it keeps hammering it stays refused: {served_rps:.1} served a second over the surge.",
            surged.rps,
            first_refused.unwrap_or(0),
            surged.status(429)
        ),
        format!(
            "The others got {calm_429} 429s; their p99 was {:.1} ms before and {:.1} ms during the surge.",
            calm_before.p99_ms, calm_during.p99_ms
        ),
    ];
    let result = json!({
        "surger": surged.to_json(),
        "surger_served_rps": round(served_rps, 2),
        "surger_first_429_after": first_refused,
        "surger_429": surged.status(429),
        "others_429": calm_429,
        "others_before": calm_before.to_json(),
        "others_during": calm_during.to_json(),
        "per_client": per_client,
        "rejected_metric": rejected_metric,
        "parameters": {
            "per_client_limit": PER_CLIENT_LIMIT,
            "surge_rps_aimed": SURGE_RPS,
            "surge_connections": SURGE_CONNECTIONS,
            "surge_pause_ms": SURGE_PAUSE.as_millis() as u64,
            "calm_rps_each": CALM_RPS,
            "calm_clients": CALM_CLIENTS,
            "calm_seconds": calm_phase.as_secs_f64(),
            "surge_seconds": surge_phase.as_secs_f64(),
        },
    });
    let told = tell(
        options,
        "rate-limit-surge",
        &story,
        &table,
        result,
        &problems,
    );
    hold(options, &gateway).await?;
    told
}

// ---------------------------------------------------------------------
// plugin-crash
// ---------------------------------------------------------------------

/// A filter whose every request call traps (`unreachable`), as a filter
/// with a bug the first real request hits. Its `configure` succeeds, so
/// the gateway loads it.
const TRAPPING_FILTER: &str = r#"
(module
  (import "gateway:filter/types@0.1.0" "[resource-drop]request"
    (func $drop_request (param i32)))
  (import "gateway:filter/types@0.1.0" "[resource-drop]response"
    (func $drop_response (param i32)))
  (memory (export "memory") 1)
  (func (export "cabi_realloc")
    (param i32) (param i32) (param i32) (param i32) (result i32)
    (i32.const 1024))
  (func (export "gateway:filter/filter@0.1.0#configure")
    (param i32) (param i32) (result i32)
    (i32.store8 (i32.const 320) (i32.const 0))
    (i32.const 320))
  (func (export "gateway:filter/filter@0.1.0#on-request") (param i32) (result i32)
    unreachable)
  (func (export "gateway:filter/filter@0.1.0#on-response")
    (param $req i32) (param $resp i32) (result i32)
    (call $drop_request (local.get $req))
    (call $drop_response (local.get $resp))
    (i32.store8 (i32.const 288) (i32.const 0))
    (i32.const 288))
)
"#;

const CRASH_STATUS: u16 = 503;

/// A plugin folder of the scenario's own under `<out>/plugins`, holding
/// the shipped `headers.wasm` and what `more` adds.
fn own_plugins(options: &Options, more: &[(&str, Vec<u8>)]) -> anyhow::Result<PathBuf> {
    let dir = options.out.join("plugins");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let headers = options.plugins.join("headers.wasm");
    std::fs::copy(&headers, dir.join("headers.wasm")).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (build the plugins with `make plugins`, or pass --plugins)",
            headers.display()
        )
    })?;
    for (name, bytes) in more {
        std::fs::write(dir.join(format!("{name}.wasm")), bytes)?;
    }
    Ok(dir)
}

async fn plugin_crash(options: &Options) -> anyhow::Result<()> {
    let phase = length(options, Duration::from_secs(6), Duration::from_secs(60));
    let component = crate::plugin::inspect::componentize(TRAPPING_FILTER.as_bytes())
        .map_err(|e| anyhow::anyhow!("componentizing the trapping filter: {e}"))?;
    let plugins = own_plugins(options, &[("trapping", component)])?;
    let shop = Upstream::start("shop").await?;
    shop.set_latency(Duration::from_millis(2));
    let body = format!(
        "[upstreams.shop]\ninstances = [\"{}\"]\n\n\
         [filters.headers]\nplugin = \"headers\"\n\n\
         [filters.headers.config]\nadd_response = {{ \"x-content-type-options\" = \"nosniff\" }}\n\n\
         [filters.checkout-rules]\nplugin = \"trapping\"\nfailure = \"fail-closed\"\nfailure_status = {CRASH_STATUS}\n\n\
         [[route]]\nid = \"checkout\"\npath_prefix = \"/checkout\"\nupstream = \"shop\"\nfilters = [\"headers\", \"checkout-rules\"]\n\n\
         [[route]]\nid = \"catalog\"\npath_prefix = \"/catalog\"\nupstream = \"shop\"\nfilters = [\"headers\"]\n\n\
         [[route]]\nid = \"search\"\npath_prefix = \"/search\"\nupstream = \"shop\"\n",
        shop.addr
    );
    let gateway = Gateway::start(
        options,
        &GatewayConfig {
            plugins: &plugins,
            server: "",
            body: &body,
        },
    )
    .await?;
    let targets = [
        Target::new("checkout", "/checkout/cart"),
        Target::new("catalog", "/catalog/item"),
        Target::new("search", "/search?q=shoes"),
    ];
    let run = open_loop(
        gateway.listen,
        &targets,
        150.0,
        phase,
        &Clients::default(),
        MAX_IN_FLIGHT,
    )
    .await;
    let scrape = gateway.scrape().await?;
    let failures = |reason: &str| {
        scrape
            .value(
                "gateway_plugin_failures_total",
                &[("filter", "checkout-rules"), ("reason", reason)],
            )
            .unwrap_or(0.0)
    };
    // Calls that ran and trapped, and calls the suspension answered
    // without making an instance.
    let (traps, answered_suspended) = (failures("trap"), failures("suspended"));
    let failures_metric = scrape
        .value(
            "gateway_plugin_failures_total",
            &[("filter", "checkout-rules")],
        )
        .unwrap_or(0.0);
    let suspensions = scrape
        .value(
            "gateway_plugin_suspensions_total",
            &[("filter", "checkout-rules")],
        )
        .unwrap_or(0.0);
    let logged_suspensions = gateway
        .log()
        .lines()
        .filter(|l| l.contains("filter suspended") && l.contains("checkout-rules"))
        .count();
    let (_, plugins_page) = gateway.admin_get("/admin/plugins").await?;

    let checkout = Summary::route(&run, "checkout");
    let catalog = Summary::route(&run, "catalog");
    let search = Summary::route(&run, "search");
    let fail_closed = checkout.status(CRASH_STATUS);
    let mut problems = Vec::new();
    if checkout.count == 0 || fail_closed != checkout.count {
        problems.push(format!(
            "the checkout route should answer {CRASH_STATUS} to all {} requests; {fail_closed} did",
            checkout.count
        ));
    }
    for (name, s) in [("catalog", &catalog), ("search", &search)] {
        if s.count == 0 || s.failures() > 0 {
            problems.push(format!("{name}: {} of {} failed", s.failures(), s.count));
        }
    }
    if failures_metric < 1.0 {
        problems.push("gateway_plugin_failures_total did not count the traps".into());
    }
    if suspensions < 1.0 || logged_suspensions == 0 {
        problems.push(format!(
            "the trapping filter should be suspended as a crash loop: {suspensions} counted, {logged_suspensions} logged"
        ));
    } else if traps >= checkout.count as f64 {
        problems.push(format!(
            "suspended, the filter should not run: {traps} traps for {} requests",
            checkout.count
        ));
    }
    let mut table = Table::new(&[
        "route",
        "requests",
        "2xx",
        "fail-closed",
        "other",
        "p50 ms",
        "p99 ms",
    ]);
    for (name, s) in [
        ("checkout", &checkout),
        ("catalog", &catalog),
        ("search", &search),
    ] {
        let closed = s.status(CRASH_STATUS);
        table.row(vec![
            name.into(),
            s.count.to_string(),
            s.classes[2].to_string(),
            closed.to_string(),
            (s.count - s.classes[2] - closed).to_string(),
            ms(s.p50_ms),
            ms(s.p99_ms),
        ]);
    }
    let story = vec![
        "A filter with a bug (its every call traps) is deployed on /checkout; /catalog runs the shipped headers filter, /search none.".into(),
        format!(
            "Checkout answered {fail_closed} of {} requests with {CRASH_STATUS} (fail-closed): a broken filter refuses, it does not wave requests through.",
            checkout.count
        ),
        format!(
            "The other routes served {} and {} requests with {} failures: a trap ends one call in one instance, nothing else.",
            catalog.count,
            search.count,
            catalog.failures() + search.failures()
        ),
        format!(
            "The gateway counted {failures_metric} filter failures: {traps} calls ran and trapped, then the crash loop was caught and the filter suspended {suspensions} times (each logged), so {answered_suspended} requests were refused at once without running it."
        ),
    ];
    let plugins_json: serde_json::Value =
        serde_json::from_str(&plugins_page).unwrap_or(serde_json::Value::Null);
    let result = json!({
        "checkout": checkout.to_json(),
        "catalog": catalog.to_json(),
        "search": search.to_json(),
        "checkout_fail_closed": fail_closed,
        "others_failed": catalog.failures() + search.failures(),
        "plugin_failures_metric": failures_metric,
        "suspensions_metric": suspensions,
        "suspensions_logged": logged_suspensions,
        "traps_metric": traps,
        "answered_while_suspended_metric": answered_suspended,
        "admin_plugins": plugins_json,
        "parameters": {
            "seconds": phase.as_secs_f64(),
            "rps": 150,
            "failure_status": CRASH_STATUS,
        },
    });
    let told = tell(options, "plugin-crash", &story, &table, result, &problems);
    hold(options, &gateway).await?;
    told
}

// ---------------------------------------------------------------------
// reload-under-load
// ---------------------------------------------------------------------

const RELOAD_RPS: f64 = 150.0;

/// The configuration of reload number `n`: the headers filter adds a
/// response header naming it, and every other one lists a second instance.
fn reload_body(n: usize, a: &Upstream, b: &Upstream) -> String {
    let instances = if n.is_multiple_of(2) {
        format!("\"{}\"", a.addr)
    } else {
        format!("\"{}\", \"{}\"", a.addr, b.addr)
    };
    format!(
        "[reload]\nwatch = true\ndebounce = \"100ms\"\n\n\
         [upstreams.api]\ninstances = [{instances}]\n\n\
         [filters.headers]\nplugin = \"headers\"\n\n\
         [filters.headers.config]\nadd_response = {{ \"x-config-version\" = \"{n}\" }}\n\n\
         [[route]]\nid = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"api\"\nfilters = [\"headers\"]\n\n\
         [[route]]\nid = \"status\"\npath_prefix = \"/status\"\nupstream = \"api\"\n"
    )
}

/// `component` with a custom section holding `n` appended: the same code
/// under a new content hash, so the gateway takes it as a new version and
/// compiles it (a deploy of a rebuilt plugin).
fn new_version(component: &[u8], n: usize) -> Vec<u8> {
    fn leb128(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"scenario-version";
    let mut section = Vec::new();
    leb128(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&n.to_le_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb128(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// Replaces `path` by writing beside it and renaming, as deploy tools do.
fn swap_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("wasm.partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Reload {
    at: Duration,
    what: String,
    status: u16,
    generation: Option<u64>,
    error: Option<String>,
    /// `x-config-version` of an answer right after: the configuration serving.
    config_version: Option<usize>,
    /// The headers plugin loaded is the file now in the folder.
    plugin_taken: bool,
    /// The configuration written last.
    wanted_version: usize,
}

async fn reload_under_load(options: &Options) -> anyhow::Result<()> {
    let total = length(options, Duration::from_secs(12), Duration::from_secs(90));
    // Quiet time before the first reload (the "before" figures) and after
    // the last one.
    let quiet = total / 6;
    let reloads: usize = if options.short { 6 } else { 20 };
    let every = (total - 2 * quiet) / reloads as u32;
    let plugins = own_plugins(options, &[])?;
    let headers = std::fs::read(plugins.join("headers.wasm"))?;
    let a = Upstream::start("api-a").await?;
    let b = Upstream::start("api-b").await?;
    let body = reload_body(0, &a, &b);
    fn config<'a>(plugins: &'a Path, body: &'a str) -> GatewayConfig<'a> {
        GatewayConfig {
            plugins,
            server: "",
            body,
        }
    }
    let gateway = Gateway::start(options, &config(&plugins, &body)).await?;
    let targets = [
        Target::new("orders", "/orders/42"),
        Target::new("status", "/status"),
    ];
    let clients = Clients::default();
    let started = Instant::now();
    let load = open_loop(
        gateway.listen,
        &targets,
        RELOAD_RPS,
        total,
        &clients,
        MAX_IN_FLIGHT,
    );
    let reloading = async {
        let mut done: Vec<Reload> = Vec::new();
        let mut config_version = 0;
        tokio::time::sleep(quiet).await;
        for n in 1..=reloads {
            let at = started.elapsed();
            // Every third reload deploys a new build of the headers plugin;
            // the others change the configuration file.
            let what = if n.is_multiple_of(3) {
                swap_file(&plugins.join("headers.wasm"), &new_version(&headers, n))?;
                "plugin file swapped".to_string()
            } else {
                config_version = n;
                gateway.rewrite(&config(&plugins, &reload_body(n, &a, &b)))?;
                format!(
                    "config rewritten ({} instance{})",
                    1 + n % 2,
                    if !n.is_multiple_of(2) { "s" } else { "" }
                )
            };
            let (status, answer) = gateway.reload().await?;
            let answer: serde_json::Value =
                serde_json::from_str(&answer).unwrap_or(serde_json::Value::Null);
            // What serves now: the header the configuration names, and the
            // hash of the headers plugin loaded.
            let marked = gateway.get("/orders/42").await?;
            let (_, page) = gateway.admin_get("/admin/plugins").await?;
            let page: serde_json::Value =
                serde_json::from_str(&page).unwrap_or(serde_json::Value::Null);
            let loaded_sha = page["plugins"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "headers"))
                .and_then(|p| p["sha256"].as_str())
                .map(String::from);
            done.push(Reload {
                at,
                what,
                status,
                generation: answer["generation"].as_u64(),
                error: answer["error"].as_str().map(String::from),
                config_version: marked
                    .headers()
                    .get("x-config-version")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                wanted_version: config_version,
                plugin_taken: loaded_sha
                    == Some(crate::plugin::content_hash(&std::fs::read(
                        plugins.join("headers.wasm"),
                    )?)),
            });
            let next = quiet + every * n as u32;
            tokio::time::sleep_until((started + next).into()).await;
        }
        Ok::<_, anyhow::Error>(done)
    };
    let (run, done) = tokio::join!(load, reloading);
    let done = done?;
    let scrape = gateway.scrape().await?;
    let reloads_ok_metric = scrape
        .value("gateway_reloads_total", &[("result", "success")])
        .unwrap_or(0.0);
    let reloads_failed_metric = scrape
        .value("gateway_reloads_total", &[("result", "failure")])
        .unwrap_or(0.0);
    let (_, page) = gateway.admin_get("/admin/plugins").await?;
    let page: serde_json::Value = serde_json::from_str(&page).unwrap_or(serde_json::Value::Null);
    let generation = page["generation"]
        .as_u64()
        .or_else(|| done.last()?.generation);

    let first = done.first().map_or(total, |r| r.at);
    let last = done.last().map_or(total, |r| r.at) + Duration::from_millis(500);
    let before = Summary::of(run.samples.iter().filter(|s| s.at < first), first);
    let during = Summary::of(
        run.samples.iter().filter(|s| s.at >= first && s.at < last),
        last.saturating_sub(first),
    );
    let all = Summary::of(&run.samples, run.elapsed);
    let ok = done
        .iter()
        .filter(|r| r.status == 200 && r.plugin_taken && r.config_version == Some(r.wanted_version))
        .count();
    let mut problems = Vec::new();
    if all.failures() > 0 {
        let mut seen: Vec<String> = run
            .samples
            .iter()
            .filter(|s| !(200..400).contains(&s.status))
            .map(|s| {
                s.error
                    .clone()
                    .unwrap_or_else(|| format!("status {}", s.status))
            })
            .collect();
        seen.dedup();
        seen.truncate(3);
        problems.push(format!(
            "{} of {} requests failed during reloads ({})",
            all.failures(),
            all.count,
            seen.join(", ")
        ));
    }
    if run.skipped > 0 {
        problems.push(format!("{} requests could not be sent", run.skipped));
    }
    if ok < 3 || ok < done.len() {
        problems.push(format!("{ok} of {} reloads succeeded", done.len()));
    }
    if reloads_failed_metric > 0.0 {
        problems.push(format!(
            "the gateway counted {reloads_failed_metric} failed reloads"
        ));
    }

    let mut table = Table::new(&["window", "requests", "failed", "p50 ms", "p99 ms", "max ms"]);
    for (name, s) in [
        ("before reloads", &before),
        ("during reloads", &during),
        ("whole run", &all),
    ] {
        table.row(vec![
            name.into(),
            s.count.to_string(),
            s.failures().to_string(),
            ms(s.p50_ms),
            ms(s.p99_ms),
            ms(s.max_ms),
        ]);
    }
    let mut reload_table = Table::new(&[
        "at s",
        "what",
        "status",
        "generation",
        "config serving",
        "plugin serving",
    ]);
    for r in &done {
        reload_table.row(vec![
            format!("{:.1}", r.at.as_secs_f64()),
            r.what.clone(),
            r.status.to_string(),
            r.generation.map_or("-".into(), |g| g.to_string()),
            r.config_version.map_or("-".into(), |v| format!("v{v}")),
            if r.plugin_taken {
                "the file's"
            } else {
                "an older one"
            }
            .into(),
        ]);
    }
    let story = vec![
        format!(
            "{RELOAD_RPS} requests a second over two routes while the gateway reloads {} times: configuration rewrites (a header value, an instance added and removed) and new builds of the headers plugin swapped into its folder.",
            done.len()
        ),
        format!(
            "{ok} reloads succeeded, each serving the configuration and plugin just written (the gateway counted {reloads_ok_metric} with its file watcher's own, generation now {}); {} of {} requests failed.",
            generation.map_or("?".into(), |g| g.to_string()),
            all.failures(),
            all.count
        ),
        format!(
            "p99 was {:.1} ms before the reloads and {:.1} ms while they ran.",
            before.p99_ms, during.p99_ms
        ),
        String::new(),
        reload_table.render(),
    ];
    let result = json!({
        "requests": all.count,
        "failed": all.failures(),
        "skipped": run.skipped,
        "reloads_attempted": done.len(),
        "reloads_succeeded": ok,
        "reloads_success_metric": reloads_ok_metric,
        "reloads_failure_metric": reloads_failed_metric,
        "generation": generation,
        "before": before.to_json(),
        "during": during.to_json(),
        "all": all.to_json(),
        "reloads": done.iter().map(|r| json!({
            "at_s": round(r.at.as_secs_f64(), 2),
            "what": r.what,
            "status": r.status,
            "generation": r.generation,
            "error": r.error,
            "config_version_serving": r.config_version,
            "config_version_written": r.wanted_version,
            "plugin_file_serving": r.plugin_taken,
        })).collect::<Vec<_>>(),
        "parameters": {
            "seconds": total.as_secs_f64(),
            "rps": RELOAD_RPS,
        },
    });
    let told = tell(
        options,
        "reload-under-load",
        &story,
        &table,
        result,
        &problems,
    );
    hold(options, &gateway).await?;
    told
}
