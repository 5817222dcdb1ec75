//! The `Engine`s and `Linker`s of the process: async host calls, the
//! pooling allocator (fresh instances cost microseconds) and epoch
//! interruption driven by a ticker thread that stops when the engine drops.
//!
//! The main engine compiles with Cranelift (optimized code). In `tiered`
//! mode (the default) a second, baseline engine is made on first use: it
//! compiles with Winch, several times faster, so a plugin changed by a hot
//! reload serves within milliseconds; its Cranelift build then replaces it
//! in the background.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::family::Family;

use crate::metrics::{Histograms, OneLabel};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy};

use super::bindings::RouteHandler;
use super::host::PluginState;
use crate::config::{Compiler, PluginsConfig};

/// How often the epoch advances: the granularity of plugin deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks without any plugin code running after which the ticker sleeps
/// until the next call (1 s): an idle gateway does not wake 200 times a
/// second.
const IDLE_TICKS: u32 = 200;

/// One compiler's engine, with its linker and epoch ticker.
pub struct Tier {
    pub engine: Engine,
    pub linker: Linker<PluginState>,
    pub epoch: Epoch,
    _ticker: EpochTicker,
}

impl Tier {
    fn new(limits: &PluginsConfig, strategy: Strategy) -> Result<Tier, String> {
        let engine = Engine::new(&engine_config(limits, strategy)).map_err(|e| format!("starting the WebAssembly engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        // WASI p2 for what a Rust `std` component needs. The per-request
        // `WasiCtx` grants nothing: no preopens, no env, no sockets.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("linking WASI: {e:#}"))?;
        // wasi:http for both worlds: `incoming-request`/`response-outparam`
        // for wasi:http components, `outgoing-handler` (restricted to the
        // route's services, `super::outbound`) for every component.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| format!("linking wasi:http: {e:#}"))?;
        RouteHandler::add_to_linker::<_, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| format!("linking the gatehouse:plugin imports: {e:#}"))?;
        let (epoch, ticker) = EpochTicker::start(engine.clone(), IDLE_TICKS);
        Ok(Tier {
            engine,
            linker,
            epoch,
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
    /// The main engine's epoch clock.
    pub epoch: Epoch,
    _ticker: EpochTicker,
    /// The Winch engine of `tiered` mode, made on first use.
    baseline: OnceLock<Result<Tier, String>>,
    /// How long plugin code took to compile (or to come from the cache),
    /// by compiler.
    pub compiles: Histograms<OneLabel>,
    /// Where slow plugins run, started on first use.
    threads: OnceLock<PluginThreads>,
    /// Where background (optimizing) compiles run, started on first use.
    optimizer: OnceLock<Option<rayon::ThreadPool>>,
    /// Content (sha256) whose optimized build is under way: one job per
    /// content, however often a reload brings it back meanwhile.
    pub optimizing: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Runtime {
    pub fn new(limits: &PluginsConfig) -> Result<Runtime, String> {
        let strategy = match limits.compiler {
            Compiler::Winch => Strategy::Winch,
            Compiler::Cranelift | Compiler::Tiered => Strategy::Cranelift,
        };
        let Tier {
            engine,
            linker,
            epoch,
            _ticker,
        } = Tier::new(limits, strategy)?;
        Ok(Runtime {
            engine,
            linker,
            limits: limits.clone(),
            epoch,
            _ticker,
            baseline: OnceLock::new(),
            compiles: Family::new_with_constructor(crate::metrics::latency_histogram),
            threads: OnceLock::new(),
            optimizer: OnceLock::new(),
            optimizing: Default::default(),
        })
    }

    /// Runs `work` (a compile nobody waits for) on the optimizer threads: as
    /// many as cores, at nice 19, so the compiles it runs in parallel leave
    /// the CPU to requests and to the baseline compiles of a reload, which
    /// run on rayon's global pool meanwhile.
    pub fn in_background<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let pool = self.optimizer.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("gatehouse-optimize-{i}"))
                .start_handler(|_| lower_priority(19))
                .build()
                .inspect_err(|e| tracing::warn!("no optimizer threads, optimizing compiles share the CPU: {e}"))
                .ok()
        });
        match pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// Runs `work` on the plugin threads (below the I/O workers' priority)
    /// and waits for it; dropping the wait cancels it.
    pub async fn offload<F>(&self, work: F) -> Result<F::Output, tokio::task::JoinError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Cancel(self.spawn(true, work)).await
    }

    /// Spawns `work`: on the plugin threads with `slow` (if they could
    /// start), else on the caller's runtime.
    pub fn spawn<F>(&self, slow: bool, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if slow && let Some(rt) = &self.threads.get_or_init(|| PluginThreads::start(&self.limits)).0 {
            return rt.spawn(work);
        }
        tokio::spawn(work)
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

/// The plugin threads: a runtime of their own, below the I/O workers'
/// priority (`plugins.threads_nice`: the kernel gives a busy nice-0 thread
/// ~10× the CPU of a nice-10 one and ~70× that of a nice-19 one, and
/// preempts them when it wakes). `None` if it could not start.
struct PluginThreads(Option<tokio::runtime::Runtime>);

impl PluginThreads {
    fn start(limits: &PluginsConfig) -> PluginThreads {
        let nice = limits.threads_nice;
        let threads = match limits.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gatehouse-plugin")
            .enable_all()
            .on_thread_start(move || lower_priority(nice))
            .build();
        match rt {
            Ok(rt) => PluginThreads(Some(rt)),
            Err(e) => {
                tracing::error!("could not start the plugin threads, slow plugins run on the I/O workers: {e}");
                PluginThreads(None)
            }
        }
    }
}

impl Drop for PluginThreads {
    fn drop(&mut self) {
        // Dropped from async code at exit: do not wait for the threads.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority to `nice`.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread, no pointers.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            tracing::warn!("could not lower the plugin threads' priority: {}", std::io::Error::last_os_error());
        }
    }
}

/// A task's `JoinHandle` that aborts the task when dropped.
struct Cancel<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for Cancel<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Cancel<T> {
    fn drop(&mut self) {
        self.0.abort();
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
        // Not PAGEMAP_SCAN: it resets only the pages the kernel reports
        // dirty and misses dirty pages that were swapped out, so on a host
        // with swap a slot's next instance could read the last request's
        // memory (wasmtime PR #14357). memset + madvise is complete.
        // docs/decisions/pagemap-scan-off.md has the cost.
        .pagemap_scan(Enabled::No);
    let mut config = Config::new();
    config
        .strategy(strategy)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .memory_init_cow(true);
    config
}

/// The epoch clock of one engine, shared by the plugins compiled with it.
/// Plugin code runs only between `running()` and the drop of its guard;
/// the ticker advances the epoch while any does, and for `IDLE_TICKS` after.
#[derive(Clone)]
pub struct Epoch(Arc<EpochShared>);

struct EpochShared {
    engine: Engine,
    /// Stores that may run plugin code now.
    running: AtomicUsize,
    /// The ticker is asleep (or about to be) until a call wakes it.
    parked: AtomicBool,
    stop: AtomicBool,
    /// Epoch increments so far (for tests and diagnostics).
    ticks: AtomicU64,
    thread: OnceLock<std::thread::Thread>,
}

/// Plugin code may run while this lives: the epoch keeps advancing, so
/// deadlines and yields work.
pub struct Running<'a>(&'a EpochShared);

impl Epoch {
    /// Marks plugin code as running, waking the ticker if it sleeps.
    pub fn running(&self) -> Running<'_> {
        self.enter();
        Running(&self.0)
    }

    /// `running`, for code that outlives the caller's borrow (a `wasi:http`
    /// component streaming its response from its own task).
    pub fn running_owned(&self) -> RunningOwned {
        self.enter();
        RunningOwned(self.0.clone())
    }

    fn enter(&self) {
        let shared = &*self.0;
        shared.running.fetch_add(1, Ordering::SeqCst);
        // A plain load first: while the ticker runs (the usual case under
        // load) calls only read the flag and never write its cache line.
        if shared.parked.load(Ordering::SeqCst)
            && shared.parked.swap(false, Ordering::SeqCst)
            && let Some(thread) = shared.thread.get()
        {
            thread.unpark();
        }
    }

    /// How many times the epoch has advanced.
    pub fn ticks(&self) -> u64 {
        self.0.ticks.load(Ordering::Relaxed)
    }

    /// True while the ticker sleeps for want of plugin calls.
    pub fn is_parked(&self) -> bool {
        self.0.parked.load(Ordering::SeqCst)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An owned [`Running`].
pub struct RunningOwned(Arc<EpochShared>);

impl Drop for RunningOwned {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Owns the ticker thread of an `Epoch`; stops it when dropped.
struct EpochTicker {
    shared: Arc<EpochShared>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, idle_ticks: u32) -> (Epoch, EpochTicker) {
        let shared = Arc::new(EpochShared {
            engine,
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-epoch".into())
            .spawn(move || tick(&s, idle_ticks))
            .ok();
        match &thread {
            Some(t) => {
                let _ = shared.thread.set(t.thread().clone());
            }
            None => tracing::error!("could not start the epoch ticker thread: plugin deadlines fall back to the async timeout"),
        }
        (Epoch(shared.clone()), EpochTicker { shared, thread })
    }
}

/// The ticker thread: advance, and sleep when nothing has run for a while.
/// A call that starts while it decides to sleep either sees `parked` and
/// wakes it, or is seen by the second look at `running`.
fn tick(s: &EpochShared, idle_ticks: u32) {
    let mut idle = 0;
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(EPOCH_TICK);
        s.engine.increment_epoch();
        s.ticks.fetch_add(1, Ordering::Relaxed);
        if s.running.load(Ordering::SeqCst) > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < idle_ticks {
            continue;
        }
        s.parked.store(true, Ordering::SeqCst);
        if s.running.load(Ordering::SeqCst) == 0 {
            while s.parked.load(Ordering::SeqCst) && !s.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
        s.parked.store(false, Ordering::SeqCst);
        idle = 0;
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// Waits (bounded) for `cond`.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..400 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("timed out waiting for: {what}");
    }

    #[test]
    fn the_ticker_sleeps_when_idle_and_wakes_for_a_call() {
        let (epoch, _ticker) = EpochTicker::start(engine(), 4);
        eventually("the idle ticker parks", || epoch.is_parked());
        let parked_at = epoch.ticks();
        std::thread::sleep(EPOCH_TICK * 6);
        assert_eq!(epoch.ticks(), parked_at, "a parked ticker does not advance the epoch");

        // While a call runs, the epoch advances however long it takes.
        let running = epoch.running();
        eventually("a call wakes the ticker", || epoch.ticks() >= parked_at + 8);
        assert!(!epoch.is_parked());
        drop(running);
        eventually("the ticker parks again after the call", || epoch.is_parked());
    }

    #[test]
    fn dropping_the_ticker_stops_a_parked_thread() {
        let (epoch, ticker) = EpochTicker::start(engine(), 1);
        eventually("the idle ticker parks", || epoch.is_parked());
        drop(ticker); // joins: hangs here if the thread never wakes
    }
}
