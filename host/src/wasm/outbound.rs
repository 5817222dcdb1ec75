//! The plugin's way out: `upstream.send`, `wasi:http/outgoing-handler`, and
//! the conversions between WIT requests/responses and HTTP ones. Every
//! request a plugin sends gets the identity contract re-applied: a plugin
//! can add headers, never forge them.
//!
//! `wasi:http` names its target by URL; here the authority is a service
//! name: `http://user-service/api/v1/users/42` goes to user-service's
//! configured upstream when the route's service is user-service or its
//! `calls` lists it. Any other scheme, host or port is refused with
//! `HTTP-request-denied` before anything leaves the gateway.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};

use std::future::Future;
use std::sync::atomic::AtomicBool;

use wasmtime_wasi_http::{Error as WasiError, RequestOptions, WasiBody, WasiHttpHooks};

use super::bindings::{Request, Response, SendError};
use super::host::Gate;
use crate::body::{BoxError, IdleBody, IdleTimeout, RequestBody};
use crate::client::UpstreamClient;
use crate::config::Upstream;
use crate::headers::{Contract, strip_hop_by_hop};

/// What `upstream.send` may reach on behalf of one request.
pub struct Outbound {
    pub client: UpstreamClient,
    /// The route's own service.
    pub service: Arc<str>,
    pub upstream: Arc<Upstream>,
    /// Every configured service, by name.
    pub services: Arc<HashMap<String, Arc<Upstream>>>,
    /// Services the route file lets the plugin call besides its own.
    pub calls: Vec<String>,
    pub contract: Arc<Contract>,
    /// The client's `Host`, sent when the plugin sets none.
    pub host: Option<HeaderValue>,
    pub max_body: u64,
    /// For the log lines of refused requests.
    pub plugin: Arc<str>,
    pub request_id: HeaderValue,
}

impl Outbound {
    /// The upstream a plugin may reach under `name`, or why not.
    fn target(&self, name: &str) -> Result<Arc<Upstream>, SendError> {
        if name == &*self.service {
            return Ok(self.upstream.clone());
        }
        if !self.calls.iter().any(|c| c == name) {
            return Err(SendError::NotAllowed(format!("this route's `calls` does not list {name:?}")));
        }
        self.services
            .get(name)
            .cloned()
            .ok_or_else(|| SendError::UnknownService(name.to_string()))
    }

    pub async fn send(&self, service: Option<&str>, request: Request) -> Result<Response, SendError> {
        let upstream = match service {
            None => self.upstream.clone(),
            Some(name) => self.target(name).inspect_err(|e| self.denied(name, &format!("{e:?}")))?,
        };
        if request.body.len() as u64 > self.max_body {
            return Err(SendError::InvalidRequest("request body over the plugin body limit".into()));
        }
        let (mut parts, body) = to_http(request, &self.contract).map_err(SendError::InvalidRequest)?.into_parts();
        crate::outbound::to_service(&mut parts, self.host.as_ref(), &upstream);
        let body = body.map_err(|never| match never {}).boxed_unsync();
        let sent = self.client.request(&upstream, http::Request::from_parts(parts, body));
        let resp = match tokio::time::timeout(self.client.first_byte_timeout, sent).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(e)) => {
                return Err(SendError::Unavailable(if e.is_connect() {
                    "connection refused".into()
                } else {
                    "bad response".into()
                }));
            }
            Ok(Ok(resp)) => resp,
        };
        // The client dropped what the response stage drops as it parsed the head.
        let (mut parts, body) = resp.into_parts();
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let body = match tokio::time::timeout(self.client.idle_timeout, Limited::new(body, limit).collect()).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(SendError::TooLarge),
            Ok(Err(_)) => return Err(SendError::Unavailable("response body broken".into())),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response {
            status: parts.status.as_u16(),
            headers: to_wit_headers(&parts.headers),
            body: body.to_vec(),
        })
    }
}

impl Outbound {
    /// A `wasi:http` request from the plugin: to a service it may call, with
    /// the identity contract re-applied, through the pooled client. The
    /// response streams back under the body cap and the idle timeout.
    async fn send_wasi(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, WasiError> {
        let (mut parts, body) = request.into_parts();
        let upstream = self.authorize(&parts.uri).map_err(|why| {
            self.denied(&parts.uri.to_string(), &why);
            WasiError::HttpRequestDenied
        })?;
        self.contract.reapply(&mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        crate::outbound::to_service(&mut parts, self.host.as_ref(), &upstream);
        let too_large = Arc::new(AtomicBool::new(false));
        let body = RequestBody::new(body, self.max_body, too_large.clone(), false).boxed_unsync();
        let first_byte = shorter(self.client.first_byte_timeout, options.as_ref().and_then(|o| o.first_byte_timeout));
        let idle = shorter(self.client.idle_timeout, options.as_ref().and_then(|o| o.between_bytes_timeout));
        let sent = self.client.request(&upstream, http::Request::from_parts(parts, body));
        let resp = match tokio::time::timeout(first_byte, sent).await {
            Err(_) => return Err(WasiError::ConnectionReadTimeout),
            Ok(Err(_)) if too_large.load(std::sync::atomic::Ordering::Relaxed) => return Err(WasiError::HttpRequestBodySize(None)),
            Ok(Err(e)) if e.is_connect() => return Err(WasiError::ConnectionRefused),
            Ok(Err(_)) => return Err(WasiError::HttpProtocolError),
            Ok(Ok(resp)) => resp,
        };
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        Ok(resp.map(|body| {
            Limited::new(IdleBody::new(body, idle), limit)
                .map_err(|e: BoxError| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        WasiError::HttpResponseBodySize(None)
                    } else if e.is::<IdleTimeout>() {
                        WasiError::ConnectionReadTimeout
                    } else {
                        WasiError::HttpProtocolError
                    }
                })
                .boxed_unsync()
        }))
    }

    /// Logs a refused call: operators see what a plugin tried to reach.
    fn denied(&self, target: &str, why: &str) {
        let id = self.request_id.to_str().unwrap_or_default();
        tracing::warn!(target: "gatehouse::plugin", plugin = &*self.plugin, request_id = id, destination = target, "outgoing request denied: {why}");
    }

    /// The upstream `uri` names, if the plugin may reach it: plain `http`,
    /// a service name as the host, no port but the default, no user info.
    fn authorize(&self, uri: &Uri) -> Result<Arc<Upstream>, String> {
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(format!(
                "scheme {:?}: only http://<service>/ is allowed",
                uri.scheme_str().unwrap_or("")
            ));
        }
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err("user info in the authority".into());
        }
        if authority.port_u16().is_some_and(|p| p != 80) {
            return Err(format!(
                "port {}: services are named without a port",
                authority.port_u16().unwrap_or(0)
            ));
        }
        self.target(authority.host()).map_err(|e| match e {
            SendError::NotAllowed(why) => why,
            other => format!("{other:?}"),
        })
    }
}

/// The smaller of the gateway's timeout and the one the plugin asked for.
fn shorter(ours: std::time::Duration, asked: Option<std::time::Duration>) -> std::time::Duration {
    asked.map_or(ours, |a| a.min(ours))
}

impl WasiHttpHooks for Gate {
    /// Our services speak plain HTTP: a URL without a scheme means http.
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    /// The `Host` the service gets is decided like `upstream.send`'s (the
    /// client's), not the service name the plugin used as an authority.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), WasiError>> + Send>,
    ) -> Box<
        dyn Future<Output = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), WasiError>> + Send>), WasiError>> + Send,
    > {
        let outbound = self.outbound.clone();
        Box::new(async move {
            let Some(outbound) = outbound else {
                return Err(WasiError::HttpRequestDenied);
            };
            let resp = outbound.send_wasi(request, options).await?;
            // The pooled client drives its connection itself: nothing else to run.
            Ok((resp, fut))
        })
    }
}

/// Header pairs for a plugin. Values that are not UTF-8 are left out (the
/// component stage refuses such requests before a plugin runs).
pub fn to_wit_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(n, v)| {
            std::str::from_utf8(v.as_bytes())
                .ok()
                .map(|v| (n.as_str().to_string(), v.to_string()))
        })
        .collect()
}

/// Headers from a plugin, checked.
pub fn from_wit_headers(pairs: Vec<(String, String)>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
        let v = HeaderValue::from_str(&value).map_err(|_| format!("invalid value for header {name:?}"))?;
        map.append(n, v);
    }
    Ok(map)
}

/// A plugin's request as an HTTP request (origin-form) for its upstream,
/// with the identity contract re-applied and the plugin's own framing
/// dropped: `crate::outbound` and the client decide the rest.
pub fn to_http(request: Request, contract: &Contract) -> Result<http::Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(request.method.as_bytes()).map_err(|_| format!("invalid method {:?}", request.method))?;
    if !request.path_with_query.starts_with('/') {
        return Err(format!("path {:?} must start with /", request.path_with_query));
    }
    let pq = PathAndQuery::try_from(request.path_with_query.as_str()).map_err(|_| format!("invalid path {:?}", request.path_with_query))?;
    // Origin-form: the connection says which server this is.
    let uri = Uri::from(pq);
    let mut headers = from_wit_headers(request.headers)?;
    contract.reapply(&mut headers);
    // Framing comes from the body, in the client.
    headers.remove(header::CONTENT_LENGTH);
    let mut req = http::Request::new(Full::new(Bytes::from(request.body)));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// A plugin's own response as an HTTP response, checked.
pub fn to_http_response(response: Response, max_body: u64) -> Result<http::Response<Full<Bytes>>, String> {
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| format!("invalid status {}", response.status))?;
    if response.body.len() as u64 > max_body {
        return Err(format!(
            "response body of {} bytes is over the plugin body limit ({max_body})",
            response.body.len()
        ));
    }
    let mut headers = from_wit_headers(response.headers)?;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let mut resp = http::Response::new(Full::new(Bytes::from(response.body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}
