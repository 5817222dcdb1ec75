//! `gatehouse.toml`: gateway-wide settings (listeners, limits, timeouts, JWT
//! keys). Paths inside it are relative to the file's own folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use toml::Spanned;

use super::{Bytes, ConfigError, Dur, line_of, parse, read};

/// Environment variable that overrides `auth.hs256_secret`.
pub const SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
/// Environment variable holding the bearer token that admin actions
/// (`POST /admin/reload`) need; from a Secret in a cluster.
pub const ADMIN_TOKEN_ENV: &str = "GATEHOUSE_ADMIN_TOKEN";
/// Shortest admin token accepted (as long as an HS256 secret).
const MIN_ADMIN_TOKEN_BYTES: usize = 32;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: a key of at least 256 bits).
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    auth: RawAuth,
    plugins: RawPlugins,
    reload: RawReload,
    websocket: RawWebSocket,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebSocket {
    idle_timeout: Dur,
    max_lifetime: Option<Dur>,
}

impl Default for RawWebSocket {
    fn default() -> Self {
        RawWebSocket {
            idle_timeout: Dur(Duration::from_secs(300)),
            max_lifetime: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReload {
    watch: bool,
    settle: Dur,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            watch: true,
            settle: Dur(Duration::from_millis(100)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPlugins {
    memory: Bytes,
    deadline: Dur,
    max_body: Bytes,
    max_instances: u32,
    cache_dir: PathBuf,
    cache_size: Bytes,
    compiler: Compiler,
    slow_call: Dur,
    threads: usize,
    threads_nice: i32,
}

impl Default for RawPlugins {
    fn default() -> Self {
        RawPlugins {
            memory: Bytes(64 << 20),
            deadline: Dur(Duration::from_millis(200)),
            max_body: Bytes(1 << 20),
            max_instances: 512,
            cache_dir: ".gatehouse-cache".into(),
            cache_size: Bytes(256 << 20),
            compiler: Compiler::Tiered,
            slow_call: Dur(Duration::from_micros(200)),
            threads: 0,
            threads_nice: 19,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Spanned<String>,
    admin: Spanned<String>,
    routes_dir: PathBuf,
    plugins_dir: PathBuf,
    max_connections: usize,
    header_read_timeout: Dur,
    max_header_bytes: Bytes,
    max_headers: usize,
    max_body: Bytes,
    shutdown_grace: Dur,
    trusted_proxies: Vec<Spanned<String>>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Spanned::new(0..0, "0.0.0.0:8080".into()),
            admin: Spanned::new(0..0, "127.0.0.1:9901".into()),
            routes_dir: "routes".into(),
            plugins_dir: "plugins".into(),
            max_connections: 10_000,
            header_read_timeout: Dur(Duration::from_secs(10)),
            max_header_bytes: Bytes(64 << 10),
            max_headers: 100,
            max_body: Bytes(10 << 20),
            shutdown_grace: Dur(Duration::from_secs(30)),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    connect_timeout: Dur,
    first_byte_timeout: Dur,
    idle_timeout: Dur,
    pool_idle_timeout: Dur,
    pool_max_idle_per_host: usize,
    max_response_header_bytes: Bytes,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            connect_timeout: Dur(Duration::from_secs(2)),
            first_byte_timeout: Dur(Duration::from_secs(15)),
            idle_timeout: Dur(Duration::from_secs(60)),
            pool_idle_timeout: Dur(Duration::from_secs(90)),
            pool_max_idle_per_host: 256,
            max_response_header_bytes: Bytes(64 << 10),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    hs256_secret: Option<String>,
    issuer: Vec<String>,
    audience: Vec<String>,
    leeway: Dur,
    cache_size: usize,
    keys: Vec<RawKey>,
    jwks: Option<RawJwks>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            hs256_secret: None,
            issuer: Vec::new(),
            audience: Vec::new(),
            leeway: Dur(Duration::from_secs(30)),
            cache_size: 10_000,
            keys: Vec::new(),
            jwks: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    kid: Option<String>,
    alg: Spanned<String>,
    pem_file: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    file: Option<Spanned<PathBuf>>,
    url: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    refresh: Option<Dur>,
    min_refetch_interval: Option<Dur>,
}

/// Validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from (for messages), or `None` for built-in defaults.
    pub file: Option<PathBuf>,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub plugins: PluginsConfig,
    pub reload: ReloadConfig,
    pub websocket: WebSocketConfig,
}

/// Tunnels of WebSocket routes (`websocket = true`).
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    /// A tunnel with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A tunnel open this long is closed, busy or not (`None`: no limit).
    pub max_lifetime: Option<Duration>,
}

/// Hot reload of `plugins/` and `routes/`.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// Watch the folders (SIGHUP and `POST /admin/reload` work either way).
    pub watch: bool,
    /// How long a file still open for writing must stay quiet before it is
    /// read; a file closed after writing, renamed or removed is read at once.
    pub settle: Duration,
}

/// Limits every plugin runs under (a route may lower them, never raise the
/// memory cap), and where compiled plugins are cached.
#[derive(Debug, Clone)]
pub struct PluginsConfig {
    /// Linear memory per instance; also the size of each pooled memory slot.
    pub memory: u64,
    /// Wall-clock budget of one `handle` call, host calls included.
    pub deadline: Duration,
    /// Request and response bodies crossing into or out of a plugin.
    pub max_body: u64,
    /// Instances alive at once (the pool); more concurrent requests get 503.
    pub max_instances: u32,
    /// Compiled code, keyed by content hash.
    pub cache_dir: PathBuf,
    /// Bytes the cache may hold beyond the code of the versions that serve;
    /// least recently used entries go first.
    pub cache_size: u64,
    pub compiler: Compiler,
    /// A plugin whose calls run longer than this on average (its code's
    /// time, waits on services left out) runs on the plugin threads, below
    /// the I/O workers' priority, so it cannot hold up other routes.
    pub slow_call: Duration,
    /// The plugin threads (0: one per core).
    pub threads: usize,
    /// Their nice value, 0..=19: 19 gives other routes the CPU first, 0
    /// shares it equally.
    pub threads_nice: i32,
}

/// How plugins are compiled to machine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compiler {
    /// Optimized code (Cranelift) always; a reloaded plugin serves once it is compiled.
    Cranelift,
    /// Baseline code (Winch) always: compiles several times faster, runs slower.
    Winch,
    /// Start-up and cached plugins get Cranelift; a plugin changed by a
    /// reload serves Winch code at once and Cranelift's when it is ready.
    Tiered,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub routes_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Default request body cap for routes that do not set their own.
    pub max_body: u64,
    pub shutdown_grace: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// What admin actions need: `GATEHOUSE_ADMIN_TOKEN`, if set.
    pub admin_token: Option<AdminToken>,
}

/// The admin token (never shown: its `Debug` is redacted).
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    #[cfg(test)]
    pub fn for_test(token: &str) -> AdminToken {
        AdminToken(token.into())
    }

    /// Whether `presented` is the token, in time that does not depend on
    /// where they first differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub max_response_header_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub hs256_secret: Option<Vec<u8>>,
    pub issuer: Vec<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    pub cache_size: usize,
    pub keys: Vec<KeyConfig>,
    pub jwks: Option<JwksConfig>,
}

impl AuthConfig {
    /// True when at least one verification key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256_secret.is_some() || !self.keys.is_empty() || self.jwks.is_some()
    }
}

/// A public key from a PEM file, pinned to one algorithm.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub kid: Option<String>,
    pub alg: jsonwebtoken::Algorithm,
    pub pem: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum JwksConfig {
    File(PathBuf),
    Url {
        url: String,
        /// The certificates of `ca_file` (read and checked at load): trust
        /// only these roots (a private issuer), instead of the system's.
        ca_certs: Option<Vec<CertificateDer<'static>>>,
        refresh: Duration,
        min_refetch_interval: Duration,
    },
}

impl Config {
    /// Loads `path`; when `path` is `None` and `./gatehouse.toml` is absent,
    /// the built-in defaults apply.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (file, src) = match path {
            Some(p) => (Some(p.to_path_buf()), read(p)?),
            None if Path::new("gatehouse.toml").exists() => (Some(PathBuf::from("gatehouse.toml")), read(Path::new("gatehouse.toml"))?),
            None => (None, String::new()),
        };
        let shown = file.clone().unwrap_or_else(|| PathBuf::from("<defaults>"));
        let raw: RawConfig = parse(&shown, &src)?;
        let base = file.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let at = |offset: usize| Some(line_of(&src, offset));
        let err = |offset: usize, msg: String| ConfigError::new(&shown, at(offset), msg);

        let addr = |s: &Spanned<String>, what: &str| {
            s.get_ref().parse::<SocketAddr>().map_err(|_| {
                err(
                    s.span().start,
                    format!("{what}: {:?} is not an address like 0.0.0.0:8080", s.get_ref()),
                )
            })
        };
        let s = &raw.server;
        let mut server = ServerConfig {
            listen: addr(&s.listen, "server.listen")?,
            admin: addr(&s.admin, "server.admin")?,
            routes_dir: base.join(&s.routes_dir),
            plugins_dir: base.join(&s.plugins_dir),
            max_connections: s.max_connections.max(1),
            header_read_timeout: s.header_read_timeout.0,
            max_header_bytes: s.max_header_bytes.0.clamp(8 << 10, 16 << 20) as usize,
            max_headers: s.max_headers.max(8),
            max_body: s.max_body.0,
            shutdown_grace: s.shutdown_grace.0,
            trusted_proxies: s
                .trusted_proxies
                .iter()
                .map(|c| {
                    parse_cidr(c.get_ref()).ok_or_else(|| {
                        err(
                            c.span().start,
                            format!("trusted_proxies: {:?} is not an address or CIDR", c.get_ref()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            admin_token: None,
        };
        if server.listen == server.admin && server.listen.port() != 0 {
            return Err(err(
                s.admin.span().start,
                "server.admin must not be the public listen address".into(),
            ));
        }

        let u = &raw.upstream;
        let upstream = UpstreamConfig {
            connect_timeout: u.connect_timeout.0,
            first_byte_timeout: u.first_byte_timeout.0,
            idle_timeout: u.idle_timeout.0,
            pool_idle_timeout: u.pool_idle_timeout.0,
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            max_response_header_bytes: u.max_response_header_bytes.0.clamp(8 << 10, 16 << 20) as usize,
        };

        let admin_token = std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.is_empty());
        if let Some(token) = &admin_token
            && (token.len() < MIN_ADMIN_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::new(
                &shown,
                None,
                format!("{ADMIN_TOKEN_ENV} must be at least {MIN_ADMIN_TOKEN_BYTES} visible ASCII characters"),
            ));
        }
        server.admin_token = admin_token.map(AdminToken);

        let a = raw.auth;
        let secret = std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()).or(a.hs256_secret);
        if let Some(secret) = &secret
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(ConfigError::new(
                &shown,
                None,
                format!("the HS256 secret (auth.hs256_secret or {SECRET_ENV}) must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        let keys = a.keys.iter().map(|k| load_key(k, &base, &shown, &src)).collect::<Result<_, _>>()?;
        let jwks = a.jwks.map(|j| jwks_config(j, &base, &shown, &src)).transpose()?;
        let auth = AuthConfig {
            hs256_secret: secret.map(String::into_bytes),
            issuer: a.issuer,
            audience: a.audience,
            leeway: a.leeway.0,
            cache_size: a.cache_size,
            keys,
            jwks,
        };
        let p = raw.plugins;
        if p.memory.0 < (1 << 20) || p.memory.0 > (4 << 30) {
            return Err(ConfigError::new(&shown, None, "plugins.memory must be between 1MiB and 4GiB"));
        }
        if !(0..=19).contains(&p.threads_nice) {
            return Err(ConfigError::new(&shown, None, "plugins.threads_nice must be between 0 and 19"));
        }
        let plugins = PluginsConfig {
            memory: p.memory.0,
            deadline: p.deadline.0.max(Duration::from_millis(1)),
            max_body: p.max_body.0,
            max_instances: p.max_instances.clamp(1, 100_000),
            cache_dir: base.join(&p.cache_dir),
            cache_size: p.cache_size.0,
            compiler: p.compiler,
            slow_call: p.slow_call.0,
            threads: p.threads.min(1024),
            threads_nice: p.threads_nice,
        };
        let reload = ReloadConfig {
            watch: raw.reload.watch,
            settle: raw.reload.settle.0.min(Duration::from_secs(10)),
        };
        let websocket = WebSocketConfig {
            idle_timeout: raw.websocket.idle_timeout.0.max(Duration::from_millis(10)),
            max_lifetime: raw.websocket.max_lifetime.map(|d| d.0).filter(|d| !d.is_zero()),
        };
        Ok(Config {
            file,
            server,
            upstream,
            auth,
            plugins,
            reload,
            websocket,
        })
    }
}

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn load_key(k: &RawKey, base: &Path, file: &Path, src: &str) -> Result<KeyConfig, ConfigError> {
    use jsonwebtoken::Algorithm::*;
    let alg = match k.alg.get_ref().as_str() {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        other => {
            let msg = format!(
                "auth.keys: unsupported alg {other:?} (RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA; HS256 uses hs256_secret)"
            );
            return Err(ConfigError::new(file, Some(line_of(src, k.alg.span().start)), msg));
        }
    };
    let path = base.join(k.pem_file.get_ref());
    let pem = std::fs::read(&path).map_err(|e| {
        ConfigError::new(
            file,
            Some(line_of(src, k.pem_file.span().start)),
            format!("auth.keys: cannot read {}: {e}", path.display()),
        )
    })?;
    Ok(KeyConfig {
        kid: k.kid.clone(),
        alg,
        pem,
    })
}

fn jwks_config(j: RawJwks, base: &Path, file: &Path, src: &str) -> Result<JwksConfig, ConfigError> {
    match (j.file, j.url) {
        (Some(f), None) => Ok(JwksConfig::File(base.join(f.into_inner()))),
        (None, Some(u)) => {
            let at = Some(line_of(src, u.span().start));
            jwks_url_allowed(u.get_ref()).map_err(|msg| ConfigError::new(file, at, format!("auth.jwks.url: {msg}")))?;
            let ca_certs = match j.ca_file {
                Some(ca) => {
                    let at = Some(line_of(src, ca.span().start));
                    let certs = pem_certificates(&base.join(ca.into_inner()))
                        .map_err(|e| ConfigError::new(file, at, format!("auth.jwks.ca_file: {e}")))?;
                    Some(certs)
                }
                None => None,
            };
            Ok(JwksConfig::Url {
                url: u.into_inner(),
                ca_certs,
                refresh: j.refresh.map_or(Duration::from_secs(300), |d| d.0),
                min_refetch_interval: j.min_refetch_interval.map_or(Duration::from_secs(30), |d| d.0),
            })
        }
        _ => Err(ConfigError::new(file, None, "auth.jwks: set exactly one of `file` or `url`")),
    }
}

/// The certificates of a PEM file (a CA bundle); at least one.
fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// A JWKS URL is `https://`, or `http://` to a loopback address (a local
/// sidecar): keys fetched in the clear could be replaced on the way.
fn jwks_url_allowed(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
            if host.eq_ignore_ascii_case("localhost") || ip.is_ok_and(|ip| ip.is_loopback()) {
                Ok(())
            } else {
                Err(format!(
                    "{url:?}: plain http:// is accepted only for a loopback address; use https:// (anyone on the path could inject signing keys)"
                ))
            }
        }
        _ => Err(format!("{url:?}: the scheme must be https://")),
    }
}
