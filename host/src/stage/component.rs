//! Stage: component. On a route with a plugin, hands the verified caller and
//! the (already stripped and stamped) request to a fresh instance of the
//! plugin, then turns its action into a response or a request to forward,
//! with the identity contract re-applied. A `wasi:http` component gets the
//! stamped request itself (body streamed in, under the cap) and streams its
//! response out. Routes without a plugin pass through untouched and keep
//! their streamed body.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::body::GatewayBody;
use crate::body::{BodyTooLarge, BoxError, RequestBody};
use crate::client::UpstreamClient;
use crate::config::{AuthMode, RoutePlugin};
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::headers::Contract;
use crate::headers::strip_hop_by_hop;
use crate::snapshot::Snapshot;
use crate::wasm::bindings::PluginPre;
use crate::wasm::bindings::{self, Action, Caller, RequestInfo};
use crate::wasm::call::{Budget, Claim};
use crate::wasm::host::PluginState;
use crate::wasm::outbound::{Outbound, to_http, to_http_response, to_wit_headers};
use crate::wasm::plugin::PluginStats;
use crate::wasm::{CallError, LoadedPlugin, Runtime, call};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use wasmtime_wasi_http::Error as WasiError;

/// What happens next.
pub enum Handled {
    /// No plugin on this route: proxy the client's request as it is.
    Native(Request<Incoming>),
    /// The plugin rewrote the request: send this to the route's service.
    Forward(Request<Full<Bytes>>),
    /// The plugin answered.
    Respond(Response<GatewayBody>),
}

/// Runs the route's plugin, if it has one, on a fresh instance from
/// `runtime`; its `forward` and `upstream.send` go through `upstream`.
pub async fn run(
    ctx: &mut RequestCtx,
    runtime: &Runtime,
    upstream: &UpstreamClient,
    snapshot: &Snapshot,
    req: Request<Incoming>,
) -> Result<Handled, GatewayError> {
    // Native routes leave at once, without touching a reference count.
    let Some(rp) = ctx.route()?.plugin.clone() else {
        return Ok(Handled::Native(req));
    };
    // Boxed: the plugin call's future is large, and inline it would make
    // every request's future (boxed and moved per request) that large too.
    Box::pin(call_plugin(ctx, runtime, upstream, snapshot, rp, req)).await
}

async fn call_plugin(
    ctx: &mut RequestCtx,
    runtime: &Runtime,
    upstream: &UpstreamClient,
    snapshot: &Snapshot,
    rp: Arc<RoutePlugin>,
    req: Request<Incoming>,
) -> Result<Handled, GatewayError> {
    let route = ctx.route()?.clone();
    ctx.plugin = Some(rp.name.as_str().into());
    let plugin = snapshot.plugins.get(&rp.name).map_err(GatewayError::PluginUnavailable)?.clone();
    let limits = &runtime.limits;
    let max_body = rp.max_body.unwrap_or(limits.max_body).min(route.max_body);
    let outbound = |headers: &http::HeaderMap| {
        Arc::new(Outbound {
            client: upstream.clone(),
            service: route.service.clone(),
            upstream: route.upstream.clone(),
            services: snapshot.services.clone(),
            calls: rp.calls.clone(),
            contract: Arc::new(Contract::capture(headers)),
            host: ctx.host.clone(),
            max_body,
            plugin: plugin.name.clone(),
            request_id: ctx.request_id.clone(),
        })
    };
    let memory = rp.memory.unwrap_or(limits.memory) as usize;
    let deadline = rp.deadline.unwrap_or(limits.deadline);
    let failed = |e: CallError| match e {
        CallError::Busy => GatewayError::PluginUnavailable(format!("plugin {}: {e}", plugin.name)),
        CallError::Deadline(_) => GatewayError::PluginTimeout(format!("plugin {}: {e}", plugin.name)),
        CallError::Memory(_) | CallError::Trap(_) | CallError::NoResponse(_) => {
            GatewayError::PluginFailed(format!("plugin {}: {e}", plugin.name))
        }
    };

    if matches!(plugin.pre, PluginPre::WasiHttp { .. }) {
        let outbound = outbound(req.headers());
        let state = PluginState::new(plugin.name.clone(), ctx.request_id().to_string(), rp.clone(), outbound, memory);
        return serve_http(runtime, &plugin, state, deadline, max_body, &route.service, req)
            .await
            .map_err(failed);
    }

    let (parts, body) = req.into_parts();
    if parts.headers.values().any(|v| std::str::from_utf8(v.as_bytes()).is_err()) {
        return Err(GatewayError::bad_request("header values must be UTF-8 on this route"));
    }
    if body.size_hint().exact().is_some_and(|n| n > max_body) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX))
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::PayloadTooLarge
            } else {
                GatewayError::bad_request("the request body could not be read")
            }
        })?
        .to_bytes();

    let caller = ctx.identity.as_ref().filter(|_| route.auth != AuthMode::Public).map(|id| Caller {
        user_id: id.sub.clone(),
        tier: id.tier.clone(),
        claims: rp
            .claims
            .iter()
            .filter_map(|name| id.claims.get(name).map(|v| (name.clone(), v.to_string())))
            .collect(),
    });
    let info = RequestInfo {
        request_id: ctx.request_id().to_string(),
        route_prefix: route.prefix.clone(),
        service: route.service.to_string(),
    };
    let request = bindings::Request {
        method: parts.method.as_str().to_string(),
        path_with_query: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_string(),
        headers: to_wit_headers(&parts.headers),
        body: body.to_vec(),
    };
    let outbound = outbound(&parts.headers);
    let contract = outbound.contract.clone();
    let state = PluginState::new(plugin.name.clone(), info.request_id.clone(), rp.clone(), outbound, memory);

    // A plugin whose calls run long goes to the plugin threads, below the
    // I/O workers' priority: other routes keep their latency beside it.
    // Its deadline counts from here: time spent waiting for a plugin thread
    // is part of it.
    let since = Instant::now();
    let action = if plugin.stats.is_slow(limits.slow_call) {
        let (slow, claim) = (plugin.clone(), Claim::default());
        let claimed = claim.clone();
        // Boxed: inline, this branch's future (a whole call) would make
        // every plugin request's future that much larger to move.
        let offloaded = runtime.offload(Box::pin(async move {
            if !claimed.start() {
                return Err(CallError::Deadline(deadline));
            }
            let budget = Budget {
                since,
                deadline,
                claim: Some(&claimed),
            };
            call(&slow, state, budget, caller, info, request).await
        }));
        // Past the deadline the client gets its 504 at once, whether or not
        // the plugin thread has run since (dropping the wait cancels it).
        match claim.wait(&plugin.stats, deadline, offloaded).await {
            Some(Ok(done)) => done,
            Some(Err(e)) => Err(CallError::Trap(format!("on the plugin threads: {e}"))),
            None => Err(CallError::Deadline(deadline)),
        }
    } else {
        let budget = Budget {
            since,
            deadline,
            claim: None,
        };
        call(&plugin, state, budget, caller, info, request).await
    };
    let action = action.map_err(failed)?;
    let bad_result = |what: &str, why: String| {
        PluginStats::bump(&plugin.stats.bad_results);
        GatewayError::PluginFailed(format!("plugin {}: invalid {what}: {why}", plugin.name))
    };
    match action {
        Action::Respond(resp) => {
            let resp = to_http_response(resp, max_body).map_err(|why| bad_result("response", why))?;
            Ok(Handled::Respond(resp.map(|b| b.map_err(|never| match never {}).boxed_unsync())))
        }
        Action::Forward(req) => {
            let req = to_http(req, &contract).map_err(|why| bad_result("forward", why))?;
            Ok(Handled::Forward(req))
        }
    }
}

/// Hands a `wasi:http` component the stamped request, its body streamed in
/// under `max_body`, and turns its response into the client's: the body
/// streams out, cut short past `max_body` or when the component fails.
async fn serve_http(
    runtime: &Runtime,
    plugin: &Arc<LoadedPlugin>,
    state: PluginState,
    deadline: std::time::Duration,
    max_body: u64,
    service: &str,
    req: Request<Incoming>,
) -> Result<Handled, CallError> {
    let (mut parts, body) = req.into_parts();
    if body.size_hint().exact().is_some_and(|n| n > max_body) {
        return Ok(Handled::Respond(GatewayError::PayloadTooLarge.into_response(&state.request_id)));
    }
    // `wasi:http` wants an authority: the client's `Host`, else the service.
    if !parts.headers.contains_key(http::header::HOST) {
        parts.headers.insert(http::header::HOST, crate::headers::value(service));
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let body = RequestBody::new(body, max_body, exceeded.clone(), false)
        .map_err(|e| {
            if e.is::<BodyTooLarge>() {
                WasiError::HttpRequestBodySize(None)
            } else {
                WasiError::HttpProtocolError
            }
        })
        .boxed_unsync();
    let request_id = state.request_id.clone();
    let answer = call::serve_http(runtime, plugin, state, deadline, Request::from_parts(parts, body)).await;
    // A body past the cap was cut short under the component: whatever it
    // made of what it got (an error, or an answer to half a request), the
    // client gets the 413 it would get on any other route.
    if exceeded.load(Ordering::Relaxed) {
        return Ok(Handled::Respond(GatewayError::PayloadTooLarge.into_response(&request_id)));
    }
    let resp = answer?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = Limited::new(
        body.map_err(|code| -> BoxError { format!("the plugin's response body failed: {code:?}").into() }),
        limit,
    );
    Ok(Handled::Respond(Response::from_parts(parts, body.boxed_unsync())))
}
