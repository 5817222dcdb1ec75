//! Stage: upstream. Sends the request to the route's service over the pooled
//! client, streaming the body both ways: declared bodies over the route's cap
//! get 413 before connecting, streamed ones when they cross it; connection
//! failures are 502, timeouts 504. The request is shaped by
//! [`crate::outbound`], the response passes the response stage.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::{BodyTooLarge, BoxError, GatewayBody, IdleBody, RequestBody};
use crate::client::{HeadError, UpstreamClient, UpstreamError};
use crate::config::Route;
use crate::context::RequestCtx;
use crate::error::{GatewayError, causes, chain};
use crate::metrics::{Metrics, Name, UpstreamErrorLabels};

pub async fn forward<B>(
    ctx: &RequestCtx,
    req: Request<B>,
    up: &UpstreamClient,
    metrics: &Metrics,
) -> Result<Response<GatewayBody>, GatewayError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let route = ctx.route()?.clone();
    let (mut parts, body) = req.into_parts();

    // Framing is re-derived from the body by the client: a request that
    // declared both Content-Length and Transfer-Encoding can never reach the
    // service that way. (Transfer-Encoding is hop-by-hop: the identity stage
    // removed it.)
    if body.size_hint().exact().is_some_and(|len| len > route.max_body) {
        return Err(GatewayError::PayloadTooLarge);
    }
    crate::outbound::to_service(&mut parts, ctx.host.as_ref(), &route.upstream);

    // A request without a body (most GETs) needs no size guard.
    let exceeded = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let body = match &exceeded {
        Some(flag) => RequestBody::new(body, route.max_body, flag.clone(), route.forward_token).boxed_unsync(),
        None => crate::body::empty(),
    };
    // Pinned in place: the timeout then wraps a pointer, not a copy of the
    // exchange's future.
    let sent = std::pin::pin!(up.request(&route.upstream, Request::from_parts(parts, body)));
    let started = Instant::now();
    let resp = match tokio::time::timeout(up.first_byte_timeout, sent).await {
        Err(_) => return Err(no_answer(metrics, &route, up)),
        Ok(Err(e)) if exceeded.is_some_and(|f| f.load(Ordering::Relaxed)) || caused_by::<BodyTooLarge>(&e) => {
            return Err(GatewayError::PayloadTooLarge);
        }
        Ok(Err(e)) => return Err(failed(metrics, &route, &e)),
        Ok(Ok(resp)) => resp,
    };
    metrics.upstream_answered(&route, started.elapsed());
    // The client dropped what the response stage drops as it parsed the head.
    Ok(resp.map(|body| IdleBody::new(body, up.idle_timeout).boxed_unsync()))
}

/// Counts a request to `route`'s service that got no response head within
/// the first-byte timeout, and says so.
pub(crate) fn no_answer(metrics: &Metrics, route: &Route, up: &UpstreamClient) -> GatewayError {
    count_error(metrics, route, "timeout");
    GatewayError::UpstreamTimeout(format!(
        "no response from {} within {:?}",
        route.upstream.authority, up.first_byte_timeout
    ))
}

/// Counts a request to `route`'s service that failed, by kind, and turns
/// the failure into the client's 502 or 504.
pub(crate) fn failed(metrics: &Metrics, route: &Route, err: &UpstreamError) -> GatewayError {
    count_error(metrics, route, kind(err));
    classify(err, route.upstream.authority.as_str())
}

/// Counts a request to `route`'s service that got no response.
pub(crate) fn count_error(metrics: &Metrics, route: &Route, kind: &'static str) {
    metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels {
            service: Name(route.service.clone()),
            kind,
        })
        .inc();
}

/// True when an I/O timeout is among `err`'s causes (a connect timeout).
fn timed_out(err: &UpstreamError) -> bool {
    chain(err)
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// Why a service gave no response, from a closed set: `refused` (no
/// connection), `reset` (the connection broke or closed), `timeout`,
/// `too_large` (a response head over the limit), `invalid_response`.
fn kind(err: &UpstreamError) -> &'static str {
    match err {
        _ if timed_out(err) => "timeout",
        UpstreamError::Connect(_) => "refused",
        UpstreamError::BadResponse(HeadError::TooLarge(_)) => "too_large",
        UpstreamError::BadResponse(_) => "invalid_response",
        UpstreamError::Io(_) | UpstreamError::Closed | UpstreamError::Truncated | UpstreamError::Body(_) => "reset",
    }
}

fn caused_by<E: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    chain(err).any(|e| e.is::<E>())
}

fn classify(err: &UpstreamError, upstream: &str) -> GatewayError {
    let bad_response = err.is_bad_response() || matches!(err, UpstreamError::Truncated);
    let detail = format!("{upstream}: {}", causes(err));
    if timed_out(err) {
        GatewayError::UpstreamTimeout(detail)
    } else if bad_response {
        GatewayError::UpstreamBadResponse(detail)
    } else {
        GatewayError::UpstreamUnavailable(detail)
    }
}
