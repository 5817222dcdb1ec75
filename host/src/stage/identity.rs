//! Stage: identity. Strips everything the client sent that pretends to be
//! identity or describes its address (unless the peer is a trusted proxy),
//! removes hop-by-hop fields, then sets the contract headers from verified
//! values only.

use http::{HeaderMap, HeaderValue, header};

use crate::config::AuthMode;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::headers::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID, X_USER_ID, X_USER_TIER};

pub fn apply(ctx: &RequestCtx, h: &mut HeaderMap) -> Result<(), GatewayError> {
    let route = ctx.route()?;
    let trusted = ctx.peer.trusted;
    // Strip first: hop-by-hop, whatever `Connection:` names, forged identity.
    headers::strip_request(h, trusted);
    if !route.forward_token {
        h.remove(header::AUTHORIZATION);
    }

    // Then set, from verified values only (room for them all at once).
    h.reserve(8);
    if let Some(id) = ctx.identity.as_ref().filter(|_| route.auth != AuthMode::Public) {
        h.insert(X_USER_ID, id.sub_header.clone());
        if let Some(tier) = &id.tier_header {
            h.insert(X_USER_TIER, tier.clone());
        }
    }
    // `insert` replaces every client copy.
    h.insert(X_REQUEST_ID, ctx.request_id.clone());
    let peer = &ctx.peer.forwarded_for;
    let chain = match trusted.then(|| joined(h, &X_FORWARDED_FOR)).flatten() {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.to_str().unwrap_or_default())).unwrap_or_else(|_| peer.clone()),
        None => peer.clone(),
    };
    h.insert(X_FORWARDED_FOR, chain);
    if !(trusted && h.contains_key(X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !(trusted && h.contains_key(X_FORWARDED_HOST)) {
        match &ctx.host {
            Some(host) => h.insert(X_FORWARDED_HOST, host.clone()),
            None => h.remove(X_FORWARDED_HOST),
        };
    }
    Ok(())
}

/// All values of a (possibly repeated) header, comma-joined.
fn joined(h: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let parts: Vec<&str> = h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}
