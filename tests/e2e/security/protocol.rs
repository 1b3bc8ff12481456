//! Protocol features the gateway does not carry through are refused, never
//! passed on half-understood: transfer codings, upgrades, CONNECT, TRACE,
//! unknown expectations. `100-continue` is answered by the gateway itself.
//! The route's timeout bounds the whole request once.

use super::{gateway_with, upstream_block};
use crate::common::{Gateway, Upstream, read_response};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn routes(up: &Upstream) -> Gateway {
    gateway_with(
        "",
        &format!(
            "{}[[route]]\nid = \"trace-ok\"\npath_prefix = \"/debug\"\nmethods = [\"TRACE\", \"GET\"]\nupstream = \"up\"\n\n\
             [[route]]\nid = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"up\"\ntimeout = \"1s\"\n\n\
             [[route]]\nid = \"all\"\nupstream = \"up\"\n",
            upstream_block("up", up)
        ),
    )
}

#[test]
fn a_transfer_coding_other_than_chunked_is_refused() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let r = gw.raw(
        format!("POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n{body}")
            .as_bytes(),
    );
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (501, Some("unsupported-transfer-coding"))
    );
    let r = gw.raw(
        format!("POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: deflate\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}")
            .as_bytes(),
    );
    assert_eq!(r.status, 501);
    assert_eq!(up.count(), 0, "{:?}", up.seen());
    // Plain chunked is fine. The body streams on, framed anew by the
    // gateway (chunked, one coding), never with the client's framing.
    let r = gw.raw(
        format!("POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{body}")
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, b"hello");
    assert_eq!(up.last().header("transfer-encoding"), Some("chunked"));
    assert_eq!(up.last().header("content-length"), None);
}

#[test]
fn an_upgrade_request_is_refused_not_served_as_a_plain_get() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    let r = gw.get(
        "/chat",
        &[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    );
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (501, Some("upgrade-not-supported"))
    );
    let r = gw.get("/chat", &[("Upgrade", "h2c, websocket")]);
    assert_eq!(r.status, 501);
    assert_eq!(up.count(), 0);
}

#[test]
fn an_h2c_upgrade_is_ignored_and_served_over_http11() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    let r = gw.raw(
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
}

#[test]
fn trace_and_track_are_refused_unless_a_route_lists_them() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    for m in ["TRACE", "TRACK"] {
        let r = gw.request(m, "/x", &[("Cookie", "session=secret")], b"");
        assert_eq!(
            (r.status, r.header("x-gateway-error")),
            (405, Some("method-not-allowed")),
            "{m}"
        );
    }
    assert_eq!(up.count(), 0);
    let r = gw.request("TRACE", "/debug/x", &[], b"");
    assert_eq!(r.status, 200, "a route that lists TRACE serves it");
    assert_eq!(up.last().method, "TRACE");
}

#[test]
fn connect_is_refused() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    let r = gw.raw(b"CONNECT internal.example:443 HTTP/1.1\r\nhost: internal.example:443\r\n\r\n");
    assert!(r.status == 405 || r.status == 400, "{}", r.status);
    assert_eq!(up.count(), 0);
}

#[test]
fn expect_100_continue_is_answered_by_the_gateway_and_not_forwarded() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    // The interim answer has a head and no body.
    let mut interim = String::new();
    while !interim.ends_with("\r\n\r\n") {
        assert_ne!(
            r.read_line(&mut interim).unwrap(),
            0,
            "closed after {interim:?}"
        );
    }
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim:?}");
    s.write_all(b"hello").unwrap();
    let resp = read_response(&mut r);
    assert_eq!(resp.status, 200);
    let seen = up.last();
    assert_eq!(seen.body, b"hello");
    assert_eq!(seen.header("expect"), None);

    let r = gw.request("POST", "/x", &[("Expect", "something-else")], b"hello");
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (417, Some("expectation-failed"))
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn a_body_that_stops_coming_is_a_408_and_the_upstream_is_let_go() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    // The body streams to the upstream as it comes; half of it, then
    // nothing until past the route's 1 s.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello",
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(s));
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (408, Some("body-timeout")),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The upstream never got a request it could act on.
    assert!(
        up.seen().iter().all(|s| s.body.len() != 10),
        "{:?}",
        up.seen()
    );
}

#[test]
fn the_route_timeout_bounds_body_and_upstream_together() {
    let up = Upstream::start("up");
    let gw = routes(&up);
    // A body that takes 700 ms, then an upstream that takes 700 ms: each
    // within the route's 1 s, together over it.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /slow/700 HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nconnection: close\r\n\r\nab",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    s.write_all(b"cd").unwrap();
    let r = read_response(&mut BufReader::new(s));
    assert_eq!(
        (r.status, r.header("x-gateway-error")),
        (504, Some("upstream-timeout")),
        "answered after {:?}",
        started.elapsed()
    );
}
