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

/// True for a field of a service's response the gateway does not pass on,
/// in any case: the service's `Server` names its internal stack, and `Date`
/// is the gateway's to set (it dates every response), as nginx does by
/// default. Most names are told apart by their length alone.
pub fn drops(name: &str) -> bool {
    matches!(name.len(), 4 | 6) && (name.eq_ignore_ascii_case("date") || name.eq_ignore_ascii_case("server"))
}

#[cfg(test)]
mod tests {
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
