//! `tier-gate`: forwards callers whose tier is at least `min_tier`, answers
//! everyone else 403 with the tier they need.
//!
//! Settings (route file, `[route.settings]`):
//! - `min_tier`: the lowest tier let through, e.g. `"pro"`.
//! - `tiers`: every tier, lowest first, comma-separated
//!   (default `"free,pro,enterprise"`).
//!
//! A caller without a tier, or with one not in `tiers`, ranks below all.

wit_bindgen::generate!({ path: "../../wit", world: "route-handler" });

use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
use gatehouse::plugin::{config, log};

struct TierGate;

const DEFAULT_TIERS: &str = "free,pro,enterprise";

impl Guest for TierGate {
    fn handle(caller: Option<Caller>, info: RequestInfo, request: Request) -> Action {
        let tiers = config::get("tiers").unwrap_or_else(|| DEFAULT_TIERS.to_string());
        let tiers: Vec<&str> = tiers.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
        let Some(min) = config::get("min_tier") else {
            log::write(log::Level::Error, "setting `min_tier` is missing: refusing every request");
            return error(503, "this route is misconfigured", None, &info);
        };
        let Some(needed) = tiers.iter().position(|t| *t == min) else {
            log::write(log::Level::Error, &format!("min_tier {min:?} is not one of tiers {tiers:?}"));
            return error(503, "this route is misconfigured", None, &info);
        };
        let rank = caller
            .as_ref()
            .and_then(|c| c.tier.as_deref())
            .and_then(|t| tiers.iter().position(|x| *x == t));
        match rank {
            Some(r) if r >= needed => Action::Forward(request),
            _ => error(403, &format!("this route requires tier {min} or above"), Some(&min), &info),
        }
    }
}

fn error(status: u16, message: &str, required: Option<&str>, info: &RequestInfo) -> Action {
    let required = required.map(|t| format!(r#","required_tier":"{}""#, escape(t))).unwrap_or_default();
    let body = format!(
        r#"{{"error":"{}"{required},"request_id":"{}"}}"#,
        escape(message),
        escape(&info.request_id)
    );
    Action::Respond(Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
    })
}

/// Escapes `"` and `\` (tier names and request ids are printable ASCII).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

export!(TierGate);
