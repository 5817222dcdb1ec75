//! The admin listener (loopback by default, never the public port):
//! the dashboard (`/`), `/healthz`, `/readyz`, `/admin/routes`, `/admin/plugins`,
//! `POST /admin/reload`, `/admin/reloads`, `/admin/tunnels` and `/metrics`.
//!
//! Reading is open to whoever reaches the listener (a probe, Prometheus).
//! Acting (any other method: today `POST /admin/reload`) needs
//! `Authorization: Bearer $GATEHOUSE_ADMIN_TOKEN` when that token is set;
//! without one, only a listener on loopback acts (every peer of it is on the
//! same host, or in the same pod), and a listener on any other address
//! refuses every action.

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

use std::collections::BTreeMap;

use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::body::{GatewayBody, full};
use crate::client::PoolStats;
use crate::config::AdminToken;
use crate::gateway::Gateway;
use crate::metrics::{self, Scraped, Writer};
use crate::reload::{Outcome, Reloads, Trigger};
use crate::stage::authenticate;
use crate::wasm::plugin::LoadedPlugin;

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
                // The services its plugin may call besides its own.
                "calls": r.plugin.as_ref().map_or(&[][..], |p| &p.calls[..]),
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
                    "world": p.pre.world(),
                    "loaded_at": rfc3339(p.loaded_at),
                    "compiler": p.compiler,
                    "optimizing": p.pending_optimization.is_some(),
                    "invocations": n(&s.calls),
                    // Where its calls run: a plugin slower than `slow_call` runs on the plugin threads.
                    "run_us": n(&s.run_ns) / 1000,
                    "on_plugin_threads": s.is_slow(gw.runtime.limits.slow_call),
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

/// The registry `/metrics` encodes: the families requests are counted in,
/// plugin compile times, and what is read from the gateway at each scrape.
fn registry(gw: &Arc<Gateway>, reloads: &Arc<Reloads>) -> Registry {
    let mut registry = Registry::default();
    gw.metrics.register(&mut registry);
    registry.register(
        "gatehouse_plugin_compile_duration_seconds",
        "Time to compile a plugin version (or read it from the compile cache), by compiler",
        gw.runtime.compiles.clone(),
    );
    let (g, r) = (gw.clone(), reloads.clone());
    registry.register_collector(Box::new(Scraped(move |w: &mut Writer<'_, '_>| scrape(&g, &r, w))));
    registry.register_collector(Box::new(Scraped(metrics::process)));
    registry.register_collector(Box::new(Scraped(metrics::build)));
    registry
}

/// What is read from the gateway's state at each scrape: reloads, plugins
/// (per version), WebSocket tunnels and the upstream pool.
fn scrape(gw: &Gateway, reloads: &Reloads, w: &mut Writer<'_, '_>) -> std::fmt::Result {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let c = &reloads.counts;
    w.counters(
        "gatehouse_reloads",
        "Reload attempts by outcome",
        [
            ("applied", &c.applied),
            ("partial", &c.partial),
            ("refused", &c.refused),
            ("unchanged", &c.unchanged),
        ]
        .map(|(outcome, v)| ([("outcome", outcome)], n(v))),
    )?;
    let refusals: Vec<(String, u64)> = c
        .refusals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(f, v)| (f.clone(), *v))
        .collect();
    w.counters(
        "gatehouse_reload_refusals",
        "New file content refused by a reload (the previous version kept serving), by file",
        refusals.iter().map(|(file, v)| ([("file", file.as_str())], *v)),
    )?;

    let snapshot = gw.snapshot();
    let mut states: BTreeMap<&str, i64> = [("loaded", 0), ("failed", 0), ("removed", 0)].into();
    for entry in snapshot.plugins.files.values() {
        let state = match (&entry.refused, &entry.serving) {
            (Some(_), _) | (None, None) => "failed",
            (None, Some(_)) if entry.removed => "removed",
            (None, Some(_)) => "loaded",
        };
        *states.entry(state).or_default() += 1;
    }
    w.gauges(
        "gatehouse_plugins",
        "Plugin names in plugins/ by state (failed: the newest file was refused)",
        states.into_iter().map(|(state, v)| ([("state", state)], v)),
    )?;
    let serving: Vec<_> = snapshot.plugins.files.values().filter_map(|e| e.serving.as_ref()).collect();
    let version = |p: &LoadedPlugin| [("plugin", p.name.to_string()), ("version", p.sha256[..12].to_string())];
    w.counters(
        "gatehouse_plugin_calls",
        "Calls to a plugin version",
        serving.iter().map(|p| (version(p), n(&p.stats.calls))),
    )?;
    w.counters(
        "gatehouse_plugin_failures",
        "Failed calls to a plugin version, by kind",
        serving.iter().flat_map(|p| {
            let s = &p.stats;
            [
                ("trap", &s.traps),
                ("deadline", &s.timeouts),
                ("memory", &s.memory_limit),
                ("pool_exhausted", &s.busy),
                ("invalid_result", &s.bad_results),
            ]
            .map(|(kind, v)| {
                let [plugin, version] = version(p);
                ([plugin, version, ("kind", kind.to_string())], n(v))
            })
        }),
    )?;
    w.family(
        "gatehouse_plugin_duration_seconds",
        "Wall-clock time of a plugin call, instantiation included",
        MetricType::Histogram,
        serving.iter().map(|p| (version(p), p.stats.duration.clone())),
    )?;
    w.family(
        "gatehouse_plugin_peak_memory_bytes",
        "The largest linear memory of each plugin call",
        MetricType::Histogram,
        serving.iter().map(|p| (version(p), p.stats.peak_memory.clone())),
    )?;
    w.gauges(
        "gatehouse_plugin_instances_in_use",
        "Plugin instances running a call now",
        serving.iter().map(|p| (version(p), p.stats.in_use.load(Ordering::Relaxed))),
    )?;

    w.gauges(
        "gatehouse_websocket_tunnels_open",
        "Open WebSocket tunnels by route",
        gw.tunnels.by_route().into_iter().map(|(route, v)| ([("route", route)], v as i64)),
    )?;
    let none: [(&str, &str); 0] = [];
    w.counters(
        "gatehouse_websocket_tunnels_opened",
        "WebSocket tunnels opened since start",
        [(none, gw.tunnels.opened())],
    )?;

    // The pool is keyed by upstream address; a service names one.
    let services: BTreeMap<String, &str> = snapshot
        .router
        .routes()
        .iter()
        .map(|r| (r.upstream.authority.to_string(), &*r.service))
        .collect();
    let pools: Vec<PoolStats> = gw.upstream.pool_stats();
    let service = |p: &PoolStats| services.get(&p.authority).copied().unwrap_or("unknown").to_string();
    w.gauges(
        "gatehouse_upstream_connections",
        "Connections to a service, by state (idle: in the pool; active: carrying a request)",
        pools.iter().flat_map(|p| {
            [("idle", p.idle), ("active", p.open.saturating_sub(p.idle))].map(|(state, v)| {
                (
                    [
                        ("service", service(p)),
                        ("upstream", p.authority.clone()),
                        ("state", state.to_string()),
                    ],
                    v as i64,
                )
            })
        }),
    )?;
    Ok(())
}

/// The dashboard: one self-contained page (no external assets; the policy
/// says so to the browser) that reads the endpoints below and refreshes
/// itself.
fn dashboard() -> Response<GatewayBody> {
    let mut resp = Response::new(full(Bytes::from_static(include_str!("dashboard.html").as_bytes())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    resp
}

/// Ready: the gateway serves. Routes whose plugin is not loaded (they answer
/// 503 while the others serve) are listed, and the status says `degraded`;
/// it stays 200, since taking the whole gateway out of rotation would take
/// the working routes down with the broken one.
fn readiness(gw: &Gateway) -> Value {
    let snapshot = gw.snapshot();
    let degraded: Vec<Value> = snapshot
        .router
        .routes()
        .iter()
        .filter_map(|r| {
            let plugin = r.plugin.as_ref()?;
            let error = snapshot.plugins.get(&plugin.name).err()?;
            Some(json!({"route": r.prefix, "plugin": plugin.name, "error": error}))
        })
        .collect();
    let status = if degraded.is_empty() { "ready" } else { "degraded" };
    json!({"status": status, "degraded": degraded})
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

async fn route_admin<B>(gw: &Gateway, reloads: &Reloads, registry: &Registry, req: &Request<B>) -> Response<GatewayBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => dashboard(),
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") if gw.is_draining() => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "draining"})),
        (&Method::GET, "/readyz") => json_response(StatusCode::OK, &readiness(gw)),
        (&Method::GET, "/admin/routes") => json_response(StatusCode::OK, &routes(gw)),
        (&Method::GET, "/admin/plugins") => json_response(StatusCode::OK, &plugins(gw)),
        (&Method::GET, "/admin/reloads") => json_response(StatusCode::OK, &recent_reloads(reloads)),
        (&Method::GET, "/admin/tunnels") => json_response(StatusCode::OK, &tunnels(gw)),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(full(Bytes::from(metrics::encode(registry))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        (&Method::POST, "/admin/reload") => reload(reloads).await,
        (_, "/admin/reload") => json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "use POST"})),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// Who may act through the admin listener.
struct Actions {
    token: Option<AdminToken>,
    /// The listener is on a loopback address.
    loopback: bool,
}

impl Actions {
    /// The refusal of `req`, if it acts and may not.
    fn refusal<B>(&self, req: &Request<B>, peer: std::net::SocketAddr) -> Option<Response<GatewayBody>> {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let (status, error) = match &self.token {
            Some(token)
                if authenticate::bearer(req.headers())
                    .ok()
                    .flatten()
                    .is_some_and(|t| token.matches(t.as_bytes())) =>
            {
                return None;
            }
            Some(_) => (
                StatusCode::UNAUTHORIZED,
                "admin actions need Authorization: Bearer <GATEHOUSE_ADMIN_TOKEN>",
            ),
            None if self.loopback => return None,
            None => (
                StatusCode::FORBIDDEN,
                "admin actions are off: this admin listener is not on loopback and GATEHOUSE_ADMIN_TOKEN is not set",
            ),
        };
        tracing::warn!(%peer, method = %req.method(), path = req.uri().path(), "admin action refused: {error}");
        let mut resp = json_response(status, &json!({ "error": error }));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
            );
        }
        Some(resp)
    }
}

/// Serves admin requests until the task is aborted: what serves from the
/// gateway, reloads through their queue and records.
pub async fn serve(gw: Arc<Gateway>, reloads: Arc<Reloads>, listener: TcpListener) {
    let registry = Arc::new(registry(&gw, &reloads));
    let actions = Arc::new(Actions {
        token: gw.config.server.admin_token.clone(),
        loopback: listener.local_addr().is_ok_and(|a| a.ip().is_loopback()),
    });
    if actions.token.is_none() && !actions.loopback {
        tracing::warn!(
            "the admin listener is not on loopback and GATEHOUSE_ADMIN_TOKEN is not set: \
             it serves health, readiness, metrics and the dashboard, and refuses every action (POST /admin/reload)"
        );
    }
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (gw, reloads, registry, actions) = (gw.clone(), reloads.clone(), registry.clone(), actions.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (gw, reloads, registry, actions) = (gw.clone(), reloads.clone(), registry.clone(), actions.clone());
                async move {
                    if let Some(refusal) = actions.refusal(&req, peer) {
                        return Ok::<_, Infallible>(refusal);
                    }
                    Ok(route_admin(&gw, &reloads, &registry, &req).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, authorization: Option<&str>) -> Request<()> {
        let mut req = Request::builder().method(method).uri("/admin/reload");
        if let Some(value) = authorization {
            req = req.header(header::AUTHORIZATION, value);
        }
        req.body(()).unwrap()
    }

    const TOKEN: &str = "admin-token-admin-token-admin-token-0123";

    #[test]
    fn a_listener_off_loopback_acts_only_with_the_token() {
        let peer = "10.1.2.3:40000".parse().unwrap();
        let open = Actions {
            token: None,
            loopback: false,
        };
        let refused = open.refusal(&request(Method::POST, None), peer).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(open.refusal(&request(Method::GET, None), peer).is_none(), "reading stays open");
        assert!(open.refusal(&request(Method::HEAD, None), peer).is_none());

        let local = Actions {
            token: None,
            loopback: true,
        };
        assert!(local.refusal(&request(Method::POST, None), peer).is_none());

        for loopback in [false, true] {
            let guarded = Actions {
                token: Some(AdminToken::for_test(TOKEN)),
                loopback,
            };
            for bad in [None, Some("Bearer wrong"), Some(&format!("Basic {TOKEN}")), Some("Bearer")] {
                let resp = guarded.refusal(&request(Method::POST, bad), peer).expect("refused");
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
                assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
            }
            let good = format!("bearer  {TOKEN}");
            assert!(guarded.refusal(&request(Method::POST, Some(&good)), peer).is_none());
            assert!(guarded.refusal(&request(Method::GET, None), peer).is_none());
        }
    }
}
