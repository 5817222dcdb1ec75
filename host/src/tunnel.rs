//! WebSocket tunnels: once the client and the service have both switched
//! protocols, the bytes of the two connections are copied both ways until
//! both ends are done. The gateway never parses frames.
//!
//! - A side that ends its sending (FIN) has that end passed on (half-close);
//!   the tunnel ends when both directions have, or at the first error (the
//!   other side is then closed too).
//! - No byte either way for `idle_timeout` closes both sides; so does
//!   `max_lifetime`, and [`Tunnels::close_all`] at the end of a drain.
//! - An idle tunnel holds no copy buffer: each direction waits with a small
//!   inline one and borrows a large one only while bytes keep coming.
//!
//! [`Tunnels`] counts what is open, per route, for the admin listener and
//! the drain.

use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use crate::config::WebSocketConfig;
use crate::context::Peer;

/// A read that fills the inline buffer starts a burst: reading goes on with
/// a buffer this large until the source has nothing more ready.
const INLINE: usize = 512;
const BURST: usize = 64 << 10;

/// The open tunnels, by route prefix.
pub struct Tunnels {
    open: AtomicUsize,
    opened: AtomicU64,
    by_route: Mutex<FxHashMap<Arc<str>, usize>>,
    /// Becomes `true` when every tunnel must close now.
    closing: watch::Sender<bool>,
    /// Notified when the last open tunnel closes.
    emptied: Notify,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            by_route: Mutex::new(FxHashMap::default()),
            closing: watch::channel(false).0,
            emptied: Notify::new(),
        }
    }
}

impl Tunnels {
    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Tunnels opened since start.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Open tunnels per route prefix (routes with none left out), sorted.
    pub fn by_route(&self) -> Vec<(String, usize)> {
        let mut list: Vec<(String, usize)> = self
            .by_route
            .lock()
            .expect("tunnels lock")
            .iter()
            .map(|(route, n)| (route.to_string(), *n))
            .collect();
        list.sort();
        list
    }

    /// Counts a tunnel on `route` until the returned guard drops.
    pub fn enter(self: &Arc<Self>, route: &str) -> Entry {
        let route: Arc<str> = route.into();
        *self.by_route.lock().expect("tunnels lock").entry(route.clone()).or_default() += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Entry {
            tunnels: self.clone(),
            route,
        }
    }

    /// Resolves once no tunnel is open.
    pub async fn drained(&self) {
        loop {
            let mut emptied = pin!(self.emptied.notified());
            emptied.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// Closes every open tunnel (both of its connections) now.
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }
}

/// One open tunnel's place in [`Tunnels`].
pub struct Entry {
    tunnels: Arc<Tunnels>,
    route: Arc<str>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut by_route = self.tunnels.by_route.lock().expect("tunnels lock");
        if let Some(n) = by_route.get_mut(&self.route) {
            *n -= 1;
            if *n == 0 {
                by_route.remove(&self.route);
            }
        }
        drop(by_route);
        if self.tunnels.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.tunnels.emptied.notify_waiters();
        }
    }
}

/// Everything a tunnel holds besides its connections.
pub struct Tunnel {
    pub entry: Entry,
    /// The client's connection slot (`server.max_connections`) stays taken
    /// while the tunnel is open.
    pub peer: Arc<Peer>,
    pub request_id: String,
    pub limits: WebSocketConfig,
}

/// When a tunnel last moved a byte, in milliseconds since it opened.
struct Activity {
    opened: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = self.opened.elapsed().saturating_sub(last);
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// Waits for the client's side of the switch, then copies bytes both ways
/// until the tunnel ends; logs one line when it does. `early` are bytes the
/// service sent right behind its 101.
pub async fn run(tunnel: Tunnel, client: OnUpgrade, service: TcpStream, early: Bytes) {
    let client = match client.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(error) => {
            tracing::debug!(request_id = %tunnel.request_id, %error, "the client's connection was not handed over");
            return;
        }
    };
    let activity = Activity {
        opened: Instant::now(),
        last: AtomicU64::new(0),
    };
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (client_read, client_write) = tokio::io::split(client);
    let (service_read, service_write) = service.into_split();
    let copying = async {
        tokio::try_join!(
            pump(client_read, service_write, Bytes::new(), &activity, &up),
            pump(service_read, client_write, early, &activity, &down),
        )
    };
    let lifetime = async {
        match tunnel.limits.max_lifetime {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let mut closing = tunnel.entry.tunnels.closing.subscribe();
    let shutdown = closing.wait_for(|closing| *closing);
    let reason = tokio::select! {
        done = copying => match done {
            Ok(_) => "closed".to_string(),
            Err(error) => format!("connection error: {error}"),
        },
        () = activity.idle_for(tunnel.limits.idle_timeout) => "idle timeout".to_string(),
        () = lifetime => "max lifetime".to_string(),
        _ = shutdown => "gateway shutting down".to_string(),
    };
    tracing::info!(
        request_id = %tunnel.request_id,
        route = %tunnel.entry.route,
        bytes_to_service = up.load(Ordering::Relaxed),
        bytes_to_client = down.load(Ordering::Relaxed),
        duration_ms = activity.opened.elapsed().as_millis() as u64,
        reason,
        "websocket tunnel closed"
    );
}

/// Copies `from` into `to` until `from` ends, then ends `to`'s sending
/// (half-close). `early` goes first.
async fn pump<R, W>(mut from: R, mut to: W, early: Bytes, activity: &Activity, moved: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !early.is_empty() {
        to.write_all(&early).await?;
        moved.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    let mut inline = [0u8; INLINE];
    loop {
        let n = from.read(&mut inline).await?;
        if n == 0 {
            break;
        }
        activity.touch();
        if n < INLINE {
            to.write_all(&inline[..n]).await?;
            moved.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        // A burst: a large buffer (uninitialized capacity, filled by the
        // reads) takes what is ready, so it goes out in one write, while
        // bytes keep coming; it is given back when they stop.
        let mut burst = Vec::with_capacity(BURST);
        burst.extend_from_slice(&inline);
        loop {
            let mut ended = false;
            let mut drained = false;
            while burst.len() < burst.capacity() {
                match from.read_buf(&mut burst).now_or_never() {
                    None => {
                        drained = true;
                        break;
                    }
                    Some(Ok(0)) => {
                        ended = true;
                        break;
                    }
                    Some(Ok(_)) => activity.touch(),
                    Some(Err(error)) => return Err(error),
                }
            }
            to.write_all(&burst).await?;
            moved.fetch_add(burst.len() as u64, Ordering::Relaxed);
            burst.clear();
            if ended {
                return to.shutdown().await;
            }
            if drained {
                break;
            }
        }
    }
    to.shutdown().await
}
