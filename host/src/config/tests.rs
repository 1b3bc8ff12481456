use super::env::decode_with_offsets;
use super::*;
use std::time::Duration;

fn env(k: &str) -> Option<String> {
    match k {
        "PORT" => Some("8081".into()),
        // Everything that would end a TOML string or start new syntax.
        "NASTY" => Some("a\"b\\c\nd]e#f\n[admin]\nlisten = \"127.0.0.1:1\"".into()),
        "LONG_NAME_FOR_AN_ADDRESS" => Some("127.0.0.1:7".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("t.toml", text, PathBuf::new(), &env)
}

const SERVER: &str = "[server]\nlisten = \"127.0.0.1:1\"\n";

/// The error for `body` after a two-line `[server]` table, as
/// (line, column, message).
fn refused(body: &str) -> (usize, usize, String) {
    let e = parse(&format!("{SERVER}{body}")).expect_err(body);
    (e.line, e.column, e.message)
}

#[track_caller]
fn assert_refused(body: &str, at: (usize, usize), phrase: &str) {
    let (line, column, message) = refused(body);
    assert_eq!((line, column), at, "{message}");
    assert!(message.contains(phrase), "{message}");
}

#[test]
fn expands_variables_and_defaults() {
    let c = parse("[server]\nlisten = \"127.0.0.1:${PORT}\"\n").unwrap();
    assert_eq!(c.server.listen.port(), 8081);
    let c = parse("[server]\nlisten = \"${ADDR:-127.0.0.1:9}\"\n").unwrap();
    assert_eq!(c.server.listen.port(), 9);
}

#[test]
fn a_variable_holding_toml_syntax_stays_one_string_value() {
    let c = parse(&format!(
        "{SERVER}[access_log]\npath = \"${{NASTY}}\"\n[metrics]\nduration_buckets = [\"${{NASTY}}\"]\n"
    ));
    // The array holds a string, so its type is what is refused, at the
    // array's element: the variable added no element and no table.
    let e = c.unwrap_err();
    assert_eq!((e.line, e.column), (6, 21), "{e}");
    let c = parse(&format!("{SERVER}[access_log]\npath = \"${{NASTY}}\"\n")).unwrap();
    assert_eq!(c.access_log.unwrap().path, env("NASTY").unwrap());
    assert_eq!(c.admin, None);
}

#[test]
fn variables_in_comments_and_keys_are_left_alone() {
    let c = parse(
        "# ${NOPE} and an unclosed ${\n[server]\nlisten = \"127.0.0.1:1\" # ${NOPE}\n\n[upstreams.\"${PORT}\"]\ninstances = [\"127.0.0.1:2\"] # ${\n",
    )
    .unwrap();
    assert_eq!(c.upstreams.keys().collect::<Vec<_>>(), ["${PORT}"]);
}

#[test]
fn missing_variable_names_it_with_position() {
    let e = parse("[server]\nlisten = \"${NOPE}\"\n").unwrap_err();
    assert_eq!((e.line, e.column), (2, 11));
    assert!(e.message.contains("`NOPE` is not set"), "{e}");
}

#[test]
fn expansion_errors_point_at_the_dollar_as_written() {
    // Escapes before the variable are longer in the file than in the value.
    assert_refused(
        "[access_log]\npath = \"\\t\\u00e9\\\"x${NOPE}\"\n",
        (4, 20),
        "`NOPE` is not set",
    );
    // A multi-line string drops its first newline and a line-ending
    // backslash with the indentation after it.
    assert_refused(
        "[access_log]\npath = \"\"\"\nab \\\n    cd${NOPE}\"\"\"\n",
        (6, 7),
        "`NOPE` is not set",
    );
    assert_refused(
        "[access_log]\npath = '''\nx\\n${NOPE}'''\n",
        (5, 4),
        "`NOPE` is not set",
    );
    assert_refused(
        "[access_log]\npath = 'a ${9-x}'\n",
        (4, 11),
        "is not a valid variable name",
    );
    assert_refused(
        "[access_log]\npath = \"a ${NOPE\"\n",
        (4, 11),
        "`${` is not closed",
    );
}

#[test]
fn a_variable_outside_a_string_is_a_syntax_error_with_a_hint() {
    let (line, column, message) = refused("[upstreams.a]\ninstances = [${PORT}]\n");
    assert_eq!((line, column), (4, 14), "{message}");
    assert!(
        message.contains("expanded only inside a string"),
        "{message}"
    );
}

#[test]
fn positions_after_an_expanded_variable_are_those_of_the_file() {
    // The value is shorter than the variable on the same line...
    assert_refused(
        "[upstreams.a]\ninstances = [\"${LONG_NAME_FOR_AN_ADDRESS}\", \"nope\"]\n",
        (4, 45),
        "`nope`, which is not `host:port`",
    );
    // ...and spans lines where the variable did not, lines above.
    assert_refused(
        "[access_log]\npath = \"${NASTY}\"\n[tracing]\nendpoint = \"http://127.0.0.1:4318/\"\nexport_interval = \"0ms\"\n",
        (7, 19),
        "export_interval = \"0ms\" in [tracing]",
    );
}

#[test]
fn zero_server_limits_are_refused_at_their_value() {
    let server = |extra: &str| {
        let e = parse(&format!("{SERVER}{extra}\n")).unwrap_err();
        (e.line, e.column, e.message)
    };
    let (line, column, m) = server("header_read_timeout = \"0ms\"");
    assert_eq!((line, column), (3, 23), "{m}");
    assert_eq!(
        m,
        "header_read_timeout = \"0ms\" in [server] gives no client time to send its request headers; use a duration like \"10s\""
    );
    let (line, column, m) = server("max_headers = 0");
    assert_eq!((line, column), (3, 15), "{m}");
    assert!(m.contains("would answer every request 431"), "{m}");
    let (line, column, m) = server("max_body_bytes = 0");
    assert_eq!((line, column), (3, 18), "{m}");
    assert!(m.contains("413"), "{m}");
    let (line, column, m) = server("max_headers = -1");
    assert_eq!((line, column), (3, 15), "{m}");
    let (line, column, m) = server("workers = 0");
    assert_eq!((line, column), (3, 11), "{m}");
    assert!(m.contains("workers must be at least 1"), "{m}");
}

const UP: &str = "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n";

#[test]
fn breaker_settings_that_would_stall_it_are_refused() {
    assert_refused(
        &format!("{UP}[upstreams.api.breaker]\nhalf_open_probes = 0\n"),
        (6, 20),
        "half_open_probes = 0 in [upstreams.api.breaker] lets no probe through",
    );
    assert_refused(
        &format!("{UP}[upstreams.api.breaker]\nsuccesses_to_close = 0\n"),
        (6, 22),
        "successes_to_close = 0",
    );
    assert_refused(
        &format!("{UP}[upstreams.api.breaker]\nwindow = \"0s\"\n"),
        (6, 10),
        "could never open the breaker",
    );
    assert_refused(
        &format!("{UP}[upstreams.api.breaker]\nfailure_rate = 1.5\n"),
        (6, 16),
        "use 0 (off) to 1",
    );
    // A cool-down over the default cap points at the cool-down...
    assert_refused(
        &format!("{UP}[upstreams.api.breaker]\ncool_down = \"2m\"\n"),
        (6, 13),
        "max_cool_down = \"1m\" in [upstreams.api.breaker] is shorter than cool_down = \"2m\"",
    );
    // ...a cap written under it, at the cap.
    assert_refused(
        &format!("{UP}[upstreams.api.breaker]\nmax_cool_down = \"1s\"\ncool_down = \"2s\"\n"),
        (6, 17),
        "make max_cool_down at least cool_down",
    );
    // Both triggers off is how an upstream goes without a breaker.
    parse(&format!(
        "{SERVER}{UP}[upstreams.api.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n"
    ))
    .unwrap();
}

#[test]
fn health_and_outlier_settings_that_would_disable_them_are_refused() {
    let health = format!("{UP}[upstreams.api.health]\npath = \"/health\"\n");
    assert_refused(
        &format!("{health}interval = \"0ms\"\n"),
        (7, 12),
        "is under 10ms",
    );
    assert_refused(
        &format!("{health}healthy_threshold = 0\n"),
        (7, 21),
        "healthy_threshold = 0 in [upstreams.api.health]",
    );
    assert_refused(
        &format!("{health}expected_status = [200, 99]\n"),
        (7, 25),
        "lists 99, which is not an HTTP status",
    );
    assert_refused(
        &format!("{UP}[upstreams.api.health]\npath = \"health\"\n"),
        (6, 8),
        "start it with `/`",
    );
    let outlier = format!("{UP}[upstreams.api.outlier]\n");
    assert_refused(
        &format!("{outlier}max_ejected_percent = 150\n"),
        (6, 23),
        "use 1 to 100",
    );
    assert_refused(
        &format!("{outlier}consecutive_5xx = 0\nconsecutive_gateway_failures = 0\n"),
        (6, 19),
        "would never eject an instance",
    );
    assert_refused(
        &format!("{outlier}base_ejection_time = \"0s\"\n"),
        (6, 22),
        "for no time at all",
    );
}

#[test]
fn upstream_limits_and_weights_are_checked_at_their_value() {
    assert_refused(
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\", { address = \"127.0.0.1:3001\", weight = 0 }]\n",
        (4, 71),
        "weight = 0 for instance `127.0.0.1:3001` of upstream `api` would never pick it",
    );
    assert_refused(
        &format!("{UP}max_connections_per_instance = 0\n"),
        (5, 32),
        "503 pool-exhausted",
    );
    assert_refused(
        &format!("{UP}connect_timeout = \"0ms\"\n"),
        (5, 19),
        "would fail every connection attempt",
    );
    assert_refused(
        &format!("{UP}idle_timeout = \"0s\"\n"),
        (5, 16),
        "max_idle_per_instance = 0 to keep none",
    );
    assert_refused(
        &format!("{UP}failure_on = [\"5xx\", \"6xx\"]\n"),
        (5, 22),
        "lists `6xx` in failure_on",
    );
    // No idle connection kept is a choice, not a breakage.
    parse(&format!("{SERVER}{UP}max_idle_per_instance = 0\n")).unwrap();
}

const ROUTE: &str = "[[route]]\nid = \"api\"\nupstream = \"api\"\n";

#[test]
fn route_timeouts_methods_and_retries_are_checked_at_their_value() {
    let route = |extra: &str| format!("{UP}\n{ROUTE}{extra}\n");
    assert_refused(
        &route("timeout = \"0ms\""),
        (9, 11),
        "would time out every request at once",
    );
    assert_refused(
        &route("timeout = \"5s\"\ntry_timeout = \"10s\""),
        (10, 15),
        "try_timeout = \"10s\" in route `api` is longer than the route's timeout, \"5s\"",
    );
    assert_refused(
        &route("try_timeout = \"1m\""),
        (9, 15),
        "longer than [server] request_timeout, \"30s\"",
    );
    assert_refused(
        &route("methods = [\"GET\", \"post\"]"),
        (9, 19),
        "lists method `post`",
    );
    assert_refused(&route("methods = []"), (9, 11), "would match no request");
    let retry = |extra: &str| route(&format!("[route.retry]\n{extra}"));
    assert_refused(
        &retry("attempts = 0"),
        (10, 12),
        "attempts = 0 in route `api`'s retry is out of range",
    );
    assert_refused(
        &retry("backoff_base = \"500ms\""),
        (10, 16),
        "backoff_max = \"250ms\" in route `api`'s retry is shorter than backoff_base = \"500ms\"",
    );
    assert_refused(
        &retry("backoff_base = \"0ms\""),
        (10, 16),
        "with no back-off",
    );
    assert_refused(
        &retry("budget_ratio = 0.0\nbudget_floor_per_second = 0.0"),
        (10, 16),
        "the budget would allow no retry",
    );
    assert_refused(
        &retry("on = [\"connect\", \"5xx\"]"),
        (10, 18),
        "retries on `5xx`",
    );
}

#[test]
fn filter_settings_are_checked_at_their_value() {
    let filter = |extra: &str| format!("[filters.f]\nplugin = \"p\"\n{extra}\n");
    assert_refused(
        &filter("instances = 0"),
        (5, 13),
        "instances = 0 in [filters.f] keeps no instance ready",
    );
    assert_refused(
        &filter("timeout = \"0ms\""),
        (5, 11),
        "interrupt every call",
    );
    assert_refused(&filter("memory_limit_mib = 1024"), (5, 20), "use 1 to 256");
    assert_refused(
        &filter("failure_status = 99"),
        (5, 18),
        "is not an HTTP status",
    );
    assert_refused(
        &filter("env = [\"A\", \"\"]"),
        (5, 13),
        "not a variable name",
    );
    assert_refused(
        "[filters.\"a:b\"]\nplugin = \"p\"\n",
        (3, 10),
        "filter name `a:b`",
    );
}

#[test]
fn state_telemetry_and_metrics_settings_are_checked_at_their_value() {
    assert_refused("[state]\ntimeout = \"0ms\"\n", (4, 11), "every state call");
    assert_refused(
        "[state]\npool_size = 0\n",
        (4, 13),
        "no connection to Redis",
    );
    let tracing = "[tracing]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
    assert_refused(
        &format!("{tracing}sample_ratio = 2.0\n"),
        (5, 16),
        "use 0 to 1",
    );
    assert_refused(
        &format!("{tracing}max_queued_spans = 0\n"),
        (5, 20),
        "would drop every span",
    );
    assert_refused(
        "[metrics]\nduration_buckets = [0.1, 0.5, 0.5]\n",
        (4, 31),
        "strictly increasing",
    );
    assert_refused("[metrics]\nduration_buckets = []\n", (4, 20), "is empty");
}

#[test]
fn a_setting_left_to_its_default_is_reported_at_its_table() {
    let text = "# a comment\n[server]\nlisten = \"127.0.0.1:1\"\n\n[upstreams.api.breaker]\nwindow = \"1s\"\n";
    let src = Source {
        file: "t.toml",
        text,
        doc: DeTable::parse(text).unwrap(),
    };
    let at = |path: &[&str]| {
        let e = src.error_key(path, "x");
        (e.line, e.column)
    };
    assert_eq!(at(&["upstreams", "api", "breaker", "window"]), (6, 10));
    assert_eq!(at(&["upstreams", "api", "breaker", "cool_down"]), (5, 1));
    assert_eq!(at(&["server", "max_connections"]), (2, 1));
    assert_eq!(at(&["server", "listen"]), (3, 10));
    assert_eq!(at(&["tracing", "export_timeout"]), (1, 1));
    assert_eq!(src.written(&["server", "listen"]), Some("\"127.0.0.1:1\""));
    assert_eq!(src.written(&["server", "max_connections"]), None);
    let name = src.error_key_name(&["upstreams", "api", "breaker"], "x");
    assert_eq!((name.line, name.column), (5, 16));
}

/// The duration a setting written as `s` holds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    Millis::try_from(s.to_string()).map(|m| m.0)
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("10").is_err());
    assert!(parse_duration("s").is_err());
    // Found by fuzzing: the multiplication overflowed.
    assert!(parse_duration("307445734561825861m").is_err());
    assert!(parse_duration("18446744073709551615s").is_err());
    assert!(parse_duration("525600m").is_ok());
}

#[test]
fn a_zero_connection_setting_is_refused_at_its_value() {
    for (line, what) in [
        ("idle_timeout = \"0s\"", "idle_timeout must be at least 1ms"),
        (
            "http2_keepalive_interval = \"0ms\"",
            "http2_keepalive_interval must be at least 1ms",
        ),
        (
            "http2_keepalive_timeout = \"0s\"",
            "http2_keepalive_timeout must be at least 1ms",
        ),
        ("max_connections = 0", "max_connections must be at least 1"),
        (
            "max_connections_per_client = 0",
            "max_connections_per_client must be at least 1",
        ),
    ] {
        let text = format!("[server]\nlisten = \"127.0.0.1:9\"\n{line}\n");
        let e = Config::parse("t.toml", &text, PathBuf::new(), &env).unwrap_err();
        let column = line.find('=').unwrap() + 3;
        assert_eq!((e.line, e.column), (3, column), "{e}");
        assert!(e.message.contains(what), "{e}");
    }
    let c = Config::parse(
        "t.toml",
        "[server]\nlisten = \"127.0.0.1:9\"\nmax_connections_per_client = 4\n",
        PathBuf::new(),
        &env,
    )
    .unwrap();
    assert_eq!(c.server.max_connections_per_client, Some(4));
    assert_eq!(c.server.max_connections, 10_000);
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_col("ab\ncdé f", 9), (2, 6));
}

#[test]
fn string_offsets_follow_escapes() {
    let (value, at) = decode_with_offsets("\"a\\u00e9b\"").unwrap();
    assert_eq!(value, "aéb");
    assert_eq!(at, [1, 2, 2, 8, 9]);
    assert_eq!(decode_with_offsets("'a\\n'").unwrap().0, "a\\n");
    assert_eq!(decode_with_offsets("\"\"\"\r\nx\"\"\"").unwrap().0, "x");
}

#[test]
fn positions_are_found_after_loading_for_refusals_made_later() {
    // Only the plugin file's existence is checked at load.
    let dir = std::env::temp_dir().join(format!("gateway-positions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ratelimit.wasm"), b"").unwrap();
    let c = Config::parse(
        "t.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\n[plugins]\ndir = \".\"\n[filters.rl]\nplugin = \"ratelimit\"\n\
         [[filters.rl.config.limits]]\nname = \"a\"\nrequests = \"many\"\n",
        dir.clone(),
        &env,
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let at = |path: &[&str]| c.position(path).unwrap();
    assert_eq!(
        at(&["filters", "rl", "config", "limits", "0", "requests"]),
        "t.toml:9:12"
    );
    // A setting that is not written: the nearest table that is.
    assert_eq!(
        at(&["filters", "rl", "config", "limits", "0", "window"]),
        "t.toml:7:1"
    );
}
