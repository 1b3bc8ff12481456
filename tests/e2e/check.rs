//! `gateway check`: every kind of bad configuration is refused with the
//! file, line and column, and one sentence saying what to change. The
//! messages are matched exactly: they are what an operator reads.

use crate::common::*;

fn check(body: &str) -> (bool, String, String) {
    check_config(body)
}

const UPSTREAM: &str = "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n\n";

#[test]
fn a_good_config_passes_and_loads_its_plugins() {
    let (ok, out, err) = check(&format!(
        "{UPSTREAM}[filters.headers]\nplugin = \"headers\"\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\nfilters = [\"headers\"]\n"
    ));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "configuration OK: 1 routes, 1 filters loaded");
}

#[test]
fn unknown_key() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[[route]]\nid = \"api\"\nupstream = \"api\"\ntimeuot = \"1s\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:13:1: unknown field `timeuot`, expected one of `id`, `host`, `path_prefix`, `methods`, `upstream`, `filters`, `timeout`, `try_timeout`, `retry`, `upgrades`; remove it or correct its spelling"
    );
}

#[test]
fn wrong_type() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[[route]]\nid = \"api\"\nupstream = \"api\"\nfilters = \"headers\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:13:11: invalid type: string \"headers\", expected a sequence; change the value to that type"
    );
}

#[test]
fn bad_duration() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[[route]]\nid = \"api\"\nupstream = \"api\"\ntimeout = \"10\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:13:11: `10` is not a duration; write it like \"250ms\", \"10s\" or \"2m\""
    );
}

#[test]
fn missing_plugin() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.auth]\nplugin = \"no-such-plugin\"\n"
    ));
    assert!(!ok);
    let file = plugin_dir().join("no-such-plugin.wasm");
    assert_eq!(
        err,
        format!(
            "error: CONFIG:11:10: filter `auth` uses plugin `no-such-plugin`, but {} does not exist; build the plugin or fix the name",
            file.display()
        )
    );
}

#[test]
fn duplicate_route_id() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[[route]]\nid = \"api\"\nupstream = \"api\"\n\n[[route]]\nid = \"api\"\npath_prefix = \"/v2\"\nupstream = \"api\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:15:6: route id `api` is already used on line 11; give each route its own id"
    );
}

#[test]
fn unknown_upstream() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[[route]]\nid = \"api\"\nupstream = \"payments\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:12:12: route `api` sends to upstream `payments`, which is not defined; define [upstreams.payments] or use one of: api"
    );
}

#[test]
fn unknown_filter() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[[route]]\nid = \"api\"\nupstream = \"api\"\nfilters = [\"auth\"]\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:13:12: route `api` runs filter `auth`, which is not defined; define [filters.auth] or use one of: (none defined)"
    );
}

#[test]
fn missing_environment_variable() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[upstreams.db]\ninstances = [\"${{DB_ADDR_FOR_TEST}}\"]\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:11:15: environment variable `DB_ADDR_FOR_TEST` is not set; set it or give a default as `${DB_ADDR_FOR_TEST:-value}`"
    );
}

#[test]
fn toml_syntax_error() {
    let (ok, _, err) = check("[[route]\nid = \"api\"\n");
    assert!(!ok);
    assert_eq!(err, "error: CONFIG:7:9: unclosed array table, expected `]`");
}

#[test]
fn plugin_that_refuses_its_config() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.p]\nplugin = \"probe\"\n[filters.p.config]\nname = \"p\"\ntrap = \"configure\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: filter `p` refused its configuration: probe p refuses its configuration on purpose"
    );
}

#[test]
fn header_filter_rejects_bad_settings() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.h]\nplugin = \"headers\"\n[filters.h.config]\nmax_header_cuont = 3\n"
    ));
    assert!(!ok);
    // Line 13 of the file check_config writes (six lines of preamble).
    assert!(
        err.starts_with(
            "error: CONFIG:13:20: filter `h` refused its configuration: at `max_header_cuont`: \
             headers: unknown field `max_header_cuont`"
        ),
        "{err}"
    );
}

/// A filter names the setting it refuses by its path (the SDK does so for
/// every setting its types refuse); the gateway points at where that
/// setting is written, array elements and nested tables included.
#[test]
fn a_filter_refusal_points_at_the_setting_in_the_toml() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.h]\nplugin = \"headers\"\n[filters.h.config]\nremove_response = [\"server\", 5]\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:13:30: filter `h` refused its configuration: at `remove_response[1]`: \
         headers: invalid type: integer `5`, expected a string"
    );
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.rl]\nplugin = \"ratelimit\"\n\n[filters.rl.config]\n\
         [[filters.rl.config.limits]]\nname = \"a\"\nrequests = \"many\"\n"
    ));
    assert!(!ok);
    assert!(
        err.starts_with("error: CONFIG:16:12: filter `rl` refused its configuration: at `limits[0].requests`: ratelimit: invalid type"),
        "{err}"
    );
}

#[test]
fn not_a_component() {
    build_plugins();
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path().join("junk.wasm"), b"\0asm not really").unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndir = \"{}\"\n[filters.j]\nplugin = \"junk\"\n", dir.path().display())).unwrap();
    let out = gateway_command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.wasm is not a valid WebAssembly component"),
        "{err}"
    );
}

fn ratelimit_with(limit_fields: &str) -> String {
    format!(
        "{UPSTREAM}[filters.rl]\nplugin = \"ratelimit\"\n[[filters.rl.config.limits]]\nname = \"x\"\nrequests = 1\n{limit_fields}\n"
    )
}

#[test]
fn rate_limit_settings_are_checked() {
    let (ok, _, err) = check(&ratelimit_with("window = \"1y\""));
    assert!(!ok);
    assert_eq!(
        err,
        "error: filter `rl` refused its configuration: ratelimit: limit \"x\" has window \"1y\"; write it like \"1s\", \"10m\" or \"1h\" (at most \"1d\")"
    );
    let (ok, _, err) = check(&ratelimit_with("window = \"1s\"\nkey = \"cookie:x\""));
    assert!(!ok);
    assert_eq!(
        err,
        "error: filter `rl` refused its configuration: ratelimit: limit \"x\" has key \"cookie:x\"; use \"client\", \"route\", \"header:<name>\" or \"context:<key>\""
    );
    let (ok, _, err) = check(&ratelimit_with("window = \"1s\"\nroutes = [\"apl\"]"));
    assert!(!ok);
    assert_eq!(
        err,
        "error: filter `rl` refused its configuration: ratelimit: route `apl` is not in the gateway's config; the routes are: (none)"
    );
    let (ok, _, err) = check(&ratelimit_with("window = \"1s\""));
    assert!(ok, "{err}");
}

#[test]
fn rate_limits_must_fit_one_state_call() {
    let limits: String = (0..9)
        .map(|i| {
            format!(
                "[[filters.rl.config.limits]]\nname = \"l{i}\"\nrequests = 1\nwindow = \"1s\"\n"
            )
        })
        .collect();
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.rl]\nplugin = \"ratelimit\"\n{limits}"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: filter `rl` refused its configuration: ratelimit: these limits need 18 counters per request, over the 16 one state call carries; use fewer limits or fixed windows"
    );
}

#[test]
fn filter_names_keep_to_a_safe_character_set() {
    let (ok, _, err) = check(&format!(
        "{UPSTREAM}[filters.\"rl:a\"]\nplugin = \"headers\"\n"
    ));
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:10:10: filter name `rl:a` may use only letters, digits, `-` and `_`"
    );
}

#[test]
fn redis_state_needs_a_redis_url() {
    let (ok, _, err) = check("[state]\nbackend = \"redis\"\n");
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:8:11: [state] backend \"redis\" needs a `url`, like \"redis://127.0.0.1:6379\""
    );
    let (ok, _, err) = check("[state]\nbackend = \"redis\"\nurl = \"http://x\"\n");
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:9:7: [state] url `http://x` is not a Redis URL; write it like \"redis://127.0.0.1:6379/0\" (or rediss:// for TLS)"
    );
    let (ok, _, err) = check("[state]\nbackend = \"etcd\"\n");
    assert!(!ok);
    assert!(
        err.starts_with("error: CONFIG:8:11: unknown variant `etcd`, expected one of `memory`, `redis`, `redis-cluster`"),
        "{err}"
    );
}

#[test]
fn a_filter_file_that_cannot_be_read_is_named() {
    let (ok, _, err) = check(
        "[filters.h]\nplugin = \"headers\"\n[filters.h.config_files]\nallow = \"nope.json\"\n",
    );
    assert!(!ok);
    assert!(
        err.starts_with("error: CONFIG:10:9: filter `h` reads ")
            && err.ends_with(
                "nope.json for `allow`, but it cannot be read (No such file or directory (os error 2)); fix the path (relative to the config file)"
            ),
        "{err}"
    );
}

#[test]
fn sandbox_grants_and_isolation_are_checked() {
    let filter = |extra: &str| {
        check(&format!(
            "{UPSTREAM}[filters.f]\nplugin = \"probe\"\n{extra}\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\nfilters = [\"f\"]\n"
        ))
    };
    let (ok, _, err) = filter("env = [\"A=B\"]");
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:12:8: filter `f` grants environment variable \"A=B\", which is not a variable name"
    );
    let (ok, _, err) = filter("dirs = { \"/data\" = \"no-such-dir\" }");
    assert!(!ok);
    assert!(
        err.starts_with("error: CONFIG:12:20: filter `f` is granted ")
            && err.ends_with("no-such-dir, which is not a directory"),
        "{err}"
    );
    let (ok, _, err) = filter("dirs = { \"data\" = \".\" }");
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:12:19: filter `f` grants directory `data`; the path the filter sees must start with `/`"
    );
    let (ok, _, err) = filter("isolation = \"per-call\"");
    assert!(!ok);
    assert!(
        err.contains("unknown variant `per-call`, expected `pooled` or `request`"),
        "{err}"
    );
    let (ok, _, err) =
        filter("isolation = \"request\"\nenv = [\"HOME\"]\ndirs = { \"/data\" = \".\" }");
    assert!(ok, "{err}");
}

#[test]
fn an_instance_listed_twice_is_refused() {
    let (ok, _, err) = check(
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\", { address = \"127.0.0.1:3000\", weight = 2 }]\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\n",
    );
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:8:44: upstream `api` lists instance `127.0.0.1:3000` twice; list it once and give it a weight instead"
    );
}

/// `gateway check` on `text` as the whole file, with `env` added to the
/// environment: (passed, stderr with the file's path as CONFIG).
fn check_file(text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let out = gateway_command()
        .args(["check", "--config"])
        .arg(&path)
        .env("GATEWAY_LOG", "error")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "CONFIG");
    (out.status.success(), err.trim().to_string())
}

#[test]
fn variables_expand_inside_strings_only_and_positions_stay_those_of_the_file() {
    let text = "# ${UNSET_IN_A_COMMENT}\n[server]\nlisten = \"${CHECK_LISTEN}\" # ${UNSET_TOO}\n\n[access_log]\npath = \"${CHECK_NASTY}\"\n\n[upstreams.api]\ninstances = [\"${CHECK_INSTANCE}\", \"nope\"]\n";
    let env = [
        ("CHECK_LISTEN", "127.0.0.1:0"),
        // Would close the string and add a table if expanded in the text.
        ("CHECK_NASTY", "x\"\n[admin]\nlisten = \"127.0.0.1:1"),
        ("CHECK_INSTANCE", "127.0.0.1:3000"),
    ];
    let (ok, err) = check_file(text, &env);
    assert!(!ok);
    assert_eq!(
        err,
        "error: CONFIG:9:35: upstream `api` has instance `nope`, which is not `host:port`; write it like \"127.0.0.1:3000\""
    );
    let (ok, err) = check_file(&text.replace(", \"nope\"", ""), &env);
    assert!(ok, "{err}");
}

/// Settings that would switch a mechanism off or stall it, one of each
/// kind: (config after the [server] table, line:column, what the message
/// must say).
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "max_headers = 0\n",
        "3:15",
        "max_headers = 0 in [server] would answer every request 431; use a count like 100",
    ),
    (
        "request_timeout = \"0ms\"\n",
        "3:19",
        "request_timeout = \"0ms\" in [server] would time out every upstream exchange at once",
    ),
    (
        "[state]\ntimeout = \"0ms\"\n",
        "4:11",
        "timeout = \"0ms\" in [state] would fail every state call as unavailable",
    ),
    (
        "[filters.f]\nplugin = \"headers\"\ninstances = 0\n",
        "5:13",
        "instances = 0 in [filters.f] keeps no instance ready",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\nmax_connections_per_instance = 0\n",
        "5:32",
        "max_connections_per_instance = 0 in [upstreams.api] would send no request to any instance",
    ),
    (
        "[upstreams.api]\ninstances = [{ address = \"127.0.0.1:3000\", weight = 0 }]\n",
        "4:53",
        "weight = 0 for instance `127.0.0.1:3000` of upstream `api` would never pick it",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n[upstreams.api.breaker]\nhalf_open_probes = 0\n",
        "6:20",
        "half_open_probes = 0 in [upstreams.api.breaker] lets no probe through, so an opened breaker would never close",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n[upstreams.api.health]\npath = \"/health\"\ninterval = \"0ms\"\n",
        "7:12",
        "interval = \"0ms\" in [upstreams.api.health] is under 10ms",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n[upstreams.api.outlier]\nmax_ejected_percent = 0\n",
        "6:23",
        "max_ejected_percent = 0 in [upstreams.api.outlier] is not a percentage of the cluster",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\ntimeout = \"5s\"\ntry_timeout = \"10s\"\n",
        "10:15",
        "try_timeout = \"10s\" in route `api` is longer than the route's timeout, \"5s\"",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\nmethods = [\"GET\", \"get\"]\n",
        "9:19",
        "route `api` lists method `get`; write methods in capitals",
    ),
    (
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n\n[[route]]\nid = \"api\"\nupstream = \"api\"\n[route.retry]\nbackoff_base = \"1s\"\n",
        "10:16",
        "backoff_max = \"250ms\" in route `api`'s retry is shorter than backoff_base = \"1s\"",
    ),
    (
        "[tracing]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\nexport_timeout = \"0ms\"\n",
        "5:18",
        "export_timeout = \"0ms\" in [tracing] would time out every export at once",
    ),
    (
        "[metrics]\nduration_buckets = [0.1, 0.05]\n",
        "4:26",
        "[metrics] duration_buckets must be positive and strictly increasing",
    ),
];

#[test]
fn settings_that_would_disable_a_mechanism_are_refused_at_their_value() {
    for (body, at, phrase) in REFUSED {
        // Settings are checked before plugin files, so none is needed.
        let (ok, err) = check_file(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{body}"), &[]);
        assert!(!ok, "{body}");
        let prefix = format!("error: CONFIG:{at}: ");
        assert!(
            err.starts_with(&prefix) && err.contains(phrase),
            "{body}\nwant {prefix}...{phrase}\ngot  {err}"
        );
    }
}
