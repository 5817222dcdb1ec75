//! Loading `plugins/*.wasm`: hash, compile (or reuse the on-disk cache),
//! check the contract version, pre-link, instantiate once. Loading is
//! incremental: unchanged content keeps its loaded version, and refused
//! content never replaces a version that serves (it is recorded next to it
//! for `/admin/plugins` and the log).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use wasmtime::component::Component;

use super::bindings::{CONTRACT_VERSION, HANDLER_INTERFACE, HandlerPre, PluginPre, ProxyPre, WASI_HTTP_INTERFACE};
use super::cache::{cache_path, compile};
use super::engine::Runtime;
use super::host::PluginState;
use super::plugin::{Change, LoadedPlugin, PluginEntry, PluginSet, Refusal};

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
/// (`serve`'s start and every reload), content not in the compile cache
/// gets baseline code first when the runtime is tiered. Files are compiled
/// side by side, one per core, so with as many cores as large components a
/// folder takes about as long as its slowest. Blocking: call it off the
/// request path; `handle` runs the trial instantiations.
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
    let files = wasm_files(dir);
    let loaded = side_by_side(&files, |(name, path)| {
        let prev = previous.files.get(name).cloned().unwrap_or_default();
        load_entry(rt, path, name, prev, handle, fast)
    });
    for ((name, _), (entry, change)) in files.into_iter().zip(loaded) {
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

/// `f` on every item, as many at once as the machine has cores, results
/// in the items' order.
fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let width = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() <= 1 || width == 1 {
        return items.iter().map(&f).collect();
    }
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(width) {
        std::thread::scope(|s| {
            let running: Vec<_> = chunk.iter().map(|item| s.spawn(|| f(item))).collect();
            out.extend(
                running
                    .into_iter()
                    .map(|t| t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
            );
        });
    }
    out
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
    rt.compiles
        .get_or_create(&[("compiler", compiler)])
        .observe(compiled_in.as_secs_f64());
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
fn prepare(component: &Component, linker: &wasmtime::component::Linker<PluginState>) -> Result<PluginPre, String> {
    let world = check_contract(component)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("it needs an import this gateway does not provide: {e:#}"))?;
    match world {
        World::Gatehouse => HandlerPre::new(pre)
            .map(PluginPre::Gatehouse)
            .map_err(|e| format!("its exports do not match the route-handler world: {e:#}")),
        World::WasiHttp(version) => ProxyPre::new(pre)
            .map(|pre| PluginPre::WasiHttp { pre, version })
            .map_err(|e| format!("its exports do not match the wasi:http/proxy world: {e:#}")),
    }
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

/// The binary's layer field: 1 for components, 0 for core modules.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[6] == 1 && bytes[7] == 0
}

/// Which of the two worlds a component targets.
#[derive(Debug, PartialEq)]
enum World {
    Gatehouse,
    /// The `wasi:http` version it exports, e.g. `0.2.12`.
    WasiHttp(String),
}

/// The worlds this gateway runs, for refusal messages.
fn accepted() -> String {
    format!(
        "this gateway runs components of the world gatehouse:plugin/route-handler@{CONTRACT_VERSION} (they export \
         {HANDLER_INTERFACE}@{CONTRACT_VERSION}) and of wasi:http/proxy@0.2.x (they export {WASI_HTTP_INTERFACE}@0.2.x)"
    )
}

/// Tells the worlds apart by their export, and refuses components built
/// for another version of either, or for another world, with a message
/// that says which.
fn check_contract(component: &Component) -> Result<World, String> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(component.engine()).map(|(name, _)| name).collect();
    let version_of = |interface: &str| {
        exports
            .iter()
            .find(|n| n.split('@').next() == Some(interface))
            .map(|n| n.split_once('@').map_or("none", |(_, v)| v).to_string())
    };
    if let Some(version) = version_of(HANDLER_INTERFACE) {
        if !compatible(&version, CONTRACT_VERSION) {
            return Err(format!(
                "built for gatehouse:plugin@{version}, but this gateway serves gatehouse:plugin@{CONTRACT_VERSION}: rebuild it against this gateway's wit/"
            ));
        }
        return Ok(World::Gatehouse);
    }
    if let Some(version) = version_of(WASI_HTTP_INTERFACE) {
        if !compatible(&version, "0.2.0") {
            return Err(format!(
                "built for wasi:http@{version}, but this gateway serves wasi:http@0.2.x: build it against a wasi:http 0.2 release"
            ));
        }
        return Ok(World::WasiHttp(version));
    }
    Err(format!(
        "not a Gatehouse plugin: {}, but this one exports {exports:?}; docs/plugins.md says how to build one",
        accepted()
    ))
}

/// Cargo's rule: same major, and for 0.x the same minor, as `served`.
fn compatible(version: &str, served: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(version), parts(served)) {
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
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(!compatible("garbage", "0.1.0"));
        // wasi:http: every 0.2 release, nothing else.
        assert!(compatible("0.2.0", "0.2.0") && compatible("0.2.12", "0.2.0"));
        assert!(!compatible("0.3.0-rc-2025-09-16", "0.2.0"));
    }
}
