//! `Gateway`: everything a request needs, built once at start and shared.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::auth::Verifier;
use crate::client::UpstreamClient;
use crate::config::{AuthMode, Config, ConfigError, load_routes};
use crate::router::Router;
use crate::snapshot::Snapshot;

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
    snapshot: ArcSwap<Snapshot>,
    trusted: Vec<IpNet>,
    draining: AtomicBool,
}

/// Loads and checks the route files for `config` (shared by `serve` and `check`).
pub fn load_snapshot(config: &Config) -> Result<Snapshot, ConfigError> {
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
    Ok(Snapshot {
        router: Router::new(routes),
    })
}

impl Gateway {
    /// Builds the gateway from checked configuration.
    pub async fn new(config: Config, snapshot: Snapshot) -> Result<Arc<Gateway>, String> {
        let verifier = Verifier::new(&config.auth).await?;
        let limits = Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_headers: config.server.max_headers,
        };
        Ok(Arc::new(Gateway {
            limits,
            verifier,
            upstream: UpstreamClient::new(&config.upstream),
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
