//! TCP routes: bytes proxied unchanged both ways (a gibibyte, hashed),
//! each side's half-close passed on, instances balanced, a breaker opened
//! by connect failures, the PROXY protocol read by a real HAProxy, route
//! and connection limits, idle timeouts, routes changed by reload while
//! connections stay open, and a graceful shutdown; with their metrics and
//! access log lines. TLS passthrough by server name is in `tcp_sni`.

use crate::common::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP service on loopback that runs `serve` on a thread per
/// connection, and counts the connections it took.
pub struct Service {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl Service {
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                std::thread::spawn(move || serve(stream));
            }
        });
        Service { addr, accepted }
    }

    /// Sends back what it reads; at the end of the client's stream it
    /// closes its own half.
    pub fn echo() -> Service {
        Service::start(|mut s| {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// Says its name and closes.
    fn named(name: &'static str) -> Service {
        Service::start(move |mut s| {
            let _ = s.write_all(name.as_bytes());
        })
    }
}

/// A loopback address no one listens on.
pub fn dead_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A client connection with a read timeout, so a test that waits for
/// bytes that never come fails rather than hangs.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Everything until the end of the stream.
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Whether the gateway closed the connection without a byte (a refusal).
pub fn closed_at_once(addr: SocketAddr) -> bool {
    let mut s = connect(addr);
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

fn tcp_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = gw.metrics();
    metric(&scrape, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{scrape}"))
}

/// Waits until the metric reaches `want` (connections end on their own
/// tasks, a moment after the client sees the close).
fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = tcp_metric(gw, name, labels);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {labels:?} is {v}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The access log's TCP lines, parsed.
fn tcp_log_lines(gw: &Gateway) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "tcp")
        .collect()
}

/// Waits for `n` TCP lines in the access log.
fn wait_log_lines(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = tcp_log_lines(gw);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} TCP access log lines, not {n}: {lines:?}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway with the access log in its folder and `ports` TCP listeners
/// handed over (`LISTEN_FDNAMES` `tcp`, so no other process takes a port
/// between choosing it and the gateway's start); `body` makes the rest of
/// the configuration from their ports.
pub fn gateway(ports: usize, body: impl FnOnce(&[u16]) -> String) -> Gateway {
    let names = vec!["tcp"; ports];
    Gateway::start_with_listeners(tempdir::Dir::new(), &names, |a| {
        let ports: Vec<u16> = a[2..].iter().map(SocketAddr::port).collect();
        format!(
            "{}[access_log]\npath = \"access.log\"\n\n{}",
            preamble(a[0], a[1]),
            body(&ports)
        )
    })
}

/// Bytes from a fixed-seed generator (xorshift), so sender and receiver
/// need not keep them to compare.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

#[test]
fn a_tcp_route_carries_a_gibibyte_both_ways_unchanged() {
    const TOTAL: usize = 1 << 30;
    let echo = Service::echo();
    let gw = gateway(1, |p| {
        let port = p[0];
        format!(
            "[upstreams.echo]\ninstances = [\"{}\"]\n\n\
         [[tcp_route]]\nid = \"bulk\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"echo\"\n",
            echo.addr
        )
    });
    let port = gw.extra[0].port();
    let route: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = connect(route);
    let mut sender = client.try_clone().unwrap();
    let sent = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut bytes = Stream(0x9E37_79B9_7F4A_7C15);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = TOTAL;
        while left > 0 {
            let n = left.min(buf.len());
            bytes.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            sender.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        // The client's half-close reaches the echo, which then ends its
        // own stream after the last byte.
        sender.shutdown(Shutdown::Write).unwrap();
        hash.finalize()
    });
    let mut receiver = client;
    let mut hash = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = receiver.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n;
    }
    let sent = sent.join().unwrap();
    assert_eq!(got, TOTAL, "bytes echoed back");
    assert_eq!(
        hash.finalize(),
        sent,
        "the echoed bytes hash as the sent ones"
    );

    let instance = echo.addr.to_string();
    let bytes = |direction: &str| {
        tcp_metric(
            &gw,
            "gateway_tcp_bytes_total",
            &[
                ("route", "bulk"),
                ("endpoint", &instance),
                ("direction", direction),
            ],
        )
    };
    wait_metric(
        &gw,
        "gateway_tcp_connections_open",
        &[("route", "bulk")],
        0.0,
    );
    assert_eq!(bytes("in"), TOTAL as f64);
    assert_eq!(bytes("out"), TOTAL as f64);
    assert_eq!(
        tcp_metric(
            &gw,
            "gateway_tcp_connections_accepted_total",
            &[("route", "bulk")]
        ),
        1.0
    );
    assert_eq!(
        tcp_metric(
            &gw,
            "gateway_tcp_connection_duration_seconds_count",
            &[("route", "bulk")]
        ),
        1.0
    );
    // Every TCP series the catalogue lists is exported by a gateway with
    // a TCP route (the default configuration has none).
    crate::observability::assert_catalogued(&gw.metrics(), crate::observability::TCP_METRICS, 5);
    let lines = wait_log_lines(&gw, 1);
    let line = &lines[0];
    assert_eq!(line["route"], "bulk");
    assert_eq!(line["outcome"], "closed");
    assert_eq!(line["upstream"], instance);
    assert_eq!(line["bytes_received"], TOTAL as u64);
    assert_eq!(line["bytes_sent"], TOTAL as u64);
}

#[test]
fn each_side_can_close_its_half_while_the_other_goes_on_sending() {
    // The client closes first; the upstream answers after it read the end.
    let after_client_closed = Service::start(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let _ = s.write_all(format!("read {} bytes, then your end", got.len()).as_bytes());
    });
    // The upstream closes first; the client's later bytes still reach it.
    let heard = Arc::new(Mutex::new(Vec::new()));
    let upstream_closes_first = {
        let heard = heard.clone();
        Service::start(move |mut s| {
            s.write_all(b"hello, and that is all from me").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            *heard.lock().unwrap() = got;
        })
    };
    let gw = gateway(2, |p| {
        let p1 = p[0];
        let p2 = p[1];
        format!(
            "[upstreams.listener]\ninstances = [\"{}\"]\n\
         [upstreams.talker]\ninstances = [\"{}\"]\n\n\
         [[tcp_route]]\nid = \"client-first\"\nlisten = \"127.0.0.1:{p1}\"\nupstream = \"listener\"\n\n\
         [[tcp_route]]\nid = \"upstream-first\"\nlisten = \"127.0.0.1:{p2}\"\nupstream = \"talker\"\n",
            after_client_closed.addr, upstream_closes_first.addr
        )
    });
    let p1 = gw.extra[0].port();
    let p2 = gw.extra[1].port();

    let mut c = connect(format!("127.0.0.1:{p1}").parse().unwrap());
    c.write_all(b"twelve bytes").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_all(&mut c)).unwrap(),
        "read 12 bytes, then your end"
    );

    let mut c = connect(format!("127.0.0.1:{p2}").parse().unwrap());
    assert_eq!(
        String::from_utf8(read_all(&mut c)).unwrap(),
        "hello, and that is all from me",
        "the upstream's end reaches the client"
    );
    c.write_all(b"but I was not done").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upstream never heard the rest"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(&heard.lock().unwrap()[..], b"but I was not done");
    let lines = wait_log_lines(&gw, 2);
    assert!(lines.iter().all(|l| l["outcome"] == "closed"), "{lines:?}");
}

#[test]
fn connections_are_balanced_across_the_clusters_instances() {
    let names = ["one", "two", "three"];
    let services: Vec<Service> = names.iter().map(|n| Service::named(n)).collect();
    let instances: Vec<String> = services.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let gw = gateway(1, |p| {
        format!(
            "[upstreams.trio]\ninstances = [{}]\nstrategy = \"round_robin\"\n\n\
             [[tcp_route]]\nid = \"trio\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"trio\"\n",
            instances.join(", "),
            p[0]
        )
    });
    let route = gw.extra[0];
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let answer = String::from_utf8(read_all(&mut connect(route))).unwrap();
        *counts.entry(answer).or_default() += 1;
    }
    for name in names {
        assert_eq!(counts.get(name), Some(&10), "{counts:?}");
    }
    for s in &services {
        assert_eq!(s.accepted.load(Ordering::SeqCst), 10);
    }
}

#[test]
fn connect_failures_open_the_breaker_and_refuse_only_when_no_instance_is_left() {
    let live = Service::named("live");
    let dead = dead_address();
    let gw = gateway(2, |p| {
        let mixed = p[0];
        let gone = p[1];
        format!(
            "[upstreams.mixed]\ninstances = [\"{}\", \"{dead}\"]\n\
         [upstreams.mixed.breaker]\nconsecutive_failures = 2\ncool_down = \"60s\"\n\n\
         [upstreams.gone]\ninstances = [\"{dead}\"]\n\
         [upstreams.gone.breaker]\nconsecutive_failures = 2\ncool_down = \"60s\"\n\n\
         [[tcp_route]]\nid = \"mixed\"\nlisten = \"127.0.0.1:{mixed}\"\nupstream = \"mixed\"\n\n\
         [[tcp_route]]\nid = \"gone\"\nlisten = \"127.0.0.1:{gone}\"\nupstream = \"gone\"\n",
            live.addr
        )
    });
    let mixed = gw.extra[0].port();
    let gone = gw.extra[1].port();
    // Every client is served: a failed connect moves on to the live
    // instance, and once the breaker opens the dead one is not tried.
    let mixed: SocketAddr = format!("127.0.0.1:{mixed}").parse().unwrap();
    for _ in 0..10 {
        assert_eq!(read_all(&mut connect(mixed)), b"live");
    }
    let scrape = gw.metrics();
    let dead_labels = [("upstream", "mixed"), ("endpoint", dead.as_str())];
    assert_eq!(
        metric(&scrape, "gateway_circuit_breaker_state", &dead_labels),
        Some(2.0),
        "the dead instance's breaker is open"
    );
    let mut failed = dead_labels.to_vec();
    failed.push(("outcome", "connect_error"));
    assert_eq!(
        metric(&scrape, "gateway_upstream_requests_total", &failed),
        Some(2.0),
        "tried until the breaker opened, then left alone"
    );
    assert_eq!(live.accepted.load(Ordering::SeqCst), 10);

    // With no instance left, the client's connection is closed at once:
    // refused as connect-failed until the breaker opens, then unavailable.
    let gone: SocketAddr = format!("127.0.0.1:{gone}").parse().unwrap();
    for _ in 0..5 {
        assert!(closed_at_once(gone));
    }
    let refused = |reason: &str| {
        tcp_metric(
            &gw,
            "gateway_tcp_connections_refused_total",
            &[("route", "gone"), ("reason", reason)],
        )
    };
    wait_metric(
        &gw,
        "gateway_tcp_connections_refused_total",
        &[("route", "gone"), ("reason", "upstream-unavailable")],
        3.0,
    );
    assert_eq!(refused("connect-failed"), 2.0);
    assert_eq!(
        tcp_metric(
            &gw,
            "gateway_tcp_connections_accepted_total",
            &[("route", "gone")]
        ),
        0.0
    );
    let lines = wait_log_lines(&gw, 15);
    let outcomes: Vec<&str> = lines
        .iter()
        .filter(|l| l["route"] == "gone")
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "connect-failed",
            "connect-failed",
            "upstream-unavailable",
            "upstream-unavailable",
            "upstream-unavailable"
        ]
    );
}

#[test]
fn connect_failures_eject_an_outlier_when_its_breaker_does_not_trip() {
    let live = Service::named("live");
    let dead = dead_address();
    let gw = gateway(1, |p| {
        format!(
            "[upstreams.ejecting]\ninstances = [\"{}\", \"{dead}\"]\n\
             [upstreams.ejecting.breaker]\nconsecutive_failures = 0\nfailure_rate = 0.0\n\
             [upstreams.ejecting.outlier]\nconsecutive_gateway_failures = 2\nbase_ejection_time = \"60s\"\nmax_ejected_percent = 50\n\n\
             [[tcp_route]]\nid = \"ejecting\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"ejecting\"\n",
            live.addr, p[0]
        )
    });
    for _ in 0..10 {
        assert_eq!(read_all(&mut connect(gw.extra[0])), b"live");
    }
    let scrape = gw.metrics();
    let dead_labels = [("upstream", "ejecting"), ("endpoint", dead.as_str())];
    let mut ejected = dead_labels.to_vec();
    ejected.push(("reason", "consecutive_gateway_failures"));
    assert_eq!(
        metric(&scrape, "gateway_upstream_ejections_total", &ejected),
        Some(1.0),
        "ejected after its second failed connect"
    );
    let mut failed = dead_labels.to_vec();
    failed.push(("outcome", "connect_error"));
    assert_eq!(
        metric(&scrape, "gateway_upstream_requests_total", &failed),
        Some(2.0),
        "and not tried while ejected"
    );
    assert_eq!(
        metric(&scrape, "gateway_circuit_breaker_state", &dead_labels),
        Some(0.0),
        "the breaker, switched off, stayed closed"
    );
}

#[test]
fn a_connect_health_check_takes_a_dead_instance_out_of_rotation() {
    let live = Service::named("live");
    // Bound, so it takes connections, and then dropped before the
    // checks begin: an instance that went away.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let gw = gateway(1, |p| {
        let port = p[0];
        format!(
            "[upstreams.checked]\ninstances = [\"{}\", \"{gone_addr}\"]\n\
         [upstreams.checked.health]\ninterval = \"50ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\n\n\
         [[tcp_route]]\nid = \"checked\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"checked\"\n",
            live.addr
        )
    });
    let port = gw.extra[0].port();
    wait_metric(
        &gw,
        "gateway_upstream_healthy",
        &[("upstream", "checked"), ("endpoint", &gone_addr)],
        0.0,
    );
    let route: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..6 {
        assert_eq!(read_all(&mut connect(route)), b"live");
    }
    let scrape = gw.metrics();
    assert_eq!(
        metric(
            &scrape,
            "gateway_upstream_picks_total",
            &[("upstream", "checked"), ("endpoint", &gone_addr)]
        ),
        Some(0.0),
        "the unhealthy instance is never picked"
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_upstream_healthy",
            &[
                ("upstream", "checked"),
                ("endpoint", &live.addr.to_string())
            ]
        ),
        Some(1.0),
        "a connect check passes on a live instance"
    );
}

/// A HAProxy that takes the PROXY protocol (either version, as
/// `accept-proxy` does) and answers each HTTP request with the client
/// address the header gave it. Stopped when dropped.
struct ProxyProtocolReader {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempdir::Dir,
}

impl ProxyProtocolReader {
    fn start() -> ProxyProtocolReader {
        let dir = tempdir::Dir::new();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = format!(
            "global\n  log stderr format raw local0 warning\n\
             defaults\n  mode http\n  timeout client 5s\n  timeout connect 1s\n  timeout server 5s\n\
             frontend fe\n  bind {addr} accept-proxy\n  \
             http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port] %[dst] %[dst_port]\"\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run haproxy (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        ProxyProtocolReader {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for ProxyProtocolReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_upstream_learns_the_client_address_by_proxy_protocol_v1_and_v2() {
    let reader = ProxyProtocolReader::start();
    let _gw = gateway(2, |p| {
        let v1 = p[0];
        let v2 = p[1];
        format!(
            "[upstreams.reader]\ninstances = [\"{}\"]\n\n\
         [[tcp_route]]\nid = \"v1\"\nlisten = \"127.0.0.1:{v1}\"\nupstream = \"reader\"\nproxy_protocol = \"v1\"\n\n\
         [[tcp_route]]\nid = \"v2\"\nlisten = \"127.0.0.1:{v2}\"\nupstream = \"reader\"\nproxy_protocol = \"v2\"\n",
            reader.addr
        )
    });
    let v1 = _gw.extra[0].port();
    let v2 = _gw.extra[1].port();
    for port in [v1, v2] {
        let route: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut c = connect(route);
        let me = c.local_addr().unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: reader\r\nconnection: close\r\n\r\n")
            .unwrap();
        let answer = String::from_utf8(read_all(&mut c)).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            body,
            format!("{} {} 127.0.0.1 {port}", me.ip(), me.port()),
            "what HAProxy read from the header: {answer}"
        );
    }
}

#[test]
fn a_route_refuses_connections_past_its_limit_and_closes_idle_ones() {
    let echo = Service::echo();
    let gw = gateway(2, |p| {
        let limited = p[0];
        let idle = p[1];
        format!(
            "[upstreams.echo]\ninstances = [\"{}\"]\n\n\
         [[tcp_route]]\nid = \"limited\"\nlisten = \"127.0.0.1:{limited}\"\nupstream = \"echo\"\nmax_connections = 2\n\n\
         [[tcp_route]]\nid = \"idle\"\nlisten = \"127.0.0.1:{idle}\"\nupstream = \"echo\"\nidle_timeout = \"300ms\"\n",
            echo.addr
        )
    });
    let limited = gw.extra[0].port();
    let idle = gw.extra[1].port();
    let limited: SocketAddr = format!("127.0.0.1:{limited}").parse().unwrap();
    let echoed = |c: &mut TcpStream| {
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        buf == *b"ping"
    };
    let mut first = connect(limited);
    let mut second = connect(limited);
    assert!(echoed(&mut first) && echoed(&mut second));
    assert!(closed_at_once(limited), "a third connection is refused");
    wait_metric(
        &gw,
        "gateway_tcp_connections_refused_total",
        &[("route", "limited"), ("reason", "max-connections")],
        1.0,
    );
    assert_eq!(
        tcp_metric(&gw, "gateway_tcp_connections_open", &[("route", "limited")]),
        2.0
    );
    drop(first);
    wait_metric(
        &gw,
        "gateway_tcp_connections_open",
        &[("route", "limited")],
        1.0,
    );
    let mut third = connect(limited);
    assert!(echoed(&mut third), "a slot freed is taken again");
    assert!(echoed(&mut second));

    // No byte either way for the idle timeout: closed, and logged so.
    let mut quiet = connect(format!("127.0.0.1:{idle}").parse().unwrap());
    assert!(echoed(&mut quiet));
    let started = Instant::now();
    assert_eq!(read_all(&mut quiet), b"");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before its idle timeout"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = tcp_log_lines(&gw);
        if let Some(l) = lines.iter().find(|l| l["route"] == "idle") {
            assert_eq!(l["outcome"], "idle");
            assert_eq!(l["bytes_received"], 4);
            assert_eq!(l["bytes_sent"], 4);
            break;
        }
        assert!(Instant::now() < deadline, "no idle line: {lines:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rewrites the gateway's configuration and reloads it; the admin
/// listener's answer.
fn reload(gw: &Gateway, config: &str) -> RawResponse {
    std::fs::write(gw.config_path(), config).unwrap();
    gw.admin("POST", "/admin/reload")
}

#[test]
fn reloads_add_change_and_remove_tcp_routes_while_connections_stay_open() {
    let echo = Service::echo();
    let other = Service::named("other");
    let dir = tempdir::Dir::new();
    let mut base = String::new();
    // `added` is handed over too, unused until the reload names it.
    let gw = Gateway::start_with_listeners(dir, &["tcp", "tcp", "tcp"], |a| {
        base = preamble(a[0], a[1]);
        let (kept, removed) = (a[2].port(), a[3].port());
        format!(
            "{base}[upstreams.echo]\ninstances = [\"{}\"]\n\
             [upstreams.other]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"kept\"\nlisten = \"127.0.0.1:{kept}\"\nupstream = \"echo\"\n\n\
             [[tcp_route]]\nid = \"removed\"\nlisten = \"127.0.0.1:{removed}\"\nupstream = \"echo\"\n",
            echo.addr, other.addr
        )
    });
    let [kept, removed, added] = gw.extra[..] else {
        unreachable!("three tcp listeners were handed over")
    };
    let echoes = |c: &mut TcpStream, word: &[u8]| {
        c.write_all(word).unwrap();
        let mut buf = vec![0u8; word.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, word);
    };
    let mut on_kept = connect(kept);
    let mut on_removed = connect(removed);
    echoes(&mut on_kept, b"before");
    echoes(&mut on_removed, b"before");

    // `kept` now goes to another upstream, `removed` is gone, `added` is new.
    let answer = reload(
        &gw,
        &format!(
            "{base}[upstreams.echo]\ninstances = [\"{}\"]\n\
             [upstreams.other]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"kept\"\nlisten = \"{kept}\"\nupstream = \"other\"\n\n\
             [[tcp_route]]\nid = \"added\"\nlisten = \"{added}\"\nupstream = \"echo\"\n",
            echo.addr, other.addr
        ),
    );
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    // Open connections finish on the route and instance they started on.
    echoes(&mut on_kept, b"after the reload");
    echoes(&mut on_removed, b"after the reload");
    // New ones follow the new configuration.
    assert_eq!(read_all(&mut connect(kept)), b"other");
    echoes(&mut connect(added), b"new route");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(removed).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the removed route's listener still accepts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    echoes(&mut on_removed, b"still served");
    on_removed.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut on_removed), b"");

    // A port that cannot be bound refuses the reload; the routes serve on.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let answer = reload(
        &gw,
        &format!(
            "{base}[upstreams.echo]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"kept\"\nlisten = \"{kept}\"\nupstream = \"echo\"\n\n\
             [[tcp_route]]\nid = \"clash\"\nlisten = \"{taken_addr}\"\nupstream = \"echo\"\n",
            echo.addr
        ),
    );
    assert!(answer.status >= 400, "{}", answer.body_text());
    assert!(
        answer
            .body_text()
            .contains(&format!("cannot listen on {taken_addr}")),
        "{}",
        answer.body_text()
    );
    assert_eq!(
        read_all(&mut connect(kept)),
        b"other",
        "the running routes stay"
    );
    echoes(&mut connect(added), b"still here");
    echoes(&mut on_kept, b"and this one");
}

#[test]
fn a_graceful_shutdown_stops_accepting_and_lets_open_connections_finish() {
    let echo = Service::echo();
    let gw = Gateway::start_with_listeners(tempdir::Dir::new(), &["tcp"], |a| {
        format!(
            "{}[access_log]\npath = \"access.log\"\n\n\
             [upstreams.echo]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"echo\"\nlisten = \"{}\"\nupstream = \"echo\"\n",
            preamble(a[0], a[1]).replace("shutdown_grace = \"10s\"", "shutdown_grace = \"2s\""),
            echo.addr,
            a[2]
        )
    });
    let route = gw.extra[0];
    let mut finishing = connect(route);
    let mut lingering = connect(route);
    for c in [&mut finishing, &mut lingering] {
        c.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).unwrap();
    }
    gw.signal(15);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(route).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // An open connection is still served during the grace period...
    finishing.write_all(b"during the grace").unwrap();
    let mut buf = [0u8; 16];
    finishing.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during the grace");
    finishing.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut finishing), b"");
    // ...and one still open when it ends is closed.
    let started = Instant::now();
    assert_eq!(read_all(&mut lingering), b"");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut gw = gw;
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status}\n{}", gw.log());
    // The probes above that got in before the listener closed are
    // logged too; these two are the ones that matter.
    let lines = tcp_log_lines(&gw);
    let outcome = |c: &TcpStream| {
        let client = c.local_addr().unwrap().to_string();
        lines
            .iter()
            .find(|l| l["client"] == client.as_str())
            .map(|l| l["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(outcome(&finishing).as_deref(), Some("closed"), "{lines:?}");
    assert_eq!(
        outcome(&lingering).as_deref(),
        Some("shutdown"),
        "{lines:?}"
    );
}

/// `/admin/state`'s TCP routes, by id.
fn admin_tcp_routes(gw: &Gateway) -> std::collections::BTreeMap<String, serde_json::Value> {
    let r = gw.admin("GET", "/admin/state");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let state: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    state["tcp_routes"]
        .as_array()
        .expect("tcp_routes is a list")
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[test]
fn the_admin_state_lists_each_tcp_route_with_its_open_connections() {
    let echo = Service::echo();
    let gw = gateway(2, |p| {
        format!(
            "[upstreams.echo]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"db\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\nmax_connections = 5\nmax_connections_per_client = 2\nidle_timeout = \"90s\"\n\n\
             [[tcp_route]]\nid = \"web\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\nsni = [\"a.test\", \"*.B.test.\"]\n\n\
             [[tcp_route]]\nid = \"rest\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\nproxy_protocol = \"v2\"\n",
            echo.addr, p[0], p[1], p[1]
        )
    });
    let db = gw.extra[0];
    let shared = gw.extra[1].to_string();
    let mut c = connect(db);
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    let routes = admin_tcp_routes(&gw);
    let want = serde_json::json!({
        "db": {"id": "db", "listen": db.to_string(), "upstream": "echo", "sni": [],
               "default": false, "proxy_protocol": null, "idle_timeout_seconds": 90.0,
               "max_connections": 5, "max_connections_per_client": 2, "open": 1},
        "rest": {"id": "rest", "listen": shared, "upstream": "echo", "sni": [],
                 "default": true, "proxy_protocol": "v2", "idle_timeout_seconds": 3600.0,
                 "max_connections": 10000, "max_connections_per_client": null, "open": 0},
        "web": {"id": "web", "listen": shared, "upstream": "echo",
                "sni": ["a.test", "*.b.test"], "default": false, "proxy_protocol": null,
                "idle_timeout_seconds": 3600.0, "max_connections": 10000,
                "max_connections_per_client": null, "open": 0},
    });
    assert_eq!(serde_json::to_value(&routes).unwrap(), want);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_tcp_routes(&gw)["db"]["open"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8), so one test can be several clients.
pub fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn one_client_address_is_held_to_its_share_of_a_route() {
    let echo = Service::echo();
    let gw = gateway(1, |p| {
        format!(
            "[upstreams.echo]\ninstances = [\"{}\"]\n\n\
             [[tcp_route]]\nid = \"db\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"echo\"\nmax_connections = 10\nmax_connections_per_client = 2\n",
            echo.addr, p[0]
        )
    });
    let addr = gw.extra[0];
    let echoed = |c: &mut TcpStream| {
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).is_ok() && buf == *b"ping"
    };
    let refused = || {
        tcp_metric(
            &gw,
            "gateway_tcp_connections_refused_total",
            &[("route", "db"), ("reason", "max-connections-per-client")],
        )
    };
    assert_eq!(refused(), 0.0, "declared at zero");
    let mut first = connect_from([127, 0, 0, 1], addr);
    let mut second = connect_from([127, 0, 0, 1], addr);
    assert!(echoed(&mut first) && echoed(&mut second));
    let mut third = connect_from([127, 0, 0, 1], addr);
    assert!(
        !echoed(&mut third),
        "a third connection from one address is refused"
    );
    wait_metric(
        &gw,
        "gateway_tcp_connections_refused_total",
        &[("route", "db"), ("reason", "max-connections-per-client")],
        1.0,
    );
    // Another client is not held to the first one's share.
    let mut other = connect_from([127, 0, 0, 2], addr);
    assert!(echoed(&mut other));
    // A closed connection gives its place back to its own client.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from([127, 0, 0, 1], addr);
        if echoed(&mut again) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was not given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        tcp_metric(
            &gw,
            "gateway_tcp_connections_refused_total",
            &[("route", "db"), ("reason", "max-connections")]
        ),
        0.0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = tcp_log_lines(&gw);
        let logged = lines
            .iter()
            .any(|l| l["route"] == "db" && l["outcome"] == "max-connections-per-client");
        if logged {
            break;
        }
        assert!(Instant::now() < deadline, "{lines:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((second, other));
}
