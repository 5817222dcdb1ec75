//! The on-disk compile cache: machine code keyed by the component's content
//! hash and the engine's settings, so restarts and switches back to an
//! earlier build skip compiling; trimmed to `plugins.cache_size`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::component::Component;

use super::engine::Runtime;

pub(super) fn cache_path(rt: &Runtime, sha256: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    rt.engine.precompile_compatibility_hash().hash(&mut hasher);
    rt.limits.cache_dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
}

/// Compiles `bytes` with the main engine, or loads the machine code cached
/// for the same content and engine settings.
pub(super) fn compile(rt: &Runtime, bytes: &[u8], sha256: &str) -> Result<Component, String> {
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
