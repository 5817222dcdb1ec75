//! WebAssembly route handlers: the engine, the generated bindings, the host
//! side of the plugin's imports, loading `plugins/*.wasm`, and calling them.

pub mod bindings;
pub mod call;
pub mod engine;
pub mod host;
pub mod load;
pub mod outbound;

pub use call::{CallError, call};
pub use engine::Runtime;
pub use load::{LoadedPlugin, PluginEntry, PluginSet, load_dir};
