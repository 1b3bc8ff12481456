//! What the gateway refuses, normalises and survives at the edge: requests
//! an upstream could read differently, hostile headers, connections that
//! never speak. Each case is sent as raw bytes (HTTP/1.1) or frames (h2c)
//! and checked both at the client and at a recording upstream.

#[path = "../common/mod.rs"]
mod common;
mod connections;
