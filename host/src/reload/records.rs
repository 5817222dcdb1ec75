//! What the reloader is asked and what it did: the queue's jobs, the
//! attempts `GET /admin/reloads` shows, and the counts `/metrics` reports.
//! `Reloads` is the handle the admin listener holds.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::wasm::LoadedPlugin;

/// Attempts kept for `GET /admin/reloads`.
const HISTORY: usize = 50;

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
pub(super) enum Job {
    Reload(Ask),
    /// The optimized build of a plugin that serves baseline code.
    Optimized(Box<LoadedPlugin>, Duration),
}

/// A request for a reload.
pub(super) struct Ask {
    pub trigger: Trigger,
    /// The file an event was about.
    pub path: Option<PathBuf>,
    /// False while the file may still be being written.
    pub settled: bool,
    pub done: Option<oneshot::Sender<Arc<Attempt>>>,
}

impl Ask {
    /// A watcher's event about `path`.
    pub fn watched(path: PathBuf, settled: bool) -> Ask {
        Ask {
            trigger: Trigger::Watch,
            path: Some(path),
            settled,
            done: None,
        }
    }
}

/// The reload queue and the record of recent attempts: held by the
/// reloader, which serves the queue, and by the admin listener, which asks.
pub struct Reloads {
    pub(super) tx: mpsc::UnboundedSender<Job>,
    pub(super) rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
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

    pub(super) fn record(&self, attempt: Arc<Attempt>) {
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
