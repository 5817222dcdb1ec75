//! Stage: log. One line per request, always, with the request id, route,
//! user, status, latency and upstream. Never tokens, never the query string.

use http::Response;

use crate::access::{self, field};
use crate::context::RequestCtx;

pub fn record<B>(ctx: &RequestCtx, resp: &Response<B>, elapsed: std::time::Duration) {
    access::write(|line| {
        line.str(field!("request_id"), ctx.request_id())
            .plain(field!("trace_id"), ctx.trace_id())
            .plain(field!("method"), ctx.method.as_str())
            .plain(field!("path"), &ctx.path);
        if let Some(r) = &ctx.route {
            line.cached(&r.log, |line| {
                line.str(field!("route"), &r.prefix)
                    .str(field!("service"), &r.service)
                    .str(field!("upstream"), r.upstream.authority.as_str());
            });
        }
        if let Some(identity) = &ctx.identity {
            line.str(field!("user"), &identity.sub);
        }
        if let Some(plugin) = &ctx.plugin {
            line.str(field!("plugin"), plugin);
        }
        line.num(field!("status"), u64::from(resp.status().as_u16()))
            .num(field!("latency_us"), elapsed.as_micros() as u64);
        if let Some(reason) = ctx.reason {
            line.plain(field!("reason"), reason);
        }
        if let Some(reason) = ctx.auth_reason {
            line.plain(field!("auth_reason"), reason);
        }
        if let Some((source, detail)) = &ctx.error {
            line.str(field!("error_source"), source.as_str()).str(field!("error"), detail);
        }
    });
}
