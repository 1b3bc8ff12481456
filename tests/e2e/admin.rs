//! The admin listener's page and state: `/admin/state` lists routes with
//! their chains, upstream instances with breakers and pools, filters and
//! recent reloads, and live per-route traffic sampled in the process; the
//! page is served from the binary under a strict policy; changing the
//! gateway takes the admin token.

use crate::common::{Gateway, Upstream, check_config, preamble, raw, tempdir};
use serde_json::Value;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";

fn state(gw: &Gateway) -> Value {
    let r = gw.admin("GET", "/admin/state");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    serde_json::from_slice(&r.body).expect("/admin/state is JSON")
}

/// Polls `/admin/state` until `pred` holds, for up to `within`.
fn state_until(gw: &Gateway, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = state(gw);
        if pred(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn reload_with(gw: &Gateway, authorization: Option<&str>) -> crate::common::RawResponse {
    admin_call(gw, "POST", "/admin/reload", authorization)
}

/// A bodiless admin request with an `Authorization` header, if given.
fn admin_call(
    gw: &Gateway,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> crate::common::RawResponse {
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    raw(
        gw.admin,
        format!("{method} {path} HTTP/1.1\r\nhost: admin\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
}

fn two_routes(app: &Upstream) -> String {
    format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 3\nfailure_rate = 0.0\ncool_down = \"30s\"\n\n[filters.hdr]\nplugin = \"headers\"\n\n[[route]]\nid = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\nfilters = [\"hdr\"]\n\n[[route]]\nid = \"rest\"\nupstream = \"app\"\n",
        app.addr
    )
}

#[test]
fn with_a_token_set_reloads_need_it_and_reads_stay_open() {
    let app = Upstream::start("app");
    let gw = Gateway::start_with_env(
        tempdir::Dir::new(),
        &[("ADMIN_TOKEN_FOR_TEST", TOKEN)],
        |addr, admin| {
            preamble(addr, admin).replace(
                &format!("[admin]\nlisten = \"{admin}\"\n"),
                &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"${{ADMIN_TOKEN_FOR_TEST}}\"\n"),
            ) + &two_routes(&app)
        },
    );
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789ab"),
        Some(&*format!("Bearer {TOKEN}x")),
        Some(&*format!("bearer{TOKEN}")),
    ] {
        let r = reload_with(&gw, auth);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body_text());
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
    }
    assert_eq!(
        state(&gw)["generation"],
        0,
        "a refused reload changes nothing"
    );
    let r = reload_with(&gw, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let s = state(&gw);
    assert_eq!(s["generation"], 1);
    assert_eq!(s["admin"]["token_required"], true);
    // Reading is open: the page, its files, metrics, plugins.
    for path in [
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/metrics",
        "/admin/plugins",
    ] {
        assert_eq!(gw.admin("GET", path).status, 200, "{path}");
    }
}

#[test]
fn on_loopback_without_a_token_reloads_are_open() {
    let app = Upstream::start("app");
    let gw = Gateway::start(&two_routes(&app));
    assert_eq!(reload_with(&gw, None).status, 200);
    assert_eq!(state(&gw)["admin"]["token_required"], false);
}

#[test]
fn check_warns_of_a_public_admin_listener_without_a_token_and_refuses_a_short_one() {
    let public = "[admin]\nlisten = \"0.0.0.0:9901\"\n";
    let (ok, out, err) = check_config(public);
    assert!(ok, "{err}");
    assert!(
        out.contains("warning: [admin] listen 0.0.0.0:9901 is not on loopback and no token is set"),
        "{out}"
    );
    let (ok, out, err) = check_config(&format!("{public}token = \"{TOKEN}\"\n"));
    assert!(ok, "{err}");
    assert!(!out.contains("warning"), "{out}");
    let (ok, out, _) = check_config("[admin]\nlisten = \"127.0.0.1:9901\"\n");
    assert!(ok && !out.contains("warning"), "{out}");
    let (ok, _, err) = check_config("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"short\"\n");
    assert!(!ok);
    assert!(
        err.contains("CONFIG:9:9") && err.contains("[admin] token must be at least 16 characters"),
        "{err}"
    );
}

#[test]
fn the_page_is_served_under_a_policy_that_allows_only_its_own_files() {
    let app = Upstream::start("app");
    let gw = Gateway::start(&two_routes(&app));
    let page = gw.admin("GET", "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("a policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let js = gw.admin("GET", "/assets/app.js");
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(
        js.body_text().contains("/admin/state"),
        "the script reads the state"
    );
    assert_eq!(gw.admin("GET", "/assets/other.js").status, 404);
}

#[test]
fn state_lists_routes_chains_instances_and_reloads_and_shows_a_breaker_open_with_its_reason() {
    let app = Upstream::start("app");
    let gw = Gateway::start(&two_routes(&app));
    let s = state(&gw);
    let routes = s["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["id"], "api");
    assert_eq!(routes[0]["path_prefix"], "/api");
    assert_eq!(routes[0]["filters"], serde_json::json!(["hdr"]));
    assert_eq!(routes[1]["filters"], serde_json::json!([]));
    let instance = &s["upstreams"][0]["instances"][0];
    assert_eq!(instance["address"], app.addr.to_string());
    assert_eq!(instance["breaker"]["state"], "closed");
    assert_eq!(instance["breaker"]["reason"], Value::Null);
    // No active checks: counted healthy, and said to be unchecked.
    assert_eq!(instance["healthy"], true);
    assert_eq!(instance["health_checked"], false);
    let plugin = &s["plugins"][0];
    assert_eq!(plugin["filter"], "hdr");
    assert_eq!(plugin["plugin"], "headers.wasm");
    assert_eq!(plugin["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(plugin["crash_loop"], false);
    assert_eq!(s["reloads"][0]["trigger"], "start");
    assert_eq!(
        s["reloads"][0]["changes"],
        serde_json::json!([
            "route api served",
            "route rest served",
            "plugin headers compiled",
            "filter hdr configured"
        ])
    );

    // A reload that adds a route says so.
    let config = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        format!(
            "{config}\n[[route]]\nid = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"app\"\n"
        ),
    )
    .unwrap();
    assert_eq!(reload_with(&gw, None).status, 200);
    // The file watcher may have applied it first; either way one
    // successful attempt, newest first, says what it added.
    let s = state(&gw);
    let reloads = s["reloads"].as_array().unwrap();
    assert_eq!(reloads.last().unwrap()["trigger"], "start");
    let adding = reloads
        .iter()
        .find(|r| {
            r["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "route extra added")
        })
        .unwrap_or_else(|| panic!("{s}"));
    assert_eq!(adding["result"], "success");
    assert!(adding["generation"].as_u64().unwrap() >= 1);

    for _ in 0..3 {
        assert_eq!(gw.get("/status/500", &[]).status, 500);
    }
    let s = state_until(&gw, Duration::from_secs(5), |s| {
        s["upstreams"][0]["instances"][0]["breaker"]["state"] == "open"
    });
    let breaker = &s["upstreams"][0]["instances"][0]["breaker"];
    assert_eq!(breaker["state"], "open", "{s}");
    assert_eq!(breaker["reason"], "consecutive_failures");
    assert!(breaker["since_seconds"].as_f64().unwrap() < 5.0);
}

#[test]
fn live_traffic_shows_each_routes_rate_latency_and_errors() {
    let app = Upstream::start("app");
    let gw = Gateway::start(&two_routes(&app));
    // About 50 requests a second to `api` for three seconds, a fifth failing.
    let until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0u32;
    while Instant::now() < until {
        let path = if sent.is_multiple_of(5) {
            "/api/status/503"
        } else {
            "/api/ok"
        };
        gw.get(path, &[]);
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = state_until(&gw, Duration::from_secs(3), |s| {
        s["live"]["routes"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["route"] == "api" && r["points"].as_array().unwrap().len() >= 3)
        })
    });
    let live = s["live"]["routes"].as_array().unwrap();
    let api = live
        .iter()
        .find(|r| r["route"] == "api")
        .expect("api in live traffic");
    let busy: Vec<&Value> = api["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["rate"].as_f64().unwrap() > 0.0)
        .collect();
    assert!(busy.len() >= 2, "{api}");
    let total: f64 = busy.iter().map(|p| p["rate"].as_f64().unwrap()).sum();
    assert!(
        total >= sent as f64 * 0.5 && total <= sent as f64 * 1.5,
        "{total} of {sent}: {api}"
    );
    let errors: f64 = busy
        .iter()
        .map(|p| p["error_rate"].as_f64().unwrap())
        .sum::<f64>()
        / busy.len() as f64;
    assert!((0.1..=0.3).contains(&errors), "error rate {errors}: {api}");
    assert!(
        busy.iter()
            .all(|p| p["p99_ms"].as_f64().unwrap() >= p["p50_ms"].as_f64().unwrap())
    );
    // The idle route has points at rate 0.
    let rest = live
        .iter()
        .find(|r| r["route"] == "rest")
        .expect("rest in live traffic");
    assert!(
        rest["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["rate"] == 0.0 && p["p50_ms"].is_null())
    );
}

/// `POST /admin/drain` (and `gateway drain`, which sends it): `/ready`
/// fails while requests are still served, an HTTP/1 keep-alive connection
/// is told to close after its answer, `DELETE` undoes it, and the token
/// guards both; once the process is stopping, it cannot be undone.
#[test]
fn a_drain_fails_ready_closes_kept_connections_and_can_be_undone() {
    use std::io::{BufReader, Write};
    let app = Upstream::start("app");
    let gw = Gateway::start_with_env(
        tempdir::Dir::new(),
        &[("ADMIN_TOKEN_FOR_TEST", TOKEN)],
        |addr, admin| {
            preamble(addr, admin)
                .replace(
                    &format!("[admin]\nlisten = \"{admin}\"\n"),
                    &format!(
                        "[admin]\nlisten = \"{admin}\"\ntoken = \"${{ADMIN_TOKEN_FOR_TEST}}\"\n"
                    ),
                )
                .replace("[server]\n", "[server]\ndrain_delay = \"30s\"\n")
                + &two_routes(&app)
        },
    );
    let drain = |method: &str, token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        admin_call(&gw, method, "/admin/drain", bearer.as_deref())
    };
    // One keep-alive connection, opened before the drain.
    let conn = std::net::TcpStream::connect(gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ask = |conn: &std::net::TcpStream| {
        (&*conn)
            .write_all(b"GET /rest HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        crate::common::read_response(&mut reader)
    };
    let first = ask(&conn);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), None, "kept open while serving");

    assert_eq!(drain("POST", None).status, 401, "the token guards a drain");
    assert_eq!(gw.admin("GET", "/ready").status, 200);
    let r = drain("POST", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let ready = gw.admin("GET", "/ready");
    assert_eq!(
        (ready.status, ready.body_text().as_str()),
        (503, "draining\n")
    );
    // Still served, but the kept connection is told to go.
    let second = ask(&conn);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut reader.get_mut(), &mut rest);
    assert!(matches!(closed, Ok(0)), "the gateway closed it: {closed:?}");
    assert_eq!(
        gw.get("/rest", &[]).status,
        200,
        "new connections are served"
    );

    assert_eq!(drain("DELETE", None).status, 401);
    assert_eq!(drain("DELETE", Some(TOKEN)).status, 200);
    assert_eq!(gw.admin("GET", "/ready").status, 200, "back in service");

    // SIGTERM under a 30 s drain_delay: still serving, /ready failing, and
    // no way back.
    gw.signal(15);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.admin("GET", "/ready").status != 503 {
        assert!(Instant::now() < deadline, "SIGTERM did not drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gw.get("/rest", &[]).status,
        200,
        "served through drain_delay"
    );
    assert_eq!(drain("DELETE", Some(TOKEN)).status, 409);
}
