//! Stage: admit. Refuses requests that are malformed or ambiguous before any
//! routing: request-target forms a gateway does not serve, missing or
//! duplicate `Host`, and header sections over the configured limits.

use http::{HeaderValue, Method, Request, Version, header};

use crate::context::RequestCtx;
use crate::error::GatewayError;

/// Request limits enforced by the admit stage.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

pub fn check<B>(ctx: &mut RequestCtx, req: &Request<B>, limits: &Limits) -> Result<(), GatewayError> {
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge);
    }
    let size: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    if req.method() == Method::CONNECT {
        return Err(GatewayError::bad_request("CONNECT is not supported"));
    }
    let uri = req.uri();
    if !uri.path().starts_with('/') {
        return Err(GatewayError::bad_request("request target must be an absolute path"));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(GatewayError::bad_request("duplicate Host header")),
        (Some(h), None) if h.is_empty() => return Err(GatewayError::bad_request("empty Host header")),
        (h, None) => h.cloned(),
    };
    ctx.host = match req.version() {
        Version::HTTP_2 | Version::HTTP_3 => {
            let authority = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let (Some(h), Some(a)) = (&host, &authority)
                && h != a
            {
                return Err(GatewayError::bad_request("Host does not match :authority"));
            }
            authority.or(host)
        }
        version => {
            // Absolute-form is for forward proxies; Gatehouse is not one.
            if uri.scheme().is_some() || uri.authority().is_some() {
                return Err(GatewayError::bad_request(
                    "absolute-form request target is not accepted; send the path only",
                ));
            }
            if host.is_none() && version != Version::HTTP_10 {
                return Err(GatewayError::bad_request("missing Host header"));
            }
            host
        }
    };
    Ok(())
}
