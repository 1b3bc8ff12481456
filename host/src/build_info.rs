//! What this build is made of, for `gateway_build_info`, the admin
//! endpoint and the plugin runtime's checks alike.

/// The WIT package filters are built against.
pub const WIT_PACKAGE: &str = "gateway:filter@0.1.0";
/// The interface a filter exports, as the component model names it.
pub const EXPORT_INTERFACE: &str = "gateway:filter/filter@0.1.0";
/// The wasmtime release the gateway embeds (pinned in Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";
