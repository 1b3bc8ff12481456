//! One host per request: routing, filters, `X-Forwarded-Host` and the
//! upstream's `Host` all see the same, and anything two readers could
//! resolve differently is refused.

use super::{gateway_with, h2, upstream_block};
use crate::common::{Gateway, Upstream, metric};

/// `api.example.com` goes to `api` through a filter that reports what it
/// was shown; every other host falls to the catch-all `other`.
fn two_routes(api: &Upstream, other: &Upstream) -> Gateway {
    gateway_with(
        "",
        &format!(
            "{}{}[filters.view]\nplugin = \"probe\"\n[filters.view.config]\nname = \"view\"\nreport_view = true\n\n\
             [[route]]\nid = \"api\"\nhost = \"api.example.com\"\nupstream = \"api\"\nfilters = [\"view\"]\n\n\
             [[route]]\nid = \"catch-all\"\nupstream = \"other\"\n",
            upstream_block("api", api),
            upstream_block("other", other)
        ),
    )
}

fn get_raw(gw: &Gateway, head: &str) -> crate::common::RawResponse {
    gw.raw(format!("{head}connection: close\r\n\r\n").as_bytes())
}

#[test]
fn a_trailing_dot_or_capitals_cannot_miss_a_host_route() {
    let (api, other) = (Upstream::start("api"), Upstream::start("other"));
    let gw = two_routes(&api, &other);
    for host in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "Api.Example.Com.:8080",
    ] {
        let r = gw.get("/x", &[("Host", host)]);
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(
            r.header("x-upstream"),
            Some("api"),
            "{host} missed its route"
        );
        let seen = api.last();
        let want = if host.ends_with(":8080") {
            "api.example.com:8080"
        } else {
            "api.example.com"
        };
        assert_eq!(seen.header("host"), Some(want), "{host}");
        assert_eq!(seen.header("x-forwarded-host"), Some(want), "{host}");
        assert_eq!(
            seen.header("x-seen-authority"),
            Some(want),
            "the filter saw another host"
        );
    }
    assert_eq!(other.count(), 0);
}

#[test]
fn an_http11_request_without_one_host_is_refused() {
    let (api, other) = (Upstream::start("api"), Upstream::start("other"));
    let gw = two_routes(&api, &other);
    let r = get_raw(&gw, "GET /x HTTP/1.1\r\n");
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (400, Some("missing-host"))
    );
    let r = get_raw(
        &gw,
        "GET /x HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.example\r\n",
    );
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (400, Some("conflicting-host"))
    );
    let r = get_raw(
        &gw,
        "GET /x HTTP/1.1\r\nHost: evil.example\r\nHost: api.example.com\r\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(api.count() + other.count(), 0);
    // HTTP/1.0 may leave the host out; it can only reach host-less routes.
    let r = get_raw(&gw, "GET /x HTTP/1.0\r\n");
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("other")));
    let seen = other.last();
    assert_eq!(seen.header("x-forwarded-host"), None);
}

#[test]
fn a_host_upstreams_could_read_differently_is_refused() {
    let (api, other) = (Upstream::start("api"), Upstream::start("other"));
    let gw = two_routes(&api, &other);
    let bad = [
        "evil.example@api.example.com",
        "user:pass@api.example.com",
        "api.example.com:80x",
        "api.example.com:99999",
        "api.example.com:0",
        "api.example.com:",
        "api.example.com:-1",
        "api.example.com,evil.example",
        "api.example.com;evil.example",
        "api%2eexample.com",
        "api..example.com",
        "api.example.com/x",
        "api.example.com\\x",
        "[::1",
        "[::1]x",
        "[not-an-ip]",
    ];
    for host in bad {
        let r = gw.get("/x", &[("Host", host)]);
        assert_eq!(r.status, 400, "{host}");
        assert_eq!(r.header("x-gateway-error"), Some("bad-host"), "{host}");
    }
    assert_eq!(api.count() + other.count(), 0);
    let refused = metric(
        &gw.metrics(),
        "gateway_http_requests_refused_total",
        &[("reason", "bad-host")],
    );
    assert_eq!(refused, Some(bad.len() as f64));
    // An IPv6 literal is a host.
    assert_eq!(gw.get("/x", &[("Host", "[::1]:8080")]).status, 200);
}

#[test]
fn an_absolute_form_target_wins_over_the_host_header() {
    let (api, other) = (Upstream::start("api"), Upstream::start("other"));
    let gw = two_routes(&api, &other);
    let r = get_raw(
        &gw,
        "GET http://api.example.com/x HTTP/1.1\r\nHost: evil.example\r\n",
    );
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("api")));
    let seen = api.last();
    assert_eq!(seen.uri, "/x");
    assert_eq!(seen.header("host"), Some("api.example.com"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(seen.header("x-seen-authority"), Some("api.example.com"));
    assert_eq!(seen.header_count("host"), 1);
    // And the other way round: a Host naming the guarded API does not
    // reach it when the target names another host.
    let r = get_raw(
        &gw,
        "GET http://evil.example/x HTTP/1.1\r\nHost: api.example.com\r\n",
    );
    assert_eq!((r.status, r.header("x-upstream")), (200, Some("other")));
    assert_eq!(other.last().header("host"), Some("evil.example"));
    // Userinfo in the target is refused like in Host.
    let r = get_raw(
        &gw,
        "GET http://a@api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\n",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn an_http2_authority_that_disagrees_with_host_is_refused() {
    let (api, other) = (Upstream::start("api"), Upstream::start("other"));
    let gw = two_routes(&api, &other);
    let a = h2(
        &gw,
        "GET",
        "http://api.example.com/x",
        &[("host", "evil.example")],
    )
    .unwrap();
    assert_eq!((a.status, a.error_code()), (400, Some("conflicting-host")));
    let a = h2(
        &gw,
        "GET",
        "http://evil.example/x",
        &[("host", "api.example.com")],
    )
    .unwrap();
    assert_eq!(a.status, 400);
    assert_eq!(api.count() + other.count(), 0);
    // The same host twice, spelled differently, is one host.
    let a = h2(
        &gw,
        "GET",
        "http://api.example.com/x",
        &[("host", "API.example.com.")],
    )
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(api.last().header("host"), Some("api.example.com"));
    // `host` alone, without `:authority`, names the host.
    let a = h2(&gw, "GET", "/x", &[("host", "api.example.com")]).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(api.count(), 2);
    let a = h2(&gw, "GET", "http://a@api.example.com/x", &[]);
    assert!(
        a.is_err() || a.unwrap().status == 400,
        "userinfo over HTTP/2"
    );
}
