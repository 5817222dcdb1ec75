//! `Gateway`: everything a request needs, built once at start and shared;
//! the routing snapshot inside it is swapped whole by reloads.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::auth::Verifier;
use crate::client::UpstreamClient;
use crate::config::Config;
use crate::reload::Reloads;
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
    /// Reload requests and the record of recent attempts.
    pub reloads: Reloads,
    trusted: Vec<IpNet>,
    draining: AtomicBool,
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
            reloads: Reloads::new(),
            trusted: config.server.trusted_proxies.clone(),
            draining: AtomicBool::new(false),
            config,
        }))
    }

    /// The routing snapshot now; held for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` the one new requests see. Requests in flight keep
    /// theirs; the old one is dropped when the last of them ends.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
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
