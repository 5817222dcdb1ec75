//! The immutable routing state a request runs against, and how it is built:
//! once at start (`load_snapshot`) and again on every reload (`rebuild`),
//! which reuses what did not change and never lets a bad file replace a
//! working one. A request keeps the `Snapshot` it started with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use crate::config::{AuthMode, Config, ConfigError, Upstream, load_routes};
use crate::router::Router;
use crate::wasm::load::{hex, load_dir};
use crate::wasm::plugin::Change;
use crate::wasm::{LoadedPlugin, PluginSet, Runtime};

/// Everything request handling reads that a reload may replace.
#[derive(Default)]
pub struct Snapshot {
    pub router: Arc<Router>,
    /// Every service named by a route file, with its upstream.
    pub services: Arc<HashMap<String, Arc<Upstream>>>,
    /// Every plugin name: the version that serves, and any refused newer file.
    pub plugins: Arc<PluginSet>,
    /// Content hash of each route file behind `router`.
    route_files: Arc<BTreeMap<PathBuf, String>>,
    /// Route files that were refused (their hashes) and why: not retried
    /// until one of them changes again.
    routes_refused: Option<Arc<(BTreeMap<PathBuf, String>, String)>>,
}

/// The snapshot new requests run on: read by the request path, swapped
/// whole by the reloader; each holds a clone (they share one).
#[derive(Clone)]
pub struct Live(Arc<ArcSwap<Snapshot>>);

impl Live {
    pub fn new(snapshot: Snapshot) -> Live {
        Live(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The snapshot now; a request holds it to its end.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Makes `snapshot` the one new requests see. Requests in flight keep
    /// theirs; the old one is dropped when the last of them ends.
    pub fn swap(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

impl Snapshot {
    /// This snapshot with another plugin set (routes unchanged).
    pub fn with_plugins(&self, plugins: PluginSet) -> Snapshot {
        Snapshot {
            router: self.router.clone(),
            services: self.services.clone(),
            plugins: Arc::new(plugins),
            route_files: self.route_files.clone(),
            routes_refused: self.routes_refused.clone(),
        }
    }
}

/// What loading found that does not stop the gateway from serving.
#[derive(Debug, Default)]
pub struct Report {
    /// Routes that cannot work as configured (missing or broken plugin):
    /// `serve` answers 503 on them, `check` fails.
    pub problems: Vec<ConfigError>,
    /// Worth knowing, not fatal (a setting reads an unset variable).
    pub warnings: Vec<ConfigError>,
}

/// Parsed and checked route files, before plugins are looked at.
struct RouteTable {
    router: Router,
    services: HashMap<String, Arc<Upstream>>,
    files: BTreeMap<PathBuf, String>,
    warnings: Vec<ConfigError>,
}

/// Loads and checks the route files and the plugins for `config` (shared by
/// `serve` and `check`). Hard errors (bad TOML, duplicate prefixes) fail;
/// the rest is in the `Report`. Blocking (it compiles): `handle` runs each
/// plugin's trial instantiation. With `fast` (`serve`) and a tiered
/// runtime, a plugin not in the compile cache gets baseline code, so a cold
/// start is not held up by optimizing large components; `check` compiles
/// what `serve` will end up running.
pub fn load_snapshot(config: &Config, runtime: &Runtime, handle: &Handle, fast: bool) -> Result<(Snapshot, Report), ConfigError> {
    let table = load_route_table(config, runtime, route_digest(&config.server.routes_dir))?;
    let (plugins, _) = load_dir(runtime, &config.server.plugins_dir, &PluginSet::default(), &|_| false, handle, fast);
    let mut report = Report {
        problems: Vec::new(),
        warnings: table.warnings,
    };
    for r in table.router.routes() {
        let Some(p) = &r.plugin else { continue };
        if let Err(why) = plugins.get(&p.name) {
            let msg = format!("route {}: {why}; it answers 503 until that is fixed", r.prefix);
            report.problems.push(ConfigError::new(&r.file, Some(r.line), msg));
        }
    }
    let snapshot = Snapshot {
        router: Arc::new(table.router),
        services: Arc::new(table.services),
        plugins: Arc::new(plugins),
        route_files: Arc::new(table.files),
        routes_refused: None,
    };
    Ok((snapshot, report))
}

/// The result of rebuilding a snapshot from the files on disk.
#[derive(Default)]
pub struct Rebuilt {
    /// The snapshot to swap in; `None` when nothing differs from the current one.
    pub snapshot: Option<Snapshot>,
    /// What now serves differently (new plugin versions, new routes, removals).
    pub changes: Vec<String>,
    /// What was refused (the previous version of it keeps serving).
    pub errors: Vec<String>,
    /// Which files were refused: `<name>.wasm`, or `routes` for the route files.
    pub refused: Vec<String>,
    /// Not fatal, worth a line in the log.
    pub warnings: Vec<String>,
    /// Newly loaded plugins serving baseline code, to optimize next.
    pub to_optimize: Vec<Arc<LoadedPlugin>>,
}

/// Builds the next snapshot from the files on disk, starting from `prev`:
/// unchanged plugins are reused as they are, changed ones compiled and
/// checked, route files re-read when they changed. Anything refused leaves
/// its previous version in place: the routes as a whole (a bad file, or a
/// route naming a plugin that is not loaded), or one plugin.
pub fn rebuild(config: &Config, runtime: &Runtime, prev: &Snapshot, handle: &Handle) -> Rebuilt {
    let mut out = Rebuilt::default();
    let routes_dir = &config.server.routes_dir;
    let digest = route_digest(routes_dir);
    let already_refused = prev.routes_refused.as_ref().is_some_and(|r| r.0 == digest);
    let mut routes_refused = prev.routes_refused.clone().filter(|_| already_refused);
    let mut candidate = None;
    if digest != *prev.route_files && !already_refused {
        match load_route_table(config, runtime, digest.clone()) {
            Ok(table) => candidate = Some(table),
            Err(e) => {
                let why = format!("routes refused, the previous routes keep serving: {e}");
                routes_refused = Some(Arc::new((digest.clone(), why.clone())));
                out.errors.push(why);
                out.refused.push("routes".into());
            }
        }
    }

    let in_use = |name: &str| uses(&prev.router, name) || candidate.as_ref().is_some_and(|t: &RouteTable| uses(&t.router, name));
    let (mut plugins, plugin_changes) = load_dir(runtime, &config.server.plugins_dir, &prev.plugins, &in_use, handle, true);

    // New routes must not point at a plugin that cannot serve, unless that
    // very route already did (it answers 503, as it did at start).
    if let Some(table) = &candidate {
        let broken = table.router.routes().iter().find_map(|r| {
            let p = r.plugin.as_ref()?;
            let why = plugins.get(&p.name).err()?;
            let existed = prev
                .router
                .routes()
                .iter()
                .any(|o| o.prefix == r.prefix && o.plugin.as_ref().is_some_and(|q| q.name == p.name));
            (!existed).then(|| format!("{}: route {}: {why}", r.source(), r.prefix))
        });
        if let Some(why) = broken {
            let why = format!("routes refused, the previous routes keep serving: {why}");
            routes_refused = Some(Arc::new((digest.clone(), why.clone())));
            out.errors.push(why);
            out.refused.push("routes".into());
            candidate = None;
        }
    }

    let mut changed = routes_refused.as_ref().map(|r| &r.1) != prev.routes_refused.as_ref().map(|r| &r.1);
    let mut loaded = Vec::new();
    for change in plugin_changes {
        changed = true;
        if let Change::Loaded { name, .. } = &change {
            loaded.push(name.clone());
        }
        match change {
            Change::Refused { ref name, .. } | Change::Retained { ref name } => {
                out.refused.push(format!("{name}.wasm"));
                out.errors.push(change.to_string());
            }
            _ => out.changes.push(change.to_string()),
        }
    }

    let (router, services, route_files) = match candidate {
        Some(table) => {
            changed = true;
            out.changes.push(describe_route_change(&prev.router, &table.router));
            out.warnings.extend(table.warnings.iter().map(ToString::to_string));
            (Arc::new(table.router), Arc::new(table.services), Arc::new(table.files))
        }
        None => (prev.router.clone(), prev.services.clone(), prev.route_files.clone()),
    };
    // A removed plugin file stays only while the routes that serve use it.
    let before = plugins.files.len();
    plugins.files.retain(|name, entry| {
        let keep = !entry.removed || uses(&router, name);
        if !keep {
            out.changes.push(format!("{name}.wasm: removed (no route uses it any more)"));
        }
        keep
    });
    changed |= plugins.files.len() != before;

    // What this rebuild loaded with baseline code gets its optimized build next.
    out.to_optimize = loaded
        .iter()
        .filter_map(|name| plugins.files.get(name)?.serving.clone())
        .filter(|p| p.pending_optimization.is_some())
        .collect();
    if changed {
        out.snapshot = Some(Snapshot {
            router,
            services,
            plugins: Arc::new(plugins),
            route_files,
            routes_refused,
        });
    }
    out
}

fn uses(router: &Router, plugin: &str) -> bool {
    router.routes().iter().any(|r| r.plugin.as_ref().is_some_and(|p| p.name == plugin))
}

/// "routes: 11 (added /a; removed /b)".
fn describe_route_change(old: &Router, new: &Router) -> String {
    let prefixes = |r: &Router| {
        r.routes()
            .iter()
            .map(|r| r.prefix.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let (old_set, new_set) = (prefixes(old), prefixes(new));
    let added: Vec<_> = new_set.difference(&old_set).map(String::as_str).collect();
    let removed: Vec<_> = old_set.difference(&new_set).map(String::as_str).collect();
    let mut text = format!("routes reloaded: {} routes", new.routes().len());
    if !added.is_empty() {
        text.push_str(&format!("; added {}", added.join(", ")));
    }
    if !removed.is_empty() {
        text.push_str(&format!("; removed {}", removed.join(", ")));
    }
    text
}

/// The content hash of every `*.toml` in the routes folder.
fn route_digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| {
            let text = std::fs::read(&p).ok()?;
            Some((p, hex(&Sha256::digest(&text))))
        })
        .collect()
}

/// Reads the route files and checks them on their own (no plugins yet);
/// `files` is their content hash, taken just before.
fn load_route_table(config: &Config, runtime: &Runtime, files: BTreeMap<PathBuf, String>) -> Result<RouteTable, ConfigError> {
    let routes = load_routes(&config.server.routes_dir, config.server.max_body)?;
    if !config.auth.has_keys()
        && let Some(r) = routes.iter().find(|r| r.auth != AuthMode::Public)
    {
        let msg = format!(
            "route {} needs JWT verification but no key is configured: set GATEHOUSE_JWT_SECRET, auth.keys or auth.jwks",
            r.prefix
        );
        return Err(ConfigError::new(&r.file, Some(r.line), msg));
    }
    let mut services: HashMap<String, Arc<Upstream>> = HashMap::new();
    for r in &routes {
        match services.get(&*r.service) {
            Some(up) if **up != *r.upstream => {
                let msg = format!("service {:?} is defined with two different upstreams", &*r.service);
                return Err(ConfigError::new(&r.file, None, msg));
            }
            Some(_) => {}
            None => {
                services.insert(r.service.to_string(), r.upstream.clone());
            }
        }
    }
    let mut warnings = Vec::new();
    for r in &routes {
        let Some(p) = &r.plugin else { continue };
        let at = |msg: String| ConfigError::new(&r.file, Some(r.line), msg);
        for (key, var) in &p.unset_vars {
            warnings.push(at(format!(
                "route {}: setting {key:?} reads ${{{var}}}, which is not set; the plugin sees no such setting",
                r.prefix
            )));
        }
        for name in &p.calls {
            if !services.contains_key(name) {
                return Err(at(format!(
                    "route {}: `calls` names {name:?}, which no route file defines",
                    r.prefix
                )));
            }
        }
        if p.memory.is_some_and(|m| m > runtime.limits.memory) {
            return Err(at(format!(
                "route {}: plugin_memory is above plugins.memory ({} bytes), the pooled slot size",
                r.prefix, runtime.limits.memory
            )));
        }
    }
    Ok(RouteTable {
        router: Router::new(routes),
        services,
        files,
        warnings,
    })
}
