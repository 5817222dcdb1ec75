//! Stage: request id. Keeps a well-formed incoming `X-Request-ID` (visible
//! ASCII, 1–128 bytes, exactly one header), otherwise mints a UUIDv7; echoes
//! it on every response.

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
        _ => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(text).expect("a UUID is a valid header value")
        }
    };
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
}
