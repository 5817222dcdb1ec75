//! Body types and wrappers: the gateway's one boxed body, the request-body
//! guard (size cap, trailer stripping) and the upstream idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::Sleep;

use crate::headers::strip_client_trailers;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every gateway response and upstream request uses.
pub type GatewayBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body.
pub fn full(bytes: Bytes) -> GatewayBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body. Costs no allocation: the boxed body has no size.
pub fn empty() -> GatewayBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The request body ended early because it passed the route's cap.
#[derive(Debug, thiserror::Error)]
#[error("request body over the route's limit")]
pub struct BodyTooLarge;

pin_project_lite::pin_project! {
    /// Guards a client's request body on its way upstream: counts bytes
    /// against the cap (flagging `exceeded` so the caller can answer 413) and
    /// strips from chunked trailers every field that is not theirs to carry
    /// ([`strip_client_trailers`]).
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: u64,
        exceeded: Arc<AtomicBool>,
        keep_authorization: bool,
    }
}

impl<B> RequestBody<B> {
    /// `keep_authorization`: the route forwards the client's token, so an
    /// `Authorization` trailer may pass too.
    pub fn new(inner: B, limit: u64, exceeded: Arc<AtomicBool>, keep_authorization: bool) -> Self {
        RequestBody {
            inner,
            seen: 0,
            limit,
            exceeded,
            keep_authorization,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                *this.seen += data.len() as u64;
                if *this.seen > *this.limit {
                    this.exceeded.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
                Frame::data(data)
            }
            Err(frame) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    strip_client_trailers(&mut trailers, *this.keep_authorization);
                    Frame::trailers(trailers)
                }
                Err(other) => other,
            },
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream went quiet for longer than the idle timeout mid-body.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle timeout")]
pub struct IdleTimeout;

pin_project_lite::pin_project! {
    /// Fails a streamed body that makes no progress for `idle`. The timer is
    /// armed only when the body stalls, so bodies that are ready at once never
    /// touch the clock or the timer wheel.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleBody { inner, idle, timer: None }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.set(None);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.timer.is_none() {
                    this.timer.set(Some(tokio::time::sleep(*this.idle)));
                }
                let timer = this.timer.as_pin_mut().expect("armed just above");
                ready!(timer.poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
