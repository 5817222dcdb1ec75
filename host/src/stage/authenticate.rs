//! Stage: authenticate. `required`: a valid bearer token or 401. `optional`:
//! no credentials → anonymous; any credentials must verify (401 otherwise,
//! never silently anonymous). `public`: no JWT at all.

use http::{HeaderMap, header};

use crate::auth::{AuthError, Verifier};
use crate::config::AuthMode;
use crate::context::RequestCtx;
use crate::error::GatewayError;

/// The bearer token, `None` when no `Authorization` header was sent (the
/// admin listener's actions read theirs with it too).
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => return Err(AuthError::BadScheme),
        (Some(v), None) => v.to_str().map_err(|_| AuthError::BadScheme)?,
    };
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::BadScheme)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::BadScheme);
    }
    Ok(Some(token))
}

/// Verifies the bearer token, or else `fallback` (a WebSocket handshake's
/// token from its subprotocol offer or query).
pub async fn run(ctx: &mut RequestCtx, headers: &HeaderMap, fallback: Option<&str>, verifier: &Verifier) -> Result<(), GatewayError> {
    let mode = ctx.route()?.auth;
    if mode == AuthMode::Public {
        return Ok(());
    }
    match (bearer(headers)?.or(fallback), mode) {
        (Some(token), _) => ctx.identity = Some(verifier.verify(token).await?),
        (None, AuthMode::Required) => return Err(AuthError::Missing.into()),
        (None, _) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&with(&[])), Ok(None));
        assert_eq!(bearer(&with(&["Bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer(&with(&["bearer  abc "])), Ok(Some("abc")));
        assert_eq!(bearer(&with(&["Basic dXNlcjpwdw=="])), Err(AuthError::BadScheme));
        assert_eq!(bearer(&with(&["Bearer"])), Err(AuthError::BadScheme));
        assert_eq!(bearer(&with(&["Bearer "])), Err(AuthError::BadScheme));
        assert_eq!(bearer(&with(&["Bearer a", "Bearer b"])), Err(AuthError::BadScheme));
    }
}
