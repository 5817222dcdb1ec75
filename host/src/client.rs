//! The pooled upstream HTTP client (hyper-util legacy client over plain TCP).

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::GatewayBody;
use crate::config::UpstreamConfig;

/// One connection pool shared by every route (cloning shares the pool).
#[derive(Clone)]
pub struct UpstreamClient {
    pub client: Client<HttpConnector, GatewayBody>,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            // Caps the response head: a larger one fails to parse → 502.
            .http1_max_buf_size(cfg.max_response_header_bytes)
            .build(connector);
        UpstreamClient {
            client,
            first_byte_timeout: cfg.first_byte_timeout,
            idle_timeout: cfg.idle_timeout,
        }
    }
}
