//! Stage: component. On a route with a plugin, hands the verified caller and
//! the (already stripped and stamped) request to a fresh instance of the
//! plugin, then turns its action into a response or a request to forward,
//! with the identity contract re-applied. Routes without a plugin pass
//! through untouched and keep their streamed body.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::body::GatewayBody;
use crate::client::UpstreamClient;
use crate::config::{AuthMode, RoutePlugin};
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::headers::Contract;
use crate::snapshot::Snapshot;
use crate::wasm::bindings::{self, Action, Caller, RequestInfo};
use crate::wasm::host::PluginState;
use crate::wasm::outbound::{Outbound, to_http, to_http_response, to_wit_headers};
use crate::wasm::plugin::PluginStats;
use crate::wasm::{CallError, Runtime, call};

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
    let contract = Arc::new(Contract::capture(&parts.headers));
    let outbound = Outbound {
        client: upstream.clone(),
        service: route.service.clone(),
        upstream: route.upstream.clone(),
        services: snapshot.services.clone(),
        calls: rp.calls.clone(),
        contract: contract.clone(),
        host: ctx.host.clone(),
        max_body,
    };
    let memory = rp.memory.unwrap_or(limits.memory) as usize;
    let state = PluginState::new(plugin.name.clone(), info.request_id.clone(), rp.clone(), outbound, memory);
    let deadline = rp.deadline.unwrap_or(limits.deadline);

    let action = call(&plugin, state, deadline, caller, info, request).await.map_err(|e| match e {
        CallError::Busy => GatewayError::PluginUnavailable(format!("plugin {}: {e}", plugin.name)),
        CallError::Deadline(_) => GatewayError::PluginTimeout(format!("plugin {}: {e}", plugin.name)),
        CallError::Memory(_) | CallError::Trap(_) => GatewayError::PluginFailed(format!("plugin {}: {e}", plugin.name)),
    })?;
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
