//! A `wasi:http/proxy` component, as other toolchains make them: no
//! Gatehouse WIT at all. What it does depends on the query:
//! - nothing: a JSON summary of the request it got (method, path, the
//!   identity headers), written in three chunks;
//! - `call=<url>`: a GET of `<url>` through `wasi:http/outgoing-handler`,
//!   answered as `{"status":..,"body":..}` or `{"error":"<error-code>"}`;
//! - `echo`: the request body's length (read to the end);
//! - `big=<n>`: `n` bytes of body in 64 KiB writes;
//! - `trap`, `spin`, `nothing`: panics, loops forever, returns without
//!   setting a response.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme};

wasip2::http::proxy::export!(Probe);

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                kv.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('=').or((rest.is_empty()).then_some("")))
            })
        };
        if param("trap").is_some() {
            panic!("asked to trap");
        }
        if param("spin").is_some() {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if param("nothing").is_some() {
            return;
        }
        if let Some(url) = param("call") {
            let body = match get(&decode(url)) {
                Ok((status, body)) => format!(r#"{{"status":{status},"body":{}}}"#, json(&body)),
                Err(e) => format!(r#"{{"error":{}}}"#, json(&e)),
            };
            return respond(out, 200, &[body.as_bytes()]);
        }
        if param("echo").is_some() {
            let body = request.consume().expect("body once");
            let mut stream = body.stream().expect("stream once");
            let mut bytes = Vec::new();
            let read = stream.read_to_end(&mut bytes);
            let text = match read {
                Ok(n) => format!(r#"{{"received":{n}}}"#),
                Err(e) => format!(r#"{{"error":{}}}"#, json(&e.to_string())),
            };
            return respond(out, 200, &[text.as_bytes()]);
        }
        if let Some(n) = param("big") {
            let n: usize = n.parse().unwrap_or(0);
            let chunk = vec![b'x'; 65536];
            let chunks: Vec<&[u8]> = (0..n.div_ceil(65536)).map(|i| &chunk[..(n - i * 65536).min(65536)]).collect();
            return respond(out, 200, &chunks);
        }
        let headers = request.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .first()
                .map_or("null".to_string(), |v| json(&String::from_utf8_lossy(v)))
        };
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Post => "POST".to_string(),
            other => format!("{other:?}"),
        };
        let head = format!(r#"{{"world":"wasi:http","method":{},"path":{},"#, json(&method), json(&path));
        let who = format!(
            r#""x-user-id":{},"x-user-tier":{},"x-request-id":{},"#,
            header("x-user-id"),
            header("x-user-tier"),
            header("x-request-id")
        );
        let tail = format!(r#""authorization":{}}}"#, header("authorization"));
        respond(out, 200, &[head.as_bytes(), who.as_bytes(), tail.as_bytes()]);
    }
}

/// Sets a JSON response and writes `chunks` one flush each.
fn respond(out: ResponseOutparam, status: u16, chunks: &[&[u8]]) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())]).expect("valid header");
    let resp = OutgoingResponse::new(headers);
    resp.set_status_code(status).expect("valid status");
    let body = resp.body().expect("body once");
    ResponseOutparam::set(out, Ok(resp));
    let mut stream = body.write().expect("stream once");
    for chunk in chunks {
        // `write_all` goes through `blocking-write-and-flush` in 4 KiB steps.
        if stream.write_all(chunk).and_then(|()| std::io::Write::flush(&mut stream)).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// GETs `url` (absolute) and returns its status and body.
fn get(url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let req = OutgoingRequest::new(Fields::new());
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    req.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    req.set_authority(Some(authority)).map_err(|()| "bad authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp.consume().map_err(|()| "no body")?;
    let mut bytes = Vec::new();
    body.stream()
        .map_err(|()| "no stream")?
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// `%XX` escapes undone (enough for URLs in a query).
fn decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON string literal.
fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
