//! End-to-end behaviour of upstream clusters: balancing strategies over
//! real loopback instances, circuit breakers that open, fail fast and close
//! through half-open, retries that land on another instance, and the retry
//! budget that bounds load during a total outage.

use crate::common::*;
use std::time::{Duration, Instant};

/// A loopback address nothing listens on: every connect is refused.
fn dead_instance() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn route(extra: &str) -> String {
    format!("[[route]]\nid = \"api\"\nupstream = \"app\"\n{extra}\n")
}

fn series_sum(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn round_robin_and_weighted_spread_as_configured() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\", \"{}\", \"{}\"]\n\n{}",
        ups[0].addr,
        ups[1].addr,
        ups[2].addr,
        route("")
    ));
    for _ in 0..3000 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    let counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{counts:?}"
    );

    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let gw = Gateway::start(&format!(
        "[upstreams.app]\nstrategy = \"weighted\"\ninstances = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]\n\n{}",
        a.addr,
        b.addr,
        route("")
    ));
    for _ in 0..2000 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    assert_eq!((a.count(), b.count()), (1500, 500));
}

#[test]
fn a_breaker_opens_fails_fast_and_closes_through_half_open() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 3\nfailure_rate = 0.0\ncool_down = \"300ms\"\nhalf_open_probes = 1\nsuccesses_to_close = 2\n\n{}",
        up.addr,
        route("")
    ));
    for _ in 0..3 {
        assert_eq!(gw.get("/status/500", &[]).status, 500);
    }
    // Open: answered at once, the instance untouched.
    let before = up.count();
    for _ in 0..5 {
        let r = gw.get("/status/200", &[]);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-gateway-error"), Some("all-breakers-open"));
    }
    assert_eq!(up.count(), before, "an open breaker sends nothing");
    let scrape = gw.metrics();
    let instance = up.addr.to_string();
    let labels = |from: &'static str, to: &'static str, reason: &'static str| {
        vec![
            ("endpoint", instance.clone()),
            ("from", from.to_string()),
            ("to", to.to_string()),
            ("reason", reason.to_string()),
        ]
    };
    let count = |scrape: &str, l: Vec<(&str, String)>| {
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metric(scrape, "gateway_circuit_breaker_transitions_total", &l)
    };
    assert_eq!(
        count(&scrape, labels("closed", "open", "consecutive_failures")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_circuit_breaker_state",
            &[("endpoint", &instance)]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_upstream_unavailable_total",
            &[("reason", "all-breakers-open")]
        ),
        Some(5.0)
    );

    // After the cool-down, probes go through and two successes close it.
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(gw.get("/status/200", &[]).status, 200);
    assert_eq!(gw.get("/status/200", &[]).status, 200);
    assert_eq!(gw.get("/status/200", &[]).status, 200);
    let scrape = gw.metrics();
    assert_eq!(
        count(&scrape, labels("open", "half_open", "cool_down_elapsed")),
        Some(1.0)
    );
    assert_eq!(
        count(&scrape, labels("half_open", "closed", "probes_succeeded")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_circuit_breaker_state",
            &[("endpoint", &instance)]
        ),
        Some(0.0)
    );
    assert!(
        gw.log()
            .contains("circuit breaker closed -> open (consecutive_failures)")
    );
}

#[test]
fn a_retry_lands_on_another_instance() {
    let good = Upstream::start("good");
    let dead = dead_instance();
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{dead}\", \"{}\"]\n\n{}",
        good.addr,
        route("[route.retry]\nattempts = 2\nbackoff_base = \"1ms\"")
    ));
    for _ in 0..10 {
        let r = gw.get("/x", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("good"));
    }
    let scrape = gw.metrics();
    let retried = metric(
        &scrape,
        "gateway_upstream_retries_total",
        &[("route", "api"), ("result", "sent")],
    )
    .unwrap();
    assert!(retried >= 1.0, "{retried}");
    assert!(
        metric(
            &scrape,
            "gateway_upstream_requests_total",
            &[("endpoint", &dead), ("outcome", "connect_error")]
        )
        .unwrap()
            >= 1.0
    );
    // A POST is retried after a connect failure too: nothing was sent.
    let r = gw.request("POST", "/x", &[], b"{}");
    assert_eq!(r.status, 200);
}

#[test]
fn during_a_total_outage_the_budget_bounds_retries() {
    let (d1, d2) = (dead_instance(), dead_instance());
    // Breakers off, so every request reaches the retry logic; 20% budget
    // and no floor, so the bound is exact.
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{d1}\", \"{d2}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n\n{}",
        route(
            "[route.retry]\nattempts = 4\nbackoff_base = \"1ms\"\nbudget_ratio = 0.2\nbudget_floor_per_second = 0.0"
        )
    ));
    let clients = 50;
    let started = Instant::now();
    for _ in 0..clients {
        assert_eq!(gw.get("/x", &[]).status, 502);
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let scrape = gw.metrics();
    let tries = series_sum(
        &scrape,
        "gateway_upstream_requests_total",
        &[("upstream", "app")],
    );
    let sent = metric(
        &scrape,
        "gateway_upstream_retries_total",
        &[("result", "sent")],
    )
    .unwrap_or(0.0);
    let refused = metric(
        &scrape,
        "gateway_upstream_retries_total",
        &[("result", "budget_exhausted")],
    )
    .unwrap();
    assert_eq!(tries, clients as f64 + sent);
    assert!(
        tries <= clients as f64 * 1.2,
        "{tries} tries for {clients} requests: over the 20% budget"
    );
    assert!(sent >= 9.0, "the budget is used: {sent}");
    assert!(refused >= 40.0, "{refused}");
}

#[test]
fn health_checks_remove_and_restore_instances_and_gate_readiness() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let b_addr = b.addr;
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\", \"{}\"]\n[upstreams.app.health]\npath = \"/status/200\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\nrequired = true\n\n{}",
        a.addr,
        b_addr,
        route("")
    ));
    let ready = |gw: &Gateway| {
        raw(
            gw.admin,
            b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
    };
    assert_eq!(ready(&gw).status, 200);
    // b goes away: after two failed checks every request goes to a.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &gw.metrics(),
        "gateway_upstream_healthy",
        &[("endpoint", &b_addr.to_string())],
    ) != Some(0.0)
    {
        assert!(
            Instant::now() < deadline,
            "b never marked unhealthy:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..20 {
        let r = gw.get("/x", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("a"));
    }
    assert_eq!(ready(&gw).status, 200, "a is still healthy");
    // a goes too: no healthy instance, 503 with the reason, /ready fails.
    let a_addr = a.addr;
    drop(a);
    while metric(
        &gw.metrics(),
        "gateway_upstream_healthy",
        &[("endpoint", &a_addr.to_string())],
    ) != Some(0.0)
    {
        assert!(Instant::now() < deadline, "a never marked unhealthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-gateway-error"), Some("no-healthy-instance"));
    let r = ready(&gw);
    assert_eq!(r.status, 503);
    assert!(r.body_text().contains("app"), "{}", r.body_text());
    // b comes back: checks restore it, and readiness with it.
    let b = Upstream::start_on("b", b_addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.get("/x", &[]).status != 200 {
        assert!(Instant::now() < deadline, "b never restored:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ready(&gw).status, 200);
    assert!(b.count() >= 1);
    assert!(gw.log().contains("health check: instance is now unhealthy"));
    assert!(gw.log().contains("health check: instance is now healthy"));
}

#[test]
fn outliers_are_ejected_for_growing_times_but_never_the_whole_cluster() {
    let good = Upstream::start("good");
    let dead = dead_instance();
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{dead}\", \"{}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n[upstreams.app.outlier]\nconsecutive_gateway_failures = 2\nbase_ejection_time = \"500ms\"\nmax_ejected_percent = 50\n\n{}",
        good.addr,
        route("")
    ));
    let ejections = |gw: &Gateway| {
        metric(
            &gw.metrics(),
            "gateway_upstream_ejections_total",
            &[
                ("endpoint", &dead),
                ("reason", "consecutive_gateway_failures"),
            ],
        )
        .unwrap_or(0.0)
    };
    // Round robin: dead, good, dead -> the second failure in a row ejects.
    let first: Vec<u16> = (0..4).map(|_| gw.get("/x", &[]).status).collect();
    assert_eq!(first, [502, 200, 502, 200]);
    assert_eq!(ejections(&gw), 1.0);
    for _ in 0..20 {
        assert_eq!(
            gw.get("/x", &[]).status,
            200,
            "the ejected instance gets nothing"
        );
    }
    // Back after 500 ms, failing again: ejected again, for twice as long.
    std::thread::sleep(Duration::from_millis(550));
    let mut failures = 0;
    for _ in 0..6 {
        if gw.get("/x", &[]).status == 502 {
            failures += 1;
        }
    }
    assert_eq!(failures, 2);
    assert_eq!(ejections(&gw), 2.0);
    std::thread::sleep(Duration::from_millis(550));
    assert!(
        (0..6).all(|_| gw.get("/x", &[]).status == 200),
        "the second ejection lasts 1 s"
    );
    assert!(
        gw.log()
            .contains("ejected for 1000 ms (consecutive_gateway_failures)")
    );

    // With every instance failing, at most half the cluster is ejected.
    let (d1, d2) = (dead_instance(), dead_instance());
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{d1}\", \"{d2}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n[upstreams.app.outlier]\nconsecutive_gateway_failures = 1\nbase_ejection_time = \"10s\"\n\n{}",
        route("")
    ));
    for _ in 0..6 {
        assert_eq!(
            gw.get("/x", &[]).status,
            502,
            "never 503: one instance stays in"
        );
    }
    assert_eq!(
        series_sum(&gw.metrics(), "gateway_upstream_ejections_total", &[]),
        1.0
    );
    assert!(gw.log().contains("not ejected"));
}

#[test]
fn keep_alive_load_reuses_pooled_connections() {
    let up = Upstream::start("app");
    let gw = std::sync::Arc::new(Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\nmax_idle_per_instance = 32\n\n{}",
        up.addr,
        route("")
    )));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                for _ in 0..60 {
                    assert_eq!(gw.get("/x", &[]).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let scrape = gw.metrics();
    let hits = metric(
        &scrape,
        "gateway_upstream_pool_requests_total",
        &[("result", "hit")],
    )
    .unwrap();
    let misses = metric(
        &scrape,
        "gateway_upstream_pool_requests_total",
        &[("result", "miss")],
    )
    .unwrap();
    let opened = metric(&scrape, "gateway_upstream_connections_opened_total", &[]).unwrap();
    assert_eq!(hits + misses, 480.0);
    assert!(hits / 480.0 > 0.9, "reuse {hits}/480");
    assert!(
        misses >= 1.0 && misses <= opened,
        "{misses} misses, {opened} opened"
    );
    assert!(
        metric(
            &scrape,
            "gateway_upstream_connect_duration_seconds_count",
            &[("upstream", "app")]
        )
        .unwrap()
            >= opened
    );
}

#[test]
fn a_full_instance_is_skipped_and_a_full_cluster_answers_503() {
    let up = Upstream::start("app");
    let gw = std::sync::Arc::new(Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\nmax_connections_per_instance = 2\n\n{}",
        up.addr,
        route("")
    )));
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let gw = gw.clone();
            std::thread::spawn(move || {
                // Staggered a little so the first two hold the slots.
                std::thread::sleep(Duration::from_millis(k * 100));
                let r = gw.get("/slow/1500", &[]);
                (r.status, r.header("x-gateway-error").map(str::to_string))
            })
        })
        .collect();
    let mut answers: Vec<(u16, Option<String>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    answers.sort();
    assert_eq!(
        answers,
        [
            (200, None),
            (200, None),
            (503, Some("pool-exhausted".into())),
            (503, Some("pool-exhausted".into()))
        ]
    );
    assert_eq!(
        metric(
            &gw.metrics(),
            "gateway_upstream_unavailable_total",
            &[("reason", "pool-exhausted")]
        ),
        Some(2.0)
    );
}

#[test]
fn an_h2c_cluster_speaks_http2_to_its_instances() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\nprotocol = \"h2c\"\n\n{}",
        up.addr,
        route("")
    ));
    for _ in 0..3 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    assert!(
        up.seen().iter().all(|s| s.version == "HTTP/2.0"),
        "{:?}",
        up.seen()
    );
    // One multiplexed connection carries them all.
    assert_eq!(
        metric(
            &gw.metrics(),
            "gateway_upstream_connections_opened_total",
            &[]
        ),
        Some(1.0)
    );
}

#[test]
fn random_spreads_and_p2c_steers_away_from_a_slow_instance() {
    let ups: Vec<Upstream> = ["a", "b"].iter().map(|n| Upstream::start(n)).collect();
    let gw = Gateway::start(&format!(
        "[upstreams.app]\nstrategy = \"random\"\ninstances = [\"{}\", \"{}\"]\n\n{}",
        ups[0].addr,
        ups[1].addr,
        route("")
    ));
    for _ in 0..2000 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    for u in &ups {
        assert!((900..=1100).contains(&u.count()), "{}", u.count());
    }

    // P2C: one instance answers in 20 ms, the other at once; the latency
    // average steers most traffic to the fast one.
    let (slow, slow_count) = slow_instance(Duration::from_millis(20));
    let fast = Upstream::start("fast");
    let gw = Gateway::start(&format!(
        "[upstreams.app]\nstrategy = \"p2c\"\ninstances = [\"{slow}\", \"{}\"]\n\n{}",
        fast.addr,
        route("")
    ));
    for _ in 0..300 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    let slow_n = slow_count.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        slow_n < 30 && fast.count() > 270,
        "slow {slow_n}, fast {}",
        fast.count()
    );
}

/// An HTTP/1.1 server that answers every request after `delay`, counting
/// them; keep-alive, one thread per connection.
fn slow_instance(
    delay: Duration,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().take(10_000) {
            let Ok(s) = s else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                for _ in 0..100_000 {
                    // Read one request head (no bodies here).
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(delay);
                    if w.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-upstream: slow\r\n\r\nok\n",
                    )
                    .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

/// A server that accepts connections and closes them unanswered, as a
/// crashing instance does mid-request.
/// An instance speaking raw TCP on loopback: each of up to 10,000
/// connections is handed to `serve` on a thread of its own.
fn raw_instance(serve: fn(std::net::TcpStream)) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(10_000) {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

/// The gateway in front of one instance, with the plain route.
fn gateway_to(instance: std::net::SocketAddr) -> Gateway {
    Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{instance}\"]\n\n{}",
        route("")
    ))
}

/// An instance that reads the request and closes the connection unanswered.
fn resetting_instance() -> std::net::SocketAddr {
    raw_instance(|mut s| {
        let mut buf = [0u8; 1024];
        let _ = std::io::Read::read(&mut s, &mut buf);
    })
}

#[test]
fn an_instance_closing_connections_mid_request_is_retried_elsewhere() {
    let good = Upstream::start("good");
    let bad = resetting_instance();
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{bad}\", \"{}\"]\n\n{}",
        good.addr,
        route("[route.retry]\nattempts = 2\nbackoff_base = \"1ms\"")
    ));
    for _ in 0..10 {
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    let resets = metric(
        &gw.metrics(),
        "gateway_upstream_requests_total",
        &[("endpoint", &bad.to_string()), ("outcome", "reset")],
    )
    .unwrap();
    assert!(resets >= 1.0, "{resets}");
    // Without retries the client sees the failure as a 502.
    let gw = gateway_to(bad);
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-gateway-error"), Some("upstream-error"));
}

/// An instance that answers one request per connection with keep-alive,
/// then closes the connection 50 ms later, as an upstream with a short
/// keep-alive timeout does.
fn closing_after_answer_instance() -> std::net::SocketAddr {
    raw_instance(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut s, &mut buf);
        let _ =
            std::io::Write::write_all(&mut s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_millis(50));
    })
}

#[test]
fn a_pooled_connection_the_instance_closed_is_replaced_not_failed() {
    let gw = gateway_to(closing_after_answer_instance());
    for _ in 0..3 {
        let r = gw.get("/x", &[]);
        assert_eq!((r.status, r.body_text().as_str()), (200, "ok"));
        // Long enough for the instance to close the kept connection.
        std::thread::sleep(Duration::from_millis(200));
    }
    let scrape = gw.metrics();
    let opened = metric(&scrape, "gateway_upstream_connections_opened_total", &[]).unwrap();
    assert_eq!(opened, 3.0, "each request found its kept connection closed");
    let resets = series_sum(
        &scrape,
        "gateway_upstream_requests_total",
        &[("outcome", "reset")],
    );
    assert_eq!(resets, 0.0);
}

#[test]
fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\nidle_timeout = \"400ms\"\n\n{}",
        up.addr,
        route("")
    ));
    assert_eq!(gw.get("/x", &[]).status, 200);
    let open = || {
        metric(
            &gw.metrics(),
            "gateway_upstream_connections_open",
            &[("endpoint", &up.addr.to_string())],
        )
        .unwrap()
    };
    assert_eq!(open(), 1.0, "the connection is kept after the answer");
    let waited = Instant::now();
    while open() > 0.0 && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(open(), 0.0, "the idle connection was closed");
    // The next request opens a new one and is answered.
    assert_eq!(gw.get("/x", &[]).status, 200);
    let opened = metric(
        &gw.metrics(),
        "gateway_upstream_connections_opened_total",
        &[],
    )
    .unwrap();
    assert_eq!(opened, 2.0);
}

/// An instance answering every request on a connection with 204 and no
/// body, keeping the connection open.
fn no_content_instance() -> std::net::SocketAddr {
    raw_instance(|mut s| {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut s, &mut buf) {
            head.extend_from_slice(&buf[..n]);
            while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                head.drain(..end + 4);
                if std::io::Write::write_all(&mut s, b"HTTP/1.1 204 No Content\r\n\r\n").is_err() {
                    return;
                }
            }
        }
    })
}

#[test]
fn a_connection_whose_answer_has_no_body_is_kept_for_the_next_request() {
    let gw = gateway_to(no_content_instance());
    for _ in 0..5 {
        assert_eq!(gw.get("/x", &[]).status, 204);
    }
    let scrape = gw.metrics();
    let opened = metric(&scrape, "gateway_upstream_connections_opened_total", &[]).unwrap();
    let hits = metric(
        &scrape,
        "gateway_upstream_pool_requests_total",
        &[("result", "hit")],
    )
    .unwrap();
    // Requests one after another may land on either worker thread; each
    // keeps its own connections.
    assert!(opened <= 2.0, "{opened} connections for 5 requests");
    assert_eq!(hits + opened, 5.0);
}
