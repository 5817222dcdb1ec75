//! Stage: log. One line per request, always, with the request id, route,
//! user, status, latency and upstream. Never tokens, never the query string.

use http::Response;

use crate::context::RequestCtx;

pub fn record<B>(ctx: &RequestCtx, resp: &Response<B>) {
    let route = ctx.route.as_ref();
    let status = resp.status().as_u16();
    let latency_us = ctx.started.elapsed().as_micros() as u64;
    let user = ctx.identity.as_ref().map(|i| i.sub.as_str());
    let (source, detail) = match &ctx.error {
        Some((s, d)) => (Some(s.as_str()), Some(d.as_str())),
        None => (None, None),
    };
    tracing::info!(
        target: "gatehouse::access",
        request_id = ctx.request_id(),
        method = %ctx.method,
        path = %ctx.path,
        route = route.map(|r| r.prefix.as_str()),
        service = route.map(|r| &*r.service),
        upstream = route.map(|r| r.upstream.authority.as_str()),
        user,
        plugin = ctx.plugin.as_deref(),
        status,
        latency_us,
        error_source = source,
        error = detail,
        "request"
    );
}
