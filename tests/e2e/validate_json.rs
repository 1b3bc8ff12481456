//! The JavaScript example validate-json (plugins/examples/validate-json), a
//! filter API 0.2 component built from its source with componentize-js,
//! in a real gateway in front of a loopback upstream: JSON request bodies
//! are checked before they go upstream, and what is refused never does.

use crate::common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the example once per test run with its package's own build
/// script, as `make examples` does, into a directory of its own, and
/// returns that directory. The componentize-js it runs is the one
/// scripts/setup.sh installs (into shard-header's node_modules, at the
/// version validate-json's package.json pins too).
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join(format!("target/validate-json-test/{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let examples = repo().join("plugins/examples");
        let path = format!(
            "{}:{}",
            examples.join("shard-header/node_modules/.bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let made = Command::new("npm")
            .args(["run", "--silent", "build", "--", "--out"])
            .arg(out.join("validate-json.wasm"))
            .current_dir(examples.join("validate-json"))
            .env("PATH", path)
            .output()
            .unwrap_or_else(|e| panic!("npm: cannot start: {e} (run scripts/setup.sh)"));
        assert!(
            made.status.success(),
            "npm run build (validate-json) failed ({}):\n{}\n{}",
            made.status,
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        );
        out
    })
}

/// The filter's settings as the tests run them (`config` replaced by
/// `settings` when given), in front of `upstream`.
fn config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, settings: &str) -> String {
    format!(
        "{}[upstreams.app]\ninstances = [\"{upstream}\"]\n\n\
         [filters.validate]\nplugin = \"validate-json\"\ntimeout = \"1s\"\nmemory_limit_mib = 32\ninstances = 2\n\n\
         {settings}\n\
         [[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"validate\"]\n",
        // Room for a body over the filter's limit, so the filter's 413 is
        // the one that answers.
        preamble_with_plugins(listen, admin, built())
            .replace("max_body_bytes = 1024", "max_body_bytes = 1048576"),
    )
}

const SETTINGS: &str = "[filters.validate.config]\nmax_body_bytes = 4096\nrequired = [\"id\", \"name\"]\nmax_depth = 4\n\n\
     [filters.validate.config.types]\nid = \"number\"\ntags = \"array\"\n";

const JSON: (&str, &str) = ("content-type", "application/json");

fn json_of(r: &RawResponse) -> serde_json::Value {
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body_text()))
}

#[test]
fn validate_json_checks_bodies_before_the_upstream_sees_them() {
    let up = Upstream::start("app");
    let gw = Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        config(listen, admin, up.addr, SETTINGS)
    });

    // Valid: on to the upstream byte for byte, spacing and order kept.
    let valid = br#"{ "name" : "ann",  "id": 7, "tags": ["a"], "note": "[[[[ not nesting" }"#;
    let r = gw.request("POST", "/things", &[JSON], valid);
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.log());
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, valid);
    assert_eq!(seen.header("content-type"), Some("application/json"));
    // A +json type with a UTF-8 charset is JSON too.
    let patch = br#"{"id": 7, "name": "bob"}"#;
    let r = gw.request(
        "PATCH",
        "/things/7",
        &[(
            "content-type",
            "application/merge-patch+json; charset=utf-8",
        )],
        patch,
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().body, patch);
    let forwarded = up.count();
    assert_eq!(forwarded, 2);

    // Not JSON: 400 with the parser's words.
    let r = gw.request("POST", "/things", &[JSON], br#"{"id": 7,"#);
    assert_eq!(r.status, 400, "{}", r.body_text());
    let error = json_of(&r);
    assert_eq!(error["error"], "invalid-json", "{error}");
    assert!(
        error["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{error}"
    );
    let r = gw.request("PUT", "/things/7", &[JSON], b"");
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"error": "invalid-json", "detail": "the body is empty"})
    );

    // JSON, but not what the route expects: 422 naming the key.
    let r = gw.request("POST", "/things", &[JSON], br#"{"id": 7}"#);
    assert_eq!(r.status, 422, "{}", r.body_text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"error": "missing-key", "key": "name"})
    );
    let r = gw.request("POST", "/things", &[JSON], br#"{"id": "7", "name": "ann"}"#);
    assert_eq!(r.status, 422, "{}", r.body_text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"error": "wrong-type", "key": "id", "expected": "number", "found": "string"})
    );
    let r = gw.request(
        "POST",
        "/things",
        &[JSON],
        br#"{"id": 7, "name": "ann", "deep": [[[["five"]]]]}"#,
    );
    assert_eq!(r.status, 422, "{}", r.body_text());
    assert_eq!(
        json_of(&r),
        serde_json::json!({"error": "too-deep", "key": "deep", "pointer": "/deep/0/0/0", "max_depth": 4})
    );

    // Not labelled JSON: 415, whatever the body.
    for headers in [&[("content-type", "text/plain")][..], &[]] {
        let r = gw.request("POST", "/things", headers, br#"{"id": 7, "name": "ann"}"#);
        assert_eq!(r.status, 415, "{headers:?}: {}", r.body_text());
        assert_eq!(json_of(&r)["error"], "unsupported-media-type");
    }

    // Over max_body_bytes: the gateway refuses it before the filter runs.
    let big = format!(
        r#"{{"id": 7, "name": "ann", "pad": "{}"}}"#,
        "x".repeat(5000)
    );
    let r = gw.request("POST", "/things", &[JSON], big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body_text());
    assert_eq!(r.header("x-gateway-error"), Some("body-too-large"));

    assert_eq!(up.count(), forwarded, "nothing refused went upstream");

    // Methods not listed pass untouched, JSON or not.
    let r = gw.get("/things/7", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().method, "GET");
    let r = gw.request(
        "DELETE",
        "/things/7",
        &[("content-type", "text/plain")],
        b"not json",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().body, b"not json");

    // Each outcome counted under its result; the 413 never reached the
    // filter, and the other methods are not validations.
    let scrape = gw.metrics();
    for (result, n) in [
        ("valid", 2.0),
        ("invalid-json", 2.0),
        ("missing-key", 1.0),
        ("wrong-type", 1.0),
        ("too-deep", 1.0),
        ("unsupported-media-type", 2.0),
        ("not-an-object", 0.0),
    ] {
        assert_eq!(
            metric(
                &scrape,
                "gateway_plugin_validate_json_validations_total",
                &[("filter", "validate"), ("result", result)]
            ),
            Some(n),
            "{result}: {scrape}"
        );
    }
}

#[test]
fn validate_json_is_a_0_2_filter_without_http_and_refuses_bad_settings_at_their_line() {
    let file = built().join("validate-json.wasm");
    let out = gateway_command()
        .args(["plugin", "check"])
        .arg(&file)
        .env("GATEWAY_LOG", "error")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("a gateway:filter@0.2.0 plugin component")
            && said.contains(
                "exports gateway:filter/filter@0.2.0: configure, on-request, on-response"
            )
            && !said.contains("wasi:http"),
        "{said}"
    );

    let up = Upstream::start("app");
    let gw = Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        config(listen, admin, up.addr, SETTINGS)
    });
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    let cases = [
        (
            "max_depth = 4",
            "max_depth = 0",
            "at `max_depth`: must be an integer from 1 to 1024",
        ),
        (
            "id = \"number\"",
            "id = \"integer\"",
            "at `types.id`: the type of \"id\" must be one of \"string\"",
        ),
        (
            "max_depth = 4",
            "max_depht = 4",
            "at `max_depht`: unknown setting",
        ),
    ];
    for (from, to, words) in cases {
        let bad = good.replacen(from, to, 1);
        let line = bad.lines().position(|l| l == to).unwrap() + 1;
        let column = to.find(" = ").unwrap() + 4;
        std::fs::write(gw.config_path(), &bad).unwrap();
        let r = gw.admin("POST", "/admin/reload");
        assert_eq!(r.status, 422, "{to}: {}", r.body_text());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&format!(
                "gateway.toml:{line}:{column}: filter `validate` refused its configuration: {words}"
            )),
            "{to}: {error}"
        );
        // The running filter is untouched.
        let r = gw.request("POST", "/", &[JSON], br#"{"id": 1}"#);
        assert_eq!(r.status, 422, "{to}: {}", r.body_text());
    }
}
