//! One error type, tagged by who failed, and the one function that turns it
//! into a response. Nothing internal reaches the client.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::auth::AuthError;
use crate::body::{GatewayBody, full};

/// Who failed: logged with every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Plugin,
    Internal,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Plugin => "plugin",
            Source::Internal => "internal",
        }
    }
}

/// Everything that can end a request early.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("no route for this path")]
    NotFound,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("Sec-WebSocket-Version must be 13, sent once")]
    WebSocketVersion,
    #[error("the gateway is shutting down: no new WebSocket tunnels")]
    ShuttingDown,
    #[error("upstream unavailable")]
    UpstreamUnavailable(String),
    #[error("upstream sent an invalid response")]
    UpstreamBadResponse(String),
    #[error("upstream timed out")]
    UpstreamTimeout(String),
    #[error("plugin unavailable")]
    PluginUnavailable(String),
    #[error("plugin failed")]
    PluginFailed(String),
    #[error("plugin timed out")]
    PluginTimeout(String),
    #[error("internal error")]
    Internal(String),
}

impl GatewayError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        GatewayError::BadRequest(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::WebSocketVersion => StatusCode::BAD_REQUEST,
            GatewayError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UpstreamUnavailable(_) | GatewayError::UpstreamBadResponse(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::PluginUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::PluginFailed(_) | GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::PluginTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            GatewayError::UpstreamUnavailable(_) | GatewayError::UpstreamBadResponse(_) | GatewayError::UpstreamTimeout(_) => {
                Source::Upstream
            }
            GatewayError::PluginUnavailable(_) | GatewayError::PluginFailed(_) | GatewayError::PluginTimeout(_) => Source::Plugin,
            GatewayError::Internal(_) => Source::Internal,
            _ => Source::Client,
        }
    }

    /// What went wrong as a code from a closed set: the access line's
    /// `reason` and the metrics' `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::WebSocketVersion => "bad_request",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::NotFound => "not_found",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::HeadersTooLarge => "headers_too_large",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamBadResponse(_) => "upstream_bad_response",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::PluginUnavailable(_) => "plugin_unavailable",
            GatewayError::PluginFailed(_) => "plugin_failed",
            GatewayError::PluginTimeout(_) => "plugin_timeout",
            GatewayError::Internal(_) => "internal",
        }
    }

    /// The detail kept for the log (never sent to the client).
    pub fn detail(&self) -> String {
        match self {
            GatewayError::UpstreamUnavailable(d)
            | GatewayError::UpstreamBadResponse(d)
            | GatewayError::UpstreamTimeout(d)
            | GatewayError::PluginUnavailable(d)
            | GatewayError::PluginFailed(d)
            | GatewayError::PluginTimeout(d)
            | GatewayError::Internal(d) => d.clone(),
            other => other.to_string(),
        }
    }

    /// The response: `{"error": "...", "request_id": "..."}`.
    pub fn into_response(self, request_id: &str) -> Response<GatewayBody> {
        let body = serde_json::json!({ "error": self.to_string(), "request_id": request_id });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let GatewayError::WebSocketVersion = &self {
            // RFC 6455 §4.4: the versions the server understands.
            h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        if let GatewayError::Unauthorized(e) = &self {
            let challenge = match e {
                AuthError::Missing => "Bearer".to_string(),
                other => format!("Bearer error=\"invalid_token\", error_description=\"{other}\""),
            };
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
            );
        }
        resp
    }
}

/// The errors in `err`'s source chain, `err` first.
pub fn chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn std::error::Error + 'static)| (*e).source())
}

/// `err` and its causes in one line ("client error (Connect): invalid peer
/// certificate: UnknownIssuer"): for logs, never for the client.
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    chain(err).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}
