//! Stage: websocket. A request that asks to switch to WebSocket (RFC 6455)
//! is checked as a handshake before anything else happens to it; on a route
//! with `websocket = true` it goes on like any request (authentication, the
//! identity contract, the route's plugin) and then to the service with its
//! handshake fields; the gateway tunnels bytes only when the service
//! switches genuinely.
//!
//! Tokens: `Authorization: Bearer` first; then, for browsers (which cannot
//! set headers), a subprotocol offer `gatehouse.bearer.<jwt>`; then
//! `?access_token=<jwt>`. A token taken from the offer or the query is
//! removed from both before the request goes anywhere: the service, the
//! plugin and the access log never see it, and the `101` never echoes it.

use std::sync::Arc;

use base64::Engine;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;

use crate::auth::AuthError;
use crate::body::GatewayBody;
use crate::client::{UpstreamClient, UpstreamUpgrade};
use crate::config::WebSocketConfig;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::tunnel::{self, Tunnel, Tunnels};

/// A subprotocol offer that carries a token: `gatehouse.bearer.<jwt>`.
pub const PROTOCOL_TOKEN_PREFIX: &str = "gatehouse.bearer.";
/// The query parameter that carries a token, as a last resort.
pub const QUERY_TOKEN: &str = "access_token";

/// A checked handshake, and the client's side of the switch.
pub struct Handshake {
    key: HeaderValue,
    /// The subprotocols offered, without a token offer, as the service sees
    /// them.
    offered: Vec<String>,
    /// A token taken from the offer or the query.
    token: Option<String>,
    on_upgrade: OnUpgrade,
}

impl Handshake {
    /// A token from the subprotocol offer or the query, for the
    /// authenticate stage (which prefers `Authorization`).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Puts the handshake fields on a request bound for the service: after
    /// the identity stage removed `Upgrade` and `Connection` (hop-by-hop),
    /// and whatever a plugin did to them.
    pub fn restore(&self, h: &mut HeaderMap) {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_KEY, self.key.clone());
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        match offer_value(&self.offered) {
            Some(v) => h.insert(header::SEC_WEBSOCKET_PROTOCOL, v),
            None => h.remove(header::SEC_WEBSOCKET_PROTOCOL),
        };
    }
}

fn offer_value(offered: &[String]) -> Option<HeaderValue> {
    (!offered.is_empty()).then(|| HeaderValue::from_str(&offered.join(", ")).expect("offers are tokens"))
}

/// Comma-separated elements of every `name` field, trimmed, empty ones left
/// out; `None` when a value is not text.
fn elements<'a>(h: &'a HeaderMap, name: &header::HeaderName) -> Option<Vec<&'a str>> {
    let mut out = Vec::new();
    for value in h.get_all(name) {
        out.extend(value.to_str().ok()?.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    Some(out)
}

fn has_element(h: &HeaderMap, name: &header::HeaderName, wanted: &str) -> bool {
    elements(h, name).is_some_and(|e| e.iter().any(|x| x.eq_ignore_ascii_case(wanted)))
}

/// Looks at the request's `Upgrade`: `None` for a request that does not ask
/// for WebSocket (any other `Upgrade` is hop-by-hop and goes no further);
/// else a checked handshake, the token removed from the offer and query, or
/// the 4xx/503 that explains what is wrong.
pub fn accept<B>(ctx: &RequestCtx, req: &mut Request<B>, draining: bool) -> Result<Option<Handshake>, GatewayError> {
    // Nearly every request has no `Upgrade`: one lookup says so.
    if !req.headers().contains_key(header::UPGRADE) || !has_element(req.headers(), &header::UPGRADE, "websocket") {
        return Ok(None);
    }
    if !ctx.route()?.websocket {
        return Err(GatewayError::bad_request("this route does not accept WebSocket upgrades"));
    }
    let h = req.headers();
    if req.version() != Version::HTTP_11 {
        return Err(GatewayError::bad_request("a WebSocket handshake is an HTTP/1.1 request"));
    }
    if req.method() != Method::GET {
        return Err(GatewayError::bad_request("a WebSocket handshake is a GET"));
    }
    if !has_element(h, &header::CONNECTION, "upgrade") {
        return Err(GatewayError::bad_request("a WebSocket handshake needs Connection: Upgrade"));
    }
    let mut versions = h.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    if !matches!((versions.next(), versions.next()), (Some(v), None) if v == "13") {
        return Err(GatewayError::WebSocketVersion);
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if is_key(k.as_bytes()) => k.clone(),
        _ => return Err(GatewayError::bad_request("Sec-WebSocket-Key must be 16 bytes in base64, sent once")),
    };
    let has_body = h.contains_key(header::TRANSFER_ENCODING) || h.get_all(header::CONTENT_LENGTH).iter().any(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(GatewayError::bad_request("a WebSocket handshake has no body"));
    }
    if draining {
        return Err(GatewayError::ShuttingDown);
    }

    // The token places a browser can reach, each removed from the request.
    let protocols =
        elements(h, &header::SEC_WEBSOCKET_PROTOCOL).ok_or_else(|| GatewayError::bad_request("Sec-WebSocket-Protocol must be text"))?;
    let (tokens, offered): (Vec<&str>, Vec<&str>) = protocols.into_iter().partition(|p| p.starts_with(PROTOCOL_TOKEN_PREFIX));
    let offered: Vec<String> = offered.into_iter().map(String::from).collect();
    let from_offer = match tokens.as_slice() {
        [] => None,
        [one] => Some(one[PROTOCOL_TOKEN_PREFIX.len()..].to_string()),
        _ => return Err(AuthError::BadScheme.into()),
    };
    if from_offer.is_some() && offered.is_empty() {
        return Err(GatewayError::bad_request(
            "offer a subprotocol beside gatehouse.bearer.<token>: a browser closes a socket whose server selects none of the subprotocols it offered",
        ));
    }
    let from_query = take_query_token(req)?;
    let h = req.headers_mut();
    match offer_value(&offered) {
        Some(v) => h.insert(header::SEC_WEBSOCKET_PROTOCOL, v),
        None => h.remove(header::SEC_WEBSOCKET_PROTOCOL),
    };
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or_else(|| GatewayError::bad_request("this connection cannot switch protocols"))?;
    Ok(Some(Handshake {
        key,
        offered,
        token: from_offer.or(from_query),
        on_upgrade,
    }))
}

/// A `Sec-WebSocket-Key`: base64 of 16 bytes.
fn is_key(key: &[u8]) -> bool {
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|k| k.len() == 16)
}

/// Removes every `access_token` parameter from the query (the others stay
/// byte for byte) and returns its value, percent-decoded; more than one is
/// a malformed credential.
fn take_query_token<B>(req: &mut Request<B>) -> Result<Option<String>, GatewayError> {
    let Some(query) = req.uri().query() else { return Ok(None) };
    let is_token = |pair: &&str| pair.split('=').next() == Some(QUERY_TOKEN);
    let mut tokens = query.split('&').filter(is_token);
    let token = match (tokens.next(), tokens.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => return Err(AuthError::BadScheme.into()),
        (Some(pair), None) => pair.split_once('=').map_or("", |(_, v)| v),
    };
    let token = percent_encoding::percent_decode_str(token)
        .decode_utf8()
        .map_err(|_| AuthError::BadScheme)?
        .into_owned();
    let rest: Vec<&str> = query.split('&').filter(|p| !is_token(p)).collect();
    let target = match rest.is_empty() {
        true => req.uri().path().to_string(),
        false => format!("{}?{}", req.uri().path(), rest.join("&")),
    };
    let pq = PathAndQuery::try_from(target).map_err(|_| GatewayError::bad_request("invalid request target"))?;
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| GatewayError::bad_request("invalid request target"))?;
    Ok(Some(token))
}

/// Sends the handshake to the route's service. A genuine switch (101 with
/// `Upgrade: websocket`, the accept value of the client's key, and a
/// subprotocol the client offered, if any) becomes the client's 101 and a
/// tunnel; anything else the service answers goes to the client as an
/// ordinary response, and the client's connection stays HTTP.
pub async fn open<B: http_body::Body>(
    ctx: &RequestCtx,
    req: Request<B>,
    hs: Handshake,
    up: &UpstreamClient,
    tunnels: &Arc<Tunnels>,
    limits: &WebSocketConfig,
    metrics: &Metrics,
) -> Result<Response<GatewayBody>, GatewayError> {
    let route = ctx.route()?.clone();
    let (mut parts, body) = req.into_parts();
    // Only a plugin's forward can differ from the checked handshake.
    if parts.method != Method::GET || !body.is_end_stream() {
        return Err(GatewayError::PluginFailed(
            "invalid forward: a WebSocket handshake is forwarded as a GET without a body".into(),
        ));
    }
    hs.restore(&mut parts.headers);
    crate::outbound::to_service(&mut parts, ctx.host.as_ref(), &route.upstream);
    let sent = std::pin::pin!(up.request(&route.upstream, Request::from_parts(parts, crate::body::empty())));
    let resp = match tokio::time::timeout(up.first_byte_timeout, sent).await {
        Err(_) => return Err(super::upstream::no_answer(metrics, &route, up)),
        Ok(Err(e)) => return Err(super::upstream::failed(metrics, &route, &e)),
        Ok(Ok(resp)) => resp,
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp.map(|body| crate::body::IdleBody::new(body, up.idle_timeout).boxed_unsync()));
    }
    let (parts, _) = resp.into_parts();
    let taken = parts.extensions.get::<UpstreamUpgrade>().and_then(UpstreamUpgrade::take);
    let Some((service, early)) = taken else {
        return Err(GatewayError::Internal("a 101 without its connection".into()));
    };
    if let Err(why) = genuine(&parts.headers, &hs) {
        super::upstream::count_error(metrics, &route, "invalid_response");
        return Err(GatewayError::UpstreamBadResponse(format!(
            "{}: not a WebSocket switch: {why}",
            route.upstream.authority
        )));
    }
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = parts.headers;
    super::response::switched(resp.headers_mut(), "websocket");

    let tunnel = Tunnel {
        entry: tunnels.enter(&route.prefix),
        peer: ctx.peer.clone(),
        request_id: ctx.request_id().to_string(),
        limits: limits.clone(),
    };
    tokio::spawn(tunnel::run(tunnel, hs.on_upgrade, service, early));
    Ok(resp)
}

/// Why a 101 is not the switch the client asked for, if it is not.
fn genuine(h: &HeaderMap, hs: &Handshake) -> Result<(), String> {
    if !matches!(elements(h, &header::UPGRADE).as_deref(), Some([one]) if one.eq_ignore_ascii_case("websocket")) {
        return Err("Upgrade is not websocket".into());
    }
    let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(hs.key.as_bytes());
    let mut accepts = h.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(a), None) if a.as_bytes() == expected.as_bytes() => {}
        (None, _) => return Err("no Sec-WebSocket-Accept".into()),
        _ => return Err("Sec-WebSocket-Accept does not match the client's key".into()),
    }
    match elements(h, &header::SEC_WEBSOCKET_PROTOCOL).as_deref() {
        None => Err("Sec-WebSocket-Protocol is not text".into()),
        Some([]) => Ok(()),
        Some([one]) if hs.offered.iter().any(|o| o == one) => Ok(()),
        Some(_) => Err("the service selected a subprotocol the client did not offer".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Route;
    use crate::context::Peer;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn ctx(websocket: bool) -> RequestCtx {
        let mut ctx = RequestCtx::new(Arc::new(Peer::new("127.0.0.1:1".parse().unwrap(), false)), Method::GET, "/ws");
        ctx.route = Some(Arc::new(Route::for_test("/ws", "realtime", websocket)));
        ctx
    }

    /// A handshake to `target` with extra fields, as hyper hands it over.
    fn handshake(target: &str, extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(target)
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY);
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        let on = hyper::upgrade::on(&mut req);
        req.extensions_mut().insert(on);
        req
    }

    fn refused(req: &mut Request<()>, websocket: bool, draining: bool) -> GatewayError {
        match accept(&ctx(websocket), req, draining) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn only_websocket_is_a_handshake() {
        let mut h2c = Request::get("/ws")
            .header("connection", "Upgrade")
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert!(accept(&ctx(true), &mut h2c, false).unwrap().is_none());
        let mut plain = Request::get("/ws").body(()).unwrap();
        assert!(accept(&ctx(true), &mut plain, false).unwrap().is_none());
        // Case and lists are read as RFC 9110 says.
        let mut listed = handshake("/ws", &[]);
        listed.headers_mut().insert("upgrade", "foo/2, WebSocket".parse().unwrap());
        assert!(accept(&ctx(true), &mut listed, false).unwrap().is_some());
    }

    #[test]
    fn refusals_say_why() {
        let e = refused(&mut handshake("/ws", &[]), false, false);
        assert!(e.to_string().contains("does not accept WebSocket"), "{e}");
        assert!(matches!(
            refused(&mut handshake("/ws", &[]), true, true),
            GatewayError::ShuttingDown
        ));
        let mut v8 = handshake("/ws", &[]);
        v8.headers_mut().insert("sec-websocket-version", "8".parse().unwrap());
        assert!(matches!(refused(&mut v8, true, false), GatewayError::WebSocketVersion));
        let mut chunked = handshake("/ws", &[("transfer-encoding", "chunked")]);
        assert!(refused(&mut chunked, true, false).to_string().contains("no body"));
        let mut two_offers = handshake("/ws", &[("sec-websocket-protocol", "gatehouse.bearer.a, gatehouse.bearer.b, chat")]);
        assert!(matches!(refused(&mut two_offers, true, false), GatewayError::Unauthorized(_)));
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            let mut bad = handshake("/ws", &[]);
            bad.headers_mut().insert("sec-websocket-key", key.parse().unwrap());
            assert!(refused(&mut bad, true, false).to_string().contains("Sec-WebSocket-Key"), "{key:?}");
        }
    }

    #[test]
    fn a_token_in_the_offer_or_query_is_taken_out_and_the_rest_kept_as_sent() {
        let mut req = handshake(
            "/ws?room=a%20b&access_token=x.y%2Ez&flag&=odd",
            &[
                ("sec-websocket-protocol", "chat"),
                ("sec-websocket-protocol", "gatehouse.bearer.t.u.v, v2.chat"),
            ],
        );
        let hs = accept(&ctx(true), &mut req, false).unwrap().unwrap();
        // The offer wins over the query; both are removed.
        assert_eq!(hs.token(), Some("t.u.v"));
        assert_eq!(req.uri().to_string(), "/ws?room=a%20b&flag&=odd");
        assert_eq!(req.headers()["sec-websocket-protocol"], "chat, v2.chat");
        let mut forwarded = HeaderMap::new();
        hs.restore(&mut forwarded);
        assert_eq!(forwarded["sec-websocket-protocol"], "chat, v2.chat");
        assert_eq!(forwarded["sec-websocket-key"], KEY);
        assert_eq!(forwarded["upgrade"], "websocket");

        let mut req = handshake("/ws?access_token=x.y%2Ez", &[]);
        let hs = accept(&ctx(true), &mut req, false).unwrap().unwrap();
        assert_eq!(hs.token(), Some("x.y.z"));
        assert_eq!(req.uri().to_string(), "/ws");
        assert!(!req.headers().contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn a_switch_is_genuine_only_with_websocket_the_right_accept_and_an_offered_protocol() {
        let mut req = handshake("/ws", &[("sec-websocket-protocol", "chat")]);
        let hs = accept(&ctx(true), &mut req, false).unwrap().unwrap();
        let answer = |fields: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in fields {
                h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            genuine(&h, &hs)
        };
        let accept = ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(answer(&[("upgrade", "websocket"), accept]), Ok(()));
        assert_eq!(
            answer(&[("upgrade", "WebSocket"), accept, ("sec-websocket-protocol", "chat")]),
            Ok(())
        );
        assert!(answer(&[("upgrade", "h2c"), accept]).is_err());
        assert!(answer(&[("upgrade", "websocket, h2c"), accept]).is_err());
        assert!(answer(&[("upgrade", "websocket")]).is_err());
        assert!(answer(&[("upgrade", "websocket"), ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")]).is_err());
        assert!(answer(&[("upgrade", "websocket"), accept, accept]).is_err());
        assert!(answer(&[("upgrade", "websocket"), accept, ("sec-websocket-protocol", "rogue")]).is_err());
        assert!(answer(&[("upgrade", "websocket"), accept, ("sec-websocket-protocol", "chat, chat")]).is_err());
    }
}
