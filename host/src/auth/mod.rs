//! JWT verification: keys come only from configuration, the algorithm is
//! pinned per key, `exp` is required, `nbf`/`iss`/`aud` are checked, and the
//! claims the gateway forwards must be safe header values.

mod cache;
mod jwks;
mod keys;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::config::AuthConfig;
use crate::headers::{is_safe_value, value};
pub use jwks::JwksSource;
use keys::KeySet;

/// Longest token accepted; larger ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// JWT `sub`: non-empty, header-safe.
    pub sub: String,
    /// JWT `tier`, when present: header-safe.
    pub tier: Option<String>,
    /// JWT `exp` (seconds since the epoch).
    pub exp: u64,
    /// Every claim, for handlers that need more than `sub` and `tier`.
    pub claims: Map<String, Value>,
    /// `sub` and `tier` as header values, made once per token: a cached
    /// token's identity headers cost a reference count, not a copy.
    pub sub_header: HeaderValue,
    pub tier_header: Option<HeaderValue>,
}

impl Identity {
    /// `sub` and `tier` must already be header-safe ([`is_safe_value`]).
    pub fn new(sub: String, tier: Option<String>, exp: u64, claims: Map<String, Value>) -> Identity {
        Identity {
            sub_header: value(&sub),
            tier_header: tier.as_deref().map(value),
            sub,
            tier,
            exp,
            claims,
        }
    }
}

/// Why a token was refused. The text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header (expected `Bearer <token>`)")]
    BadScheme,
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("token uses a critical extension the gateway does not understand")]
    Critical,
    #[error("no key for this token")]
    UnknownKey,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    Issuer,
    #[error("token audience not accepted")]
    Audience,
    #[error("token has no valid `sub` claim")]
    Subject,
    #[error("token has an invalid `tier` claim")]
    Tier,
    #[error("invalid token")]
    Invalid,
}

impl AuthError {
    /// Why a token was refused, as a code from a closed set: the access
    /// line's `auth_reason` and `gatehouse_auth_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::BadScheme | AuthError::Malformed | AuthError::Invalid => "malformed",
            AuthError::TooLarge => "too_large",
            AuthError::Algorithm => "wrong_alg",
            AuthError::Critical => "unsupported_header",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::Signature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer | AuthError::Audience | AuthError::Subject | AuthError::Tier => "bad_claims",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind::*;
        match e.kind() {
            InvalidSignature => AuthError::Signature,
            ExpiredSignature => AuthError::Expired,
            ImmatureSignature => AuthError::NotYetValid,
            InvalidIssuer => AuthError::Issuer,
            InvalidAudience => AuthError::Audience,
            InvalidAlgorithm | InvalidAlgorithmName => AuthError::Algorithm,
            MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
            MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
            InvalidToken | Base64(_) | Json(_) | Utf8(_) | MissingRequiredClaim(_) => AuthError::Malformed,
            _ => AuthError::Invalid,
        }
    }
}

/// The JOSE header fields the gateway looks at. `jku`, `x5u` and `jwk` are
/// deliberately not read: keys never come from the token.
struct JoseHeader {
    alg: Algorithm,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<JoseHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    let raw = URL_SAFE_NO_PAD.decode(head).map_err(|_| AuthError::Malformed)?;
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&raw) else {
        return Err(AuthError::Malformed);
    };
    if obj.contains_key("crit") {
        return Err(AuthError::Critical);
    }
    let alg = obj.get("alg").and_then(Value::as_str).ok_or(AuthError::Malformed)?;
    // "none" and anything jsonwebtoken does not know fail here.
    let alg: Algorithm = alg.parse().map_err(|_| AuthError::Algorithm)?;
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(JoseHeader { alg, kid })
}

/// Checks the claims the gateway forwards as headers.
fn identity(claims: Map<String, Value>) -> Result<Identity, AuthError> {
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if is_safe_value(s) => s.clone(),
        _ => return Err(AuthError::Subject),
    };
    let tier = match claims.get("tier") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if is_safe_value(t) => Some(t.clone()),
        Some(_) => return Err(AuthError::Tier),
    };
    // jsonwebtoken has already checked that `exp` is present and numeric.
    let exp = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0) as u64;
    Ok(Identity::new(sub, tier, exp, claims))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    static_keys: Vec<keys::Key>,
    keys: ArcSwap<KeySet>,
    jwks: Option<JwksSource>,
    cache: cache::TokenCache,
}

impl Verifier {
    /// Builds the verifier, loading PEM keys and the JWKS (file or first fetch).
    pub async fn new(cfg: &AuthConfig) -> Result<Arc<Verifier>, String> {
        let static_keys = keys::static_keys(cfg)?;
        let jwks = cfg.jwks.as_ref().map(|j| JwksSource::new(j, cfg)).transpose()?;
        let verifier = Arc::new(Verifier {
            static_keys,
            keys: ArcSwap::from_pointee(KeySet::default()),
            jwks,
            cache: cache::TokenCache::new(cfg.cache_size, cfg.leeway.as_secs()),
        });
        let fetched = match &verifier.jwks {
            Some(src) => src.load().await?,
            None => Vec::new(),
        };
        verifier.install(fetched);
        if let Some(src) = &verifier.jwks {
            src.start_refresh(Arc::downgrade(&verifier));
        }
        Ok(verifier)
    }

    /// Replaces the key set: static keys plus freshly loaded JWKS keys.
    fn install(&self, jwks_keys: Vec<keys::Key>) {
        let mut all = self.static_keys.clone();
        all.extend(jwks_keys);
        self.keys.store(Arc::new(KeySet { keys: all }));
        self.cache.clear();
    }

    /// Verifies a bearer token and returns the caller.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let now = now();
        if let Some(id) = self.cache.get(token, now) {
            return Ok(id);
        }
        let header = parse_header(token)?;
        if let (Some(kid), Some(src)) = (&header.kid, &self.jwks)
            && !self.keys.load().knows_kid(kid)
            && let Some(fresh) = Box::pin(src.refetch()).await
        {
            self.install(fresh);
        }
        let keys = self.keys.load();
        let mut last = AuthError::UnknownKey;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &key.validation) {
                Ok(data) => {
                    let id = Arc::new(identity(data.claims)?);
                    self.cache.insert(token, id.clone(), now);
                    return Ok(id);
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }
}

/// Mints an HS256 token (for `gatehouse token` and tests).
pub fn mint_hs256(secret: &[u8], claims: &Value) -> Result<String, String> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
