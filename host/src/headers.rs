//! Security-relevant header names and the rules that strip them: the one place
//! that decides what a client may not say about itself.
//!
//! Rule of thumb: strip first, then set. Nothing here reads a header value to
//! decide who the caller is; that is the authenticate stage's job.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Verified user id (JWT `sub`), set only by the gateway.
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// Verified plan tier (JWT `tier`), set only by the gateway.
pub const X_USER_TIER: HeaderName = HeaderName::from_static("x-user-tier");
/// Request correlation id, kept from the client when well formed.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Original `Host` (or HTTP/2 `:authority`).
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Original scheme.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Client address chain.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// W3C Trace Context: the caller's trace and span (`stage::trace`).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context: vendor state, kept only with a valid `traceparent`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// RFC 7239 forwarding header; only kept from trusted proxies.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Common single-address variant; only kept from trusted proxies.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Non-standard but widely sent; hop-by-hop in practice.
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// Non-standard but widely sent; hop-by-hop in practice.
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Prefixes (after lower-casing and mapping `_` to `-`) no client may send.
const IDENTITY_PREFIXES: &[&str] = &["x-user-"];
/// Names that describe the client's address or scheme: trusted only from
/// configured proxies.
const FORWARDING_PREFIXES: &[&str] = &["x-forwarded-"];
const FORWARDING_NAMES: &[&str] = &["forwarded", "x-real-ip"];
/// Request-rewriting overrides some frameworks honour: never from a client.
const OVERRIDE_NAMES: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones.
/// (`Trailer` is end-to-end since RFC 9110: it declares the trailers, and
/// hyper only forwards declared ones.)
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True when `name` (any case) is one of [`HOP_BY_HOP`]. Most names are
/// rejected by their length alone, without comparing any bytes.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(name.len(), 2 | 7 | 10 | 16..=19) && HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// Fields a `Connection:` option must never remove: message framing and the
/// target are ours to decide.
static NEVER_CONNECTION_NAMED: [HeaderName; 2] = [header::HOST, header::CONTENT_LENGTH];

/// True when `name` matches one of `prefixes`/`names`, reading `_` as `-`
/// (so `X_User_ID` is caught like `X-User-ID`) without allocating.
fn matches(name: &str, prefixes: &[&str], names: &[&str]) -> bool {
    let eq = |a: u8, b: u8| a == b || (a == b'_' && b == b'-');
    let starts = |p: &str| name.len() >= p.len() && name.bytes().zip(p.bytes()).all(|(a, b)| eq(a, b));
    prefixes.iter().any(|p| starts(p)) || names.iter().any(|n| n.len() == name.len() && starts(n))
}

/// What a header name is, as far as the identity contract cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Pretends to be verified identity: always dropped.
    Identity,
    /// Describes the client's address/scheme/host: kept only from trusted peers.
    Forwarding,
    /// A routing override: always dropped.
    Override,
    /// Anything else.
    Other,
}

/// Classifies a header name.
pub fn classify(name: &HeaderName) -> Class {
    let name = name.as_str();
    // Every name below starts with `x` or `f` (header names are lower case),
    // so most names are told apart by their first byte.
    if !matches!(name.as_bytes().first(), Some(b'x' | b'f')) {
        return Class::Other;
    }
    // Underscore look-alikes of forwarding headers are never legitimate, even
    // from a trusted proxy: treat them as forged identity.
    let lookalike = name.contains('_');
    if matches(name, IDENTITY_PREFIXES, &[]) || (lookalike && matches(name, &[], &[X_REQUEST_ID.as_str()])) {
        Class::Identity
    } else if matches(name, FORWARDING_PREFIXES, FORWARDING_NAMES) {
        if lookalike { Class::Identity } else { Class::Forwarding }
    } else if matches(name, &[], OVERRIDE_NAMES) {
        Class::Override
    } else {
        Class::Other
    }
}

/// Removes, in one pass, every header for which `doomed` is true. Most
/// requests have nothing to remove, so this usually costs one scan and no
/// allocation.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName, &ConnectionNamed) -> bool) {
    let named = ConnectionNamed::of(headers);
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n, &named)).cloned().collect();
    drop(named);
    for name in names {
        headers.remove(&name);
    }
}

/// True for a name a client may not send (forwarding names are allowed when
/// `keep_forwarding`, i.e. from a trusted proxy).
fn client_may_not_send(name: &HeaderName, keep_forwarding: bool) -> bool {
    match classify(name) {
        Class::Identity | Class::Override => true,
        Class::Forwarding => !keep_forwarding,
        Class::Other => false,
    }
}

/// The fields a `Connection:` header names (RFC 9110 §7.6.1), as tokens
/// borrowed from its values: no header names are built per request.
struct ConnectionNamed<'a>(Vec<&'a str>);

impl<'a> ConnectionNamed<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        ConnectionNamed(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|token| !token.is_empty())
                .collect(),
        )
    }

    /// True when `name` is named, except framing and `Host`, which are never
    /// the sender's to drop.
    fn contains(&self, name: &HeaderName) -> bool {
        !self.0.is_empty() && !NEVER_CONNECTION_NAMED.contains(name) && self.0.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
    }
}

/// Fields a trailer section may not carry toward a service (RFC 9110
/// §6.5.1): framing, routing, request modifiers, authentication and content
/// metadata are decided by the head. Hop-by-hop fields and the identity
/// contract's names are refused besides these.
static NEVER_IN_TRAILERS: [HeaderName; 13] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_TYPE,
    header::CONTENT_RANGE,
    header::HOST,
    header::TRAILER,
    header::AUTHORIZATION,
    header::COOKIE,
    header::EXPECT,
    header::MAX_FORWARDS,
    header::RANGE,
    header::CACHE_CONTROL,
    X_REQUEST_ID,
];

/// Removes from a client's trailer section every field that is not the
/// trailers' to say: framing, routing, authentication (`Authorization`
/// survives only when `keep_authorization`, the route's `forward_token`),
/// hop-by-hop fields, and every name a client may not send in a head.
pub fn strip_client_trailers(trailers: &mut HeaderMap, keep_authorization: bool) {
    remove_where(trailers, |name, _| {
        (NEVER_IN_TRAILERS.contains(name) && !(keep_authorization && name == header::AUTHORIZATION))
            || is_hop_by_hop(name.as_str())
            || client_may_not_send(name, false)
    });
}

/// Removes hop-by-hop fields and every field named in `Connection:` (RFC 9110
/// §7.6.1), except framing and `Host`. Used on upstream responses.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |name, named| is_hop_by_hop(name.as_str()) || named.contains(name));
}

/// True when a field read off the wire (`name` in any case) is specific to
/// its connection and never forwarded: hop-by-hop, or named by one of the
/// `connection` values (RFC 9110 §7.6.1), except framing and `Host`. Lets
/// the upstream client drop such fields before it builds a header map.
pub fn is_connection_specific(name: &str, connection: &[&[u8]]) -> bool {
    if is_hop_by_hop(name) {
        return true;
    }
    !connection.is_empty() && !NEVER_CONNECTION_NAMED.iter().any(|h| h.as_str().eq_ignore_ascii_case(name)) && names(connection, name)
}

/// True when one of the `connection` values (raw `Connection:` fields)
/// lists `token`, in any case.
pub fn names(connection: &[&[u8]], token: &str) -> bool {
    tokens(connection).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The tokens of raw `Connection:` values, trimmed (empty list items too).
fn tokens<'a>(connection: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> {
    connection.iter().flat_map(|v| v.split(|b| *b == b',')).map(<[u8]>::trim_ascii)
}

/// True when every token of the `connection` values is one of `allowed` (any
/// case); true for no values at all.
pub fn names_only(connection: &[&[u8]], allowed: &[&str]) -> bool {
    tokens(connection).all(|t| t.is_empty() || allowed.iter().any(|k| t.eq_ignore_ascii_case(k.as_bytes())))
}

/// Everything the request stage strips, in one pass: hop-by-hop fields, those
/// named in `Connection:`, and every header a client may not send. Runs before
/// the gateway sets its own headers, so `Connection:` can never remove them.
pub fn strip_request(headers: &mut HeaderMap, keep_forwarding: bool) {
    remove_where(headers, |name, named| {
        is_hop_by_hop(name.as_str()) || named.contains(name) || client_may_not_send(name, keep_forwarding)
    });
}

/// The headers the gateway vouches for, as set on a request by the identity
/// stage: verified identity, forwarding facts, the request id and the trace
/// context. A plugin's
/// request gets exactly these back, whatever it wrote.
#[derive(Debug, Clone, Default)]
pub struct Contract(Vec<(HeaderName, HeaderValue)>);

impl Contract {
    /// Captures the contract headers of a request the identity stage handled.
    pub fn capture(headers: &HeaderMap) -> Contract {
        let vouched = |n: &HeaderName| {
            *n == X_REQUEST_ID || *n == TRACEPARENT || *n == TRACESTATE || matches!(classify(n), Class::Identity | Class::Forwarding)
        };
        Contract(
            headers
                .iter()
                .filter(|(n, _)| vouched(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        )
    }

    /// Strips everything a client may not send from `headers` (plus
    /// hop-by-hop fields and any `X-Request-ID`), then sets the captured
    /// values again.
    pub fn reapply(&self, headers: &mut HeaderMap) {
        strip_request(headers, false);
        headers.remove(X_REQUEST_ID);
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        for (name, value) in &self.0 {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// True when `value` may be placed in a header verbatim: visible ASCII and
/// spaces only, no control characters.
pub fn is_safe_value(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Builds a header value from text already checked with [`is_safe_value`].
pub fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_sees_every_token() {
        let ok = ["close", "keep-alive"];
        assert!(names_only(&[], &ok));
        assert!(names_only(&[b"Keep-Alive", b" close , "], &ok));
        assert!(!names_only(&[b"keep-alive, x-secret"], &ok));
        assert!(!names_only(&[b"close", b"x-secret"], &ok));
    }

    #[test]
    fn hop_by_hop_names_pass_the_length_filter_in_any_case() {
        for h in &HOP_BY_HOP {
            assert!(is_hop_by_hop(h.as_str()), "{h}");
            assert!(is_hop_by_hop(&h.as_str().to_ascii_uppercase()), "{h}");
        }
        for other in ["content-type", "content-length", "date", "server", "tee", "upgrades", "keep-alive2"] {
            assert!(!is_hop_by_hop(other), "{other}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn connection_specific_fields_read_off_the_wire() {
        let connection: &[&[u8]] = &[b"keep-alive, X-Trace", b" close"];
        for name in [
            "Connection",
            "keep-alive",
            "Transfer-Encoding",
            "upgrade",
            "x-trace",
            "X-TRACE",
            "close",
        ] {
            assert!(is_connection_specific(name, connection), "{name}");
        }
        for name in ["content-length", "Host", "x-tracer", "content-type"] {
            assert!(!is_connection_specific(name, connection), "{name}");
        }
        assert!(!is_connection_specific("content-length", &[b"content-length"]));
        assert!(!is_connection_specific("x-trace", &[]));
    }

    #[test]
    fn identity_in_any_case_duplicate_or_underscore_is_stripped() {
        let mut h = map(&[
            ("X-User-ID", "1"),
            ("x-user-id", "2"),
            ("X_User_ID", "3"),
            ("x-user-tier", "pro"),
            ("X-User-Role", "admin"),
            ("x_forwarded_for", "6.6.6.6"),
            ("X-Original-URL", "/admin"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("accept", "*/*"),
        ]);
        strip_request(&mut h, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn forwarding_kept_only_when_trusted() {
        let pairs = [
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ];
        let mut untrusted = map(&pairs);
        strip_request(&mut untrusted, false);
        assert!(untrusted.is_empty());
        let mut trusted = map(&pairs);
        strip_request(&mut trusted, true);
        assert_eq!(trusted.len(), 4);
    }

    #[test]
    fn connection_named_fields_go_but_never_host_or_length() {
        let mut h = map(&[
            ("connection", "close, X-Secret, host, content-length"),
            ("x-secret", "s"),
            ("host", "a"),
            ("content-length", "0"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "host"]);
    }

    #[test]
    fn trailers_carry_no_framing_routing_auth_or_identity() {
        let sent = [
            ("content-length", "0"),
            ("Transfer-Encoding", "chunked"),
            ("host", "admin.internal"),
            ("authorization", "Bearer x"),
            ("connection", "close"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("x-user-id", "1"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("x-forwarded-host", "evil"),
            ("x-request-id", "forged"),
            ("cookie", "a=1"),
            ("x-checksum", "9"),
        ];
        let mut h = map(&sent);
        strip_client_trailers(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-checksum"]);
        let mut h = map(&sent);
        strip_client_trailers(&mut h, true);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-checksum"], "forward_token keeps Authorization only");
    }

    #[test]
    fn safe_values() {
        assert!(is_safe_value("user-42"));
        assert!(!is_safe_value(""));
        assert!(!is_safe_value("a\r\nX-User-ID: 1"));
        assert!(!is_safe_value("tab\there"));
        assert!(!is_safe_value("é"));
    }
}
