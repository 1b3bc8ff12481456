//! Host bindings for the `gateway:filter` worlds, generated from `wit/`
//! (0.1.0) and `wit/v0.2/` (0.2.0). Both versions' request and response
//! resources map to the same host types, which own the message while a
//! filter runs, so a chain may mix filters of either version.

/// `gateway:filter@0.1.0`.
pub mod v1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "wit",
        with: {
            "gateway:filter/types.request": crate::plugin::host::RequestState,
            "gateway:filter/types.response": crate::plugin::host::ResponseState,
        },
        // Host imports answer at once, except shared state, which may wait
        // on Redis. Exports are called asynchronously so those waits, and
        // WASI's own async host calls (a guest writing to stderr, say),
        // never block a runtime thread.
        imports: {
            "gateway:filter/state": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// `gateway:filter@0.2.0`.
pub mod v2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "wit/v0.2",
        with: {
            "gateway:filter/types.request": crate::plugin::host::RequestState,
            "gateway:filter/types.response": crate::plugin::host::ResponseState,
        },
        // State, key-value and outbound calls wait on Redis or the network;
        // the filter's call is suspended meanwhile, not its thread.
        imports: {
            "gateway:filter/state": async | trappable,
            "gateway:filter/kv": async | trappable,
            "gateway:filter/callout": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

pub use v1::gateway::filter::host::LogLevel;
pub use v1::gateway::filter::state::{
    Counter as StateCounter, CounterOp as StateCounterOp, StateError as WitStateError,
};
pub use v1::gateway::filter::types::{Action, HeaderStats, Reply};
pub use v1::{Plugin, PluginPre};
