//! Path parameters: Tomcat, Jetty and Spring drop `;...` from a segment
//! before resolving dot segments, so `/open/..;/admin-only` is
//! `/admin-only` to them. The gateway refuses such paths by default, and
//! with `path_parameters = "keep"` keeps parameters only where no upstream
//! can read them as a dot segment.

use super::{gateway_with, h2, upstream_block};
use crate::common::{Gateway, Upstream, metric};

/// `/admin-only` is guarded by a filter that answers 403; `/open` and
/// `/tenants` go straight to the upstream.
fn guarded(server: &str, up: &Upstream) -> Gateway {
    gateway_with(
        server,
        &format!(
            "{}[filters.guard]\nplugin = \"probe\"\n[filters.guard.config]\nname = \"guard\"\nanswer = 403\n\n\
             [[route]]\nid = \"admin\"\npath_prefix = \"/admin-only\"\nupstream = \"up\"\nfilters = [\"guard\"]\n\n\
             [[route]]\nid = \"open\"\npath_prefix = \"/\"\nupstream = \"up\"\n",
            upstream_block("up", up)
        ),
    )
}

/// Every spelling the probe found, and the neighbours a reviewer would try.
const PARAMETER_PATHS: &[&str] = &[
    "/tenants/acme/..;/globex/x",
    "/open/..;/admin-only",
    "/open/..;x=1/admin-only",
    "/open/%2e%2e;/admin-only",
    "/open/%2E%2E%3B/admin-only",
    "/open/.%2e%3bjsessionid=1/admin-only",
    "/open/.;/admin-only",
    "/open/;/admin-only",
    "/open/x;jsessionid=1",
    "/admin-only;x/../open",
];

#[test]
fn a_path_with_a_parameter_never_reaches_the_upstream() {
    let up = Upstream::start("up");
    let gw = guarded("", &up);
    for path in PARAMETER_PATHS {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.body_text());
        assert_eq!(r.header("x-gateway-error"), Some("bad-path"), "{path}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
    let refused = metric(
        &gw.metrics(),
        "gateway_http_requests_refused_total",
        &[("reason", "bad-path")],
    );
    assert_eq!(refused, Some(PARAMETER_PATHS.len() as f64));
    // The plain path still works.
    assert_eq!(gw.get("/open/x", &[]).status, 200);
}

#[test]
fn a_path_parameter_in_an_http2_path_is_refused_too() {
    let up = Upstream::start("up");
    let gw = guarded("", &up);
    for path in PARAMETER_PATHS {
        let a = h2(&gw, "GET", &format!("http://test.local{path}"), &[]).unwrap();
        assert_eq!(
            (a.status, a.error_code()),
            (400, Some("bad-path")),
            "{path}"
        );
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
}

#[test]
fn kept_path_parameters_never_sit_on_a_dot_segment() {
    let up = Upstream::start("up");
    let gw = guarded("path_parameters = \"keep\"", &up);
    let r = gw.get("/open/x;jsessionid=1/y", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().uri, "/open/x;jsessionid=1/y");
    for path in [
        "/open/..;/admin-only",
        "/open/%2e%2e;/admin-only",
        "/open/%2E%2E%3B/admin-only",
        "/open/.;/admin-only",
        "/open/;x/admin-only",
    ] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 400, "{path}");
        let a = h2(&gw, "GET", &format!("http://test.local{path}"), &[]).unwrap();
        assert_eq!(a.status, 400, "{path} over HTTP/2");
    }
    assert_eq!(up.count(), 1);
    // A guarded route stays guarded with a parameter on a real segment.
    assert_eq!(gw.get("/admin-only;x=1", &[]).status, 403);
}

#[test]
fn a_raw_utf8_path_reaches_the_upstream_in_its_escaped_spelling() {
    let up = Upstream::start("up");
    let gw = guarded("", &up);
    let r = gw.raw(b"GET /open/caf\xc3\xa9 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().uri, "/open/caf%C3%A9");
    assert_eq!(gw.get("/open/caf%c3%a9", &[]).status, 200);
    assert_eq!(up.last().uri, "/open/caf%C3%A9");
}
