//! Hot reload, black-box: the real binary, real files in its plugins/ and
//! routes/ folders, real inotify events, requests over real sockets.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long a reload may take to show before a test gives up (a loaded CI
/// machine compiles slowly; a healthy one takes milliseconds).
const RELOAD_LIMIT: Duration = Duration::from_secs(20);

const SWAP_ROUTE: &str = "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n[[route]]\nprefix = \"/swap\"\nauth = \"public\"\nplugin = \"swap\"\n";

/// A gateway whose only route, `/swap`, is handled by `plugins/swap.wasm`
/// (first the `blue` build).
fn start(demo: &Demo, tweak: impl FnOnce(&mut Setup)) -> Gateway {
    let mut setup = Setup {
        shipped_routes: false,
        routes: vec![("swap.toml".into(), SWAP_ROUTE.into())],
        plugins: vec![("swap.wasm".into(), plugin("blue"))],
        ..Setup::default()
    };
    tweak(&mut setup);
    Gateway::start(demo, setup)
}

fn plugins_dir(gw: &Gateway) -> PathBuf {
    gw.dir.path().join("plugins")
}

fn routes_dir(gw: &Gateway) -> PathBuf {
    gw.dir.path().join("routes")
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn bytes_of(name: &str) -> Vec<u8> {
    std::fs::read(plugin(name)).unwrap()
}

/// The version that answers `/swap` now ("blue", "green"), or the status.
fn version(gw: &Gateway) -> String {
    let resp = gw.get("/swap", &[]);
    match resp.header("x-plugin-version") {
        Some(v) if resp.status == 200 => v.to_string(),
        _ => format!("status {}", resp.status),
    }
}

fn wait_version(gw: &Gateway, want: &str) {
    let got = wait_for(RELOAD_LIMIT, || (version(gw) == want).then_some(()));
    assert!(
        got.is_some(),
        "never served {want}; still {}; reloads: {:#}",
        version(gw),
        reloads(gw)
    );
}

fn plugin_entry(gw: &Gateway, name: &str) -> Option<Value> {
    let list = admin_get(gw.admin, "/admin/plugins").json();
    list.as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
}

fn reloads(gw: &Gateway) -> Value {
    admin_get(gw.admin, "/admin/reloads").json()
}

/// Waits until `/admin/plugins` shows `name` in `state` for content `sha`.
fn wait_entry(gw: &Gateway, name: &str, state: &str, sha: &str) -> Value {
    let found = wait_for(RELOAD_LIMIT, || {
        plugin_entry(gw, name).filter(|e| e["state"] == state && e["sha256"] == sha)
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} never became {state} with sha256 {sha}: {:?}; reloads: {:#}",
            plugin_entry(gw, name),
            reloads(gw)
        )
    })
}

/// Waits for a reload attempt (newest first) that satisfies `check`.
fn wait_attempt(gw: &Gateway, check: impl Fn(&Value) -> bool) -> Value {
    let found = wait_for(RELOAD_LIMIT, || reloads(gw).as_array().unwrap().iter().find(|a| check(a)).cloned());
    found.unwrap_or_else(|| panic!("no such reload attempt: {:#}", reloads(gw)))
}

/// Whether the gateway logs a line that satisfies `check` (logs are written
/// by a background thread, so wait for it, boundedly).
fn logged(gw: &Gateway, check: impl Fn(&str) -> bool) -> bool {
    wait_for(RELOAD_LIMIT, || gw.proc.logs().iter().any(|l| check(l)).then_some(())).is_some()
}

fn mentions(attempt: &Value, field: &str, text: &str) -> bool {
    attempt[field]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e.as_str().unwrap().contains(text))
}

/// Puts `bytes` at `path` the way `cp` does (truncate, write in place).
fn copy_in_place(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// Puts `bytes` at `path` the way editors and deploy tools do (write a
/// hidden temporary file, rename it over the target).
fn write_and_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[test]
fn swapping_a_plugin_under_load_fails_no_request() {
    let demo = Demo::start();
    let gw = start(&demo, |_| {});
    assert_eq!(version(&gw), "blue");
    let (blue, green) = (bytes_of("blue"), bytes_of("green"));
    let target = plugins_dir(&gw).join("swap.wasm");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, addr) = (stop.clone(), gw.addr);
            std::thread::spawn(move || {
                let mut conn = KeepAlive::new(addr);
                let (mut seen, mut failures) = ([0u64; 2], Vec::new());
                // Bounded: the main thread stops us long before this.
                for _ in 0..2_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let outcome = conn.get("/swap", &[]).and_then(|r| {
                        let doc: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{} not JSON: {e}", r.status))?;
                        let (header, body) = (r.header("x-plugin-version"), doc["version"].as_str());
                        match (r.status, header, body) {
                            (200, Some(h), Some(b)) if h == b && (b == "blue" || b == "green") => Ok(b == "green"),
                            _ => Err(format!("status {} header {header:?} body {doc}", r.status)),
                        }
                    });
                    match outcome {
                        Ok(is_green) => seen[usize::from(is_green)] += 1,
                        Err(e) if failures.len() < 20 => failures.push(e),
                        Err(_) => {}
                    }
                }
                (seen, failures)
            })
        })
        .collect();

    let mut loaded_at = Vec::new();
    let seed = unique_seed();
    for i in 0..40 {
        let (name, build) = if i % 2 == 0 { ("green", &green) } else { ("blue", &blue) };
        // Every third swap is a build never seen before: it compiles, serves
        // baseline code, then its optimized code is swapped in as well.
        let bytes = if i % 3 == 0 { with_nonce(build, seed + i) } else { build.clone() };
        if i % 4 < 2 {
            copy_in_place(&target, &bytes);
        } else {
            write_and_rename(&target, &bytes);
        }
        wait_version(&gw, name);
        // As soon as a version serves, the admin API says which.
        let entry = plugin_entry(&gw, "swap").unwrap();
        assert_eq!(entry["state"], "loaded", "{entry}");
        assert_eq!(entry["sha256"], sha256(&bytes), "{entry}");
        loaded_at.push(entry["loaded_at"].as_str().unwrap().to_string());
    }
    stop.store(true, Ordering::Relaxed);

    let (mut blue_seen, mut green_seen, mut failures) = (0, 0, Vec::new());
    for c in clients {
        let (seen, f) = c.join().unwrap();
        blue_seen += seen[0];
        green_seen += seen[1];
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(blue_seen > 0 && green_seen > 0, "blue {blue_seen}, green {green_seen}");
    // Each swap loaded a version anew (the loaded_at stamps all differ from their predecessor).
    assert!(loaded_at.windows(2).all(|w| w[0] != w[1]), "{loaded_at:?}");
    eprintln!("swapped 40 times under load: {blue_seen} blue + {green_seen} green responses, 0 failed");
}

#[test]
fn a_new_build_serves_baseline_code_at_once_then_optimized_code() {
    let demo = Demo::start();
    let gw = start(&demo, |_| {});
    let bytes = with_nonce(&bytes_of("green"), unique_seed());
    let sha = sha256(&bytes);
    copy_in_place(&plugins_dir(&gw).join("swap.wasm"), &bytes);
    wait_version(&gw, "green");
    let first = plugin_entry(&gw, "swap").unwrap();
    assert_eq!(first["sha256"], sha, "{first}");
    // It was loaded with the baseline compiler (content never compiled before)...
    let loaded = logged(&gw, |l| {
        l.contains("plugin loaded") && l.contains(&sha) && l.contains("\"compiler\":\"winch\"")
    });
    assert!(loaded, "no baseline load logged for {sha}");
    // ...and the optimized build replaces it, same content, same counters.
    for _ in 0..3 {
        assert_eq!(version(&gw), "green");
    }
    let optimized = wait_for(RELOAD_LIMIT, || {
        plugin_entry(&gw, "swap").filter(|e| e["compiler"] == "cranelift" && e["optimizing"] == false)
    })
    .unwrap_or_else(|| panic!("never optimized: {:?}", plugin_entry(&gw, "swap")));
    assert_eq!(optimized["sha256"], sha, "{optimized}");
    assert_eq!(optimized["loaded_at"], first["loaded_at"], "{optimized}");
    assert!(optimized["invocations"].as_u64().unwrap() >= 4, "counters carry over: {optimized}");
    assert_eq!(version(&gw), "green");
    assert!(logged(&gw, |l| l.contains("optimized code now serves")));
}

#[test]
fn a_cold_start_serves_baseline_code_until_the_optimized_builds_are_ready() {
    // Content never compiled before (a fresh nonce each run), two files
    // loaded side by side at start.
    let dir = tempfile::tempdir().unwrap();
    let seed = unique_seed();
    let (green, blue) = (with_nonce(&bytes_of("green"), seed), with_nonce(&bytes_of("blue"), seed));
    std::fs::write(dir.path().join("green.wasm"), &green).unwrap();
    std::fs::write(dir.path().join("blue.wasm"), &blue).unwrap();
    let demo = Demo::start();
    let gw = start(&demo, |setup| {
        setup.plugins = vec![
            ("swap.wasm".into(), dir.path().join("green.wasm")),
            ("other.wasm".into(), dir.path().join("blue.wasm")),
        ];
    });
    // Listening means both were loaded, with the baseline compiler.
    for bytes in [&green, &blue] {
        let sha = sha256(bytes);
        assert!(
            logged(&gw, |l| l.contains("plugin loaded")
                && l.contains(&sha)
                && l.contains("\"compiler\":\"winch\"")),
            "{sha} was not loaded with baseline code at start"
        );
    }
    assert_eq!(version(&gw), "green");
    for name in ["swap", "other"] {
        let optimized = wait_for(RELOAD_LIMIT, || {
            plugin_entry(&gw, name).filter(|e| e["compiler"] == "cranelift" && e["optimizing"] == false)
        })
        .unwrap_or_else(|| panic!("{name} never optimized: {:?}", plugin_entry(&gw, name)));
        assert_eq!(optimized["state"], "loaded", "{optimized}");
    }
    assert_eq!(version(&gw), "green");
    // `gatehouse check` compiles what serve ends up running: optimized code.
    let out = gw.check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !stdout.contains("winch"), "{stdout}");
}

/// The content hashes of the compiled code in a cache folder.
fn cached_hashes(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .map(|n| n.split('-').next().unwrap().to_string())
        .collect();
    found.sort();
    found
}

#[test]
fn the_compile_cache_keeps_what_serves_and_drops_the_rest() {
    let demo = Demo::start();
    let cache = tempfile::tempdir().unwrap();
    let gw = start(&demo, |s| {
        s.plugin_limits = format!("cache_dir = {:?}\ncache_size = \"1KiB\"\n", cache.path().display().to_string());
    });
    let blue = sha256(&bytes_of("blue"));
    // A cold cache: start-up served baseline code; the optimized build
    // writes the cache entry.
    let cached = wait_for(RELOAD_LIMIT, || (cached_hashes(cache.path()) == [blue.clone()]).then_some(()));
    assert!(cached.is_some(), "compiled at start: {:?}", cached_hashes(cache.path()));
    // Three builds never seen before, one after another: each serves, is
    // optimized (which writes its cache entry), and pushes the last one out.
    let seed = unique_seed();
    let mut last = String::new();
    for n in 0..3 {
        let bytes = with_nonce(&bytes_of("green"), seed + n);
        last = sha256(&bytes);
        copy_in_place(&plugins_dir(&gw).join("swap.wasm"), &bytes);
        let optimized = wait_for(RELOAD_LIMIT, || {
            plugin_entry(&gw, "swap").filter(|e| e["sha256"] == last && e["compiler"] == "cranelift")
        });
        assert!(optimized.is_some(), "build {n} never optimized: {:?}", plugin_entry(&gw, "swap"));
    }
    let trimmed = wait_for(RELOAD_LIMIT, || (cached_hashes(cache.path()) == vec![last.clone()]).then_some(()));
    assert!(
        trimmed.is_some(),
        "the cache should hold only the serving build {last}: {:?}",
        cached_hashes(cache.path())
    );
    assert_eq!(version(&gw), "green");
}

#[test]
fn bad_files_are_refused_while_the_old_version_serves() {
    let demo = Demo::start();
    let gw = start(&demo, |_| {});
    let target = plugins_dir(&gw).join("swap.wasm");
    let blue_sha = sha256(&bytes_of("blue"));
    let green = bytes_of("green");

    // A component of another world (here the empty component: it exports
    // nothing); the refusal names the world this gateway runs and the docs.
    let empty_component = b"\0asm\x0d\x00\x01\x00".to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", b"this is not a WebAssembly file\n".to_vec(), "not a WebAssembly file"),
        ("truncated copy", green[..green.len() / 2].to_vec(), "not a valid component"),
        ("another contract version", bytes_of("other-version"), "gatehouse:plugin@1.0.0"),
        (
            "another world",
            empty_component,
            "runs components of the world gatehouse:plugin/route-handler@0.1.0",
        ),
    ];
    for (what, bytes, reason) in cases {
        copy_in_place(&target, &bytes);
        let entry = wait_entry(&gw, "swap", "failed", &sha256(&bytes));
        let error = entry["error"].as_str().unwrap();
        assert!(error.contains(reason), "{what}: {entry}");
        if what == "another world" {
            assert!(error.contains("exports []") && error.contains("docs/plugins.md"), "{error}");
        }
        assert_eq!(
            entry["serving"]["sha256"], blue_sha,
            "{what}: the old version keeps serving: {entry}"
        );
        assert_eq!(version(&gw), "blue", "{what}");
        let attempt = wait_attempt(&gw, |a| mentions(a, "errors", reason));
        assert_eq!(attempt["outcome"], "refused", "{what}: {attempt}");
        assert!(mentions(&attempt, "errors", "swap.wasm"), "{what}: {attempt}");
        assert!(
            logged(&gw, |l| l.contains("plugin refused") && l.contains(reason)),
            "{what}: the reason is logged"
        );
    }
    // A good file after all that loads.
    copy_in_place(&target, &green);
    wait_entry(&gw, "swap", "loaded", &sha256(&green));
    assert_eq!(version(&gw), "green");

    // A route file that does not parse is refused as a whole, naming file
    // and line; the routes that served keep serving.
    let route_file = routes_dir(&gw).join("swap.toml");
    let bad = with_demo_ports(SWAP_ROUTE, &demo).replace("auth = \"public\"\n", "") + "auth = \"sometimes\"\n";
    write_and_rename(&route_file, bad.as_bytes());
    let attempt = wait_attempt(&gw, |a| mentions(a, "errors", "routes refused"));
    assert!(mentions(&attempt, "errors", "swap.toml:"), "{attempt}");
    assert_eq!(version(&gw), "green");

    // A route naming a plugin that is not loaded is refused too.
    let good = with_demo_ports(SWAP_ROUTE, &demo) + "# fixed\n";
    write_and_rename(&route_file, good.as_bytes());
    wait_attempt(&gw, |a| a["outcome"] == "applied" && mentions(a, "changes", "routes reloaded"));
    let extra = good.replace("/swap", "/extra").replace("\"swap\"", "\"nope\"");
    write_and_rename(&routes_dir(&gw).join("extra.toml"), extra.as_bytes());
    let attempt = wait_attempt(&gw, |a| mentions(a, "errors", "\"nope\""));
    assert_eq!(attempt["outcome"], "refused", "{attempt}");
    assert!(mentions(&attempt, "errors", "extra.toml:"), "{attempt}");
    assert_eq!(gw.get("/extra", &[]).status, 404);
    assert_eq!(version(&gw), "green");

    // Every refusal is counted in the metrics.
    let metrics = admin_get(gw.admin, "/metrics");
    assert!(
        metrics.header("content-type").unwrap().starts_with("application/openmetrics-text"),
        "{metrics:?}"
    );
    let text = metrics.text();
    let value = |series: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("gatehouse_reload_refusals_total{file=\"swap.wasm\"}") >= 3, "{text}");
    assert!(value("gatehouse_reload_refusals_total{file=\"routes\"}") >= 2, "{text}");
    assert!(value("gatehouse_reloads_total{outcome=\"refused\"}") >= 5, "{text}");
    assert!(value("gatehouse_reloads_total{outcome=\"applied\"}") >= 2, "{text}");
    assert!(value("gatehouse_plugin_calls_total{plugin=\"swap\"") >= 1, "{text}");
}

#[test]
fn a_plugin_that_cannot_run_within_the_limits_is_refused_at_load() {
    let demo = Demo::start();
    // blue fits in 4 MiB; big-memory starts with 8 MiB of static data.
    let gw = start(&demo, |s| s.plugin_limits = "memory = \"4MiB\"\n".into());
    let big = bytes_of("big-memory");
    copy_in_place(&plugins_dir(&gw).join("swap.wasm"), &big);
    let entry = wait_entry(&gw, "swap", "failed", &sha256(&big));
    let error = entry["error"].as_str().unwrap();
    assert!(error.contains("plugin limits") && error.contains("4194304"), "{entry}");
    assert_eq!(version(&gw), "blue");
}

#[test]
fn a_plugins_folder_made_after_start_is_watched() {
    let demo = Demo::start();
    let outside = tempfile::tempdir().unwrap();
    let later = outside.path().join("plugins");
    let gw = start(&demo, |s| {
        s.plugins.clear();
        s.server = format!("plugins_dir = {:?}\n", later.display().to_string());
    });
    assert_eq!(version(&gw), "status 503", "no plugin yet");
    assert!(logged(&gw, |l| l.contains("folder missing; watching for it to appear")));
    // Made, and filled at once: the first file may be written before the
    // folder's own watch exists; the reload that follows it reads it.
    std::fs::create_dir(&later).unwrap();
    std::fs::write(later.join("swap.wasm"), bytes_of("blue")).unwrap();
    wait_version(&gw, "blue");
    // From then on the folder is watched like any other.
    write_and_rename(&later.join("swap.wasm"), &bytes_of("green"));
    wait_version(&gw, "green");
}

#[test]
fn a_half_written_file_loads_once_its_write_completes() {
    let demo = Demo::start();
    let gw = start(&demo, |_| {});
    let green = bytes_of("green");
    let half = green.len() / 2;
    let mut file = std::fs::File::create(plugins_dir(&gw).join("swap.wasm")).unwrap();
    file.write_all(&green[..half]).unwrap();
    file.flush().unwrap();
    // The writer stalls with the file open: once it has been quiet for the
    // settle time the half file is read and refused; blue keeps serving.
    let entry = wait_entry(&gw, "swap", "failed", &sha256(&green[..half]));
    assert_eq!(entry["serving"]["sha256"], sha256(&bytes_of("blue")), "{entry}");
    assert_eq!(version(&gw), "blue");
    // The rest of the write (and the close) loads the complete file.
    file.write_all(&green[half..]).unwrap();
    drop(file);
    wait_entry(&gw, "swap", "loaded", &sha256(&green));
    assert_eq!(version(&gw), "green");
}

#[test]
fn removing_and_re_adding_plugins() {
    let demo = Demo::start();
    let gw = start(&demo, |s| s.plugins.push(("spare.wasm".into(), plugin("green"))));
    let dir = plugins_dir(&gw);
    assert_eq!(plugin_entry(&gw, "spare").unwrap()["state"], "loaded");

    // A plugin no route uses simply goes.
    std::fs::remove_file(dir.join("spare.wasm")).unwrap();
    assert!(wait_for(RELOAD_LIMIT, || plugin_entry(&gw, "spare").is_none().then_some(())).is_some());
    wait_attempt(&gw, |a| mentions(a, "changes", "spare.wasm: removed"));

    // One that a route uses keeps serving, and says so.
    std::fs::remove_file(dir.join("swap.wasm")).unwrap();
    let entry = wait_for(RELOAD_LIMIT, || plugin_entry(&gw, "swap").filter(|e| e["state"] == "removed")).expect("state removed");
    assert!(entry["error"].as_str().unwrap().contains("routes still use"), "{entry}");
    assert_eq!(version(&gw), "blue");
    wait_attempt(&gw, |a| mentions(a, "errors", "swap.wasm: removal refused"));

    // Putting a file back loads it.
    let green = bytes_of("green");
    copy_in_place(&dir.join("swap.wasm"), &green);
    wait_entry(&gw, "swap", "loaded", &sha256(&green));
    assert_eq!(version(&gw), "green");

    // Retiring it: first the route (the prefix goes native), then the file.
    let native = with_demo_ports(SWAP_ROUTE, &demo).replace("plugin = \"swap\"\n", "");
    write_and_rename(&routes_dir(&gw).join("swap.toml"), native.as_bytes());
    let ok = wait_for(RELOAD_LIMIT, || {
        let r = gw.get("/swap", &[]);
        (r.status == 200 && r.header("x-plugin-version").is_none()).then_some(r)
    })
    .expect("the route went native");
    assert_eq!(ok.json()["path"], "/swap", "the user-service echo answered");
    std::fs::remove_file(dir.join("swap.wasm")).unwrap();
    assert!(wait_for(RELOAD_LIMIT, || plugin_entry(&gw, "swap").is_none().then_some(())).is_some());
}

#[test]
fn route_file_edits_change_routing_without_a_restart() {
    let demo = Demo::start();
    let gw = start(&demo, |_| {});
    let echo = routes_dir(&gw).join("echo.toml");
    let route = |prefix: &str| {
        format!(
            "service = \"knowledge-service\"\nupstream = \"http://127.0.0.1:{}\"\n\n[[route]]\nprefix = \"{prefix}\"\nauth = \"required\"\n",
            demo.port("knowledge-service")
        )
    };
    let tok = token("7", Some("pro"));
    let status = |path: &str| gw.get_as(path, &tok).status;
    assert_eq!(status("/echo/x"), 404);

    // A new file (written in place, as `cp` does) adds its routes.
    copy_in_place(&echo, route("/echo").as_bytes());
    assert!(wait_for(RELOAD_LIMIT, || (status("/echo/x") == 200).then_some(())).is_some());
    let resp = gw.get_as("/echo/x", &tok);
    assert_eq!(
        resp.upstream_header("x-user-id"),
        ["7"],
        "the new route carries the identity contract"
    );

    // An edit moves the prefix.
    write_and_rename(&echo, route("/moved").as_bytes());
    assert!(wait_for(RELOAD_LIMIT, || (status("/moved/x") == 200).then_some(())).is_some());
    assert_eq!(status("/echo/x"), 404);
    let routes = admin_get(gw.admin, "/admin/routes").json();
    assert!(routes.as_array().unwrap().iter().any(|r| r["prefix"] == "/moved"), "{routes}");

    // A duplicate prefix across files is refused; both files' routes stay as they were.
    copy_in_place(&routes_dir(&gw).join("dup.toml"), route("/moved").as_bytes());
    let attempt = wait_attempt(&gw, |a| mentions(a, "errors", "duplicate prefix"));
    assert_eq!(attempt["outcome"], "refused", "{attempt}");
    assert_eq!(status("/moved/x"), 200);
    std::fs::remove_file(routes_dir(&gw).join("dup.toml")).unwrap();

    // SIGHUP reloads too (here: nothing changed since the removal was seen).
    let before = reloads(&gw).as_array().unwrap().len();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &gw.proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let attempt = wait_attempt(&gw, |a| a["triggers"].as_array().unwrap().iter().any(|t| t == "signal"));
    assert!(reloads(&gw).as_array().unwrap().len() > before, "{attempt}");

    // Removing the file removes its routes; a request already in flight on
    // one of them finishes on the snapshot it started with.
    let in_flight = {
        let (addr, tok) = (gw.addr, tok.clone());
        std::thread::spawn(move || {
            let req =
                format!("GET /moved/_demo/delay?ms=3000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n");
            raw(addr, req.as_bytes())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(&echo).unwrap();
    assert!(wait_for(RELOAD_LIMIT, || (status("/moved/x") == 404).then_some(())).is_some());
    assert!(!in_flight.is_finished(), "the slow request should still be running after the swap");
    assert_eq!(
        in_flight.join().unwrap().status,
        200,
        "the in-flight request finished on its snapshot"
    );
    assert_eq!(version(&gw), "blue", "the plugin route was untouched throughout");
}

#[test]
fn memory_stays_bounded_over_many_reloads() {
    let demo = Demo::start();
    // Explicit reloads only (POST /admin/reload answers when its reload is
    // done), so every iteration is exactly one reload.
    let gw = start(&demo, |s| s.reload = "watch = false".into());
    let target = plugins_dir(&gw).join("swap.wasm");
    let (blue, green) = (bytes_of("blue"), bytes_of("green"));
    let pid = gw.proc.child.id();
    let mut rss_after_10 = 0;
    for i in 1..=200 {
        let (name, bytes) = if i % 2 == 1 { ("green", &green) } else { ("blue", &blue) };
        copy_in_place(&target, bytes);
        let resp = admin_request(gw.admin, "POST", "/admin/reload");
        assert_eq!(resp.status, 200, "{}", resp.text());
        let attempt = resp.json();
        assert_eq!(attempt["outcome"], "applied", "{attempt}");
        assert_eq!(attempt["triggers"][0], "admin", "{attempt}");
        for _ in 0..5 {
            assert_eq!(version(&gw), name, "reload {i}");
        }
        if i == 10 {
            rss_after_10 = vm_rss_kib(pid);
        }
    }
    let rss_after_200 = vm_rss_kib(pid);
    eprintln!("RSS after 10 reloads: {rss_after_10} KiB; after 200: {rss_after_200} KiB");
    assert!(
        rss_after_200 <= rss_after_10 + 24 * 1024,
        "RSS grew from {rss_after_10} KiB to {rss_after_200} KiB over 190 reloads"
    );
    // The history is bounded too, and a reload with nothing new says so.
    let history = reloads(&gw);
    assert_eq!(history.as_array().unwrap().len(), 50, "{history:#}");
    let resp = admin_request(gw.admin, "POST", "/admin/reload");
    assert_eq!(resp.json()["outcome"], "unchanged", "{}", resp.text());
    assert_eq!(admin_request(gw.admin, "GET", "/admin/reload").status, 405);
}

#[test]
fn a_kubernetes_style_volume_update_is_seen() {
    // What the kubelet does for a ConfigMap or Secret volume: the files are
    // links through `..data`, a link to a timestamped folder; an update
    // writes a new folder and renames a new `..data` link over the old one.
    let demo = Demo::start();
    let gw = start(&demo, |s| s.plugins.clear());
    let dir = plugins_dir(&gw);
    let publish = |stamp: &str, bytes: &[u8]| {
        std::fs::create_dir(dir.join(stamp)).unwrap();
        std::fs::write(dir.join(stamp).join("swap.wasm"), bytes).unwrap();
        std::os::unix::fs::symlink(stamp, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    publish("..2026_12_01_a", &bytes_of("blue"));
    std::os::unix::fs::symlink("..data/swap.wasm", dir.join("swap.wasm")).unwrap();
    wait_version(&gw, "blue");
    // Let the events of the set-up settle, so that only the update can load green.
    std::thread::sleep(Duration::from_millis(500));
    publish("..2026_12_01_b", &bytes_of("green"));
    wait_version(&gw, "green");
    // It was the `..data` swap that loaded it.
    wait_attempt(&gw, |a| a["files"].as_array().unwrap().iter().any(|f| f == "..data"));
}
