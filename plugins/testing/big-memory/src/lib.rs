//! `big-memory`: its initial linear memory holds an 8 MiB zeroed static,
//! so it cannot even be instantiated under a smaller `plugins.memory`. The
//! gateway must refuse it when it loads, not fail each request later.

wit_bindgen::generate!({ path: "../../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};

static mut SCRATCH: [u8; 8 << 20] = [0; 8 << 20];

struct BigMemory;

impl Guest for BigMemory {
    fn handle(_caller: Option<Caller>, _info: RequestInfo, request: Request) -> Action {
        // SAFETY: one call at a time per instance; the scratch is only ours.
        let scratch = unsafe { &mut *std::ptr::addr_of_mut!(SCRATCH) };
        scratch[request.path_with_query.len()] = 1;
        Action::Respond(Response {
            status: 200,
            headers: Vec::new(),
            body: vec![std::hint::black_box(scratch)[0]],
        })
    }
}

export!(BigMemory);
