//! Request header classification and stripping: no name that reads as
//! identity, forwarding or an override (any case, `_` for `-`) survives,
//! and a plugin's headers come back with exactly the gateway's contract.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::{Contract, X_REQUEST_ID, X_USER_ID, X_USER_TIER, strip_request};

/// Input: header lines `name:value`, separated by `\n`; the first byte's
/// low bit says whether the peer is a trusted proxy.
pub fn header_strip(data: &[u8]) {
    let [flags, rest @ ..] = data else { return };
    let trusted = flags & 1 == 1;
    let mut map = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..])) else {
            continue;
        };
        map.append(name, value);
    }
    let connection_named: Vec<String> = map
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "host" && t != "content-length")
        .collect();

    let mut stripped = map.clone();
    strip_request(&mut stripped, trusted);
    for name in stripped.keys() {
        let reads = reads_as(name.as_str());
        assert!(!matches!(reads, Reads::Identity | Reads::Override), "{name} survived");
        assert!(
            !(reads == Reads::Forwarding && (!trusted || name.as_str().contains('_'))),
            "{name} survived"
        );
        assert!(
            !connection_named.iter().any(|t| t == name.as_str()),
            "{name} was named in Connection"
        );
        assert!(!is_hop_by_hop(name.as_str()), "hop-by-hop {name} survived");
    }
    // Nothing else was removed.
    for (name, value) in &map {
        let doomed =
            reads_as(name.as_str()) != Reads::Other || connection_named.iter().any(|t| t == name.as_str()) || is_hop_by_hop(name.as_str());
        if !doomed {
            assert!(stripped.get_all(name).iter().any(|v| v == value), "{name} was removed");
        }
    }

    // A plugin's headers: whatever it wrote, the contract comes back exactly.
    let mut vouched = HeaderMap::new();
    vouched.insert(X_USER_ID, HeaderValue::from_static("42"));
    vouched.insert(X_USER_TIER, HeaderValue::from_static("pro"));
    vouched.insert(X_REQUEST_ID, HeaderValue::from_static("req-1"));
    let contract = Contract::capture(&vouched);
    let mut from_plugin = map;
    contract.reapply(&mut from_plugin);
    for name in [X_USER_ID, X_USER_TIER, X_REQUEST_ID] {
        let values: Vec<_> = from_plugin.get_all(&name).iter().collect();
        assert_eq!(values, vouched.get_all(&name).iter().collect::<Vec<_>>(), "{name}");
    }
    for name in from_plugin.keys() {
        let own = [X_USER_ID, X_USER_TIER, X_REQUEST_ID].contains(name);
        assert!(
            own || !matches!(reads_as(name.as_str()), Reads::Identity | Reads::Override),
            "{name} forged"
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reads {
    Identity,
    Forwarding,
    Override,
    Other,
}

/// What a name reads as to a lenient downstream (case folded, `_` as `-`),
/// written independently of `headers::classify`.
fn reads_as(name: &str) -> Reads {
    let folded = name.to_ascii_lowercase().replace('_', "-");
    if folded.starts_with("x-user-") || (folded == "x-request-id" && name.contains('_')) {
        Reads::Identity
    } else if folded.starts_with("x-forwarded-") || folded == "forwarded" || folded == "x-real-ip" {
        Reads::Forwarding
    } else if [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .contains(&folded.as_str())
    {
        Reads::Override
    } else {
        Reads::Other
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "transfer-encoding",
        "upgrade",
    ]
    .contains(&name)
}
