//! `polar-webhook`: verifies the Standard Webhooks signature Polar puts on
//! every webhook, so payment-service only ever sees genuine ones.
//!
//! Polar sends `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256>` entries,
//! each over `"{id}.{timestamp}.{body}"`. One matching entry is enough
//! (several appear while a secret is being rotated).
//!
//! Settings (route file, `[route.settings]`):
//! - `secret`: the endpoint secret, usually `"${POLAR_WEBHOOK_SECRET}"`.
//!   A `whsec_` prefix means base64 key bytes follow; otherwise the string's
//!   bytes are the key. Unset: every webhook is refused (503).
//! - `tolerance_seconds`: how far the timestamp may be from now (default 300).
//!
//! Valid → forwarded untouched. Missing, stale or wrong → 401 and nothing
//! reaches the service.

wit_bindgen::generate!({ path: "../../wit", world: "route-handler" });

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use exports::gatehouse::plugin::handler::Guest;
use gatehouse::plugin::types::{Action, Caller, Request, RequestInfo, Response};
use gatehouse::plugin::{config, log};
use hmac::{Hmac, Mac};
use sha2::Sha256;

struct PolarWebhook;

const DEFAULT_TOLERANCE_SECONDS: u64 = 300;

impl Guest for PolarWebhook {
    fn handle(_caller: Option<Caller>, info: RequestInfo, request: Request) -> Action {
        let Some(key) = config::get("secret").filter(|s| !s.is_empty()) else {
            log::write(
                log::Level::Error,
                "no webhook secret configured (setting `secret`): refusing the webhook",
            );
            return refuse(503, "webhook verification is not configured", &info);
        };
        let key = match secret_bytes(&key) {
            Ok(key) => key,
            Err(why) => {
                log::write(log::Level::Error, &format!("setting `secret` is unusable: {why}"));
                return refuse(503, "webhook verification is not configured", &info);
            }
        };
        let tolerance = config::get("tolerance_seconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(DEFAULT_TOLERANCE_SECONDS);
        match verify(&key, &request, now(), tolerance) {
            Ok(()) => Action::Forward(request),
            Err(why) => {
                log::write(log::Level::Warn, &format!("webhook refused: {why}"));
                refuse(401, why, &info)
            }
        }
    }
}

fn secret_bytes(secret: &str) -> Result<Vec<u8>, &'static str> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => STANDARD.decode(b64).map_err(|_| "whsec_ secret is not valid base64"),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    let mut values = request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    let first = values.next().map(|(_, v)| v.as_str());
    // A repeated signing header is ambiguous: refuse rather than pick one.
    if values.next().is_some() { None } else { first }
}

fn verify(key: &[u8], request: &Request, now: u64, tolerance: u64) -> Result<(), &'static str> {
    let id = header(request, "webhook-id").ok_or("missing webhook-id header")?;
    let ts = header(request, "webhook-timestamp").ok_or("missing webhook-timestamp header")?;
    let signatures = header(request, "webhook-signature").ok_or("missing webhook-signature header")?;
    let ts_secs: u64 = ts.trim().parse().map_err(|_| "webhook-timestamp is not a number")?;
    if now.abs_diff(ts_secs) > tolerance {
        return Err("webhook-timestamp is outside the tolerance window");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| "unusable key")?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    for entry in signatures.split(' ').filter(|e| !e.is_empty()) {
        let Some(b64) = entry.strip_prefix("v1,") else { continue };
        let Ok(candidate) = STANDARD.decode(b64) else { continue };
        // `verify_slice` compares in constant time.
        if mac.clone().verify_slice(&candidate).is_ok() {
            return Ok(());
        }
    }
    Err("no valid webhook signature")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn refuse(status: u16, message: &str, info: &RequestInfo) -> Action {
    let body = format!(r#"{{"error":"{message}","request_id":"{}"}}"#, info.request_id.replace('"', ""));
    Action::Respond(Response {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
    })
}

export!(PolarWebhook);
