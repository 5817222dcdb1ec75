//! Answers every request with a small JSON greeting, like the gateway's
//! `hello` plugin, through the standard `wasi:http/proxy` world.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let body = format!(r#"{{"message":"hello, stranger","path":"{}"}}"#, path.replace('"', ""));
        let headers = Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())]).unwrap();
        let resp = OutgoingResponse::new(headers);
        let out_body = resp.body().unwrap();
        ResponseOutparam::set(response_out, Ok(resp));
        let mut out = out_body.write().unwrap();
        out.write_all(body.as_bytes()).unwrap();
        out.flush().unwrap();
        drop(out);
        OutgoingBody::finish(out_body, None).unwrap();
    }
}
