//! The end-to-end tests: one binary, one harness (`common`), a module per
//! area. Each test starts real upstreams on loopback and a real `gateway`
//! process, handing it its listening sockets (see `common::Gateway`).

// The harness serves every area; not every area uses all of it.
#[allow(dead_code)]
mod common;

mod admin;
mod admin_page;
mod auth;
mod authoring;
mod cache_authz;
mod cascade;
mod check;
mod compat_v1;
mod config_errors;
mod filter_v2;
mod grpc;
mod image;
mod kubernetes;
mod languages;
mod layering;
mod load_scenarios;
mod observability;
mod oci;
mod proxy;
mod ratelimit;
mod reload;
mod sandbox;
mod scale_out;
mod scenarios;
mod security;
mod suite;
mod tcp;
mod tcp_sni;
mod tenant;
mod tls;
mod tracing_export;
mod upstream;
mod validate_json;
mod websocket;
