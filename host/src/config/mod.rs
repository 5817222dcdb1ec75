//! Configuration: `gatehouse.toml` and the route files, parsed from TOML into
//! validated runtime types. Every problem is reported with its file and line,
//! before anything listens.

mod gateway;
#[cfg(test)]
mod reference;
mod routes;
mod units;

use std::fmt;
use std::path::{Path, PathBuf};

pub use gateway::{
    ADMIN_TOKEN_ENV, AdminToken, AuthConfig, Compiler, Config, JwksConfig, KeyConfig, PluginsConfig, ReloadConfig, ServerConfig,
    UpstreamConfig, WebSocketConfig,
};
pub use routes::{AuthMode, Route, RoutePlugin, Upstream, load_routes};
pub use units::{Bytes, Dur};

/// A configuration problem, pointing at the file and (when known) the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// Wraps a TOML parse error, which carries the byte span of the problem.
    fn toml(file: &Path, src: &str, err: toml::de::Error) -> Self {
        let line = err.span().map(|s| line_of(src, s.start));
        ConfigError::new(file, line, err.message().trim().to_string())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line number of a byte offset.
pub(crate) fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Reads a file, naming it on failure.
pub(crate) fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError::new(file, None, format!("cannot read: {e}")))
}

/// Parses TOML text into `T`, naming file and line on failure.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(file: &Path, src: &str) -> Result<T, ConfigError> {
    toml::from_str(src).map_err(|e| ConfigError::toml(file, src, e))
}
