//! One upstream connection, driven by the task of the request using it (no
//! connection task, no channels): the request head and body written, the
//! response head read, the body read by [`super::body::PooledBody`].

use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use http::Method;
use http_body::Body;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::UpstreamError;
use super::h1::{self, Head};
use crate::body::GatewayBody;

/// Read buffer growth step.
const READ_CHUNK: usize = 8 << 10;

pub(super) struct Conn {
    pub io: TcpStream,
    /// Bytes read and not yet consumed.
    pub rbuf: BytesMut,
    /// Bytes to write, from `wpos` on.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Counts the connection among its host's open ones while it lives.
    _open: Option<Open>,
}

/// One open connection in a host's count.
pub(super) struct Open(pub std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Open {
    pub fn new(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Open {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            wpos: 0,
            _open: None,
        }
    }

    /// The connection, counted in `open` while it lives.
    pub fn counted(mut self, open: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self._open = Some(Open::new(open));
        self
    }

    /// Whether an idle connection can take a request: nothing arrived on it
    /// while it sat in the pool (no close, no stray bytes). Asks the
    /// reactor's readiness, so a quiet connection costs no system call.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into `rbuf`: `Ok(0)` at end of stream.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Writes out what `wbuf` holds.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

/// A request body on its way out: framed by `Content-Length` (checked) or
/// chunked.
pub(super) struct Sending {
    body: GatewayBody,
    chunked: bool,
    /// Bytes the declared `Content-Length` still expects.
    left: u64,
}

/// The request body failed or broke its declared length.
#[derive(Debug, thiserror::Error)]
pub enum SendBodyError {
    #[error("request body")]
    Body(#[source] crate::body::BoxError),
    #[error("request body does not match its Content-Length")]
    Length,
    #[error("writing the request body")]
    Io(#[source] io::Error),
}

impl Sending {
    pub fn new(body: GatewayBody, length: Option<u64>) -> Self {
        Sending {
            body,
            chunked: length.is_none(),
            left: length.unwrap_or(0),
        }
    }

    /// Sends as much of the body as is ready: `Ready(Ok)` once all of it
    /// (and the last chunk) is written.
    pub fn poll_send(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), SendBodyError>> {
        loop {
            ready!(conn.poll_flush_out(cx)).map_err(SendBodyError::Io)?;
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None if self.chunked => {
                    conn.wbuf.extend_from_slice(b"0\r\n\r\n");
                    ready!(conn.poll_flush_out(cx)).map_err(SendBodyError::Io)?;
                    return Poll::Ready(Ok(()));
                }
                None if self.left == 0 => return Poll::Ready(Ok(())),
                None => return Poll::Ready(Err(SendBodyError::Length)),
                Some(Err(e)) => return Poll::Ready(Err(SendBodyError::Body(e))),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if self.chunked => {
                    // Into the buffer directly: no string per chunk.
                    write!(conn.wbuf, "{:x}\r\n", data.len()).expect("writing to a Vec never fails");
                    conn.wbuf.extend_from_slice(&data);
                    conn.wbuf.extend_from_slice(b"\r\n");
                }
                Ok(data) => {
                    self.left = self.left.checked_sub(data.len() as u64).ok_or(SendBodyError::Length)?;
                    conn.wbuf.extend_from_slice(&data);
                }
                Err(frame) => {
                    // Trailers go out only where chunked framing can carry them.
                    if let (true, Ok(trailers)) = (self.chunked, frame.into_trailers()) {
                        conn.wbuf.extend_from_slice(b"0\r\n");
                        h1::encode_fields(&mut conn.wbuf, &trailers);
                        conn.wbuf.extend_from_slice(b"\r\n");
                        ready!(conn.poll_flush_out(cx)).map_err(SendBodyError::Io)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// A request that got no response.
pub(super) enum Failed {
    /// The connection failed before the whole request head was written:
    /// nothing of the request reached the upstream, the body is untouched.
    NotSent(UpstreamError),
    /// The connection closed (or was reset) after the head went out and
    /// before a byte of a response.
    ClosedBeforeResponse(UpstreamError),
    Other(UpstreamError),
}

/// The request head written, then its body streamed while the response head
/// is awaited (an upstream may answer before reading the whole body).
/// Returns the head and, if the body is still going, its sender.
///
/// Interim (1xx) heads are read past, at most [`h1::MAX_INTERIM`] of them;
/// a `101` is taken only when `upgrade` (the request asked for one).
pub(super) async fn exchange(
    conn: &mut Conn,
    method: &Method,
    upgrade: bool,
    body: &mut Option<(GatewayBody, Option<u64>)>,
    max_head: usize,
    dropped: fn(&str) -> bool,
) -> Result<(Head, Option<Sending>), Failed> {
    // The head first: until it is out, the request can go elsewhere.
    std::future::poll_fn(|cx| conn.poll_flush_out(cx))
        .await
        .map_err(|e| Failed::NotSent(UpstreamError::Io(e)))?;
    let mut sending = body.take().map(|(body, length)| Sending::new(body, length));
    // A write that failed mid-body: the upstream may still have answered
    // (an early 413, say) before it closed.
    let mut broken = None;
    let mut interim = 0;
    let head = std::future::poll_fn(|cx| {
        if let Some(s) = &mut sending
            && let Poll::Ready(sent) = s.poll_send(conn, cx)
        {
            sending = None;
            match sent {
                Ok(()) => {}
                Err(SendBodyError::Io(e)) => broken = Some(e),
                Err(e) => return Poll::Ready(Err(Failed::Other(UpstreamError::Body(e)))),
            }
        }
        loop {
            let parsed = if conn.rbuf.is_empty() {
                Ok(None)
            } else {
                h1::parse_head(&conn.rbuf, method, max_head, dropped)
            };
            let bad = |e| Poll::Ready(Err(Failed::Other(UpstreamError::BadResponse(e))));
            match parsed {
                Err(e) => return bad(e),
                Ok(Some(head)) if head.status == http::StatusCode::SWITCHING_PROTOCOLS && !upgrade => {
                    return bad(h1::HeadError::UnaskedSwitch);
                }
                // Interim responses (100 Continue, 103 Early Hints) are not
                // passed on: the final one follows, maybe already buffered.
                Ok(Some(head)) if head.status.is_informational() && head.status != http::StatusCode::SWITCHING_PROTOCOLS => {
                    conn.rbuf.advance(head.len);
                    interim += 1;
                    if interim > h1::MAX_INTERIM {
                        return bad(h1::HeadError::TooManyInterim);
                    }
                    continue;
                }
                Ok(Some(head)) => {
                    conn.rbuf.advance(head.len);
                    return Poll::Ready(Ok(head));
                }
                Ok(None) => {}
            }
            let nothing_yet = conn.rbuf.is_empty();
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) if broken.is_some() => {
                    let e = broken.take().expect("checked just above");
                    return Poll::Ready(Err(Failed::Other(UpstreamError::Io(e))));
                }
                Ok(0) if nothing_yet => return Poll::Ready(Err(Failed::ClosedBeforeResponse(UpstreamError::Closed))),
                Ok(0) => return Poll::Ready(Err(Failed::Other(UpstreamError::Truncated))),
                Ok(_) => {}
                Err(e) if nothing_yet && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                    return Poll::Ready(Err(Failed::ClosedBeforeResponse(UpstreamError::Io(e))));
                }
                Err(e) => return Poll::Ready(Err(Failed::Other(UpstreamError::Io(e)))),
            }
        }
    })
    .await?;
    let mut head = head;
    if broken.is_some() {
        head.keep_alive = false;
    }
    Ok((head, sending))
}

/// Starts a request on `conn`: its head goes into the write buffer.
pub(super) fn begin(conn: &mut Conn, parts: &http::request::Parts, chunked: bool) {
    conn.wbuf.clear();
    conn.wpos = 0;
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    h1::encode_head(&mut conn.wbuf, &parts.method, target, &parts.headers, chunked);
}
