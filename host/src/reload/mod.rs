//! Hot reload: `plugins/*.wasm` and `routes/*.toml` are watched (inotify via
//! `notify`), and `SIGHUP` or `POST /admin/reload` ask for a reload
//! explicitly. One task does every reload, one at a time: it collects the
//! requests that arrive close together, rebuilds the snapshot in a blocking
//! task (compiling only what changed), swaps it in whole and records the
//! attempt for `GET /admin/reloads`.
//!
//! In `tiered` mode a changed plugin first gets baseline (Winch) code, so it
//! serves within milliseconds; its optimized (Cranelift) build is made in
//! the background and swapped in the same way when ready, if that content
//! still serves.
//!
//! Copies are not atomic, so when to read a file matters. A file closed
//! after writing, renamed into place or removed is read at once; a file that
//! is still open for writing is read once it has been quiet for
//! `reload.settle`. If that was too early (a slow writer), the half file is
//! refused like any bad file, the previous version keeps serving, and the
//! writer's next write or close triggers another reload that loads it.
//!
//! The reloader owns its records ([`Reloads`]) and shares only the live
//! snapshot ([`Live`]) with the request path: nothing here knows the
//! `Gateway`.

mod records;
mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use records::{Ask, Job};
pub use records::{Attempt, Outcome, ReloadCounts, Reloads, Trigger};

use crate::config::Config;
use crate::snapshot::{Live, Rebuilt, rebuild};
use crate::wasm::load::optimize;
use crate::wasm::{LoadedPlugin, Runtime};

/// How long a batch of finished writes stays open for more of them (an
/// editor's rename pair, `cp` of several files).
const COALESCE: Duration = Duration::from_millis(2);

/// What a reload needs: the configuration (folders, limits), the engine,
/// the live snapshot it swaps, and its queue and records.
pub struct Reloader {
    pub config: Config,
    pub runtime: Arc<Runtime>,
    pub live: Live,
    pub reloads: Arc<Reloads>,
}

/// Starts the folder watchers (when `reload.watch`) and the `SIGHUP`
/// listener at once, then serves the reload queue in a task until it is
/// aborted. Files changed between the start-up load and the watch are
/// caught by a first reload, recorded only if it finds something.
pub fn spawn(reloader: Arc<Reloader>) -> tokio::task::JoinHandle<()> {
    let rx = reloader.reloads.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
    let watchers = if reloader.config.reload.watch {
        watch::watch(
            &reloader.config.server.plugins_dir,
            &reloader.config.server.routes_dir,
            &reloader.reloads.tx,
        )
    } else {
        Vec::new()
    };
    let sighup = watch::on_sighup(reloader.reloads.tx.clone());
    tokio::spawn(async move {
        let Some(rx) = rx else { return };
        let _watchers = watchers;
        tokio::spawn(sighup);
        // What start-up loaded with baseline code gets its optimized build.
        let started_baseline: Vec<Arc<LoadedPlugin>> = reloader
            .live
            .load()
            .plugins
            .files
            .values()
            .filter_map(|e| e.serving.clone())
            .filter(|p| p.pending_optimization.is_some())
            .collect();
        for plugin in started_baseline {
            optimize_later(&reloader, plugin);
        }
        if reloader.config.reload.watch {
            let catch_up = reload(&reloader, &[]).await;
            if catch_up.outcome != Outcome::Unchanged {
                reloader.reloads.record(Arc::new(catch_up));
            }
        }
        prune_cache_later(&reloader);
        serve_queue(&reloader, rx).await;
    })
}

async fn serve_queue(reloader: &Arc<Reloader>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let settle = reloader.config.reload.settle;
    while let Some(first) = rx.recv().await {
        let mut batch = match first {
            Job::Reload(ask) => vec![ask],
            Job::Optimized(plugin, took) => {
                install_optimized(reloader, *plugin, took);
                continue;
            }
        };
        loop {
            // A file whose last event says it may still be written waits
            // for quiet; finished writes only wait for their siblings.
            let quiet = if unsettled(&batch) { settle } else { COALESCE };
            match tokio::time::timeout(quiet, rx.recv()).await {
                Ok(Some(Job::Reload(ask))) => batch.push(ask),
                Ok(Some(Job::Optimized(plugin, took))) => install_optimized(reloader, *plugin, took),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let attempt = Arc::new(reload(reloader, &batch).await);
        reloader.reloads.record(attempt.clone());
        if matches!(attempt.outcome, Outcome::Applied | Outcome::Partial) {
            prune_cache_later(reloader);
        }
        for job in batch {
            if let Some(done) = job.done {
                let _ = done.send(attempt.clone());
            }
        }
    }
}

/// Builds the optimized code of a plugin that serves baseline code, in a
/// blocking task; the reload task swaps it in when it is ready.
/// Content already on its way is not queued again: its build fills the
/// compile cache and replaces whichever version of it serves then.
fn optimize_later(reloader: &Arc<Reloader>, plugin: Arc<LoadedPlugin>) {
    let optimizing = || reloader.runtime.optimizing.lock().unwrap_or_else(|e| e.into_inner());
    if !optimizing().insert(plugin.sha256.clone()) {
        return;
    }
    let worker = reloader.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let built = worker.runtime.in_background(|| optimize(&worker.runtime, &plugin));
        worker
            .runtime
            .optimizing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&plugin.sha256);
        match built {
            Ok(better) => {
                let _ = worker.reloads.tx.send(Job::Optimized(Box::new(better), started.elapsed()));
            }
            Err(e) => tracing::error!(
                target: "gatehouse::reload",
                plugin = %plugin.name,
                "optimizing failed; the baseline code keeps serving: {e}"
            ),
        }
    });
}

/// Swaps the optimized build in, if the baseline build it replaces still serves.
fn install_optimized(reloader: &Reloader, plugin: LoadedPlugin, took: Duration) {
    let current = reloader.live.load();
    let Some(entry) = current.plugins.files.get(&*plugin.name) else {
        return;
    };
    let Some(serving) = &entry.serving else { return };
    if serving.sha256 != plugin.sha256 || serving.pending_optimization.is_none() {
        return; // replaced by newer content meanwhile
    }
    // The version that serves keeps its counters and load time.
    let plugin = LoadedPlugin {
        stats: serving.stats.clone(),
        loaded_at: serving.loaded_at,
        ..plugin
    };
    let mut plugins = (*current.plugins).clone();
    let name = plugin.name.to_string();
    let compiler = plugin.compiler;
    if let Some(e) = plugins.files.get_mut(&name) {
        e.serving = Some(Arc::new(plugin));
    }
    reloader.live.swap(current.with_plugins(plugins));
    tracing::info!(target: "gatehouse::reload", plugin = %name, compiler, ms = took.as_secs_f64() * 1e3, "optimized code now serves");
}

/// Trims the compile cache to `plugins.cache_size` in a blocking task,
/// keeping the code of every version that serves now.
fn prune_cache_later(reloader: &Arc<Reloader>) {
    let serving: Vec<String> = reloader
        .live
        .load()
        .plugins
        .files
        .values()
        .filter_map(|e| e.serving.as_ref().map(|p| p.sha256.clone()))
        .collect();
    let reloader = reloader.clone();
    tokio::task::spawn_blocking(move || {
        let removed = crate::wasm::prune_cache(&reloader.runtime, &serving);
        if removed > 0 {
            tracing::debug!(target: "gatehouse::reload", removed, "compile cache pruned");
        }
    });
}

/// True when some file's latest event leaves it possibly half written.
fn unsettled(batch: &[Ask]) -> bool {
    let mut last: HashMap<&Path, bool> = HashMap::new();
    for job in batch {
        if let Some(p) = &job.path {
            last.insert(p, job.settled);
        }
    }
    last.values().any(|settled| !settled)
}

/// Rebuilds the snapshot off the request path and swaps it in.
async fn reload(reloader: &Arc<Reloader>, batch: &[Ask]) -> Attempt {
    let started = Instant::now();
    let mut triggers: BTreeSet<Trigger> = batch.iter().map(|j| j.trigger).collect();
    if triggers.is_empty() {
        triggers.insert(Trigger::Start);
    }
    let files: BTreeSet<String> = batch
        .iter()
        .filter_map(|j| j.path.as_ref())
        .map(|p| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let prev = reloader.live.load();
    let handle = tokio::runtime::Handle::current();
    let worker = reloader.clone();
    let built = tokio::task::spawn_blocking(move || rebuild(&worker.config, &worker.runtime, &prev, &handle)).await;
    let built = built.unwrap_or_else(|e| Rebuilt {
        errors: vec![format!("reload failed inside the gateway ({e}); nothing changed")],
        ..Rebuilt::default()
    });
    let Rebuilt {
        snapshot,
        changes,
        errors,
        refused,
        warnings,
        to_optimize,
    } = built;
    {
        let mut counts = reloader.reloads.counts.refusals.lock().unwrap_or_else(|e| e.into_inner());
        for file in refused {
            *counts.entry(file).or_default() += 1;
        }
    }
    if let Some(snapshot) = snapshot {
        reloader.live.swap(snapshot);
    }
    for plugin in to_optimize {
        optimize_later(reloader, plugin);
    }
    let outcome = match (changes.is_empty(), errors.is_empty()) {
        (false, true) => Outcome::Applied,
        (false, false) => Outcome::Partial,
        (true, false) => Outcome::Refused,
        (true, true) => Outcome::Unchanged,
    };
    let duration = started.elapsed();
    for change in &changes {
        tracing::info!(target: "gatehouse::reload", "{change}");
    }
    for warning in &warnings {
        tracing::warn!(target: "gatehouse::reload", "{warning}");
    }
    for error in &errors {
        tracing::error!(target: "gatehouse::reload", "{error}");
    }
    tracing::info!(target: "gatehouse::reload", ?outcome, ms = duration.as_secs_f64() * 1e3, files = ?files, "reload");
    Attempt {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        triggers: triggers.into_iter().collect(),
        files: files.into_iter().collect(),
        outcome,
        duration_ms: (duration.as_secs_f64() * 1e6).round() / 1e3,
        changes,
        errors,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_batch_waits_while_any_file_may_be_half_written() {
        let job = |p: &str, settled| Ask::watched(PathBuf::from(p), settled);
        assert!(unsettled(&[job("a.wasm", false)]));
        assert!(!unsettled(&[job("a.wasm", false), job("a.wasm", true)]));
        assert!(unsettled(&[job("a.wasm", true), job("b.wasm", false)]));
        assert!(unsettled(&[job("a.wasm", true), job("a.wasm", false)]));
    }
}
