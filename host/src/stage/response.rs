//! Stage: response. What the gateway changes in a service's response on
//! its way back, for the native route and for a plugin's `upstream.send`
//! alike. (Hop-by-hop fields never get this far: the client leaves them out
//! as it parses the head, and keeps them only for a `101`'s tunnel.)

use http::{HeaderMap, header};

/// The service's `Server` names its internal stack, and `Date` is the
/// gateway's to set (it dates every response): both go, as nginx hides them
/// by default.
pub fn from_service(headers: &mut HeaderMap) {
    // Most services send both: removing costs a lookup each either way.
    headers.remove(header::SERVER);
    headers.remove(header::DATE);
}
