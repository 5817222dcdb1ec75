//! `hello`: the template to copy. It answers the request itself with the
//! verified caller as JSON; the route's service never sees the request.
//!
//! Start a plugin of your own from this file: `handle` gets the caller the
//! gateway verified (`None` on public routes), facts about the request, and
//! the request; it returns `Action::Respond` or `Action::Forward`.

wit_bindgen::generate!({ path: "../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
use gatehouse::plugin::{config, log};

struct Hello;

impl Guest for Hello {
    fn handle(caller: Option<Caller>, info: RequestInfo, request: Request) -> Action {
        let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_string());
        let body = match &caller {
            Some(c) => format!(
                r#"{{"message":{},"user_id":{},"tier":{},"claims":{{{}}},"path":{},"request_id":{}}}"#,
                json(&format!("{greeting}, {}", c.user_id)),
                json(&c.user_id),
                c.tier.as_deref().map_or("null".to_string(), json),
                c.claims
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", json(k)))
                    .collect::<Vec<_>>()
                    .join(","),
                json(&request.path_with_query),
                json(&info.request_id),
            ),
            None => format!(
                r#"{{"message":{},"user_id":null,"path":{},"request_id":{}}}"#,
                json(&format!("{greeting}, stranger")),
                json(&request.path_with_query),
                json(&info.request_id),
            ),
        };
        log::write(log::Level::Debug, &format!("greeted {:?}", caller.as_ref().map(|c| &c.user_id)));
        Action::Respond(Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into_bytes(),
        })
    }
}

/// A JSON string literal (the template stays dependency-free).
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

export!(Hello);
