//! The fleet, shortened from `make fleet` (`bench/fleet.sh`): three real
//! `gatehouse` replicas sharing one `routes/` and `plugins/` folder behind
//! Debian's HAProxy (installed with apt-get when missing), which health-checks
//! each replica's `/readyz`, with keep-alive clients loading the balancer for
//! about two seconds per scenario:
//!
//! - a plugin and a route file change while traffic flows: nothing fails and
//!   every replica reports the new plugin sha256 and the new route;
//! - a rolling restart (SIGTERM, drain, a new process on the same ports, one
//!   replica at a time): nothing fails;
//! - one replica killed with SIGKILL: at most the requests in flight on it
//!   fail (the balancer's retries usually save those too), no other does.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// Keep-alive connections loading the balancer.
const CLIENTS: usize = 8;
const REPLICAS: usize = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One replica's fixed ports (a restarted replica takes the same ones, as a
/// pod keeps its Service's target port).
struct Slot {
    listen: u16,
    admin: u16,
    config: PathBuf,
}

struct Fleet {
    dir: tempfile::TempDir,
    slots: Vec<Slot>,
    replicas: Vec<Option<Proc>>,
    front: SocketAddr,
    stats: SocketAddr,
    _haproxy: Proc,
    _demo: Demo,
}

impl Fleet {
    fn start() -> Fleet {
        ensure_debian_package("haproxy", "haproxy", "the fleet test");
        let demo = Demo::start();
        let dir = tempfile::tempdir().unwrap();
        let (routes, plugins) = (dir.path().join("routes"), dir.path().join("plugins"));
        std::fs::create_dir(&routes).unwrap();
        std::fs::create_dir(&plugins).unwrap();
        for entry in std::fs::read_dir(repo().join("routes")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(routes.join(path.file_name().unwrap()), with_demo_ports(&text, &demo)).unwrap();
        }
        for name in ["hello", "tier-gate", "polar-webhook"] {
            plugin(name);
            std::fs::copy(repo().join(format!("plugins/{name}.wasm")), plugins.join(format!("{name}.wasm"))).unwrap();
        }
        let cache = repo().join("target").join("test-plugin-cache");
        let slots: Vec<Slot> = (0..REPLICAS)
            .map(|i| {
                let (listen, admin) = (free_port(), free_port());
                let config = dir.path().join(format!("g{i}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin = \"127.0.0.1:{admin}\"\nshutdown_grace = \"5s\"\n\
                         [auth]\nhs256_secret = \"{SECRET}\"\n[plugins]\ncache_dir = {:?}\n",
                        cache.display().to_string()
                    ),
                )
                .unwrap();
                Slot { listen, admin, config }
            })
            .collect();
        let replicas = slots.iter().map(|slot| Some(replica(slot))).collect();

        let (front, stats) = (free_port(), free_port());
        let mut servers = String::new();
        for (i, slot) in slots.iter().enumerate() {
            servers.push_str(&format!("  server g{i} 127.0.0.1:{} check port {}\n", slot.listen, slot.admin));
        }
        // The same balancer settings as bench/fleet.sh.
        let haproxy_cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &haproxy_cfg,
            format!(
                "global\n  maxconn 1024\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
                 \x20 retries 3\n  option redispatch 1\n  retry-on all-retryable-errors\n\
                 frontend front\n  bind 127.0.0.1:{front}\n  default_backend fleet\n\
                 listen stats\n  bind 127.0.0.1:{stats}\n  stats enable\n  stats uri /stats\n\
                 backend fleet\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
                 \x20 default-server inter 200ms fall 1 rise 2\n{servers}"
            ),
        )
        .unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&haproxy_cfg).arg("-db");
        // HAProxy prints nothing when it starts well: wait for its stats page.
        let haproxy = Proc::spawn_quiet(cmd);
        let fleet = Fleet {
            dir,
            slots,
            replicas,
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            stats: SocketAddr::from(([127, 0, 0, 1], stats)),
            _haproxy: haproxy,
            _demo: demo,
        };
        for i in 0..REPLICAS {
            fleet.wait_until_up(i);
        }
        fleet
    }

    fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    fn routes(&self) -> PathBuf {
        self.dir.path().join("routes")
    }

    /// HAProxy's view of replica `i` (`UP`, `DOWN`, `UP 1/2`, ...), from the
    /// CSV of its stats page.
    fn balancer_status(&self, i: usize) -> Option<String> {
        let mut s = std::net::TcpStream::connect(self.stats).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        std::io::Write::write_all(&mut s, b"GET /stats;csv HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        let text = parse_all(&buf).into_iter().next()?.text();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let column = header.iter().position(|h| *h == "status")?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&"fleet") && row.get(1) == Some(&format!("g{i}").as_str()))
            .and_then(|row| row.get(column).map(|s| s.to_string()))
    }

    fn wait_until_up(&self, i: usize) {
        let up = wait_for(Duration::from_secs(15), || {
            (self.balancer_status(i).as_deref() == Some("UP")).then_some(())
        });
        assert!(up.is_some(), "HAProxy never saw replica {i} up: {:?}", self.balancer_status(i));
    }

    fn admin(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.slots[i].admin))
    }
}

/// Starts a replica from its slot's config; returns once it listens.
fn replica(slot: &Slot) -> Proc {
    let mut cmd = gatehouse_cmd();
    cmd.env("GATEHOUSE_LOG", "warn,gatehouse=info")
        .arg("--config")
        .arg(&slot.config)
        .args(["--log-format", "json", "serve", "--workers", "1"]);
    Proc::spawn(cmd, |l| l.contains("\"listening\"")).0
}

/// Clients sending GETs through the balancer until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

/// What a load saw: answered with 2xx, failed, and the first few failures.
struct Outcome {
    ok: u64,
    failed: u64,
    why: Vec<String>,
}

impl Outcome {
    /// "failed of all failed", for the test's output.
    fn failed_of_all(&self) -> String {
        format!("{} of {} failed", self.failed, self.ok + self.failed)
    }
}

impl Load {
    fn start(front: SocketAddr, path: &'static str) -> Load {
        let token = token("42", Some("pro"));
        let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, ok, failed, token): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>, String) =
                    (stop.clone(), Arc::clone(&ok), Arc::clone(&failed), token.clone());
                std::thread::spawn(move || {
                    let mut conn = KeepAlive::new(front);
                    let auth = format!("Bearer {token}");
                    let mut why = Vec::new();
                    // Bounded: the test stops it after seconds; the cap is a backstop.
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match conn.get(path, &[("Authorization", &auth)]) {
                            Ok(r) if (200..300).contains(&r.status) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            outcome => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if why.len() < 5 {
                                    why.push(match outcome {
                                        Ok(r) => format!("{} {}", r.status, r.text()),
                                        Err(e) => e,
                                    });
                                }
                            }
                        }
                    }
                    why
                })
            })
            .collect();
        Load { stop, ok, failed, threads }
    }

    /// Requests answered so far (to wait until the load is really flowing).
    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let why = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        Outcome {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            why,
        }
    }
}

/// Waits until the load has had `n` more answers and half a second has
/// passed, so each step happens under traffic whatever the machine's speed.
fn flowing(load: &Load, n: u64) {
    let (from, since) = (load.answered(), Instant::now());
    let moved = wait_for(Duration::from_secs(20), || {
        (load.answered() >= from + n && since.elapsed() >= Duration::from_millis(500)).then_some(())
    });
    assert!(
        moved.is_some(),
        "the load through the balancer stalled at {} answers",
        load.answered()
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn three_replicas_behind_haproxy_change_roll_and_lose_one_without_failing_requests() {
    let mut fleet = Fleet::start();

    // 1. A plugin and a route file change under load.
    let load = Load::start(fleet.front, "/api/v1/hello");
    flowing(&load, 200);
    let hello = fleet.plugins().join("hello.wasm");
    let new_bytes = with_nonce(&std::fs::read(&hello).unwrap(), unique_seed());
    let new_sha = sha256_hex(&new_bytes);
    let written = Instant::now();
    replace_atomically(&hello, &new_bytes);
    let mut user_routes = std::fs::read_to_string(fleet.routes().join("user.toml")).unwrap();
    user_routes.push_str("\n[[route]]\nprefix = \"/api/v1/fleet-check\"\nauth = \"public\"\n");
    replace_atomically(&fleet.routes().join("user.toml"), user_routes.as_bytes());
    let converged = wait_for(Duration::from_secs(15), || {
        (0..REPLICAS)
            .all(|i| {
                admin_get(fleet.admin(i), "/admin/plugins").text().contains(&new_sha)
                    && admin_get(fleet.admin(i), "/admin/routes").text().contains("/api/v1/fleet-check")
            })
            .then(|| written.elapsed())
    });
    let converged = converged.unwrap_or_else(|| {
        panic!(
            "not every replica took the new plugin {new_sha} and route within 15 s: {:?}",
            (0..REPLICAS)
                .map(|i| admin_get(fleet.admin(i), "/admin/plugins").text())
                .collect::<Vec<_>>()
        )
    });
    flowing(&load, 200);
    let change = load.finish();
    eprintln!(
        "change: {}; all replicas converged {converged:?} after the write",
        change.failed_of_all()
    );
    assert_eq!(change.failed, 0, "requests failed during the change: {:?}", change.why);
    // The balancer really reaches the new route on every replica.
    for _ in 0..REPLICAS {
        let r = raw(
            fleet.front,
            b"GET /api/v1/fleet-check HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        );
        assert_ne!(r.status, 404, "{}", String::from_utf8_lossy(&r.raw));
    }

    // 2. A rolling restart under load: SIGTERM, drain, a new process, the
    // balancer seeing it up, then the next one.
    let load = Load::start(fleet.front, "/api/v1/hello");
    flowing(&load, 200);
    for i in 0..REPLICAS {
        let mut old = fleet.replicas[i].take().unwrap();
        old.terminate();
        let status = old.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "replica {i} did not drain and exit 0: {status:?} {:?}",
            old.logs()
        );
        fleet.replicas[i] = Some(replica(&fleet.slots[i]));
        fleet.wait_until_up(i);
        flowing(&load, 100);
    }
    let rolling = load.finish();
    eprintln!("rolling restart: {}", rolling.failed_of_all());
    assert_eq!(rolling.failed, 0, "requests failed during the rolling restart: {:?}", rolling.why);

    // 3. SIGKILL one replica under load.
    let load = Load::start(fleet.front, "/api/v1/hello");
    flowing(&load, 200);
    let mut victim = fleet.replicas[1].take().unwrap();
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let down = wait_for(Duration::from_secs(10), || {
        fleet.balancer_status(1).is_some_and(|s| s.starts_with("DOWN")).then_some(())
    });
    assert!(
        down.is_some(),
        "HAProxy never marked the killed replica down: {:?}",
        fleet.balancer_status(1)
    );
    flowing(&load, 300);
    let kill = load.finish();
    eprintln!(
        "SIGKILL: {} (at most {CLIENTS} could have been on the killed replica)",
        kill.failed_of_all()
    );
    assert!(
        kill.failed <= CLIENTS as u64,
        "more requests failed than could have been in flight on the killed replica: {} {:?}",
        kill.failed,
        kill.why
    );
    // The survivors still answer, directly and through the balancer.
    for i in [0, 2] {
        assert_eq!(admin_get(fleet.admin(i), "/readyz").status, 200);
    }
    let r = raw(
        fleet.front,
        format!(
            "GET /api/v1/hello HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token("42", None)
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
}
