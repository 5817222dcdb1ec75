//! A JWKS document as a key source: a file read at start, or a URL fetched at
//! start, refreshed periodically and refetched (rate-limited) when a token
//! names a `kid` the gateway does not know.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Verifier;
use super::keys::{Key, jwks_keys};
use crate::config::{AuthConfig, JwksConfig};

const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

enum Kind {
    File(PathBuf),
    Url {
        url: String,
        refresh: Duration,
        min_refetch_interval: Duration,
    },
}

/// Where JWKS keys come from; owns the refresh task (stopped on drop).
pub struct JwksSource {
    kind: Kind,
    cfg: AuthConfig,
    last_fetch: tokio::sync::Mutex<Instant>,
    refresher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for JwksSource {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl JwksSource {
    pub fn new(cfg: &JwksConfig, auth: &AuthConfig) -> Self {
        let kind = match cfg {
            JwksConfig::File(p) => Kind::File(p.clone()),
            JwksConfig::Url {
                url,
                refresh,
                min_refetch_interval,
            } => Kind::Url {
                url: url.clone(),
                refresh: *refresh,
                min_refetch_interval: *min_refetch_interval,
            },
        };
        JwksSource {
            kind,
            cfg: auth.clone(),
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            refresher: Default::default(),
        }
    }

    /// The keys now: the file's, or a fresh fetch of the URL.
    pub async fn load(&self) -> Result<Vec<Key>, String> {
        match &self.kind {
            Kind::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("JWKS file {}: {e}", path.display()))?;
                jwks_keys(&bytes, &self.cfg).map_err(|e| format!("JWKS file {}: {e}", path.display()))
            }
            Kind::Url { url, .. } => {
                let bytes = fetch(url).await.map_err(|e| format!("JWKS {url}: {e}"))?;
                *self.last_fetch.lock().await = Instant::now();
                jwks_keys(&bytes, &self.cfg).map_err(|e| format!("JWKS {url}: {e}"))
            }
        }
    }

    /// Fetches again for an unknown `kid`, at most once per
    /// `min_refetch_interval`; concurrent callers wait for one fetch.
    pub async fn refetch(&self) -> Option<Vec<Key>> {
        let Kind::Url {
            url, min_refetch_interval, ..
        } = &self.kind
        else {
            return None;
        };
        let mut last = self.last_fetch.lock().await;
        if last.elapsed() < *min_refetch_interval {
            return None;
        }
        *last = Instant::now();
        match fetch(url).await.and_then(|b| jwks_keys(&b, &self.cfg)) {
            Ok(keys) => {
                tracing::info!(url, keys = keys.len(), "JWKS refetched for an unknown kid");
                Some(keys)
            }
            Err(error) => {
                tracing::warn!(url, error, "JWKS refetch failed; keeping the current keys");
                None
            }
        }
    }

    /// Starts the periodic refresh (URL sources only).
    pub fn start_refresh(&self, verifier: Weak<Verifier>) {
        let Kind::Url { url, refresh, .. } = &self.kind else { return };
        let (url, refresh) = (url.clone(), *refresh);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                let Some(verifier) = verifier.upgrade() else { return };
                let Some(src) = &verifier.jwks else { return };
                match fetch(&url).await.and_then(|b| jwks_keys(&b, &src.cfg)) {
                    Ok(keys) => {
                        *src.last_fetch.lock().await = Instant::now();
                        verifier.install(keys);
                    }
                    Err(error) => tracing::warn!(url, error, "JWKS refresh failed; keeping the current keys"),
                }
            }
        });
        *self.refresher.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}

async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let get = async {
        let resp = client.get(uri).await.map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| "timed out".to_string())?
}
