//! TLS passthrough: several TLS services behind one gateway port, each
//! chosen by the server name of the client's ClientHello, the handshake
//! made end to end between the client and the service. The services are
//! `openssl s_server` with certificates this test makes, the client is
//! `openssl s_client`; the gateway holds no key.

use crate::common::*;
use crate::tcp::connect;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A self-signed certificate for `name`, made with openssl in `dir`:
/// (certificate, key) paths.
fn certificate(dir: &Path, name: &str) -> (String, String) {
    let file = name.replace('*', "wildcard");
    let cert = dir.join(format!("{file}.crt")).display().to_string();
    let key = dir.join(format!("{file}.key")).display().to_string();
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name}"))
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .expect("run openssl (scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// `openssl s_server` with one certificate, answering HTTP with its status
/// page; stopped when dropped.
struct TlsService {
    child: Child,
    addr: SocketAddr,
}

impl TlsService {
    fn start(cert: &str, key: &str) -> TlsService {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(addr.to_string())
            .args(["-cert", cert, "-key", key, "-www", "-quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsService { child, addr }
    }
}

impl Drop for TlsService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client` through the gateway with server name `name` (none
/// when None), verifying the chain against `ca` and the certificate's name
/// against `expect` (the name sent, unless a default answers): whether the
/// handshake succeeded, and what s_client printed.
fn s_client(addr: SocketAddr, name: Option<&str>, ca: &str, expect: &str) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(addr.to_string())
        .args(["-CAfile", ca, "-verify_return_error", "-brief", "-ign_eof"])
        .args(["-verify_hostname", expect]);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    // A request the service answers, so the session is used, then the end.
    run_with_input(&mut cmd, b"GET / HTTP/1.0\r\n\r\n")
}

/// The peer certificate's subject as `s_client -brief` prints it, spaces
/// removed (`CN=a.test`).
fn peer_subject(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("Peer certificate: "))
        .map(|s| s.replace(' ', ""))
}

/// Connections `listener` refused for `reason` before choosing a route.
fn refused_before_route(gw: &Gateway, listener: SocketAddr, reason: &str) -> Option<f64> {
    metric(
        &gw.metrics(),
        "gateway_tcp_connections_refused_total",
        &[
            ("listener", listener.to_string().as_str()),
            ("route", "-"),
            ("reason", reason),
        ],
    )
}

#[test]
fn one_port_passes_tls_through_to_the_service_each_server_name_chooses() {
    let dir = tempdir::Dir::new();
    let (a_cert, a_key) = certificate(dir.path(), "a.test");
    let (b_cert, b_key) = certificate(dir.path(), "*.b.test");
    let (d_cert, d_key) = certificate(dir.path(), "default.test");
    let a = TlsService::start(&a_cert, &a_key);
    let b = TlsService::start(&b_cert, &b_key);
    let d = TlsService::start(&d_cert, &d_key);
    let gw = crate::tcp::gateway(2, |p| {
        let (strict, with_default) = (p[0], p[1]);
        format!(
            "[upstreams.a]\ninstances = [\"{}\"]\n\
             [upstreams.b]\ninstances = [\"{}\"]\n\
             [upstreams.d]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"a\"\nlisten = \"127.0.0.1:{strict}\"\nupstream = \"a\"\nsni = [\"a.test\"]\n\n\
             [[tcp_route]]\nid = \"b\"\nlisten = \"127.0.0.1:{strict}\"\nupstream = \"b\"\nsni = [\"*.b.test\"]\n\n\
             [[tcp_route]]\nid = \"a-again\"\nlisten = \"127.0.0.1:{with_default}\"\nupstream = \"a\"\nsni = [\"a.test\"]\n\n\
             [[tcp_route]]\nid = \"rest\"\nlisten = \"127.0.0.1:{with_default}\"\nupstream = \"d\"\n",
            a.addr, b.addr, d.addr
        )
    });
    let (strict, with_default) = (gw.extra[0], gw.extra[1]);

    // Each name reaches its own service and sees its own certificate,
    // verified by the client against that service's CA and name.
    for (name, ca, subject) in [
        ("a.test", &a_cert, "CN=a.test"),
        ("www.b.test", &b_cert, "CN=*.b.test"),
        ("API.B.test", &b_cert, "CN=*.b.test"),
    ] {
        let (ok, out) = s_client(strict, Some(name), ca, name);
        assert!(ok, "{name}: {out}");
        assert_eq!(
            peer_subject(&out).as_deref(),
            Some(subject),
            "{name}: {out}"
        );
        assert!(out.contains("Verification: OK"), "{name}: {out}");
        assert!(
            out.contains("s_server"),
            "{name}: the service answered over the session: {out}"
        );
    }

    // Unknown names, and a hello with no name, are refused on a listener
    // without a default: the client reads an unrecognized_name alert.
    for name in [Some("c.test"), Some("x.y.b.test"), None] {
        let (ok, out) = s_client(strict, name, &a_cert, "a.test");
        assert!(!ok, "{name:?} was let through: {out}");
        assert!(
            out.contains("unrecognized name"),
            "{name:?}: no alert read: {out}"
        );
    }
    // Bytes that are not a ClientHello are refused too.
    let mut plain = connect(strict);
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(crate::tcp::read_all(&mut plain), b"");

    // The listener with a default sends every other name there.
    let (ok, out) = s_client(with_default, Some("a.test"), &a_cert, "a.test");
    assert!(ok, "{out}");
    assert_eq!(peer_subject(&out).as_deref(), Some("CN=a.test"));
    for name in [Some("c.test"), None] {
        let (ok, out) = s_client(with_default, name, &d_cert, "default.test");
        assert!(ok, "{name:?}: {out}");
        assert_eq!(
            peer_subject(&out).as_deref(),
            Some("CN=default.test"),
            "{name:?}: {out}"
        );
    }

    let refused = |reason: &str| refused_before_route(&gw, strict, reason);
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused("bad-client-hello") != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", gw.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(refused("unknown-sni"), Some(2.0));
    assert_eq!(refused("no-sni"), Some(1.0));
    let accepted = |route: &str| {
        metric(
            &gw.metrics(),
            "gateway_tcp_connections_accepted_total",
            &[("route", route)],
        )
    };
    assert_eq!(accepted("a"), Some(1.0));
    assert_eq!(accepted("b"), Some(2.0));
    assert_eq!(accepted("rest"), Some(2.0));
    let log = std::fs::read_to_string(gw.dir.path().join("access.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["sni"] == "c.test" && l["outcome"] == "unknown-sni" && l["route"] == "-"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["sni"] == "www.b.test" && l["route"] == "b" && l["outcome"] == "closed"),
        "{log}"
    );
}

/// A TLS service for `a.test` behind two routes sharing one listener, the
/// `a.test` one and the default, each with `limit` (a TOML line), and the
/// certificate's path. The directory holds the certificate and key.
fn shared_listener_with_limits(limit: &str) -> (tempdir::Dir, String, TlsService, Gateway) {
    let dir = tempdir::Dir::new();
    let (cert, key) = certificate(dir.path(), "a.test");
    let a = TlsService::start(&cert, &key);
    let gw = crate::tcp::gateway(1, |p| {
        let port = p[0];
        format!(
            "[upstreams.a]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"a\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"a\"\nsni = [\"a.test\"]\n{limit}\n\n\
             [[tcp_route]]\nid = \"rest\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"a\"\n{limit}\n",
            a.addr
        )
    });
    (dir, cert, a, gw)
}

/// `n` connections from `from` that send half a record header and stop.
fn stalled_hellos(n: usize, from: [u8; 4], addr: SocketAddr) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = crate::tcp::connect_from(from, addr);
            s.write_all(&[0x16, 0x03]).unwrap();
            s
        })
        .collect()
}

#[test]
fn clients_that_never_finish_a_hello_hold_no_more_sockets_than_the_routes_take() {
    let (_dir, cert, _a, gw) = shared_listener_with_limits("max_connections = 1");
    let addr = gw.extra[0];
    let stalled = stalled_hellos(2, [127, 0, 0, 1], addr);
    let refused = |reason: &str| refused_before_route(&gw, addr, reason);
    assert_eq!(refused("max-connections"), Some(0.0));
    assert!(
        crate::tcp::closed_at_once(addr),
        "a third hello-less connection is closed at once"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused("max-connections") != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", gw.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the stalled ones give up, a real client gets through.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ok, out) = s_client(addr, Some("a.test"), &cert, "a.test");
        if ok {
            assert_eq!(peer_subject(&out).as_deref(), Some("CN=a.test"));
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Closed by their clients, or timed out first on a slow machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stalled_ended = refused("bad-client-hello").unwrap_or_default()
            + refused("client-hello-timeout").unwrap_or_default();
        if stalled_ended == 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled two ended as {stalled_ended}: {}",
            gw.metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_client_cannot_hold_every_hello_slot_when_the_routes_limit_each_client() {
    let (_dir, cert, _a, gw) = shared_listener_with_limits("max_connections_per_client = 1");
    let addr = gw.extra[0];
    // The routes take one connection each from a client: two hellos.
    let stalled = stalled_hellos(2, [127, 0, 0, 1], addr);
    let refused = |reason: &str| refused_before_route(&gw, addr, reason);
    assert_eq!(refused("max-connections-per-client"), Some(0.0));
    let mut third = crate::tcp::connect_from([127, 0, 0, 1], addr);
    assert!(
        matches!(
            std::io::Read::read(&mut third, &mut [0u8; 16]),
            Ok(0) | Err(_)
        ),
        "a third hello from the same address is closed at once"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused("max-connections-per-client") != Some(1.0) {
        assert!(Instant::now() < deadline, "{}", gw.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another client's handshake goes through meanwhile.
    let mut other = Command::new("openssl");
    other
        .args(["s_client", "-bind", "127.0.0.2:0", "-connect"])
        .arg(addr.to_string())
        .args([
            "-CAfile",
            &cert,
            "-verify_return_error",
            "-brief",
            "-ign_eof",
        ])
        .args(["-verify_hostname", "a.test", "-servername", "a.test"]);
    let (ok, out) = run_with_input(&mut other, b"GET / HTTP/1.0\r\n\r\n");
    assert!(ok, "{out}");
    assert_eq!(peer_subject(&out).as_deref(), Some("CN=a.test"), "{out}");
    assert_eq!(refused("max-connections"), Some(0.0));
    drop(stalled);
}
