//! Per-request cost of a plugin: fresh `Store` (its WASI context is made only
//! if the plugin calls WASI), instantiate from the `InstancePre`, call
//! `handle`, drop. The `hello` plugin answers itself, so this is the whole
//! wasm share of a request on its route.
//!
//!   make plugins && cargo bench -p gatehouse --bench plugin_call
//!
//! `PLUGIN_BENCH_WASM=path/to/other.wasm` (absolute, or relative to the
//! repository) measures another component of the `route-handler` world
//! (another build of `hello`, or the floor in `bench/plugin-floor`: see
//! `bench/plugin-floor.sh`).
//!
//! Prints the median and p90 over batches (no statistics crate needed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::client::UpstreamClient;
use gatehouse::config::{Config, RoutePlugin, Upstream};
use gatehouse::headers::Contract;
use gatehouse::wasm::bindings::{Action, Caller, Request, RequestInfo};
use gatehouse::wasm::host::PluginState;
use gatehouse::wasm::outbound::Outbound;
use gatehouse::wasm::{Runtime, call, load::load_file};

/// The allocator the `gatehouse` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCHES: usize = 30;
const PER_BATCH: usize = 2000;

fn main() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Relative to the repository (cargo runs benches from `host/`).
    let wasm = repo.join(std::env::var_os("PLUGIN_BENCH_WASM").unwrap_or_else(|| "plugins/hello.wasm".into()));
    let label = wasm
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
    assert!(wasm.is_file(), "{} missing: run `make plugins` first", wasm.display());
    let mut config = Config::load(None).expect("default config");
    config.plugins.cache_dir = repo.join("target/bench-plugin-cache");
    // Under valgrind (which cannot reserve the full pool's address space):
    // `PLUGIN_BENCH_INSTANCES=2 valgrind --tool=callgrind ...`.
    if let Some(n) = std::env::var("PLUGIN_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()) {
        config.plugins.max_instances = n;
    }
    let runtime = Runtime::new(&config.plugins).expect("runtime");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let plugin = Arc::new(
        load_file(&runtime, &wasm, "hello", rt.handle())
            .map_err(|(_, e)| e)
            .expect("load hello.wasm"),
    );
    let upstream = Arc::new(Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: "127.0.0.1:9".parse().unwrap(),
    });
    let client = UpstreamClient::new(&config.upstream);
    let route = Arc::new(RoutePlugin {
        name: "hello".into(),
        settings: HashMap::from([("greeting".to_string(), "hello".to_string())]),
        unset_vars: Vec::new(),
        calls: Vec::new(),
        claims: Vec::new(),
        memory: None,
        deadline: None,
        max_body: None,
    });
    let contract = Arc::new(Contract::default());
    let services = Arc::new(HashMap::new());

    let outbound = || {
        Arc::new(Outbound {
            client: client.clone(),
            service: "user-service".into(),
            upstream: upstream.clone(),
            services: services.clone(),
            calls: Vec::new(),
            contract: contract.clone(),
            host: None,
            max_body: 1 << 20,
            plugin: plugin.name.clone(),
            request_id: http::HeaderValue::from_static("req-1"),
        })
    };

    let one = || {
        let state = PluginState::new(plugin.name.clone(), "req-1".into(), route.clone(), outbound(), 64 << 20);
        let caller = Some(Caller {
            user_id: "42".into(),
            tier: Some("pro".into()),
            claims: Vec::new(),
        });
        let info = RequestInfo {
            request_id: "01a2-req".into(),
            route_prefix: "/api/v1/hello".into(),
            service: "user-service".into(),
        };
        let request = Request {
            method: "GET".into(),
            path_with_query: "/api/v1/hello".into(),
            headers: vec![("host".into(), "localhost".into()), ("x-user-id".into(), "42".into())],
            body: Vec::new(),
        };
        let budget = gatehouse::wasm::call::Budget {
            since: std::time::Instant::now(),
            deadline: Duration::from_millis(200),
            claim: None,
        };
        call(&plugin, state, budget, caller, info, request)
    };

    // The host-side share: the per-request state (limits, settings, the way
    // out); a WASI context is made only if the plugin calls WASI.
    let mut state_only: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                let state = PluginState::new(plugin.name.clone(), "req-1".into(), route.clone(), outbound(), 64 << 20);
                std::hint::black_box(&state);
            }
            start.elapsed().as_secs_f64() * 1e6 / PER_BATCH as f64
        })
        .collect();
    state_only.sort_by(f64::total_cmp);
    println!(
        "per-request host state alone (limits, settings; WASI is made on first use): median {:.2} µs",
        state_only[BATCHES / 2]
    );

    rt.block_on(async {
        // Warm up the pool slots and caches.
        for _ in 0..PER_BATCH {
            assert!(matches!(one().await, Ok(Action::Respond(_))));
        }
        // The parts: a Store alone (made and dropped), then instantiate and
        // drop without calling `handle`.
        let parts = [("Store new + drop", false), ("instantiate + drop", true)];
        for (what, instantiate) in parts {
            let mut times: Vec<f64> = Vec::with_capacity(BATCHES);
            for _ in 0..BATCHES {
                let start = Instant::now();
                for _ in 0..PER_BATCH {
                    let state = PluginState::new(plugin.name.clone(), "req-1".into(), route.clone(), outbound(), 64 << 20);
                    let mut store = wasmtime::Store::new(plugin.pre.engine(), state);
                    store.limiter(|s| &mut s.limiter);
                    store.set_epoch_deadline(40);
                    if instantiate {
                        plugin.pre.instantiate(&mut store).await.expect("instantiate");
                    }
                    drop(store);
                }
                times.push(start.elapsed().as_secs_f64() * 1e6 / PER_BATCH as f64);
            }
            times.sort_by(f64::total_cmp);
            println!("{what}: median {:.2} µs, min {:.2} µs", times[BATCHES / 2], times[0]);
        }
        let mut per_call: Vec<f64> = Vec::with_capacity(BATCHES);
        for _ in 0..BATCHES {
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                let action = one().await;
                std::hint::black_box(&action);
            }
            per_call.push(start.elapsed().as_secs_f64() * 1e6 / PER_BATCH as f64);
        }
        per_call.sort_by(f64::total_cmp);
        println!(
            "{label}, instantiate + handle + drop: median {:.2} µs, p90 {:.2} µs, min {:.2} µs ({BATCHES} batches × {PER_BATCH})",
            per_call[BATCHES / 2],
            per_call[BATCHES * 9 / 10],
            per_call[0]
        );
    });
}
