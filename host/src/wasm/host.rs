//! Per-request plugin state and the host side of the plugin's imports:
//! `upstream.send`, `log.write`, `config.get`, WASI with nothing granted,
//! and `wasi:http` whose outgoing requests reach only the route's services.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::gatehouse::plugin::{config, log, types, upstream};
use super::bindings::{Level, Request, Response, SendError};
use super::outbound::Outbound;
use crate::config::RoutePlugin;

/// Bytes of stdout and of stderr kept per request (more makes the plugin's
/// write fail, as a full pipe would).
const STDIO_CAPACITY: usize = 64 << 10;
/// Log lines a plugin may write per request; the rest are counted and dropped.
const MAX_LOG_LINES: u32 = 100;
/// Longest log message kept, in bytes.
const MAX_LOG_LINE: usize = 4096;

/// Everything a plugin instance can reach, owned by its `Store`.
pub struct PluginState {
    /// Made on the plugin's first WASI call: most requests never make one,
    /// and a context (random generators, pipes) costs about a microsecond.
    wasi: Option<Box<Wasi>>,
    table: ResourceTable,
    pub limiter: Limiter,
    pub plugin: Arc<str>,
    pub request_id: String,
    pub route: Arc<RoutePlugin>,
    /// Where `upstream.send` and `wasi:http/outgoing-handler` may go.
    pub gate: Gate,
    http: WasiHttpCtx,
    log_lines: u32,
}

/// The way out of the sandbox: `None` for the trial instantiation at load
/// time (no request, nothing reachable). `wasi:http`'s hooks (see
/// `super::outbound`) send what it allows through the gateway's client.
pub struct Gate {
    pub outbound: Option<Arc<Outbound>>,
}

/// WASI with nothing granted, and the pipes that catch the plugin's output.
struct Wasi {
    ctx: WasiCtx,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Wasi {
    /// `settings` become the environment: a `wasi:http` component has no
    /// `config.get`, and reads them as `wasmtime serve --env` would give them.
    fn new(settings: &HashMap<String, String>) -> Box<Wasi> {
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        // Nothing else is granted: no preopened directories, no arguments,
        // no network, none of the gateway's own environment. Clocks and
        // random work as WASI defines them.
        let mut builder = WasiCtx::builder();
        for (key, value) in settings {
            builder.env(key, value);
        }
        let ctx = builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Box::new(Wasi { ctx, stdout, stderr })
    }
}

impl PluginState {
    pub fn new(plugin: Arc<str>, request_id: String, route: Arc<RoutePlugin>, outbound: Arc<Outbound>, memory: usize) -> PluginState {
        PluginState::build(plugin, request_id, route, Some(outbound), memory)
    }

    /// State for the trial instantiation when a plugin loads: no request,
    /// no settings, no way out.
    pub fn probe(plugin: Arc<str>, memory: usize) -> PluginState {
        PluginState::build(plugin, String::new(), Arc::default(), None, memory)
    }

    fn build(plugin: Arc<str>, request_id: String, route: Arc<RoutePlugin>, outbound: Option<Arc<Outbound>>, memory: usize) -> PluginState {
        PluginState {
            wasi: None,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory,
                memory_hit: false,
                peak: 0,
            },
            plugin,
            request_id,
            route,
            gate: Gate { outbound },
            http: WasiHttpCtx::new(),
            log_lines: 0,
        }
    }

    /// The instance's memory cap in bytes.
    pub fn limiter_memory(&self) -> usize {
        self.limiter.memory
    }

    /// Sends what the plugin printed to the log, line by line.
    pub fn flush_stdio(&self) {
        let Some(wasi) = &self.wasi else { return };
        for (stream, pipe) in [("stdout", &wasi.stdout), ("stderr", &wasi.stderr)] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.is_empty())
                .take(MAX_LOG_LINES as usize)
            {
                tracing::info!(target: "gatehouse::plugin", plugin = &*self.plugin, request_id = %self.request_id, stream, "{}", clip(line));
            }
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.get_or_insert_with(|| Wasi::new(&self.route.settings)).ctx,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.gate,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// The memory cap of one instance. It records a refusal so that the
/// resulting trap is reported as "memory limit", not as a plain crash.
pub struct Limiter {
    memory: usize,
    pub memory_hit: bool,
    /// The most linear memory asked for (and granted) so far.
    pub peak: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.memory_hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_LOG_LINE {
        return s;
    }
    let mut end = MAX_LOG_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl types::Host for PluginState {}

impl upstream::Host for PluginState {
    async fn send(&mut self, service: Option<String>, request: Request) -> Result<Response, SendError> {
        match &self.gate.outbound {
            Some(out) => out.send(service.as_deref(), request).await,
            None => Err(SendError::NotAllowed("no request is being handled".into())),
        }
    }
}

impl log::Host for PluginState {
    fn write(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let (plugin, id, msg) = (&*self.plugin, &self.request_id, clip(&message));
        match level {
            Level::Trace => tracing::trace!(target: "gatehouse::plugin", plugin, request_id = %id, "{msg}"),
            Level::Debug => tracing::debug!(target: "gatehouse::plugin", plugin, request_id = %id, "{msg}"),
            Level::Info => tracing::info!(target: "gatehouse::plugin", plugin, request_id = %id, "{msg}"),
            Level::Warn => tracing::warn!(target: "gatehouse::plugin", plugin, request_id = %id, "{msg}"),
            Level::Error => tracing::error!(target: "gatehouse::plugin", plugin, request_id = %id, "{msg}"),
        }
    }
}

impl config::Host for PluginState {
    fn get(&mut self, key: String) -> Option<String> {
        self.route.settings.get(&key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_is_made_on_first_use_and_catches_output() {
        let mut state = PluginState::probe("p".into(), 1 << 20);
        assert!(state.wasi.is_none(), "a request that never calls WASI must not pay for a context");
        state.flush_stdio();
        let _ = state.ctx();
        let wasi = state.wasi.as_ref().expect("made on first use");
        assert!(wasi.stdout.contents().is_empty() && wasi.stderr.contents().is_empty());
    }
}
