//! WebSocket benchmark, in one run and interleaved: the realtime stand-in's
//! echo straight (`direct`), through the gateway (`gateway`, HS256 JWT on
//! the handshake, one worker thread) and, when `nginx` is installed, through
//! nginx's WebSocket proxying (`nginx`, one worker, no authentication) for
//! reference.
//!
//! The proxies run on core 0; the echo service and this load generator
//! share core 1, in every case. Reports, per round and as medians:
//! - throughput: messages echoed per second over CONNS sockets with WINDOW
//!   messages of SIZE bytes in flight on each, and the gateway's CPU µs per
//!   message (from /proc/<pid>/stat);
//! - latency: one socket, one message in flight: the round trip's median
//!   and p99, and what the gateway adds to the median;
//! - memory: the gateway's RSS before and after opening IDLE idle tunnels,
//!   per tunnel.
//!
//! Run it with `make bench-websocket` (bench/websocket.sh raises the
//! open-file limit, then runs `cargo bench -p gatehouse --bench websocket`);
//! `ROUNDS=5 DURATION=10 CONNS=32 WINDOW=16 SIZE=64 IDLE=10000` are the knobs;
//! `SERVICE_CORE=0` moves the echo service to the proxies' core.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Demo, Gateway, Setup, token};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Pins every thread of `pid` to `core`.
fn pin(pid: u32, core: u32) {
    let ok = Command::new("taskset")
        .args(["-a", "-c", "-p", &core.to_string(), &pid.to_string()])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "taskset failed (util-linux)");
}

/// User + system CPU time of `pid`, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// nginx proxying WebSocket to `upstream`, one worker in the foreground on
/// a free port, pinned to core 0; `None` when nginx is not installed.
fn nginx(upstream: u16, dir: &std::path::Path) -> Option<(common::Proc, SocketAddr)> {
    Command::new("nginx").arg("-v").output().ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = format!(
        "worker_processes 1; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection \"upgrade\";
      proxy_set_header X-User-ID \"bench\";
      proxy_read_timeout 300s;
    }}
  }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let child = cmd.spawn().ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = common::wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(addr).ok());
    assert!(
        up.is_some(),
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    pin(child.id(), 0);
    Some((
        common::Proc {
            child,
            lines: Default::default(),
        },
        addr,
    ))
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
}

type Ws = WebSocketStream<TcpStream>;

async fn open(t: &Target, auth: &str) -> Ws {
    let mut req = format!("ws://{}{}", t.addr, t.path).into_client_request().unwrap();
    req.headers_mut().insert("authorization", auth.parse().unwrap());
    let stream = TcpStream::connect(t.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    tokio_tungstenite::client_async(req, stream).await.unwrap().0
}

/// Echoes on `conns` sockets with `window` messages in flight each, for
/// `duration`: messages echoed and the round trips in µs.
async fn echo_load(t: &Target, auth: &str, conns: u64, window: u64, size: usize, duration: Duration) -> (u64, Vec<u32>) {
    let epoch = Instant::now();
    let stop = epoch + duration;
    let echoed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut ws = open(t, auth).await;
        let echoed = echoed.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let message = |at: Instant| {
                let mut payload = vec![0u8; size.max(8)];
                payload[..8].copy_from_slice(&(at.duration_since(epoch).as_nanos() as u64).to_le_bytes());
                Message::binary(payload)
            };
            for _ in 0..window {
                ws.feed(message(Instant::now())).await.unwrap();
            }
            ws.flush().await.unwrap();
            let mut rtts = Vec::new();
            let mut in_flight = window;
            while in_flight > 0 {
                let Some(Ok(Message::Binary(b))) = ws.next().await else {
                    panic!("the echo stopped")
                };
                let now = Instant::now();
                let sent = u64::from_le_bytes(b[..8].try_into().unwrap());
                rtts.push(((now.duration_since(epoch).as_nanos() as u64 - sent) / 1000) as u32);
                echoed.fetch_add(1, Ordering::Relaxed);
                if now < stop {
                    ws.send(message(now)).await.unwrap();
                } else {
                    in_flight -= 1;
                }
            }
            let _ = ws.close(None).await;
            rtts
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (echoed.load(Ordering::Relaxed), all)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env("ROUNDS", 3);
    let duration = Duration::from_secs(env("DURATION", 10));
    let (conns, window, size) = (env("CONNS", 32), env("WINDOW", 16), env("SIZE", 64) as usize);
    let idle = env("IDLE", 10_000);

    let demo = Demo::start();
    let gw = Gateway::start(
        &demo,
        Setup {
            server: format!("max_connections = {}", idle + 1000),
            workers: 1,
            ..Setup::default()
        },
    );
    pin(gw.proc.child.id(), 0);
    // SERVICE_CORE=0 puts the echo service beside the proxies: then the
    // direct path crosses cores too.
    pin(demo.proc.child.id(), env("SERVICE_CORE", 1) as u32);
    pin(std::process::id(), 1);
    let gw_pid = gw.proc.child.id();
    let auth = format!("Bearer {}", token("bench", Some("pro")));
    let direct = Target {
        name: "direct",
        addr: format!("127.0.0.1:{}", demo.port("realtime-service")).parse().unwrap(),
        path: "/ws",
    };
    let through = Target {
        name: "gateway",
        addr: gw.addr,
        path: "/ws",
    };
    let scratch = tempfile::tempdir().unwrap();
    let nginx = nginx(demo.port("realtime-service"), scratch.path());
    let reference = nginx.as_ref().map(|(_, addr)| Target {
        name: "nginx",
        addr: *addr,
        path: "/ws",
    });
    let mut targets = vec![&direct, &through];
    targets.extend(reference.as_ref());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        println!(
            "throughput: {conns} sockets × {window} messages of {size} B in flight, {}s per target, {rounds} rounds",
            duration.as_secs()
        );
        let mut rates = vec![Vec::new(); targets.len()];
        let mut cpu_us = Vec::new();
        for round in 1..=rounds {
            for (i, t) in targets.iter().enumerate() {
                let ticks = cpu_ticks(gw_pid);
                let started = Instant::now();
                let (n, rtts) = echo_load(t, &auth, conns, window, size, duration).await;
                let rate = n as f64 / started.elapsed().as_secs_f64();
                let mut sorted = rtts;
                sorted.sort_unstable();
                let mut line = format!(
                    "  round {round} {:<8} {:>9.0} msg/s  p50 {:>5} µs  p99 {:>6} µs",
                    t.name,
                    rate,
                    percentile(&sorted, 0.5),
                    percentile(&sorted, 0.99)
                );
                if t.name == "gateway" {
                    let us = (cpu_ticks(gw_pid) - ticks) as f64 * 10_000.0 / n as f64;
                    cpu_us.push(us);
                    line.push_str(&format!("  gateway CPU {us:.2} µs/msg"));
                }
                println!("{line}");
                rates[i].push(rate);
            }
        }
        let (d, g) = (median(rates[0].clone()), median(rates[1].clone()));
        println!(
            "  median: direct {d:.0} msg/s, gateway {g:.0} msg/s = {:.2}× direct; gateway CPU {:.2} µs/msg",
            g / d,
            median(cpu_us)
        );
        if let Some(n) = rates.get(2) {
            let n = median(n.clone());
            println!(
                "  median: nginx {n:.0} msg/s = {:.2}× direct; the gateway = {:.2}× nginx",
                n / d,
                g / n
            );
        }

        println!(
            "latency: 1 socket, 1 message of {size} B in flight, {}s per target, {rounds} rounds",
            duration.as_secs()
        );
        let mut p50s = vec![Vec::new(); targets.len()];
        for round in 1..=rounds {
            for (i, t) in targets.iter().enumerate() {
                let (_, mut rtts) = echo_load(t, &auth, 1, 1, size, duration).await;
                rtts.sort_unstable();
                let (p50, p99) = (percentile(&rtts, 0.5), percentile(&rtts, 0.99));
                println!("  round {round} {:<8} p50 {p50:>5} µs  p99 {p99:>6} µs", t.name);
                p50s[i].push(f64::from(p50));
            }
        }
        let (d, g) = (median(p50s[0].clone()), median(p50s[1].clone()));
        println!(
            "  median p50: direct {d:.0} µs, gateway {g:.0} µs: the gateway adds {:.0} µs per round trip",
            g - d
        );
        if let Some(n) = p50s.get(2) {
            let n = median(n.clone());
            println!("  median p50: nginx {n:.0} µs: adds {:.0} µs per round trip", n - d);
        }

        println!("memory: {idle} idle tunnels through the gateway");
        // Warm: one tunnel opened and closed, so lazily built state is in the baseline.
        drop(open(&through, &auth).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(gw_pid);
        let mut held = Vec::with_capacity(idle as usize);
        for _ in 0..idle {
            held.push(open(&through, &auth).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(gw_pid);
        let open_now = common::admin_get(gw.admin, "/admin/tunnels").json()["open"].as_u64().unwrap();
        assert_eq!(open_now, idle, "every tunnel is open");
        println!(
            "  gateway RSS {before} KiB → {after} KiB with {idle} open: {:.1} KiB per idle tunnel",
            (after as f64 - before as f64) / idle as f64
        );
        drop(held);
    });
}
