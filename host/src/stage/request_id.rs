//! Stage: request id. Keeps a well-formed incoming `X-Request-ID` (visible
//! ASCII, 1–128 bytes, exactly one header), otherwise mints a UUIDv7; echoes
//! it on every response.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Response};

use crate::context::RequestCtx;
use crate::headers::X_REQUEST_ID;

const MAX_LEN: usize = 128;

fn well_formed(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(|b| (0x21..0x7f).contains(b))
}

pub fn assign(ctx: &mut RequestCtx, headers: &HeaderMap) {
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    ctx.request_id = match (ids.next(), ids.next()) {
        (Some(id), None) if well_formed(id.as_bytes()) => id.clone(),
        _ => mint(),
    };
}

/// A new UUIDv7 (RFC 9562 §5.7): 48 bits of Unix milliseconds, the version,
/// then 74 bits from a per-thread generator seeded from the OS. An id has to
/// be unique, not secret, so it needs no lock and no CSPRNG (`uuid`'s
/// `now_v7` took both, ~1k instructions a request).
fn mint() -> HeaderValue {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let (a, b) = RNG.with(|s| (wyrand(s), wyrand(s)));
    let high = (ms & 0xffff_ffff_ffff) << 16 | 0x7000 | (a & 0x0fff);
    let low = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let id = uuid::Uuid::from_u64_pair(high, low);
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).expect("a UUID is a valid header value")
}

/// Three 64-bit numbers from this thread's generator: a trace id's two
/// halves and a span id (unique, not secret; see [`mint`]).
pub fn random_pair() -> ((u64, u64), u64) {
    RNG.with(|s| {
        let (a, b, c) = (wyrand(s), wyrand(s), wyrand(s));
        ((a, b), c)
    })
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(std::hash::RandomState::new().hash_one(std::thread::current().id()));
}

/// wyrand: one multiply per 64 bits, passes BigCrush.
fn wyrand(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
    state.set(s);
    let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
    (t >> 64) as u64 ^ t as u64
}

pub fn echo<B>(ctx: &RequestCtx, resp: &mut Response<B>) {
    resp.headers_mut().insert(X_REQUEST_ID, ctx.request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        assert!(well_formed(b"abc-123"));
        assert!(well_formed(&[b'a'; 128]));
        assert!(!well_formed(&[b'a'; 129]));
        assert!(!well_formed(b""));
        assert!(!well_formed(b"has space"));
        assert!(!well_formed(b"tab\t"));
    }

    #[test]
    fn minted_ids_are_distinct_time_ordered_uuidv7() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let ids: Vec<uuid::Uuid> = (0..1000)
            .map(|_| uuid::Uuid::parse_str(mint().to_str().unwrap()).expect("a hyphenated UUID"))
            .collect();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!((before..=after).contains(&ms), "{ms} not in {before}..={after}");
        }
    }
}
