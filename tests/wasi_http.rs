//! `wasi:http/proxy` components as route handlers, black-box: the real
//! gateway, a component built with the `wasip2` crate (no Gatehouse WIT;
//! plugins/testing/wasi-http/), raw HTTP over loopback sockets.

mod common;

use common::*;
use serde_json::Value;

/// A route run by the wasi:http probe: its own service is user-service,
/// and it may also call knowledge-service.
fn probe_gateway(demo: &Demo) -> Gateway {
    let routes = "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n\
                  [[route]]\nprefix = \"/h\"\nauth = \"required\"\nplugin = \"wasi-http\"\ncalls = [\"knowledge-service\"]\nplugin_deadline = \"300ms\"\nplugin_max_body = \"256KiB\"\n\n\
                  [[route]]\nprefix = \"/open\"\nauth = \"public\"\nplugin = \"wasi-http\"\n";
    let others = "service = \"knowledge-service\"\nupstream = \"http://127.0.0.1:{knowledge-service}\"\n\n[[route]]\nprefix = \"/k\"\nauth = \"required\"\n\n\
                  # Configured, but not in the probe route's `calls`.\n";
    let payments = "service = \"payment-service\"\nupstream = \"http://127.0.0.1:{payment-service}\"\n\n[[route]]\nprefix = \"/p\"\nauth = \"required\"\n";
    Gateway::start(
        demo,
        Setup {
            plugins: vec![
                ("wasi-http.wasm".into(), plugin("wasi-http-probe")),
                ("hello.wasm".into(), plugin("hello")),
            ],
            routes: vec![
                ("probe.toml".into(), routes.into()),
                ("knowledge.toml".into(), others.into()),
                ("payments.toml".into(), payments.into()),
            ],
            shipped_routes: false,
            ..Setup::default()
        },
    )
}

fn plugins(gw: &Gateway) -> Vec<Value> {
    admin_get(gw.admin, "/admin/plugins").json().as_array().unwrap().clone()
}

/// What the probe's `?call=<url>` made of its outgoing request.
fn call(gw: &Gateway, url: &str, tok: &str) -> Value {
    let resp = gw.get_as(&format!("/h/call?call={url}"), tok);
    assert_eq!(resp.status, 200, "{url}: {}", resp.text());
    resp.json()
}

#[test]
fn a_wasi_http_component_gets_the_verified_caller_and_streams_its_answer() {
    let demo = Demo::start();
    let gw = probe_gateway(&demo);
    let tok = token("42", Some("pro"));
    let resp = gw.get(
        "/h/who?x=1",
        &[
            ("Authorization", &format!("Bearer {tok}")),
            ("X-User-ID", "7"),
            ("X-User-Tier", "enterprise"),
        ],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let doc = resp.json();
    assert_eq!(doc["world"], "wasi:http", "{doc}");
    assert_eq!(doc["method"], "GET", "{doc}");
    assert_eq!(doc["path"], "/h/who?x=1", "{doc}");
    // The identity contract ran first: the verified caller, nothing forged,
    // and the token itself is not handed on.
    assert_eq!(doc["x-user-id"], "42", "{doc}");
    assert_eq!(doc["x-user-tier"], "pro", "{doc}");
    assert_eq!(doc["x-request-id"].as_str(), resp.header("x-request-id"), "{doc}");
    assert_eq!(doc["authorization"], Value::Null, "{doc}");
    // Written in three chunks, streamed as they came.
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"), "{:?}", resp.headers);

    // Public route: a forged identity is gone, and there is no caller.
    let doc = gw.get("/open", &[("X-User-ID", "1")]).json();
    assert_eq!(doc["x-user-id"], Value::Null, "{doc}");
    // A required route without a token never reaches the component.
    gw.get("/h/who", &[]).assert_error(401);

    // One plugin of each kind, told apart on /admin/plugins.
    let listed = plugins(&gw);
    let probe = listed.iter().find(|p| p["name"] == "wasi-http").expect("listed");
    assert_eq!(probe["world"], "wasi:http/proxy@0.2.12", "{probe}");
    assert!(probe["invocations"].as_u64().unwrap() >= 2, "{probe}");
    let hello = listed.iter().find(|p| p["name"] == "hello").expect("listed");
    assert_eq!(hello["world"], "gatehouse:plugin/route-handler@0.1.0", "{hello}");
}

#[test]
fn outgoing_requests_reach_only_the_routes_services_with_the_identity() {
    let demo = Demo::start();
    let gw = probe_gateway(&demo);
    let tok = token("42", Some("pro"));
    // The route's own service and one its `calls` lists, by name.
    for (url, service) in [
        ("http://user-service/api/v1/users/42", "user-service"),
        ("http://knowledge-service/api/areas?page=2", "knowledge-service"),
        ("http://knowledge-service:80/api/areas", "knowledge-service"),
    ] {
        let doc = call(&gw, url, &tok);
        assert_eq!(doc["status"], 200, "{url}: {doc}");
        let seen: Value = serde_json::from_str(doc["body"].as_str().unwrap()).unwrap();
        assert_eq!(seen["service"], service, "{url}: {seen}");
        assert_eq!(seen["headers"]["x-user-id"], serde_json::json!(["42"]), "{url}: {seen}");
        assert_eq!(seen["headers"]["x-user-tier"], serde_json::json!(["pro"]), "{url}: {seen}");
        assert!(seen["headers"]["x-request-id"].is_array(), "{url}: {seen}");
    }
    // Everything else is refused before it leaves the gateway.
    let port = demo.port("knowledge-service");
    for url in [
        "http://payment-service/api/v1/payments".to_string(),
        format!("http://127.0.0.1:{port}/api/areas"),
        format!("http://knowledge-service:{port}/api/areas"),
        "https://knowledge-service/api/areas".to_string(),
        "http://example.com/".to_string(),
        "http://user@knowledge-service/".to_string(),
    ] {
        let doc = call(&gw, &url, &tok);
        assert_eq!(doc["error"], "ErrorCode::HttpRequestDenied", "{url}: {doc}");
    }
}

#[test]
fn wasi_http_faults_fail_only_their_request_and_are_counted() {
    let demo = Demo::start();
    let gw = probe_gateway(&demo);
    let tok = token("42", Some("pro"));
    let id = gw.get_as("/h?trap", &tok).assert_error(500);
    assert!(gw.log_for(&id).iter().any(|l| l["plugin"] == "wasi-http"));
    gw.get_as("/h?spin", &tok).assert_error(504);
    let text = gw.get_as("/h?nothing", &tok).assert_error(500);
    assert!(!text.is_empty());
    assert_eq!(gw.get_as("/h/after", &tok).status, 200, "the route keeps serving");
    let probe = plugins(&gw).into_iter().find(|p| p["name"] == "wasi-http").unwrap();
    let failures = &probe["failures"];
    assert_eq!(failures["trap"], 1, "{probe}");
    assert_eq!(failures["deadline"], 1, "{probe}");
    assert_eq!(failures["invalid_result"], 1, "{probe}");
}

#[test]
fn wasi_http_bodies_stream_under_the_routes_cap() {
    let demo = Demo::start();
    let gw = probe_gateway(&demo);
    let tok = token("42", Some("pro"));
    let auth = format!("Authorization: Bearer {tok}\r\n");
    // A request body streams in and is read to its end.
    let body = "b".repeat(100_000);
    let resp = gw.raw(&format!(
        "POST /h?echo HTTP/1.1\r\nHost: gw.test\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["received"], 100_000);
    // Over the route's 256 KiB: refused up front when declared...
    let big = "b".repeat(300_000);
    let resp = gw.raw(&format!(
        "POST /h?echo HTTP/1.1\r\nHost: gw.test\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    ));
    assert_eq!(resp.status, 413, "{}", resp.text());
    // ... and when it only turns out so as it streams (chunked): the
    // component's read fails, and the client gets the 413 all the same.
    let resp = gw.raw(&format!(
        "POST /h?echo HTTP/1.1\r\nHost: gw.test\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    ));
    assert_eq!(resp.status, 413, "{}", resp.text());
    // A response body streams out whole under the cap, and is cut past it.
    let resp = gw.get_as("/h?big=200000", &tok);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 200_000);
    assert!(resp.raw.ends_with(b"0\r\n\r\n"), "a complete chunked body");
    let resp = gw.get_as("/h?big=1000000", &tok);
    assert_eq!(resp.status, 200);
    assert!(resp.body.len() <= 256 * 1024, "{} bytes passed a 256 KiB cap", resp.body.len());
    assert!(!resp.raw.ends_with(b"0\r\n\r\n"), "a cut body must not look complete");
    assert_eq!(gw.get_as("/h/after", &tok).status, 200, "the route keeps serving");
}
