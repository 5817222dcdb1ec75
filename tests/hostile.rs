//! Hostile clients: path escapes, request smuggling shapes, oversized
//! headers and bodies, slow headers, connection floods. After each, the
//! gateway must still serve.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn ok_after(gw: &Gateway) {
    let resp = gw.get_as("/api/areas", &token("1", None));
    assert_eq!(resp.status, 200, "the gateway keeps serving: {}", resp.text());
}

#[test]
fn path_escapes_from_a_public_prefix_land_on_the_protected_route_or_400() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    // Dot segments (raw and encoded) resolve before matching: the request is
    // judged by the route it really targets, which requires a token.
    for path in [
        "/webhooks/polar/../../api/v1/users",
        "/webhooks/polar/%2e%2e/%2E%2E/api/v1/users",
        "/webhooks/polar/.%2e/.%2e/api/v1/users",
        "/webhooks//polar/./../../api/v1/users/",
        "/webhooks/polar/../../api/v1/%75sers",
    ] {
        gw.get(path, &[]).assert_error(401);
    }
    // With a token, the upstream sees the normalized path at the right service.
    let resp = gw.get_as("/webhooks/polar/%2e%2e/%2e%2e/api/v1/users/7?q=1", &token("1", None));
    assert_eq!(resp.json()["service"], "user-service");
    assert_eq!(resp.json()["path"], "/api/v1/users/7?q=1");
    // Raw UTF-8 in the target (the URI parser lets it through) reaches the
    // service percent-encoded, as the bytes the client sent (found by fuzzing:
    // it used to be re-encoded as Latin-1).
    let resp = gw.get_as("/api/v1/users/caf\u{e9}/%c3%a9", &token("1", None));
    assert_eq!(resp.json()["path"], "/api/v1/users/caf%C3%A9/%C3%A9", "{}", resp.text());
    // Separators a downstream could decode differently, control bytes, broken escapes, climbing above the root.
    for path in [
        "/webhooks/polar/..%2f..%2fapi/v1/users",
        "/webhooks/polar/..%2F..%2Fapi/v1/users",
        "/webhooks/polar/..%5c..%5capi/v1/users",
        "/webhooks/polar/%00",
        "/webhooks/polar/%zz",
        "/../api/v1/users",
        "/webhooks/../../../api",
    ] {
        gw.get(path, &[]).assert_error(400);
    }
    // A segment that merely starts like a prefix is not under it.
    gw.get("/webhooks/polarx", &[]).assert_error(404);
    gw.get("/api/v1/usersX", &[]).assert_error(404);
    ok_after(&gw);
}

#[test]
fn request_target_forms_and_host_rules() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("1", None);
    let cases = [
        (
            "absolute-form",
            format!("GET http://gw.test/api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "asterisk-form",
            "OPTIONS * HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".to_string(),
        ),
        (
            "authority-form",
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n".to_string(),
        ),
        (
            "missing Host",
            format!("GET /api/areas HTTP/1.1\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "duplicate Host",
            format!("GET /api/areas HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"),
        ),
    ];
    for (name, req) in cases {
        let resp = gw.raw(&req);
        assert_eq!(resp.status, 400, "{name}: {}", String::from_utf8_lossy(&resp.raw));
        if name != "authority-form" {
            resp.assert_error(400);
        }
    }
    ok_after(&gw);
}

#[test]
fn conflicting_content_length_is_refused() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("1", None);
    let req = format!(
        "POST /api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    let all = parse_all(&raw_all(gw.addr, req.as_bytes()));
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, 400);
    ok_after(&gw);
}

/// CL + TE: RFC 9112 §6.1 lets a server reject it (400) or frame by
/// Transfer-Encoding and close the connection after responding. Either way the
/// bytes hidden after the chunked body must never become a second request.
#[test]
fn content_length_with_transfer_encoding_cannot_smuggle() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("1", None);
    let smuggled = "GET /api/v1/users/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    for te in ["chunked", "Chunked", "gzip, chunked"] {
        let req = format!(
            "POST /api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nContent-Length: 4\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n{smuggled}"
        );
        let all = parse_all(&raw_all(gw.addr, req.as_bytes()));
        assert!(!all.is_empty());
        assert!(
            all.len() == 1,
            "{te}: the smuggled request was served: {:?}",
            all.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        let first = &all[0];
        assert!(first.status == 400 || first.status == 200, "{te}: {}", first.status);
        if first.status == 200 {
            // Framed by TE: the upstream got an empty body and no second request.
            assert_eq!(first.json()["body_bytes"], 0);
            assert!(first.upstream_header("content-length").iter().all(|v| v == "0"));
        }
    }
    // Obfuscated TE values are not chunked: the request is refused, not guessed at.
    let req = format!(
        "POST /api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let all = parse_all(&raw_all(gw.addr, req.as_bytes()));
    assert!(all.iter().all(|r| r.status != 200 || !r.text().contains("smuggled")));
    ok_after(&gw);
}

#[test]
fn oversized_headers_get_431_and_token_size_is_capped() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            server: "max_header_bytes = \"16KiB\"\nmax_headers = 20".into(),
            ..Setup::default()
        },
    );
    // Over the configured size: the gateway's own 431 with a request id.
    let big = "a".repeat(20 * 1024);
    gw.get("/api/areas", &[("X-Big", &big)]).assert_error(431);
    // Far over it: hyper refuses while parsing, still 431.
    let huge = "a".repeat(200 * 1024);
    assert_eq!(gw.get("/api/areas", &[("X-Big", &huge)]).status, 431);
    // Too many headers.
    let many: Vec<(String, String)> = (0..25).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    gw.get("/api/areas", &refs).assert_error(431);
    ok_after(&gw);
}

#[test]
fn body_over_the_route_limit_gets_413_declared_or_streamed() {
    let demo = Demo::start();
    let routes = vec![(
        "small.toml".into(),
        "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n[[route]]\nprefix = \"/small\"\nauth = \"public\"\nmax_body = \"1KiB\"\n".into(),
    )];
    let gw = Gateway::start(
        &demo,
        Setup {
            routes,
            ..Setup::default()
        },
    );
    // Declared: refused before anything is read or forwarded.
    let started = Instant::now();
    let resp = raw(gw.addr, b"POST /small HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5000000\r\n\r\n");
    resp.assert_error(413);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Streamed (chunked) past the cap.
    let chunk = "a".repeat(600);
    let req = format!(
        "POST /small HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    gw.raw(&req).assert_error(413);
    // Within the cap: forwarded whole.
    let req = format!("POST /small HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 600\r\nConnection: close\r\n\r\n{chunk}");
    assert_eq!(gw.raw(&req).json()["body_bytes"], 600);
    ok_after(&gw);
}

#[test]
fn slow_header_clients_are_cut_off() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            server: "header_read_timeout = \"1s\"".into(),
            ..Setup::default()
        },
    );
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /api/areas HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "the connection was held for {waited:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    ok_after(&gw);
}

#[test]
fn connection_cap_holds_further_clients_until_one_leaves() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            server: "max_connections = 2".into(),
            ..Setup::default()
        },
    );
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(gw.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(gw.addr).unwrap();
    third
        .write_all(b"GET /api/v1/auth/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    third.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 64];
    assert!(third.read(&mut buf).is_err(), "a third connection was served while two were open");
    drop(idle);
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    third.read_to_end(&mut all).unwrap();
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let req = "GET /api/v1/auth/one HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /api/v1/auth/three HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let all = parse_all(&raw_all(gw.addr, req.as_bytes()));
    let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 200]);
    assert_eq!(all[2].json()["path"], "/api/v1/auth/three");
}
