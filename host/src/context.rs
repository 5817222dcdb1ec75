//! Per-request state shared by the stages, and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::Identity;
use crate::config::Route;
use crate::error::{GatewayError, Source};

/// The client end of a connection: worked out once per connection, not per
/// request.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// In `trusted_proxies`: its forwarding headers are kept.
    pub trusted: bool,
    /// The address as an `X-Forwarded-For` element (an IPv4-mapped IPv6
    /// address reads as IPv4).
    pub forwarded_for: HeaderValue,
    /// The connection's place under `server.max_connections`, given back
    /// when the last holder (the connection, or its WebSocket tunnel) ends.
    slot: Option<OwnedSemaphorePermit>,
}

impl Peer {
    pub fn new(addr: SocketAddr, trusted: bool) -> Self {
        let text = addr.ip().to_canonical().to_string();
        Peer {
            addr,
            trusted,
            forwarded_for: HeaderValue::from_str(&text).expect("an IP address is a valid header value"),
            slot: None,
        }
    }

    /// The peer, holding its connection's slot.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> Self {
        self.slot = Some(slot);
        self
    }
}

/// What the stages know about the request in hand.
pub struct RequestCtx {
    pub started: Instant,
    pub peer: Arc<Peer>,
    /// Checked to be visible ASCII, so `request_id()` never fails.
    pub request_id: HeaderValue,
    /// The W3C trace id (32 lowercase hex digits), kept or started here.
    pub trace_id: [u8; 32],
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
    /// The failure as a closed-set code, for the log line and the metrics
    /// alike (`GatewayError::reason`), and the 401's reason.
    pub reason: Option<&'static str>,
    pub auth_reason: Option<&'static str>,
}

impl RequestCtx {
    pub fn new(peer: Arc<Peer>, method: Method, raw_path: &str) -> Self {
        RequestCtx {
            started: Instant::now(),
            peer,
            request_id: HeaderValue::from_static(""),
            trace_id: [b'0'; 32],
            method,
            path: raw_path.to_string(),
            host: None,
            route: None,
            identity: None,
            plugin: None,
            error: None,
            reason: None,
            auth_reason: None,
        }
    }

    /// The trace id as text.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
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
        self.reason = Some(err.reason());
        if let GatewayError::Unauthorized(auth) = err {
            self.auth_reason = Some(auth.reason());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_reads_as_its_plain_address() {
        let v4 = Peer::new("192.0.2.7:5000".parse().unwrap(), false);
        assert_eq!(v4.forwarded_for, "192.0.2.7");
        // An IPv4 client on a dual-stack socket is shown as IPv4.
        let mapped = Peer::new("[::ffff:192.0.2.7]:5000".parse().unwrap(), true);
        assert_eq!(mapped.forwarded_for, "192.0.2.7");
        assert!(mapped.trusted);
        let v6 = Peer::new("[2001:db8::1]:5000".parse().unwrap(), false);
        assert_eq!(v6.forwarded_for, "2001:db8::1");
    }
}
