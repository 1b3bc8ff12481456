//! A request head, read the way the gateway reads every request before
//! routing (proxy.rs): protocol checks, the one host, the normalised path,
//! underscore headers and forwarding headers.
//!
//! The input is a request head as text, so seeds can be written by hand:
//! a first line `METHOD TARGET VERSION` and up to 16 `name: value` lines.
//! Inputs `http` refuses to build (bad method, target or header) are
//! skipped: hyper never hands the gateway such a request.
#![no_main]

use gateway::config::PathParameters;
use gateway::edge::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use http::{HeaderMap, HeaderValue, Method, Version};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

mod common;

const MAX_HEADERS: usize = 16;

fn version(token: &[u8], fallback: u8) -> Version {
    match token {
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
        b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
        _ => [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ][fallback as usize % 5],
    }
}

fn head(data: &[u8]) -> Option<http::request::Parts> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut first = lines.next()?.splitn(3, |&b| b == b' ');
    let method = first.next()?;
    let target = first.next().unwrap_or(b"/");
    let version = version(
        first.next().unwrap_or(b""),
        data.len() as u8,
    );
    let mut b = http::Request::builder()
        .method(method)
        .uri(target)
        .version(version);
    for line in lines.take(MAX_HEADERS) {
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        b = b.header(name, value);
    }
    Some(b.body(()).ok()?.into_parts().0)
}

fn values(h: &HeaderMap) -> usize {
    h.len()
}

fuzz_target!(|data: &[u8]| {
    let Some(parts) = head(data) else {
        return;
    };
    let protocol = edge::check_protocol(&parts);
    if parts.method == Method::CONNECT {
        assert!(protocol.is_err(), "CONNECT accepted");
    }

    match edge::request_host(&parts) {
        Ok(Some(host)) => {
            common::check_host(&format!("{:?}", parts.uri), &host);
            // The Host header the gateway writes for the upstream.
            assert!(HeaderValue::from_str(&host.authority()).is_ok());
        }
        Ok(None) => assert!(
            matches!(parts.version, Version::HTTP_10 | Version::HTTP_09),
            "no host accepted for {:?}",
            parts.version
        ),
        Err(_) => {}
    }

    // Both policies; what the proxy then builds from the path must be a URI.
    for parameters in [PathParameters::Refuse, PathParameters::Keep] {
        if let Some(path) = common::check_path(parts.uri.path(), parameters) {
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let uri = http::Uri::builder()
                .path_and_query(pq.as_str())
                .build()
                .unwrap_or_else(|e| panic!("{path:?} with query {:?}: {e}", parts.uri.query()));
            assert_eq!(uri.path(), path, "the upstream gets another path");
        }
    }
    // Refuse is stricter than Keep: what it accepts, Keep accepts the same.
    if let Ok(p) = gateway::routing::normalize_path(parts.uri.path(), PathParameters::Refuse) {
        assert_eq!(
            gateway::routing::normalize_path(parts.uri.path(), PathParameters::Keep),
            Ok(p)
        );
    }

    // Underscore headers.
    let mut headers = parts.headers.clone();
    let underscored: usize = parts
        .headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .map(|n| parts.headers.get_all(n).iter().count())
        .sum();
    let before = values(&headers);
    let dropped = edge::drop_underscore_headers(&mut headers);
    assert_eq!(dropped, underscored);
    assert_eq!(values(&headers), before - dropped);
    assert!(
        headers.keys().all(|n| !n.as_str().contains('_')),
        "an underscore header survived: {headers:?}"
    );

    // Forwarding headers, with and without trust, from either kind of
    // client address.
    let host = edge::request_host(&parts).ok().flatten();
    let client: IpAddr = if data.len() % 2 == 0 {
        "203.0.113.7".parse().unwrap()
    } else {
        "2001:db8::7".parse().unwrap()
    };
    let ours = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];
    for start in [parts.headers.clone(), headers] {
        let mut h = start.clone();
        let forwarding: usize = start
            .keys()
            .filter(|n| edge::is_forwarding(n))
            .map(|n| start.get_all(n).iter().count())
            .sum();
        let removed = edge::set_forwarding_headers(&mut h, client, host.as_ref(), "http", false);
        assert_eq!(removed, forwarding);
        for n in h.keys() {
            assert!(
                !edge::is_forwarding(n) || ours.contains(n),
                "untrusted forwarding header {n} survived: {h:?}"
            );
        }
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), client.to_string().as_str());
        assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), "http");
        match &host {
            Some(host) => assert_eq!(
                h.get(&X_FORWARDED_HOST).unwrap(),
                host.authority().as_str()
            ),
            None => assert!(h.get(&X_FORWARDED_HOST).is_none()),
        }
        // Only the gateway's three forwarding headers were written; every
        // other header is as the client sent it.
        for n in start.keys() {
            if !edge::is_forwarding(n) {
                assert!(start.get_all(n).iter().eq(h.get_all(n).iter()));
            }
        }

        let mut h = start.clone();
        let removed = edge::set_forwarding_headers(&mut h, client, host.as_ref(), "https", true);
        assert_eq!(removed, 0);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        let xff = h.get(&X_FORWARDED_FOR).unwrap().to_str().unwrap();
        let ip = client.to_string();
        assert!(
            xff == ip || xff.ends_with(&format!(", {ip}")),
            "trusted X-Forwarded-For {xff:?} does not end with the client {ip}"
        );
        for n in start.keys() {
            if n != X_FORWARDED_FOR && n != X_FORWARDED_PROTO && n != X_FORWARDED_HOST {
                assert!(start.get_all(n).iter().eq(h.get_all(n).iter()));
            }
        }
    }
});
