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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::gateway::Gateway;
use crate::snapshot::{Rebuilt, rebuild};
use crate::wasm::LoadedPlugin;
use crate::wasm::load::optimize;

/// Attempts kept for `GET /admin/reloads`.
const HISTORY: usize = 50;
/// How long a batch of finished writes stays open for more of them (an
/// editor's rename pair, `cp` of several files).
const COALESCE: Duration = Duration::from_millis(2);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The catch-up reload right after start.
    Start,
    Watch,
    Signal,
    Admin,
}

/// How a reload attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Something new serves and nothing was refused.
    Applied,
    /// Something new serves, and something else was refused.
    Partial,
    /// Everything new was refused; what served before still does.
    Refused,
    /// Nothing differs from what serves.
    Unchanged,
}

/// One reload attempt, as `GET /admin/reloads` shows it.
#[derive(Debug, Serialize)]
pub struct Attempt {
    /// When it finished (RFC 3339).
    pub at: String,
    pub triggers: Vec<Trigger>,
    /// The files whose events started it (empty for an explicit reload).
    pub files: Vec<String>,
    pub outcome: Outcome,
    pub duration_ms: f64,
    pub changes: Vec<String>,
    /// What was refused; the previous version of it keeps serving.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Attempts by outcome and refusals by file, since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub applied: AtomicU64,
    pub partial: AtomicU64,
    pub refused: AtomicU64,
    pub unchanged: AtomicU64,
    /// Refused new content, by file (`<name>.wasm`, or `routes`).
    pub refusals: Mutex<BTreeMap<String, u64>>,
}

/// What the reload task is asked to do.
enum Job {
    Reload(Ask),
    /// The optimized build of a plugin that serves baseline code.
    Optimized(Box<LoadedPlugin>, Duration),
}

/// A request for a reload.
struct Ask {
    trigger: Trigger,
    /// The file an event was about.
    path: Option<PathBuf>,
    /// False while the file may still be being written.
    settled: bool,
    done: Option<oneshot::Sender<Arc<Attempt>>>,
}

impl Ask {
    /// A watcher's event about `path`.
    fn watched(path: PathBuf, settled: bool) -> Ask {
        Ask {
            trigger: Trigger::Watch,
            path: Some(path),
            settled,
            done: None,
        }
    }
}

/// The reload queue and the record of recent attempts (part of `Gateway`).
pub struct Reloads {
    tx: mpsc::UnboundedSender<Job>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    history: Mutex<VecDeque<Arc<Attempt>>>,
    pub counts: ReloadCounts,
}

impl Default for Reloads {
    fn default() -> Self {
        Reloads::new()
    }
}

impl Reloads {
    pub fn new() -> Reloads {
        let (tx, rx) = mpsc::unbounded_channel();
        Reloads {
            tx,
            rx: Mutex::new(Some(rx)),
            history: Mutex::new(VecDeque::new()),
            counts: ReloadCounts::default(),
        }
    }

    /// Asks for a reload and waits for the attempt that covers it. `None`
    /// when no reload task runs.
    pub async fn request(&self, trigger: Trigger) -> Option<Arc<Attempt>> {
        let (done, wait) = oneshot::channel();
        let job = Ask {
            trigger,
            path: None,
            settled: true,
            done: Some(done),
        };
        self.tx.send(Job::Reload(job)).ok()?;
        wait.await.ok()
    }

    /// Recent attempts, newest first.
    pub fn recent(&self) -> Vec<Arc<Attempt>> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn record(&self, attempt: Arc<Attempt>) {
        let counter = match attempt.outcome {
            Outcome::Applied => &self.counts.applied,
            Outcome::Partial => &self.counts.partial,
            Outcome::Refused => &self.counts.refused,
            Outcome::Unchanged => &self.counts.unchanged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(attempt);
    }
}

/// Starts the folder watchers (when `reload.watch`) and the `SIGHUP`
/// listener at once, then serves the reload queue in a task until it is
/// aborted. Files changed between the start-up load and the watch are
/// caught by a first reload, recorded only if it finds something.
pub fn spawn(gw: Arc<Gateway>) -> tokio::task::JoinHandle<()> {
    let rx = gw.reloads.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
    let watchers = if gw.config.reload.watch { watch(&gw) } else { Vec::new() };
    let sighup = on_sighup(gw.reloads.tx.clone());
    tokio::spawn(async move {
        let Some(rx) = rx else { return };
        let _watchers = watchers;
        tokio::spawn(sighup);
        if gw.config.reload.watch {
            let catch_up = reload(&gw, &[]).await;
            if catch_up.outcome != Outcome::Unchanged {
                gw.reloads.record(Arc::new(catch_up));
            }
        }
        prune_cache_later(&gw);
        serve_queue(&gw, rx).await;
    })
}

async fn serve_queue(gw: &Arc<Gateway>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let settle = gw.config.reload.settle;
    while let Some(first) = rx.recv().await {
        let mut batch = match first {
            Job::Reload(ask) => vec![ask],
            Job::Optimized(plugin, took) => {
                install_optimized(gw, *plugin, took);
                continue;
            }
        };
        loop {
            // A file whose last event says it may still be written waits
            // for quiet; finished writes only wait for their siblings.
            let quiet = if unsettled(&batch) { settle } else { COALESCE };
            match tokio::time::timeout(quiet, rx.recv()).await {
                Ok(Some(Job::Reload(ask))) => batch.push(ask),
                Ok(Some(Job::Optimized(plugin, took))) => install_optimized(gw, *plugin, took),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let attempt = Arc::new(reload(gw, &batch).await);
        gw.reloads.record(attempt.clone());
        if matches!(attempt.outcome, Outcome::Applied | Outcome::Partial) {
            prune_cache_later(gw);
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
fn optimize_later(gw: &Arc<Gateway>, plugin: Arc<LoadedPlugin>) {
    let worker = gw.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        match optimize(&worker.runtime, &plugin) {
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
fn install_optimized(gw: &Gateway, plugin: LoadedPlugin, took: Duration) {
    let current = gw.snapshot();
    let Some(entry) = current.plugins.files.get(&*plugin.name) else {
        return;
    };
    let Some(serving) = &entry.serving else { return };
    if serving.sha256 != plugin.sha256 || serving.pending_optimization.is_none() {
        return; // replaced by newer content meanwhile
    }
    let mut plugins = (*current.plugins).clone();
    let name = plugin.name.to_string();
    let compiler = plugin.compiler;
    if let Some(e) = plugins.files.get_mut(&name) {
        e.serving = Some(Arc::new(plugin));
    }
    gw.swap(current.with_plugins(plugins));
    tracing::info!(target: "gatehouse::reload", plugin = %name, compiler, ms = took.as_secs_f64() * 1e3, "optimized code now serves");
}

/// Trims the compile cache to `plugins.cache_size` in a blocking task,
/// keeping the code of every version that serves now.
fn prune_cache_later(gw: &Arc<Gateway>) {
    let serving: Vec<String> = gw
        .snapshot()
        .plugins
        .files
        .values()
        .filter_map(|e| e.serving.as_ref().map(|p| p.sha256.clone()))
        .collect();
    let gw = gw.clone();
    tokio::task::spawn_blocking(move || {
        let removed = crate::wasm::load::prune_cache(&gw.runtime, &serving);
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
async fn reload(gw: &Arc<Gateway>, batch: &[Ask]) -> Attempt {
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
    let prev = gw.snapshot();
    let handle = tokio::runtime::Handle::current();
    let worker = gw.clone();
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
        let mut counts = gw.reloads.counts.refusals.lock().unwrap_or_else(|e| e.into_inner());
        for file in refused {
            *counts.entry(file).or_default() += 1;
        }
    }
    if let Some(snapshot) = snapshot {
        gw.swap(snapshot);
    }
    for plugin in to_optimize {
        optimize_later(gw, plugin);
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

/// Watches the plugins and routes folders. A folder that does not exist yet
/// is waited for in its parent: once it appears it is watched and read. A
/// folder that cannot be watched at all is logged; explicit reloads still
/// work.
fn watch(gw: &Gateway) -> Vec<RecommendedWatcher> {
    let dirs = [(&gw.config.server.plugins_dir, "wasm"), (&gw.config.server.routes_dir, "toml")];
    let mut watchers = Vec::new();
    for (dir, ext) in dirs {
        let tx = gw.reloads.tx.clone();
        let watcher = match watch_folder(tx.clone(), dir, ext) {
            Err(_) if !dir.exists() => watch_for_folder(tx, dir, ext),
            other => other,
        };
        match watcher {
            Ok(w) => watchers.push(w),
            Err(error) => tracing::warn!(
                target: "gatehouse::reload",
                dir = %dir.display(),
                %error,
                "not watching this folder; reload with SIGHUP or POST /admin/reload"
            ),
        }
    }
    watchers
}

/// Watches `dir` for changed `*.ext` files.
fn watch_folder(tx: mpsc::UnboundedSender<Job>, dir: &Path, ext: &'static str) -> notify::Result<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            let Some(settled) = settled(&event.kind) else { return };
            for path in event.paths.into_iter().filter(|p| relevant(p, ext)) {
                let _ = tx.send(Job::Reload(Ask::watched(path, settled)));
            }
        }
        Err(error) => tracing::warn!(target: "gatehouse::reload", %error, "file watcher error"),
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tracing::info!(target: "gatehouse::reload", dir = %dir.display(), "watching for changes");
    Ok(watcher)
}

/// Watches the parent of a folder that does not exist yet. When the folder
/// appears (made, or renamed into place), it is watched first and then read
/// by a reload, so no file written into it is missed.
fn watch_for_folder(tx: mpsc::UnboundedSender<Job>, dir: &Path, ext: &'static str) -> notify::Result<RecommendedWatcher> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let target = dir.to_path_buf();
    // The folder's own watcher, once it exists: kept alive by this handler.
    let found: Mutex<Option<RecommendedWatcher>> = Mutex::new(None);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Every write to any file in the parent lands here: the check for
        // our folder's name comes first and costs no allocation or lock.
        if !event.paths.iter().any(|p| p.file_name() == target.file_name()) {
            return;
        }
        let mut found = found.lock().unwrap_or_else(|e| e.into_inner());
        if found.is_some() || !target.is_dir() {
            return;
        }
        match watch_folder(tx.clone(), &target, ext) {
            Ok(w) => {
                *found = Some(w);
                let _ = tx.send(Job::Reload(Ask::watched(target.clone(), true)));
            }
            Err(error) => tracing::warn!(target: "gatehouse::reload", dir = %target.display(), %error, "cannot watch this folder"),
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(&parent, RecursiveMode::NonRecursive)?;
    tracing::info!(target: "gatehouse::reload", dir = %dir.display(), "folder missing; watching for it to appear");
    Ok(watcher)
}

/// Whether an event means the file is complete (`Some(true)`), may still be
/// written (`Some(false)`), or does not matter (`None`: opens and reads,
/// ours included).
fn settled(kind: &EventKind) -> Option<bool> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => Some(true),
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => Some(false),
    }
}

/// A top-level file with the folder's extension, not hidden (editors'
/// temporary files start with a dot or end in `~`, `.swp`, `.tmp`) — or
/// `..data`, the link Kubernetes swaps to update a mounted ConfigMap or
/// Secret at once (the files themselves are links through it and see no
/// event of their own).
fn relevant(path: &Path, ext: &str) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
    if name == "..data" {
        return true;
    }
    !name.starts_with('.') && path.extension().is_some_and(|x| x == ext)
}

/// Registers for SIGHUP now (so a signal sent after start-up never kills the
/// process) and returns the loop that turns each one into a reload.
fn on_sighup(tx: mpsc::UnboundedSender<Job>) -> impl std::future::Future<Output = ()> {
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        let Ok(mut hup) = hup else {
            tracing::warn!(target: "gatehouse::reload", "cannot listen for SIGHUP");
            return;
        };
        sighup_loop(&mut hup, &tx).await;
    }
}

async fn sighup_loop(hup: &mut tokio::signal::unix::Signal, tx: &mpsc::UnboundedSender<Job>) {
    while hup.recv().await.is_some() {
        let job = Ask {
            trigger: Trigger::Signal,
            path: None,
            settled: true,
            done: None,
        };
        if tx.send(Job::Reload(job)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_and_rename_are_settled_writes_are_not() {
        use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};
        assert_eq!(settled(&EventKind::Access(AccessKind::Close(AccessMode::Write))), Some(true));
        assert_eq!(settled(&EventKind::Modify(ModifyKind::Name(RenameMode::To))), Some(true));
        assert_eq!(settled(&EventKind::Remove(RemoveKind::File)), Some(true));
        assert_eq!(settled(&EventKind::Create(CreateKind::File)), Some(false));
        assert_eq!(settled(&EventKind::Modify(ModifyKind::Data(DataChange::Any))), Some(false));
        assert_eq!(settled(&EventKind::Access(AccessKind::Open(AccessMode::Any))), None);
        assert_eq!(settled(&EventKind::Access(AccessKind::Close(AccessMode::Read))), None);
    }

    #[test]
    fn only_visible_files_with_the_folder_extension_count() {
        assert!(relevant(Path::new("/p/hello.wasm"), "wasm"));
        assert!(!relevant(Path::new("/p/.hello.wasm"), "wasm"));
        assert!(!relevant(Path::new("/p/hello.wasm.tmp"), "wasm"));
        assert!(!relevant(Path::new("/p/hello.wasm~"), "wasm"));
        assert!(!relevant(Path::new("/r/user.toml.swp"), "toml"));
        assert!(relevant(Path::new("/r/user.toml"), "toml"));
        assert!(relevant(Path::new("/p/..data"), "wasm"));
        assert!(!relevant(Path::new("/p/..data_tmp"), "wasm"));
    }

    #[test]
    fn a_batch_waits_while_any_file_may_be_half_written() {
        let job = |p: &str, settled| Ask::watched(PathBuf::from(p), settled);
        assert!(unsettled(&[job("a.wasm", false)]));
        assert!(!unsettled(&[job("a.wasm", false), job("a.wasm", true)]));
        assert!(unsettled(&[job("a.wasm", true), job("b.wasm", false)]));
        assert!(unsettled(&[job("a.wasm", true), job("a.wasm", false)]));
    }
}
