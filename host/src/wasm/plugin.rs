//! What a loaded plugin is: its compiled, pre-linked component and
//! counters, the entry of each plugin name (the version that serves and any
//! refused newer file), and what a load changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::time::SystemTime;

use super::bindings::PluginPre;
use super::engine::Epoch;

/// Per-plugin-version counters, shown on `/admin/plugins` and `/metrics`.
#[derive(Debug)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub memory_limit: AtomicU64,
    pub busy: AtomicU64,
    pub bad_results: AtomicU64,
    /// Calls running now.
    pub in_use: AtomicI64,
    /// Wall-clock time of each call, instantiation included.
    pub duration: Histogram,
    /// The largest linear memory each call had, in bytes.
    pub peak_memory: Histogram,
    /// How long a call's code runs (its waits left out), in ns: a moving
    /// average (1/8 per call) deciding where the next calls run.
    pub run_ns: AtomicU64,
}

impl Default for PluginStats {
    fn default() -> Self {
        PluginStats {
            calls: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            memory_limit: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            bad_results: AtomicU64::new(0),
            in_use: AtomicI64::new(0),
            duration: crate::metrics::latency_histogram(),
            // 64 KiB (one wasm page) to 4 GiB, ×4.
            peak_memory: Histogram::new(exponential_buckets(65_536.0, 4.0, 9)),
            run_ns: AtomicU64::new(0),
        }
    }
}

impl PluginStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Folds one call's run time into `run_ns`. Racing calls may lose an
    /// update: it is an estimate.
    pub fn ran(&self, took: std::time::Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let old = self.run_ns.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        self.run_ns.store(new, Ordering::Relaxed);
    }

    /// Whether calls run longer than `slow` on average.
    pub fn is_slow(&self, slow: std::time::Duration) -> bool {
        u128::from(self.run_ns.load(Ordering::Relaxed)) > slow.as_nanos()
    }
}

/// A component ready to instantiate.
pub struct LoadedPlugin {
    pub name: Arc<str>,
    pub sha256: String,
    /// When this content first served (an optimized rebuild keeps it).
    pub loaded_at: SystemTime,
    /// Which world, pre-linked.
    pub pre: PluginPre,
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
