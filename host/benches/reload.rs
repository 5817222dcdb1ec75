//! Reload latency: the time from the last write of a changed plugin file to
//! the first response served by the new version, over 100 swaps, idle and
//! under load. Every swap writes content never seen before (the build plus a
//! custom section with a counter), so each one compiles: the compile cache
//! is always cold. Each swap starts once the previous version's optimized
//! code serves (the default `tiered` compiler serves baseline code first).
//!
//!   make bench-reload        (= make plugins && cargo bench -p gatehouse --bench reload)
//!   COMPILER=cranelift make bench-reload     (without the baseline tier)
//!
//! Runs the real release binaries over loopback; prints p50 / p90 / max.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Demo, Gateway, KeepAlive, Setup, admin_get, plugin, unique_seed, with_nonce};

const SWAPS: usize = 100;
const LOAD_THREADS: usize = 2;

const ROUTE: &str = "service = \"user-service\"\nupstream = \"http://127.0.0.1:{user-service}\"\n\n[[route]]\nprefix = \"/swap\"\nauth = \"public\"\nplugin = \"swap\"\n";

/// `plugins.compiler` under test: `COMPILER=cranelift make bench-reload`
/// compares with the single-tier setting.
fn compiler() -> String {
    std::env::var("COMPILER").unwrap_or_else(|_| "tiered".into())
}

struct Run {
    latencies: Vec<Duration>,
    reload_ms: Vec<f64>,
    requests: u64,
    failed: u64,
}

fn run(demo: &Demo, loaded: bool, nonce_base: u64) -> Run {
    let gw = Gateway::start(
        demo,
        Setup {
            shipped_routes: false,
            routes: vec![("swap.toml".into(), ROUTE.into())],
            plugins: vec![("swap.wasm".into(), plugin("blue"))],
            plugin_limits: format!("compiler = \"{}\"\n", compiler()),
            ..Setup::default()
        },
    );
    let (blue, green) = (std::fs::read(plugin("blue")).unwrap(), std::fs::read(plugin("green")).unwrap());
    let target = gw.dir.path().join("plugins/swap.wasm");

    let stop = Arc::new(AtomicBool::new(false));
    let (requests, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..if loaded { LOAD_THREADS } else { 0 })
        .map(|_| {
            let (stop, requests, failed, addr) = (stop.clone(), requests.clone(), failed.clone(), gw.addr);
            std::thread::spawn(move || {
                let mut conn = KeepAlive::new(addr);
                for _ in 0..100_000_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let ok = conn.get("/swap", &[]).is_ok_and(|r| r.status == 200);
                    requests.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mut probe = KeepAlive::new(gw.addr);
    let mut latencies = Vec::with_capacity(SWAPS);
    for i in 0..SWAPS {
        let (want, bytes) = if i % 2 == 0 { ("green", &green) } else { ("blue", &blue) };
        let bytes = with_nonce(bytes, nonce_base + i as u64);
        std::fs::write(&target, &bytes).unwrap();
        let written = Instant::now();
        let deadline = written + Duration::from_secs(30);
        loop {
            let r = probe.get("/swap", &[]).expect("probe request");
            if r.header("x-plugin-version") == Some(want) {
                latencies.push(written.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "swap {i}: {want} never served");
        }
        // Swaps do not overlap: the next one starts once this version's
        // optimized code serves (tiered mode compiles it in the background).
        let settled = Instant::now() + Duration::from_secs(30);
        while Instant::now() < settled {
            let plugins = admin_get(gw.admin, "/admin/plugins").json();
            let swap = plugins.as_array().unwrap().iter().find(|p| p["name"] == "swap").cloned();
            if swap.is_some_and(|p| p["optimizing"] == false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let attempts = admin_get(gw.admin, "/admin/reloads").json();
    let reload_ms = attempts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "applied")
        .filter_map(|a| a["duration_ms"].as_f64())
        .collect();
    Run {
        latencies,
        reload_ms,
        requests: requests.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

fn report(label: &str, run: &mut Run) {
    run.latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(run.latencies[((run.latencies.len() - 1) as f64 * q).round() as usize]);
    run.reload_ms.sort_by(f64::total_cmp);
    let build = run.reload_ms.get(run.reload_ms.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{label:<7} swaps {:>3}  p50 {:>6.1} ms  p90 {:>6.1} ms  max {:>6.1} ms  (rebuild p50 {build:.1} ms, last 50)  load: {} requests, {} failed",
        run.latencies.len(),
        at(0.5),
        at(0.9),
        ms(*run.latencies.last().unwrap()),
        run.requests,
        run.failed,
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let demo = Demo::start();
    let seed = unique_seed();
    let mut idle = run(&demo, false, seed);
    let mut loaded = run(&demo, true, seed + 1_000_000);
    println!(
        "reload latency: last write of a changed plugin → first response from it (compile cache cold, plugins.compiler = {})",
        compiler()
    );
    report("idle", &mut idle);
    report("loaded", &mut loaded);
}
