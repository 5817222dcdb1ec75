//! The identity header contract and JWT verification, black-box: the real
//! gateway in front of the real stand-in services, raw HTTP over TCP.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// Every spoofing shape a client might try, as raw header lines.
const SPOOFS: &[(&str, &str)] = &[
    ("X-User-ID", "admin"),
    ("x-user-id", "0"),
    ("X-USER-ID", "root"),
    ("X_User_ID", "underscore"),
    ("x-user_tier", "enterprise"),
    ("X-User-Tier", "enterprise"),
    ("X-User-Role", "admin"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
];

/// Asserts the upstream saw none of the spoofed values.
fn assert_no_spoof(resp: &Response) {
    let doc = resp.json();
    let headers = doc["headers"].as_object().unwrap();
    for (name, _) in headers {
        assert!(!name.contains('_'), "underscore header reached upstream: {name}");
        for banned in [
            "x-user-role",
            "x-forwarded-port",
            "forwarded",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
        ] {
            assert_ne!(name, banned, "{banned} reached upstream");
        }
    }
    for (name, bad) in SPOOFS {
        for seen in resp.upstream_header(name) {
            assert!(!seen.contains(bad), "{name}: spoofed value {bad:?} reached upstream ({seen:?})");
        }
    }
    assert_eq!(resp.upstream_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(resp.upstream_header("x-forwarded-proto"), ["http"]);
    assert_eq!(resp.upstream_header("x-forwarded-host"), ["gw.test"]);
}

fn with_spoofs<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    SPOOFS.iter().copied().chain(extra.iter().copied()).collect()
}

fn optional_route() -> Setup {
    Setup {
        routes: vec![(
            "extra.toml".into(),
            "service = \"knowledge-service\"\nupstream = \"http://127.0.0.1:{knowledge-service}\"\n\n[[route]]\nprefix = \"/api/v1/feed\"\nauth = \"optional\"\n\n[[route]]\nprefix = \"/api/v1/tokened\"\nauth = \"required\"\nforward_token = true\n".into(),
        )],
        ..Setup::default()
    }
}

#[test]
fn required_route_injects_verified_identity_and_strips_every_spoof() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("42", Some("pro"));
    let auth = format!("Bearer {tok}");
    let resp = gw.get("/api/areas?x=1", &with_spoofs(&[("Authorization", &auth)]));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["service"], "knowledge-service");
    assert_eq!(doc["path"], "/api/areas?x=1", "the path reaches the upstream unchanged");
    assert_eq!(resp.upstream_header("x-user-id"), ["42"]);
    assert_eq!(resp.upstream_header("x-user-tier"), ["pro"]);
    assert_eq!(resp.upstream_header("host"), ["gw.test"], "Host is preserved");
    assert!(
        resp.upstream_header("authorization").is_empty(),
        "the token is not forwarded by default"
    );
    assert_no_spoof(&resp);
    let id = resp.header("x-request-id").unwrap();
    assert_eq!(resp.upstream_header("x-request-id"), [id]);
}

#[test]
fn absent_tier_claim_means_absent_header() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let resp = gw.get(
        "/api/v1/users/me",
        &[("Authorization", &format!("Bearer {}", token("7", None))), ("X-User-Tier", "pro")],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.upstream_header("x-user-id"), ["7"]);
    assert!(resp.upstream_header("x-user-tier").is_empty());
}

#[test]
fn public_route_forwards_no_identity_even_with_a_valid_token() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let auth = format!("Bearer {}", token("42", Some("pro")));
    // (/webhooks/polar is public too, but its plugin answers; see tests/plugins.rs.)
    for path in ["/api/v1/auth/login", "/api/v1/auth/register?next=/x"] {
        let resp = gw.get(path, &with_spoofs(&[("Authorization", &auth)]));
        assert_eq!(resp.status, 200, "{path}");
        assert!(resp.upstream_header("x-user-id").is_empty(), "{path}");
        assert!(resp.upstream_header("x-user-tier").is_empty(), "{path}");
        assert!(resp.upstream_header("authorization").is_empty(), "{path}");
        assert_no_spoof(&resp);
    }
    // A garbage token on a public route is simply not looked at.
    assert_eq!(gw.get("/api/v1/auth/login", &[("Authorization", "Bearer garbage")]).status, 200);
}

#[test]
fn optional_route_anonymous_signed_in_and_bad_token() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, optional_route());
    // No token: anonymous, and the client's identity claims are still stripped (envoy#35553).
    let anon = gw.get("/api/v1/feed", &with_spoofs(&[]));
    assert_eq!(anon.status, 200);
    assert!(anon.upstream_header("x-user-id").is_empty());
    assert!(anon.upstream_header("x-user-tier").is_empty());
    assert_no_spoof(&anon);
    // Valid token: identity.
    let signed = gw.get(
        "/api/v1/feed",
        &with_spoofs(&[("Authorization", &format!("Bearer {}", token("9", Some("free"))))]),
    );
    assert_eq!(signed.upstream_header("x-user-id"), ["9"]);
    assert_eq!(signed.upstream_header("x-user-tier"), ["free"]);
    // Bad or expired token, or another scheme: 401, never silently anonymous.
    let expired = token_with(json!({"sub": "9", "exp": now() - 3600}));
    for auth in [
        "Bearer garbage".to_string(),
        format!("Bearer {expired}"),
        "Basic dXNlcjpwdw==".into(),
        "Bearer".into(),
    ] {
        let resp = gw.get("/api/v1/feed", &[("Authorization", &auth)]);
        resp.assert_error(401);
        assert!(resp.header("www-authenticate").unwrap().starts_with("Bearer"));
    }
}

#[test]
fn forward_token_opt_in_passes_authorization() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, optional_route());
    let tok = token("5", None);
    let resp = gw.get_as("/api/v1/tokened/x", &tok);
    assert_eq!(resp.upstream_header("authorization"), [format!("Bearer {tok}")]);
}

#[test]
fn connection_header_cannot_remove_injected_headers() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("42", Some("pro"));
    let req = format!(
        "GET /api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nConnection: close, X-User-ID, X-User-Tier, X-Request-ID, X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, Authorization\r\nX-Custom: gone\r\nConnection: X-Custom\r\n\r\n"
    );
    let resp = gw.raw(&req);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.upstream_header("x-user-id"), ["42"]);
    assert_eq!(resp.upstream_header("x-user-tier"), ["pro"]);
    assert_eq!(resp.upstream_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(resp.upstream_header("x-forwarded-host"), ["gw.test"]);
    assert_eq!(resp.upstream_header("x-request-id").len(), 1);
    assert!(
        resp.upstream_header("x-custom").is_empty(),
        "fields named in Connection are hop-by-hop"
    );
    assert!(
        resp.upstream_header("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-user"))
    );
}

#[test]
fn identity_in_chunked_trailers_never_reaches_upstream() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("42", None);
    let req = format!(
        "POST /api/areas HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-ID, X-Forwarded-For, X-Ok\r\nTE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-User-ID: admin\r\nX-Forwarded-For: 6.6.6.6\r\nX-Ok: 1\r\n\r\n"
    );
    let resp = gw.raw(&req);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["body"], "hello");
    assert_eq!(resp.upstream_header("x-user-id"), ["42"]);
    let trailers: Vec<String> = doc["trailers"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    assert!(trailers.iter().any(|t| t == "x-ok"), "benign trailers are forwarded: {trailers:?}");
    assert!(!trailers.iter().any(|t| t == "x-user-id" || t == "x-forwarded-for"), "{trailers:?}");
}

#[test]
fn request_id_kept_when_well_formed_and_generated_otherwise() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("1", None);
    let auth = format!("Bearer {tok}");
    let kept = gw.get("/api/areas", &[("Authorization", &auth), ("X-Request-ID", "trace-abc_123.x")]);
    assert_eq!(kept.header("x-request-id"), Some("trace-abc_123.x"));
    assert_eq!(kept.upstream_header("x-request-id"), ["trace-abc_123.x"]);

    let long = "a".repeat(129);
    for bad in [
        vec![("X-Request-ID", "has space")],
        vec![("X-Request-ID", long.as_str())],
        vec![("X-Request-ID", "a"), ("X-Request-ID", "b")],
    ] {
        let mut headers = bad.clone();
        headers.push(("Authorization", &auth));
        let resp = gw.get("/api/areas", &headers);
        let id = resp.header("x-request-id").unwrap().to_string();
        let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7, "{id}");
        assert_eq!(resp.upstream_header("x-request-id"), [id]);
    }
    // Errors carry it too, in header and body alike.
    let missing = gw.get("/api/areas", &[("X-Request-ID", "err-1")]);
    assert_eq!(missing.assert_error(401), "err-1");
    assert_eq!(gw.get("/nowhere", &[("X-Request-ID", "err-2")]).assert_error(404), "err-2");
}

#[test]
fn trusted_proxy_forwarding_headers_are_kept_and_extended() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            server: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
            ..Setup::default()
        },
    );
    let auth = format!("Bearer {}", token("42", None));
    let resp = gw.get(
        "/api/areas",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "api.example.com"),
            ("X-User-ID", "spoof"),
            ("X_Forwarded_For", "6.6.6.6"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.upstream_header("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(resp.upstream_header("x-forwarded-proto"), ["https"]);
    assert_eq!(resp.upstream_header("x-forwarded-host"), ["api.example.com"]);
    assert_eq!(
        resp.upstream_header("x-user-id"),
        ["42"],
        "identity is never trusted, even from a proxy"
    );
    assert!(!resp.text().contains("6.6.6.6"));
}

fn keyfile(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/keys").join(name)).unwrap()
}

#[test]
fn every_bad_token_kind_is_refused_with_401() {
    let demo = Demo::start();
    let keys = repo().join("tests/keys");
    let auth = format!(
        "[[auth.keys]]\nkid = \"rsa-1\"\nalg = \"RS256\"\npem_file = \"{}\"\n",
        keys.join("rs256.pub").display()
    );
    let gw = Gateway::start(&demo, Setup { auth, ..Setup::default() });
    let t = now();
    let b64 = |v: serde_json::Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    let rsa = EncodingKey::from_rsa_pem(&keyfile("rs256.key")).unwrap();
    let other = EncodingKey::from_rsa_pem(&keyfile("other-rs256.key")).unwrap();
    let rs = |key: &EncodingKey, claims: serde_json::Value| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    // Good tokens of both kinds pass.
    assert_eq!(
        gw.get_as("/api/areas", &rs(&rsa, json!({"sub": "r", "exp": t + 60})))
            .upstream_header("x-user-id"),
        ["r"]
    );
    assert_eq!(gw.get_as("/api/areas", &token("h", None)).upstream_header("x-user-id"), ["h"]);

    let hs_with_rsa_public = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &json!({"sub": "x", "exp": t + 60}),
        &EncodingKey::from_secret(&keyfile("rs256.pub")),
    )
    .unwrap();
    let cases = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                b64(json!({"sub": "x", "exp": t + 60}))
            ),
        ),
        ("expired", token_with(json!({"sub": "x", "exp": t - 3600}))),
        ("wrong key", rs(&other, json!({"sub": "x", "exp": t + 60}))),
        (
            "wrong secret",
            gatehouse::auth::mint_hs256(b"not-the-secret-not-the-secret-not-it", &json!({"sub": "x", "exp": t + 60})).unwrap(),
        ),
        ("wrong alg for the key", hs_with_rsa_public),
        ("missing sub", token_with(json!({"exp": t + 60}))),
        (
            "control character in sub",
            token_with(json!({"sub": "1\nX-User-ID: 0", "exp": t + 60})),
        ),
        ("future nbf", token_with(json!({"sub": "x", "exp": t + 600, "nbf": t + 300}))),
        ("no exp", token_with(json!({"sub": "x"}))),
        ("garbage", "garbage".into()),
        ("oversized", format!("{}.{}.sig", b64(json!({"alg": "HS256"})), "a".repeat(9000))),
        (
            "crit",
            format!(
                "{}.{}.sig",
                b64(json!({"alg": "HS256", "crit": ["x"]})),
                b64(json!({"sub": "x", "exp": t + 60}))
            ),
        ),
    ];
    for (name, tok) in cases {
        let resp = gw.get_as("/api/areas", &tok);
        assert_eq!(resp.status, 401, "{name}: {}", resp.text());
        resp.assert_error(401);
        assert!(resp.header("www-authenticate").unwrap().starts_with("Bearer"), "{name}");
        assert!(!resp.text().contains("x-user-id"), "{name}: nothing was forwarded");
    }
    // Tokens are never logged. Lines are written in order by one background
    // thread: once this last request's line is out, every earlier one is.
    let last = gw.get("/api/areas", &[("X-Request-ID", "bad-tokens-done")]);
    assert_eq!(last.status, 401);
    assert!(!gw.log_for("bad-tokens-done").is_empty());
    let logs = gw.proc.logs().join("\n");
    assert!(!logs.contains(&token("h", None)[..40]), "a token reached the log");
}

#[test]
fn http2_prior_knowledge_is_served_with_the_same_contract() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("42", Some("pro"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let doc: serde_json::Value = rt.block_on(async {
        use http_body_util::{BodyExt, Empty};
        let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("http://api.example.test/api/areas?h2=1")
            .header("authorization", format!("Bearer {tok}"))
            .header("x-user-id", "spoof")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-request-id"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    });
    assert_eq!(doc["path"], "/api/areas?h2=1");
    assert_eq!(doc["headers"]["x-user-id"], json!(["42"]));
    assert_eq!(doc["headers"]["x-forwarded-host"], json!(["api.example.test"]));
    assert_eq!(doc["headers"]["host"], json!(["api.example.test"]));
}

#[test]
fn trace_context_is_kept_replaced_when_malformed_or_started_and_logged() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("42", None);
    let auth = format!("Bearer {tok}");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let logged_trace = |resp: &Response| -> String {
        let id = resp.header("x-request-id").unwrap();
        let line = gw
            .log_for(id)
            .into_iter()
            .find(|l| l["status"].is_number())
            .expect("an access line");
        line["trace_id"].as_str().unwrap().to_string()
    };
    let trace_of = |tp: &str| tp.split('-').nth(1).unwrap().to_string();

    // Kept: the service sees it unchanged, with its tracestate.
    let resp = gw.get(
        "/api/areas",
        &[
            ("Authorization", &auth),
            ("traceparent", parent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    );
    assert_eq!(resp.upstream_header("traceparent"), vec![parent.to_string()]);
    assert_eq!(resp.upstream_header("tracestate"), vec!["congo=t61rcWkgMzE".to_string()]);
    assert_eq!(logged_trace(&resp), "4bf92f3577b34da6a3ce929d0e0e4736");

    // Absent: a new trace starts here, and the log names it.
    let resp = gw.get("/api/areas", &[("Authorization", &auth)]);
    let started = resp.upstream_header("traceparent");
    assert_eq!(started.len(), 1);
    let parts: Vec<&str> = started[0].split('-').collect();
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "00"),
        "{started:?}"
    );
    assert_eq!(logged_trace(&resp), parts[1]);

    // Malformed (or repeated): replaced, never forwarded, and its tracestate dropped.
    for bad in [
        vec![("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")],
        vec![("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],
        vec![("traceparent", "garbage")],
        vec![("traceparent", parent), ("traceparent", parent)],
    ] {
        let mut headers = vec![("Authorization", auth.as_str()), ("tracestate", "congo=t61rcWkgMzE")];
        headers.extend(bad.iter().copied());
        let resp = gw.get("/api/areas", &headers);
        let seen = resp.upstream_header("traceparent");
        assert_eq!(seen.len(), 1, "{bad:?}: {seen:?}");
        assert_ne!(trace_of(&seen[0]), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
        assert_ne!(seen[0].to_lowercase(), bad[0].1.to_lowercase(), "{bad:?}");
        assert!(resp.upstream_header("tracestate").is_empty(), "{bad:?}");
        assert_eq!(logged_trace(&resp), trace_of(&seen[0]), "{bad:?}");
    }

    // A refused request has a trace id in its line too.
    let resp = gw.get("/api/areas", &[("traceparent", parent)]);
    assert_eq!(resp.status, 401);
    assert_eq!(logged_trace(&resp), "4bf92f3577b34da6a3ce929d0e0e4736");
}
