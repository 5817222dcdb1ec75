//! Stage: trace context (W3C Trace Context). A well-formed `traceparent`
//! (and its `tracestate`) goes on to the service unchanged; an absent or
//! malformed one is replaced by a new trace that starts here (a new trace id,
//! this hop's span id as the parent, not sampled), and its `tracestate` is
//! dropped (Trace Context §3.3.1: a `tracestate` without a valid parent means
//! nothing). The trace id goes in the access line beside the request id.

use http::header::Entry;
use http::{HeaderMap, HeaderValue};

use crate::context::RequestCtx;
use crate::headers::{TRACEPARENT, TRACESTATE};

/// The longest `tracestate` passed on (the spec's 512 characters: vendors
/// may drop a longer one).
const MAX_TRACESTATE: usize = 512;

pub fn assign(ctx: &mut RequestCtx, h: &mut HeaderMap) {
    // One lookup for the header, whether it is kept, replaced or added.
    let entry = match h.entry(TRACEPARENT) {
        Entry::Occupied(entry) => {
            let mut parents = entry.iter();
            if let (Some(v), None) = (parents.next(), parents.next())
                && let Some(id) = trace_id(v.as_bytes())
            {
                ctx.trace_id = id;
                let state: usize = h.get_all(TRACESTATE).iter().map(|v| v.len() + 1).sum();
                if state > MAX_TRACESTATE + 1 {
                    h.remove(TRACESTATE);
                }
                return;
            }
            Entry::Occupied(entry)
        }
        vacant => vacant,
    };
    let (trace, span) = crate::stage::request_id::random_pair();
    let mut parent = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(trace.0, &mut parent[3..19]);
    hex(trace.1, &mut parent[19..35]);
    hex(span, &mut parent[36..52]);
    ctx.trace_id.copy_from_slice(&parent[3..35]);
    let value = HeaderValue::from_bytes(&parent).expect("hex is a valid header value");
    match entry {
        // Every malformed or repeated value goes; the new one takes their place.
        Entry::Occupied(mut e) => drop(e.insert(value)),
        Entry::Vacant(e) => drop(e.insert(value)),
    }
    h.remove(TRACESTATE);
}

/// Writes `v` as lowercase hex into `out` (16 bytes), a byte (two digits)
/// at a time.
fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in v.to_be_bytes().into_iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
}

fn is_hex(s: &[u8]) -> bool {
    s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The trace id of a well-formed `traceparent` (version 00 exactly; a later
/// version by its version-00 prefix, as the spec asks), else `None`.
fn trace_id(v: &[u8]) -> Option<[u8; 32]> {
    if v.len() < 55 || !is_hex(&v[..2]) || &v[..2] == b"ff" {
        return None;
    }
    let exact = &v[..2] == b"00";
    if (exact && v.len() != 55) || (!exact && v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !is_hex(trace) || !is_hex(parent) || !is_hex(flags) {
        return None;
    }
    if trace.iter().all(|&b| b == b'0') || parent.iter().all(|&b| b == b'0') {
        return None;
    }
    trace.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_parents_only() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(good).as_ref().map(|t| &t[..]),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        // A later version: its version-00 prefix, then more after a dash.
        assert!(trace_id(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"",
        ] {
            assert!(trace_id(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_new_trace_starts_here_and_a_kept_one_goes_on() {
        let peer = std::sync::Arc::new(crate::context::Peer::new("127.0.0.1:1".parse().unwrap(), false));
        let mut ctx = RequestCtx::new(peer.clone(), http::Method::GET, "/");
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "garbage".parse().unwrap());
        h.insert(TRACESTATE, "vendor=1".parse().unwrap());
        assign(&mut ctx, &mut h);
        let parent = h[TRACEPARENT].to_str().unwrap().to_string();
        assert_eq!(trace_id(parent.as_bytes()), Some(ctx.trace_id), "{parent}");
        assert!(parent.ends_with("-00"));
        assert!(!h.contains_key(TRACESTATE), "a tracestate without its parent is dropped");

        let mut again = RequestCtx::new(peer, http::Method::GET, "/");
        let mut h2 = HeaderMap::new();
        assign(&mut again, &mut h2);
        assert_ne!(again.trace_id, ctx.trace_id, "every new trace is new");

        let mut kept = HeaderMap::new();
        kept.insert(TRACEPARENT, parent.parse().unwrap());
        kept.insert(TRACESTATE, "vendor=1".parse().unwrap());
        assign(&mut again, &mut kept);
        assert_eq!(kept[TRACEPARENT].to_str().unwrap(), parent);
        assert_eq!(kept[TRACESTATE], "vendor=1");
        assert_eq!(again.trace_id, ctx.trace_id);

        // Two parents, even well-formed ones, are one too many: both go.
        let mut two = HeaderMap::new();
        two.append(TRACEPARENT, parent.parse().unwrap());
        two.append(TRACEPARENT, parent.parse().unwrap());
        assign(&mut again, &mut two);
        assert_eq!(two.get_all(TRACEPARENT).iter().count(), 1);
        assert_ne!(two[TRACEPARENT].to_str().unwrap(), parent);
        assert_eq!(trace_id(two[TRACEPARENT].as_bytes()), Some(again.trace_id));
    }
}
