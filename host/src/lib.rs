//! An API gateway whose request filters are WebAssembly components.
//!
//! # Layers
//!
//! Each module may import only modules on the lines above its own, so the
//! dependencies form no cycle (`tests/e2e/layering.rs` reads the sources and
//! holds them to this list):
//!
//! 1. Leaves, importing no other module: `build_info` (what this build is
//!    made of), `clock`, `config` (the TOML schema and its rules), `edge`
//!    (what a request head may hold: hop-by-hop and forwarding headers,
//!    authority, refusals), `grpc` (what a gRPC call asks and how it is
//!    answered), `listeners` (sockets handed over at start),
//!    `per_worker` (state kept per worker thread), `echo` (the built-in
//!    echo upstream).
//! 2. `telemetry`: metrics, access log, traces; `tls`: handshakes on the
//!    proxy listener.
//! 3. `state` (plugins' shared counters), `routing` (path normalisation
//!    and route matching) and `slots` (connections open, in all and per
//!    client, against their limits).
//! 4. `upstream` (pools, balancing, breakers, health, retries) and
//!    `tunnel` (upgraded connections copied both ways).
//! 5. `plugin`: the wasm runtime and the host functions filters call,
//!    whose outbound calls go through `upstream`; `l4`: TCP routes, one
//!    connection from its first byte to its close.
//! 6. `serving`: the [`serving::Gateway`] requests are served with.
//! 7. `assemble` (building a gateway from a configuration, reusing the
//!    running one's parts), `proxy` (one request through routing,
//!    filters and upstream) and `tcp_server` (TCP routes' listeners).
//! 8. `server` (client connections) and `reload` (swapping configurations).
//! 9. `admin` (the admin listener), `redirect` (the plaintext listener
//!    that sends clients to https) and `authoring` (`plugin new` and
//!    `plugin test`, for filter authors).
//! 10. `app` (the commands: run, check, plugin check and componentize) and
//!     `scenario` (incidents and load shapes replayed on loopback).
//!
//! Modules the binary, the benches and the fuzzers do not use are
//! `pub(crate)`. Runtime modules take plain values from `config`
//! (durations, statuses and outcomes already parsed); positions in the
//! file stay inside `config`.
// One function may load compiled code: `plugin::compile_cache`, whose
// comment says why that is sound. Everything else is safe Rust.
#![deny(unsafe_code)]

pub(crate) mod admin;
pub mod app;
pub(crate) mod assemble;
pub mod authoring;
pub(crate) mod build_info;
pub(crate) mod clock;
pub mod config;
pub(crate) mod echo;
pub mod edge;
pub(crate) mod grpc;
pub(crate) mod l4;
pub mod listeners;
pub(crate) mod per_worker;
pub mod plugin;
pub(crate) mod proxy;
pub(crate) mod redirect;
pub mod reload;
pub mod routing;
pub mod scenario;
pub(crate) mod server;
pub(crate) mod serving;
pub(crate) mod slots;
pub mod state;
pub(crate) mod tcp_server;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub mod upstream;
