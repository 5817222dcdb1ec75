//! The upstream HTTP/1.1 client: one pool of kept-alive connections per
//! upstream, over hyper's connection-level API.
//!
//! A request takes the most recently used idle connection that is open and
//! ready (LIFO keeps the working set small and warm), or opens a new one
//! (connect timeout, `TCP_NODELAY`, keepalive probes). The connection goes
//! back to the pool when its response body has been read to the end, or is
//! dropped (a client that went away): one hyper could not finish reading is
//! never ready again, so no request takes it, and it is closed. Upgrades and
//! broken exchanges are not pooled; idle connections are closed after
//! `pool_idle_timeout`.
//!
//! The upstream may close an idle connection at any moment (its own
//! keep-alive timeout). A request that meets such a connection before it
//! went out is sent on a new one; one that went out just as the connection
//! closed is sent again only if it is idempotent and has no body.
//!
//! This replaces hyper-util's legacy client, which for every HTTP/1 request
//! raced a lazy connect against the pool checkout and spawned a task to wait
//! for the connection to become idle again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

use crate::body::GatewayBody;
use crate::config::{Upstream, UpstreamConfig};

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
    hosts: Mutex<FxHashMap<Authority, Arc<Host>>>,
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    max_idle_per_host: usize,
    max_buf_size: usize,
    reaper_started: AtomicBool,
}

/// One upstream's idle connections, oldest first.
struct Host {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<GatewayBody>,
    since: Instant,
}

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout,
    /// name not resolved).
    #[error("connect")]
    Connect(#[source] io::Error),
    /// The connection broke or the response could not be parsed.
    #[error("exchange")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl UpstreamClient {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        UpstreamClient {
            inner: Arc::new(Inner {
                hosts: Mutex::new(FxHashMap::default()),
                connect_timeout: cfg.connect_timeout,
                pool_idle_timeout: cfg.pool_idle_timeout,
                max_idle_per_host: cfg.pool_max_idle_per_host,
                // Caps the response head: a larger one fails to parse → 502.
                max_buf_size: cfg.max_response_header_bytes.max(8192),
                reaper_started: AtomicBool::new(false),
            }),
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// Sends `req` (origin-form target) to `upstream` and waits for the
    /// response head; a request without `Host` gets the upstream's authority.
    /// The body streams from the connection afterwards.
    pub async fn request(&self, upstream: &Upstream, req: Request<GatewayBody>) -> Result<Response<PooledBody>, UpstreamError> {
        let host = self.inner.host(upstream);
        let mut req = req;
        if !req.headers().contains_key(http::header::HOST) {
            let authority = HeaderValue::from_str(upstream.authority.as_str()).expect("an authority is a valid header value");
            req.headers_mut().insert(http::header::HOST, authority);
        }
        if let Some(sender) = host.checkout(self.inner.pool_idle_timeout) {
            let replay = replayable(&req);
            match self.send(&host, sender, req).await {
                Ok(resp) => return Ok(resp),
                // The upstream closed the idle connection before the request
                // went out: send it on a new one.
                Err(SendFailure::NotSent(back, _)) => req = *back,
                // ... or just as it went out, before any byte of a response:
                // a request that is idempotent and has no body is sent again
                // (RFC 9112 §9.3.1), anything else is the client's to retry.
                Err(SendFailure::Sent(e)) => match replay {
                    Some(again) if closed_before_response(&e) => req = again,
                    _ => return Err(e.into()),
                },
            }
        }
        // Boxed: a connect's future is large and rare; inline it would grow
        // every request's future.
        let sender = Box::pin(self.inner.connect(upstream)).await?;
        match self.send(&host, sender, req).await {
            Ok(resp) => Ok(resp),
            Err(SendFailure::NotSent(_, e) | SendFailure::Sent(e)) => Err(e.into()),
        }
    }

    async fn send(
        &self,
        host: &Arc<Host>,
        mut sender: SendRequest<GatewayBody>,
        req: Request<GatewayBody>,
    ) -> Result<Response<PooledBody>, SendFailure> {
        if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
            return Err(SendFailure::NotSent(Box::new(req), e));
        }
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => {
                return Err(match e.take_message() {
                    Some(req) => SendFailure::NotSent(Box::new(req), e.into_error()),
                    None => SendFailure::Sent(e.into_error()),
                });
            }
        };
        // An upgraded connection belongs to its tunnel; a response without a
        // body leaves the connection idle now.
        let mut back = Return {
            sender: (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(sender),
            host: host.clone(),
            client: Arc::downgrade(&self.inner),
        };
        if resp.body().is_end_stream() {
            back.put();
        }
        Ok(resp.map(|inner| PooledBody { inner, back }))
    }
}

/// A copy of `req` to send again if a reused connection turns out to have
/// been closed under it: only for idempotent methods without a body.
fn replayable(req: &Request<GatewayBody>) -> Option<Request<GatewayBody>> {
    if !req.method().is_idempotent() || !req.body().is_end_stream() {
        return None;
    }
    let mut again = Request::new(crate::body::empty());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// The connection closed (or was reset) before a response began.
fn closed_before_response(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() {
        return true;
    }
    std::iter::successors(std::error::Error::source(err), |e| e.source())
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|io| matches!(io.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe))
}

enum SendFailure {
    NotSent(Box<Request<GatewayBody>>, hyper::Error),
    Sent(hyper::Error),
}

impl Inner {
    fn host(&self, upstream: &Upstream) -> Arc<Host> {
        let mut hosts = self.hosts.lock().expect("pool lock");
        if let Some(host) = hosts.get(&upstream.authority) {
            return host.clone();
        }
        let host = Arc::new(Host {
            idle: Mutex::new(Vec::new()),
        });
        hosts.insert(upstream.authority.clone(), host.clone());
        host
    }

    async fn connect(&self, upstream: &Upstream) -> Result<SendRequest<GatewayBody>, UpstreamError> {
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
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.max_buf_size)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
    }

    /// Closes idle connections past the pool's idle timeout, every half of
    /// it, while the client lives. Started on the first return to the pool
    /// made inside a runtime.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaper_started.swap(true, Ordering::Relaxed) {
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
                let hosts: Vec<Arc<Host>> = inner.hosts.lock().expect("pool lock").values().cloned().collect();
                for host in hosts {
                    host.expire(inner.pool_idle_timeout);
                }
            }
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
    /// The newest idle connection that is open and ready for a request.
    fn checkout(&self, max_idle: Duration) -> Option<SendRequest<GatewayBody>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(entry) = idle.pop() {
            if entry.sender.is_closed() || entry.since.elapsed() > max_idle {
                continue;
            }

            if entry.sender.is_ready() {
                found = Some(entry.sender);
                break;
            }
            // Returned a moment before its connection task marked it idle.
            busy.push(entry);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn expire(&self, max_idle: Duration) {
        self.idle
            .lock()
            .expect("pool lock")
            .retain(|e| !e.sender.is_closed() && e.since.elapsed() <= max_idle);
    }
}

/// A connection on its way back to the pool: put back when its response
/// body ends, or when that body is dropped (a client that went away). A
/// connection left mid-response is not ready, so no request takes it; hyper
/// closes it and the reaper drops it.
struct Return {
    sender: Option<SendRequest<GatewayBody>>,
    host: Arc<Host>,
    client: Weak<Inner>,
}

impl Return {
    fn put(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        let Some(client) = self.client.upgrade() else { return };
        if sender.is_closed() || client.max_idle_per_host == 0 {
            return;
        }
        client.start_reaper();
        let mut idle = self.host.idle.lock().expect("pool lock");
        if idle.len() >= client.max_idle_per_host {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// The exchange broke: the connection is not reused.
    fn discard(&mut self) {
        self.sender = None;
    }
}

impl Drop for Return {
    fn drop(&mut self) {
        self.put();
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body; returns its connection to the pool once
    /// read to the end (or dropped).
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        back: Return,
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            // Servers stop polling once `is_end_stream` says so: return the
            // connection with the last frame.
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Err(_)) => this.back.discard(),
            _ => this.back.put(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;

    use super::*;
    use crate::body::full;

    /// A local HTTP/1.1 upstream that counts the connections it accepted and
    /// the ones the client has since closed.
    async fn upstream() -> (Upstream, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, c) = (opened.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                o.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(|_req| async { Ok::<_, std::convert::Infallible>(Response::new(full("ok".into()))) });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let upstream = Upstream {
            scheme: Scheme::HTTP,
            authority: addr.to_string().parse().unwrap(),
        };
        (upstream, opened, closed)
    }

    fn client(pool_idle_timeout: Duration) -> UpstreamClient {
        UpstreamClient::new(&UpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            pool_idle_timeout,
            pool_max_idle_per_host: 8,
            max_response_header_bytes: 64 << 10,
        })
    }

    async fn get(client: &UpstreamClient, upstream: &Upstream) -> Bytes {
        let req = Request::builder()
            .uri("/x")
            .header(http::header::HOST, "up.test")
            .body(full(Bytes::new()))
            .unwrap();
        let resp = client.request(upstream, req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_is_reused_then_closed_after_the_idle_timeout() {
        let (upstream, opened, closed) = upstream().await;
        let client = client(Duration::from_millis(200));
        for _ in 0..5 {
            assert_eq!(get(&client, &upstream).await, "ok");
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1, "sequential requests share one connection");
        assert_eq!(closed.load(Ordering::SeqCst), 0);
        // The reaper runs every 100 ms here: the connection goes within ~300 ms.
        for _ in 0..40 {
            if closed.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 1, "the idle connection was not closed");
        assert_eq!(get(&client, &upstream).await, "ok");
        assert_eq!(opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_get_their_own_connections_and_all_return() {
        let (upstream, opened, _) = upstream().await;
        let client = client(Duration::from_secs(60));
        let answers = futures_util::future::join_all((0..4).map(|_| get(&client, &upstream))).await;
        assert!(answers.iter().all(|a| a == "ok"));
        assert_eq!(opened.load(Ordering::SeqCst), 4);
        let host = client.inner.host(&upstream);
        assert_eq!(host.idle.lock().unwrap().len(), 4, "every connection went back to the pool");
        for _ in 0..8 {
            assert_eq!(get(&client, &upstream).await, "ok");
        }
        assert_eq!(opened.load(Ordering::SeqCst), 4, "pooled connections are reused");
    }
}
