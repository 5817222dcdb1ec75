//! Loading `plugins/*.wasm`: hash, compile (or reuse the on-disk cache),
//! check the contract version, pre-link, instantiate once. Loading is
//! incremental: unchanged content keeps its loaded version, and refused
//! content never replaces a version that serves (it is recorded next to it
//! for `/admin/plugins` and the log).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use wasmtime::component::Component;

use super::bindings::{CONTRACT_VERSION, HANDLER_INTERFACE, HandlerPre};
use super::engine::{Epoch, Runtime};
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
    /// When this content first served (an optimized rebuild keeps it).
    pub loaded_at: SystemTime,
    pub pre: HandlerPre,
    /// Shared with the optimized rebuild of a baseline version.
    pub stats: Arc<PluginStats>,
    /// The compiler of `pre`'s machine code: "cranelift" or "winch".
    pub compiler: &'static str,
    /// The epoch clock of `pre`'s engine: calls keep it ticking.
    pub epoch: Epoch,
    /// Baseline code waiting for its optimized build: the component bytes.
    pub pending_optimization: Option<Arc<[u8]>>,
}

/// Why a file's content was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The content hash, when the file could be read.
    pub sha256: Option<String>,
    pub error: String,
    pub at: SystemTime,
}

/// One plugin name (a file stem in `plugins/`): the version requests run,
/// and what became of the newest file content when it was refused.
#[derive(Clone, Default)]
pub struct PluginEntry {
    /// The version routes run; `None` when nothing under this name ever loaded.
    pub serving: Option<Arc<LoadedPlugin>>,
    /// The newest content, when it was refused (`serving` keeps serving).
    pub refused: Option<Refusal>,
    /// The file is gone but routes still use `serving`, so it stays.
    pub removed: bool,
}

/// Every plugin, by name.
#[derive(Default, Clone)]
pub struct PluginSet {
    pub files: BTreeMap<String, PluginEntry>,
}

impl PluginSet {
    /// The version of `name` that serves, or why there is none.
    pub fn get(&self, name: &str) -> Result<&Arc<LoadedPlugin>, String> {
        match self.files.get(name) {
            Some(PluginEntry { serving: Some(p), .. }) => Ok(p),
            Some(PluginEntry { refused: Some(r), .. }) => Err(format!("plugin {name:?} failed to load: {}", r.error)),
            _ => Err(format!("plugin {name:?} not found (no {name}.wasm in the plugins folder)")),
        }
    }
}

/// What loading did to one plugin name, compared with the previous set.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// New content loaded and now serves.
    Loaded { name: String, sha256: String },
    /// New content refused; `kept` says whether an older version still serves.
    Refused { name: String, error: String, kept: bool },
    /// The file is gone and nothing uses it any more.
    Removed { name: String },
    /// The file is gone but routes use it: the loaded version keeps serving.
    Retained { name: String },
    /// The file is back to the content that serves: its refusal is cleared.
    Restored { name: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Loaded { name, sha256 } => write!(f, "{name}.wasm: loaded (sha256 {})", &sha256[..12]),
            Change::Refused { name, error, kept: true } => {
                write!(f, "{name}.wasm: refused, the previous version keeps serving: {error}")
            }
            Change::Refused { name, error, kept: false } => write!(f, "{name}.wasm: refused: {error}"),
            Change::Removed { name } => write!(f, "{name}.wasm: removed"),
            Change::Retained { name } => write!(
                f,
                "{name}.wasm: removal refused, routes still use it: the loaded version keeps serving (remove those routes first to retire it)"
            ),
            Change::Restored { name } => write!(f, "{name}.wasm: back to the version that serves"),
        }
    }
}

/// The `*.wasm` files directly in `dir`, by plugin name. A missing folder has none.
fn wasm_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p.clone())))
        // Hidden files are editors' and copy tools' temporaries.
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    files.sort();
    files
}

/// Loads every `*.wasm` in `dir`, reusing what `previous` already has for
/// unchanged content (same hash: no compile, same instance, same counters).
/// New content that fails leaves the previous version serving. A file that
/// disappeared stays loaded while `in_use(name)` is true. With `fast`
/// (a reload), content not in the compile cache gets baseline code first
/// when the runtime is tiered. Blocking: call it off the request path;
/// `handle` runs the trial instantiation.
pub fn load_dir(
    rt: &Runtime,
    dir: &Path,
    previous: &PluginSet,
    in_use: &dyn Fn(&str) -> bool,
    handle: &Handle,
    fast: bool,
) -> (PluginSet, Vec<Change>) {
    let mut set = PluginSet::default();
    let mut changes = Vec::new();
    for (name, path) in wasm_files(dir) {
        let prev = previous.files.get(&name).cloned().unwrap_or_default();
        let (entry, change) = load_entry(rt, &path, &name, prev, handle, fast);
        changes.extend(change);
        set.files.insert(name, entry);
    }
    for (name, prev) in &previous.files {
        if set.files.contains_key(name) {
            continue;
        }
        match &prev.serving {
            Some(_) if in_use(name) => {
                if !prev.removed {
                    tracing::warn!(plugin = %name, "plugin file removed while routes use it: the loaded version keeps serving");
                    changes.push(Change::Retained { name: name.clone() });
                }
                let entry = PluginEntry {
                    serving: prev.serving.clone(),
                    refused: None,
                    removed: true,
                };
                set.files.insert(name.clone(), entry);
            }
            _ => {
                tracing::info!(plugin = %name, "plugin removed");
                changes.push(Change::Removed { name: name.clone() });
            }
        }
    }
    (set, changes)
}

/// Brings one name up to date with its file.
fn load_entry(rt: &Runtime, path: &Path, name: &str, prev: PluginEntry, handle: &Handle, fast: bool) -> (PluginEntry, Option<Change>) {
    let read = std::fs::read(path)
        .map(|b| {
            let sha = hex(&Sha256::digest(&b));
            (b, sha)
        })
        .map_err(|e| (None, format!("cannot read {}: {e}", path.display())));
    let sha256 = read.as_ref().ok().map(|(_, sha)| sha.clone());
    if let (Some(p), Some(sha)) = (&prev.serving, &sha256)
        && p.sha256 == *sha
    {
        let change = (prev.refused.is_some() || prev.removed).then(|| Change::Restored { name: name.to_string() });
        let entry = PluginEntry {
            serving: prev.serving,
            refused: None,
            removed: false,
        };
        return (entry, change);
    }
    if let Some(r) = &prev.refused
        && r.sha256.is_some()
        && r.sha256 == sha256
    {
        // The same bytes were refused before: nothing new to say.
        return (prev, None);
    }
    let loaded = read.and_then(|(bytes, sha)| load_bytes(rt, &bytes, sha, name, handle, fast));
    match loaded {
        Ok(p) => {
            tracing::info!(plugin = %name, sha256 = %p.sha256, compiler = p.compiler, "plugin loaded");
            let change = Change::Loaded {
                name: name.to_string(),
                sha256: p.sha256.clone(),
            };
            let entry = PluginEntry {
                serving: Some(Arc::new(p)),
                refused: None,
                removed: false,
            };
            (entry, Some(change))
        }
        Err((sha256, error)) => {
            let kept = prev.serving.is_some();
            if kept {
                tracing::error!(plugin = %name, file = %path.display(), "plugin refused, the previous version keeps serving: {error}");
            } else {
                tracing::error!(plugin = %name, file = %path.display(), "plugin refused: {error}");
            }
            let same = prev.refused.as_ref().is_some_and(|r| r.sha256 == sha256 && r.error == error);
            let change = (!same).then(|| Change::Refused {
                name: name.to_string(),
                error: error.clone(),
                kept,
            });
            let entry = PluginEntry {
                serving: prev.serving,
                refused: Some(Refusal {
                    sha256,
                    error,
                    at: SystemTime::now(),
                }),
                removed: false,
            };
            (entry, change)
        }
    }
}

/// Loads one component file (blocking; `handle` runs the trial
/// instantiation). On failure: its hash (if it could be read) and why.
pub fn load_file(rt: &Runtime, path: &Path, name: &str, handle: &Handle) -> Result<LoadedPlugin, (Option<String>, String)> {
    let bytes = std::fs::read(path).map_err(|e| (None, format!("cannot read {}: {e}", path.display())))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    load_bytes(rt, &bytes, sha256, name, handle, false)
}

/// Compiles `bytes` (content hash `sha256`, or reuses the cache), checks the
/// contract, pre-links and instantiates once: a component that would fail on
/// every request is refused here instead. With `fast` and a tiered runtime,
/// content not in the cache is compiled by the baseline compiler and marked
/// for optimization.
fn load_bytes(
    rt: &Runtime,
    bytes: &[u8],
    sha256: String,
    name: &str,
    handle: &Handle,
    fast: bool,
) -> Result<LoadedPlugin, (Option<String>, String)> {
    let fail = |msg: String| (Some(sha256.clone()), msg);
    if !bytes.starts_with(b"\0asm") {
        return Err(fail("not a WebAssembly file".into()));
    }
    if !is_component(bytes) {
        return Err(fail(
            "this is a core WebAssembly module, not a component: build with --target wasm32-wasip2 or cargo component".into(),
        ));
    }
    let started = std::time::Instant::now();
    let baseline = rt.baseline().filter(|_| fast && !cache_path(rt, &sha256).is_file());
    let compiled = match baseline {
        Some(tier) => match Component::new(&tier.engine, bytes) {
            Ok(c) => Some((c, &tier.linker, &tier.epoch, "winch")),
            Err(e) => {
                // Something Winch does not support: fall back to Cranelift.
                tracing::debug!(plugin = %name, "baseline compile failed, using the optimizing compiler: {e:#}");
                None
            }
        },
        None => None,
    };
    let (component, linker, epoch, compiler) = match compiled {
        Some(c) => c,
        None => (compile(rt, bytes, &sha256).map_err(fail)?, &rt.linker, &rt.epoch, rt.compiler()),
    };
    let compiled_in = started.elapsed();
    let pre = prepare(&component, linker).map_err(fail)?;
    handle
        .block_on(super::call::probe(rt, &pre, epoch, name))
        .map_err(|e| fail(format!("it fails to instantiate: {e}")))?;
    tracing::debug!(plugin = %name, compiler, ?compiled_in, total = ?started.elapsed(), "plugin compiled");
    Ok(LoadedPlugin {
        name: name.into(),
        sha256,
        loaded_at: SystemTime::now(),
        pre,
        stats: Arc::default(),
        compiler,
        epoch: epoch.clone(),
        pending_optimization: (compiler == "winch" && rt.compiler() != "winch").then(|| Arc::from(bytes)),
    })
}

/// Checks the contract and pre-links a compiled component.
fn prepare(component: &Component, linker: &wasmtime::component::Linker<PluginState>) -> Result<HandlerPre, String> {
    check_contract(component)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("it needs an import this gateway does not provide: {e:#}"))?;
    HandlerPre::new(pre).map_err(|e| format!("its exports do not match the route-handler world: {e:#}"))
}

/// The optimized build of a baseline `plugin` (blocking): same content,
/// same counters and `loaded_at`, Cranelift code. It also fills the compile
/// cache, so a restart gets it directly.
pub fn optimize(rt: &Runtime, plugin: &LoadedPlugin) -> Result<LoadedPlugin, String> {
    let bytes = plugin.pending_optimization.as_ref().ok_or("already optimized")?;
    let component = compile(rt, bytes, &plugin.sha256)?;
    let pre = prepare(&component, &rt.linker)?;
    Ok(LoadedPlugin {
        name: plugin.name.clone(),
        sha256: plugin.sha256.clone(),
        loaded_at: plugin.loaded_at,
        pre,
        stats: plugin.stats.clone(),
        compiler: rt.compiler(),
        epoch: rt.epoch.clone(),
        pending_optimization: None,
    })
}

fn cache_path(rt: &Runtime, sha256: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rt.engine.precompile_compatibility_hash().hash(&mut hasher);
    rt.limits.cache_dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
}

/// Compiles `bytes` with the main engine, or loads the machine code cached
/// for the same content and engine settings.
fn compile(rt: &Runtime, bytes: &[u8], sha256: &str) -> Result<Component, String> {
    let cached = cache_path(rt, sha256);
    if cached.is_file() {
        // SAFETY: the cache folder is written only by this gateway (below),
        // with files named by the content hash of the source and the engine
        // settings; it is as trusted as the binary itself. A file that fails
        // to deserialize is recompiled.
        match unsafe { Component::deserialize_file(&rt.engine, &cached) } {
            Ok(c) => {
                // Recently used: the last to be pruned.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&cached)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                return Ok(c);
            }
            Err(e) => tracing::warn!(file = %cached.display(), "ignoring unusable compile cache entry: {e:#}"),
        }
    }
    let component = Component::new(&rt.engine, bytes).map_err(|e| {
        let why = format!("{e:#}");
        // The pooling allocator checks a component's memories and tables
        // against the slots when compiling it.
        if why.contains("pooling allocator") {
            format!(
                "it does not fit this gateway's plugin limits (plugins.memory = {} bytes): {why}",
                rt.limits.memory
            )
        } else {
            format!("not a valid component: {why}")
        }
    })?;
    if let Err(e) = store_cache(&component, &cached) {
        tracing::warn!(dir = %rt.limits.cache_dir.display(), "cannot write the compile cache: {e}");
    }
    Ok(component)
}

/// The binary's layer field: 1 for components, 0 for core modules.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[6] == 1 && bytes[7] == 0
}

/// Keeps the compile cache within `plugins.cache_size`. The entries of the
/// versions in `serving` (content hashes) always stay; the other `.cwasm`
/// files go least recently used first. Returns how many were removed.
pub fn prune_cache(rt: &Runtime, serving: &[String]) -> usize {
    let keep: std::collections::HashSet<PathBuf> = serving.iter().map(|sha| cache_path(rt, sha)).collect();
    let Ok(dir) = std::fs::read_dir(&rt.limits.cache_dir) else {
        return 0;
    };
    let mut others = Vec::new();
    for entry in dir.flatten() {
        let path = entry.path();
        if keep.contains(&path) || path.extension().is_none_or(|x| x != "cwasm") {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            others.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), path));
        }
    }
    let mut total: u64 = others.iter().map(|(_, len, _)| len).sum();
    others.sort();
    let mut removed = 0;
    for (_, len, path) in others {
        if total <= rt.limits.cache_size {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
            removed += 1;
        }
    }
    removed
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
fn check_contract(component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(component.engine()).map(|(name, _)| name).collect();
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

/// Lower-case hex, as content hashes are shown.
pub(crate) fn hex(bytes: &[u8]) -> String {
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
