//! Running one request through a plugin: a fresh `Store` with the memory
//! cap and an epoch deadline, instantiate from the `InstancePre`, call
//! `handle`, classify whatever went wrong.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};

use super::bindings::{Action, Caller, HandlerPre, Request, RequestInfo};
use super::engine::{Epoch, Runtime};
use super::host::PluginState;
use super::plugin::{LoadedPlugin, PluginStats};

/// Why a plugin call produced no action.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Every pooled instance slot is in use.
    #[error("plugin instance pool exhausted")]
    Busy,
    /// The call ran past its deadline.
    #[error("plugin ran past its {0:?} deadline")]
    Deadline(Duration),
    /// The plugin asked for more memory than its cap.
    #[error("plugin exceeded its memory limit ({0} bytes)")]
    Memory(usize),
    /// The plugin trapped (panic, unreachable, bad memory access...).
    #[error("plugin trapped: {0}")]
    Trap(String),
}

/// Counts a running call in `PluginStats::in_use` until dropped.
struct InUse<'a>(&'a PluginStats);

impl<'a> InUse<'a> {
    fn enter(stats: &'a PluginStats) -> Self {
        stats.in_use.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InUse(stats)
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `handle` on a fresh instance of `plugin`.
pub async fn call(
    plugin: &Arc<LoadedPlugin>,
    state: PluginState,
    deadline: Duration,
    caller: Option<Caller>,
    info: RequestInfo,
    request: Request,
) -> Result<Action, CallError> {
    PluginStats::bump(&plugin.stats.calls);
    let _in_use = InUse::enter(&plugin.stats);
    let _running = plugin.epoch.running();
    let memory = state.limiter_memory();
    let mut store = Store::new(plugin.pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    // Every epoch tick a running plugin yields to the executor, so a
    // CPU-bound plugin never holds up other requests on its worker thread;
    // when its ticks are spent it is interrupted (a trap).
    let mut ticks_left = Runtime::ticks(deadline);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks_left = ticks_left.saturating_sub(1);
        Ok(if ticks_left == 0 {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
        })
    });

    let run = plugin.pre.handle(&mut store, caller.as_ref(), &info, &request);
    // The timer is the wall-clock deadline (it fires at a yield or while a
    // host call waits); the epoch budget above is the backstop. Most calls
    // finish in their first poll, without ever waiting: they need no timer,
    // so it is armed only when the call first has to wait.
    let started = Instant::now();
    let outcome = {
        let mut run = std::pin::pin!(run);
        match std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
            Poll::Ready(done) => Ok(done),
            Poll::Pending => tokio::time::timeout(deadline.saturating_sub(started.elapsed()), run).await,
        }
    };
    store.data().flush_stdio();
    plugin.stats.duration.observe(started.elapsed().as_secs_f64());
    plugin.stats.peak_memory.observe(store.data().limiter.peak as f64);
    let err = match outcome {
        Ok(Ok(action)) => return Ok(action),
        Err(_) => CallError::Deadline(deadline),
        Ok(Err(e)) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() => CallError::Busy,
        Ok(Err(_)) if store.data().limiter.memory_hit => CallError::Memory(memory),
        Ok(Err(e)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => CallError::Deadline(deadline),
        Ok(Err(e)) => CallError::Trap(format!("{e:#}")),
    };
    let counter = match &err {
        CallError::Busy => &plugin.stats.busy,
        CallError::Deadline(_) => &plugin.stats.timeouts,
        CallError::Memory(_) => &plugin.stats.memory_limit,
        CallError::Trap(_) => &plugin.stats.traps,
    };
    PluginStats::bump(counter);
    Err(err)
}

/// Instantiates `pre` once, without calling it, under the plugin limits: a
/// component whose instantiation traps, runs away or needs more memory than
/// allowed is refused at load time instead of failing every request.
pub async fn probe(rt: &Runtime, pre: &HandlerPre, epoch: &Epoch, name: &str) -> Result<(), String> {
    let _running = epoch.running();
    let state = PluginState::probe(name.into(), rt.limits.memory as usize);
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(Runtime::ticks(rt.limits.deadline));
    store.epoch_deadline_trap();
    match pre.instantiate(&mut store).await {
        Ok(_) => Ok(()),
        // Every slot busy serving requests says nothing about this component.
        Err(e) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() => Ok(()),
        Err(_) if store.data().limiter.memory_hit => Err(format!("it needs more than the {} bytes of memory allowed", rt.limits.memory)),
        Err(e) => Err(format!("{e:#}")),
    }
}
