// Shared by the `blue` and `green` test plugins: each answers every request
// itself with its `VERSION`, in a header and in the body, so a test can tell
// which build served each response.

wit_bindgen::generate!({ path: "../../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};

struct Version;

impl Guest for Version {
    fn handle(_caller: Option<Caller>, info: RequestInfo, _request: Request) -> Action {
        let body = format!(r#"{{"version":"{VERSION}","request_id":"{}"}}"#, info.request_id);
        Action::Respond(Response {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-plugin-version".into(), VERSION.into()),
            ],
            body: body.into_bytes(),
        })
    }
}

export!(Version);
