//! # Gatehouse
//!
//! An API gateway: the one public door in front of internal HTTP services.
//! It verifies the caller's JWT, strips anything a client sent that pretends
//! to be identity, injects the verified identity headers and proxies.
//!
//! # Layout
//!
//! ```text
//! server ──accept──▶ Gateway::handle (gateway.rs: the pipeline)
//!                     request_id → admit → route → websocket (a handshake?) →
//!                     authenticate → identity → component → upstream, or for a
//!                     handshake the service's 101 and a tunnel (tunnel.rs)
//!                     (outbound: the request's shape; response: what changes
//!                     on the way back) → echo request id → log
//!   config   gatehouse.toml + routes/*.toml → validated types (file:line errors)
//!   snapshot immutable routes + plugins behind ArcSwap (a reload swaps it whole)
//!   reload   watch plugins/ and routes/, SIGHUP, POST /admin/reload → rebuild → swap
//!   wasm     engine, bindings, host imports, loading and calling plugins
//!   auth     JWT keys pinned per algorithm, JWKS, verified-token cache
//!   headers  the identity header names and strip rules, in one place
//!   admin    /healthz /readyz /admin/{routes,plugins,reload,reloads} on a separate listener
//! ```

pub mod access;
pub mod admin;
pub mod auth;
pub mod body;
pub mod client;
pub mod config;
pub mod context;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod headers;
pub mod logsink;
pub mod metrics;
pub mod outbound;
pub mod path;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod stage;
pub mod starter;
pub mod summary;
pub mod tunnel;
pub mod wasm;
