//! The admin listener (loopback by default, never the public port):
//! `/healthz`, `/readyz`, `/admin/routes`, `/admin/plugins`,
//! `POST /admin/reload`, `/admin/reloads`, `/admin/tunnels` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::{GatewayBody, full};
use crate::gateway::Gateway;
use crate::reload::{Outcome, Reloads, Trigger};

/// How long `POST /admin/reload` waits for its attempt before answering 202.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

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

/// One object per plugin name: the version that serves (`loaded`), or the
/// newest file's refusal (`failed`, with `serving` when an older version
/// still serves), or a removed file that routes still use (`removed`).
fn plugins(gw: &Gateway) -> Value {
    let snapshot = gw.snapshot();
    let list: Vec<Value> = snapshot
        .plugins
        .files
        .iter()
        .map(|(name, entry)| {
            let routes: Vec<&str> = snapshot
                .router
                .routes()
                .iter()
                .filter(|r| r.plugin.as_ref().is_some_and(|p| &p.name == name))
                .map(|r| r.prefix.as_str())
                .collect();
            let serving = entry.serving.as_ref().map(|p| {
                let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let s = &p.stats;
                json!({
                    "sha256": p.sha256,
                    "loaded_at": rfc3339(p.loaded_at),
                    "compiler": p.compiler,
                    "optimizing": p.pending_optimization.is_some(),
                    "calls": n(&s.calls),
                    "failures": {
                        "trap": n(&s.traps),
                        "deadline": n(&s.timeouts),
                        "memory": n(&s.memory_limit),
                        "pool_exhausted": n(&s.busy),
                        "invalid_result": n(&s.bad_results),
                    },
                })
            });
            let mut obj = json!({"name": name, "routes": routes});
            match (&entry.refused, &serving) {
                (Some(r), _) => {
                    obj["state"] = json!("failed");
                    obj["sha256"] = json!(r.sha256);
                    obj["error"] = json!(r.error);
                    obj["failed_at"] = json!(rfc3339(r.at));
                    obj["serving"] = serving.unwrap_or(Value::Null);
                }
                (None, Some(Value::Object(fields))) => {
                    obj["state"] = json!(if entry.removed { "removed" } else { "loaded" });
                    if entry.removed {
                        obj["error"] = json!("the file was removed, but routes still use this plugin: the loaded version keeps serving");
                    }
                    for (k, v) in fields {
                        obj[k.as_str()] = v.clone();
                    }
                }
                (None, _) => obj["state"] = json!("failed"),
            }
            obj
        })
        .collect();
    Value::Array(list)
}

/// Prometheus text exposition: reload attempts and refusals, and each
/// serving plugin version's calls and failures.
fn metrics(gw: &Gateway, reloads: &Reloads) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let c = &reloads.counts;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    out.push_str("# HELP gatehouse_reloads_total Reload attempts by outcome.\n# TYPE gatehouse_reloads_total counter\n");
    for (outcome, v) in [
        ("applied", &c.applied),
        ("partial", &c.partial),
        ("refused", &c.refused),
        ("unchanged", &c.unchanged),
    ] {
        let _ = writeln!(out, "gatehouse_reloads_total{{outcome=\"{outcome}\"}} {}", n(v));
    }
    out.push_str("# HELP gatehouse_reload_refusals_total New file content refused by a reload (the previous version kept serving).\n# TYPE gatehouse_reload_refusals_total counter\n");
    for (file, v) in c.refusals.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(out, "gatehouse_reload_refusals_total{{file=\"{}\"}} {v}", label(file));
    }
    out.push_str(
        "# HELP gatehouse_websocket_tunnels_open Open WebSocket tunnels by route.\n# TYPE gatehouse_websocket_tunnels_open gauge\n",
    );
    for (route, open) in gw.tunnels.by_route() {
        let _ = writeln!(out, "gatehouse_websocket_tunnels_open{{route=\"{}\"}} {open}", label(&route));
    }
    out.push_str("# HELP gatehouse_websocket_tunnels_opened_total WebSocket tunnels opened since start.\n# TYPE gatehouse_websocket_tunnels_opened_total counter\n");
    let _ = writeln!(out, "gatehouse_websocket_tunnels_opened_total {}", gw.tunnels.opened());
    let snapshot = gw.snapshot();
    out.push_str(
        "# HELP gatehouse_plugin_calls_total Calls to the serving version of a plugin.\n# TYPE gatehouse_plugin_calls_total counter\n",
    );
    let serving: Vec<_> = snapshot.plugins.files.values().filter_map(|e| e.serving.as_ref()).collect();
    for p in &serving {
        let _ = writeln!(
            out,
            "gatehouse_plugin_calls_total{{plugin=\"{}\",version=\"{}\"}} {}",
            label(&p.name),
            &p.sha256[..12],
            n(&p.stats.calls)
        );
    }
    out.push_str("# HELP gatehouse_plugin_failures_total Failed plugin calls by kind.\n# TYPE gatehouse_plugin_failures_total counter\n");
    for p in &serving {
        let s = &p.stats;
        for (kind, v) in [
            ("trap", &s.traps),
            ("deadline", &s.timeouts),
            ("memory", &s.memory_limit),
            ("pool_exhausted", &s.busy),
            ("invalid_result", &s.bad_results),
        ] {
            let _ = writeln!(
                out,
                "gatehouse_plugin_failures_total{{plugin=\"{}\",version=\"{}\",kind=\"{kind}\"}} {}",
                label(&p.name),
                &p.sha256[..12],
                n(v)
            );
        }
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Open WebSocket tunnels: in all, per route prefix, and opened since start.
fn tunnels(gw: &Gateway) -> Value {
    let routes: serde_json::Map<String, Value> = gw.tunnels.by_route().into_iter().map(|(r, n)| (r, json!(n))).collect();
    json!({"open": gw.tunnels.open(), "routes": routes, "opened_total": gw.tunnels.opened()})
}

/// Recent reload attempts, newest first.
fn recent_reloads(reloads: &Reloads) -> Value {
    let list: Vec<Value> = reloads
        .recent()
        .iter()
        .map(|a| serde_json::to_value(&**a).unwrap_or(Value::Null))
        .collect();
    Value::Array(list)
}

/// Reloads now and answers with the attempt: 200 when it applied (or found
/// nothing to do), 422 when something was refused.
async fn reload(reloads: &Reloads) -> Response<GatewayBody> {
    let waited = tokio::time::timeout(RELOAD_WAIT, reloads.request(Trigger::Admin)).await;
    match waited {
        Ok(Some(attempt)) => {
            let status = match attempt.outcome {
                Outcome::Applied | Outcome::Unchanged => StatusCode::OK,
                Outcome::Partial | Outcome::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            };
            json_response(status, &serde_json::to_value(&*attempt).unwrap_or(Value::Null))
        }
        Ok(None) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "reloading is not running"})),
        Err(_) => json_response(StatusCode::ACCEPTED, &json!({"status": "still reloading; see GET /admin/reloads"})),
    }
}

async fn route_admin<B>(gw: &Gateway, reloads: &Reloads, req: &Request<B>) -> Response<GatewayBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") if gw.is_draining() => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"})),
        (&Method::GET, "/readyz") => json_response(StatusCode::OK, &json!({"status": "ready"})),
        (&Method::GET, "/admin/routes") => json_response(StatusCode::OK, &routes(gw)),
        (&Method::GET, "/admin/plugins") => json_response(StatusCode::OK, &plugins(gw)),
        (&Method::GET, "/admin/reloads") => json_response(StatusCode::OK, &recent_reloads(reloads)),
        (&Method::GET, "/admin/tunnels") => json_response(StatusCode::OK, &tunnels(gw)),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(full(Bytes::from(metrics(gw, reloads))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/admin/reload") => reload(reloads).await,
        (_, "/admin/reload") => json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "use POST"})),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Serves admin requests until the task is aborted: what serves from the
/// gateway, reloads through their queue and records.
pub async fn serve(gw: Arc<Gateway>, reloads: Arc<Reloads>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (gw, reloads) = (gw.clone(), reloads.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (gw, reloads) = (gw.clone(), reloads.clone());
                async move { Ok::<_, Infallible>(route_admin(&gw, &reloads, &req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
