//! A Gatehouse route handler of the standard `wasi:http/proxy` world, with
//! the `wasip2` crate (no WIT of our own: any wasi:http host runs it).
//!
//! The gateway hands `handle` the request as the route's service would get
//! it: the verified caller in `x-user-id` / `x-user-tier` (absent on public
//! routes; whatever a client sent there is gone), `x-request-id`,
//! `x-forwarded-*`. The route's `[route.settings]` are the environment.
//! Every request runs on a fresh instance.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Handler);

struct Handler;

impl wasip2::exports::http::incoming_handler::Guest for Handler {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let headers = request.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let user = header("x-user-id");
        let greeting = std::env::var("greeting").unwrap_or_else(|_| "hello".into());
        let mut body = String::with_capacity(256);
        body.push_str(r#"{"message":"#);
        string_into(&mut body, &[greeting.as_str(), ", ", user.as_deref().unwrap_or("stranger")].concat());
        for (name, value) in [
            ("user_id", user),
            ("tier", header("x-user-tier")),
            ("path", request.path_with_query()),
            ("request_id", header("x-request-id")),
        ] {
            body.push_str(",\"");
            body.push_str(name);
            body.push_str("\":");
            match value {
                Some(v) => string_into(&mut body, &v),
                None => body.push_str("null"),
            }
        }
        // `lookup = "http://<service>/<path>"` in the route's settings: GET
        // it and pass on what came back.
        if let Ok(url) = std::env::var("lookup") {
            body.push_str(r#","lookup":"#);
            match get(&url) {
                Ok((status, text)) => {
                    body.push_str(r#"{"status":"#);
                    body.push_str(&status.to_string());
                    body.push_str(r#","body":"#);
                    string_into(&mut body, &text);
                    body.push('}');
                }
                Err(error) => {
                    body.push_str(r#"{"error":"#);
                    string_into(&mut body, &error);
                    body.push('}');
                }
            }
        }
        body.push('}');
        respond(out, 200, body.as_bytes());
    }
}

/// Sets the response head, then writes `body` and finishes it.
fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())]).expect("a valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("the stream, once");
    if stream.write_all(body).is_err() {
        return; // the client is gone
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// GETs `http://<service>/<path>`. The gateway sends it to that service with
/// the verified caller's identity headers if the route may call it (its own
/// service, or one in its `calls`); anything else fails with
/// `ErrorCode::HttpRequestDenied`.
fn get(url: &str) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).map_err(|()| "bad scheme")?;
    request.set_authority(Some(authority)).map_err(|()| "bad authority")?;
    request.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body")?;
    let mut bytes = Vec::new();
    body.stream()
        .map_err(|()| "no stream")?
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// `s` as a JSON string.
fn string_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(char::from_digit(c as u32 >> 4, 16).unwrap_or('0'));
                out.push(char::from_digit(c as u32 & 15, 16).unwrap_or('0'));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
