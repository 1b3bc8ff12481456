//! Hot reload through the real gateway binary: plugin files swapped under
//! load by every way files get written, config edits, SIGHUP, the admin
//! endpoint, refused reloads that leave the running version serving, and
//! upstream state carried over a reload.

use crate::common::{Gateway, Upstream, metric, plugin_dir, tempdir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn marker(version: u8) -> Vec<u8> {
    std::fs::read(plugin_dir().join(format!("marker_v{version}.wasm"))).unwrap()
}

/// A gateway whose plugin folder is its own, holding `marker.wasm` (v1),
/// with one route `/mark` through the marker filter to `upstream`.
/// `extra` is appended to the config (more sections), and the config
/// starts with `[reload] watch = {watch}`.
struct Fixture {
    gw: Gateway,
    plugins: PathBuf,
    upstream: SocketAddr,
    admin_addr: SocketAddr,
    listen: SocketAddr,
    watch: bool,
}

fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    watch: bool,
    extra: &str,
) -> String {
    format!(
        r#"[server]
listen = "{listen}"
request_timeout = "5s"
shutdown_grace = "5s"

[admin]
listen = "{admin}"

[plugins]
dir = "plugins"

[reload]
watch = {watch}

[filters.marker]
plugin = "marker"
instances = 4

[upstreams.app]
instances = ["{upstream}"]

[[route]]
id = "mark"
path_prefix = "/mark"
upstream = "app"
filters = ["marker"]
{extra}"#
    )
}

impl Fixture {
    fn start(upstream: &Upstream, watch: bool) -> Fixture {
        let dir = tempdir::Dir::new();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::write(plugins.join("marker.wasm"), marker(1)).unwrap();
        let up = upstream.addr;
        let mut addrs = None;
        let gw = Gateway::start_with(dir, |listen, admin| {
            addrs = Some((listen, admin));
            config_text(listen, admin, up, watch, "")
        });
        let (listen, admin_addr) = addrs.unwrap();
        Fixture {
            gw,
            plugins,
            upstream: up,
            admin_addr,
            listen,
            watch,
        }
    }

    fn plugin_file(&self) -> PathBuf {
        self.plugins.join("marker.wasm")
    }

    /// Rewrites the config with `extra` appended.
    fn write_config(&self, extra: &str) {
        std::fs::write(
            self.gw.config_path(),
            config_text(
                self.listen,
                self.admin_addr,
                self.upstream,
                self.watch,
                extra,
            ),
        )
        .unwrap();
    }

    fn mark(&self) -> (u16, Option<String>, Option<String>) {
        let r = self.gw.get("/mark", &[]);
        (
            r.status,
            r.header("x-mark").map(String::from),
            r.header("x-mark-request").map(String::from),
        )
    }

    fn reload(&self) -> (u16, serde_json::Value) {
        let r = self.gw.admin("POST", "/admin/reload");
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    fn plugins_json(&self) -> serde_json::Value {
        let r = self.gw.admin("GET", "/admin/plugins");
        assert_eq!(r.status, 200, "{}", r.body_text());
        serde_json::from_slice(&r.body).unwrap()
    }

    fn reloads(&self, result: &str) -> f64 {
        metric(
            &self.gw.metrics(),
            "gateway_reloads_total",
            &[("result", result)],
        )
        .unwrap_or_else(|| panic!("no gateway_reloads_total{{result={result}}}"))
    }
}

/// The ways plugin files get replaced on disk.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// Truncate and write the file itself (`cp`, most scripts).
    InPlace,
    /// Write a temporary file beside it, then rename over it (deploy tools,
    /// most editors).
    Rename,
    /// Move the old file aside, write a new one, delete the old (editors
    /// that keep a backup).
    Backup,
    /// Write half, pause longer than the debounce, write the rest: a copy
    /// still in progress, which must be refused and then picked up.
    SlowCopy,
}

fn write_plugin(path: &Path, bytes: &[u8], how: Write) {
    use std::io::Write as _;
    match how {
        Write::InPlace => std::fs::write(path, bytes).unwrap(),
        Write::Rename => {
            let tmp = path.with_file_name(".marker.wasm.tmp");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        Write::Backup => {
            let backup = path.with_file_name("marker.wasm~");
            std::fs::rename(path, &backup).unwrap();
            std::fs::write(path, bytes).unwrap();
            std::fs::remove_file(&backup).unwrap();
        }
        Write::SlowCopy => {
            let mut f = std::fs::File::create(path).unwrap();
            let half = bytes.len() / 2;
            f.write_all(&bytes[..half]).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(400));
            f.write_all(&bytes[half..]).unwrap();
        }
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: [u64; 2],
    failures: Vec<String>,
}

/// Clients on keep-alive connections sending `GET /mark` until `stop`
/// (or a bound on time and count), checking every answer.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client: Client<_, Empty<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let deadline = Instant::now() + Duration::from_secs(180);
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let client = client.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut t = Tally::default();
                        let uri: http::Uri = format!("http://{addr}/mark").parse().unwrap();
                        let mut sent = 0u64;
                        while !stop.load(Ordering::Relaxed)
                            && Instant::now() < deadline
                            && sent < 2_000_000
                        {
                            sent += 1;
                            match client.get(uri.clone()).await {
                                Ok(resp) => {
                                    let status = resp.status().as_u16();
                                    let h = |n: &str| {
                                        resp.headers()
                                            .get_all(n)
                                            .iter()
                                            .map(|v| v.to_str().unwrap_or("?").to_string())
                                            .collect::<Vec<_>>()
                                    };
                                    let (mark, seen) = (h("x-mark"), h("x-mark-request"));
                                    let body = resp.into_body().collect().await;
                                    let version = match (mark.as_slice(), seen.as_slice()) {
                                        ([m], [s]) if m == s && m == "v1" => Some(0),
                                        ([m], [s]) if m == s && m == "v2" => Some(1),
                                        _ => None,
                                    };
                                    match (status, version, body) {
                                        (200, Some(v), Ok(_)) => t.ok[v] += 1,
                                        (s, _, b) => t.failures.push(format!(
                                            "status {s}, x-mark {mark:?}, x-mark-request {seen:?}, body ok {}",
                                            b.is_ok()
                                        )),
                                    }
                                }
                                Err(e) => t.failures.push(format!("request failed: {e:?}")),
                            }
                        }
                        t
                    })
                })
                .collect();
            let mut all = Tally::default();
            for w in workers {
                let t = w.await.unwrap();
                all.ok[0] += t.ok[0];
                all.ok[1] += t.ok[1];
                all.failures.extend(t.failures);
            }
            all
        })
    })
}

#[test]
fn a_plugin_swapped_100_times_under_load_fails_no_request() {
    let upstream = Upstream::start("app");
    let f = Fixture::start(&upstream, true);
    assert_eq!(f.mark(), (200, Some("v1".into()), Some("v1".into())));
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(f.gw.addr, stop.clone());
    let versions = [marker(1), marker(2)];
    let ways = [Write::InPlace, Write::Rename, Write::Backup];
    let mut took: Vec<(usize, Write, Duration)> = Vec::new();
    for swap in 0..100 {
        let v = (swap + 1) % 2; // v2 first
        // Every tenth swap copies slowly; the rest cycle through the others.
        let how = if swap % 10 == 9 {
            Write::SlowCopy
        } else {
            ways[swap % 3]
        };
        write_plugin(&f.plugin_file(), &versions[v], how);
        let written = Instant::now();
        let want = format!("v{}", v + 1);
        loop {
            let (status, mark, _) = f.mark();
            assert_eq!(status, 200);
            if mark.as_deref() == Some(want.as_str()) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "swap {swap} ({how:?}) to {want} never served:\n{}",
                f.gw.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push((swap, how, written.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let tally = loader.join().unwrap();

    let total = tally.ok[0] + tally.ok[1];
    let slowest = took.iter().max_by_key(|t| t.2).unwrap();
    let mean = took.iter().map(|t| t.2).sum::<Duration>() / took.len() as u32;
    println!(
        "100 swaps under load: {total} requests ({} v1, {} v2), {} failed; write to serving: mean {:?}, slowest {:?} (swap {}, {:?})",
        tally.ok[0],
        tally.ok[1],
        tally.failures.len(),
        mean,
        slowest.2,
        slowest.0,
        slowest.1
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed or were marked by two versions, first: {:?}",
        tally.failures.len(),
        total + tally.failures.len() as u64,
        &tally.failures[..tally.failures.len().min(5)]
    );
    assert!(
        tally.ok[0] > 100 && tally.ok[1] > 100,
        "both versions served under load: {:?}",
        tally.ok
    );
    let late: Vec<_> = took
        .iter()
        .filter(|t| t.2 > Duration::from_secs(1))
        .collect();
    assert!(
        late.is_empty(),
        "a new version must serve within one second of its write: {late:?}"
    );
    // Each swap reloaded; each slow copy was refused at least once while
    // half written, said so in the log, and left the old version serving.
    assert!(f.reloads("success") >= 100.0);
    assert!(f.reloads("failure") >= 10.0, "{}", f.gw.metrics());
    assert!(
        f.gw.log().contains("is not a valid WebAssembly component"),
        "{}",
        f.gw.log()
    );
    // Two versions alternate, so each compiled once and was reused after.
    let p = f.plugins_json();
    let marker = &p["plugins"][0];
    assert_eq!(marker["name"], "marker");
    assert_eq!(marker["sha256"].as_str().unwrap().len(), 64);
    assert!(marker["calls"].as_u64().unwrap() > 0);
    assert_eq!(marker["failures"], 0);
}

#[test]
fn a_request_in_flight_finishes_on_the_version_it_started_with() {
    let upstream = Upstream::start("app");
    let f = Fixture::start(&upstream, false);
    let addr = f.gw.addr;
    let slow = std::thread::spawn(move || {
        crate::common::raw(
            addr,
            b"GET /mark/slow/1500 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
    });
    // Wait until the upstream has the slow request, then swap.
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() == 0 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(f.plugin_file(), marker(2)).unwrap();
    let (status, body) = f.reload();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "success");
    assert_eq!(body["changes"]["plugins_compiled"][0], "marker");
    assert_eq!(body["changes"]["filters_configured"][0], "marker");
    assert_eq!(body["changes"]["upstreams_kept"][0], "app");
    assert_eq!(f.mark().1.as_deref(), Some("v2"));
    // The slow request holds the old configuration alive, and only it.
    assert_eq!(f.plugins_json()["retired_generations_alive"], 1);
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mark"), Some("v1"));
    assert_eq!(r.header("x-mark-request"), Some("v1"));
    // Its end drops the old configuration with its instances.
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.plugins_json()["retired_generations_alive"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the old configuration outlived its last request"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn refused_reloads_leave_the_running_version_serving_and_say_why() {
    let upstream = Upstream::start("app");
    let f = Fixture::start(&upstream, false);
    let good = marker(1);
    let cases: Vec<(&str, Box<dyn Fn()>, &str)> = vec![
        (
            "not wasm",
            Box::new(|| std::fs::write(f.plugin_file(), b"\0asm but not really").unwrap()),
            "is not a valid WebAssembly component",
        ),
        (
            "half a file",
            Box::new(|| std::fs::write(f.plugin_file(), &good[..good.len() / 2]).unwrap()),
            "is not a valid WebAssembly component",
        ),
        (
            // A valid component that exports nothing the gateway calls.
            "another world",
            Box::new(|| std::fs::write(f.plugin_file(), "(component)").unwrap()),
            "does not match the gateway:filter world",
        ),
        (
            "file removed",
            Box::new(|| std::fs::remove_file(f.plugin_file()).unwrap()),
            "plugins/marker.wasm does not exist; build the plugin or fix the name",
        ),
        (
            "configure refuses",
            Box::new(|| f.write_config("\n[filters.marker.config]\nrefuse = true\n")),
            "filter `marker` refused its configuration: marker v1 refuses this configuration on purpose",
        ),
        (
            "TOML error",
            Box::new(|| f.write_config("\n[[route]]\nid = \"broken\"\npath_prefix = /oops\n")),
            "gateway.toml:30:15: string values must be quoted",
        ),
        (
            "breaker that never closes",
            Box::new(|| f.write_config("\n[upstreams.app.breaker]\nhalf_open_probes = 0\n")),
            "gateway.toml:29:20: half_open_probes = 0 in [upstreams.app.breaker] lets no probe through",
        ),
    ];
    for (i, (name, spoil, reason)) in cases.iter().enumerate() {
        let generation = f.plugins_json()["generation"].as_u64().unwrap();
        spoil();
        let (status, body) = f.reload();
        assert_eq!(status, 422, "{name}: {body}");
        assert_eq!(body["result"], "failure", "{name}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(reason), "{name}: {error}");
        // The old version serves on, and every place a reason goes has it.
        assert_eq!(
            f.mark(),
            (200, Some("v1".into()), Some("v1".into())),
            "{name}"
        );
        assert_eq!(f.reloads("failure"), (i + 1) as f64, "{name}");
        assert!(f.gw.log().contains(reason), "{name}:\n{}", f.gw.log());
        let p = f.plugins_json();
        assert_eq!(p["generation"].as_u64().unwrap(), generation, "{name}");
        assert_eq!(p["last_reload"]["result"], "failure");
        assert!(
            p["last_reload"]["error"].as_str().unwrap().contains(reason),
            "{name}: {p}"
        );
        // Errors in the config file itself (a missing plugin file is one:
        // the config names it) are not any plugin's.
        if !matches!(
            *name,
            "TOML error" | "file removed" | "breaker that never closes"
        ) {
            let marker = &p["plugins"][0];
            assert!(
                marker["last_reload_error"]["error"]
                    .as_str()
                    .unwrap()
                    .contains(reason),
                "{name}: {p}"
            );
            // The running version is still the one described.
            assert!(marker["instances_warm"].as_u64().unwrap() >= 1);
        }
        // Put things right; the next reload applies.
        std::fs::write(f.plugin_file(), &good).unwrap();
        f.write_config("");
        let (status, body) = f.reload();
        assert_eq!(status, 200, "{name}, repaired: {body}");
    }
    assert_eq!(f.reloads("success"), cases.len() as f64);
    // A reload that changes nothing keeps the filter and its warm instances.
    let (_, body) = f.reload();
    assert_eq!(body["changes"]["filters_kept"][0], "marker", "{body}");
    assert_eq!(body["changes"]["plugins_reused"][0], "marker", "{body}");
    assert!(
        body["changes"]["filters_configured"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let p = f.plugins_json();
    assert!(p["plugins"][0]["last_reload_error"].is_null(), "{p}");
}

#[test]
fn sighup_and_config_edits_reload_the_routes() {
    let upstream = Upstream::start("app");
    let f = Fixture::start(&upstream, false);
    assert_eq!(f.gw.get("/other", &[]).status, 404);
    let other = "\n[[route]]\nid = \"other\"\npath_prefix = \"/other\"\nupstream = \"app\"\n";
    f.write_config(other);
    // Watching is off here: only the signal reloads.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.gw.get("/other", &[]).status, 404);
    f.gw.signal(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.gw.get("/other", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            f.gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f.gw.log().contains("SIGHUP received; reloading"));
    assert_eq!(f.plugins_json()["last_reload"]["trigger"], "sighup");
    // A change that needs a restart is applied except for that part.
    std::fs::write(
        f.gw.config_path(),
        config_text(
            "127.0.0.1:1".parse().unwrap(),
            f.admin_addr,
            f.upstream,
            false,
            "",
        ),
    )
    .unwrap();
    let (status, body) = f.reload();
    assert_eq!(status, 200, "{body}");
    assert_eq!(f.gw.get("/other", &[]).status, 404);
    let p = f.plugins_json();
    assert_eq!(
        p["last_reload"]["needs_restart"][0], "[server] listen",
        "{p}"
    );
    assert!(
        f.gw.log()
            .contains("[server] listen changed; that takes a restart")
    );
}

#[test]
fn the_watcher_takes_up_a_config_replaced_by_rename() {
    let upstream = Upstream::start("app");
    let f = Fixture::start(&upstream, true);
    let text = config_text(
        f.listen,
        f.admin_addr,
        f.upstream,
        true,
        "\n[[route]]\nid = \"other\"\npath_prefix = \"/other\"\nupstream = \"app\"\n",
    );
    let tmp = f.gw.config_path().with_file_name(".gateway.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, f.gw.config_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.gw.get("/other", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the edit was not taken up:\n{}",
            f.gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.plugins_json()["last_reload"]["trigger"], "watch");
    // A file that is neither the config nor a plugin changes nothing.
    let generation = f.plugins_json()["generation"].clone();
    std::fs::write(f.plugins.join("notes.txt"), b"junk").unwrap();
    std::fs::write(f.gw.dir.path().join("notes.txt"), b"junk").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.plugins_json()["generation"], generation);

    // A config naming a plugin not there yet is refused; the plugin copied
    // in afterwards is taken up by itself.
    let second = "\n[filters.second]\nplugin = \"second\"\n\n[[route]]\nid = \"second\"\npath_prefix = \"/second\"\nupstream = \"app\"\nfilters = [\"second\"]\n";
    f.write_config(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.plugins_json()["last_reload"]["result"] != "failure" {
        assert!(Instant::now() < deadline, "the config edit was not tried");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.gw.get("/second", &[]).status, 404);
    std::fs::write(f.plugins.join("second.wasm"), marker(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.gw.get("/second", &[]).header("x-mark") != Some("v2") {
        assert!(
            Instant::now() < deadline,
            "the new plugin was not taken up:\n{}",
            f.gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The breaker-state gauge for one instance.
fn breaker(scrape: &str, instance: &Upstream) -> f64 {
    metric(
        scrape,
        "gateway_circuit_breaker_state",
        &[("endpoint", &instance.addr.to_string())],
    )
    .unwrap()
}

fn opened(scrape: &str, instance: &Upstream) -> f64 {
    metric(
        scrape,
        "gateway_upstream_connections_opened_total",
        &[("endpoint", &instance.addr.to_string())],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_reload_keeps_pools_breakers_and_health_of_what_did_not_change() {
    let app = Upstream::start("app");
    let flaky = Upstream::start("flaky");
    let spare = Upstream::start("spare");
    let sick = Upstream::start("sick");
    let f = Fixture::start(&app, false);
    // `strategy` changes sick and steady without touching their connection,
    // health or breaker settings.
    let clusters = |flaky_instances: &str, app_connect: &str, extra_route: bool, strategy: &str| {
        format!(
            r#"
[upstreams.flaky]
instances = [{flaky_instances}]
failure_on = ["5xx"]
breaker = {{ consecutive_failures = 2, cool_down = "60s", max_cool_down = "60s" }}

[upstreams.sick]
instances = ["{sick}"]
strategy = "{strategy}"
health = {{ path = "/status/503", interval = "500ms", unhealthy_threshold = 2, healthy_threshold = 2 }}

[upstreams.steady]
instances = ["{app}"]
strategy = "{strategy}"
connect_timeout = "{app_connect}"

[[route]]
id = "flaky"
path_prefix = "/flaky"
upstream = "flaky"

[[route]]
id = "sick"
path_prefix = "/sick"
upstream = "sick"

[[route]]
id = "steady"
path_prefix = "/steady"
upstream = "steady"
{}"#,
            if extra_route {
                "\n[[route]]\nid = \"more\"\npath_prefix = \"/more\"\nupstream = \"steady\"\n"
            } else {
                ""
            },
            sick = sick.addr,
            app = app.addr,
        )
    };
    let flaky_only = format!("\"{}\"", flaky.addr);
    f.write_config(&clusters(&flaky_only, "1s", false, "round_robin"));
    assert_eq!(f.reload().0, 200);

    // Open flaky's breaker, let health checks find `sick` down, and pool a
    // connection to `steady`.
    for _ in 0..2 {
        assert_eq!(f.gw.get("/flaky/status/500", &[]).status, 500);
    }
    let r = f.gw.get("/flaky", &[]);
    assert_eq!(r.header("x-gateway-error"), Some("all-breakers-open"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.gw.get("/sick", &[]).header("x-gateway-error") != Some("no-healthy-instance") {
        assert!(Instant::now() < deadline, "sick never went unhealthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        assert_eq!(f.gw.get("/steady", &[]).status, 200);
    }
    // Usually one: back-to-back requests may land on two worker threads
    // before the first one's connection is back in the pool. What follows
    // compares with this count.
    let pooled = opened(&f.gw.metrics(), &app);
    assert!((1.0..=2.0).contains(&pooled), "{pooled} connections opened");

    // An unrelated change: every upstream is kept whole.
    f.write_config(&clusters(&flaky_only, "1s", true, "round_robin"));
    let (status, body) = f.reload();
    assert_eq!(status, 200, "{body}");
    let kept = body["changes"]["upstreams_kept"].as_array().unwrap().len();
    assert_eq!(kept, 4, "{body}");
    assert_eq!(
        f.gw.get("/flaky", &[]).header("x-gateway-error"),
        Some("all-breakers-open")
    );
    // Right after the swap, before any new health check could have run.
    assert_eq!(
        f.gw.get("/sick", &[]).header("x-gateway-error"),
        Some("no-healthy-instance")
    );
    assert_eq!(f.gw.get("/more", &[]).status, 200);
    assert_eq!(
        opened(&f.gw.metrics(), &app),
        pooled,
        "the pooled connection was dropped"
    );

    // flaky gains an instance: the cluster is renewed, but the instance it
    // had keeps its open breaker while the new one takes the traffic.
    let flaky_seen = flaky.count();
    let both = format!("\"{}\", \"{}\"", flaky.addr, spare.addr);
    f.write_config(&clusters(&both, "1s", true, "round_robin"));
    let (_, body) = f.reload();
    assert_eq!(body["changes"]["upstreams_renewed"][0], "flaky", "{body}");
    for _ in 0..4 {
        let r = f.gw.get("/flaky", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("spare"));
    }
    assert_eq!(flaky.count(), flaky_seen);
    let scrape = f.gw.metrics();
    assert_eq!(breaker(&scrape, &flaky), 2.0, "open");
    assert_eq!(breaker(&scrape, &spare), 0.0, "closed");

    // sick and steady renewed with the same health and connection settings:
    // sick is still known down at once (a fresh record would call it
    // healthy until two checks failed) and steady's connection is reused.
    f.write_config(&clusters(&both, "1s", true, "random"));
    let (_, body) = f.reload();
    let renewed = &body["changes"]["upstreams_renewed"];
    assert_eq!(renewed, &serde_json::json!(["sick", "steady"]), "{body}");
    assert_eq!(
        f.gw.get("/sick", &[]).header("x-gateway-error"),
        Some("no-healthy-instance")
    );
    assert_eq!(f.gw.get("/steady", &[]).status, 200);
    assert_eq!(
        opened(&f.gw.metrics(), &app),
        pooled,
        "the pool was not carried over"
    );

    // New connection settings for steady: a new pool, a new connection.
    f.write_config(&clusters(&both, "2s", true, "random"));
    assert_eq!(f.reload().0, 200);
    assert_eq!(f.gw.get("/steady", &[]).status, 200);
    assert_eq!(opened(&f.gw.metrics(), &app), pooled + 1.0);
}

/// `bytes` (a component) with a custom section appended holding `n`: the
/// same code under a new content hash, so the gateway compiles it anew.
fn unique_version(bytes: &[u8], n: usize) -> Vec<u8> {
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
    let name = b"reload-soak";
    let payload = n.to_le_bytes();
    let mut section = Vec::new();
    leb128(name.len(), &mut section);
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    leb128(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// Opt in: `cargo test --release --test e2e reload:: -- --ignored --nocapture`.
/// A thousand reloads, each compiling a plugin version never seen before,
/// configuring a fresh filter instance, renewing an upstream and serving
/// requests in between, must not grow the gateway's resident memory by
/// more than 10% over what it had after the first hundred.
#[test]
#[ignore = "takes a minute or more; run with --ignored"]
fn a_thousand_reloads_do_not_grow_memory() {
    let upstream = Upstream::start("app");
    let f = Fixture::start(&upstream, false);
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", f.gw.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let versions = [marker(1), marker(2)];
    let started = Instant::now();
    let mut at_100 = 0;
    let mut samples = Vec::new();
    for i in 1..=1000 {
        std::fs::write(f.plugin_file(), unique_version(&versions[i % 2], i)).unwrap();
        // The idle timeout changes every time, so the upstream is renewed,
        // and the filter's settings too, so it is configured anew.
        f.write_config(&format!(
            "\n[filters.marker.config]\nround = {i}\n\n[upstreams.other]\ninstances = [\"{}\"]\nidle_timeout = \"{}ms\"\n",
            upstream.addr,
            1000 + i
        ));
        let (status, body) = f.reload();
        assert_eq!(status, 200, "reload {i}: {body}");
        assert_eq!(body["changes"]["plugins_compiled"][0], "marker", "{body}");
        for _ in 0..5 {
            assert_eq!(f.mark().0, 200);
        }
        if i % 100 == 0 {
            let kb = rss();
            samples.push((i, kb));
            if i == 100 {
                at_100 = kb;
            }
        }
    }
    let at_1000 = rss();
    println!(
        "1000 reloads in {:?}; resident memory (KiB) by reload: {samples:?}; growth after the first 100: {:+.1}%",
        started.elapsed(),
        (at_1000 as f64 / at_100 as f64 - 1.0) * 100.0
    );
    assert!(
        at_1000 as f64 <= at_100 as f64 * 1.10,
        "resident memory grew from {at_100} KiB to {at_1000} KiB"
    );
}
