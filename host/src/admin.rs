//! The admin listener (loopback by default, never the public port):
//! `/healthz`, `/readyz` and `/admin/routes`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::{GatewayBody, full};
use crate::gateway::Gateway;

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
                "source": r.source(),
            })
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
