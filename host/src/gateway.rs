//! `Gateway`: everything a request needs, built once at start and shared.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::auth::Verifier;
use crate::client::UpstreamClient;
use crate::config::{AuthMode, Config, ConfigError, Upstream, load_routes};
use crate::router::Router;
use crate::snapshot::Snapshot;
use crate::wasm::Runtime;

/// Request limits enforced by the admit stage.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// The gateway: configuration, routing snapshot, verifier and upstream pool.
pub struct Gateway {
    pub config: Config,
    pub limits: Limits,
    pub verifier: Arc<Verifier>,
    pub upstream: UpstreamClient,
    /// The WebAssembly engine and linker, shared by every plugin version.
    pub runtime: Arc<Runtime>,
    snapshot: ArcSwap<Snapshot>,
    trusted: Vec<IpNet>,
    draining: AtomicBool,
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

/// Loads and checks the route files and the plugins for `config` (shared by
/// `serve` and `check`). Hard errors (bad TOML, duplicate prefixes) fail;
/// the rest is in the `Report`.
pub fn load_snapshot(config: &Config, runtime: &Runtime) -> Result<(Snapshot, Report), ConfigError> {
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
    let plugins = crate::wasm::load_dir(runtime, &config.server.plugins_dir);
    let mut report = Report::default();
    for r in &routes {
        let Some(p) = &r.plugin else { continue };
        let at = |msg: String| ConfigError::new(&r.file, Some(r.line), msg);
        if let Err(why) = plugins.get(&p.name) {
            report
                .problems
                .push(at(format!("route {}: {why}; it answers 503 until that is fixed", r.prefix)));
        }
        for (key, var) in &p.unset_vars {
            report.warnings.push(at(format!(
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
    let snapshot = Snapshot {
        router: Router::new(routes),
        services: Arc::new(services),
        plugins: Arc::new(plugins),
    };
    Ok((snapshot, report))
}

impl Gateway {
    /// Builds the gateway from checked configuration.
    pub async fn new(config: Config, runtime: Arc<Runtime>, snapshot: Snapshot) -> Result<Arc<Gateway>, String> {
        let verifier = Verifier::new(&config.auth).await?;
        let limits = Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_headers: config.server.max_headers,
        };
        Ok(Arc::new(Gateway {
            limits,
            verifier,
            upstream: UpstreamClient::new(&config.upstream),
            runtime,
            snapshot: ArcSwap::from_pointee(snapshot),
            trusted: config.server.trusted_proxies.clone(),
            draining: AtomicBool::new(false),
            config,
        }))
    }

    /// The routing snapshot now; held for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// True when `ip` is a configured trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Marks the gateway as shutting down (`/readyz` turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
