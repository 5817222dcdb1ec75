//! Host bindings generated from `wit/route-handler.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "route-handler",
    imports: {
        // A plugin waiting on its service must not block a tokio worker.
        "gatehouse:plugin/upstream.send": async,
    },
    exports: { default: async },
});

pub use self::gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
pub use self::gatehouse::plugin::types::{Level, SendError};

/// The contract version this host serves; components must match its
/// `major.minor` (0.x minors are breaking, as in Cargo).
pub const CONTRACT_VERSION: &str = "0.1.0";
/// The interface a plugin must export.
pub const HANDLER_INTERFACE: &str = "gatehouse:plugin/handler";
