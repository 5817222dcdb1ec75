//! Per-request state shared by the stages, and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method};

use crate::auth::Identity;
use crate::config::Route;
use crate::error::{GatewayError, Source};

/// What the stages know about the request in hand.
pub struct RequestCtx {
    pub started: Instant,
    pub peer: SocketAddr,
    /// The peer is in `trusted_proxies`: its forwarding headers are kept.
    pub trusted_peer: bool,
    /// Checked to be visible ASCII, so `request_id()` never fails.
    pub request_id: HeaderValue,
    pub method: Method,
    /// The path (no query): as received, then normalized by the route stage.
    pub path: String,
    /// Original `Host` (HTTP/1) or `:authority` (HTTP/2).
    pub host: Option<HeaderValue>,
    pub route: Option<Arc<Route>>,
    pub identity: Option<Arc<Identity>>,
    /// The plugin that handled the request, for the log line.
    pub plugin: Option<Arc<str>>,
    /// Why the request failed, for the log line.
    pub error: Option<(Source, String)>,
}

impl RequestCtx {
    pub fn new(peer: SocketAddr, trusted_peer: bool, method: Method, raw_path: &str) -> Self {
        RequestCtx {
            started: Instant::now(),
            peer,
            trusted_peer,
            request_id: HeaderValue::from_static(""),
            method,
            path: raw_path.to_string(),
            host: None,
            route: None,
            identity: None,
            plugin: None,
            error: None,
        }
    }

    /// The request id as text.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// The matched route. Stages after the route stage may rely on it.
    pub fn route(&self) -> Result<&Arc<Route>, GatewayError> {
        self.route
            .as_ref()
            .ok_or_else(|| GatewayError::Internal("stage ran before routing".into()))
    }

    /// Records a failure for the log line.
    pub fn fail(&mut self, err: &GatewayError) {
        self.error = Some((err.source(), err.detail()));
    }
}
