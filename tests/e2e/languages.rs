//! Filters in four languages, each built from its source in
//! plugins/examples with the toolchain `scripts/setup.sh` installs, the
//! commands README.md gives, then run in one chain through the real
//! gateway: server-timing (Rust, the SDK), shard-header (JavaScript,
//! componentize-js), deny-paths (Python, componentize-py) and
//! require-user-agent (WAT, `gateway plugin componentize`).
//!
//! Also `gateway plugin check` on those components, on a core module, on a
//! component of another world and on a JavaScript build that imports HTTP.

use crate::common::{Gateway, Upstream, gateway_command, metric, repo, tempdir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const EXAMPLES: [&str; 4] = [
    "server-timing",
    "shard-header",
    "deny-paths",
    "require-user-agent",
];

fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds every example once per test run into a directory of its own and
/// returns it; each is then `NAME.wasm` there.
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join(format!("target/languages-test/{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let examples = repo().join("plugins/examples");

        // Rust: the plugins workspace builds it with the shipped plugins.
        crate::common::build_plugins();
        std::fs::copy(
            crate::common::plugin_dir().join("server_timing.wasm"),
            out.join("server-timing.wasm"),
        )
        .unwrap();

        // JavaScript: the package's own build script, written elsewhere.
        run(
            "npm run build (shard-header)",
            Command::new("npm")
                .args(["run", "--silent", "build", "--", "--out"])
                .arg(out.join("shard-header.wasm"))
                .current_dir(examples.join("shard-header")),
        );

        // Python.
        run(
            "componentize-py (deny-paths)",
            Command::new(repo().join("target/toolchains/python/bin/componentize-py"))
                .arg("-d")
                .arg(repo().join("wit"))
                .args(["-w", "plugin", "componentize", "-p"])
                .arg(examples.join("deny-paths"))
                .args(["deny_paths", "-o"])
                .arg(out.join("deny-paths.wasm")),
        );

        // The test filters that print and raise, with the same toolchains.
        run(
            "componentize-py (raise-py)",
            Command::new(repo().join("target/toolchains/python/bin/componentize-py"))
                .arg("-d")
                .arg(repo().join("wit"))
                .args(["-w", "plugin", "componentize", "-p"])
                .arg(repo().join("tests/plugins/raise-py"))
                .args(["raise_on", "-o"])
                .arg(out.join("raise-py.wasm")),
        );
        run(
            "componentize-js (raise-js)",
            Command::new(examples.join("shard-header/node_modules/.bin/componentize-js"))
                .arg(repo().join("tests/plugins/raise-js/filter.js"))
                .arg("--wit")
                .arg(repo().join("wit"))
                .args([
                    "--world-name",
                    "plugin",
                    "--disable",
                    "http",
                    "fetch-event",
                    "--out",
                ])
                .arg(out.join("raise-js.wasm")),
        );

        // WAT, with the gateway itself.
        run(
            "gateway plugin componentize (require-user-agent)",
            gateway_command()
                .args(["plugin", "componentize"])
                .arg(examples.join("require-user-agent/filter.wat"))
                .arg("-o")
                .arg(out.join("require-user-agent.wasm")),
        );
        out
    })
}

/// FNV-1a, 32 bit: what shard-header computes over the path's bytes.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The four filters on one route, in the order ua, deny, shard, timing.
fn chain(filters: &[(&str, &str)]) -> String {
    let settings = |name: &str, default: &str| -> String {
        filters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(default, |(_, s)| s)
            .to_string()
    };
    format!(
        r#"
[filters.ua]
plugin = "require-user-agent"
instances = 2
{ua}

[filters.deny]
plugin = "deny-paths"
instances = 2
{deny}

[filters.shard]
plugin = "shard-header"
instances = 2
{shard}

[filters.timing]
plugin = "server-timing"
instances = 2
{timing}

[[route]]
id = "app"
path_prefix = "/app"
upstream = "app"
filters = ["ua", "deny", "shard", "timing"]
"#,
        ua = settings("ua", ""),
        deny = settings(
            "deny",
            "[filters.deny.config]\ndeny = [\"/app/admin\", \"/app/internal/\"]"
        ),
        shard = settings(
            "shard",
            "[filters.shard.config]\nheader = \"x-shard\"\nshards = 8"
        ),
        timing = settings("timing", "[filters.timing.config]\nmetric = \"edge\""),
    )
}

fn start(upstream: &Upstream) -> Gateway {
    start_with_env(upstream, &[])
}

fn start_with_env(upstream: &Upstream, env: &[(&str, &str)]) -> Gateway {
    let plugins = built();
    let up = upstream.addr;
    Gateway::start_with_env(tempdir::Dir::new(), env, |listen, admin| {
        let preamble = crate::common::preamble_with_plugins(listen, admin, plugins);
        format!(
            "{preamble}[upstreams.app]\ninstances = [\"{up}\"]\n{}",
            chain(&[])
        )
    })
}

const UA: (&str, &str) = ("user-agent", "languages-test/1.0");

#[test]
fn filters_in_four_languages_run_in_one_chain() {
    let upstream = Upstream::start("app");
    let gw = start(&upstream);

    // Python declared its series at zero in `configure`.
    let scrape = gw.metrics();
    for prefix in ["/app/admin", "/app/internal"] {
        assert_eq!(
            metric(
                &scrape,
                "gateway_plugin_deny_paths_denied_total",
                &[("prefix", prefix)]
            ),
            Some(0.0),
            "{prefix} not declared:\n{scrape}"
        );
    }

    // Through all four: JavaScript tags the shard, Rust times the exchange.
    for path in [
        "/app/orders/1",
        "/app/b/c",
        "/app/%C3%BCber",
        "/app/administrator",
    ] {
        let r = gw.get(path, &[UA]);
        assert_eq!(r.status, 200, "{path}: {}\n{}", r.body_text(), gw.log());
        let seen = upstream.last();
        let upstream_path = seen.uri.split('?').next().unwrap().to_string();
        assert_eq!(
            seen.header("x-shard"),
            Some((fnv1a(&upstream_path) % 8).to_string().as_str()),
            "{path}"
        );
        let timing = r.header("server-timing").expect("server-timing");
        let ms: f64 = timing
            .strip_prefix("edge;dur=")
            .unwrap_or_else(|| panic!("{timing}"))
            .parse()
            .unwrap();
        assert!(ms > 0.0, "{timing}");
    }
    let forwarded = upstream.count();

    // WAT: no User-Agent, no entry; and the filters after it never ran.
    let r = gw.get("/app/orders/1", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body_text(), "a User-Agent header is required\n");
    assert_eq!(r.header("server-timing"), None);

    // Python: the listed paths and everything under them, not their
    // lookalikes (/app/administrator went through above).
    for path in [
        "/app/admin",
        "/app/admin/users",
        "/app/internal",
        "/app/internal/x",
    ] {
        let r = gw.get(path, &[UA]);
        assert_eq!(r.status, 403, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "path_denied", "{path}");
        assert_eq!(body["path"], path);
        // The chain stopped at deny-paths: shard-header and server-timing
        // never ran their request phase, so timing adds nothing.
        assert_eq!(r.header("server-timing"), None, "{path}");
    }
    assert_eq!(
        upstream.count(),
        forwarded,
        "a refused request went upstream"
    );

    let scrape = gw.metrics();
    for prefix in ["/app/admin", "/app/internal"] {
        assert_eq!(
            metric(
                &scrape,
                "gateway_plugin_deny_paths_denied_total",
                &[("prefix", prefix)]
            ),
            Some(2.0),
            "{prefix}"
        );
    }
    for plugin in EXAMPLES {
        let calls = metric(
            &scrape,
            "gateway_plugin_calls_total",
            &[("plugin", plugin), ("phase", "request")],
        );
        assert!(calls.unwrap_or(0.0) >= 1.0, "{plugin}: {calls:?}");
    }
}

#[test]
fn each_language_refuses_bad_settings_with_its_own_words() {
    let upstream = Upstream::start("app");
    let gw = start(&upstream);
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    let cases = [
        (
            "timing",
            "[filters.timing.config]\nmetric = 5",
            "server-timing: invalid type: integer `5`, expected a string",
        ),
        (
            "shard",
            "[filters.shard.config]\nshards = 0",
            "shard-header: shards must be a positive integer",
        ),
        (
            "deny",
            "[filters.deny.config]\ndeny = \"/app/admin\"",
            "deny-paths: `deny` must be a list of paths starting with /",
        ),
        (
            "ua",
            "[filters.ua.config]\nstrict = true",
            "require-user-agent takes no settings",
        ),
    ];
    for (filter, settings, words) in cases {
        let (head, _) = good.split_once("\n[filters.ua]").unwrap();
        std::fs::write(
            gw.config_path(),
            format!("{head}\n{}", chain(&[(filter, settings)])),
        )
        .unwrap();
        let r = gw.admin("POST", "/admin/reload");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.status, 422, "{filter}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("filter `{filter}` refused its configuration"))
                && error.contains(words),
            "{filter}: {error}"
        );
        // The running chain is untouched.
        assert_eq!(gw.get("/app/x", &[UA]).status, 200, "{filter}");
        assert_eq!(gw.get("/app/admin", &[UA]).status, 403, "{filter}");
    }
    std::fs::write(gw.config_path(), &good).unwrap();
    let r = gw.admin("POST", "/admin/reload");
    assert_eq!(r.status, 200, "{}", r.body_text());
}

/// `gateway plugin check FILE`: (success, what it printed).
fn plugin_check(file: &Path) -> (bool, String) {
    let out = gateway_command()
        .args(["plugin", "check"])
        .arg(file)
        .env("GATEWAY_LOG", "error")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn plugin_check_tells_filters_from_what_is_not() {
    let plugins = built();
    for name in EXAMPLES {
        let (ok, text) = plugin_check(&plugins.join(format!("{name}.wasm")));
        assert!(ok, "{name}: {text}");
        assert!(
            text.contains("a gateway:filter@0.1.0 plugin component")
                && text.contains(
                    "exports gateway:filter/filter@0.1.0: configure, on-request, on-response"
                ),
            "{name}: {text}"
        );
    }

    let dir = tempdir::Dir::new();
    let wat = repo().join("plugins/examples/require-user-agent/filter.wat");
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_file(&wat).unwrap()).unwrap();
    let (ok, text) = plugin_check(&core);
    assert!(!ok, "{text}");
    assert!(
        text.contains("is not a filter plugin: this is a core WebAssembly module, not a component")
            && text.contains("gateway plugin componentize"),
        "{text}"
    );

    let (ok, text) = plugin_check(&wat);
    assert!(
        !ok && text.contains("this is WebAssembly text (WAT)"),
        "{text}"
    );

    crate::common::build_plugins();
    let command = crate::common::plugin_dir().join("cli-command.wasm");
    let (ok, text) = plugin_check(&command);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "it exports no `gateway:filter/filter@0.1.0` interface, so it is a component of \
             another world (it exports `wasi:cli/run@0.2.0`)"
        ),
        "{text}"
    );

    // componentize-js without `--disable http fetch-event` imports
    // wasi:http, which a filter never gets.
    let with_http = dir.path().join("with-http.wasm");
    let js = repo().join("plugins/examples/shard-header");
    run(
        "componentize-js with http",
        Command::new(js.join("node_modules/.bin/componentize-js"))
            .arg(js.join("filter.js"))
            .arg("--wit")
            .arg(repo().join("wit"))
            .args(["--world-name", "plugin", "--out"])
            .arg(&with_http),
    );
    let (ok, text) = plugin_check(&with_http);
    assert!(!ok, "{text}");
    assert!(
        text.contains("it imports what the gateway does not provide: `wasi:http/")
            && text.contains("-d http fetch-event"),
        "{text}"
    );

    // Loading it in a configuration is refused in the same words.
    let (ok, _, stderr) = crate::common::check_config(
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n\n[filters.cmd]\nplugin = \"cli-command\"\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\nfilters = [\"cmd\"]\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("does not match the gateway:filter world: it exports no"),
        "{stderr}"
    );
}

/// What a filter prints reaches the gateway's log, and so does the
/// exception that fails a call (a Python traceback, a JavaScript error),
/// each line tagged with the filter, the plugin and the request id; a
/// filter's `log_level` keeps its lower lines out.
#[test]
fn python_and_javascript_output_and_exceptions_reach_the_log() {
    let upstream = Upstream::start("app");
    let plugins = built();
    let up = upstream.addr;
    let gw = Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        let preamble = crate::common::preamble_with_plugins(listen, admin, plugins);
        let route = |id: &str| {
            format!(
                "[[route]]\nid = \"{id}\"\npath_prefix = \"/{id}\"\nupstream = \"app\"\nfilters = [\"{id}\"]\n"
            )
        };
        format!(
            "{preamble}[upstreams.app]\ninstances = [\"{up}\"]\n\
             [filters.py]\nplugin = \"raise-py\"\n\
             [filters.js]\nplugin = \"raise-js\"\n\
             [filters.quiet]\nplugin = \"raise-py\"\nlog_level = \"error\"\n{}{}{}",
            route("py"),
            route("js"),
            route("quiet")
        )
    });
    let id_of = |path: &str, status: u16| {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, status, "{path}: {}", r.body_text());
        r.header("x-request-id").unwrap().to_string()
    };
    let lines_of = |id: &str| -> Vec<String> {
        gw.log()
            .lines()
            .filter(|l| l.contains(id))
            .map(str::to_owned)
            .collect()
    };
    let has = |lines: &[String], parts: &[&str]| {
        lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
    };

    let ok = id_of("/py/ok", 200);
    let raised = id_of("/py/raise", 500);
    let js_ok = id_of("/js/ok", 200);
    let js_raised = id_of("/js/raise", 500);
    let quiet_ok = id_of("/quiet/ok", 200);
    let quiet_raised = id_of("/quiet/raise", 500);
    // Lines are written after the call returns; give the log a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && !has(&lines_of(&js_raised), &["raise-js refuses /js/raise"])
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let l = lines_of(&ok);
    assert!(
        has(
            &l,
            &[
                "raise-py saw /py/ok",
                "source=\"stdout\"",
                "filter=\"py\"",
                "plugin=\"raise-py\""
            ]
        ),
        "Python's print, tagged: {l:#?}"
    );
    let l = lines_of(&raised);
    assert!(
        has(&l, &["Traceback", "source=\"stderr\""]),
        "Python's traceback: {l:#?}"
    );
    assert!(
        has(&l, &["ValueError: raise-py refuses /py/raise"]),
        "the exception's message: {l:#?}"
    );
    assert!(has(&l, &["in refuse"]), "the frame that raised: {l:#?}");
    assert!(has(&l, &["filter call failed"]), "and the failure: {l:#?}");

    let l = lines_of(&js_ok);
    assert!(
        has(
            &l,
            &[
                "raise-js saw /js/ok",
                "filter=\"js\"",
                "plugin=\"raise-js\""
            ]
        ),
        "JavaScript's console.log, tagged: {l:#?}"
    );
    let l = lines_of(&js_raised);
    assert!(
        has(&l, &["raise-js refuses /js/raise", "source=\"stderr\""]),
        "JavaScript's exception: {l:#?}"
    );

    // `log_level = "error"`: the printed line (info) and the traceback
    // (warn) are left out; the gateway's own failure line is not.
    assert!(
        !has(&lines_of(&quiet_ok), &["raise-py saw"]),
        "{:#?}",
        lines_of(&quiet_ok)
    );
    let l = lines_of(&quiet_raised);
    assert!(!has(&l, &["Traceback"]), "{l:#?}");
    assert!(has(&l, &["filter call failed"]), "{l:#?}");
}

/// A restart finds the four filters compiled in the compile cache instead
/// of compiling them again (the admin endpoint counts hits and misses),
/// `plugin check` reads the same cache, and `gateway cache prune` empties
/// it. How much time that saves is measured by `benches/startup.rs`.
#[test]
fn a_restart_loads_compiled_filters_from_the_cache() {
    let upstream = Upstream::start("app");
    let scratch = tempdir::Dir::new();
    let xdg = scratch.path().display().to_string();
    let env = [("XDG_CACHE_HOME", xdg.as_str())];
    let counts = |gw: &Gateway| {
        let r = gw.admin("GET", "/admin/plugins");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let c = &v["compile_cache"];
        assert_eq!(
            c["dir"],
            format!("{xdg}/gateway/plugins"),
            "{}",
            r.body_text()
        );
        (
            c["counts"]["hits"].as_u64().unwrap(),
            c["counts"]["misses"].as_u64().unwrap(),
            c["counts"]["errors"].as_u64().unwrap(),
        )
    };
    let serves = |gw: &Gateway| {
        let r = gw.get("/app/x", &[UA]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert!(upstream.last().header("x-shard").is_some());
    };

    let gw = start_with_env(&upstream, &env);
    assert_eq!(counts(&gw), (0, 4, 0), "a cold cache compiles all four");
    serves(&gw);
    drop(gw);
    let cache = scratch.path().join("gateway/plugins");
    let entries = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "cwasm")
            })
            .count()
    };
    assert_eq!(entries(), 4);

    let gw = start_with_env(&upstream, &env);
    assert_eq!(counts(&gw), (4, 0, 0), "a restart compiles none");
    serves(&gw);
    drop(gw);

    // A hit reads the entry; a miss would write a new file in its place.
    let inodes = || -> Vec<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<u64> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().ino())
            .collect();
        v.sort_unstable();
        v
    };
    let before = inodes();
    let plugin_check = gateway_command()
        .args(["plugin", "check"])
        .arg(built().join("deny-paths.wasm"))
        .envs(env)
        .output()
        .unwrap();
    assert!(plugin_check.status.success());
    assert_eq!(inodes(), before, "plugin check read its entry, wrote none");

    let prune = gateway_command()
        .args(["cache", "prune", "--unused-for", "0"])
        .envs(env)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&prune.stdout);
    assert!(prune.status.success(), "{said}");
    assert!(said.contains("removed 4 entries"), "{said}");
    assert_eq!(entries(), 0);
}

/// While a cold start compiles the filters (seconds for JavaScript and
/// Python), the admin listener already answers: `/health` 200 and `/ready`
/// 503 `starting`, each at once, rather than holding the connection until
/// the compile is done; then `/ready` 200.
#[test]
fn ready_can_be_polled_while_the_filters_compile() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let upstream = Upstream::start("app");
    let scratch = tempdir::Dir::new();
    let xdg = scratch.path().display().to_string();
    let plugins = built();
    let up = upstream.addr;
    // (path, answer or what went wrong)
    let seen: Arc<Mutex<Vec<(&str, String)>>> = Arc::default();
    let poller = {
        let seen = seen.clone();
        move |admin: std::net::SocketAddr| {
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                let mut ask_health = true;
                while std::time::Instant::now() < deadline {
                    let path = if ask_health { "/health" } else { "/ready" };
                    ask_health = !ask_health;
                    let answer = std::net::TcpStream::connect(admin)
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
                            write!(
                                s,
                                "GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
                            )?;
                            let mut a = String::new();
                            s.read_to_string(&mut a)?;
                            Ok(a)
                        })
                        .map(|a| {
                            let status = a.get(9..12).unwrap_or("").to_string();
                            let body = a.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string();
                            format!("{status} {body}")
                        })
                        .unwrap_or_else(|e| format!("failed: {e}"));
                    let ready = path == "/ready" && answer.starts_with("200");
                    seen.lock().unwrap().push((path, answer));
                    if ready {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            })
        }
    };
    let mut polling = None;
    let gw = Gateway::start_with_env(
        tempdir::Dir::new(),
        &[("XDG_CACHE_HOME", &xdg)],
        |listen, admin| {
            polling = Some(poller(admin));
            let preamble = crate::common::preamble_with_plugins(listen, admin, plugins);
            format!(
                "{preamble}[upstreams.app]\ninstances = [\"{up}\"]\n{}",
                chain(&[])
            )
        },
    );
    polling.unwrap().join().unwrap();
    let seen = seen.lock().unwrap();
    let starting = seen
        .iter()
        .filter(|(p, a)| *p == "/ready" && a == "503 starting")
        .count();
    assert!(
        starting >= 5,
        "/ready answered `starting` while compiling: {seen:#?}"
    );
    assert!(
        seen.iter().all(|(p, a)| match *p {
            "/health" => a == "200 ok",
            _ => a == "503 starting" || a.starts_with("200"),
        }),
        "every poll answered at once, and rightly: {seen:#?}"
    );
    assert!(seen.last().unwrap().1.starts_with("200"));
    assert_eq!(gw.get("/app/x", &[UA]).status, 200);
}
