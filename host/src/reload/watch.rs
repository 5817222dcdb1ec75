//! What starts a reload from outside: the folder watchers (inotify via
//! `notify`) and `SIGHUP`. Each turns what it sees into a job on the queue.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::records::{Ask, Job, Trigger};

/// Watches the plugins and routes folders. A folder that does not exist yet
/// is waited for in its parent: once it appears it is watched and read. A
/// folder that cannot be watched at all is logged; explicit reloads still
/// work.
pub(super) fn watch(plugins_dir: &Path, routes_dir: &Path, tx: &mpsc::UnboundedSender<Job>) -> Vec<RecommendedWatcher> {
    let dirs = [(plugins_dir, "wasm"), (routes_dir, "toml")];
    let mut watchers = Vec::new();
    for (dir, ext) in dirs {
        let tx = tx.clone();
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
pub(super) fn on_sighup(tx: mpsc::UnboundedSender<Job>) -> impl std::future::Future<Output = ()> {
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
}
