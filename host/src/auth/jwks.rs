//! A JWKS document as a key source: a file read at start, or a URL fetched at
//! start, refreshed periodically and refetched (rate-limited) when a token
//! names a `kid` the gateway does not know.
//!
//! URLs are `https://` (rustls: the system's roots, or only the configured
//! `ca_file`'s for a private issuer); plain `http://` is accepted only for a
//! loopback address, since anyone on the path of a plain fetch could inject
//! signing keys. A fetch that fails (a wrong certificate, say) keeps the
//! last good keys.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use super::Verifier;
use super::keys::{Key, jwks_keys};
use crate::config::{AuthConfig, JwksConfig};
use crate::error::causes;

const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

enum Kind {
    File(PathBuf),
    Url {
        url: String,
        client: Box<HttpsClient>,
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
    pub fn new(cfg: &JwksConfig, auth: &AuthConfig) -> Result<Self, String> {
        let kind = match cfg {
            JwksConfig::File(p) => Kind::File(p.clone()),
            JwksConfig::Url {
                url,
                ca_certs,
                refresh,
                min_refetch_interval,
            } => Kind::Url {
                url: url.clone(),
                client: Box::new(https_client(ca_certs.as_deref())?),
                refresh: *refresh,
                min_refetch_interval: *min_refetch_interval,
            },
        };
        Ok(JwksSource {
            kind,
            cfg: auth.clone(),
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            refresher: Default::default(),
        })
    }

    /// The keys now: the file's, or a fresh fetch of the URL.
    pub async fn load(&self) -> Result<Vec<Key>, String> {
        match &self.kind {
            Kind::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("JWKS file {}: {e}", path.display()))?;
                jwks_keys(&bytes, &self.cfg).map_err(|e| format!("JWKS file {}: {e}", path.display()))
            }
            Kind::Url { url, client, .. } => {
                let bytes = fetch(client, url).await.map_err(|e| format!("JWKS {url}: {e}"))?;
                *self.last_fetch.lock().await = Instant::now();
                jwks_keys(&bytes, &self.cfg).map_err(|e| format!("JWKS {url}: {e}"))
            }
        }
    }

    /// Fetches again for an unknown `kid`, at most once per
    /// `min_refetch_interval`; concurrent callers wait for one fetch.
    pub async fn refetch(&self) -> Option<Vec<Key>> {
        let Kind::Url {
            url,
            client,
            min_refetch_interval,
            ..
        } = &self.kind
        else {
            return None;
        };
        let mut last = self.last_fetch.lock().await;
        if last.elapsed() < *min_refetch_interval {
            return None;
        }
        *last = Instant::now();
        match fetch(client, url).await.and_then(|b| jwks_keys(&b, &self.cfg)) {
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
        let Kind::Url { url, client, refresh, .. } = &self.kind else {
            return;
        };
        let (url, client, refresh) = (url.clone(), (**client).clone(), *refresh);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                let Some(verifier) = verifier.upgrade() else { return };
                let Some(src) = &verifier.jwks else { return };
                match fetch(&client, &url).await.and_then(|b| jwks_keys(&b, &src.cfg)) {
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

/// The client every fetch of one source uses: TLS with the roots of
/// `auth.jwks.ca_file` when set, else the system's (Mozilla's, bundled, when
/// the system has none, as in a scratch image).
fn https_client(ca_certs: Option<&[CertificateDer<'static>]>) -> Result<HttpsClient, String> {
    let mut roots = RootCertStore::empty();
    match ca_certs {
        Some(certs) => {
            for cert in certs {
                roots.add(cert.clone()).map_err(|e| format!("auth.jwks.ca_file: {e}"))?;
            }
        }
        None => {
            let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    // No pooling: fetches are minutes apart, and each one checks the
    // server's certificate afresh.
    Ok(Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector))
}

async fn fetch(client: &HttpsClient, url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let get = async {
        // The whole cause: "client error (Connect)" alone would not say that
        // the certificate was refused.
        let resp = client.get(uri).await.map_err(|e| format!("request failed: {}", causes(&e)))?;
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
