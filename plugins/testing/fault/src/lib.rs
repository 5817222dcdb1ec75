//! `fault`: a test plugin that misbehaves on purpose, as its `mode` setting
//! says. The gateway's fault tests load it on several routes.
//!
//! - `trap`: panics (a trap).
//! - `loop`: never returns (the deadline must stop it).
//! - `memory`: allocates until the memory limit stops it.
//! - `huge-response`: answers with a body far over the plugin body limit.
//! - `bad-status`: answers with status 42.
//! - `forge`: forwards with forged identity and forwarding headers (and
//!   `x-added-by-plugin: fault`, which it may add).
//! - `send`: calls `upstream.send` on the service named by `service` (or its
//!   own), with forged identity headers, and answers with what came back.
//! - `print`: writes to stdout and stderr, then answers 200.
//! - `echo`: answers with what it was given (caller, info, request).

wit_bindgen::generate!({ path: "../../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::SendError;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
use gatehouse::plugin::{config, upstream};

struct Fault;

const FORGED: [(&str, &str); 6] = [
    ("x-user-id", "admin"),
    ("x-user-tier", "enterprise"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-request-id", "forged-request-id"),
    ("traceparent", "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"),
    ("tracestate", "forged=1"),
];

impl Guest for Fault {
    fn handle(caller: Option<Caller>, info: RequestInfo, mut request: Request) -> Action {
        let mode = config::get("mode").unwrap_or_default();
        match mode.as_str() {
            "trap" => panic!("fault plugin: trap on purpose"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge-response" => respond(200, vec![b'x'; 8 << 20]),
            "bad-status" => respond(42, b"status 42".to_vec()),
            "forge" => {
                forge(&mut request);
                Action::Forward(request)
            }
            "send" => {
                forge(&mut request);
                if let Some(path) = config::get("path") {
                    request.path_with_query = path;
                }
                let service = config::get("service");
                match upstream::send(service.as_deref(), &request) {
                    Ok(resp) => Action::Respond(resp),
                    Err(e) => respond(299, describe(&e).into_bytes()),
                }
            }
            "print" => {
                println!("fault plugin says hello on stdout");
                eprintln!("fault plugin says hello on stderr");
                respond(200, b"printed".to_vec())
            }
            "echo" => {
                let body = format!("{caller:?}\n{info:?}\n{request:?}");
                respond(200, body.into_bytes())
            }
            other => respond(200, format!("unknown mode {other:?}").into_bytes()),
        }
    }
}

fn forge(request: &mut Request) {
    for (name, value) in FORGED {
        request.headers.push((name.to_string(), value.to_string()));
        request.headers.push((name.to_uppercase(), value.to_string()));
    }
    // And one the plugin may add.
    request.headers.push(("x-added-by-plugin".to_string(), "fault".to_string()));
}

fn describe(e: &SendError) -> String {
    match e {
        SendError::NotAllowed(m) => format!("not-allowed: {m}"),
        SendError::UnknownService(m) => format!("unknown-service: {m}"),
        SendError::InvalidRequest(m) => format!("invalid-request: {m}"),
        SendError::Unavailable(m) => format!("unavailable: {m}"),
        SendError::Timeout => "timeout".to_string(),
        SendError::TooLarge => "too-large".to_string(),
    }
}

fn respond(status: u16, body: Vec<u8>) -> Action {
    Action::Respond(Response {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body,
    })
}

export!(Fault);
