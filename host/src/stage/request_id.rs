//! Stage: request id. Keeps a well-formed incoming `X-Request-ID` (visible
//! ASCII, 1–128 bytes, exactly one header), otherwise mints a UUIDv7; echoes
//! it on every response.

use http::{HeaderMap, Response};

use crate::context::RequestCtx;
use crate::headers::{X_REQUEST_ID, value};

const MAX_LEN: usize = 128;

fn well_formed(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(|b| (0x21..0x7f).contains(b))
}

pub fn assign(ctx: &mut RequestCtx, headers: &HeaderMap) {
    let mut ids = headers.get_all(X_REQUEST_ID).iter();
    ctx.request_id = match (ids.next(), ids.next()) {
        (Some(id), None) if well_formed(id.as_bytes()) => String::from_utf8_lossy(id.as_bytes()).into_owned(),
        _ => uuid::Uuid::now_v7().to_string(),
    };
}

pub fn echo<B>(ctx: &RequestCtx, resp: &mut Response<B>) {
    resp.headers_mut().insert(X_REQUEST_ID, value(&ctx.request_id));
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
