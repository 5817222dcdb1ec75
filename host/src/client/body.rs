//! The upstream response body: read from the connection in the caller's
//! task, decoded (`Content-Length`, chunked, or until close), and the
//! connection handed back to the pool once the body ends cleanly.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::Return;
use super::conn::{Conn, Sending};
use super::h1::{self, Framing};

/// A chunk-size line longer than this (extensions included) is malformed.
const MAX_CHUNK_LINE: usize = 4096;

pub enum State {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

impl State {
    /// Where decoding a body framed as `framing` starts.
    pub fn new(framing: Framing) -> State {
        match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::Close => State::Close,
        }
    }
}

pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// An upstream response body; returns its connection to the pool once read
/// to the end. Dropped early (a client that went away), it closes the
/// connection.
pub struct PooledBody {
    conn: Option<Conn>,
    /// The request body, when the upstream answered before it was all sent.
    sending: Option<Sending>,
    state: State,
    keep_alive: bool,
    max_trailers: usize,
    back: Option<Return>,
}

impl PooledBody {
    pub(super) fn new(conn: Conn, framing: Framing, keep_alive: bool, sending: Option<Sending>, max_trailers: usize, back: Return) -> Self {
        let state = State::new(framing);
        let mut body = PooledBody {
            conn: Some(conn),
            sending,
            state,
            keep_alive,
            max_trailers,
            back: Some(back),
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// An empty body with no connection behind it.
    pub(super) fn closed() -> Self {
        PooledBody {
            conn: None,
            sending: None,
            state: State::Done,
            keep_alive: false,
            max_trailers: 0,
            back: None,
        }
    }

    /// The body ended: the connection goes back if it is clean.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if let Some(back) = &self.back
            && self.keep_alive
            && self.sending.is_none()
            && conn.rbuf.is_empty()
        {
            back.put(conn);
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("ended", &self.is_end_stream())
            .finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(s) = &mut this.sending
            && let Poll::Ready(sent) = s.poll_send(conn, cx)
        {
            this.sending = None;
            this.keep_alive &= sent.is_ok();
        }
        let frame = ready!(decode(&mut this.state, conn, this.max_trailers, cx));
        match &frame {
            Some(Err(_)) => this.conn = None,
            _ if matches!(this.state, State::Done) => this.finish(),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Where a body decoder reads from: the connection, or (fuzzing) bytes in
/// memory handed over a few at a time.
pub trait Source {
    /// Bytes read and not yet consumed.
    fn rbuf(&mut self) -> &mut BytesMut;
    /// Reads more into [`Source::rbuf`]: `Ok(0)` at end of stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
}

impl Source for Conn {
    fn rbuf(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        Conn::poll_read_more(self, cx)
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed response body: {what}"))
}

/// Reads more into the buffer; the upstream closing here cuts the body short.
fn fill(conn: &mut impl Source, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match ready!(conn.poll_read_more(cx))? {
        0 => Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed mid-body"))),
        _ => Poll::Ready(Ok(())),
    }
}

/// Up to `left` bytes from the buffer (reading if it is empty).
fn take(conn: &mut impl Source, left: &mut u64, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
    if conn.rbuf().is_empty() {
        ready!(fill(conn, cx))?;
    }
    let rbuf = conn.rbuf();
    let n = (*left).min(rbuf.len() as u64) as usize;
    *left -= n as u64;
    Poll::Ready(Ok(rbuf.split_to(n).freeze()))
}

/// The next frame of a body framed as `state` says, read from `conn`.
pub fn decode(
    state: &mut State,
    conn: &mut impl Source,
    max_trailers: usize,
    cx: &mut Context<'_>,
) -> Poll<Option<io::Result<Frame<Bytes>>>> {
    loop {
        match state {
            State::Done => return Poll::Ready(None),
            State::Length(left) => {
                let data = ready!(take(conn, left, cx))?;
                if *left == 0 {
                    *state = State::Done;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            State::Close => {
                if conn.rbuf().is_empty() && ready!(conn.poll_read_more(cx))? == 0 {
                    *state = State::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(Frame::data(conn.rbuf().split().freeze()))));
            }
            State::Chunked(Chunk::Size) => {
                let Some(end) = conn.rbuf().windows(2).position(|w| w == b"\r\n") else {
                    if conn.rbuf().len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(malformed("chunk size line too long"))));
                    }
                    ready!(fill(conn, cx))?;
                    continue;
                };
                let size = h1::chunk_size(&conn.rbuf()[..end]).ok_or_else(|| malformed("bad chunk size"))?;
                conn.rbuf().advance(end + 2);
                *state = State::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
            }
            State::Chunked(Chunk::Data(left)) => {
                let data = ready!(take(conn, left, cx))?;
                if *left == 0 {
                    *state = State::Chunked(Chunk::DataEnd);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            State::Chunked(Chunk::DataEnd) => {
                if conn.rbuf().len() < 2 {
                    ready!(fill(conn, cx))?;
                    continue;
                }
                if &conn.rbuf()[..2] != b"\r\n" {
                    return Poll::Ready(Some(Err(malformed("chunk not followed by CRLF"))));
                }
                conn.rbuf().advance(2);
                *state = State::Chunked(Chunk::Size);
            }
            State::Chunked(Chunk::Trailers) => {
                if conn.rbuf().starts_with(b"\r\n") {
                    conn.rbuf().advance(2);
                    *state = State::Done;
                    return Poll::Ready(None);
                }
                match h1::parse_trailers(conn.rbuf(), max_trailers) {
                    Err(e) => return Poll::Ready(Some(Err(malformed(&e.to_string())))),
                    Ok(Some((len, trailers))) => {
                        conn.rbuf().advance(len);
                        *state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // A lone CR so far, or part of a trailer field.
                    Ok(None) => ready!(fill(conn, cx))?,
                }
            }
        }
    }
}
