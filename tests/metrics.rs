//! `/metrics` against what the gateway did: each outcome is driven through
//! the real binary and the matching series must move by exactly one, read
//! with a real exposition parser (`prometheus-parse`), and under the reason
//! the request's access line gives.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Every sample as `name{k="v",...}` (labels sorted) → value; a histogram
/// as its `_count`.
fn scrape(gw: &Gateway) -> BTreeMap<String, f64> {
    let resp = admin_get(gw.admin, "/metrics");
    assert_eq!(resp.status, 200);
    assert!(resp.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text();
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a valid exposition");
    let mut out = BTreeMap::new();
    for sample in parsed.samples {
        let (name, value) = match sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
                (sample.metric, v)
            }
            prometheus_parse::Value::Histogram(buckets) => (
                format!("{}_count", sample.metric),
                buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            ),
            prometheus_parse::Value::Summary(_) => continue,
        };
        let mut labels: Vec<(String, String)> = sample.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        out.insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    out
}

/// How much the series of `name` whose labels include `labels` moved,
/// summed.
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let matching = |key: &String| {
        key.split_once('{').is_some_and(|(n, rest)| {
            let have: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
            n == name && wanted.iter().all(|w| have.contains(&w.as_str()))
        })
    };
    let sum = |m: &BTreeMap<String, f64>| m.iter().filter(|(k, _)| matching(k)).map(|(_, v)| v).sum::<f64>();
    sum(after) - sum(before)
}

/// One request and what it must have moved.
struct Case<'a> {
    what: &'a str,
    path: String,
    headers: Vec<(&'a str, String)>,
    /// Sent as a POST when present.
    body: Option<String>,
    status: u16,
    route: &'a str,
    /// The access line's `reason` (and the errors family's label).
    reason: Option<&'a str>,
    auth_reason: Option<&'a str>,
    /// Further series that must move by one: (family, labels).
    also: Vec<(&'a str, Vec<(&'a str, &'a str)>)>,
}

impl<'a> Case<'a> {
    /// Also `family{labels}` must move by one.
    fn and(mut self, family: &'a str, labels: Vec<(&'a str, &'a str)>) -> Self {
        self.also.push((family, labels));
        self
    }
}

fn case<'a>(what: &'a str, path: &str, status: u16, route: &'a str, reason: Option<&'a str>) -> Case<'a> {
    Case {
        what,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        status,
        route,
        reason,
        auth_reason: None,
        also: Vec::new(),
    }
}

fn with_token<'a>(mut c: Case<'a>, token: &str) -> Case<'a> {
    c.headers.push(("Authorization", format!("Bearer {token}")));
    c
}

fn unauthorized<'a>(what: &'a str, token: Option<String>, auth_reason: &'a str) -> Case<'a> {
    let mut c = case(what, "/api/areas", 401, "/api/areas", Some("unauthorized"));
    if let Some(t) = token {
        c.headers.push(("Authorization", format!("Bearer {t}")));
    }
    c.auth_reason = Some(auth_reason);
    c.also.push(("gatehouse_auth_failures_total", vec![("reason", auth_reason)]));
    c
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: Value) -> String {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

fn signed(alg: jsonwebtoken::Algorithm, secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[test]
fn every_outcome_moves_its_series_by_one_under_the_reason_its_access_line_gives() {
    let demo = Demo::start();
    let routes = "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n\
        [[route]]\nprefix = \"/small\"\nauth = \"public\"\nmax_body = 16\n\n\
        [[route]]\nprefix = \"/fault/trap\"\nauth = \"public\"\nplugin = \"fault\"\n[route.settings]\nmode = \"trap\"\n\n\
        [[route]]\nprefix = \"/fault/loop\"\nauth = \"public\"\nplugin = \"fault\"\nplugin_deadline = \"100ms\"\n[route.settings]\nmode = \"loop\"\n";
    let gw = Gateway::start(
        &demo,
        Setup {
            routes: vec![
                ("extra.toml".into(), routes.into()),
                (
                    "down.toml".into(),
                    "service = \"down-service\"\nupstream = \"http://127.0.0.1:1\"\n\n[[route]]\nprefix = \"/down\"\nauth = \"public\"\n"
                        .into(),
                ),
            ],
            plugins: vec![("fault.wasm".into(), plugin("fault")), ("hello.wasm".into(), plugin("hello"))],
            upstream: "first_byte_timeout = \"1s\"".into(),
            reload: "watch = false".into(),
            ..Setup::default()
        },
    );
    let good = token("alice", Some("pro"));
    let secret = SECRET.as_bytes();
    let exp = now() + 600;
    let cases = vec![
        with_token(case("a proxied 200", "/api/areas", 200, "/api/areas", None), &good),
        with_token(case("a plugin's 200", "/api/v1/hello", 200, "/api/v1/hello", None), &good),
        case("no route", "/nowhere", 404, "none", Some("not_found")),
        unauthorized("no token", None, "missing"),
        unauthorized("garbage", Some("not-a-token".into()), "malformed"),
        unauthorized("expired", Some(token_with(json!({"sub": "a", "exp": now() - 3600}))), "expired"),
        unauthorized(
            "not yet valid",
            Some(token_with(json!({"sub": "a", "exp": exp, "nbf": now() + 3600}))),
            "not_yet_valid",
        ),
        unauthorized(
            "another key",
            Some(signed(
                jsonwebtoken::Algorithm::HS256,
                b"another-secret-0123456789abcdef0123",
                json!({"sub": "a", "exp": exp}),
            )),
            "bad_signature",
        ),
        unauthorized(
            "an algorithm no key has",
            Some(signed(jsonwebtoken::Algorithm::HS384, secret, json!({"sub": "a", "exp": exp}))),
            "unknown_kid",
        ),
        unauthorized("alg none", Some(unsigned(json!({"sub": "a", "exp": exp}))), "wrong_alg"),
        unauthorized("no sub", Some(token_with(json!({"exp": exp}))), "bad_claims"),
        unauthorized("too large", Some("a".repeat(9000)), "too_large"),
        case("service down", "/down/x", 502, "/down", Some("upstream_unavailable")).and(
            "gatehouse_upstream_errors_total",
            vec![("service", "down-service"), ("kind", "refused")],
        ),
        with_token(
            case(
                "service slow",
                "/api/v1/users/_demo/delay?ms=3000",
                504,
                "/api/v1/users",
                Some("upstream_timeout"),
            ),
            &good,
        )
        .and(
            "gatehouse_upstream_errors_total",
            vec![("service", "user-service"), ("kind", "timeout")],
        ),
        case("plugin trap", "/fault/trap", 500, "/fault/trap", Some("plugin_failed"))
            .and("gatehouse_plugin_failures_total", vec![("plugin", "fault"), ("kind", "trap")]),
        case("plugin deadline", "/fault/loop", 504, "/fault/loop", Some("plugin_timeout"))
            .and("gatehouse_plugin_failures_total", vec![("plugin", "fault"), ("kind", "deadline")]),
        Case {
            body: Some("x".repeat(100)),
            ..case("body over the route's cap", "/small", 413, "/small", Some("payload_too_large"))
        },
    ];

    for c in &cases {
        let before = scrape(&gw);
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = match &c.body {
            None => gw.get(&c.path, &headers),
            Some(body) => {
                let fields: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                gw.raw(&format!(
                    "POST {} HTTP/1.1\r\nHost: gw.test\r\n{fields}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    c.path,
                    body.len()
                ))
            }
        };
        let method = if c.body.is_some() { "POST" } else { "GET" };
        assert_eq!(resp.status, c.status, "{}: {}", c.what, resp.text());
        let id = resp.header("x-request-id").unwrap().to_string();
        let after = scrape(&gw);
        let what = c.what;

        // The access line says why, and the metrics say the same.
        let line = gw
            .log_for(&id)
            .into_iter()
            .find(|l| l["status"].is_number())
            .unwrap_or_else(|| panic!("{what}: no access line"));
        assert_eq!(line["reason"].as_str(), c.reason, "{what}: {line}");
        assert_eq!(line["auth_reason"].as_str(), c.auth_reason, "{what}: {line}");
        let status = c.status.to_string();
        let request = [("route", c.route), ("method", method), ("status", status.as_str())];
        assert_eq!(moved(&before, &after, "gatehouse_requests_total", &request), 1.0, "{what}");
        assert_eq!(
            moved(&before, &after, "gatehouse_requests_total", &[]),
            1.0,
            "{what}: one request counted once"
        );
        assert_eq!(
            moved(&before, &after, "gatehouse_request_duration_seconds_count", &[("route", c.route)]),
            1.0,
            "{what}"
        );
        let errors = moved(&before, &after, "gatehouse_request_errors_total", &[]);
        match c.reason {
            Some(reason) => {
                assert_eq!(errors, 1.0, "{what}");
                let labels = [("route", c.route), ("reason", reason)];
                assert_eq!(moved(&before, &after, "gatehouse_request_errors_total", &labels), 1.0, "{what}");
            }
            None => assert_eq!(errors, 0.0, "{what}"),
        }
        let auth = moved(&before, &after, "gatehouse_auth_failures_total", &[]);
        assert_eq!(auth, if c.auth_reason.is_some() { 1.0 } else { 0.0 }, "{what}");
        for (family, labels) in &c.also {
            assert_eq!(moved(&before, &after, family, labels), 1.0, "{what}: {family} {labels:?}");
        }
    }

    // A reload that refuses a file.
    let before = scrape(&gw);
    std::fs::write(gw.dir.path().join("plugins/junk.wasm"), b"not wasm").unwrap();
    let reload = admin_request(gw.admin, "POST", "/admin/reload");
    assert_eq!(reload.status, 422, "{}", reload.text());
    let after = scrape(&gw);
    assert_eq!(moved(&before, &after, "gatehouse_reloads_total", &[("outcome", "refused")]), 1.0);
    assert_eq!(
        moved(&before, &after, "gatehouse_reload_refusals_total", &[("file", "junk.wasm")]),
        1.0
    );
    assert_eq!(moved(&before, &after, "gatehouse_plugins", &[("state", "failed")]), 1.0);
}

#[test]
fn the_exposition_describes_the_running_gateway() {
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![("hello.wasm".into(), plugin("hello"))],
            ..Setup::default()
        },
    );
    let good = token("alice", None);
    assert_eq!(gw.get_as("/api/areas", &good).status, 200);
    let m = scrape(&gw);
    let get = |key: &str| m.get(key).copied().unwrap_or_else(|| panic!("no {key} in {m:#?}"));
    // Pooled connections per service, the build and the process.
    assert!(
        m.keys()
            .any(|k| k.starts_with("gatehouse_upstream_connections{") && k.contains("service=\"knowledge-service\""))
    );
    let build = m.keys().find(|k| k.starts_with("gatehouse_build_info{")).expect("build info");
    assert!(build.contains("wasmtime=\"48."), "{build}");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
    assert!(get("process_resident_memory_bytes{}") > 1e6);
    assert!(get("process_open_fds{}") >= 3.0);
    assert_eq!(get("gatehouse_plugins{state=\"loaded\"}"), 1.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("gatehouse_plugin_calls_total{") && k.contains("plugin=\"hello\""))
    );
    // Labels come from configuration, never from the client's path or token.
    let probe = "/api/areas/SECRET-PATH-LABEL";
    gw.get_as(probe, &good);
    gw.get("/nowhere/SECRET-PATH-LABEL", &[]);
    let text = admin_get(gw.admin, "/metrics").text();
    assert!(!text.contains("SECRET-PATH-LABEL") && !text.contains("alice"));
    // The metrics are the admin listener's, never the public door's.
    assert_eq!(gw.get("/metrics", &[]).status, 404);
    std::thread::sleep(Duration::from_millis(10));
}

/// The dashboard in a real browser: the page loads with no external asset,
/// fills itself from the admin endpoints, and shows what an operator looks
/// for first: a failed plugin and why, and live traffic per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_routes_plugins_reloads_and_live_rates_in_a_real_browser() {
    let demo = Demo::start();
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"this is not a component").unwrap();
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![
                ("hello.wasm".into(), plugin("hello")),
                ("garbage.wasm".into(), garbage.path().to_path_buf()),
            ],
            routes: vec![(
                "broken.toml".into(),
                "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n[[route]]\nprefix = \"/broken\"\nauth = \"public\"\nplugin = \"garbage\"\n"
                    .into(),
            )],
            ..Setup::default()
        },
    );
    let page = admin_get(gw.admin, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(
        !page.text().contains("http://") && !page.text().contains("https://"),
        "no external assets"
    );

    // A reload for the page to list (the garbage file is refused again).
    assert_eq!(admin_request(gw.admin, "POST", "/admin/reload").status, 200);

    // Traffic on one route while the page watches.
    let addr = gw.addr;
    let good = token("alice", None);
    let traffic = std::thread::spawn(move || {
        let mut keep = KeepAlive::new(addr);
        for _ in 0..300 {
            let _ = keep.get("/api/areas", &[("Authorization", &format!("Bearer {good}"))]);
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    let browser = common::browser::Browser::launch();
    browser.navigate(&format!("http://{}/?refresh=500", gw.admin)).await;
    let loaded = browser
        .wait_until(
            "document.body.dataset.loaded === 'true' && document.querySelector('[data-plugin=\"garbage\"]') !== null",
            Duration::from_secs(20),
        )
        .await;
    assert!(loaded.is_some(), "the dashboard never filled itself");
    let rate = browser
        .wait_until(
            "(() => { const c = document.querySelector('[data-route=\"/api/areas\"] .rate'); return c && Number(c.textContent) > 0 ? c.textContent : null; })()",
            Duration::from_secs(20),
        )
        .await;
    assert!(rate.is_some(), "no live request rate for /api/areas");
    traffic.join().unwrap();

    let dom = browser
        .evaluate(
            r#"(() => {
                const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; };
                return {
                    routes: document.querySelectorAll('#routes tbody tr').length,
                    garbage_state: text('[data-plugin="garbage"] .state'),
                    garbage_reason: text('[data-plugin="garbage"] .reason'),
                    hello_state: text('[data-plugin="hello"] .state'),
                    p99: text('[data-route="/api/areas"] .p99'),
                    broken_plugin: text('[data-route="/broken"] td:nth-child(4)'),
                    build: text('#build'),
                    reloads: document.querySelectorAll('#reloads tbody tr').length,
                };
            })()"#,
        )
        .await;
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    browser.screenshot(&artifacts.join("dashboard.png")).await;

    let plugins = admin_get(gw.admin, "/admin/plugins").json();
    let refusal = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "garbage")
        .and_then(|p| p["error"].as_str())
        .unwrap()
        .to_string();
    let routes = admin_get(gw.admin, "/admin/routes").json();
    assert_eq!(dom["routes"], routes.as_array().unwrap().len(), "{dom}");
    assert_eq!(dom["garbage_state"], "failed", "{dom}");
    assert_eq!(dom["garbage_reason"], refusal.as_str(), "{dom}");
    assert_eq!(dom["hello_state"], "loaded", "{dom}");
    assert_eq!(dom["broken_plugin"], "garbage", "{dom}");
    assert!(dom["p99"].as_str().is_some_and(|p| p.starts_with('≤')), "{dom}");
    assert!(dom["build"].as_str().is_some_and(|b| b.contains("wasmtime 48.")), "{dom}");
    assert!(dom["reloads"].as_u64().unwrap() >= 1, "{dom}");
}

/// Every metric the Grafana dashboard queries is one the gateway exposes.
/// A labelled family appears with its first series, so the gateway first
/// serves one of each kind of request.
#[test]
fn the_grafana_dashboard_queries_only_metrics_the_gateway_exposes() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/gatehouse.json")).unwrap()).expect("valid JSON");
    assert_eq!(dashboard["uid"], "gatehouse");
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(panel["gridPos"].is_object() && panel["title"].is_string(), "{panel}");
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("a PromQL expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");

    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            plugins: vec![("hello.wasm".into(), plugin("hello"))],
            routes: vec![(
                "down.toml".into(),
                "service = \"down-service\"\nupstream = \"http://127.0.0.1:1\"\n\n[[route]]\nprefix = \"/down\"\nauth = \"public\"\n"
                    .into(),
            )],
            ..Setup::default()
        },
    );
    assert_eq!(gw.get_as("/api/areas", &token("alice", None)).status, 200);
    assert_eq!(gw.get("/api/areas", &[]).status, 401);
    assert_eq!(gw.get("/down", &[]).status, 502);
    let text = admin_get(gw.admin, "/metrics").text();
    let mut exposed = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => exposed.extend([format!("{name}_total")]),
            "histogram" => exposed.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => exposed.extend([name.to_string()]),
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        // Identifiers that name a metric: ours and the process's.
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        used.extend(
            words
                .filter(|w| w.starts_with("gatehouse_") || w.starts_with("process_"))
                .map(String::from),
        );
    }
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}"
    );
    assert!(used.len() >= 15, "{used:?}");
}
