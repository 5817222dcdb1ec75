//! `hello`: the template to copy. It answers the request itself with the
//! verified caller as JSON; the route's service never sees the request.
//!
//! Start a plugin of your own from this file: `handle` gets the caller the
//! gateway verified (`None` on public routes), facts about the request, and
//! the request; it returns `Action::Respond` or `Action::Forward`.
//!
//! Every request runs on a fresh instance, so a plugin's own work is paid on
//! every request: this one writes its JSON into one buffer with `push_str`
//! instead of `format!` (which costs several times more per call in wasm).

wit_bindgen::generate!({ path: "../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
use gatehouse::plugin::{config, log};

struct Hello;

impl Guest for Hello {
    fn handle(caller: Option<Caller>, info: RequestInfo, request: Request) -> Action {
        let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_string());
        let mut body = String::with_capacity(160 + request.path_with_query.len());
        body.push_str(r#"{"message":""#);
        escape_into(&mut body, &greeting);
        match &caller {
            Some(c) => {
                body.push_str(", ");
                escape_into(&mut body, &c.user_id);
                body.push_str(r#"","user_id":"#);
                string_into(&mut body, &c.user_id);
                body.push_str(r#","tier":"#);
                match &c.tier {
                    Some(tier) => string_into(&mut body, tier),
                    None => body.push_str("null"),
                }
                // Claims arrive as (name, JSON text): the values are JSON already.
                body.push_str(r#","claims":{"#);
                for (i, (name, value)) in c.claims.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    string_into(&mut body, name);
                    body.push(':');
                    body.push_str(value);
                }
                body.push('}');
                log::write(log::Level::Debug, &["greeted ", &c.user_id].concat());
            }
            None => body.push_str(r#", stranger","user_id":null"#),
        }
        body.push_str(r#","path":"#);
        string_into(&mut body, &request.path_with_query);
        body.push_str(r#","request_id":"#);
        string_into(&mut body, &info.request_id);
        body.push('}');
        Action::Respond(Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into_bytes(),
        })
    }
}

/// Appends `s` as a JSON string literal (the template stays dependency-free).
fn string_into(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Appends `s` escaped for the inside of a JSON string literal.
fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut clean = 0; // start of the run of bytes that need no escape
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[clean..i]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)].into());
            out.push(HEX[usize::from(b & 0xf)].into());
        } else {
            out.push_str(escaped);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
}

export!(Hello);
