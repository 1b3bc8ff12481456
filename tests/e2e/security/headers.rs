//! Headers an upstream would read as something else: names with `_`
//! (folded into `-` by CGI-style stacks), forwarding headers the client
//! wrote itself, and proxy credentials.

use super::{gateway_with, h2, upstream_block};
use crate::common::{Gateway, Upstream, metric};

fn plain(server: &str, up: &Upstream) -> Gateway {
    gateway_with(
        server,
        &format!(
            "{}[[route]]\nid = \"plain\"\nupstream = \"up\"\n",
            upstream_block("up", up)
        ),
    )
}

/// Every header a client could use to pass as another address, scheme,
/// host or path, as the probe and a reviewer of nginx and Envoy would try.
const FORWARDING: &[(&str, &str)] = &[
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "admin.internal"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Server", "trusted"),
    ("X-Forwarded-Uri", "/admin"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Original-Forwarded-For", "6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("Fastly-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
];

#[test]
fn an_underscore_header_never_reaches_the_upstream() {
    let up = Upstream::start("up");
    let gw = plain("", &up);
    let r = gw.get(
        "/x",
        &[
            ("X_Tenant_Id", "globex"),
            ("x-tenant-id", "acme"),
            ("Accept_Encoding", "x"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(
        !seen.headers.iter().any(|(k, _)| k.contains('_')),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    let a = h2(
        &gw,
        "GET",
        "http://test.local/x",
        &[("x_tenant_id", "globex")],
    )
    .unwrap();
    assert_eq!(a.status, 200);
    assert!(!up.last().headers.iter().any(|(k, _)| k.contains('_')));
    let dropped = metric(
        &gw.metrics(),
        "gateway_http_request_headers_dropped_total",
        &[("reason", "underscore")],
    );
    assert_eq!(dropped, Some(3.0));
}

#[test]
fn underscore_headers_pass_when_allowed_but_forwarding_ones_never_do() {
    let up = Upstream::start("up");
    let gw = plain("underscores_in_headers = true", &up);
    let r = gw.get(
        "/x",
        &[
            ("X_Custom", "1"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x_custom"), Some("1"));
    assert_eq!(seen.header("x_forwarded_for"), None);
    assert_eq!(seen.header("x_real_ip"), None);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn a_clients_forwarding_headers_never_reach_the_upstream_on_any_route() {
    let up = Upstream::start("up");
    let gw = plain("", &up);
    let r = gw.get("/x", FORWARDING);
    assert_eq!(r.status, 200);
    let seen = up.last();
    for (name, _) in FORWARDING {
        let lower = name.to_ascii_lowercase();
        let want = match lower.as_str() {
            "x-forwarded-for" => Some("127.0.0.1"),
            "x-forwarded-proto" => Some("http"),
            "x-forwarded-host" => Some("test.local"),
            _ => None,
        };
        assert_eq!(seen.header(&lower), want, "{name}");
        assert!(seen.header_count(&lower) <= 1, "{name}");
    }
    let a = h2(&gw, "GET", "http://test.local/x", FORWARDING).unwrap();
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-real-ip"), None);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    let dropped = metric(
        &gw.metrics(),
        "gateway_http_request_headers_dropped_total",
        &[("reason", "untrusted_forwarding")],
    );
    assert_eq!(dropped, Some(2.0 * FORWARDING.len() as f64));
}

#[test]
fn trusted_forwarded_for_keeps_every_line_in_order() {
    let up = Upstream::start("up");
    let gw = plain("trust_forwarded = true", &up);
    let r = gw.get(
        "/x",
        &[
            ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
            ("X-Real-IP", "1.1.1.1"),
            ("X-Forwarded-For", "3.3.3.3"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header_count("x-forwarded-for"), 1);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("1.1.1.1"), "trusted: kept");
}

#[test]
fn proxy_credentials_and_connection_headers_are_never_forwarded() {
    let up = Upstream::start("up");
    let gw = plain("", &up);
    let r = gw.get(
        "/x",
        &[
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("Proxy-Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("X-Secret", "1"),
            ("Connection", "close, X-Secret"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in [
        "proxy-authorization",
        "proxy-connection",
        "keep-alive",
        "te",
        "x-secret",
    ] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
}
