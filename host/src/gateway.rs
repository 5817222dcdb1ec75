//! `Gateway`: everything a request needs, built once at start and shared,
//! and `Gateway::handle`: the stages, called in order, and nothing else.
//!
//! ```text
//! request_id → admit → route → authenticate → identity → component → upstream
//!                                   (any stage may end it with an error)
//! → echo request id → log
//! ```
//!
//! The routing snapshot it reads ([`Live`]) is swapped whole by the
//! reloader, which holds the same handle and nothing else of the gateway.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::IpNet;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::Verifier;
use crate::body::GatewayBody;
use crate::client::UpstreamClient;
use crate::config::Config;
use crate::context::{Peer, RequestCtx};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::snapshot::{Live, Snapshot};
use crate::stage;
use crate::stage::admit::Limits;
use crate::stage::component::Handled;
use crate::tunnel::Tunnels;
use crate::wasm::Runtime;

/// The gateway: configuration, routing snapshot, verifier and upstream pool.
pub struct Gateway {
    pub config: Config,
    pub limits: Limits,
    pub verifier: Arc<Verifier>,
    pub upstream: UpstreamClient,
    /// The WebAssembly engine and linker, shared by every plugin version.
    pub runtime: Arc<Runtime>,
    /// Open WebSocket tunnels.
    pub tunnels: Arc<Tunnels>,
    /// What requests are counted in (`/metrics`).
    pub metrics: Metrics,
    live: Live,
    trusted: Vec<IpNet>,
    draining: AtomicBool,
}

impl Gateway {
    /// Builds the gateway from checked configuration.
    pub async fn new(config: Config, runtime: Arc<Runtime>, live: Live) -> Result<Arc<Gateway>, String> {
        let verifier = Verifier::new(&config.auth).await?;
        let limits = Limits {
            max_header_bytes: config.server.max_header_bytes,
            max_headers: config.server.max_headers,
        };
        Ok(Arc::new(Gateway {
            limits,
            verifier,
            upstream: UpstreamClient::dropping(&config.upstream, stage::response::drops),
            runtime,
            tunnels: Arc::default(),
            metrics: Metrics::default(),
            live,
            trusted: config.server.trusted_proxies.clone(),
            draining: AtomicBool::new(false),
            config,
        }))
    }

    /// The routing snapshot now; held for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load()
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

impl Gateway {
    /// Handles one request from a client connection. Never fails: every error
    /// becomes a response carrying the request id.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: Arc<Peer>) -> Response<GatewayBody> {
        let mut ctx = RequestCtx::new(peer, req.method().clone(), req.uri().path());
        stage::request_id::assign(&mut ctx, req.headers());
        stage::trace::assign(&mut ctx, req.headers_mut());
        let snapshot = self.snapshot();
        let mut resp = match self.run(&snapshot, &mut ctx, req).await {
            Ok(resp) => resp,
            Err(err) => {
                ctx.fail(&err);
                err.into_response(ctx.request_id())
            }
        };
        stage::request_id::echo(&ctx, &mut resp);
        let elapsed = ctx.started.elapsed();
        stage::log::record(&ctx, &resp, elapsed);
        self.metrics.record(&ctx, resp.status().as_u16(), elapsed);
        resp
    }

    async fn run(
        &self,
        snapshot: &Snapshot,
        ctx: &mut RequestCtx,
        mut req: Request<Incoming>,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        stage::admit::check(ctx, &req, &self.limits)?;
        stage::route::resolve(ctx, &snapshot.router, &mut req)?;
        let handshake = stage::websocket::accept(ctx, &mut req, self.is_draining())?;
        let fallback = handshake.as_ref().and_then(|hs| hs.token());
        stage::authenticate::run(ctx, req.headers(), fallback, &self.verifier).await?;
        stage::identity::apply(ctx, req.headers_mut())?;
        if let Some(hs) = &handshake {
            hs.restore(req.headers_mut());
        }
        let handled = stage::component::run(ctx, &self.runtime, &self.upstream, snapshot, req).await?;
        if let Some(hs) = handshake {
            let ws = &self.config.websocket;
            return match handled {
                Handled::Native(req) => stage::websocket::open(ctx, req, hs, &self.upstream, &self.tunnels, ws, &self.metrics).await,
                Handled::Forward(req) => stage::websocket::open(ctx, req, hs, &self.upstream, &self.tunnels, ws, &self.metrics).await,
                Handled::Respond(resp) => Ok(resp),
            };
        }
        match handled {
            Handled::Native(req) => stage::upstream::forward(ctx, req, &self.upstream, &self.metrics).await,
            Handled::Forward(req) => stage::upstream::forward(ctx, req, &self.upstream, &self.metrics).await,
            Handled::Respond(resp) => Ok(resp),
        }
    }
}
