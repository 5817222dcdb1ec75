//! WebSocket through the gateway, with a real client library
//! (tokio-tungstenite) over real sockets to the realtime stand-in: echo,
//! the three token places (and that the service never sees a token), the
//! identity contract on the handshake, what is refused before the service,
//! what a service must answer for a tunnel to open, a plugin on the
//! handshake, and a tunnel's life: close both ways, idle timeout, maximum
//! lifetime, drain, concurrency and the connection cap.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as Handshake;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = WebSocketStream<TcpStream>;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opens a WebSocket to `path` with extra header fields and subprotocols.
async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)], protocols: &[&str]) -> Result<(Ws, Handshake), tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .append(tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.join(", ").parse().unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(req, stream).await
}

/// A handshake to try: what it shows, the path, header fields, subprotocols.
struct Attempt<'a> {
    how: &'a str,
    path: String,
    fields: Vec<(&'a str, &'a str)>,
    protocols: Vec<&'a str>,
}

fn attempt<'a>(how: &'a str, path: impl Into<String>, fields: &[(&'a str, &'a str)], protocols: &[&'a str]) -> Attempt<'a> {
    Attempt {
        how,
        path: path.into(),
        fields: fields.to_vec(),
        protocols: protocols.to_vec(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Reads the next text or binary message (bounded wait).
async fn next(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10s")
            .expect("the socket is open")
            .expect("a message");
        if msg.is_text() || msg.is_binary() || msg.is_close() {
            return msg;
        }
    }
}

/// The handshake the service saw, as it reports it.
async fn seen(ws: &mut Ws) -> Value {
    ws.send(Message::text("/handshake")).await.unwrap();
    match next(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn header<'a>(report: &'a Value, name: &str) -> Vec<&'a str> {
    report["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The realtime stand-in's handshake count (asked directly, not through
/// the gateway).
fn handshakes(demo: &Demo) -> u64 {
    let addr: SocketAddr = format!("127.0.0.1:{}", demo.port("realtime-service")).parse().unwrap();
    raw(addr, b"GET /_demo/handshakes HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").json()["handshakes"]
        .as_u64()
        .unwrap()
}

fn open_tunnels(gw: &Gateway) -> Value {
    admin_get(gw.admin, "/admin/tunnels").json()
}

/// A handshake as raw bytes, with extra header lines.
fn raw_handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// Reads one response (head and `Content-Length` body) off a kept-alive
/// connection.
fn read_response(s: &mut std::net::TcpStream) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    got.extend(body);
    parse_all(&got).pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_binary_a_megabyte_and_ten_thousand_messages() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let token = token("alice", Some("pro"));
    let (mut ws, resp) = open(gw.addr, "/ws", &[("authorization", &bearer(&token))], &[]).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));

    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));

    // 10,000 small messages, sent in windows of 500 and answered in order.
    for window in 0..20 {
        for i in 0..500 {
            ws.feed(Message::text(format!("m{}", window * 500 + i))).await.unwrap();
        }
        ws.flush().await.unwrap();
        for i in 0..500 {
            assert_eq!(next(&mut ws).await, Message::text(format!("m{}", window * 500 + i)));
        }
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_each_place_becomes_identity_and_never_reaches_the_service() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let token = token("alice", Some("pro"));
    let offer = format!("gatehouse.bearer.{token}");
    let auth = bearer(&token);
    let forged: [(&str, &str); 3] = [
        ("x-user-id", "admin"),
        ("x-user-tier", "enterprise"),
        ("x-forwarded-for", "6.6.6.6"),
    ];

    // Each attempt, with the path and subprotocols the service should see.
    let cases = [
        (
            attempt("authorization", "/ws?room=1", &[("authorization", &auth)], &["chat"]),
            "/ws?room=1",
            Some("chat"),
        ),
        (
            attempt("subprotocol offer", "/ws?room=1", &[], &[&offer, "chat", "superchat"]),
            "/ws?room=1",
            Some("chat, superchat"),
        ),
        (
            attempt("query", format!("/ws?room=1&access_token={token}&x=2"), &[], &[]),
            "/ws?room=1&x=2",
            None,
        ),
    ];
    for (mut a, service_path, service_protocols) in cases {
        let how = a.how;
        a.fields.extend(forged);
        let (mut ws, resp) = open(gw.addr, &a.path, &a.fields, &a.protocols)
            .await
            .unwrap_or_else(|e| panic!("{how}: {e}"));
        // The service selected the first real subprotocol; the token is never echoed.
        let selected = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap());
        assert_eq!(selected, service_protocols.map(|p| p.split(", ").next().unwrap()), "{how}");
        for (name, value) in resp.headers() {
            assert!(
                !value.to_str().unwrap().contains(&token),
                "{how}: the 101's {name} carries the token"
            );
        }
        let report = seen(&mut ws).await;
        assert!(!report.to_string().contains(&token), "{how}: the service saw the token: {report}");
        assert_eq!(report["path"], service_path, "{how}");
        assert_eq!(
            header(&report, "sec-websocket-protocol").first().copied(),
            service_protocols,
            "{how}"
        );
        assert_eq!(header(&report, "x-user-id"), ["alice"], "{how}");
        assert_eq!(header(&report, "x-user-tier"), ["pro"], "{how}");
        assert_eq!(header(&report, "x-forwarded-for"), ["127.0.0.1"], "{how}");
        assert_eq!(header(&report, "x-forwarded-host"), [gw.addr.to_string()], "{how}");
        assert_eq!(header(&report, "x-forwarded-proto"), ["http"], "{how}");
        assert!(header(&report, "authorization").is_empty(), "{how}");
        // The handshake fields went to the service as the client sent them.
        assert_eq!(header(&report, "upgrade"), ["websocket"], "{how}");
        assert_eq!(header(&report, "sec-websocket-version"), ["13"], "{how}");
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(header(&report, "x-request-id"), [id.as_str()], "{how}");
        let log = gw.log_for(&id);
        assert!(
            log.iter().any(|l| l["status"] == 101 && l["user"] == "alice" && l["path"] == "/ws"),
            "{how}: {log:?}"
        );
        ws.close(None).await.unwrap();
    }
    // Preference: Authorization over the offer over the query.
    let other = common::token("bob", None);
    let offer_bob = format!("gatehouse.bearer.{other}");
    let (mut ws, _) = open(
        gw.addr,
        &format!("/ws?access_token={other}"),
        &[("authorization", &auth)],
        &[offer_bob.as_str(), "chat"],
    )
    .await
    .unwrap();
    let report = seen(&mut ws).await;
    assert_eq!(header(&report, "x-user-id"), ["alice"]);
    assert!(!report.to_string().contains(&other));
    let (mut ws, _) = open(gw.addr, &format!("/ws?access_token={token}"), &[], &[offer_bob.as_str(), "chat"])
        .await
        .unwrap();
    assert_eq!(header(&seen(&mut ws).await, "x-user-id"), ["bob"]);

    // No log line of the gateway carries a token.
    std::thread::sleep(Duration::from_millis(200));
    for line in gw.proc.logs() {
        assert!(!line.contains(&token) && !line.contains(&other), "a token was logged: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_a_bad_one_is_refused_before_the_service() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let before = handshakes(&demo);
    let expired = token_with(json!({"sub": "alice", "exp": now() - 3600}));
    let forged = gatehouse::auth::mint_hs256(
        b"not-the-gateway-secret-0123456789abcdef",
        &json!({"sub": "alice", "exp": now() + 600}),
    )
    .unwrap();
    let bad_offer = format!("gatehouse.bearer.{forged}");
    let expired_auth = bearer(&expired);
    let cases = [
        attempt("no token", "/ws", &[], &["chat"]),
        attempt("expired bearer", "/ws", &[("authorization", &expired_auth)], &[]),
        attempt("forged offer", "/ws", &[], &[&bad_offer, "chat"]),
        attempt("garbage query", "/ws?access_token=abc.def.ghi", &[], &[]),
        attempt(
            "two query tokens",
            format!("/ws?access_token={expired}&access_token={expired}"),
            &[],
            &[],
        ),
    ];
    for Attempt {
        how,
        path,
        fields,
        protocols,
    } in cases
    {
        match open(gw.addr, &path, &fields, &protocols).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{how}");
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["request_id"].as_str(), resp.headers()["x-request-id"].to_str().ok(), "{how}");
                assert!(resp.headers().contains_key("www-authenticate"), "{how}");
            }
            other => panic!("{how}: {other:?}"),
        }
    }
    assert_eq!(handshakes(&demo), before, "a refused handshake reached the service");
}

#[test]
fn malformed_handshakes_get_400_with_the_request_id() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let before = handshakes(&demo);
    let auth = format!("Authorization: Bearer {}\r\n", token("alice", None));
    let base = |key: &str, version: &str, extra: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{key}{version}{auth}{extra}Connection: close\r\n\r\n"
        )
    };
    let key = format!("Sec-WebSocket-Key: {KEY}\r\n");
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    let cases = [
        ("no key", base("", v13, ""), "Sec-WebSocket-Key"),
        ("short key", base("Sec-WebSocket-Key: c2hvcnQ=\r\n", v13, ""), "Sec-WebSocket-Key"),
        ("two keys", base(&format!("{key}{key}"), v13, ""), "Sec-WebSocket-Key"),
        (
            "version 12",
            base(&key, "Sec-WebSocket-Version: 12\r\n", ""),
            "Sec-WebSocket-Version",
        ),
        ("no version", base(&key, "", ""), "Sec-WebSocket-Version"),
        (
            "a body",
            base(&key, v13, "Content-Length: 5\r\n").replace("\r\n\r\n", "\r\n\r\nhello"),
            "no body",
        ),
        ("POST", base(&key, v13, "").replacen("GET", "POST", 1), "GET"),
        (
            "only a token offer",
            base(&key, v13, "Sec-WebSocket-Protocol: gatehouse.bearer.x\r\n"),
            "subprotocol",
        ),
        (
            "not a websocket route",
            base(&key, v13, "").replacen("/ws", "/api/v1/users", 1),
            "does not accept WebSocket",
        ),
    ];
    for (how, request, says) in cases {
        let resp = gw.raw(&request);
        resp.assert_error(400);
        let error = resp.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{how}: {error}");
        if how == "version 12" {
            assert_eq!(resp.header("sec-websocket-version"), Some("13"), "{how}");
        }
    }
    assert_eq!(handshakes(&demo), before, "a malformed handshake reached the service");

    // Another protocol is not a WebSocket: its Upgrade goes no further, and
    // the answer is an ordinary one.
    let resp = gw.get(
        "/api/v1/users/x",
        &[
            ("Authorization", &format!("Bearer {}", token("alice", None))),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert!(resp.upstream_header("upgrade").is_empty());
    assert!(resp.upstream_header("http2-settings").is_empty());
}

#[test]
fn a_refused_upgrade_is_an_ordinary_response_and_the_connection_stays_http() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let token = token("alice", None);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(raw_handshake("/ws/_demo/refuse", &auth).as_bytes()).unwrap();
    let refused = read_response(&mut s);
    assert_eq!(refused.status, 403);
    assert!(refused.text().contains("refuses this upgrade"));
    // What the client sends next is HTTP, not a tunnel's bytes: a request
    // line is answered as a request.
    s.write_all(format!("GET /api/v1/users/after HTTP/1.1\r\nHost: gw.test\r\n{auth}\r\n").as_bytes())
        .unwrap();
    let next = read_response(&mut s);
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["path"], "/api/v1/users/after");
    // ... and a WebSocket frame is not a request.
    s.write_all(&[0x81, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1])
        .unwrap();
    let garbage = read_response(&mut s);
    assert_eq!(garbage.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_genuine_switch_opens_a_tunnel() {
    let demo = Demo::start();
    // A service that answers every request 101, whatever it asked.
    let switcher = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let switcher_port = switcher.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in switcher.incoming().take(16) {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nsmuggled");
        }
    });
    let gw = Gateway::start(
        &demo,
        Setup {
            routes: vec![(
                "switcher.toml".into(),
                format!("service = \"switcher\"\nupstream = \"http://127.0.0.1:{switcher_port}\"\n\n[[route]]\nprefix = \"/switch\"\nauth = \"public\"\nwebsocket = true\n"),
            ), (
                "down.toml".into(),
                "service = \"down\"\nupstream = \"http://127.0.0.1:1\"\n\n[[route]]\nprefix = \"/down\"\nauth = \"public\"\nwebsocket = true\n".into(),
            )],
            ..Setup::default()
        },
    );
    let auth = bearer(&token("alice", None));
    for (path, status, why) in [
        ("/ws/_demo/bad-accept", 502, "Sec-WebSocket-Accept does not match"),
        ("/ws/_demo/rogue-protocol", 502, "did not offer"),
        ("/switch", 502, "Sec-WebSocket-Accept"),
        ("/down", 502, "connect"),
    ] {
        match open(gw.addr, path, &[("authorization", &auth)], &["chat"]).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), status, "{path}");
                let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
                let log = gw.log_for(&id);
                let error = log.iter().find_map(|l| l["error"].as_str()).unwrap_or_default().to_string();
                assert!(error.contains(why), "{path}: {error}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    // A 101 to a plain GET, on a WebSocket route, is a 502 too: its bytes
    // never reach the client.
    let resp = gw.get("/switch/plain", &[]);
    resp.assert_error(502);
    assert!(!resp.text().contains("smuggled"));
    assert_eq!(open_tunnels(&gw)["open"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_runs_on_the_handshake_and_never_sees_frames() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![("tier-gate.wasm".into(), plugin("tier-gate")), ("fault.wasm".into(), plugin("fault"))],
            routes: vec![(
                "ws-plugins.toml".into(),
                "service = \"realtime-service\"\nupstream = \"http://127.0.0.1:{realtime-service}\"\n\n\
                 [[route]]\nprefix = \"/ws/premium\"\nauth = \"required\"\nwebsocket = true\nplugin = \"tier-gate\"\n[route.settings]\nmin_tier = \"pro\"\n\n\
                 [[route]]\nprefix = \"/ws/forge\"\nauth = \"required\"\nwebsocket = true\nplugin = \"fault\"\n[route.settings]\nmode = \"forge\"\n"
                    .into(),
            )],
            ..Setup::default()
        },
    );
    let before = handshakes(&demo);
    // Refused by the plugin: its answer, and the service saw nothing.
    match open(
        gw.addr,
        "/ws/premium",
        &[("authorization", &bearer(&token("freddie", Some("free"))))],
        &[],
    )
    .await
    {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("{other:?}"),
    }
    assert_eq!(handshakes(&demo), before);
    // Let through: a tunnel, with the identity the gateway verified.
    let (mut ws, _) = open(
        gw.addr,
        "/ws/premium",
        &[("authorization", &bearer(&token("polly", Some("pro"))))],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(header(&seen(&mut ws).await, "x-user-id"), ["polly"]);
    for i in 0..100 {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(format!("{i}")));
    }
    // A plugin that forges identity and adds a header: the header arrives,
    // the forgery does not, and the handshake fields are the client's.
    let token = common::token("alice", Some("free"));
    let offer = format!("gatehouse.bearer.{token}");
    let (mut ws, resp) = open(gw.addr, "/ws/forge", &[], &[offer.as_str(), "chat"]).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    let report = seen(&mut ws).await;
    assert_eq!(header(&report, "x-user-id"), ["alice"]);
    assert_eq!(header(&report, "x-user-tier"), ["free"]);
    assert_eq!(header(&report, "x-added-by-plugin"), ["fault"]);
    assert_eq!(header(&report, "sec-websocket-key").len(), 1);
    assert!(!report.to_string().contains(&token));
    let calls = admin_get(gw.admin, "/admin/plugins").json();
    let fault = calls.as_array().unwrap().iter().find(|p| p["name"] == "fault").unwrap();
    assert_eq!(fault["invocations"], 1, "the plugin ran once, on the handshake, not per frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_either_way_closes_the_other_and_half_close_is_passed_on() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let auth = bearer(&token("alice", None));
    // The client closes: the service answers the close, through the gateway.
    let (mut ws, _) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    ws.close(None).await.unwrap();
    assert!(matches!(next(&mut ws).await, Message::Close(_)));
    drop(ws);
    // The service closes: the client gets its close frame, then the end.
    let (mut ws, _) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    ws.send(Message::text("/close")).await.unwrap();
    assert!(matches!(next(&mut ws).await, Message::Close(_)));
    drop(ws);
    // TCP half-close: the client's FIN reaches the service, which ends its
    // side; that end reaches the client.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(raw_handshake("/ws", &format!("Authorization: {auth}\r\n")).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(_))), "the service's end never reached the client: {read:?}");
    let closed = wait_for(Duration::from_secs(5), || (open_tunnels(&gw)["open"] == 0).then_some(()));
    assert!(closed.is_some(), "{}", open_tunnels(&gw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_the_admin_listener_counts_open_ones() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            websocket: "idle_timeout = \"1s\"".into(),
            ..Setup::default()
        },
    );
    let auth = bearer(&token("alice", None));
    let (mut busy, _) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    let (mut idle, resp) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    let idle_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let tunnels = open_tunnels(&gw);
    assert_eq!(
        (tunnels["open"].clone(), tunnels["routes"]["/ws"].clone()),
        (json!(2), json!(2)),
        "{tunnels}"
    );
    let metrics = admin_get(gw.admin, "/metrics").text();
    assert!(metrics.contains("gatehouse_websocket_tunnels_open{route=\"/ws\"} 2"), "{metrics}");
    // The busy one talks every 300 ms for 2 s and stays open; the idle one is closed.
    let started = Instant::now();
    for i in 0..7 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        busy.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next(&mut busy).await, Message::text(format!("{i}")));
    }
    let end = tokio::time::timeout(Duration::from_secs(5), idle.next())
        .await
        .expect("the idle tunnel closes");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let logged = wait_for(Duration::from_secs(5), || {
        gw.proc
            .logs()
            .into_iter()
            .find(|l| l.contains(&idle_id) && l.contains("websocket tunnel closed"))
    })
    .expect("the tunnel's closing line");
    assert!(logged.contains("idle timeout"), "{logged}");
    assert_eq!(open_tunnels(&gw)["open"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_past_its_maximum_lifetime_is_closed_busy_or_not() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            websocket: "max_lifetime = \"1s\"".into(),
            ..Setup::default()
        },
    );
    let (mut ws, _) = open(gw.addr, "/ws", &[("authorization", &bearer(&token("alice", None)))], &[])
        .await
        .unwrap();
    let started = Instant::now();
    let mut echoed = 0;
    for i in 0..50 {
        if ws.send(Message::text(format!("{i}"))).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => echoed += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // About ten fit in the second; a loaded machine fits fewer, never all.
    assert!((2..50).contains(&echoed), "echoed {echoed}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_open_tunnels_the_grace_period_then_closes_them() {
    let demo = Demo::start();
    let mut gw = Gateway::start(
        &demo,
        Setup {
            server: "shutdown_grace = \"2s\"".into(),
            ..Setup::default()
        },
    );
    let auth = bearer(&token("alice", None));
    let (mut ws, _) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    gw.proc.terminate();
    let started = Instant::now();
    // Still working during the grace period ...
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("still here"));
    // ... while new clients are not accepted ...
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "the listener is closed during the drain"
    );
    // ... and closed when it is over; the gateway exits cleanly.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the tunnel is closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        started.elapsed()
    );
    let status = gw.proc.wait_exit(Duration::from_secs(10)).expect("the gateway exits");
    assert!(status.success(), "{status}");
    assert!(gw.proc.logs().iter().any(|l| l.contains("gateway shutting down")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sockets() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let auth = bearer(&token("alice", None));
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap().0);
    }
    assert_eq!(open_tunnels(&gw)["routes"]["/ws"], 200);
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(n, mut ws)| {
            tokio::spawn(async move {
                for i in 0..20 {
                    let text = format!("{n}:{i}");
                    ws.send(Message::text(text.clone())).await.unwrap();
                    assert_eq!(next(&mut ws).await, Message::text(text));
                }
                ws.close(None).await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let closed = wait_for(Duration::from_secs(10), || (open_tunnels(&gw)["open"] == 0).then_some(()));
    assert!(closed.is_some(), "{}", open_tunnels(&gw));
    assert_eq!(open_tunnels(&gw)["opened_total"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_hold_their_connection_slot() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            server: "max_connections = 2".into(),
            ..Setup::default()
        },
    );
    let auth = bearer(&token("alice", None));
    let (first, _) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    let (_second, _) = open(gw.addr, "/ws", &[("authorization", &auth)], &[]).await.unwrap();
    // A third client waits in the accept queue, like over HTTP ...
    let addr = gw.addr;
    let third = tokio::spawn(async move {
        open(addr, "/ws", &[("authorization", &bearer(&token("carol", None)))], &[])
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two tunnels held both slots"
    );
    // ... until a tunnel closes.
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap();
}

/// The path every web app takes: a browser cannot set `Authorization` on a
/// WebSocket, so it offers its token as a subprotocol beside its real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_opens_a_socket_with_its_token_in_the_subprotocol_offer() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let browser = common::browser::Browser::launch();
    let token = token("alice", Some("pro"));
    let script = r#"
        new Promise((resolve) => {
            const log = [];
            const done = (how) => { document.body.textContent = JSON.stringify(log); resolve({ how, log }); };
            const ws = new WebSocket("ws://ADDR/ws?room=7", ["gatehouse.bearer.TOKEN", "chat"]);
            ws.onopen = () => { log.push("open " + ws.protocol); ws.send("/handshake"); };
            ws.onmessage = (e) => {
                log.push(e.data);
                if (log.length === 2) ws.send("hello from chromium");
                else if (log.length === 3) ws.close(1000, "bye");
            };
            ws.onerror = () => log.push("error");
            ws.onclose = (e) => done("closed " + e.code);
            setTimeout(() => done("timeout"), 10000);
        })"#
    .replace("ADDR", &gw.addr.to_string())
    .replace("TOKEN", &token);
    let result = browser.evaluate(&script).await;
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    browser.screenshot(&artifacts.join("websocket-browser.png")).await;

    assert_eq!(result["how"], "closed 1000", "{result}");
    let log = result["log"].as_array().unwrap();
    assert_eq!(
        log[0], "open chat",
        "the browser kept the socket: the selected subprotocol was one it offered"
    );
    let report: Value = serde_json::from_str(log[1].as_str().unwrap()).unwrap();
    assert_eq!(header(&report, "x-user-id"), ["alice"]);
    assert_eq!(header(&report, "x-user-tier"), ["pro"]);
    assert_eq!(header(&report, "sec-websocket-protocol"), ["chat"]);
    assert_eq!(report["path"], "/ws?room=7");
    assert!(!report.to_string().contains(&token), "the service saw the token: {report}");
    assert_eq!(log[2], "hello from chromium");
    for line in gw.proc.logs() {
        assert!(!line.contains(&token), "a token was logged: {line}");
    }
}
