//! What an operator watches the gateway with: the metrics catalogue as a
//! real scrape shows it (from start-up, and after mixed traffic), checked
//! by `promtool`; the alert rules and their unit tests; the names the
//! dashboard and the rules use, against a real scrape; a real Prometheus
//! server scraping the gateway and evaluating the rules; the access log.

use crate::common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The default configuration (all four shipped plugins on `/tenants`), on
/// free ports, plus an upstream with a dead instance behind retries, one
/// with a dead instance found by health checks, a filter that records its own histogram, and the access
/// log in a file.
fn observed_gateway() -> (Gateway, Upstream) {
    let pay = Upstream::start("payments");
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start_with_echo(tempdir::Dir::new(), |addr, admin, echo| {
        let base = default_config(addr, admin, echo, &plugin_dir());
        format!(
            "{base}\n\
             [access_log]\npath = \"access.log\"\n\n\
             [upstreams.payments]\ninstances = [\"{}\", \"{dead}\"]\n\
             [upstreams.payments.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n\n\
             [upstreams.checked]\ninstances = [\"{}\", \"{dead}\"]\n\
             [upstreams.checked.health]\npath = \"/status/200\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\n\n\
             [filters.observer]\nplugin = \"probe\"\n[filters.observer.config]\nname = \"observer\"\nobserve_paths = true\n\n\
             [[route]]\nid = \"payments\"\npath_prefix = \"/payments\"\nupstream = \"payments\"\nfilters = [\"observer\"]\n\
             [route.retry]\nattempts = 2\non = [\"connect\"]\nbackoff_base = \"1ms\"\n\n\
             [[route]]\nid = \"checked\"\npath_prefix = \"/checked\"\nupstream = \"checked\"\n",
            pay.addr, pay.addr
        )
    });
    (gw, pay)
}

/// The prefix of the metrics only a gateway with `[server.tls]` exports.
pub const TLS_METRICS: &str = "gateway_tls_";
/// The prefix of the metrics only a gateway with a `[[tcp_route]]`
/// exports: each route and listener declares its series at zero.
pub const TCP_METRICS: &str = "gateway_tcp_";
/// The prefix of the metrics that appear with the first gRPC call
/// (grpc.rs holds them to the catalogue).
pub const GRPC_METRICS: &str = "gateway_grpc_";
/// The prefix of the metrics a filter with `callouts` declares
/// (filter_v2.rs holds them to the catalogue).
pub const CALLOUT_METRICS: &str = "gateway_callout";

/// Asserts that the catalogue lists `count` names starting with `prefix`,
/// and that `scrape` declares each: for the metrics the start-up scrape
/// cannot show (TLS, gRPC), checked where they appear.
pub fn assert_catalogued(scrape: &str, prefix: &str, count: usize) {
    let scraped = declared(scrape);
    let listed: Vec<String> = catalogue()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert_eq!(listed.len(), count, "{listed:?}");
    assert!(
        listed.iter().all(|n| scraped.contains(n)),
        "{listed:?}\n{scrape}"
    );
}

/// Metric names a scrape declares (`# TYPE name kind`).
pub fn declared(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The metric names README.md's catalogue tables list (templates, with
/// `<plugin>` in them, aside).
pub fn catalogue() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("\n## Metrics\n")
        .expect("README has a Metrics section");
    let section = &readme[start..];
    let end = section[1..].find("\n## ").map_or(section.len(), |e| e + 1);
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `gateway_"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| !n.contains('<'))
        .map(|n| format!("gateway_{n}"))
        .collect()
}

/// Metric names with at least one sample in a scrape, a histogram's
/// `_bucket`, `_sum` and `_count` series under the histogram's own name.
pub fn sampled(scrape: &str) -> BTreeSet<String> {
    let declared = declared(scrape);
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| declared.contains(*b)))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

/// Every `gateway_*` name a file's expressions use, with histogram series
/// suffixes taken back to the histogram's name.
pub fn names_used(text: &str, scraped: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("gateway_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| scraped.contains(*b)))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    // promtool is installed by `make setup` with the prometheus package.
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(repo());
    run_with_input(&mut cmd, stdin.unwrap_or_default().as_bytes())
}

/// Requests of every kind the dashboards show: answered, refused by each
/// plugin, unrouted, retried past a dead instance.
fn mixed_traffic(gw: &Gateway) {
    for _ in 0..3 {
        assert_eq!(gw.get("/echo/a", &[]).status, 200);
    }
    assert_eq!(
        gw.get(
            "/echo/b",
            &[
                ("x-original-url", "/admin"),
                ("x-http-method-override", "DELETE")
            ]
        )
        .status,
        200
    );
    assert_eq!(gw.get("/nowhere", &[]).status, 404);
    assert_eq!(gw.get("/tenants/acme/orders", &[]).status, 401);
    let key = [("x-api-key", "demo-key-acme")];
    assert_eq!(gw.get("/tenants/acme/orders", &key).status, 200);
    assert_eq!(gw.get("/tenants/globex/orders", &key).status, 403);
    // Past the per-client limit of 10 a second.
    let statuses: Vec<u16> = (0..12).map(|_| gw.get("/echo/c", &[]).status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    for _ in 0..6 {
        assert_eq!(
            gw.request("POST", "/payments/charge", &[], b"{\"amount\":1}")
                .status,
            200
        );
    }
}

#[test]
fn the_whole_catalogue_is_scraped_from_start_up_and_passes_promtool() {
    let (gw, _pay) = observed_gateway();
    let first = gw.metrics();
    let at_start = declared(&first);
    // TLS series exist on a gateway with `[server.tls]` (tls.rs holds them
    // to the catalogue), TCP series on one with `[[tcp_route]]`.
    let missing: Vec<String> = catalogue()
        .into_iter()
        .filter(|n| {
            ![TLS_METRICS, TCP_METRICS, GRPC_METRICS, CALLOUT_METRICS]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .filter(|n| !at_start.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the first scrape: {missing:?}\n{first}"
    );
    // Alerts compare rates of errors against rates of all requests: both
    // series exist at zero before the first request.
    assert_eq!(
        metric(
            &first,
            "gateway_http_requests_total",
            &[("route", "echo"), ("status_class", "5xx")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&first, "gateway_plugin_tenant_cross_tenant_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &first,
            "gateway_plugin_auth_attempts_total",
            &[("result", "denied")]
        ),
        Some(0.0)
    );

    mixed_traffic(&gw);
    // Health checks run every 100 ms; give them a few rounds.
    std::thread::sleep(Duration::from_millis(400));
    let m = gw.metrics();
    let (ok, out) = promtool(&["check", "metrics"], Some(&m));
    assert!(ok && out.trim().is_empty(), "promtool check metrics: {out}");

    let v = |name: &str, labels: &[(&str, &str)]| {
        metric(&m, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{m}"))
    };
    assert_eq!(
        v(
            "gateway_http_requests_total",
            &[("route", "tenants"), ("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "gateway_http_requests_total",
            &[("route", "-"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        v(
            "gateway_http_requests_total",
            &[("route", "echo"), ("status", "429")]
        ) >= 1.0
    );
    assert_eq!(
        v(
            "gateway_http_request_duration_seconds_count",
            &[("route", "payments")]
        ),
        6.0
    );
    assert_eq!(
        v(
            "gateway_http_request_size_bytes_sum",
            &[("route", "payments")]
        ),
        6.0 * 12.0
    );
    assert!(v("gateway_http_response_size_bytes_sum", &[("route", "echo")]) > 0.0);
    assert!(
        v(
            "gateway_plugin_auth_attempts_total",
            &[("result", "denied")]
        ) >= 1.0
    );
    assert_eq!(v("gateway_plugin_tenant_cross_tenant_total", &[]), 1.0);
    assert!(
        v(
            "gateway_plugin_ratelimit_requests_total",
            &[("result", "rejected")]
        ) >= 1.0
    );
    assert!(
        v(
            "gateway_plugin_headers_headers_removed_total",
            &[("header", "x-original-url")]
        ) >= 1.0
    );
    // Retries took every request that met the dead instance to the live one.
    let connect_errors = v(
        "gateway_upstream_errors_total",
        &[("upstream", "payments"), ("kind", "connect_error")],
    );
    assert!(connect_errors >= 1.0, "{m}");
    assert_eq!(
        v(
            "gateway_upstream_retries_total",
            &[("route", "payments"), ("result", "sent")]
        ),
        connect_errors
    );
    assert_eq!(
        v("gateway_upstream_picks_total", &[("upstream", "payments")]),
        6.0 + connect_errors
    );
    assert_eq!(
        v(
            "gateway_upstream_request_duration_seconds_count",
            &[("upstream", "payments")]
        ),
        6.0 + connect_errors
    );
    assert!(
        v(
            "gateway_upstream_health_checks_total",
            &[("upstream", "checked"), ("result", "failed")]
        ) >= 2.0
    );
    assert!(
        v(
            "gateway_upstream_health_check_duration_seconds_count",
            &[("upstream", "checked")]
        ) >= 4.0
    );
    assert!(
        v(
            "gateway_upstream_health_checks_total",
            &[("upstream", "checked"), ("result", "passed")]
        ) >= 2.0
    );
    assert_eq!(
        v("gateway_upstream_healthy", &[("upstream", "checked")]),
        1.0,
        "one of the two instances is healthy"
    );
    assert!(
        v(
            "gateway_upstream_connections_open",
            &[("upstream", "payments")]
        ) >= 1.0
    );
    assert_eq!(
        v(
            "gateway_upstream_connections_idle",
            &[("upstream", "payments")]
        ),
        v(
            "gateway_upstream_connections_open",
            &[("upstream", "payments")]
        )
    );
    // The plugin's own histogram and counter, labelled with its filter.
    assert_eq!(
        v(
            "gateway_plugin_probe_path_bytes_count",
            &[("filter", "observer"), ("method", "POST")]
        ),
        6.0
    );
    assert_eq!(
        v(
            "gateway_plugin_probe_path_bytes_sum",
            &[("filter", "observer")]
        ),
        6.0 * "/payments/charge".len() as f64
    );
    assert_eq!(
        v("gateway_plugin_probe_paths_total", &[("method", "POST")]),
        6.0
    );
    assert_eq!(
        v(
            "gateway_plugin_calls_total",
            &[("filter", "observer"), ("phase", "request")]
        ),
        6.0
    );
    // One info series per plugin version in use, with its hash.
    let infos = series(&m, "gateway_plugin_info");
    let plugins: BTreeSet<&str> = infos.iter().map(|(l, _)| l["plugin"].as_str()).collect();
    assert_eq!(
        plugins,
        BTreeSet::from(["auth", "cache", "headers", "probe", "ratelimit", "tenant"])
    );
    assert!(
        infos
            .iter()
            .all(|(l, v)| l["sha256"].len() == 64 && *v == 1.0)
    );
    assert!(v("gateway_process_resident_memory_bytes", &[]) > 1e6);
    assert!(v("gateway_uptime_seconds", &[]) > 0.0);
    assert_eq!(
        v("gateway_build_info", &[("wit", "gateway:filter@0.1.0")]),
        1.0
    );
    assert_eq!(
        v("gateway_http_requests_in_flight", &[]),
        0.0,
        "the scrape itself is not a proxied request"
    );

    // Every name the dashboard and the alert rules use is in a real scrape.
    let scraped = declared(&m);
    for file in [
        "config/grafana/gateway-dashboard.json",
        "config/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let used = names_used(&text, &scraped);
        assert!(used.len() >= 10, "{file} uses only {used:?}");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|n| {
                ![TLS_METRICS, TCP_METRICS, GRPC_METRICS]
                    .iter()
                    .any(|p| n.starts_with(p))
                    && !scraped.contains(*n)
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses names the gateway does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_default_config_exports_every_name_the_dashboard_and_the_rules_use_from_start_up() {
    let gw = start_default(&shipped_plugins());
    // Before any request: a rule or a panel whose series appears only
    // with traffic (or with health checks, or retries) shows "no data"
    // where it should show zero, and an absent series never fires.
    let first = gw.metrics();
    let scraped = sampled(&first);
    let catalogued = catalogue();
    // A histogram this scrape lacks (the TCP routes' durations) is still
    // known by its catalogued name, so its `_bucket` reads as that name.
    let known: BTreeSet<String> = declared(&first)
        .into_iter()
        .chain(catalogued.iter().cloned())
        .collect();
    for file in [
        "config/grafana/gateway-dashboard.json",
        "config/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let used = names_used(&text, &known);
        assert!(used.len() >= 10, "{file} uses only {used:?}");
        // Certificates and handshakes exist only where TLS is configured
        // ([server.tls], an upstream's tls), TCP routes' series only where
        // a [[tcp_route]] is, and the default has neither: tls.rs holds
        // the TLS names to the catalogue, so here they need only be
        // catalogued.
        let missing: Vec<&String> = used
            .iter()
            .filter(|n| !scraped.contains(*n))
            .filter(|n| {
                !([TLS_METRICS, TCP_METRICS].iter().any(|p| n.starts_with(p))
                    && catalogued.contains(*n))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses names the default config does not export before its first request: {missing:?}\n{first}"
        );
    }

    // Every route has both retry series, retry policy or not.
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    let routes: Vec<&str> = config
        .lines()
        .filter_map(|l| l.strip_prefix("id = \""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert_eq!(routes, ["cached", "echo", "tenants"]);
    for route in routes {
        for result in ["sent", "budget_exhausted"] {
            assert_eq!(
                metric(
                    &first,
                    "gateway_upstream_retries_total",
                    &[("route", route), ("result", result)]
                ),
                Some(0.0),
                "{route} {result}\n{first}"
            );
        }
    }
    // The echo upstream has no health checks: its one instance is in
    // rotation, and says so.
    let healthy = series(&first, "gateway_upstream_healthy");
    assert_eq!(healthy.len(), 1, "{healthy:?}");
    let (labels, value) = &healthy[0];
    assert_eq!(labels["upstream"], "echo");
    assert_eq!(labels["endpoint"], gw.extra[0].to_string());
    assert_eq!(*value, 1.0);
}

/// The names of the rules in an alerting rules file.
fn rule_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// The alerts a promtool test file expects to fire somewhere: each
/// `alertname` whose `exp_alerts` lists at least one alert.
fn alerts_expected_to_fire(tests: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut name = None;
    let mut out = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(n) = line.strip_prefix("alertname:") {
            name = Some(n.trim());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let listed = rest.trim().is_empty()
                && lines[i + 1..]
                    .iter()
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .is_some_and(|l| l.starts_with("- exp_labels:"));
            if listed {
                out.insert(name.expect("exp_alerts after an alertname").to_string());
            }
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "config/prometheus/alerts.yml"], None);
    assert!(ok, "{out}");
    let (ok, out) = promtool(
        &["test", "rules", "config/prometheus/alerts.test.yml"],
        None,
    );
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    // promtool passes a rule no test mentions: every rule must be seen
    // firing, with its labels and annotations, in at least one test.
    let rules =
        rule_names(&std::fs::read_to_string(repo().join("config/prometheus/alerts.yml")).unwrap());
    let unique: BTreeSet<&String> = rules.iter().collect();
    assert_eq!(
        unique.len(),
        rules.len(),
        "a rule name used twice: {rules:?}"
    );
    assert!(rules.len() >= 25, "{rules:?}");
    let tests = std::fs::read_to_string(repo().join("config/prometheus/alerts.test.yml")).unwrap();
    let fired = alerts_expected_to_fire(&tests);
    let untested: Vec<&String> = rules.iter().filter(|r| !fired.contains(*r)).collect();
    assert!(
        untested.is_empty(),
        "rules no unit test sees firing: {untested:?}"
    );
    let unknown: Vec<&String> = fired.iter().filter(|f| !unique.contains(f)).collect();
    assert!(
        unknown.is_empty(),
        "tests of rules that do not exist: {unknown:?}"
    );
}

#[test]
fn the_access_log_has_a_json_line_per_request() {
    let (gw, _pay) = observed_gateway();
    let ok = gw.get("/tenants/acme/orders", &[("x-api-key", "demo-key-acme")]);
    assert_eq!(ok.status, 200);
    let refused = gw.get("/tenants/acme/orders", &[]);
    assert_eq!(refused.status, 401);
    let retried = gw.request("POST", "/payments/x", &[], b"12345");
    assert_eq!(retried.status, 200);
    let path = gw.dir.path().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let by_id = |r: &RawResponse| {
        let id = r.header("x-request-id").unwrap();
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
    };
    let l = by_id(&ok);
    assert_eq!(l["route"], "tenants");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/tenants/acme/orders");
    assert_eq!(l["status"], 200);
    assert_eq!(l["tenant"], "acme");
    assert_eq!(l["answered_by"], "upstream");
    assert_eq!(l["tries"], 1);
    assert_eq!(l["bytes_sent"], ok.body.len());
    assert!(l["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(l["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    let l = by_id(&refused);
    assert_eq!(l["status"], 401);
    assert_eq!(l["answered_by"], "filter:auth");
    assert_eq!(l["tries"], 0);
    assert!(l.get("upstream").is_none());
    let l = by_id(&retried);
    assert_eq!(l["route"], "payments");
    assert_eq!(l["bytes_received"], 5);
    assert!(l["tries"] == 1 || l["tries"] == 2, "{l}");
}

/// A GET to a loopback HTTP server; the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    (r.status, r.body_text())
}

#[test]
fn a_real_prometheus_scrapes_the_gateway_and_evaluates_the_rules() {
    let (gw, _pay) = observed_gateway();
    mixed_traffic(&gw);
    let dir = tempdir::Dir::new();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{}']\n",
            repo().join("config/prometheus/alerts.yml").display(),
            gw.admin
        ),
    )
    .unwrap();
    let mut child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
        ))
        .spawn()
        .expect("run prometheus (installed by `make setup`)");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut child);
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // The query API answers with the gateway's series once a scrape landed.
    let query = "/api/v1/query?query=sum%20by%20(route)%20(gateway_http_requests_total%7Bjob%3D%22gateway%22%7D)";
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        if let Ok(body) = std::panic::catch_unwind(|| http_get(prom, query).1) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if !result.is_empty() {
                break result;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no gateway series in Prometheus after 30 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let routes: BTreeSet<&str> = result
        .iter()
        .filter_map(|s| s["metric"]["route"].as_str())
        .collect();
    assert!(
        routes.is_superset(&BTreeSet::from(["echo", "tenants", "payments", "-"])),
        "{result:?}"
    );
    let echo = result
        .iter()
        .find(|s| s["metric"]["route"] == "echo")
        .unwrap();
    let count: f64 = echo["value"][1].as_str().unwrap().parse().unwrap();
    assert!(count >= 16.0, "{echo}");

    // A cross-tenant attempt after Prometheus has a sample from before it.
    let key = [("x-api-key", "demo-key-acme")];
    assert_eq!(gw.get("/tenants/globex/orders", &key).status, 403);

    // The rules load and evaluate against the gateway's real series.
    let in_file =
        rule_names(&std::fs::read_to_string(repo().join("config/prometheus/alerts.yml")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&http_get(prom, "/api/v1/rules").1).unwrap_or_default();
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = rules.iter().filter(|r| r["health"] == "ok").count();
        let bad: Vec<&&serde_json::Value> = rules.iter().filter(|r| r["health"] == "err").collect();
        assert!(bad.is_empty(), "rules failing to evaluate: {bad:?}");
        if !rules.is_empty() && evaluated == rules.len() {
            assert_eq!(rules.len(), in_file.len(), "Prometheus loaded {v}");
            // The cross-tenant attempt fires its alert at its next evaluation.
            let alerts = http_get(prom, "/api/v1/alerts").1;
            if alerts.contains("GatewayCrossTenantAttempt") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated, or no cross-tenant alert: {v}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
