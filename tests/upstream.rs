//! Upstream handling: errors mapped to 502/504 with the request id, response
//! cleaning, streaming both ways, pooled connections.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn setup_with_timeouts() -> Setup {
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    Setup {
        upstream: "first_byte_timeout = \"500ms\"\nidle_timeout = \"700ms\"".into(),
        routes: vec![(
            "down.toml".into(),
            format!(
                "service = \"down-service\"\nupstream = \"http://127.0.0.1:{down}\"\n\n[[route]]\nprefix = \"/down\"\nauth = \"public\"\n"
            ),
        )],
        ..Setup::default()
    }
}

#[test]
fn unreachable_upstream_is_502_with_request_id_and_no_detail() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, setup_with_timeouts());
    let resp = gw.get("/down/x", &[("X-Request-ID", "down-1")]);
    assert_eq!(resp.assert_error(502), "down-1");
    assert!(!resp.text().contains("127.0.0.1"), "the upstream address leaked: {}", resp.text());
    let log = gw.log_for("down-1");
    assert!(log.iter().any(|l| l["status"] == 502 && l["error_source"] == "upstream"), "{log:?}");
}

#[test]
fn slow_upstream_is_504() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, setup_with_timeouts());
    let started = Instant::now();
    gw.get_as("/api/areas/_demo/delay?ms=3000", &token("1", None)).assert_error(504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "the first-byte timeout did not fire"
    );
    // A fast answer on the same route still works.
    assert_eq!(gw.get_as("/api/areas/_demo/delay?ms=10", &token("1", None)).status, 200);
}

#[test]
fn upstream_status_codes_pass_through() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    for code in [201, 404, 500, 503] {
        let resp = gw.get_as(&format!("/api/areas/_demo/status?code={code}"), &token("1", None));
        assert_eq!(resp.status, code);
        assert!(resp.header("x-request-id").is_some());
    }
}

#[test]
fn oversized_upstream_headers_are_502() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let resp = gw.get_as("/api/areas/_demo/huge-headers", &token("1", None));
    resp.assert_error(502);
    assert_eq!(resp.json()["error"], "upstream sent an invalid response", "{}", resp.text());
}

#[test]
fn hop_by_hop_and_internal_response_headers_are_removed() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let resp = gw.get_as("/api/areas/_demo/hop-by-hop", &token("1", None));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-demo-end-to-end"), Some("kept"));
    for gone in ["x-demo-hop", "keep-alive", "proxy-authenticate", "server"] {
        assert!(resp.header(gone).is_none(), "{gone} passed through");
    }
    // One `Date`, the gateway's own, not the upstream's.
    let dates = resp.headers_named("date");
    assert_eq!(dates.len(), 1, "{:?}", resp.headers);
    assert!(!dates[0].contains("1970"), "the upstream's Date passed through: {}", dates[0]);
    assert!(
        resp.headers_named("connection").iter().all(|v| v.eq_ignore_ascii_case("close")),
        "{:?}",
        resp.headers
    );
}

#[test]
fn upstream_reset_mid_response_does_not_hurt_the_gateway() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let resp = gw.get_as("/api/areas/_demo/reset", &token("1", None));
    assert_eq!(resp.status, 200, "headers were already sent");
    assert!(resp.body.len() < 1000, "the truncated body is not padded");
    assert_eq!(gw.get_as("/api/areas", &token("1", None)).status, 200);
}

#[test]
fn response_bodies_stream_and_stalled_ones_are_cut() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, setup_with_timeouts());
    let tok = token("1", None);
    // Three chunks 400 ms apart: the first arrives long before the last is sent.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    write!(
        s,
        "GET /api/areas/_demo/stream?chunks=3&ms=400 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut first_chunk_at = None;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_chunk_at.is_none() && String::from_utf8_lossy(&got).contains("chunk 0") {
            first_chunk_at = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("chunk 2"), "{text}");
    assert!(total >= Duration::from_millis(800));
    assert!(
        first_chunk_at.unwrap() + Duration::from_millis(600) <= total,
        "the body was buffered: first chunk at {first_chunk_at:?}, end at {total:?}"
    );

    // A body that stalls longer than the idle timeout (700 ms) is cut.
    let resp = gw.get_as("/api/areas/_demo/stream?chunks=3&ms=2000", &tok);
    assert!(
        resp.text().contains("chunk 0") && !resp.text().contains("chunk 1"),
        "{}",
        resp.text()
    );
}

#[test]
fn large_request_bodies_stream_through() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("1", None);
    let body = vec![b'x'; 5 << 20];
    let mut req = format!(
        "POST /api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = raw(gw.addr, &req);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_bytes"], 5 << 20);
    assert_eq!(resp.upstream_header("content-length"), [(5 << 20).to_string()]);
}

#[test]
fn upstream_connections_are_pooled() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("1", None);
    let peers: Vec<String> = (0..5)
        .map(|_| gw.get_as("/api/areas", &tok).json()["peer"].as_str().unwrap().to_string())
        .collect();
    assert!(
        peers.windows(2).all(|w| w[0] == w[1]),
        "each request opened a new upstream connection: {peers:?}"
    );
}

/// An upstream that answers one request per connection with keep-alive
/// framing and then closes it, as an upstream's idle timeout does: the
/// gateway finds its pooled connection closed (or has its request refused
/// on it) and must open a new one without failing the client's request.
#[test]
fn upstream_closing_idle_connections_costs_no_request() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    const REQUESTS: usize = 30;
    let upstream = std::thread::spawn(move || {
        let mut served = 0;
        // One connection per request, at most; each answered then closed.
        for stream in listener.incoming().take(REQUESTS) {
            let mut s = stream.unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            if head.is_empty() {
                continue;
            }
            served += 1;
            let body = format!("conn {served}");
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
        served
    });
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            routes: vec![(
                "closing.toml".into(),
                format!(
                    "service = \"closing-service\"\nupstream = \"http://127.0.0.1:{port}\"\n\n[[route]]\nprefix = \"/closing\"\nauth = \"public\"\n"
                ),
            )],
            workers: 1,
            ..Setup::default()
        },
    );
    // Back to back on one client connection, then with pauses that let the
    // gateway see each close first.
    let mut client = KeepAlive::new(gw.addr);
    for i in 0..REQUESTS {
        let resp = client.get("/closing/x", &[]).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
        assert!(resp.text().starts_with("conn "), "request {i}: {}", resp.text());
        if i >= REQUESTS / 2 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(client);
    drop(gw);
    assert_eq!(upstream.join().unwrap(), REQUESTS, "one upstream connection per request");
}

/// A client that leaves in the middle of a streamed response: the upstream
/// connection it was using is never handed to the next request while it is
/// still mid-response, so the next caller gets its own, whole answer.
#[test]
fn a_client_leaving_mid_response_does_not_poison_the_pool() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            workers: 1,
            ..Setup::default()
        },
    );
    let tok = token("1", None);
    for round in 0..3 {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/areas/_demo/stream?chunks=5&ms=300 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("chunk 0") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "round {round}: closed before the first chunk");
            got.extend_from_slice(&buf[..n]);
        }
        drop(s);
        for i in 0..3 {
            let resp = gw.get_as(&format!("/api/areas/after-{round}-{i}"), &tok);
            assert_eq!(resp.status, 200, "round {round}, request {i}: {}", resp.text());
            assert_eq!(
                resp.json()["path"],
                format!("/api/areas/after-{round}-{i}"),
                "round {round}, request {i}"
            );
        }
    }
}
