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
    imports: { default: trappable },
});

pub use exports::gateway::filter::filter::Guest;
pub use gateway::filter::host::LogLevel;
pub use gateway::filter::types::{Action, HeaderStats, Reply};
