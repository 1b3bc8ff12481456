//! Host bindings for the `gateway:filter` world, generated from `wit/`.
//! The request and response resources map to host types that own the
//! message while a filter runs.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "wit",
    with: {
        "gateway:filter/types.request": super::host::RequestState,
        "gateway:filter/types.response": super::host::ResponseState,
    },
    // Host imports answer at once, except shared state, which may wait on
    // Redis. Exports are called asynchronously so those waits, and WASI's
    // own async host calls (a guest writing to stderr, say), never block a
    // runtime thread.
    imports: {
        "gateway:filter/state": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use self::gateway::filter::host::LogLevel;
pub use self::gateway::filter::state::{
    Counter as StateCounter, CounterOp as StateCounterOp, StateError as WitStateError,
};
pub use self::gateway::filter::types::{Action, HeaderStats, Reply};
pub use exports::gateway::filter::filter::Guest;
