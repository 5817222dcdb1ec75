//! WebAssembly route handlers: the engine, the generated bindings, the host
//! side of the plugin's imports, what a loaded plugin is, loading
//! `plugins/*.wasm` (with its compile cache), and calling them.

pub mod bindings;
mod cache;
pub mod call;
pub mod engine;
pub mod host;
pub mod load;
pub mod outbound;
pub mod plugin;

pub use cache::prune_cache;
pub use call::{CallError, call};
pub use engine::Runtime;
pub use load::load_dir;
pub use plugin::{LoadedPlugin, PluginEntry, PluginSet};
