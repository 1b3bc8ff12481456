//! Invariants shared by the fuzz targets (each uses some of them).
#![allow(dead_code)]

use gateway::config::PathParameters;
use gateway::edge::Host;
use gateway::routing::{normalize_path, without_parameters};

/// What every host `Host::parse` accepts must satisfy: one spelling, the
/// one routing, filters, `X-Forwarded-Host` and the upstream all see.
pub fn check_host(raw: &str, host: &Host) {
    let authority = host.authority();
    assert_eq!(
        Host::parse(&authority).as_ref(),
        Ok(host),
        "{raw:?} parsed to {host:?}, whose authority {authority:?} parses differently"
    );
    assert!(
        !host.name.bytes().any(|b| b.is_ascii_uppercase()),
        "{raw:?}: host name {:?} is not lower case",
        host.name
    );
    assert!(
        !host.name.ends_with('.'),
        "{raw:?}: host name {:?} keeps a trailing dot",
        host.name
    );
    assert!(!host.name.is_empty(), "{raw:?}: empty host name accepted");
    assert_ne!(host.port, Some(0), "{raw:?}: port 0 accepted");
    assert!(
        http::HeaderValue::from_str(&authority).is_ok(),
        "{raw:?}: authority {authority:?} is not a valid header value"
    );
}

/// Normalises `raw` under `parameters` and, when it is accepted, checks
/// that the result is the one reading every later stage can agree on.
pub fn check_path(raw: &str, parameters: PathParameters) -> Option<String> {
    let path = normalize_path(raw, parameters).ok()?;
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}: not absolute");
    assert_eq!(
        normalize_path(&path, parameters).as_deref(),
        Ok(path.as_str()),
        "{raw:?} -> {path:?} ({parameters:?}): normalising again changes it"
    );
    assert!(!path.contains("//"), "{raw:?} -> {path:?}: empty segment kept");
    for bad in ["\\", "%2F", "%2f", "%5C", "%5c"] {
        assert!(
            !path.contains(bad),
            "{raw:?} -> {path:?}: contains {bad:?}"
        );
    }
    for seg in path.split('/') {
        assert!(
            seg != "." && seg != "..",
            "{raw:?} -> {path:?}: dot segment {seg:?} kept"
        );
        if parameters == PathParameters::Keep {
            let name = seg.split(';').next().unwrap_or("");
            let name = name.split("%3B").next().unwrap_or("");
            assert!(
                !(seg.len() != name.len() && matches!(name, "" | "." | "..")),
                "{raw:?} -> {path:?}: parameter on a dot or empty segment {seg:?}"
            );
        }
    }
    if parameters == PathParameters::Refuse {
        assert!(
            !path.contains(';') && !path.contains("%3B") && !path.contains("%3b"),
            "{raw:?} -> {path:?}: a path parameter passed under Refuse"
        );
    }
    assert!(
        !path.bytes().any(|b| b < 0x20 || b == 0x7f),
        "{raw:?} -> {path:?}: control character kept"
    );
    // What routes match on: no parameters, still no dot segments, and
    // unchanged when there were none to remove.
    let route_path = without_parameters(&path);
    assert!(!route_path.contains(';') && !route_path.contains("%3B"));
    assert!(route_path.starts_with('/'), "{path:?} -> route path {route_path:?}");
    if parameters == PathParameters::Refuse {
        assert_eq!(route_path, path.as_str());
    }
    for seg in route_path.split('/').skip(1) {
        assert!(
            seg != "." && seg != "..",
            "{path:?} -> route path {route_path:?}: dot segment {seg:?}"
        );
    }
    Some(path)
}
