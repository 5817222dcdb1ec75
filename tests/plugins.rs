//! WebAssembly route handlers, black-box: the real gateway binary, real
//! components built from plugins/, raw HTTP over loopback sockets.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const WEBHOOK_KEY: &[u8] = b"polar-test-key-bytes";

fn bundled() -> Vec<(String, std::path::PathBuf)> {
    ["hello", "tier-gate", "polar-webhook"]
        .iter()
        .map(|n| (format!("{n}.wasm"), plugin(n)))
        .collect()
}

/// The shipped routes with the bundled plugins in place.
fn bundled_gateway(demo: &Demo) -> Gateway {
    Gateway::start(
        demo,
        Setup {
            plugins: bundled(),
            ..Setup::default()
        },
    )
}

fn webhook_secret() -> String {
    format!("whsec_{}", STANDARD.encode(WEBHOOK_KEY))
}

fn sign(key: &[u8], id: &str, ts: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn post_webhook(gw: &Gateway, headers: &[(&str, String)], body: &str) -> Response {
    let mut req = format!(
        "POST /webhooks/polar HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Connection: close\r\n\r\n{body}"));
    gw.raw(&req)
}

/// The echo of a stand-in service, as opposed to an answer from a plugin.
fn reached(resp: &Response, service: &str) -> bool {
    serde_json::from_slice::<Value>(&resp.body).is_ok_and(|d| d["service"] == service)
}

#[test]
fn hello_answers_with_the_verified_caller_and_public_routes_have_none() {
    let demo = Demo::start();
    let public = "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n[[route]]\nprefix = \"/open/hello\"\nauth = \"public\"\nplugin = \"hello\"\n\n\
                  [[route]]\nprefix = \"/claims/hello\"\nauth = \"required\"\nplugin = \"hello\"\nclaims = [\"email\", \"roles\"]\n";
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: bundled(),
            routes: vec![("open.toml".into(), public.into())],
            ..Setup::default()
        },
    );
    let resp = gw.get(
        "/api/v1/hello?x=1",
        &[
            ("Authorization", &format!("Bearer {}", token("42", Some("pro")))),
            ("X-User-ID", "7"),
        ],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["user_id"], "42", "{doc}");
    assert_eq!(doc["tier"], "pro", "{doc}");
    assert_eq!(doc["message"], "hello, 42", "{doc}");
    assert_eq!(doc["path"], "/api/v1/hello?x=1", "{doc}");
    assert_eq!(doc["request_id"].as_str(), resp.header("x-request-id"), "{doc}");
    assert!(!reached(&resp, "user-service"));
    // Without a token the route is closed before the plugin runs.
    gw.get("/api/v1/hello", &[]).assert_error(401);

    // Public route: a forged identity header and even a valid token give no caller.
    let resp = gw.get(
        "/open/hello",
        &[("X-User-ID", "1"), ("Authorization", &format!("Bearer {}", token("42", None)))],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["user_id"], Value::Null, "{doc}");
    assert_eq!(doc["message"], "hello, stranger", "{doc}");

    // The template writes its JSON by hand: quotes and backslashes in the
    // identity come out escaped, claims (non-ASCII too) as the JSON they are.
    let tok = token_with(serde_json::json!({
        "sub": "a\"b\\c", "tier": "pro", "email": "é@x.y", "roles": ["admin", {"n": 1}], "exp": now() + 600
    }));
    let resp = gw.get_as("/claims/hello?q=%22", &tok);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["user_id"], "a\"b\\c", "{doc}");
    assert_eq!(doc["message"], "hello, a\"b\\c", "{doc}");
    assert_eq!(doc["tier"], "pro", "{doc}");
    assert_eq!(
        doc["claims"],
        serde_json::json!({"email": "é@x.y", "roles": ["admin", {"n": 1}]}),
        "{doc}"
    );
    assert_eq!(doc["path"], "/claims/hello?q=%22", "{doc}");
}

#[test]
fn tier_gate_forwards_allowed_tiers_and_refuses_the_rest() {
    let demo = Demo::start();
    let gw = bundled_gateway(&demo);
    for tier in ["pro", "enterprise"] {
        let resp = gw.get_as("/api/v1/knowledge/premium/guide", &token("9", Some(tier)));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(reached(&resp, "knowledge-service"), "{}", resp.text());
        assert_eq!(resp.upstream_header("x-user-tier"), vec![tier.to_string()]);
        assert_eq!(resp.upstream_header("x-user-id"), vec!["9".to_string()]);
        assert_eq!(resp.json()["path"], "/api/v1/knowledge/premium/guide");
    }
    for tier in [Some("free"), Some("platinum"), None] {
        let resp = gw.get_as("/api/v1/knowledge/premium/guide", &token("9", tier));
        resp.assert_error(403);
        let doc = resp.json();
        assert_eq!(doc["required_tier"], "pro", "{doc}");
        assert!(doc["error"].as_str().unwrap().contains("pro"), "{doc}");
        assert!(!reached(&resp, "knowledge-service"));
    }
    // The rest of the service is untouched by the plugin.
    let resp = gw.get_as("/api/v1/knowledge/basics", &token("9", Some("free")));
    assert!(reached(&resp, "knowledge-service"));
}

#[test]
fn polar_webhook_forwards_only_genuine_webhooks() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: bundled(),
            env: vec![("POLAR_WEBHOOK_SECRET".into(), webhook_secret())],
            ..Setup::default()
        },
    );
    let body = r#"{"type":"order.paid","data":{"id":"ord_1","amount":1200}}"#;
    let id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    let ts = now().to_string();
    let good = sign(WEBHOOK_KEY, id, &ts, body);
    let headers = |sig: &str, ts: &str| {
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig.to_string()),
        ]
    };

    // Valid: forwarded untouched (rotation: one of several signatures matches).
    let resp = post_webhook(&gw, &headers(&format!("v1,AAAA {good}"), &ts), body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(reached(&resp, "payment-service"), "{}", resp.text());
    let doc = resp.json();
    assert_eq!(doc["body"], body);
    assert_eq!(doc["method"], "POST");
    assert_eq!(resp.upstream_header("webhook-id"), vec![id.to_string()]);
    assert!(resp.upstream_header("x-user-id").is_empty());

    let refused = |resp: Response| {
        resp.assert_error(401);
        assert!(!reached(&resp, "payment-service"), "{}", resp.text());
        resp.json()["error"].as_str().unwrap().to_string()
    };
    // Tampered body.
    let why = refused(post_webhook(&gw, &headers(&good, &ts), &body.replace("1200", "1")));
    assert!(why.contains("signature"), "{why}");
    // Signed with another secret.
    refused(post_webhook(&gw, &headers(&sign(b"some-other-key", id, &ts, body), &ts), body));
    // Stale (and future) timestamps, correctly signed.
    for skew in [-400i64, 400] {
        let old = (now() as i64 + skew).to_string();
        let why = refused(post_webhook(&gw, &headers(&sign(WEBHOOK_KEY, id, &old, body), &old), body));
        assert!(why.contains("tolerance"), "{why}");
    }
    // Missing headers, one at a time.
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let partial: Vec<_> = headers(&good, &ts).into_iter().filter(|(k, _)| *k != missing).collect();
        let why = refused(post_webhook(&gw, &partial, body));
        assert!(why.contains(missing), "{why}");
    }
}

#[test]
fn polar_webhook_without_a_secret_refuses_everything_and_warns_at_start() {
    let demo = Demo::start();
    let gw = bundled_gateway(&demo);
    let warned = gw
        .proc
        .logs()
        .iter()
        .any(|l| l.contains("POLAR_WEBHOOK_SECRET") && l.contains("WARN"));
    assert!(warned, "{:#?}", gw.proc.logs());
    let body = "{}";
    let ts = now().to_string();
    // Even a webhook signed with the empty key gets nowhere.
    let sig = sign(b"", "msg_1", &ts, body);
    let resp = post_webhook(
        &gw,
        &[
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ],
        body,
    );
    resp.assert_error(503);
    assert!(!reached(&resp, "payment-service"));
}

/// Routes that each run the `fault` test plugin in one mode.
fn fault_routes() -> String {
    let mut text = String::from("service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n");
    let modes: &[(&str, &str)] = &[
        ("trap", ""),
        ("loop", "plugin_deadline = \"150ms\"\n"),
        ("memory", "plugin_memory = \"16MiB\"\n"),
        ("huge-response", ""),
        ("bad-status", ""),
        ("forge", ""),
        ("print", ""),
        ("echo", "claims = [\"email\"]\n"),
    ];
    for (mode, extra) in modes {
        text.push_str(&format!(
            "\n[[route]]\nprefix = \"/fault/{mode}\"\nauth = \"required\"\nplugin = \"fault\"\n{extra}\n[route.settings]\nmode = \"{mode}\"\n"
        ));
    }
    // upstream.send: its own service, an allowed one, a forbidden one.
    text.push_str(
        "\n[[route]]\nprefix = \"/fault/send-own\"\nauth = \"required\"\nplugin = \"fault\"\n\n[route.settings]\nmode = \"send\"\n",
    );
    text.push_str("\n[[route]]\nprefix = \"/fault/send-allowed\"\nauth = \"required\"\nplugin = \"fault\"\ncalls = [\"knowledge-service\"]\n\n[route.settings]\nmode = \"send\"\nservice = \"knowledge-service\"\n");
    // A plugin waiting on its service past its own deadline.
    text.push_str("\n[[route]]\nprefix = \"/fault/send-slow\"\nauth = \"required\"\nplugin = \"fault\"\nplugin_deadline = \"300ms\"\n\n[route.settings]\nmode = \"send\"\npath = \"/_demo/delay?ms=4000\"\n");
    text.push_str("\n[[route]]\nprefix = \"/fault/send-forbidden\"\nauth = \"required\"\nplugin = \"fault\"\n\n[route.settings]\nmode = \"send\"\nservice = \"payment-service\"\n");
    // Plugins that cannot load.
    text.push_str("\n[[route]]\nprefix = \"/fault/other-version\"\nauth = \"required\"\nplugin = \"other-version\"\n");
    text.push_str("\n[[route]]\nprefix = \"/fault/garbage\"\nauth = \"required\"\nplugin = \"garbage\"\n");
    text.push_str("\n[[route]]\nprefix = \"/fault/missing\"\nauth = \"required\"\nplugin = \"missing\"\n");
    text
}

fn fault_gateway(demo: &Demo) -> Gateway {
    fault_gateway_compiled_by(demo, "tiered")
}

/// The fault gateway with `plugins.compiler` set: `cranelift` compiles with
/// Cranelift, `winch` with the baseline compiler, `tiered` with Cranelift
/// from the compile cache, else Winch first and Cranelift in the background.
fn fault_gateway_compiled_by(demo: &Demo, compiler: &str) -> Gateway {
    fault_gateway_with(demo, &format!("compiler = \"{compiler}\"\n"))
}

/// The fault gateway with extra `[plugins]` lines.
fn fault_gateway_with(demo: &Demo, plugin_limits: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not WebAssembly").unwrap();
    Gateway::start(
        demo,
        Setup {
            plugins: vec![
                ("fault.wasm".into(), plugin("fault")),
                ("other-version.wasm".into(), plugin("other-version")),
                ("garbage.wasm".into(), garbage),
            ],
            routes: vec![
                ("fault.toml".into(), fault_routes()),
                (
                    "knowledge.toml".into(),
                    "service = \"knowledge-service\"\nupstream = \"http://127.0.0.1:{knowledge-service}\"\n\n[[route]]\nprefix = \"/k\"\nauth = \"required\"\n".into(),
                ),
            ],
            shipped_routes: false,
            // Generous, so that a loaded test machine never turns a fault
            // into a timeout; the loop route sets its own short deadline.
            plugin_limits: format!("deadline = \"5s\"\n{plugin_limits}"),
            ..Setup::default()
        },
    )
}

fn admin_plugins(gw: &Gateway) -> Vec<Value> {
    let resp = raw(gw.admin, b"GET /admin/plugins HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200);
    resp.json().as_array().unwrap().clone()
}

#[test]
fn each_plugin_fault_fails_only_its_request() {
    let demo = Demo::start();
    faults_fail_only_their_request(&fault_gateway(&demo), "cranelift");
}

#[test]
fn each_plugin_fault_fails_only_its_request_in_baseline_code() {
    let demo = Demo::start();
    faults_fail_only_their_request(&fault_gateway_compiled_by(&demo, "winch"), "winch");
}

fn faults_fail_only_their_request(gw: &Gateway, compiler: &str) {
    // Tiered: a cold compile cache starts it on baseline code; wait for the
    // optimized build (seconds at most).
    let fault = wait_for(std::time::Duration::from_secs(60), || {
        admin_plugins(gw)
            .into_iter()
            .find(|p| p["name"] == "fault" && p["compiler"] == compiler && p["optimizing"] == false)
    });
    assert!(fault.is_some(), "fault never ran {compiler} code: {:?}", admin_plugins(gw));
    let tok = token("42", Some("pro"));
    let healthy = || {
        let resp = gw.get_as("/fault/echo", &tok);
        assert_eq!(resp.status, 200, "the gateway must keep serving: {}", resp.text());
    };
    healthy();
    for (path, status, counter) in [
        ("/fault/trap", 500, "trap"),
        ("/fault/loop", 504, "deadline"),
        ("/fault/memory", 500, "memory"),
        ("/fault/huge-response", 500, "invalid_result"),
        ("/fault/bad-status", 500, "invalid_result"),
    ] {
        let resp = gw.get_as(path, &tok);
        let id = resp.assert_error(status);
        // Nothing internal leaks to the client.
        let text = resp.text();
        assert!(!text.contains("wasm") && !text.contains("backtrace"), "{path}: {text}");
        let logged = gw.log_for(&id);
        assert!(
            logged.iter().any(|l| l["plugin"] == "fault" && l["status"] == status),
            "{path}: {logged:?}"
        );
        healthy();
        let fault = admin_plugins(gw).into_iter().find(|p| p["name"] == "fault").unwrap();
        assert!(fault["failures"][counter].as_u64().unwrap() >= 1, "{path}: {fault}");
    }
    // The memory bomb is reported as such in the log (written by a background thread).
    let reported = wait_for(std::time::Duration::from_secs(5), || {
        gw.proc.logs().iter().any(|l| l.contains("memory limit")).then_some(())
    });
    assert!(reported.is_some(), "no memory-limit log line");
}

#[test]
fn a_plugin_cannot_forge_identity_on_forward_or_send() {
    let demo = Demo::start();
    let gw = fault_gateway(&demo);
    let tok = token("42", Some("pro"));
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for path in ["/fault/forge", "/fault/send-own"] {
        let resp = gw.get(
            path,
            &[
                ("Authorization", &format!("Bearer {tok}")),
                ("traceparent", parent),
                ("tracestate", "v=1"),
            ],
        );
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert!(reached(&resp, "user-service"), "{path}: {}", resp.text());
        assert_eq!(resp.upstream_header("x-user-id"), vec!["42".to_string()], "{path}");
        assert_eq!(resp.upstream_header("x-user-tier"), vec!["pro".to_string()], "{path}");
        assert_eq!(resp.upstream_header("x-forwarded-for"), vec!["127.0.0.1".to_string()], "{path}");
        let id = resp.header("x-request-id").unwrap().to_string();
        assert_eq!(resp.upstream_header("x-request-id"), vec![id], "{path}");
        // The trace context reaches the service as the client sent it, over
        // the plugin's forged one.
        assert_eq!(resp.upstream_header("traceparent"), vec![parent.to_string()], "{path}");
        assert_eq!(resp.upstream_header("tracestate"), vec!["v=1".to_string()], "{path}");
    }
    // A service the route allows: reached, with the verified identity.
    let resp = gw.get_as("/fault/send-allowed", &tok);
    assert!(reached(&resp, "knowledge-service"), "{}", resp.text());
    assert_eq!(resp.upstream_header("x-user-id"), vec!["42".to_string()]);
    // A service the route does not allow: the plugin gets `not-allowed`.
    let resp = gw.get_as("/fault/send-forbidden", &tok);
    assert_eq!(resp.status, 299, "{}", resp.text());
    assert!(resp.text().starts_with("not-allowed"), "{}", resp.text());
}

#[test]
fn a_plugin_waiting_on_its_service_is_cut_at_its_deadline() {
    let demo = Demo::start();
    let gw = fault_gateway(&demo);
    let tok = token("42", Some("pro"));
    // The plugin's call to its service answers after 4 s; the route allows 300 ms.
    let started = std::time::Instant::now();
    let resp = gw.get_as("/fault/send-slow", &tok);
    let waited = started.elapsed();
    let id = resp.assert_error(504);
    assert!(
        waited < std::time::Duration::from_secs(3),
        "the deadline did not cut the wait: {waited:?}"
    );
    let logged = gw.log_for(&id);
    assert!(logged.iter().any(|l| l["plugin"] == "fault" && l["status"] == 504), "{logged:?}");
    let resp = gw.get_as("/fault/echo", &tok);
    assert_eq!(resp.status, 200, "the gateway must keep serving: {}", resp.text());
}

/// Voluntary context switches of the gateway's epoch ticker thread so far.
fn epoch_thread_wakeups(pid: u32) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        if std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim() == "gatehouse-epoch" {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).unwrap();
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("no gatehouse-epoch thread in process {pid}");
}

#[test]
fn an_idle_gateway_stops_ticking_and_a_runaway_plugin_is_still_stopped() {
    let demo = Demo::start();
    let gw = fault_gateway(&demo);
    let tok = token("42", Some("pro"));
    assert_eq!(gw.get_as("/fault/echo", &tok).status, 200);
    // After a second without plugin calls the ticker sleeps: it no longer
    // wakes 200 times a second.
    let pid = gw.proc.child.id();
    let quiet = wait_for(std::time::Duration::from_secs(10), || {
        let before = epoch_thread_wakeups(pid);
        std::thread::sleep(std::time::Duration::from_millis(500));
        (epoch_thread_wakeups(pid) - before < 10).then_some(())
    });
    assert!(quiet.is_some(), "the epoch ticker keeps waking while no plugin runs");
    // A call wakes it: a spinning plugin still meets its deadline.
    let started = std::time::Instant::now();
    gw.get_as("/fault/loop", &tok).assert_error(504);
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(gw.get_as("/fault/echo", &tok).status, 200);
}

/// The nice value of each thread of `pid` named `name` (comm is cut at 15 bytes).
fn thread_nice(pid: u32, name: &str) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim() != name {
                return None;
            }
            // Field 19 of stat, counted after the `(comm)` field.
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            stat.rsplit_once(") ")?.1.split(' ').nth(16)?.parse().ok()
        })
        .collect()
}

#[test]
fn a_slow_plugin_moves_to_the_low_priority_plugin_threads() {
    let demo = Demo::start();
    // A debug build's host takes about a millisecond per call: the line
    // between cheap and slow is drawn well above it.
    let gw = fault_gateway_with(&demo, "slow_call = \"10ms\"\nthreads_nice = 19\n");
    let tok = token("42", Some("pro"));
    let pid = gw.proc.child.id();
    let fault = |gw: &Gateway| admin_plugins(gw).into_iter().find(|p| p["name"] == "fault").unwrap();
    // Cheap calls run where the request is: no plugin threads yet.
    for _ in 0..3 {
        assert_eq!(gw.get_as("/fault/echo", &tok).status, 200);
    }
    let cheap = fault(&gw);
    assert_eq!(cheap["on_plugin_threads"], false, "{cheap}");
    assert!(
        thread_nice(pid, "gatehouse-plugi").is_empty(),
        "plugin threads started for cheap calls"
    );
    // A call that runs for milliseconds (it spins until its deadline) makes
    // the plugin slow: its next calls run on the plugin threads, nice 19.
    gw.get_as("/fault/loop", &tok).assert_error(504);
    let slow = fault(&gw);
    assert_eq!(slow["on_plugin_threads"], true, "{slow}");
    assert!(slow["run_us"].as_u64().unwrap() > 10_000, "{slow}");
    gw.get_as("/fault/loop", &tok).assert_error(504);
    let nices = thread_nice(pid, "gatehouse-plugi");
    assert!(!nices.is_empty() && nices.iter().all(|&n| n == 19), "plugin threads: {nices:?}");
    // They answer like any other call, faults and all.
    assert_eq!(gw.get_as("/fault/echo", &tok).status, 200);
    gw.get_as("/fault/trap", &tok).assert_error(500);
}

#[test]
fn plugins_get_the_caller_claims_and_their_output_is_logged() {
    let demo = Demo::start();
    let gw = fault_gateway(&demo);
    let tok = token_with(serde_json::json!({"sub": "42", "tier": "pro", "email": "a@b.c", "secret": "x", "exp": now() + 600}));
    let resp = gw.get("/fault/echo", &[("Authorization", &format!("Bearer {tok}")), ("X-Name", "café")]);
    let text = resp.text();
    assert!(text.contains("user-id: \"42\""), "{text}");
    // UTF-8 header values reach the plugin intact.
    assert!(text.contains("(\"x-name\", \"café\")"), "{text}");
    // Only the claims the route lists.
    assert!(
        text.contains("\"email\"") && text.contains("a@b.c") && !text.contains("secret"),
        "{text}"
    );
    let id = resp.header("x-request-id").unwrap().to_string();
    assert!(text.contains(&id), "{text}");

    let resp = gw.get_as("/fault/print", &tok);
    assert_eq!(resp.status, 200);
    let id = resp.header("x-request-id").unwrap().to_string();
    let logged = gw.log_for(&id);
    for stream in ["stdout", "stderr"] {
        assert!(
            logged
                .iter()
                .any(|l| l["plugin"] == "fault" && l["stream"] == stream && l["message"].as_str().unwrap().contains(stream)),
            "{logged:?}"
        );
    }
}

#[test]
fn broken_or_missing_plugins_are_refused_with_a_reason() {
    let demo = Demo::start();
    let gw = fault_gateway(&demo);
    let tok = token("42", None);
    for path in ["/fault/other-version", "/fault/garbage", "/fault/missing"] {
        let resp = gw.get_as(path, &tok);
        resp.assert_error(503);
    }
    let plugins = admin_plugins(&gw);
    let by_name = |n: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n}: {plugins:?}"))
    };
    let other = by_name("other-version");
    assert_eq!(other["state"], "failed");
    let error = other["error"].as_str().unwrap();
    assert!(error.contains("gatehouse:plugin@1.0.0") && error.contains("0.1.0"), "{error}");
    assert_eq!(other["routes"], serde_json::json!(["/fault/other-version"]));
    let garbage = by_name("garbage");
    assert_eq!(garbage["state"], "failed");
    assert!(garbage["error"].as_str().unwrap().contains("not a WebAssembly"), "{garbage}");
    assert_eq!(garbage["sha256"].as_str().unwrap().len(), 64);
    let fault = by_name("fault");
    assert_eq!(fault["state"], "loaded");
    assert!(fault["invocations"].is_u64(), "{fault}");
    // The services a plugin may call are the route's, on /admin/routes.
    let routes = admin_get(gw.admin, "/admin/routes").json();
    let calls = |prefix: &str| routes.as_array().unwrap().iter().find(|r| r["prefix"] == prefix).unwrap()["calls"].clone();
    assert_eq!(calls("/fault/send-allowed"), serde_json::json!(["knowledge-service"]));
    assert_eq!(calls("/fault/send-own"), serde_json::json!([]));
    assert_eq!(calls("/k"), serde_json::json!([]));
    assert!(fault["loaded_at"].as_str().unwrap().ends_with('Z'), "{fault}");
    // The missing one is not a file, so it is not listed; the route says why.
    assert!(plugins.iter().all(|p| p["name"] != "missing"));
    assert!(
        gw.proc.logs().iter().any(|l| l.contains("missing.wasm")),
        "no log line about the missing plugin"
    );

    // `gatehouse check` fails on the same folder, naming the route file and line.
    let out = gw.check();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fault.toml:") && stderr.contains("/fault/other-version"),
        "{stderr}"
    );
}

/// A gateway whose `/spin` route runs the `fault` plugin in a loop until
/// `deadline`, beside `/echo` (the same plugin, answering) and `/native`.
fn spinning_gateway(demo: &Demo, deadline: &str, tweak: impl FnOnce(&mut Setup)) -> Gateway {
    let routes = format!(
        "service = \"user-service\"\nupstream = \"http://127.0.0.1:{{user-service}}\"\n\n\
         [[route]]\nprefix = \"/spin\"\nauth = \"required\"\nplugin = \"fault\"\nplugin_deadline = \"{deadline}\"\n\n[route.settings]\nmode = \"loop\"\n\n\
         [[route]]\nprefix = \"/echo\"\nauth = \"required\"\nplugin = \"fault\"\n\n[route.settings]\nmode = \"echo\"\n\n\
         [[route]]\nprefix = \"/native\"\nauth = \"required\"\n"
    );
    let mut setup = Setup {
        plugins: vec![("fault.wasm".into(), plugin("fault"))],
        routes: vec![("r.toml".into(), routes)],
        shipped_routes: false,
        // /echo must not time out on a loaded test machine.
        plugin_limits: "deadline = \"5s\"\n".into(),
        ..Setup::default()
    };
    tweak(&mut setup);
    Gateway::start(demo, setup)
}

/// Sends `GET /spin` on its own thread; the handle yields the response.
fn spin_in_background(gw: &Gateway, tok: &str) -> std::thread::JoinHandle<Response> {
    let (addr, request) = (
        gw.addr,
        format!("GET /spin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"),
    );
    std::thread::spawn(move || raw(addr, request.as_bytes()))
}

#[test]
fn an_exhausted_instance_pool_answers_503_not_a_crash() {
    let demo = Demo::start();
    let gw = spinning_gateway(&demo, "2s", |s| s.plugin_limits.push_str("max_instances = 1\n"));
    let tok = token("42", None);
    let busy = spin_in_background(&gw, &tok);
    // While the only instance spins, another request is refused, not queued forever.
    let mut saw_503 = false;
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        let resp = gw.get_as("/echo", &tok);
        if resp.status == 503 {
            resp.assert_error(503);
            saw_503 = true;
            break;
        }
    }
    assert!(saw_503, "no 503 while the pool was exhausted");
    assert_eq!(busy.join().unwrap().status, 504);
    // The slot is free again.
    assert_eq!(gw.get_as("/echo", &tok).status, 200);
}

#[test]
fn a_spinning_plugin_does_not_hold_up_other_requests() {
    let demo = Demo::start();
    // One worker thread: if the spinning plugin never yielded, nothing else could run.
    spinning_plugin_yields(&spinning_gateway(&demo, "1500ms", |s| s.workers = 1));
}

#[test]
fn a_spinning_plugin_in_baseline_code_yields_too() {
    let demo = Demo::start();
    let gw = spinning_gateway(&demo, "1500ms", |s| {
        s.workers = 1;
        s.plugin_limits.push_str("compiler = \"winch\"\n");
    });
    spinning_plugin_yields(&gw);
}

fn spinning_plugin_yields(gw: &Gateway) {
    let tok = token("42", None);
    let spinning = spin_in_background(gw, &tok);
    std::thread::sleep(std::time::Duration::from_millis(150));
    for path in ["/echo", "/native", "/echo"] {
        assert_eq!(gw.get_as(path, &tok).status, 200, "{path}");
    }
    assert!(!spinning.is_finished(), "the spinning request should still be running");
    spinning.join().unwrap().assert_error(504);
}
