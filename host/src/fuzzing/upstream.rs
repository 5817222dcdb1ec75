//! The upstream response head parser and body decoder, against a reference
//! chunked decoder written to be obviously correct.

use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode, header};

use crate::client::fuzz_api::{Framing, Head, Source, State, decode, parse_head};

/// The largest head (and trailer section) accepted, as configured by default.
const MAX_HEAD: usize = 8192;

/// Bytes handed to the decoder a few at a time, in read sizes taken from
/// the input, as a socket would.
struct Pieces<'a> {
    rest: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
    rbuf: BytesMut,
    fed: usize,
}

impl Source for Pieces<'_> {
    fn rbuf(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    fn poll_read_more(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let size = usize::from(self.sizes.get(self.turn % self.sizes.len().max(1)).copied().unwrap_or(255)).max(1);
        self.turn += 1;
        let n = size.min(self.rest.len());
        self.rbuf.extend_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        self.fed += n;
        Poll::Ready(Ok(n))
    }
}

/// Input: one byte of flags (bit 0: the request was HEAD), one byte `k`,
/// `k` bytes of read sizes, then the response as the service sent it.
pub fn upstream_response(data: &[u8]) {
    let [flags, k, rest @ ..] = data else { return };
    let (sizes, wire) = rest.split_at(usize::from(*k).min(rest.len()));
    let method = if flags & 1 == 1 { Method::HEAD } else { Method::GET };
    let head = match parse_head(wire, &method, MAX_HEAD, crate::stage::response::drops) {
        Ok(Some(head)) => head,
        Ok(None) | Err(_) => return,
    };
    assert!(head.len <= wire.len() && head.len <= MAX_HEAD, "a head longer than its bytes");
    check_head_fields(&head);

    let body_wire = &wire[head.len..];
    let mut state = State::new(head.framing);
    let mut source = Pieces {
        rest: body_wire,
        sizes,
        turn: 0,
        rbuf: BytesMut::new(),
        fed: 0,
    };
    let mut cx = Context::from_waker(Waker::noop());
    let (mut body, mut trailers, mut ok) = (Vec::new(), None, false);
    // Each step consumes a byte or ends: bounded by the input's length.
    for _ in 0..=4 * body_wire.len() + 8 {
        match decode(&mut state, &mut source, MAX_HEAD, &mut cx) {
            Poll::Pending => unreachable!("the source never waits"),
            Poll::Ready(None) => {
                ok = true;
                break;
            }
            Poll::Ready(Some(Err(_))) => break,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => body.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
        let consumed = source.fed - source.rbuf.len();
        assert!(body.len() <= consumed, "{} body bytes from {consumed} consumed", body.len());
    }
    if !ok {
        return;
    }
    match head.framing {
        Framing::Empty => assert!(body.is_empty()),
        Framing::Length(n) => assert_eq!(body.len() as u64, n, "a body of another length than declared"),
        Framing::Close => assert_eq!(body, body_wire, "a close-delimited body is every byte"),
        Framing::Chunked => {
            if let Some((ref_body, ref_trailers)) = reference_chunked(body_wire) {
                assert_eq!(body, ref_body, "the chunked body differs from the reference decoder's");
                let mut ours: Fields = trailers
                    .iter()
                    .flatten()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
                let mut theirs = ref_trailers;
                ours.sort();
                theirs.sort();
                assert_eq!(ours, theirs, "trailers differ from the reference decoder's");
            }
        }
    }
}

/// What a parsed head may carry on to the client.
fn check_head_fields(head: &Head) {
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    for name in [
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "proxy-connection",
        "server",
        "date",
    ] {
        assert!(!head.headers.contains_key(name), "{name} passed on");
    }
    let lengths: Vec<_> = head.headers.get_all(header::CONTENT_LENGTH).iter().collect();
    match head.framing {
        Framing::Chunked => assert!(lengths.is_empty(), "Content-Length beside chunked framing"),
        Framing::Length(n) => assert_eq!(lengths, [n.to_string().as_str()], "Content-Length not one value"),
        Framing::Close | Framing::Empty => assert!(lengths.len() <= 1),
    }
}

/// Header fields as (lower-case name, value) pairs.
type Fields = Vec<(String, Vec<u8>)>;

/// A chunked body decoded the plain way, from a whole slice: the body and
/// the trailer fields (lower-case name, trimmed value), or `None` for
/// anything it does not accept (it may refuse more than the gateway).
/// Bytes after the message are not its business: the gateway closes a
/// connection with leftover bytes rather than reuse it.
fn reference_chunked(mut b: &[u8]) -> Option<(Vec<u8>, Fields)> {
    fn line<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let end = b.windows(2).position(|w| w == b"\r\n")?;
        let line = &b[..end];
        b.advance(end + 2);
        Some(line)
    }
    let mut body = Vec::new();
    loop {
        let size_line = line(&mut b)?;
        let digits = size_line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 15 || !(digits == size_line.len() || size_line[digits] == b';') {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(&size_line[..digits]).ok()?, 16).ok()?;
        if size == 0 {
            break;
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return None;
        }
        body.extend_from_slice(&b[..size]);
        b.advance(size + 2);
    }
    // Trailer lines may end in a bare LF, as head lines may (RFC 9112 §2.2;
    // httparse reads both that way); chunk lines need CRLF.
    fn field_line<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let end = b.iter().position(|c| *c == b'\n')?;
        let line = &b[..end];
        b.advance(end + 1);
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
    let mut trailers = Vec::new();
    loop {
        let field = field_line(&mut b)?;
        if field.is_empty() {
            return Some((body, trailers));
        }
        let colon = field.iter().position(|c| *c == b':')?;
        let (name, value) = (&field[..colon], field[colon + 1..].trim_ascii());
        let token = |c: &u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.iter().all(token) || !value.iter().all(|c| (0x20..0x7f).contains(c) || *c == b'\t') {
            return None;
        }
        trailers.push((String::from_utf8(name.to_ascii_lowercase()).ok()?, value.to_vec()));
    }
}
