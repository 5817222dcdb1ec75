//! Loading `plugins/*.wasm`: hash, compile (or reuse the on-disk cache),
//! check the contract version, pre-link. A file that fails is kept as a
//! `Failed` record with its reason, for `/admin/plugins` and the routes
//! that name it.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{CONTRACT_VERSION, HANDLER_INTERFACE, RouteHandlerPre};
use super::engine::Runtime;
use super::host::PluginState;

/// Per-plugin counters, shown on `/admin/plugins`.
#[derive(Debug, Default)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_limit: AtomicU64,
    pub busy: AtomicU64,
    pub bad_results: AtomicU64,
}

impl PluginStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A component ready to instantiate.
pub struct LoadedPlugin {
    pub name: Arc<str>,
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub pre: RouteHandlerPre<PluginState>,
    pub stats: PluginStats,
}

/// One file in `plugins/`.
pub enum PluginFile {
    Loaded(Arc<LoadedPlugin>),
    Failed {
        sha256: Option<String>,
        error: String,
        at: SystemTime,
    },
}

/// Every plugin file, by name (the file stem).
#[derive(Default)]
pub struct PluginSet {
    pub files: BTreeMap<String, PluginFile>,
}

impl PluginSet {
    /// The loaded plugin called `name`, or why there is none.
    pub fn get(&self, name: &str) -> Result<&Arc<LoadedPlugin>, String> {
        match self.files.get(name) {
            Some(PluginFile::Loaded(p)) => Ok(p),
            Some(PluginFile::Failed { error, .. }) => Err(format!("plugin {name:?} failed to load: {error}")),
            None => Err(format!("plugin {name:?} not found (no {name}.wasm in the plugins folder)")),
        }
    }
}

/// Loads every `*.wasm` directly in `dir`. A missing folder is an empty set.
pub fn load_dir(rt: &Runtime, dir: &Path) -> PluginSet {
    let mut set = PluginSet::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return set;
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let file = match load_file(rt, &path, &name) {
            Ok(p) => {
                tracing::info!(plugin = %name, sha256 = %p.sha256, "plugin loaded");
                PluginFile::Loaded(Arc::new(p))
            }
            Err((sha256, error)) => {
                tracing::error!(plugin = %name, file = %path.display(), "plugin refused: {error}");
                PluginFile::Failed {
                    sha256,
                    error,
                    at: SystemTime::now(),
                }
            }
        };
        set.files.insert(name, file);
    }
    set
}

/// Loads one component file. On failure: its hash (if it could be read) and why.
pub fn load_file(rt: &Runtime, path: &Path, name: &str) -> Result<LoadedPlugin, (Option<String>, String)> {
    let bytes = std::fs::read(path).map_err(|e| (None, format!("cannot read {}: {e}", path.display())))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let fail = |msg: String| (Some(sha256.clone()), msg);
    if !bytes.starts_with(b"\0asm") {
        return Err(fail("not a WebAssembly file".into()));
    }
    let component = compile(rt, &bytes, &sha256).map_err(fail)?;
    check_contract(rt, &component).map_err(fail)?;
    let pre = rt
        .linker
        .instantiate_pre(&component)
        .map_err(|e| fail(format!("it needs an import this gateway does not provide: {e:#}")))?;
    let pre = RouteHandlerPre::new(pre).map_err(|e| fail(format!("its exports do not match the route-handler world: {e:#}")))?;
    Ok(LoadedPlugin {
        name: name.into(),
        sha256,
        loaded_at: SystemTime::now(),
        pre,
        stats: PluginStats::default(),
    })
}

/// Compiles `bytes`, or loads the machine code cached for the same content
/// and engine settings.
fn compile(rt: &Runtime, bytes: &[u8], sha256: &str) -> Result<Component, String> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rt.engine.precompile_compatibility_hash().hash(&mut hasher);
    let cached = rt.limits.cache_dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
    if cached.is_file() {
        // SAFETY: the cache folder is written only by this gateway (below),
        // with files named by the content hash of the source and the engine
        // settings; it is as trusted as the binary itself. A file that fails
        // to deserialize is recompiled.
        match unsafe { Component::deserialize_file(&rt.engine, &cached) } {
            Ok(c) => return Ok(c),
            Err(e) => tracing::warn!(file = %cached.display(), "ignoring unusable compile cache entry: {e:#}"),
        }
    }
    if !wasmparser_is_component(bytes) {
        return Err("this is a core WebAssembly module, not a component: build with --target wasm32-wasip2 or cargo component".into());
    }
    let component = Component::new(&rt.engine, bytes).map_err(|e| format!("not a valid component: {e:#}"))?;
    if let Err(e) = store_cache(&component, &cached) {
        tracing::warn!(dir = %rt.limits.cache_dir.display(), "cannot write the compile cache: {e}");
    }
    Ok(component)
}

/// The binary's layer field: 1 for components, 0 for core modules.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[6] == 1 && bytes[7] == 0
}

fn store_cache(component: &Component, path: &Path) -> Result<(), String> {
    let code = component.serialize().map_err(|e| format!("{e:#}"))?;
    let dir = path.parent().ok_or("no cache folder")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    // Write then rename: a reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, code).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// Refuses components built for another version of the contract, or for
/// another world, with a message that says which.
fn check_contract(rt: &Runtime, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(&rt.engine).map(|(name, _)| name).collect();
    let Some(found) = exports.iter().find(|n| n.split('@').next() == Some(HANDLER_INTERFACE)) else {
        return Err(format!(
            "not a Gatehouse plugin: it must export {HANDLER_INTERFACE}@{CONTRACT_VERSION} (world gatehouse:plugin/route-handler), \
             but it exports {exports:?}"
        ));
    };
    let version = found.split_once('@').map_or("none", |(_, v)| v);
    if !compatible(version) {
        return Err(format!(
            "built for gatehouse:plugin@{version}, but this gateway serves gatehouse:plugin@{CONTRACT_VERSION}: rebuild it against this gateway's wit/"
        ));
    }
    Ok(())
}

/// Cargo's rule: same major, and for 0.x the same minor.
fn compatible(version: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(version), parts(CONTRACT_VERSION)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn contract_versions_follow_cargo_rules() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.0.0"));
        assert!(!compatible("garbage"));
    }
}
