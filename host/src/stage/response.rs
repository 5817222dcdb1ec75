//! Stage: response. What the gateway changes in a service's response on
//! its way back, for the native route and for a plugin's `upstream.send`
//! alike (hop-by-hop fields are the wire format's business: the client
//! leaves them out as it parses the head, and keeps them only for a `101`'s
//! tunnel).
//!
//! Fields the gateway drops are named by [`drops`], which the upstream
//! client applies while it parses the head (`UpstreamClient::dropping`), so
//! a dropped field is never built: removing `Server` and `Date` from a
//! finished header map cost ~1.5k instructions per proxied request
//! (`bench/instructions.sh`: 33.8k against 32.2k per request).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// True for a field of a service's response the gateway does not pass on,
/// in any case: the service's `Server` names its internal stack, and `Date`
/// is the gateway's to set (it dates every response), as nginx does by
/// default. Most names are told apart by their length alone.
pub fn drops(name: &str) -> bool {
    matches!(name.len(), 4 | 6) && (name.eq_ignore_ascii_case("date") || name.eq_ignore_ascii_case("server"))
}

/// The fields of a service's `101` that reach the client: its end-to-end
/// ones (the parser keeps every field of a switch, for the tunnel), less
/// [`drops`], then the gateway's own `Connection` and `Upgrade`.
pub fn switched(h: &mut HeaderMap, protocol: &'static str) {
    crate::headers::strip_hop_by_hop(h);
    let dropped: Vec<HeaderName> = h.keys().filter(|n| drops(n.as_str())).cloned().collect();
    for name in dropped {
        h.remove(name);
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(protocol));
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    #[test]
    fn a_switch_keeps_end_to_end_fields_and_sets_its_own_connection() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "upgrade, x-secret"),
            ("upgrade", "WebSocket"),
            ("x-secret", "internal"),
            ("keep-alive", "timeout=5"),
            ("server", "internal/1.0"),
            ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("set-cookie", "a=b"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        super::switched(&mut h, "websocket");
        let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["connection", "sec-websocket-accept", "set-cookie", "upgrade"]);
        assert_eq!(
            (h["connection"].to_str().unwrap(), h["upgrade"].to_str().unwrap()),
            ("Upgrade", "websocket")
        );
    }

    #[test]
    fn server_and_date_in_any_case() {
        for name in ["server", "Server", "DATE", "date"] {
            assert!(super::drops(name), "{name}");
        }
        for name in ["content-type", "x-date", "servers", "dat"] {
            assert!(!super::drops(name), "{name}");
        }
    }
}
