//! The admin page in a real browser: headless Chromium, driven through
//! chromedriver over W3C WebDriver, loads the page from a real gateway's
//! admin listener under its Content-Security-Policy, and is held to what
//! an operator relies on: no console errors, every configured route
//! listed with its filter chain, TCP routes with their open connections,
//! a breaker that opens shown open within seconds, live numbers that move
//! under traffic, and "disconnected" once the gateway is gone. A full-page screenshot is left in
//! target/admin-page.png.
//!
//! WebDriver is JSON over HTTP; the few calls these tests make are sent
//! with the harness's own HTTP reader rather than through a client crate.

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session behind a chromedriver of its own. Dropping
/// it ends the session and kills chromedriver's process group, which
/// holds every Chromium process it started, whether the test passed or not.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: tempdir::Dir,
}

impl Browser {
    fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing; install it with `make setup` (Debian's chromium and chromium-driver)"
            );
        }
        let profile = tempdir::Dir::new();
        // chromedriver binds the port itself, so it is chosen, not handed over.
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            // A group of its own: Chromium's processes join it, and one
            // signal to the group ends them all.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser
            .try_call("GET", "/status", None, Duration::from_secs(2))
            .map(|v| v["ready"] != json!(true))
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not start:\n{}",
                browser.driver_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let user_data = browser.profile.path().join("chromium");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Tests run as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
            // Console messages and CSP violations, read back by `console`.
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = browser
            .try_call(
                "POST",
                "/session",
                Some(capabilities),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", browser.driver_log()));
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver command; its `value`, or what went wrong.
    fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let (status, answer) = exchange(self.port, request.as_bytes(), timeout)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let mut v: Value = serde_json::from_slice(&answer)
            .map_err(|e| format!("{method} {path}: {e}: {}", String::from_utf8_lossy(&answer)))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {}", v["value"]));
        }
        Ok(v["value"].take())
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.try_call(method, &path, body, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns what it returned.
    fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Polls `script` every 100 ms until it returns something other than
    /// null or false, and returns that; fails after `limit` saying `what`
    /// was awaited, what the script last returned and the page's status.
    fn wait_for(&self, what: &str, limit: Duration, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(script, args.clone());
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if Instant::now() >= deadline {
                let status = self.eval(STATUS, json!([]));
                panic!(
                    "{what}: not within {limit:?} (last {v}; page status {status}; console {:?})",
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The browser's console entries since the last call (chromedriver
    /// hands each out once): console calls, uncaught errors, failed loads,
    /// CSP violations.
    fn console(&self) -> Vec<Value> {
        match self.call("POST", "/se/log", Some(json!({"type": "browser"}))) {
            Value::Array(entries) => entries,
            other => panic!("a log, not {other}"),
        }
    }

    /// The whole page, not only the window, as PNG, into `path`.
    fn screenshot(&self, path: &std::path::Path) -> Vec<u8> {
        let cdp = |cmd: &str, params: Value| {
            self.call(
                "POST",
                "/goog/cdp/execute",
                Some(json!({"cmd": cmd, "params": params})),
            )
        };
        let size = &cdp("Page.getLayoutMetrics", json!({}))["cssContentSize"];
        // Captured beyond the window, the page loses its scroll bar and
        // lays out as wide as the whole window: the wider of the two.
        let window = self.eval("return window.innerWidth", json!([]));
        let width = size["width"]
            .as_f64()
            .unwrap()
            .max(window.as_f64().unwrap());
        let shot = cdp(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
            }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        std::fs::write(path, &png).unwrap();
        png
    }
}

/// Sends `request` to chromedriver on `port` and reads the status and body
/// of its answer. Errors are returned, never raised: `Drop` uses this too,
/// and a panic there while a failed test unwinds would abort the run.
fn exchange(port: u16, request: &[u8], timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let closed = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                false
            }
            Err(e) => return Err(format!("no answer within {timeout:?}: {e}")),
        };
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            if closed {
                return Err("the connection closed before an answer".into());
            }
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("not HTTP: {head}"))?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse::<usize>().ok());
        let body = &got[end + 4..];
        match length {
            Some(n) if body.len() >= n => return Ok((status, body[..n].to_vec())),
            // Without a length the answer ends where the connection does.
            None if closed => return Ok((status, body.to_vec())),
            _ if closed => return Err("the connection closed mid-answer".into()),
            _ => {}
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.try_call("DELETE", &path, None, Duration::from_secs(5));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The page's live/disconnected indicator, as text.
const STATUS: &str = "return document.getElementById('status-text').textContent";

/// How many refreshes the page has shown.
const UPDATES: &str = "return Number(document.body.dataset.updates)";

/// A script for `Browser::wait_for`: runs `script` with the same
/// arguments and returns its value `v` once `test` (an expression of `v`)
/// holds, null before.
fn until(script: &str, test: &str) -> String {
    format!(
        "const v = (function () {{ {script} }}).apply(null, arguments);\nreturn ({test}) ? v : null;"
    )
}

/// The text of `td.COLUMN` in the row of route `arguments[0]` of
/// `section#SECTION`, or null while there is no such row.
fn route_cell(section: &str, column: &str) -> String {
    format!(
        "const tr = document.querySelector('section#{section} tr[data-route=\"' + CSS.escape(arguments[0]) + '\"]');\n\
         const td = tr && tr.querySelector('td.{column}');\n\
         return td ? td.textContent : null;"
    )
}

/// Fails on any SEVERE console entry: a script error, a resource that did
/// not load, a Content-Security-Policy violation.
fn assert_quiet_console(browser: &Browser) {
    let severe: Vec<Value> = browser
        .console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
}

/// Opens the admin page of `gw` and waits for its first refresh.
fn open_page(browser: &Browser, admin: SocketAddr) {
    browser.open(&format!("http://{admin}/"));
    browser.wait_for(
        "the page's first refresh",
        Duration::from_secs(10),
        &until(UPDATES, "v >= 1"),
        json!([]),
    );
}

/// The routes of config/gateway.toml, (id, filters in order), and the
/// names of its filters.
fn default_routes() -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let text = std::fs::read_to_string(repo().join("config/gateway.toml")).unwrap();
    let config: toml::Table = text.parse().expect("config/gateway.toml is TOML");
    let strings = |v: Option<&toml::Value>| -> Vec<String> {
        v.and_then(toml::Value::as_array)
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let routes = config["route"]
        .as_array()
        .expect("[[route]]s")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                strings(r.get("filters")),
            )
        })
        .collect();
    let filters = config["filters"]
        .as_table()
        .expect("[filters.*]")
        .keys()
        .cloned()
        .collect();
    (routes, filters)
}

#[test]
fn the_admin_page_loads_cleanly_and_lists_every_default_route() {
    let gw = start_default(&shipped_plugins());
    // Without the policy a CSP violation could not happen, and a quiet
    // console would prove nothing about inline script or style.
    let page = gw.admin("GET", "/");
    assert_eq!(page.status, 200);
    let csp = page
        .header("content-security-policy")
        .expect("the page is served with a Content-Security-Policy")
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("style-src 'self'"), "{csp}");

    let browser = Browser::start();
    open_page(&browser, gw.admin);
    // A second refresh: the page keeps polling, and updating rows in place
    // raises nothing either.
    browser.wait_for(
        "a second refresh",
        Duration::from_secs(10),
        &until(UPDATES, "v >= 2"),
        json!([]),
    );
    assert_eq!(browser.eval(STATUS, json!([])), json!("live"));

    let (routes, filters) = default_routes();
    assert!(routes.len() >= 3, "{routes:?}");
    let listed = browser.eval(
        "return Array.from(document.querySelectorAll('section#routes tbody tr'), tr => tr.dataset.route).sort()",
        json!([]),
    );
    let mut ids: Vec<&str> = routes.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    assert_eq!(listed, json!(ids), "the routes section");
    for (id, filters) in &routes {
        let chain = browser.eval(
            "return Array.from(document.querySelectorAll('section#routes tr[data-route=\"' + CSS.escape(arguments[0]) + '\"] td.filters li'), li => li.textContent)",
            json!([id]),
        );
        assert_eq!(chain, json!(filters), "route {id}'s filter chain");
        let live = browser.eval(&route_cell("live", "rate"), json!([id]));
        assert!(live.is_string(), "route {id} has no live row: {live}");
    }
    // Every filter of the default config has a plugin row.
    for filter in &filters {
        let row = browser.eval(
            "return document.querySelector('section#plugins tr[data-filter=\"' + CSS.escape(arguments[0]) + '\"]') !== null",
            json!([filter]),
        );
        assert_eq!(row, json!(true), "plugin row for filter {filter}");
    }
    // The default config has no TCP route, and says so.
    let tcp = browser.eval(
        "const s = document.querySelector('section#tcp-routes');\n\
         return [s.querySelectorAll('tbody tr').length, s.querySelector('.empty').classList.contains('hidden')];",
        json!([]),
    );
    assert_eq!(tcp, json!([0, false]), "the TCP routes section");
    assert_quiet_console(&browser);
}

#[test]
fn a_tcp_route_is_listed_with_its_names_and_its_open_connections() {
    let echo = crate::tcp::Service::echo();
    let gw = crate::tcp::gateway(2, |p| {
        format!(
            "[upstreams.echo]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"db\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\nmax_connections = 5\n\n\
             [[tcp_route]]\nid = \"web\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\nsni = [\"a.test\", \"*.b.test\"]\nproxy_protocol = \"v1\"\n\n\
             [[tcp_route]]\nid = \"rest\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\n",
            echo.addr, p[0], p[1], p[1]
        )
    });
    let browser = Browser::start();
    open_page(&browser, gw.admin);
    let cells = |id: &str| {
        browser.eval(
            "const tr = document.querySelector('section#tcp-routes tr[data-route=\"' + CSS.escape(arguments[0]) + '\"]');\n\
             return tr && Array.from(tr.cells, td => td.textContent);",
            json!([id]),
        )
    };
    let (db, shared) = (gw.extra[0].to_string(), gw.extra[1].to_string());
    assert_eq!(
        cells("web"),
        json!(["web", shared, "a.test, *.b.test", "echo", "v1", "0 / 10000"])
    );
    assert_eq!(
        cells("rest"),
        json!(["rest", shared, "any other", "echo", "none", "0 / 10000"])
    );
    assert_eq!(
        cells("db"),
        json!(["db", db, "any", "echo", "none", "0 / 5"])
    );

    let mut held = crate::tcp::connect(gw.extra[0]);
    held.write_all(b"ping").unwrap();
    held.read_exact(&mut [0u8; 4]).unwrap();
    let open = route_cell("tcp-routes", "open");
    browser.wait_for(
        "the held connection shown open",
        Duration::from_secs(10),
        &until(&open, "v === '1 / 5'"),
        json!(["db"]),
    );
    drop(held);
    browser.wait_for(
        "the closed connection gone",
        Duration::from_secs(10),
        &until(&open, "v === '0 / 5'"),
        json!(["db"]),
    );
    assert_quiet_console(&browser);
}

#[test]
fn an_instance_breaker_shows_open_within_seconds_of_failures() {
    let up = Upstream::start("app");
    // A long cool-down, so the breaker is still open when the page looks.
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 3\nfailure_rate = 0.0\ncool_down = \"60s\"\n\n\
         [[route]]\nid = \"api\"\nupstream = \"app\"\n",
        up.addr
    ));
    let browser = Browser::start();
    open_page(&browser, gw.admin);
    let breaker = "const tr = document.querySelector('section#upstreams tr[data-upstream=\"' + CSS.escape(arguments[0]) + '\"][data-instance=\"' + CSS.escape(arguments[1]) + '\"]');\n\
         const td = tr && tr.querySelector('td.breaker');\n\
         return td ? td.textContent : null;";
    let instance = json!(["app", up.addr.to_string()]);
    assert_eq!(
        browser.eval(breaker, instance.clone()),
        json!("closed"),
        "before any failure"
    );

    for _ in 0..3 {
        assert_eq!(gw.get("/status/500", &[]).status, 500);
    }
    assert_eq!(
        gw.get("/status/200", &[]).header("x-gateway-error"),
        Some("all-breakers-open"),
        "the gateway's own breaker is open"
    );
    let opened = Instant::now();
    browser.wait_for(
        "td.breaker reads open",
        Duration::from_secs(10),
        &until(breaker, "v === 'open'"),
        instance.clone(),
    );
    eprintln!("breaker shown open {:?} after it opened", opened.elapsed());
    assert_quiet_console(&browser);

    // The gateway gone, the page says so (and keeps the last state seen).
    let mut gw = gw;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let status = browser.wait_for(
        "the page shows disconnected",
        Duration::from_secs(10),
        &until(STATUS, "v.startsWith('disconnected')"),
        json!([]),
    );
    eprintln!("after the gateway stopped: {status}");
    assert_eq!(browser.eval(breaker, instance), json!("open"));
}

/// Sends GETs to the default config's routes every 150 ms (under its
/// ratelimit of 10 a second per client), at most `limit` of them, until
/// `stop`; returns how many got a 200.
fn trickle(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    limit: usize,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut ok = 0;
        for i in 0..limit {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (path, key) = match i % 3 {
                0 | 1 => ("/echo/live", None),
                _ => ("/tenants/acme/orders", Some("demo-key-acme")),
            };
            let mut request =
                format!("GET {path} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n");
            if let Some(key) = key {
                request.push_str(&format!("x-api-key: {key}\r\n"));
            }
            request.push_str("\r\n");
            if raw(addr, request.as_bytes()).status == 200 {
                ok += 1;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        ok
    })
}

#[test]
fn the_live_rate_rises_under_traffic_and_the_page_keeps_refreshing() {
    let gw = start_default(&shipped_plugins());
    let browser = Browser::start();
    open_page(&browser, gw.admin);
    let rate = route_cell("live", "rate");
    let idle = browser.eval(&rate, json!(["echo"]));
    assert!(idle.is_string(), "the echo route's live row: {idle}");

    let before = browser.eval(UPDATES, json!([])).as_f64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // 80 requests at 150 ms apart bound the load to 12 s.
    let load = trickle(gw.addr, stop.clone(), 80);
    let risen = browser.wait_for(
        "the echo route's td.rate above 0",
        Duration::from_secs(10),
        &until(&rate, "parseFloat(v) > 0"),
        json!(["echo"]),
    );
    let p99 = browser.eval(&route_cell("live", "p99"), json!(["echo"]));
    assert!(
        p99.as_str().and_then(|t| t.parse::<f64>().ok()).is_some(),
        "a p99 beside a rate of {risen}: {p99}"
    );
    // Still refreshing under load: three more refreshes, about a second apart.
    let seen = browser.eval(UPDATES, json!([])).as_f64().unwrap();
    browser.wait_for(
        "three more refreshes",
        Duration::from_secs(6),
        &until(UPDATES, "v >= arguments[0]"),
        json!([seen + 3.0]),
    );
    let after = browser.eval(UPDATES, json!([])).as_f64().unwrap();
    eprintln!("echo rate {risen}/s, p99 {p99} ms; refreshes {before} -> {after}");
    assert!(after >= before + 3.0, "{before} -> {after}");

    // The screenshot with the sparklines drawn, while traffic still flows.
    let shot = repo().join("target/admin-page.png");
    let png = browser.screenshot(&shot);
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    let page_height = browser
        .eval("return document.documentElement.scrollHeight", json!([]))
        .as_f64()
        .unwrap();
    assert!(
        f64::from(height) >= page_height,
        "the whole page ({page_height} px), not the window: {height} px"
    );
    eprintln!("screenshot: {} ({height} px high)", shot.display());

    stop.store(true, Ordering::Relaxed);
    let ok = load.join().unwrap();
    assert!(ok > 0, "no request of the trickle got a 200");
    assert_quiet_console(&browser);
}
