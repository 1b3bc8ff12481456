//! Connections that never speak, stall, idle or crowd the listener: each is
//! closed or refused on time, its file descriptor and its slot given back,
//! while well-behaved clients are still served.

use crate::common::{Gateway, Upstream, metric, plugin_dir, read_response, tempdir};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Long enough for any timeout under test to fire on a loaded machine; it
/// only turns a connection that is never closed into a failure.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// A gateway with `server` settings added to `[server]` and one route to `up`.
fn gateway(server: &str, up: &Upstream) -> Gateway {
    Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
        format!(
            "[server]\nlisten = \"{addr}\"\n{server}\n\n[admin]\nlisten = \"{admin}\"\n\n\
             [plugins]\ndir = \"{}\"\n\n[upstreams.up]\ninstances = [\"{}\"]\n\n\
             [[route]]\nid = \"r\"\nupstream = \"up\"\n",
            plugin_dir().display(),
            up.addr
        )
    })
}

/// How the gateway ended a connection, as the client saw it.
#[derive(Debug, PartialEq)]
enum Closed {
    /// An orderly close (FIN), after these bytes.
    Eof(Vec<u8>),
    /// A reset, after these bytes.
    Reset(Vec<u8>),
}

/// Reads until the gateway closes `s`; panics if it is still open after
/// `bound`. Writes nothing.
fn wait_closed(s: &mut TcpStream, bound: Duration) -> Closed {
    let deadline = Instant::now() + bound;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the gateway kept the connection open for {bound:?} (read {got:?})"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Closed::Eof(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Closed::Reset(got),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading from the gateway: {e}"),
        }
    }
}

/// Whether the gateway still holds `s` open: nothing to read yet, no close.
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(s.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// The refusal count of `reason` on the gateway's /metrics.
fn refused(gw: &Gateway, reason: &str) -> Option<f64> {
    metric(
        &gw.metrics(),
        "gateway_connections_refused_total",
        &[("reason", reason)],
    )
}

/// The gateway's descriptor count once it is steady: the harness's
/// readiness probes and earlier scrapes closed.
fn settled_fds(gw: &Gateway) -> usize {
    let mut last = gw.open_fds();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = gw.open_fds();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Waits until the gateway has at least `n` descriptors open, or fails.
fn wait_fds_at_least(gw: &Gateway, n: usize) {
    let deadline = Instant::now() + CLOSE_BOUND;
    while gw.open_fds() < n {
        assert!(
            Instant::now() < deadline,
            "the gateway never had {n} descriptors open (has {})",
            gw.open_fds()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connection_that_never_speaks_is_closed_after_the_header_timeout() {
    let up = Upstream::start("up");
    let gw = gateway("header_read_timeout = \"300ms\"", &up);
    let mut silent = TcpStream::connect(gw.addr).unwrap();
    let closed = wait_closed(&mut silent, CLOSE_BOUND);
    assert_eq!(closed, Closed::Eof(Vec::new()), "closed without a word");
    assert_eq!(gw.get("/", &[]).status, 200);
    assert_eq!(up.count(), 1);
}

#[test]
fn a_connection_stuck_inside_the_http2_preface_is_closed_after_the_header_timeout() {
    let up = Upstream::start("up");
    let gw = gateway("header_read_timeout = \"300ms\"", &up);
    for sent in [1, 12, H2_PREFACE.len() - 1] {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(&H2_PREFACE[..sent]).unwrap();
        let closed = wait_closed(&mut s, CLOSE_BOUND);
        assert!(
            matches!(&closed, Closed::Eof(b) | Closed::Reset(b) if b.is_empty()),
            "after {sent} bytes of the preface: {closed:?}"
        );
    }
    assert_eq!(gw.get("/", &[]).status, 200);
}

#[test]
fn a_request_head_dribbled_slowly_is_cut_off_at_the_header_timeout() {
    let up = Upstream::start("up");
    let gw = gateway("header_read_timeout = \"300ms\"", &up);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n").unwrap();
    // A header line every 50ms keeps the connection busy but never ends
    // the head: the timeout runs from the start of the head, not the last
    // byte.
    let deadline = Instant::now() + CLOSE_BOUND;
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    loop {
        assert!(
            Instant::now() < deadline,
            "a dribbled head was let through for {CLOSE_BOUND:?}"
        );
        if s.write_all(b"x-slow: 1\r\n").is_err() {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!(
                "the gateway answered a head that never ended: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(_) => {}
        }
    }
    assert_eq!(up.count(), 0, "the half head never reached the upstream");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let up = Upstream::start("up");
    let gw = gateway(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"2s\"",
        &up,
    );
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let request = b"GET / HTTP/1.1\r\nhost: t\r\n\r\n";
    s.write_all(request).unwrap();
    assert_eq!(read_response(&mut r).status, 200);
    // Three header timeouts of keep-alive: the head timer does not run
    // while nothing is being sent.
    std::thread::sleep(Duration::from_millis(900));
    assert!(still_open(&mut s), "closed within the idle timeout");
    s.write_all(request).unwrap();
    assert_eq!(read_response(&mut r).status, 200);
    let closed = wait_closed(&mut s, CLOSE_BOUND);
    assert_eq!(closed, Closed::Eof(Vec::new()), "closed cleanly when idle");
    assert_eq!(up.count(), 2);
}

/// A head that starts after a keep-alive wait gets the header timeout from
/// its first byte, not what was left of the idle timeout.
#[test]
fn a_head_begun_after_a_keep_alive_wait_is_cut_off_at_the_header_timeout() {
    let up = Upstream::start("up");
    let gw = gateway(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"30s\"",
        &up,
    );
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).status, 200);
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n").unwrap();
    // Closed by the header timeout: `wait_closed` fails past its bound,
    // and the idle timeout (30 s) is far past that.
    let closed = wait_closed(&mut s, CLOSE_BOUND);
    assert!(
        !matches!(&closed, Closed::Eof(b) | Closed::Reset(b) if b.starts_with(b"HTTP/1.1 200")),
        "the half head was answered: {closed:?}"
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn an_idle_h2c_connection_is_sent_goaway_after_the_idle_timeout() {
    let up = Upstream::start("up");
    let gw = gateway(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"500ms\"",
        &up,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let request = http::Request::get("http://test.local/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = send.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello from up\n");
        // The client would keep the connection forever; the gateway ends
        // it with GOAWAY, which hyper's client takes as a clean end.
        let ended = tokio::time::timeout(CLOSE_BOUND, conn)
            .await
            .expect("the gateway kept an idle h2c connection open")
            .unwrap();
        assert!(ended.is_ok(), "ended without GOAWAY: {ended:?}");
    });
    assert_eq!(up.count(), 1);
}

#[test]
fn an_h2c_client_that_stops_answering_pings_is_dropped() {
    let up = Upstream::start("up");
    // Nothing else would close this connection for minutes: the request
    // waits on a slow upstream and the timeouts are long.
    let gw = gateway(
        "request_timeout = \"60s\"\nidle_timeout = \"60s\"\n\
         http2_keepalive_interval = \"200ms\"\nhttp2_keepalive_timeout = \"200ms\"",
        &up,
    );
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(H2_PREFACE).unwrap();
    // An empty SETTINGS frame.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    // HEADERS on stream 1, END_STREAM | END_HEADERS, HPACK without Huffman:
    // GET, http, :path "/slow/60000", :authority "test.local".
    let mut block = vec![0x82, 0x86, 0x04, 11];
    block.extend_from_slice(b"/slow/60000");
    block.extend_from_slice(&[0x01, 10]);
    block.extend_from_slice(b"test.local");
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    s.write_all(&frame).unwrap();
    let deadline = Instant::now() + CLOSE_BOUND;
    while up.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // From here the client reads (and so never acknowledges) the pings.
    match wait_closed(&mut s, CLOSE_BOUND) {
        Closed::Eof(frames) | Closed::Reset(frames) => {
            // A PING (type 6) without ACK came before the end.
            assert!(
                h2_frame_types(&frames).contains(&6),
                "no PING before the close: {frames:?}"
            );
        }
    }
}

/// The types of the complete HTTP/2 frames in `bytes`.
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[test]
fn silent_sockets_give_back_their_file_descriptors() {
    let up = Upstream::start("up");
    let gw = gateway("header_read_timeout = \"1s\"", &up);
    let baseline = settled_fds(&gw);
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    // Every one was accepted: the gateway really holds them...
    wait_fds_at_least(&gw, baseline + 200);
    // ...and lets them go while the client still holds its end.
    let deadline = Instant::now() + CLOSE_BOUND;
    while gw.open_fds() > baseline {
        assert!(
            Instant::now() < deadline,
            "{} descriptors open, {baseline} before the silent sockets",
            gw.open_fds()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(silent);
    assert_eq!(gw.get("/", &[]).status, 200);
}

#[test]
fn a_connection_over_max_connections_is_refused_with_a_503_until_a_slot_frees() {
    let up = Upstream::start("up");
    let gw = gateway("header_read_timeout = \"30s\"\nmax_connections = 2", &up);
    // Declared before any refusal, both reasons.
    assert_eq!(refused(&gw, "too-many-connections"), Some(0.0));
    assert_eq!(refused(&gw, "too-many-client-connections"), Some(0.0));
    let baseline = settled_fds(&gw);
    let first = TcpStream::connect(gw.addr).unwrap();
    let _second = TcpStream::connect(gw.addr).unwrap();
    wait_fds_at_least(&gw, baseline + 2);

    let r = gw.get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-gateway-error"), Some("too-many-connections"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body_text().lines().count(), 1, "{:?}", r.body_text());
    assert_eq!(refused(&gw, "too-many-connections"), Some(1.0));
    assert_eq!(up.count(), 0);

    // Closing one gives its slot back.
    drop(first);
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        let r = gw.get("/", &[]);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.header("x-gateway-error"), Some("too-many-connections"));
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.count(), 1);
}

#[test]
fn connections_are_served_by_the_configured_worker_threads_and_limited_over_all_of_them() {
    let up = Upstream::start("up");
    let gw = gateway("workers = 3\nmax_connections = 3", &up);
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("gateway-worker"))
        .collect();
    assert_eq!(threads.len(), 3, "{threads:?}");
    // Three kept-alive connections, each answered on whichever worker took
    // it, fill the limit together.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(read_response(&mut r).status, 200);
        held.push((s, r));
    }
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-gateway-error"), Some("too-many-connections"));
    assert_eq!(up.count(), 3);
}

#[test]
fn a_client_over_max_connections_per_client_is_refused_while_others_are_served() {
    let up = Upstream::start("up");
    let gw = gateway(
        "header_read_timeout = \"30s\"\nmax_connections_per_client = 2",
        &up,
    );
    let baseline = settled_fds(&gw);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    wait_fds_at_least(&gw, baseline + 2);

    let r = gw.get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("too-many-client-connections")
    );
    assert_eq!(refused(&gw, "too-many-client-connections"), Some(1.0));
    assert_eq!(refused(&gw, "too-many-connections"), Some(0.0));

    // Another address on loopback is another client.
    let r = get_from("127.0.0.2".parse().unwrap(), gw.addr);
    assert!(r.starts_with("HTTP/1.1 200"), "{r:?}");

    drop(held);
    let deadline = Instant::now() + CLOSE_BOUND;
    while gw.get("/", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the client's slots never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET from `local` (a loopback address) to `gateway`; the raw answer.
fn get_from(local: std::net::IpAddr, gateway: SocketAddr) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let mut s = socket.connect(gateway).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(CLOSE_BOUND, s.read_to_end(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
}

#[test]
fn a_silent_admin_connection_is_closed_after_the_header_timeout() {
    let up = Upstream::start("up");
    let gw = gateway("header_read_timeout = \"300ms\"", &up);
    let mut silent = TcpStream::connect(gw.admin).unwrap();
    wait_closed(&mut silent, CLOSE_BOUND);
    assert_eq!(gw.admin("GET", "/health").status, 200);
}
