//! The plugin sandbox's promise, black-box: a fresh instance per request
//! means fresh memory. The `leak-probe` test plugin scans its whole linear
//! memory for markers an earlier request left, then leaves its own in a
//! large static buffer and on the heap; pooled slots are reused request
//! after request, so any byte the reset misses shows up here.

mod common;

use common::*;
use serde_json::Value;

fn probe_gateway(demo: &Demo) -> Gateway {
    Gateway::start(
        demo,
        Setup {
            plugins: vec![("leak-probe.wasm".into(), plugin("leak-probe"))],
            routes: vec![(
                "probe.toml".into(),
                "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n\
                 [[route]]\nprefix = \"/probe\"\nauth = \"required\"\nplugin = \"leak-probe\"\nplugin_deadline = \"5s\"\n"
                    .into(),
            )],
            ..Setup::default()
        },
    )
}

#[test]
fn no_request_sees_memory_an_earlier_request_wrote() {
    let demo = Demo::start();
    let gw = probe_gateway(&demo);
    let users = [token("alice", Some("pro")), token("bob", Some("free"))];
    // Two users, interleaved, from two connections at once: slots are reused
    // by the same user and by the other one.
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let (gw, users) = (&gw, &users);
            scope.spawn(move || {
                let mut conn = KeepAlive::new(gw.addr);
                for n in 0..60 {
                    let user = &users[(n + worker) % 2];
                    let auth = format!("Bearer {user}");
                    let resp = conn
                        .get("/probe", &[("Authorization", &auth)])
                        .unwrap_or_else(|e| panic!("request {n}: {e}"));
                    assert_eq!(resp.status, 200, "{}", resp.text());
                    let body: Value = resp.json();
                    assert_eq!(body["found"], Value::Array(vec![]), "request {n} saw an earlier request's marker");
                    // The scanner works: it finds the markers just written
                    // (64 in the static buffer, thousands on the heap).
                    assert!(body["after"].as_u64().unwrap() > 64, "{body}");
                }
            });
        }
    });
}
