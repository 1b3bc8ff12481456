//! `Host::parse` on arbitrary text: it never panics, and what it accepts
//! is lower case, has no trailing dot, and reads back from its
//! `authority()` as the same host.
#![no_main]

use gateway::edge::Host;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(host) = Host::parse(raw) {
        common::check_host(raw, &host);
        // Every byte of an accepted host is one a header value can carry.
        assert!(raw.is_ascii(), "{raw:?}: non-ASCII host accepted");
        assert!(!raw.contains('@'), "{raw:?}: user information accepted");
    }
});
