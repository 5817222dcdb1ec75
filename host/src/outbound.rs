//! What goes out to a service: the one place that shapes a request for the
//! wire, used by the native route (`stage::upstream`) and by a plugin's
//! `forward` and `upstream.send` (`wasm::outbound`). Identity is decided
//! before this (the identity stage; `Contract::reapply` for plugins), and
//! framing after it: the client derives `Content-Length` or chunked from the
//! body (`client::UpstreamClient::request`).

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Version, header};

use crate::config::Upstream;

/// Shapes `parts` for `upstream`: an origin-form target (the connection
/// already says which server this is), HTTP/1.1, and a `Host`: the one the
/// request carries (a plugin may set its own), else the client's original
/// one, else the service's authority.
pub fn to_service(parts: &mut http::request::Parts, client_host: Option<&HeaderValue>, upstream: &Upstream) {
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST) {
        let host = match client_host {
            Some(host) => host.clone(),
            None => HeaderValue::from_str(upstream.authority.as_str()).expect("an authority is a valid header value"),
        };
        parts.headers.insert(header::HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: "svc.internal:8081".parse().unwrap(),
        }
    }

    fn shaped(uri: &str, host: Option<&str>, client_host: Option<&str>) -> http::request::Parts {
        let mut req = http::Request::builder().uri(uri).version(Version::HTTP_2);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        let client_host = client_host.map(HeaderValue::from_str).transpose().unwrap();
        to_service(&mut parts, client_host.as_ref(), &upstream());
        parts
    }

    #[test]
    fn origin_form_http_1_1_and_a_host() {
        let p = shaped("http://gw.example/a/b?q=1", None, Some("gw.example"));
        assert_eq!((p.uri.to_string().as_str(), p.version), ("/a/b?q=1", Version::HTTP_11));
        assert_eq!(p.headers[header::HOST], "gw.example", "the client's Host");
        let p = shaped("/a", Some("set-by-plugin"), Some("gw.example"));
        assert_eq!(p.headers[header::HOST], "set-by-plugin", "a Host the request carries stays");
        let p = shaped("/a", None, None);
        assert_eq!(p.headers[header::HOST], "svc.internal:8081", "else the service's authority");
    }
}
