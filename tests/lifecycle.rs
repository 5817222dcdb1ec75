//! The binary's life: `check` and `token`, refusing bad configuration at
//! start, the admin listener, request logs and a graceful drain on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_configuration() {
    let root = repo();
    plugin("hello"); // the shipped routes use the bundled plugins
    let (ok, stdout, stderr) = run(gatehouse_cmd().current_dir(&root).env("GATEHOUSE_JWT_SECRET", SECRET).arg("check"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("10 routes") && stdout.contains("3 plugins"), "{stdout}");
    // The summary: every route in match order, every plugin with its
    // version, the keys.
    let table = |header: &str| -> Vec<String> {
        stdout
            .split("\n\n")
            .find(|block| block.starts_with(header))
            .unwrap_or_else(|| panic!("no {header} table in {stdout}"))
            .lines()
            .skip(1)
            .map(String::from)
            .collect()
    };
    let routes = table("ROUTE");
    assert_eq!(routes.len(), 10, "{stdout}");
    assert!(
        routes[0].starts_with("/api/v1/knowledge/premium") && routes[0].contains("tier-gate"),
        "{stdout}"
    );
    assert!(routes.iter().any(|r| r.starts_with("/ws ") && r.contains("yes")), "{stdout}");
    let plugins = table("PLUGIN");
    assert_eq!(plugins.len(), 3, "{stdout}");
    assert!(plugins.iter().all(|p| p.contains("loaded") && p.contains("cranelift")), "{stdout}");
    assert!(table("KID").iter().any(|k| k.contains("HS256")), "{stdout}");
    // The webhook secret is unset here: a warning naming it, not a failure.
    assert!(stderr.contains("POLAR_WEBHOOK_SECRET"), "{stderr}");
    // Without any key, routes that need one are refused, naming the file and line.
    let (ok, _, stderr) = run(gatehouse_cmd().current_dir(&root).arg("check"));
    assert!(!ok);
    assert!(stderr.contains(".toml:") && stderr.contains("no key is configured"), "{stderr}");
}

#[test]
fn bad_configuration_is_refused_naming_file_and_line() {
    let demo = Demo::start();
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "duplicate prefix",
            Setup {
                routes: vec![(
                    "zz.toml".into(),
                    "service = \"x\"\nupstream = \"http://127.0.0.1:1\"\n\n[[route]]\nprefix = \"/api/areas/\"\nauth = \"public\"\n".into(),
                )],
                ..Setup::default()
            },
            "zz.toml:5: duplicate prefix \"/api/areas\"",
        ),
        (
            "bad auth mode",
            Setup {
                routes: vec![(
                    "zz.toml".into(),
                    "service = \"x\"\nupstream = \"http://127.0.0.1:1\"\n[[route]]\nprefix = \"/x\"\nauth = \"maybe\"\n".into(),
                )],
                ..Setup::default()
            },
            "zz.toml:5:",
        ),
        (
            "unknown key",
            Setup {
                routes: vec![(
                    "zz.toml".into(),
                    "service = \"x\"\nupstream = \"http://127.0.0.1:1\"\n[[route]]\nprefix = \"/x\"\nauth = \"public\"\nmax_bdy = 1\n"
                        .into(),
                )],
                ..Setup::default()
            },
            "zz.toml:6:",
        ),
        (
            "bad duration",
            Setup {
                server: "header_read_timeout = \"soon\"".into(),
                ..Setup::default()
            },
            "gatehouse.toml:4:",
        ),
        (
            "bad CIDR",
            Setup {
                server: "trusted_proxies = [\"10.0.0.0/99\"]".into(),
                ..Setup::default()
            },
            "gatehouse.toml:4:",
        ),
        (
            "short secret",
            Setup {
                secret: Some("short".into()),
                ..Setup::default()
            },
            "at least 32 bytes",
        ),
    ];
    for (name, setup, want) in cases {
        let (dir, config) = write_config(&demo, &setup);
        for sub in ["check", "serve"] {
            let (ok, _, stderr) = run(gatehouse_cmd().arg("--config").arg(&config).arg(sub));
            assert!(!ok, "{name}: {sub} accepted it");
            assert!(stderr.contains(want), "{name}: {sub}: expected {want:?} in {stderr:?}");
        }
        drop(dir);
    }
}

#[test]
fn token_command_mints_a_token_the_gateway_accepts() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let (ok, stdout, stderr) = run(gatehouse_cmd()
        .env("GATEHOUSE_JWT_SECRET", SECRET)
        .current_dir(repo())
        .args(["token", "--sub", "42", "--tier", "pro", "--ttl", "5m"]));
    assert!(ok, "{stderr}");
    let resp = gw.get_as("/api/v1/gamification/points", stdout.trim());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.upstream_header("x-user-id"), ["42"]);
    assert_eq!(resp.upstream_header("x-user-tier"), ["pro"]);
}

#[test]
fn admin_listener_serves_health_and_routes_but_the_public_port_does_not() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    assert_eq!(admin_get(gw.admin, "/healthz").status, 200);
    // The shipped routes name three plugins this folder does not have: the
    // gateway serves (200), and says which routes answer 503 and why.
    let ready = admin_get(gw.admin, "/readyz");
    assert_eq!(ready.status, 200);
    let ready = ready.json();
    assert_eq!(ready["status"], "degraded", "{ready}");
    let mut degraded: Vec<&str> = ready["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["route"].as_str().unwrap())
        .collect();
    degraded.sort();
    assert_eq!(
        degraded,
        ["/api/v1/hello", "/api/v1/knowledge/premium", "/webhooks/polar"],
        "{ready}"
    );
    assert!(ready["degraded"][0]["error"].as_str().unwrap().contains("not found"), "{ready}");
    let routes = admin_get(gw.admin, "/admin/routes").json();
    let list = routes.as_array().unwrap();
    assert_eq!(list.len(), 10);
    let polar = list.iter().find(|r| r["prefix"] == "/webhooks/polar").unwrap();
    assert_eq!(polar["auth"], "public");
    assert_eq!(polar["service"], "payment-service");
    assert_eq!(polar["plugin"], "polar-webhook");
    assert!(polar["source"].as_str().unwrap().contains("payment.toml:"));
    assert_eq!(gw.get("/admin/routes", &[]).status, 404, "admin is never on the public port");
    assert_eq!(gw.get("/healthz", &[]).status, 404);
}

#[test]
fn admin_actions_need_the_admin_token_when_one_is_set() {
    const ADMIN: &str = "a-test-admin-token-of-forty-characters!!";
    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            env: vec![("GATEHOUSE_ADMIN_TOKEN".into(), ADMIN.into())],
            ..Setup::default()
        },
    );
    let reload = |authorization: Option<String>| {
        let header = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        raw(
            gw.admin,
            format!("POST /admin/reload HTTP/1.1\r\nHost: admin\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    // Even from loopback: once a token is set, every action needs it.
    for bad in [None, Some("Bearer not-the-token".to_string()), Some(format!("Basic {ADMIN}"))] {
        let resp = reload(bad.clone());
        assert_eq!(resp.status, 401, "{bad:?}");
        assert!(resp.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert!(resp.json()["error"].as_str().unwrap().contains("GATEHOUSE_ADMIN_TOKEN"));
    }
    assert_eq!(
        admin_get(gw.admin, "/admin/reloads").json().as_array().unwrap().len(),
        0,
        "nothing ran"
    );
    assert_eq!(reload(Some(format!("Bearer {ADMIN}"))).status, 200);
    assert_eq!(admin_get(gw.admin, "/admin/reloads").json().as_array().unwrap().len(), 1);
    // Reading needs nothing: probes and Prometheus carry no token.
    for path in ["/healthz", "/readyz", "/metrics", "/admin/routes", "/"] {
        assert_eq!(admin_get(gw.admin, path).status, 200, "{path}");
    }
    let refused = wait_for(Duration::from_secs(5), || {
        gw.proc.logs().into_iter().find(|l| l.contains("admin action refused"))
    })
    .expect("a refused action is logged");
    assert!(refused.contains("\"peer\":\"127.0.0.1:"), "{refused}");
    assert!(!refused.contains(ADMIN));

    // A token too short to be one is refused at start, naming the variable.
    let (dir, config) = write_config(&demo, &Setup::default());
    let (ok, _, stderr) = run(gatehouse_cmd()
        .env("GATEHOUSE_ADMIN_TOKEN", "short")
        .arg("--config")
        .arg(&config)
        .arg("check"));
    assert!(!ok);
    assert!(stderr.contains("GATEHOUSE_ADMIN_TOKEN must be at least 32"), "{stderr}");
    drop(dir);
}

#[test]
fn every_request_is_logged_once_with_its_fields() {
    let demo = Demo::start();
    let gw = Gateway::start(&demo, Setup::default());
    let tok = token("42", Some("pro"));
    gw.get(
        "/api/areas?secret=1",
        &[("Authorization", &format!("Bearer {tok}")), ("X-Request-ID", "log-1")],
    );
    gw.get("/api/areas", &[("X-Request-ID", "log-2")]);
    std::thread::sleep(Duration::from_millis(200));
    let ok = gw.log_for("log-1");
    assert_eq!(ok.len(), 1, "{ok:?}");
    let line = &ok[0];
    assert_eq!(line["status"], 200);
    assert_eq!(line["user"], "42");
    assert_eq!(line["route"], "/api/areas");
    assert_eq!(line["service"], "knowledge-service");
    assert!(line["latency_us"].as_u64().is_some());
    assert!(line["upstream"].as_str().unwrap().starts_with("127.0.0.1:"));
    let denied = gw.log_for("log-2");
    assert_eq!(denied[0]["status"], 401);
    let all = gw.proc.logs().join("\n");
    assert!(!all.contains(&tok), "a token was logged");
    assert!(!all.contains("secret=1"), "the query string was logged");
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let demo = Demo::start();
    let mut gw = Gateway::start(
        &demo,
        Setup {
            server: "shutdown_grace = \"10s\"".into(),
            ..Setup::default()
        },
    );
    let tok = token("1", None);
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/areas/_demo/delay?ms=1500 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    });
    std::thread::sleep(Duration::from_millis(400));
    gw.proc.terminate();
    std::thread::sleep(Duration::from_millis(300));
    assert!(TcpStream::connect(addr).is_err(), "new connections are refused while draining");
    let answer = slow.join().unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let status = gw.proc.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status}");
}

#[test]
fn grace_period_bounds_the_drain() {
    let demo = Demo::start();
    let mut gw = Gateway::start(
        &demo,
        Setup {
            server: "shutdown_grace = \"500ms\"".into(),
            ..Setup::default()
        },
    );
    let tok = token("1", None);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    write!(
        s,
        "GET /api/areas/_demo/delay?ms=8000 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {tok}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    gw.proc.terminate();
    let status = gw.proc.wait_exit(Duration::from_secs(5)).expect("the grace period ends the drain");
    assert!(status.success());
}

#[test]
fn human_logs_to_a_pipe_carry_no_colour_codes() {
    let demo = Demo::start();
    let (_dir, config) = write_config(&demo, &Setup::default());
    let mut cmd = gatehouse_cmd();
    cmd.arg("--config").arg(&config).args(["serve", "--workers", "1"]);
    let (proc, lines) = Proc::spawn(cmd, |l| l.contains("listening"));
    let text = lines.join("\n");
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in logs written to a pipe: {text:?}");
    drop(proc);
}

#[test]
fn routes_prints_the_table_and_which_route_a_path_takes() {
    let root = repo();
    let (ok, stdout, stderr) = run(gatehouse_cmd().current_dir(&root).arg("routes"));
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("ROUTE"), "{stdout}");
    assert_eq!(lines.len(), 11, "{stdout}");
    let (ok, stdout, stderr) = run(gatehouse_cmd()
        .current_dir(&root)
        .args(["routes", "/api/v1/knowledge/premium/../premium/guide?x=1"]));
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("/api/v1/knowledge/premium/guide → /api/v1/knowledge/premium"),
        "{stdout}"
    );
    assert!(stdout.contains("tier-gate") && stdout.contains("knowledge.toml:"), "{stdout}");
    let (ok, _, stderr) = run(gatehouse_cmd().current_dir(&root).args(["routes", "/nowhere"]));
    assert!(!ok && stderr.contains("no route"), "{stderr}");
    let (ok, _, stderr) = run(gatehouse_cmd().current_dir(&root).args(["routes", "/api/..%2f..%2fetc"]));
    assert!(!ok && stderr.contains("400"), "{stderr}");
}
