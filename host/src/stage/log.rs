//! Stage: log. One line per request, always, with the request id, route,
//! user, status, latency and upstream. Never tokens, never the query string.

use http::Response;

use crate::access::{self, Value};
use crate::context::RequestCtx;

pub fn record<B>(ctx: &RequestCtx, resp: &Response<B>, elapsed: std::time::Duration) {
    if !tracing::enabled!(target: access::TARGET, tracing::Level::INFO) {
        return;
    }
    let route = ctx.route.as_ref();
    let status = resp.status().as_u16();
    let latency_us = elapsed.as_micros() as u64;
    let user = ctx.identity.as_ref().map(|i| i.sub.as_str());
    let (source, detail) = match &ctx.error {
        Some((s, d)) => (Some(s.as_str()), Some(d.as_str())),
        None => (None, None),
    };
    access::write(&[
        ("request_id", Some(Value::Str(ctx.request_id()))),
        ("trace_id", Some(Value::Plain(ctx.trace_id()))),
        ("method", Some(Value::Plain(ctx.method.as_str()))),
        ("path", Some(Value::Plain(&ctx.path))),
        ("route", route.map(|r| Value::Str(r.prefix.as_str()))),
        ("service", route.map(|r| Value::Str(&r.service))),
        ("upstream", route.map(|r| Value::Str(r.upstream.authority.as_str()))),
        ("user", user.map(Value::Str)),
        ("plugin", ctx.plugin.as_deref().map(Value::Str)),
        ("status", Some(Value::Num(u64::from(status)))),
        ("latency_us", Some(Value::Num(latency_us))),
        ("reason", ctx.reason.map(Value::Plain)),
        ("auth_reason", ctx.auth_reason.map(Value::Plain)),
        ("error_source", source.map(Value::Str)),
        ("error", detail.map(Value::Str)),
    ]);
}
