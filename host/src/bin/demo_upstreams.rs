//! `demo-upstreams`: stand-ins for the five services, for development and
//! tests. Each echoes what it received as JSON; realtime-service is also a
//! WebSocket echo server; every one serves misbehaving answers under `/_demo/`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

const SERVICES: [&str; 5] = [
    "user-service",
    "knowledge-service",
    "gamification-service",
    "payment-service",
    "realtime-service",
];

#[derive(Parser)]
#[command(about = "Stand-ins for the five Gatehouse demo services (ports base..base+4)")]
struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// First port (user-service); the others follow. 0 picks free ports.
    #[arg(long, default_value_t = 8081)]
    base_port: u16,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn echo(service: &str, peer: SocketAddr, req: Request<Incoming>, status: StatusCode) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let collected = body.collect().await.map(|c| {
        let trailers = c.trailers().map(|t| t.keys().map(|k| k.as_str().to_string()).collect::<Vec<_>>());
        (c.to_bytes(), trailers)
    });
    let (body, trailers) = collected.unwrap_or_default();
    let doc = json!({
        "service": service,
        "peer": peer.to_string(),
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_bytes": body.len(),
        "trailers": trailers,
    });
    let mut resp = Response::new(full(doc.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Answers with `chunks` pieces of body, `pause` apart; a `fail_after` makes
/// the stream break (the connection is reset mid-response).
fn stream(chunks: u64, pause: Duration, fail_after: Option<u64>) -> Body {
    let s = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if fail_after == Some(i) {
            return Some((Err(std::io::Error::other("demo reset")), i + 1));
        }
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        Some((Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))), i + 1))
    });
    StreamBody::new(s).boxed_unsync()
}

/// The realtime stand-in's WebSocket side. `/_demo/refuse` answers the
/// handshake 403 (an ordinary response), `/_demo/bad-accept` answers 101 with
/// a wrong `Sec-WebSocket-Accept`, `/_demo/rogue-protocol` selects a
/// subprotocol nobody offered; otherwise it switches, selecting the first
/// subprotocol offered, and echoes text and binary messages. The text
/// message `/handshake` is answered with the handshake it saw (path and
/// headers, as JSON); `/close` makes it close the socket (code 1000).
async fn websocket(req: Request<Incoming>, demo: &str) -> Response<Body> {
    HANDSHAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Response::builder()
            .status(400)
            .body(full("missing Sec-WebSocket-Key"))
            .expect("static response");
    };
    if demo == "/_demo/refuse" {
        let mut resp = Response::new(full(r#"{"error":"the demo refuses this upgrade"}"#));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    let accept = match demo {
        "/_demo/bad-accept" => "dGhpcyBpcyBub3QgdGhlIGtleQ==".to_string(),
        _ => tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    };
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .find(|p| !p.is_empty());
    let selected = match demo {
        "/_demo/rogue-protocol" => Some("rogue".to_string()),
        _ => offered,
    };
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        seen.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let handshake = json!({
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "headers": seen,
    })
    .to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match &msg {
                Message::Text(t) if t.as_str() == "/handshake" => Message::text(handshake.clone()),
                Message::Text(t) if t.as_str() == "/close" => {
                    let _ = ws.close(None).await;
                    continue;
                }
                Message::Text(_) | Message::Binary(_) => msg,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = selected {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp.body(full(Bytes::new())).expect("static response")
}

/// WebSocket handshakes the realtime stand-in has received
/// (`GET /_demo/handshakes`), so tests can tell that one never arrived.
static HANDSHAKES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn handle(service: &'static str, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    // Misbehaviours answer under any prefix, so they can be reached through
    // the gateway's routes: `/api/v1/users/_demo/delay` is `/_demo/delay`.
    let path = req.uri().path();
    let demo = path.rfind("/_demo/").map_or(path, |i| &path[i..]).to_string();
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws && service == "realtime-service" {
        return websocket(req, &demo).await;
    }
    match demo.as_str() {
        "/_demo/handshakes" => {
            let count = HANDSHAKES.load(std::sync::atomic::Ordering::Relaxed);
            Response::new(full(json!({ "handshakes": count }).to_string()))
        }
        "/_demo/delay" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms").unwrap_or(1000))).await;
            echo(service, peer, req, StatusCode::OK).await
        }
        "/_demo/status" => {
            let code = query_num(&req, "code")
                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                .unwrap_or(StatusCode::OK);
            echo(service, peer, req, code).await
        }
        "/_demo/huge-headers" => {
            let mut resp = Response::new(full("huge"));
            for i in 0..100 {
                let name = header::HeaderName::from_bytes(format!("x-huge-{i}").as_bytes()).expect("valid name");
                resp.headers_mut()
                    .insert(name, HeaderValue::from_str(&"a".repeat(1024)).expect("valid value"));
            }
            resp
        }
        "/_demo/hop-by-hop" => {
            let mut resp = Response::new(full("hop"));
            let h = resp.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("X-Demo-Hop"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"demo\""));
            h.insert("x-demo-hop", HeaderValue::from_static("must not pass"));
            h.insert("x-demo-end-to-end", HeaderValue::from_static("kept"));
            // What the gateway does not pass on either: its own stack's name
            // and its own clock (the gateway dates responses itself).
            h.insert(header::SERVER, HeaderValue::from_static("demo-internal/1.0"));
            h.insert(header::DATE, HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            resp
        }
        "/_demo/reset" => {
            let mut resp = Response::new(stream(5, Duration::from_millis(10), Some(2)));
            resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000"));
            resp
        }
        "/_demo/stream" => {
            let chunks = query_num(&req, "chunks").unwrap_or(5);
            let pause = Duration::from_millis(query_num(&req, "ms").unwrap_or(100));
            Response::new(stream(chunks, pause, None))
        }
        _ => echo(service, peer, req, StatusCode::OK).await,
    }
}

async fn serve(service: &'static str, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |req| async move { Ok::<_, Infallible>(handle(service, peer, req).await) });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut tasks = Vec::new();
    for (i, service) in SERVICES.into_iter().enumerate() {
        let port = if args.base_port == 0 { 0 } else { args.base_port + i as u16 };
        let addr = SocketAddr::new(args.host, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{service}: cannot listen on {addr}: {e}")))?;
        println!("listening {service} {}", listener.local_addr()?);
        tasks.push(tokio::spawn(serve(service, listener)));
    }
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
