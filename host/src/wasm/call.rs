//! Running one request through a plugin: a fresh `Store` with the memory
//! cap and an epoch deadline, instantiate from the `InstancePre`, call
//! `handle` (or, for a `wasi:http` component, `incoming-handler.handle`),
//! classify whatever went wrong.

use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use super::bindings::{Action, Caller, PluginPre, Request, RequestInfo};
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
    /// A `wasi:http` component finished without a usable response head:
    /// it never set one, or set an error code.
    #[error("plugin gave no response: {0}")]
    NoResponse(String),
}

/// Counts a running call in `PluginStats::in_use` until dropped.
struct InUse<S: Deref<Target = PluginStats>>(S);

impl<S: Deref<Target = PluginStats>> InUse<S> {
    fn enter(stats: S) -> Self {
        stats.in_use.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InUse(stats)
    }
}

impl<S: Deref<Target = PluginStats>> Drop for InUse<S> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A store for one request: the memory cap, and an epoch deadline that
/// yields to the executor every tick, so a CPU-bound plugin never holds up
/// other requests on its worker thread; when its ticks are spent it is
/// interrupted (a trap).
fn new_store(engine: &wasmtime::Engine, state: PluginState, deadline: Duration) -> Store<PluginState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
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
    store
}

/// Records a finished call's duration, memory and output, and classifies
/// its outcome (`Err(())`: the wall-clock deadline passed), counting what
/// went wrong.
fn settle<T>(
    plugin: &LoadedPlugin,
    store: &Store<PluginState>,
    started: Instant,
    deadline: Duration,
    outcome: Result<wasmtime::Result<T>, ()>,
    claim: Option<&Claim>,
) -> Result<T, CallError> {
    // A call its waiter gave up on was counted (a timeout) by the waiter.
    let counted = claim.is_none_or(Claim::settle);
    store.data().flush_stdio();
    plugin.stats.duration.observe(started.elapsed().as_secs_f64());
    plugin.stats.peak_memory.observe(store.data().limiter.peak as f64);
    let err = match outcome {
        Ok(Ok(done)) => return Ok(done),
        Err(()) => CallError::Deadline(deadline),
        Ok(Err(e)) if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() => CallError::Busy,
        Ok(Err(_)) if store.data().limiter.memory_hit => CallError::Memory(store.data().limiter_memory()),
        Ok(Err(e)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => CallError::Deadline(deadline),
        Ok(Err(e)) => CallError::Trap(format!("{e:#}")),
    };
    let counter = match &err {
        CallError::Busy => &plugin.stats.busy,
        CallError::Deadline(_) => &plugin.stats.timeouts,
        CallError::Memory(_) => &plugin.stats.memory_limit,
        CallError::Trap(_) => &plugin.stats.traps,
        CallError::NoResponse(_) => &plugin.stats.bad_results,
    };
    if counted {
        PluginStats::bump(counter);
    }
    Err(err)
}

/// Work handed to another task, whose end is claimed once: by the task
/// when it settles, or by its waiter when the deadline passes first (the
/// client gets its 504 then, even if the task's low-priority thread has not
/// run since). Whoever claims it counts it; a task not yet started when its
/// waiter gives up never runs.
#[derive(Clone, Default)]
pub struct Claim(Arc<std::sync::atomic::AtomicU8>);

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const GIVEN_UP: u8 = 2;
const SETTLED: u8 = 3;

impl Claim {
    /// The task, before it runs: false if its waiter has given up.
    pub fn start(&self) -> bool {
        self.swap(QUEUED, RUNNING)
    }

    /// The task, as it ends: false if its waiter gave up first.
    fn settle(&self) -> bool {
        self.swap(RUNNING, SETTLED)
    }

    /// The waiter, at the deadline: true if it claims the end (a timeout
    /// to count; the task will not run, or is cut at its next yield),
    /// false if the task has settled and its result is on the way.
    pub fn give_up(&self) -> bool {
        self.swap(QUEUED, GIVEN_UP) || self.swap(RUNNING, GIVEN_UP)
    }

    /// The waiter: `work`'s outcome, or `None` once `deadline` passes and
    /// the end is claimed here (counted as a timeout: the caller answers 504
    /// and drops or aborts the work, cut at its next yield).
    pub async fn wait<F: Future>(&self, stats: &PluginStats, deadline: Duration, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        match tokio::time::timeout(deadline, work.as_mut()).await {
            Ok(done) => Some(done),
            Err(_) if self.give_up() => {
                PluginStats::bump(&stats.timeouts);
                None
            }
            // It settled just now: its outcome is on the way.
            Err(_) => Some(work.await),
        }
    }

    fn swap(&self, from: u8, to: u8) -> bool {
        self.0.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// A call's time: `deadline` from `since` (when the gateway handed it
/// over), and, when it runs on another task, the claim on its end.
#[derive(Clone, Copy)]
pub struct Budget<'a> {
    pub since: Instant,
    pub deadline: Duration,
    pub claim: Option<&'a Claim>,
}

/// Runs `handle` on a fresh instance of `plugin` (of our world).
pub async fn call(
    plugin: &Arc<LoadedPlugin>,
    state: PluginState,
    budget: Budget<'_>,
    caller: Option<Caller>,
    info: RequestInfo,
    request: Request,
) -> Result<Action, CallError> {
    let PluginPre::Gatehouse(pre) = &plugin.pre else {
        return Err(CallError::Trap("not a component of the gatehouse:plugin world".into()));
    };
    let Budget { since, deadline, .. } = budget;
    PluginStats::bump(&plugin.stats.calls);
    let _in_use = InUse::enter(&*plugin.stats);
    let _running = plugin.epoch.running();
    let mut store = new_store(pre.engine(), state, deadline);
    let outcome = {
        let run = std::pin::pin!(pre.handle(&mut store, caller.as_ref(), &info, &request));
        timed(&plugin.stats, since, deadline, run).await
    };
    settle(plugin, &store, since, deadline, outcome, budget.claim)
}

/// Runs `run` under the wall-clock `deadline` from `started` (`Err(())`
/// past it), recording in `stats` how long its polls took in all: the time
/// its code ran (waits on services and yields left out), which decides
/// where its next calls run. The timer fires at a yield or while a host
/// call waits (the epoch budget is the backstop). Most calls finish in
/// their first poll, without ever waiting: they need no timer, so it is
/// armed only when the call first has to wait.
///
/// `run` is pinned by the caller: a call's future is kilobytes, and moving
/// it into this one would copy it on every call.
async fn timed<F: Future>(stats: &PluginStats, started: Instant, deadline: Duration, mut run: Pin<&mut F>) -> Result<F::Output, ()> {
    let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
    let mut busy = Duration::ZERO;
    let outcome = std::future::poll_fn(|cx| {
        let polled = Instant::now();
        let done = run.as_mut().poll(cx);
        busy += polled.elapsed();
        if let Poll::Ready(done) = done {
            return Poll::Ready(Ok(done));
        }
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep(deadline.saturating_sub(started.elapsed()))));
        }
        match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(())),
            _ => Poll::Pending,
        }
    })
    .await;
    stats.ran(busy);
    outcome
}

/// Runs a `wasi:http` component on a fresh instance of `plugin`, as
/// `wasmtime serve` does: the request goes in as its `incoming-request`,
/// the response head comes back as soon as the component sets it, and the
/// body streams while the component runs on in a task of its own, under
/// the same deadline and memory cap; a failure after the head cuts the
/// body short (and is counted like any other).
pub async fn serve_http(
    runtime: &Runtime,
    plugin: &Arc<LoadedPlugin>,
    state: PluginState,
    deadline: Duration,
    request: http::Request<WasiBody>,
) -> Result<http::Response<HyperOutgoingBody>, CallError> {
    let PluginPre::WasiHttp { pre, .. } = &plugin.pre else {
        return Err(CallError::Trap("not a wasi:http component".into()));
    };
    PluginStats::bump(&plugin.stats.calls);
    let in_use = InUse::enter(plugin.stats.clone());
    let running = plugin.epoch.running_owned();
    let mut store = new_store(pre.engine(), state, deadline);
    let (head, answered) = tokio::sync::oneshot::channel();
    let http = store.data_mut();
    let resources = http
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| Ok((req, http.http().new_response_outparam(head)?)));
    let (req, out) = resources.map_err(|e| CallError::Trap(format!("preparing the request: {e:#}")))?;
    let (pre, owner) = (pre.clone(), plugin.clone());
    // A slow component runs on the plugin threads (`Runtime::spawn`). Its
    // deadline counts from here, time waiting for a plugin thread included.
    let slow = plugin.stats.is_slow(runtime.limits.slow_call);
    let started = Instant::now();
    let claim = Claim::default();
    let claimed = claim.clone();
    let task = runtime.spawn(slow, async move {
        let _in_use = in_use;
        let _running = running;
        if !claimed.start() {
            return Err(CallError::Deadline(deadline));
        }
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
        };
        let outcome = {
            let run = std::pin::pin!(run);
            timed(&owner.stats, started, deadline, run).await
        };
        settle(&owner, &store, started, deadline, outcome, Some(&claimed))
    });
    let Some(answered) = claim.wait(&plugin.stats, deadline, answered).await else {
        task.abort();
        return Err(CallError::Deadline(deadline));
    };
    match answered {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(code)) => {
            PluginStats::bump(&plugin.stats.bad_results);
            Err(CallError::NoResponse(format!("it answered with the error code {code:?}")))
        }
        // No head: the task ended without one; its outcome says why.
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                PluginStats::bump(&plugin.stats.bad_results);
                Err(CallError::NoResponse("it returned without setting the response-outparam".into()))
            }
            Err(e) => Err(CallError::Trap(format!("{e}"))),
        },
    }
}

/// Instantiates `pre` once, without calling it, under the plugin limits: a
/// component whose instantiation traps, runs away or needs more memory than
/// allowed is refused at load time instead of failing every request.
pub async fn probe(rt: &Runtime, pre: &PluginPre, epoch: &Epoch, name: &str) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::Claim;

    #[test]
    fn a_call_s_end_is_claimed_once() {
        // Given up while queued: it never runs, the waiter counts it.
        let c = Claim::default();
        assert!(c.give_up());
        assert!(!c.start());
        // Given up while running: the waiter counts it, the task does not.
        let c = Claim::default();
        assert!(c.start());
        assert!(c.give_up());
        assert!(!c.settle());
        // Settled first: the task counts it, the waiter waits for its result.
        let c = Claim::default();
        assert!(c.start());
        assert!(c.settle());
        assert!(!c.give_up());
    }
}
