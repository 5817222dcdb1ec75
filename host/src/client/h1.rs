//! HTTP/1.1 on the wire to an upstream: the request head written, the
//! response head parsed and its framing decided (RFC 9112 §6.3).

use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use crate::headers::{self, is_connection_specific};

/// Response header fields beyond this many make the response malformed (as
/// hyper's client does).
const MAX_HEADERS: usize = 128;

/// Writes the request head: origin-form target, the headers as they are,
/// `Transfer-Encoding: chunked` when the body's length is unknown.
pub fn encode_head(buf: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap, chunked: bool) {
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    encode_fields(buf, headers);
    if chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

/// Writes field lines (`name: value` CRLF), for a head or a trailer section.
pub fn encode_fields(buf: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

/// Why a response head was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("invalid header field")]
    Field,
    /// A transfer coding other than a final `chunked` (which the gateway
    /// cannot decode), or any `Transfer-Encoding` on an HTTP/1.0 response.
    #[error("unsupported Transfer-Encoding")]
    TransferCoding,
    /// More interim (1xx) responses than [`MAX_INTERIM`] before the final one.
    #[error("more than {MAX_INTERIM} interim responses")]
    TooManyInterim,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("101 Switching Protocols to a request without Upgrade")]
    UnaskedSwitch,
}

/// Interim (1xx) responses accepted before the final one; each is bounded
/// by the same size cap as a final head.
pub const MAX_INTERIM: usize = 32;

/// Parses a response head from the start of `buf`: `None` until it is whole.
/// `method` is the request's (a response to HEAD has no body); heads longer
/// than `max` are refused. Fields for which `dropped` is true are left out
/// (the response stage's policy, applied here so they are never built).
pub fn parse_head(buf: &[u8], method: &Method, max: usize, dropped: fn(&str) -> bool) -> Result<Option<Head>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots)? {
        httparse::Status::Partial if buf.len() >= max => return Err(HeadError::TooLarge(max)),
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) if len > max => return Err(HeadError::TooLarge(max)),
        httparse::Status::Complete(len) => len,
    };
    let status = StatusCode::from_u16(resp.code.expect("a complete head has a status")).map_err(|_| HeadError::Field)?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let fields: &[httparse::Header<'_>] = resp.headers;

    // Framing facts first, off the raw fields.
    let (mut connection, mut length, mut transfer_encoding) = (Vec::new(), None, Vec::new());
    // One field holding one plain number; a list, a repeat or leading zeros
    // is forwarded as one canonical value instead.
    let mut length_canonical = true;
    for h in fields {
        if h.name.eq_ignore_ascii_case("connection") {
            connection.push(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length_canonical &= length.is_none() && !h.value.contains(&b',') && !(h.value.len() > 1 && h.value[0] == b'0');
            length = Some(merge_length(length, h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding.push(h.value);
        }
    }
    let chunked = (!transfer_encoding.is_empty())
        .then(|| decodable(&transfer_encoding, version))
        .transpose()?;
    // Transfer-Encoding wins: the service's Content-Length does not describe
    // the body the client gets (RFC 9112 §6.3), so it goes.
    let drop_length = chunked.is_some() || !length_canonical;
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    // `close` and `keep-alive` (the usual values) name no field that is not
    // hop-by-hop already: only other tokens need checking per field.
    let named: &[&[u8]] = if headers::names_only(&connection, &["close", "keep-alive"]) {
        &[]
    } else {
        &connection
    };
    // A proxy forwards end-to-end fields only; a switch of protocols keeps
    // them all for whoever tunnels it.
    let mut headers = HeaderMap::with_capacity(fields.len());
    for h in fields {
        if !upgrade && (is_connection_specific(h.name, named) || dropped(h.name)) {
            continue;
        }
        if drop_length && h.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        append_field(&mut headers, h)?;
    }
    if let (None, Some(n), true) = (chunked, length, drop_length) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let mut keep_alive = match version {
        Version::HTTP_10 => headers::names(&connection, "keep-alive"),
        _ => !headers::names(&connection, "close"),
    };
    let no_body =
        method == Method::HEAD || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length; a response carrying
        // both may have been made to smuggle, so its connection ends with it.
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
        len,
    }))
}

/// Whether the `Transfer-Encoding` values leave a body the gateway can
/// decode: `chunked` (true) or nothing but `identity` (false: delimited by
/// the connection's close). Any other coding would reach the client as
/// bytes it was never told how to read, so it is refused, as is
/// `Transfer-Encoding` on an HTTP/1.0 response (RFC 9112 §6.1).
fn decodable(values: &[&[u8]], version: Version) -> Result<bool, HeadError> {
    if version == Version::HTTP_10 {
        return Err(HeadError::TransferCoding);
    }
    let mut chunked = false;
    for coding in values.iter().flat_map(|v| v.split(|b| *b == b',')).map(<[u8]>::trim_ascii) {
        if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
            continue;
        }
        // `chunked` once, and last; nothing else.
        if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::TransferCoding);
        }
        chunked = true;
    }
    Ok(chunked)
}

/// Adds one `Content-Length` field to what the earlier ones said: every
/// value (repeated fields, comma lists) must be the same number.
fn merge_length(found: Option<u64>, value: &[u8]) -> Result<u64, HeadError> {
    let mut found = found;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::ContentLength);
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(HeadError::ContentLength);
        }
        found = Some(n);
    }
    found.ok_or(HeadError::ContentLength)
}

/// Appends a field read off the wire, checked.
fn append_field(map: &mut HeaderMap, h: &httparse::Header<'_>) -> Result<(), HeadError> {
    let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Field)?;
    let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Field)?;
    map.append(name, value);
    Ok(())
}

/// Parses a chunk-size line (`1a2b;ext=1`) from `line` (without CRLF).
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Parses a trailer section (after the last chunk, up to and including the
/// empty line): `None` until it is whole.
pub fn parse_trailers(buf: &[u8], max: usize) -> Result<Option<(usize, HeaderMap)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(buf, &mut slots)? {
        httparse::Status::Partial if buf.len() >= max => Err(HeadError::TooLarge(max)),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete((len, fields)) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for h in fields {
                append_field(&mut map, h)?;
            }
            Ok(Some((len, map)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Head {
        parse_head(raw.as_bytes(), &Method::GET, 64 << 10, |_| false).unwrap().unwrap()
    }

    #[test]
    fn a_request_head_is_written_in_origin_form() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("up.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut buf = Vec::new();
        encode_head(&mut buf, &Method::POST, "/p?q=1", &headers, true);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: up.test\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!((h.framing, h.keep_alive, h.len), (Framing::Length(3), true, 38));
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(3));
        let h = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false), "TE wins, the connection ends");
        assert!(
            h.headers.get("content-length").is_none(),
            "the service's length does not describe the body"
        );
        let h = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false), "identity: read until close");
        assert!(h.headers.get("content-length").is_none());
        let h = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, chunked\r\nTransfer-Encoding: identity\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 208, 208\r\nX-A: 1\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(208));
        let lengths: Vec<_> = h.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["208"], "a list is forwarded as one value");
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n");
        assert_eq!(
            h.headers.get_all("content-length").iter().collect::<Vec<_>>(),
            ["7"],
            "found by fuzzing"
        );
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(h.headers.get_all("content-length").iter().collect::<Vec<_>>(), ["7"]);
        let h = parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), false));
        let h = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert_eq!((h.version, h.keep_alive), (Version::HTTP_10, false));
        let h = parse("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        for empty in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
        ] {
            assert_eq!(parse(empty).framing, Framing::Empty);
        }
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &Method::HEAD, 1024, |_| false);
        assert_eq!(head.unwrap().unwrap().framing, Framing::Empty);
    }

    #[test]
    fn only_end_to_end_fields_are_kept_except_on_a_switch_of_protocols() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Trace\r\nKeep-Alive: timeout=5\r\nX-Trace: 1\r\n\
             Transfer-Encoding: chunked\r\nProxy-Authenticate: Basic\r\nContent-Type: text/plain\r\nX-Tracer: 2\r\n\r\n",
        );
        let names: Vec<&str> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-tracer"]);
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = parse("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.headers.len(), 2);
    }

    #[test]
    fn bad_heads_are_refused() {
        let bad = |raw: &str| parse_head(raw.as_bytes(), &Method::GET, 256, |_| false).is_err();
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"));
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"));
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"));
        assert!(bad("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"));
        assert!(bad("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), "obsolete line folding");
        assert!(bad("NOTHTTP 200 OK\r\n\r\n"));
        for coding in ["gzip, chunked", "gzip", "chunked, gzip", "chunked, chunked", "x-custom"] {
            assert!(
                matches!(
                    parse_head(
                        format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n").as_bytes(),
                        &Method::GET,
                        256,
                        |_| false
                    ),
                    Err(HeadError::TransferCoding)
                ),
                "{coding}"
            );
        }
        assert!(
            matches!(
                parse_head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &Method::GET, 256, |_| {
                    false
                }),
                Err(HeadError::TransferCoding)
            ),
            "HTTP/1.0 has no transfer codings"
        );
        assert!(bad(&format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(300))), "over the limit");
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nX: a", &Method::GET, 256, |_| false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn chunk_sizes_and_trailers() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0;ext=1"), Some(0));
        assert_eq!(chunk_size(b"A ; x"), Some(10));
        for bad in [&b""[..], b"g", b"-1", b"1 2", b"1234567890abcdef"] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
        let (len, map) = parse_trailers(b"X-Sum: 1\r\n\r\nrest", 1024).unwrap().unwrap();
        assert_eq!((len, map["x-sum"].as_bytes()), (12, &b"1"[..]));
        assert!(parse_trailers(b"X-Sum: 1\r\n", 1024).unwrap().is_none());
    }
}
