//! A circuit breaker's half-open probe belongs to the request carrying it:
//! a client that goes away mid-probe must not keep the instance out of
//! service.

use crate::common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long the probe's answer takes; the instance must be back well
/// before it would have come.
const SLOW_MS: u64 = 1500;

#[test]
fn a_probe_abandoned_by_its_client_gives_its_slot_back() {
    let up = Upstream::start("app");
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ninstances = [\"{}\"]\n[upstreams.app.breaker]\nconsecutive_failures = 3\nfailure_rate = 0.0\ncool_down = \"300ms\"\nhalf_open_probes = 1\nsuccesses_to_close = 1\n\n[[route]]\nid = \"api\"\nupstream = \"app\"\n",
        up.addr
    ));
    for _ in 0..3 {
        assert_eq!(gw.get("/status/500", &[]).status, 500);
    }
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-gateway-error"), Some("all-breakers-open"));
    std::thread::sleep(Duration::from_millis(350));

    // After the cool-down the next request is the one probe: a slow one.
    let seen = up.count();
    let mut client = TcpStream::connect(gw.addr).unwrap();
    client
        .write_all(format!("GET /slow/{SLOW_MS} HTTP/1.1\r\nhost: test.local\r\n\r\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == seen {
        assert!(
            Instant::now() < deadline,
            "the probe never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = gw.get("/", &[]);
    assert_eq!(
        r.header("x-gateway-error"),
        Some("all-breakers-open"),
        "while the probe is out no second request is let through"
    );

    // The client leaves before the answer: the gateway cancels the probe.
    let abandoned = Instant::now();
    drop(client);
    let mut last = 0;
    while abandoned.elapsed() < Duration::from_millis(SLOW_MS / 2) {
        last = gw.get("/", &[]).status;
        if last == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        last,
        200,
        "the instance stays out after its probe was abandoned:\n{}",
        gw.log()
    );
    for _ in 0..5 {
        assert_eq!(gw.get("/", &[]).status, 200);
    }
    let scrape = gw.metrics();
    assert_eq!(
        metric(
            &scrape,
            "gateway_circuit_breaker_state",
            &[("endpoint", &up.addr.to_string())]
        ),
        Some(0.0),
        "closed again"
    );
}
