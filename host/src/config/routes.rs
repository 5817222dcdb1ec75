//! Route files: one TOML file per service in `routes/`, naming the service's
//! upstream and the path prefixes it serves, each with its auth mode.
//!
//! ```toml
//! service = "user-service"
//! upstream = "http://127.0.0.1:8081"
//!
//! [[route]]
//! prefix = "/api/v1/users"
//! auth = "required"          # required | optional | public
//! # max_body = "10MiB"       # request body cap (default: server.max_body)
//! # forward_token = false    # pass the client's Authorization upstream
//! # websocket = false        # the route accepts WebSocket upgrades
//! # plugin = "tier-gate"     # run plugins/tier-gate.wasm on this route
//! # calls = ["user-service"] # other services the plugin may call
//! # claims = ["email"]       # token claims handed to the plugin
//! # plugin_memory = "16MiB"  # lower the plugin's memory cap
//! # plugin_deadline = "50ms" # lower or raise the plugin's time budget
//! # plugin_max_body = "64KiB"
//! #
//! # [route.settings]         # the plugin's settings; ${NAME} reads the environment
//! # min_tier = "pro"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use serde::Deserialize;
use toml::Spanned;

use super::{Bytes, ConfigError, Dur, line_of, parse, read};
use crate::path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    service: String,
    upstream: Spanned<String>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Spanned<String>,
    auth: AuthMode,
    max_body: Option<Bytes>,
    #[serde(default)]
    forward_token: bool,
    #[serde(default)]
    websocket: bool,
    plugin: Option<Spanned<String>>,
    #[serde(default)]
    calls: Vec<String>,
    #[serde(default)]
    claims: Vec<String>,
    plugin_memory: Option<Bytes>,
    plugin_deadline: Option<Dur>,
    plugin_max_body: Option<Bytes>,
    settings: Option<Spanned<toml::Table>>,
}

/// How a route authenticates its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token or 401.
    Required,
    /// No token: anonymous. A token: it must be valid (401 otherwise).
    Optional,
    /// No JWT at all; no identity is forwarded.
    Public,
}

/// Where a service lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub service: Arc<str>,
    /// Normalized, no trailing slash (except `/`).
    pub prefix: String,
    pub auth: AuthMode,
    pub upstream: Arc<Upstream>,
    pub max_body: u64,
    pub forward_token: bool,
    pub websocket: bool,
    /// The plugin that handles this route, if any.
    pub plugin: Option<Arc<RoutePlugin>>,
    /// Where the route is defined, for messages and `/admin/routes`.
    pub file: PathBuf,
    pub line: usize,
    /// This route's metric handles, resolved on first use (a request then
    /// counts without looking its series up).
    pub metrics: crate::metrics::RouteMetrics,
    /// This route's fields of the access line, rendered on first use.
    pub log: crate::access::Cached,
}

/// A route's plugin: its name (the file stem in `plugins/`), settings and
/// the limits it runs under.
#[derive(Debug, Clone, Default)]
pub struct RoutePlugin {
    pub name: String,
    /// `[route.settings]`, values as text, `${NAME}` already expanded.
    /// A setting whose variable is unset is left out (and warned about).
    pub settings: HashMap<String, String>,
    /// Settings that referenced unset environment variables.
    pub unset_vars: Vec<(String, String)>,
    /// Services besides the route's own that `upstream.send` may call.
    pub calls: Vec<String>,
    /// Token claims passed to the plugin in `caller.claims`.
    pub claims: Vec<String>,
    /// Per-route overrides of `[plugins]` limits.
    pub memory: Option<u64>,
    pub deadline: Option<std::time::Duration>,
    pub max_body: Option<u64>,
}

impl Route {
    /// `file:line` of the definition.
    /// A route to an unreachable upstream, for unit tests.
    #[cfg(test)]
    pub fn for_test(prefix: &str, service: &str, websocket: bool) -> Route {
        Route {
            service: service.into(),
            prefix: prefix.into(),
            auth: AuthMode::Required,
            upstream: Arc::new(Upstream {
                scheme: http::uri::Scheme::HTTP,
                authority: "127.0.0.1:1".parse().expect("an authority"),
            }),
            max_body: 1,
            forward_token: false,
            websocket,
            plugin: None,
            file: "t.toml".into(),
            line: 1,
            metrics: Default::default(),
            log: Default::default(),
        }
    }

    pub fn source(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("upstream {text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(format!("upstream {text:?}: https upstreams are not supported yet")),
        _ => return Err(format!("upstream {text:?} must start with http://")),
    }
    let authority = uri.authority().cloned().ok_or_else(|| format!("upstream {text:?} has no host"))?;
    if authority.port_u16().is_none() {
        return Err(format!("upstream {text:?} must name a port, e.g. http://127.0.0.1:8081"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "upstream {text:?} must not have a path: the request path is forwarded unchanged"
        ));
    }
    Ok(Upstream {
        scheme: Scheme::HTTP,
        authority,
    })
}

fn load_file(file: &Path, default_max_body: u64) -> Result<Vec<Route>, ConfigError> {
    let src = read(file)?;
    let raw: RawFile = parse(file, &src)?;
    let line = |offset: usize| Some(line_of(&src, offset));
    if raw.service.trim().is_empty() {
        return Err(ConfigError::new(file, Some(1), "`service` must not be empty"));
    }
    let upstream = parse_upstream(raw.upstream.get_ref()).map_err(|m| ConfigError::new(file, line(raw.upstream.span().start), m))?;
    let upstream = Arc::new(upstream);
    let service: Arc<str> = raw.service.into();
    if raw.route.is_empty() {
        return Err(ConfigError::new(file, None, "no [[route]] entries"));
    }
    raw.route
        .into_iter()
        .map(|r| {
            let at = line(r.prefix.span().start);
            let prefix = r.prefix.into_inner();
            let normal = path::normalize(&prefix).map_err(|e| ConfigError::new(file, at, format!("prefix {prefix:?}: {e}")))?;
            let trimmed = if normal.len() > 1 { normal.trim_end_matches('/') } else { "/" };
            if trimmed != prefix.trim_end_matches('/') && !(prefix == "/" && trimmed == "/") {
                let msg = format!("prefix {prefix:?} is not in normal form (write {trimmed:?})");
                return Err(ConfigError::new(file, at, msg));
            }
            let plugin = route_plugin(
                file,
                &src,
                r.plugin,
                r.settings,
                r.calls,
                r.claims,
                (r.plugin_memory, r.plugin_deadline, r.plugin_max_body),
            )?;
            Ok(Route {
                service: service.clone(),
                prefix: trimmed.to_string(),
                auth: r.auth,
                upstream: upstream.clone(),
                max_body: r.max_body.map_or(default_max_body, |b| b.0),
                forward_token: r.forward_token,
                websocket: r.websocket,
                plugin,
                file: file.to_path_buf(),
                line: at.unwrap_or(0),
                metrics: Default::default(),
                log: Default::default(),
            })
        })
        .collect()
}

type Limits = (Option<Bytes>, Option<Dur>, Option<Bytes>);

fn route_plugin(
    file: &Path,
    src: &str,
    name: Option<Spanned<String>>,
    settings: Option<Spanned<toml::Table>>,
    calls: Vec<String>,
    claims: Vec<String>,
    (memory, deadline, max_body): Limits,
) -> Result<Option<Arc<RoutePlugin>>, ConfigError> {
    let Some(name) = name else {
        if let Some(s) = settings {
            return Err(ConfigError::new(
                file,
                Some(line_of(src, s.span().start)),
                "[route.settings] without a `plugin`",
            ));
        }
        if !calls.is_empty() {
            return Err(ConfigError::new(file, None, "`calls` is only meaningful with a `plugin`"));
        }
        return Ok(None);
    };
    let at = Some(line_of(src, name.span().start));
    let name = name.into_inner();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ConfigError::new(
            file,
            at,
            format!("plugin {name:?}: use the .wasm file's stem (letters, digits, - and _)"),
        ));
    }
    let mut values = HashMap::new();
    let mut unset_vars = Vec::new();
    for (key, value) in settings.map(Spanned::into_inner).unwrap_or_default() {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Table(_) | toml::Value::Array(_) => {
                return Err(ConfigError::new(
                    file,
                    at,
                    format!("setting {key:?}: plugin settings are strings, numbers or booleans"),
                ));
            }
            other => other.to_string(),
        };
        match expand_env(&text) {
            Ok(v) => {
                values.insert(key, v);
            }
            Err(var) => unset_vars.push((key, var)),
        }
    }
    Ok(Some(Arc::new(RoutePlugin {
        name,
        settings: values,
        unset_vars,
        calls,
        claims,
        memory: memory.map(|b| b.0),
        deadline: deadline.map(|d| d.0),
        max_body: max_body.map(|b| b.0),
    })))
}

/// Replaces each `${NAME}` in `text` with the environment variable's value.
/// `Err(NAME)` names the first variable that is unset.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        match std::env::var(var) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(var.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Loads every `*.toml` in `dir` (sorted by name) and checks the set: no two
/// routes may claim the same prefix. Nested prefixes are fine; the longest wins.
pub fn load_routes(dir: &Path, default_max_body: u64) -> Result<Vec<Route>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::new(dir, None, format!("cannot read routes folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut routes = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for file in &files {
        for route in load_file(file, default_max_body)? {
            if let Some(first) = seen.insert(route.prefix.clone(), route.source()) {
                let msg = format!("duplicate prefix {:?} (already defined at {first})", route.prefix);
                return Err(ConfigError::new(&route.file, Some(route.line), msg));
            }
            routes.push(route);
        }
    }
    if routes.is_empty() {
        return Err(ConfigError::new(dir, None, "no route files (*.toml) found"));
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const USER: &str =
        "service = \"user-service\"\nupstream = \"http://127.0.0.1:8081\"\n\n[[route]]\nprefix = \"/api/v1/users\"\nauth = \"required\"\n";

    #[test]
    fn loads_a_valid_folder() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "user.toml", USER);
        let routes = load_routes(dir.path(), 99).unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].max_body, 99);
        assert_eq!(routes[0].upstream.authority.as_str(), "127.0.0.1:8081");
        assert!(
            routes[0].file.ends_with("user.toml") && routes[0].line == 5,
            "{}",
            routes[0].source()
        );
    }

    #[test]
    fn duplicate_prefix_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", USER);
        write(dir.path(), "b.toml", &USER.replace("/api/v1/users", "/api/v1/users/"));
        let err = load_routes(dir.path(), 1).unwrap_err();
        assert!(err.file.ends_with("b.toml"), "{err}");
        assert_eq!(err.line, Some(5));
        assert!(err.message.contains("duplicate prefix"), "{err}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &USER.replace("required", "sometimes"));
        let err = load_routes(dir.path(), 1).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");

        write(dir.path(), "a.toml", &USER.replace("http://127.0.0.1:8081", "127.0.0.1"));
        let err = load_routes(dir.path(), 1).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");

        write(dir.path(), "a.toml", &USER.replace("/api/v1/users", "/api/../v1"));
        let err = load_routes(dir.path(), 1).unwrap_err();
        assert!(err.message.contains("normal form"), "{err}");

        write(dir.path(), "a.toml", &USER.replace("auth", "auht"));
        let err = load_routes(dir.path(), 1).unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn plugin_settings_expand_the_environment() {
        // SAFETY: set once, read only by this test (its name is unique).
        unsafe { std::env::set_var("GATEHOUSE_TEST_EXPAND", "s3cret") };
        assert_eq!(expand_env("a-${GATEHOUSE_TEST_EXPAND}-b").unwrap(), "a-s3cret-b");
        assert_eq!(expand_env("plain").unwrap(), "plain");
        assert_eq!(expand_env("${GATEHOUSE_TEST_UNSET_VAR}").unwrap_err(), "GATEHOUSE_TEST_UNSET_VAR");

        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{USER}plugin = \"tier-gate\"\ncalls = [\"x\"]\n\n[route.settings]\nmin_tier = \"pro\"\nn = 3\nsecret = \"${{GATEHOUSE_TEST_UNSET_VAR}}\"\n"
        );
        write(dir.path(), "a.toml", &text);
        let routes = load_routes(dir.path(), 1).unwrap();
        let p = routes[0].plugin.as_ref().unwrap();
        assert_eq!(p.name, "tier-gate");
        assert_eq!(p.settings["min_tier"], "pro");
        assert_eq!(p.settings["n"], "3");
        assert!(!p.settings.contains_key("secret"));
        assert_eq!(p.unset_vars, vec![("secret".to_string(), "GATEHOUSE_TEST_UNSET_VAR".to_string())]);

        write(dir.path(), "a.toml", &format!("{USER}\n[route.settings]\nx = 1\n"));
        let err = load_routes(dir.path(), 1).unwrap_err();
        assert!(err.message.contains("without a `plugin`"), "{err}");
    }
}
