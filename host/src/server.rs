//! The public listener: accept loop with a connection cap, hyper-util's auto
//! (HTTP/1.1 + h2c) builder with upgrades enabled, and a graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin;
use crate::config::ServerConfig;
use crate::context::Peer;
use crate::gateway::Gateway;
use crate::reload::{self, Reloader};

/// The connection builder. hyper's own limits sit at twice the configured
/// ones: requests between the two get the gateway's 431 with a JSON body and
/// request id from the admit stage; beyond that hyper answers 431 itself.
fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size((cfg.max_header_bytes * 2).max(8192))
        .max_headers(cfg.max_headers * 2);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size((cfg.max_header_bytes * 2) as u32)
        .max_concurrent_streams(256);
    b
}

/// Serves the public and admin listeners until `shutdown` resolves, then
/// stops accepting, drains in-flight requests for up to the grace period and
/// returns.
pub async fn run(gw: Arc<Gateway>, reloader: Arc<Reloader>, listener: TcpListener, admin: TcpListener, shutdown: impl Future<Output = ()>) {
    let cfg = gw.config.server.clone();
    let reloads = reloader.reloads.clone();
    // Watching starts before "listening" is logged: a file written after
    // that line is always seen.
    let reload_task = reload::spawn(reloader);
    if let (Ok(addr), Ok(admin_addr)) = (listener.local_addr(), admin.local_addr()) {
        let routes = gw.snapshot().router.routes().len();
        tracing::info!(%addr, admin = %admin_addr, routes, "listening");
    }
    let admin_task = tokio::spawn(admin::serve(gw.clone(), reloads, admin));
    let heartbeat_task = tokio::spawn(heartbeat());
    let builder = builder(&cfg);
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        // The slot goes back when the connection and any tunnel it became end.
        let client = Arc::new(Peer::new(peer, gw.is_trusted(peer.ip())).holding(permit));
        let service = service_fn(move |req| {
            let gw = gw.clone();
            let client = client.clone();
            // Boxed: the handler future is ~2.5 KB, and hyper moves it per request.
            let handling = Box::pin(async move { gw.handle(req, client).await });
            async move { Ok::<_, Infallible>(handling.await) }
        });
        let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, error, "connection ended with an error");
            }
        });
    }
    gw.start_draining();
    drop(listener);
    let tunnels = gw.tunnels.clone();
    tracing::info!(grace = ?cfg.shutdown_grace, tunnels = tunnels.open(), "shutting down: draining in-flight requests and WebSocket tunnels");
    // New upgrades are refused from here (503); open tunnels get the grace
    // period like requests do, then are closed.
    let drained = async {
        graceful.shutdown().await;
        tunnels.drained().await;
    };
    tokio::select! {
        () = drained => tracing::info!("drained"),
        () = tokio::time::sleep(cfg.shutdown_grace) => {
            tracing::warn!(tunnels = tunnels.open(), "grace period over; closing remaining connections and tunnels");
            tunnels.close_all();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tunnels.drained()).await;
        }
    }
    admin_task.abort();
    reload_task.abort();
    heartbeat_task.abort();
}

/// A timer that fires every second, doing nothing. Without it the timer
/// wheel is empty between requests, so each request's upstream timeout is
/// the earliest timer when it is armed, and tokio wakes its driver through
/// an eventfd to shorten its sleep: one extra system call (and loop of the
/// event loop) per request. With a nearer timer always pending, arming a
/// 15 s timeout never wakes anything.
async fn heartbeat() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
