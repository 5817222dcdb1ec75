//! The admin listener (loopback by default, never the public port):
//! `/healthz`, `/readyz`, `/admin/routes` and `/admin/plugins`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::{GatewayBody, full};
use crate::gateway::Gateway;
use crate::wasm::PluginFile;

fn json_response(status: StatusCode, body: &Value) -> Response<GatewayBody> {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    resp
}

fn routes(gw: &Gateway) -> Value {
    let snapshot = gw.snapshot();
    let list: Vec<Value> = snapshot
        .router
        .routes()
        .iter()
        .map(|r| {
            json!({
                "prefix": r.prefix,
                "service": &*r.service,
                "upstream": format!("{}://{}", r.upstream.scheme, r.upstream.authority),
                "auth": r.auth,
                "max_body": r.max_body,
                "forward_token": r.forward_token,
                "websocket": r.websocket,
                "plugin": r.plugin.as_ref().map(|p| &p.name),
                "source": r.source(),
            })
        })
        .collect();
    Value::Array(list)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One object per file in the plugins folder (loaded or failed), with the
/// routes that use it.
fn plugins(gw: &Gateway) -> Value {
    let snapshot = gw.snapshot();
    let list: Vec<Value> = snapshot
        .plugins
        .files
        .iter()
        .map(|(name, file)| {
            let routes: Vec<&str> = snapshot
                .router
                .routes()
                .iter()
                .filter(|r| r.plugin.as_ref().is_some_and(|p| &p.name == name))
                .map(|r| r.prefix.as_str())
                .collect();
            match file {
                PluginFile::Loaded(p) => {
                    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
                    let s = &p.stats;
                    json!({
                        "name": name,
                        "sha256": p.sha256,
                        "state": "loaded",
                        "loaded_at": rfc3339(p.loaded_at),
                        "routes": routes,
                        "calls": n(&s.calls),
                        "failures": {
                            "trap": n(&s.traps),
                            "deadline": n(&s.timeouts),
                            "memory": n(&s.memory_limit),
                            "pool_exhausted": n(&s.busy),
                            "invalid_result": n(&s.bad_results),
                        },
                    })
                }
                PluginFile::Failed { sha256, error, at } => json!({
                    "name": name,
                    "sha256": sha256,
                    "state": "failed",
                    "error": error,
                    "failed_at": rfc3339(*at),
                    "routes": routes,
                }),
            }
        })
        .collect();
    Value::Array(list)
}

fn route_admin<B>(gw: &Gateway, req: &Request<B>) -> Response<GatewayBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") if gw.is_draining() => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"})),
        (&Method::GET, "/readyz") => json_response(StatusCode::OK, &json!({"status": "ready"})),
        (&Method::GET, "/admin/routes") => json_response(StatusCode::OK, &routes(gw)),
        (&Method::GET, "/admin/plugins") => json_response(StatusCode::OK, &plugins(gw)),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves admin requests until the task is aborted.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let gw = gw.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = route_admin(&gw, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
