//! The `Engine`s and `Linker`s of the process: async host calls, the
//! pooling allocator (fresh instances cost microseconds) and epoch
//! interruption driven by a ticker thread that stops when the engine drops.
//!
//! The main engine compiles with Cranelift (optimized code). In `tiered`
//! mode (the default) a second, baseline engine is made on first use: it
//! compiles with Winch, several times faster, so a plugin changed by a hot
//! reload serves within milliseconds; its Cranelift build then replaces it
//! in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::OnceLock;
use wasmtime::component::{HasSelf, Linker};

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use super::bindings::RouteHandler;
use super::host::PluginState;
use crate::config::{Compiler, PluginsConfig};

/// How often the epoch advances: the granularity of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// One compiler's engine, with its linker and epoch ticker.
pub struct Tier {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    _ticker: EpochTicker,
}

impl Tier {
    fn new(limits: &PluginsConfig, strategy: Strategy) -> Result<Tier, String> {
        let engine = Engine::new(&engine_config(limits, strategy)).map_err(|e| format!("starting the WebAssembly engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        // WASI p2 for what a Rust `std` component needs. The per-request
        // `WasiCtx` grants nothing: no preopens, no env, no sockets.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("linking WASI: {e:#}"))?;
        RouteHandler::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| format!("linking the gatehouse:plugin imports: {e:#}"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Tier {
            engine,
            linker,
            _ticker: ticker,
        })
    }
}

/// The engines and the limits every instance runs under.
pub struct Runtime {
    /// The main engine: Cranelift, or Winch when `plugins.compiler = "winch"`.
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    pub limits: PluginsConfig,
    _ticker: EpochTicker,
    /// The Winch engine of `tiered` mode, made on first use.
    baseline: OnceLock<Result<Tier, String>>,
}

impl Runtime {
    pub fn new(limits: &PluginsConfig) -> Result<Runtime, String> {
        let strategy = match limits.compiler {
            Compiler::Winch => Strategy::Winch,
            Compiler::Cranelift | Compiler::Tiered => Strategy::Cranelift,
        };
        let Tier { engine, linker, _ticker } = Tier::new(limits, strategy)?;
        Ok(Runtime {
            engine,
            linker,
            limits: limits.clone(),
            _ticker,
            baseline: OnceLock::new(),
        })
    }

    /// The baseline (Winch) engine, in `tiered` mode; `None` otherwise or
    /// if it cannot start (then everything compiles with the main engine).
    pub fn baseline(&self) -> Option<&Tier> {
        if self.limits.compiler != Compiler::Tiered {
            return None;
        }
        let tier = self.baseline.get_or_init(|| Tier::new(&self.limits, Strategy::Winch));
        match tier {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("baseline compiler unavailable, reloads compile with Cranelift: {e}");
                None
            }
        }
    }

    /// The main engine's compiler.
    pub fn compiler(&self) -> &'static str {
        match self.limits.compiler {
            Compiler::Winch => "winch",
            Compiler::Cranelift | Compiler::Tiered => "cranelift",
        }
    }

    /// Epoch ticks that cover `deadline` (at least one).
    pub fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1)
    }
}

fn engine_config(limits: &PluginsConfig, strategy: Strategy) -> Config {
    let instances = limits.max_instances;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        // A Rust component is one main module plus a few small shims.
        .max_core_instances_per_component(32)
        .total_core_instances(instances.saturating_mul(8))
        .max_memories_per_component(4)
        .total_memories(instances.saturating_mul(2))
        .max_tables_per_component(8)
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(limits.memory as usize)
        // Reused slots are reset with memset up to 1 MiB instead of madvise:
        // fewer page faults per request (the `wasmtime serve` fast settings).
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .strategy(strategy)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .memory_init_cow(true);
    config
}

/// Advances the engine's epoch every `EPOCH_TICK` until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the epoch ticker thread: plugin deadlines fall back to the async timeout");
        }
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
