//! The upstream HTTP/1.1 client: one pool of kept-alive connections per
//! upstream, each connection driven by the task of the request using it.
//!
//! A request takes the most recently used idle connection that is still
//! quiet (LIFO keeps the working set small and warm), or opens a new one
//! (connect timeout, `TCP_NODELAY`, keepalive probes). The connection goes
//! back to the pool when its response body has been read to the end; one
//! dropped mid-response (a client that went away) is closed. Upgrades and
//! broken exchanges are not pooled; idle connections are closed after
//! `pool_idle_timeout`.
//!
//! The upstream may close an idle connection at any moment (its own
//! keep-alive timeout). A request that meets such a connection before its
//! head went out is sent on a new one; one that went out just as the
//! connection closed is sent again only if it is idempotent and has no body.
//!
//! Why not hyper's client: its HTTP/1 connection runs as a task of its own,
//! reached through channels, so every proxied request paid two task hops and
//! a body channel (about a third of the gateway's instructions per request,
//! measured with `bench/instructions.sh`). Here the request's own task
//! writes the head, reads the response and streams the body, as Pingora
//! does. The wire format lives in [`h1`]; responses come without
//! hop-by-hop fields (but for a 101, whose tunnel needs them).

mod body;
mod conn;
mod h1;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::Scheme;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

pub use body::PooledBody;
pub use conn::SendBodyError;
pub use h1::HeadError;

use crate::body::GatewayBody;
use crate::config::{Upstream, UpstreamConfig};
use conn::{Conn, Failed};

/// The pool shared by every route (cloning shares it).
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
}

struct Inner {
    /// Keyed by host and port alone: every upstream is `http://`.
    /// Fx-hashed: looked up on every request, and the keys are our own config.
    /// Keyed by the authority exactly as configured: `Authority`'s own hash
    /// lowercases byte by byte (~500 instructions a request); two spellings
    /// of one host at worst get two pools.
    hosts: Mutex<FxHashMap<Box<str>, Arc<Host>>>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    max_idle_per_host: usize,
    /// The largest response head (and trailer section) accepted.
    max_head: usize,
    /// Response fields left out as heads are parsed (the response stage's).
    dropped: fn(&str) -> bool,
    reaper_started: AtomicBool,
}

/// One upstream's idle connections, oldest first, and how many of its
/// connections are open (idle or in use).
struct Host {
    idle: Mutex<Vec<Idle>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout,
    /// name not resolved).
    #[error("connect")]
    Connect(#[source] io::Error),
    /// The connection broke.
    #[error("connection")]
    Io(#[source] io::Error),
    /// The upstream closed the connection without answering.
    #[error("connection closed before a response")]
    Closed,
    /// The upstream closed the connection in the middle of the response head.
    #[error("connection closed mid-response head")]
    Truncated,
    /// The response head could not be parsed, or was too large.
    #[error("bad response")]
    BadResponse(#[source] HeadError),
    /// The request body failed on its way out.
    #[error("request body")]
    Body(#[source] SendBodyError),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// The upstream's answer was malformed or oversized.
    pub fn is_bad_response(&self) -> bool {
        matches!(self, UpstreamError::BadResponse(_))
    }
}

/// The upstream's side of a connection that switched protocols (101): taken
/// from the response's extensions by whoever tunnels it.
#[derive(Clone)]
pub struct UpstreamUpgrade(Arc<Mutex<Option<(TcpStream, bytes::Bytes)>>>);

impl UpstreamUpgrade {
    /// The connection and any bytes the upstream already sent past the
    /// 101 head; `None` once taken.
    pub fn take(&self) -> Option<(TcpStream, bytes::Bytes)> {
        self.0.lock().expect("upgrade lock").take()
    }
}

impl UpstreamClient {
    /// A client that passes on every end-to-end response field.
    pub fn new(cfg: &UpstreamConfig) -> Self {
        UpstreamClient::dropping(cfg, |_| false)
    }

    /// A client that leaves out of every response the fields for which
    /// `dropped` is true, as it parses the head (the gateway passes
    /// `stage::response::drops`).
    pub fn dropping(cfg: &UpstreamConfig, dropped: fn(&str) -> bool) -> Self {
        UpstreamClient {
            inner: Arc::new(Inner {
                hosts: Mutex::new(FxHashMap::default()),
                connect_timeout: cfg.connect_timeout,
                pool_idle_timeout: cfg.pool_idle_timeout,
                max_idle_per_host: cfg.pool_max_idle_per_host,
                // Caps the response head: a larger one is refused → 502.
                max_head: cfg.max_response_header_bytes.max(8192),
                dropped,
                reaper_started: AtomicBool::new(false),
            }),
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// Sends `req` (shaped by [`crate::outbound::to_service`]: origin-form,
    /// with its `Host`) to `upstream` and waits for the response head.
    /// Framing comes from the body: `Content-Length` when its size is known,
    /// chunked otherwise. The response body streams from the connection
    /// afterwards.
    pub async fn request(&self, upstream: &Upstream, req: Request<GatewayBody>) -> Result<Response<PooledBody>, UpstreamError> {
        let host = self.inner.host(upstream);
        let (mut parts, body) = req.into_parts();
        let length = if body.is_end_stream() { Some(0) } else { body.size_hint().exact() };
        parts.headers.remove(header::TRANSFER_ENCODING);
        match length {
            Some(n)
                if n > 0
                    || !matches!(
                        parts.method,
                        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
                    ) =>
            {
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            _ => {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
        }
        let chunked = length.is_none();
        let replayable = parts.method.is_idempotent() && length == Some(0);
        let mut body = (length != Some(0)).then_some((body, length));

        if let Some(conn) = host.checkout(self.inner.pool_idle_timeout) {
            match self.send(&host, conn, &parts, &mut body, chunked).await {
                Ok(resp) => return Ok(resp),
                // The upstream closed the idle connection before the head
                // went out: send it on a new one.
                Err(Failed::NotSent(_)) => {}
                // ... or just as it went out, before any byte of a response:
                // a request that is idempotent and has no body is sent again
                // (RFC 9112 §9.3.1), anything else is the client's to retry.
                Err(Failed::ClosedBeforeResponse(_)) if replayable => {}
                Err(Failed::ClosedBeforeResponse(e) | Failed::Other(e)) => return Err(e),
            }
        }
        // Boxed: a connect's future is large and rare; inline it would grow
        // every request's future.
        let conn = Box::pin(self.inner.connect(upstream)).await?.counted(&host.open);
        match self.send(&host, conn, &parts, &mut body, chunked).await {
            Ok(resp) => Ok(resp),
            Err(Failed::NotSent(e) | Failed::ClosedBeforeResponse(e) | Failed::Other(e)) => Err(e),
        }
    }

    async fn send(
        &self,
        host: &Arc<Host>,
        mut conn: Conn,
        parts: &http::request::Parts,
        body: &mut Option<(GatewayBody, Option<u64>)>,
        chunked: bool,
    ) -> Result<Response<PooledBody>, Failed> {
        conn::begin(&mut conn, parts, chunked);
        // Only a request that asked to switch protocols may get a 101.
        let upgrade = parts.headers.contains_key(header::UPGRADE);
        let (head, sending) = conn::exchange(&mut conn, &parts.method, upgrade, body, self.inner.max_head, self.inner.dropped).await?;
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        // An upgraded connection belongs to its tunnel.
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            let rest = conn.rbuf.split().freeze();
            resp.extensions_mut()
                .insert(UpstreamUpgrade(Arc::new(Mutex::new(Some((conn.io, rest))))));
            return Ok(resp.map(|()| PooledBody::closed()));
        }
        let back = Return {
            host: host.clone(),
            client: Arc::downgrade(&self.inner),
        };
        // A refused upgrade's connection is not reused: what the service
        // makes of the bytes that follow is not worth guessing.
        let keep_alive = head.keep_alive && !upgrade;
        let body = PooledBody::new(conn, head.framing, keep_alive, sending, self.inner.max_head, back);
        Ok(resp.map(|()| body))
    }
}

/// One upstream's pooled connections, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// The upstream's authority, as configured.
    pub authority: String,
    /// Connections open to it (idle or in use; a switched one is its tunnel's).
    pub open: usize,
    /// Of those, idle in the pool.
    pub idle: usize,
}

impl UpstreamClient {
    /// Every upstream the pool knows, with its open and idle connections.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let hosts = self.inner.hosts.lock().expect("pool lock");
        let mut list: Vec<PoolStats> = hosts
            .iter()
            .map(|(authority, host)| PoolStats {
                authority: authority.to_string(),
                open: host.open.load(Ordering::Relaxed),
                idle: host.idle.lock().expect("pool lock").len(),
            })
            .collect();
        list.sort_by(|a, b| a.authority.cmp(&b.authority));
        list
    }
}

impl Inner {
    fn host(self: &Arc<Self>, upstream: &Upstream) -> Arc<Host> {
        let mut hosts = self.hosts.lock().expect("pool lock");
        if let Some(host) = hosts.get(upstream.authority.as_str()) {
            return host.clone();
        }
        let host = Arc::new(Host {
            idle: Mutex::new(Vec::new()),
            open: Arc::default(),
        });
        hosts.insert(upstream.authority.as_str().into(), host.clone());
        drop(hosts);
        // The reaper also forgets hosts nobody uses, such as a service a
        // reload removed: the map holds only what is in use or pooled.
        self.start_reaper();
        host
    }

    async fn connect(&self, upstream: &Upstream) -> Result<Conn, UpstreamError> {
        if upstream.scheme != Scheme::HTTP {
            return Err(UpstreamError::Connect(io::Error::new(
                io::ErrorKind::Unsupported,
                "only http:// upstreams",
            )));
        }
        let port = upstream.authority.port_u16().unwrap_or(80);
        let host = upstream.authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, connect_any(host, port))
            .await
            .map_err(|_| {
                UpstreamError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ))
            })?
            .map_err(UpstreamError::Connect)?;
        stream.set_nodelay(true).map_err(UpstreamError::Connect)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(UpstreamError::Connect)?;
        Ok(Conn::new(stream))
    }

    /// Closes idle connections past the pool's idle timeout (or closed by
    /// the upstream), every half of it, while the client lives. Started
    /// when the first host is added inside a runtime.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaper_started.load(Ordering::Relaxed) || self.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = (self.pool_idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.reap();
            }
        });
    }

    /// Closes expired idle connections and forgets every host with none
    /// left that no request holds (the map's is the only reference, and the
    /// map is locked, so none can take it meanwhile).
    fn reap(&self) {
        self.hosts.lock().expect("pool lock").retain(|_, host| {
            host.expire(self.pool_idle_timeout);
            Arc::strong_count(host) > 1 || !host.idle.lock().expect("pool lock").is_empty()
        });
    }
}

/// Resolves `host` (an IP literal resolves without a lookup) and connects
/// to the first address that accepts.
async fn connect_any(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} resolved to no address"))))
}

impl Host {
    /// The newest idle connection that is still quiet and young enough.
    fn checkout(&self, max_idle: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(mut entry) = idle.pop() {
            if entry.since.elapsed() <= max_idle && entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn expire(&self, max_idle: Duration) {
        self.idle
            .lock()
            .expect("pool lock")
            .retain_mut(|e| e.since.elapsed() <= max_idle && e.conn.is_reusable());
    }
}

/// Where a connection goes back when its response ends cleanly.
struct Return {
    host: Arc<Host>,
    client: Weak<Inner>,
}

impl Return {
    fn put(&self, conn: Conn) {
        let Some(client) = self.client.upgrade() else { return };
        if client.max_idle_per_host == 0 {
            return;
        }
        let mut idle = self.host.idle.lock().expect("pool lock");
        if idle.len() >= client.max_idle_per_host {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// The wire format's parsers, for the fuzzing oracles.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod fuzz_api {
    pub use super::body::{Source, State, decode};
    pub use super::h1::{Framing, Head, parse_head};
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_misbehaving;
