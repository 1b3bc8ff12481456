//! Filter API 0.1 compatibility: the shipped plugins as they were built
//! against `gateway:filter@0.1.0` (tests/fixtures/filter-0.1, never rebuilt)
//! and their 0.2.0 builds, each on the default configuration in a gateway
//! of its own, answer the same requests the same way: statuses, policy
//! headers, bodies, what the upstream receives, and the plugins' metrics.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The plugins that moved from 0.1 to 0.2; their 0.1 builds are fixtures.
const MOVED: [&str; 4] = ["headers", "auth", "tenant", "ratelimit"];

/// The demo keys of config/gateway.toml.
const KEY_ACME: (&str, &str) = ("x-api-key", "demo-key-acme");
const KEY_GLOBEX: (&str, &str) = ("x-api-key", "demo-key-globex");

/// Response headers that differ from request to request whoever answers.
const VOLATILE: [&str; 2] = ["date", "x-request-id"];

/// A plugin folder with the 0.1 fixtures and the current builds of
/// `others` (the default configuration loads `cache` too).
fn fixture_plugins(others: &[&str]) -> tempdir::Dir {
    build_plugins();
    let dir = tempdir::Dir::new();
    let fixtures = repo().join("tests/fixtures/filter-0.1");
    for name in MOVED {
        let file = format!("{name}.wasm");
        std::fs::copy(fixtures.join(&file), dir.path().join(&file)).unwrap();
    }
    for name in others {
        let file = format!("{name}.wasm");
        std::fs::copy(plugin_dir().join(&file), dir.path().join(&file)).unwrap();
    }
    dir
}

/// What must be the same whichever build answered: the status, every
/// response header but the volatile ones, and the body; for the echo
/// upstream's answer, the request it received (method, URI, headers but
/// the request id) instead of its body, which also shows the gateway's
/// outbound port.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn of(r: RawResponse) -> Answer {
        let echoed = r
            .header("content-type")
            .is_some_and(|t| t == "application/json")
            && r.body.starts_with(b"{\n");
        let body = if echoed {
            let doc: Value = serde_json::from_slice(&r.body).unwrap();
            let headers: Vec<&Value> = doc["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h[0] != "x-request-id")
                .collect();
            serde_json::json!({
                "method": doc["method"],
                "uri": doc["uri"],
                "headers": headers,
                "body": doc["body"],
            })
        } else {
            Value::String(String::from_utf8_lossy(&r.body).into_owned())
        };
        // The echoed request's length follows the outbound port's digits.
        let varies = |k: &str| VOLATILE.contains(&k) || (echoed && k == "content-length");
        let headers = r.headers.into_iter().filter(|(k, _)| !varies(k)).collect();
        Answer {
            status: r.status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request, as `Gateway::request` sends it.
struct Ask {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
}

fn ask(path: &'static str, headers: &[(&'static str, &str)]) -> Ask {
    Ask {
        path,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The per-client limit of the default configuration: 10 a second, on a
/// sliding window of wall-clock-aligned seconds.
const WINDOW_MS: u64 = 1000;

/// Waits until 300 ms into a second whose previous second saw no request,
/// and answers that second. There the sliding estimate is this second's
/// count alone, so `RateLimit-Remaining` does not depend on when in the
/// second a request arrives; and past the first 250 ms, neither does the
/// `Retry-After` of the 11th or 12th request (1 s, not 2).
fn quiet_window() -> u64 {
    let now = now_ms();
    let window = now / WINDOW_MS + 2;
    std::thread::sleep(Duration::from_millis(window * WINDOW_MS + 300 - now));
    window
}

/// Sends each request to `a`, then at once to `b`, all within one quiet
/// second (tried again from another one when the machine is too slow for
/// that). Answers the pairs, and whether a try ran late: its requests were
/// counted all the same, so the counters may then differ.
fn both(a: &Gateway, b: &Gateway, asks: &[Ask]) -> (Vec<(Answer, Answer)>, bool) {
    let mut late = false;
    for _ in 0..3 {
        let window = quiet_window();
        let mut pairs = Vec::new();
        for q in asks {
            let headers: Vec<(&str, &str)> =
                q.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let x = Answer::of(a.get(q.path, &headers));
            let y = Answer::of(b.get(q.path, &headers));
            pairs.push((x, y));
        }
        if now_ms() / WINDOW_MS == window {
            return (pairs, late);
        }
        late = true;
    }
    panic!("three tries each ran past their second; the machine is too busy for this comparison");
}

/// The lines of a scrape for the moved plugins: their own metrics (with
/// `# HELP` and `# TYPE`) and their calls, sorted.
fn plugin_lines(scrape: &str, with_values: bool) -> Vec<String> {
    let mut lines: Vec<String> = scrape
        .lines()
        .filter(|l| {
            let name = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l);
            MOVED.iter().any(|p| {
                name.starts_with(&format!("gateway_plugin_{p}_"))
                    || (name.starts_with("gateway_plugin_calls_total{")
                        && name.contains(&format!("filter=\"{p}\"")))
            })
        })
        .map(|l| {
            let keep_value = with_values || l.starts_with('#');
            match l.rsplit_once(' ') {
                Some((series, _)) if !keep_value => series.to_string(),
                _ => l.to_string(),
            }
        })
        .collect();
    lines.sort();
    lines
}

/// Asserts that two gateways' `plugin_lines` are the same, naming the lines
/// only one of them has.
fn assert_same_lines(v2: &[String], v1: &[String], when: &str) {
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|l| !y.contains(l)).cloned().collect()
    };
    assert!(
        v2 == v1,
        "{when}: only with the 0.2 builds: {:#?}\nonly with the 0.1 builds: {:#?}",
        only(v2, v1),
        only(v1, v2)
    );
}

#[test]
fn the_0_1_builds_of_the_shipped_plugins_answer_as_their_0_2_builds_do() {
    let v1_plugins = fixture_plugins(&["cache"]);
    let v2 = start_default(&plugin_dir());
    let v1 = start_default(v1_plugins.path());

    // Which build each gateway runs.
    for (gw, wit) in [(&v2, "0.2.0"), (&v1, "0.1.0")] {
        let plugins: Value =
            serde_json::from_str(&gw.admin("GET", "/admin/plugins").body_text()).unwrap();
        for name in MOVED {
            let found = plugins["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} is not loaded: {plugins}"));
            assert_eq!(found["wit"], wit, "{name}: {plugins}");
        }
    }

    // Identical series from start-up: every one declared at zero.
    assert_same_lines(
        &plugin_lines(&v2.metrics(), true),
        &plugin_lines(&v1.metrics(), true),
        "at start-up",
    );

    let many: Vec<(&'static str, String)> = (0..70).map(|i| ("x-filler", i.to_string())).collect();
    let mut asks = vec![
        ask("/echo", &[]),
        // Spoofed client address, method override and httpoxy: stripped.
        ask(
            "/echo",
            &[
                ("x-real-ip", "203.0.113.9"),
                ("x-http-method-override", "DELETE"),
                ("proxy", "http://evil.example"),
            ],
        ),
        ask("/tenants/acme/orders", &[KEY_ACME]),
        ask("/tenants/acme/orders", &[]),
        ask("/tenants/acme/orders", &[("x-api-key", "wrong-key")]),
        ask("/tenants/globex/orders", &[KEY_ACME]),
        ask("/tenants/acme/orders?page=2", &[KEY_GLOBEX]),
        // The header filter strips the client's X-Tenant-Id; the tenant
        // filter sets the trusted one from the key.
        ask(
            "/tenants/acme/orders",
            &[KEY_ACME, ("x-tenant-id", "globex")],
        ),
        ask("/tenants/globex/orders", &[KEY_GLOBEX]),
        ask("/nowhere", &[]),
    ];
    // Over `max_header_count = 64`: refused by the header filter.
    asks.push(Ask {
        path: "/echo",
        headers: many,
    });
    let (pairs, late_first) = both(&v2, &v1, &asks);
    for ((new, old), q) in pairs.iter().zip(&asks) {
        assert_eq!(new, old, "{} with {:?}", q.path, q.headers);
    }
    // The answers are the ones the configuration promises.
    let statuses: Vec<u16> = pairs.iter().map(|(a, _)| a.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 401, 401, 403, 403, 200, 200, 404, 431]
    );
    let upstream = |a: &Answer, name: &str| -> Vec<String> {
        a.body["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
            .collect()
    };
    let spoofed = &pairs[1].0;
    assert!(upstream(spoofed, "x-real-ip").is_empty(), "{spoofed:?}");
    assert_eq!(spoofed.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(spoofed.header("ratelimit-remaining"), Some("8"));
    assert_eq!(upstream(&pairs[7].0, "x-tenant-id"), ["acme"]);
    assert!(pairs[3].0.header("www-authenticate").is_some());

    // Past the per-client limit of 10 a second on `/echo`.
    let burst: Vec<Ask> = (0..12).map(|_| ask("/echo", &[])).collect();
    let (pairs, late_burst) = both(&v2, &v1, &burst);
    for (i, (new, old)) in pairs.iter().enumerate() {
        assert_eq!(new, old, "request {i} of the burst");
    }
    let statuses: Vec<u16> = pairs.iter().map(|(a, _)| a.status).collect();
    assert_eq!(statuses, [[200; 10].as_slice(), &[429, 429]].concat());
    let refused = &pairs[10].0;
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert_eq!(refused.header("ratelimit-limit"), Some("10"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));

    // The same series; the same counts unless a try ran late (its
    // requests were counted, and their answers may have differed).
    let counts = !(late_first || late_burst);
    assert_same_lines(
        &plugin_lines(&v2.metrics(), counts),
        &plugin_lines(&v1.metrics(), counts),
        "after the requests",
    );
}

/// The one difference on purpose. Under 0.1 a refused `set-context` trapped,
/// so the filter's failure policy answered; under 0.2 the filter decides.
/// The auth and tenant filters fail the request (500) whatever the policy,
/// since the filters after them decide by the entry, and the rate-limit
/// filter lets it go on without the `RateLimit-*` headers the entry carries
/// to the response. 64 probes fill the request's context first, so every
/// further entry is refused.
#[test]
fn a_refused_context_entry_fails_auth_and_tenant_but_not_a_rate_limit() {
    let up = Upstream::start("app");
    let fill: Vec<String> = (0..64).map(|i| format!("fill{i}")).collect();
    let mut body = String::new();
    for name in &fill {
        body.push_str(&format!(
            "[filters.{name}]\nplugin = \"probe\"\ninstances = 1\n\
             [filters.{name}.config]\nname = \"{name}\"\nset_context = \"{name}\"\n\n"
        ));
    }
    let chain = |last: &str| {
        let names: Vec<String> = fill.iter().map(|n| format!("\"{n}\"")).collect();
        format!("[{}, \"{last}\"]", names.join(", "))
    };
    body.push_str(&format!(
        "[filters.auth]\nplugin = \"auth\"\nfailure = \"fail-open\"\ninstances = 1\n\
         [[filters.auth.config.api_keys]]\n\
         sha256 = \"8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873\"\n\
         subject = \"demo-acme\"\ntenant = \"acme\"\n\n\
         [filters.tenant]\nplugin = \"tenant\"\nfailure = \"fail-open\"\ninstances = 1\n\
         [filters.tenant.config]\nsources = [\"header\"]\n\n\
         [filters.ratelimit]\nplugin = \"ratelimit\"\ninstances = 1\n\
         [[filters.ratelimit.config.limits]]\nname = \"per-client\"\nrequests = 100\nwindow = \"1s\"\n\n\
         [upstreams.app]\ninstances = [\"{}\"]\n\n\
         [[route]]\nid = \"auth\"\npath_prefix = \"/auth\"\nupstream = \"app\"\nfilters = {}\n\n\
         [[route]]\nid = \"tenant\"\npath_prefix = \"/tenant\"\nupstream = \"app\"\nfilters = {}\n\n\
         [[route]]\nid = \"limited\"\npath_prefix = \"/limited\"\nupstream = \"app\"\nfilters = {}\n",
        up.addr,
        chain("auth"),
        chain("tenant"),
        chain("ratelimit"),
    ));
    let v1_plugins = fixture_plugins(&["probe"]);
    let start = |plugins: &Path| {
        let body = body.clone();
        let plugins = plugins.to_path_buf();
        Gateway::start_with(tempdir::Dir::new(), move |addr, admin| {
            format!("{}{body}", preamble_with_plugins(addr, admin, &plugins))
        })
    };
    let v2 = start(&plugin_dir());
    let v1 = start(v1_plugins.path());
    let asks = [
        ("/auth", KEY_ACME),
        ("/tenant", ("x-tenant-id", "acme")),
        ("/limited", ("x-any", "1")),
    ];
    let [auth, tenant, limited] = asks.map(|(path, header)| v2.get(path, &[header]));

    assert_eq!(auth.status, 500, "{}", auth.body_text());
    assert_eq!(
        auth.body_text(),
        "{\"error\":\"internal\",\"reason\":\"auth_context\"}\n"
    );
    assert_eq!(auth.header("cache-control"), Some("no-store"));
    assert_eq!(tenant.status, 500, "{}", tenant.body_text());
    assert_eq!(
        tenant.body_text(),
        r#"{"error":"internal","reason":"tenant_context"}"#
    );
    assert_eq!(limited.status, 200, "{}", limited.body_text());
    assert_eq!(limited.header("ratelimit-limit"), None);
    // Only the rate-limited request reached the upstream.
    assert_eq!(up.count(), 1);
    // None of them is a failed call: the filters answered.
    for filter in ["auth", "tenant", "ratelimit"] {
        assert_eq!(
            metric(
                &v2.metrics(),
                "gateway_plugin_failures_total",
                &[("filter", filter)]
            )
            .unwrap_or(0.0),
            0.0,
            "{filter}"
        );
    }

    // The 0.1 builds trapped: under `fail-open` the request went on, under
    // `fail-closed` (the rate limit's) the gateway answered.
    let [auth, tenant, limited] = asks.map(|(path, header)| v1.get(path, &[header]));
    assert_eq!((auth.status, tenant.status), (200, 200));
    assert_eq!(limited.status, 500, "{}", limited.body_text());
    assert_eq!(limited.header("x-gateway-error"), Some("filter-failed"));
}
