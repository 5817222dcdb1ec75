//! Test harness: starts the real `demo-upstreams` and `gatehouse` binaries on
//! free loopback ports and speaks raw HTTP/1.1 to them over TCP.
#![allow(dead_code)]

pub mod browser;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
const SERVICES: [&str; 5] = [
    "user-service",
    "knowledge-service",
    "gamification-service",
    "payment-service",
    "realtime-service",
];
const DEFAULT_PORTS: [u16; 5] = [8081, 8082, 8083, 8084, 8085];

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A child process killed when the value drops.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Spawns `cmd`, collecting stdout lines; returns once `ready` matches a line.
    pub fn spawn(cmd: Command, ready: impl Fn(&str) -> bool) -> (Proc, Vec<String>) {
        let (tx, rx) = mpsc::channel();
        let (mut child, lines) = Proc::collect(cmd, Some(tx));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let done = ready(&line);
                    seen.push(line);
                    if done {
                        return (Proc { child, lines }, seen);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("process exited early with {status}: {seen:?}");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("process never became ready: {seen:?}");
    }

    /// Spawns `cmd` without waiting for a line (for programs that print
    /// nothing when they start well).
    pub fn spawn_quiet(cmd: Command) -> Proc {
        let (child, lines) = Proc::collect(cmd, None);
        Proc { child, lines }
    }

    /// Spawns `cmd` with threads collecting its stdout and stderr lines
    /// (each also sent to `tx` when given).
    fn collect(mut cmd: Command, tx: Option<mpsc::Sender<String>>) -> (Child, Arc<Mutex<Vec<String>>>) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    if let Some(tx) = &tx {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        (child, lines)
    }

    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Serializes installing: test binaries and threads may ask at once.
static INSTALL: Mutex<()> = Mutex::new(());

/// Makes `command` runnable, installing Debian's `package` with apt-get
/// when it is missing (CI machines start without the tools `why` needs).
pub fn ensure_debian_package(command: &str, package: &str, why: &str) {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let installed = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if installed() {
        return;
    }
    eprintln!("installing {package} (apt-get) for {why}");
    let status = Command::new("sh")
        .args([
            "-c",
            &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"),
        ])
        .status()
        .expect("run apt-get");
    assert!(
        status.success() && installed(),
        "could not install {package} with apt-get ({why} need it)"
    );
}

/// The five stand-in services on free ports.
pub struct Demo {
    pub proc: Proc,
    pub ports: HashMap<String, u16>,
}

impl Demo {
    pub fn start() -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-upstreams"));
        cmd.args(["--base-port", "0"]);
        let count = std::sync::atomic::AtomicUsize::new(0);
        let (proc, lines) = Proc::spawn(cmd, |l| {
            l.starts_with("listening") && count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 4
        });
        let ports = lines
            .iter()
            .filter_map(|l| {
                let mut parts = l.split_whitespace().skip(1);
                let service = parts.next()?.to_string();
                let addr: SocketAddr = parts.next()?.parse().ok()?;
                Some((service, addr.port()))
            })
            .collect();
        Demo { proc, ports }
    }

    pub fn port(&self, service: &str) -> u16 {
        self.ports[service]
    }
}

/// Settings for one gateway under test.
pub struct Setup {
    /// Extra lines for `[server]`.
    pub server: String,
    /// Extra lines for `[upstream]`.
    pub upstream: String,
    /// Extra lines for `[auth]` (after the secret).
    pub auth: String,
    /// Route files to add (name, text); `{user-service}` etc. become demo ports.
    pub routes: Vec<(String, String)>,
    /// Include the shipped `routes/*.toml` (ports rewritten to the demo's).
    pub shipped_routes: bool,
    pub secret: Option<String>,
    /// Plugin files to place in the gateway's `plugins/` (file name, source).
    pub plugins: Vec<(String, PathBuf)>,
    /// Extra lines for `[plugins]` (the compile cache is shared by all tests
    /// unless these set `cache_dir`).
    pub plugin_limits: String,
    /// Extra environment variables for the gateway.
    pub env: Vec<(String, String)>,
    /// `serve --workers` (1 is a single-threaded runtime).
    pub workers: usize,
    /// Lines for `[reload]`.
    pub reload: String,
    /// Lines for `[websocket]`.
    pub websocket: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            server: String::new(),
            upstream: String::new(),
            auth: String::new(),
            routes: Vec::new(),
            shipped_routes: true,
            secret: Some(SECRET.into()),
            plugins: Vec::new(),
            plugin_limits: String::new(),
            env: Vec::new(),
            workers: 2,
            reload: String::new(),
            websocket: String::new(),
        }
    }
}

/// A running gateway with its own config folder.
pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Replaces `{service-name}` placeholders and the default ports with the demo's.
pub fn with_demo_ports(text: &str, demo: &Demo) -> String {
    let mut out = text.to_string();
    for (service, default) in SERVICES.iter().zip(DEFAULT_PORTS) {
        let port = demo.port(service);
        out = out
            .replace(&format!("{{{service}}}"), &port.to_string())
            .replace(&format!("127.0.0.1:{default}"), &format!("127.0.0.1:{port}"));
    }
    out
}

/// Writes a config folder for `setup` (returned with the config path).
pub fn write_config(demo: &Demo, setup: &Setup) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes");
    std::fs::create_dir(&routes).unwrap();
    if setup.shipped_routes {
        for entry in std::fs::read_dir(repo().join("routes")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(routes.join(path.file_name().unwrap()), with_demo_ports(&text, demo)).unwrap();
        }
    }
    for (name, text) in &setup.routes {
        std::fs::write(routes.join(name), with_demo_ports(text, demo)).unwrap();
    }
    let secret = setup
        .secret
        .as_ref()
        .map(|s| format!("hs256_secret = \"{s}\"\n"))
        .unwrap_or_default();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (name, source) in &setup.plugins {
        std::fs::copy(source, plugins.join(name)).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    }
    // Shared by all tests, unless the setup names its own.
    let cache = repo().join("target").join("test-plugin-cache");
    let cache_line = if setup.plugin_limits.contains("cache_dir") {
        String::new()
    } else {
        format!("cache_dir = {:?}\n", cache.display().to_string())
    };
    // In a debug build every plugin is "slow" and its calls move to the
    // plugin threads. At their default nice 19 they get almost no CPU while
    // the other tests' gateways and compiles keep both cores busy, and a
    // call could wait past its deadline: a 504 that says nothing about the
    // code under test. The nice level has its own test (plugins.rs).
    let nice_line = if setup.plugin_limits.contains("threads_nice") {
        ""
    } else {
        "threads_nice = 0\n"
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{}\n[upstream]\n{}\n[auth]\n{secret}{}\n\n[plugins]\n{cache_line}{nice_line}{}\n\n[reload]\n{}\n\n[websocket]\n{}\n",
        setup.server, setup.upstream, setup.auth, setup.plugin_limits, setup.reload, setup.websocket
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    (dir, path)
}

/// Where `make plugins` leaves the compiled plugins.
pub fn plugin_build_dir() -> PathBuf {
    repo().join("plugins/target/wasm32-wasip2/release")
}

/// The compiled plugin `name` (crate name, `-` or `_`), built on first use
/// with the same script as `make plugins`.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugin_build_dir().join(format!("{}.wasm", name.replace('-', "_")));
    if !path.is_file() || !repo().join("plugins/hello.wasm").is_file() {
        // Several test binaries may get here at once; cargo's lock serializes them.
        let status = Command::new(repo().join("scripts/build-plugins.sh"))
            .status()
            .expect("run build-plugins.sh");
        assert!(status.success(), "building the plugins failed");
    }
    assert!(path.is_file(), "{} missing after building the plugins", path.display());
    path
}

/// A `gatehouse` command with the test environment (no inherited secret).
pub fn gatehouse_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.env_remove("GATEHOUSE_JWT_SECRET")
        .env_remove("POLAR_WEBHOOK_SECRET")
        .env("GATEHOUSE_LOG", "info");
    cmd
}

impl Gateway {
    pub fn start(demo: &Demo, setup: Setup) -> Gateway {
        let (dir, config) = write_config(demo, &setup);
        let mut cmd = gatehouse_cmd();
        cmd.envs(setup.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.arg("--config")
            .arg(&config)
            .args(["--log-format", "json", "serve", "--workers", &setup.workers.to_string()]);
        let (proc, lines) = Proc::spawn(cmd, |l| l.contains("\"listening\""));
        let ready: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        let addr = ready["addr"].as_str().unwrap().parse().unwrap();
        let admin = ready["admin"].as_str().unwrap().parse().unwrap();
        Gateway { proc, addr, admin, dir }
    }

    /// `gatehouse check` on this gateway's configuration folder.
    pub fn check(&self) -> std::process::Output {
        gatehouse_cmd()
            .arg("--config")
            .arg(self.dir.path().join("gatehouse.toml"))
            .arg("check")
            .output()
            .unwrap()
    }

    /// Sends raw bytes and reads the whole response (the request should close).
    pub fn raw(&self, request: &str) -> Response {
        raw(self.addr, request.as_bytes())
    }

    /// A GET with the given extra header lines, `Connection: close` added.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        self.raw(&req)
    }

    /// A GET with a bearer token.
    pub fn get_as(&self, path: &str, token: &str) -> Response {
        self.get(path, &[("Authorization", &format!("Bearer {token}"))])
    }

    /// Lines logged for one request id, once its access-log line is out
    /// (logs are written by a background thread, so wait for it, boundedly).
    pub fn log_for(&self, request_id: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<Value> = self
                .proc
                .logs()
                .iter()
                .filter(|l| l.contains(request_id))
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.iter().any(|l| l["status"].is_number()) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An HS256 token for `sub` (and `tier`), valid for ten minutes.
pub fn token(sub: &str, tier: Option<&str>) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 600});
    if let Some(t) = tier {
        claims["tier"] = Value::String(t.into());
    }
    gatehouse::auth::mint_hs256(SECRET.as_bytes(), &claims).unwrap()
}

/// An HS256 token with exactly these claims.
pub fn token_with(claims: Value) -> String {
    gatehouse::auth::mint_hs256(SECRET.as_bytes(), &claims).unwrap()
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Everything read, unparsed.
    pub raw: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.raw)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Values the upstream echo saw for a request header.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        let doc = self.json();
        doc["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }

    /// The error body's request id, which must equal the header.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.raw));
        let doc = self.json();
        let id = self.header("x-request-id").expect("x-request-id on error responses").to_string();
        assert_eq!(doc["request_id"], Value::String(id.clone()), "{doc}");
        assert!(doc["error"].as_str().is_some_and(|e| !e.is_empty()), "{doc}");
        id
    }
}

/// Parses every response in `raw` (pipelined responses come back in order).
pub fn parse_all(mut raw: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        let rest = &raw[end + 4..];
        let (body, used) = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            dechunk(rest)
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let len = len.min(rest.len());
            (rest[..len].to_vec(), len)
        } else if status == 101 || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else {
            (rest.to_vec(), rest.len())
        };
        out.push(Response {
            status,
            headers,
            body,
            raw: raw[..end + 4 + used].to_vec(),
        });
        raw = &rest[used..];
    }
    out
}

fn dechunk(mut data: &[u8]) -> (Vec<u8>, usize) {
    let start = data.len();
    let mut body = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol])
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let size = usize::from_str_radix(&size_text, 16).unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 {
            let trailer_end = data.windows(2).position(|w| w == b"\r\n").map_or(data.len(), |p| p + 2);
            data = &data[trailer_end..];
            break;
        }
        let take = size.min(data.len());
        body.extend_from_slice(&data[..take]);
        data = &data[(take + 2).min(data.len())..];
    }
    (body, start - data.len())
}

/// Writes `request` and reads until the server closes (10 s at most).
pub fn raw_all(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

/// Writes `request` and parses the first response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let buf = raw_all(addr, request);
    parse_all(&buf)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&buf)))
}

/// A plain GET to the admin listener.
pub fn admin_get(addr: SocketAddr, path: &str) -> Response {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// A request to the admin listener with a method (`Connection: close`).
pub fn admin_request(addr: SocketAddr, method: &str, path: &str) -> Response {
    raw(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Polls `check` every 10 ms until it gives a value or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One keep-alive HTTP/1.1 connection that sends GETs one after another.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// GET `path` with these headers; `Err` says what went wrong on the wire
    /// (the connection is reopened on the next call).
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        let result = self.try_get(path, headers);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("response without content-length: {head}"))?;
                if self.buf.len() >= end + 4 + len {
                    let rest = self.buf.split_off(end + 4 + len);
                    let raw = std::mem::replace(&mut self.buf, rest);
                    return parse_all(&raw).into_iter().next().ok_or_else(|| "unparsable response".to_string());
                }
            }
            let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed before a whole response".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `component` with a custom section `gatehouse-test` holding `n` appended:
/// the same plugin with a content hash never seen before (so it compiles).
pub fn with_nonce(component: &[u8], n: u64) -> Vec<u8> {
    let name = b"gatehouse-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(&n.to_le_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8); // its size: one LEB128 byte, < 128
    out.extend_from_slice(&payload);
    out
}

/// A number unlikely to repeat across runs (for `with_nonce`).
pub fn unique_seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    t.as_nanos() as u64 ^ u64::from(std::process::id()) << 48
}
