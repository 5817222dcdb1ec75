//! The configured verification keys, each pinned to one algorithm. A token's
//! header only *selects* among these (by `kid`, then by matching `alg`); it
//! never supplies a key or chooses a key type.

use std::collections::HashSet;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::AuthConfig;

/// One key and the exact validation rules that go with it.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub decoding: DecodingKey,
    pub validation: Validation,
}

/// An immutable set of keys; replaced whole when a JWKS refreshes.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Keys a token with this header may be verified with: by `kid` when the
    /// token names one, else every key pinned to the token's `alg`. A key whose
    /// pinned algorithm differs from the token's is never a candidate.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }

    /// True when a key with this id exists (whatever its algorithm).
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The validation rules for one algorithm, from configuration.
pub fn validation(alg: Algorithm, cfg: &AuthConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway.as_secs();
    v.validate_exp = true;
    // jsonwebtoken leaves `nbf` unchecked by default; a token not yet valid is not valid.
    v.validate_nbf = true;
    v.required_spec_claims = HashSet::from(["exp".to_string()]);
    if cfg.issuer.is_empty() {
        v.iss = None;
    } else {
        v.set_issuer(&cfg.issuer);
        v.required_spec_claims.insert("iss".into());
    }
    if cfg.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audience);
        v.required_spec_claims.insert("aud".into());
    }
    v
}

/// Keys from configuration (secret and PEM files).
pub fn static_keys(cfg: &AuthConfig) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    if let Some(secret) = &cfg.hs256_secret {
        keys.push(Key {
            kid: None,
            alg: Algorithm::HS256,
            decoding: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256, cfg),
        });
    }
    for k in &cfg.keys {
        let decoding = match k.alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => DecodingKey::from_rsa_pem(&k.pem),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&k.pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&k.pem),
            other => return Err(format!("unsupported key algorithm {other:?}")),
        }
        .map_err(|e| {
            format!(
                "key {}: not a valid {:?} public key PEM: {e}",
                k.kid.as_deref().unwrap_or("(no kid)"),
                k.alg
            )
        })?;
        keys.push(Key {
            kid: k.kid.clone(),
            alg: k.alg,
            decoding,
            validation: validation(k.alg, cfg),
        });
    }
    Ok(keys)
}

/// The algorithm a JWK is pinned to: its `alg` when given, else the one its
/// key type implies. Keys that say neither usefully are skipped.
fn jwk_alg(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        let text = serde_json::to_value(alg).ok()?;
        return text.as_str()?.parse().ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        // Symmetric (`oct`) and unknown keys never come from a JWKS document: anyone who can read
        // it could mint tokens.
        _ => None,
    }
}

/// Parses a JWKS document into keys. Keys with `use` other than `sig`,
/// symmetric keys and keys that do not parse are skipped, not fatal.
pub fn jwks_keys(json: &[u8], cfg: &AuthConfig) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys: Vec<Key> = set
        .keys
        .iter()
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(ref u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature))
        .filter_map(|jwk| {
            let alg = jwk_alg(jwk)?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return None;
            }
            let decoding = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                decoding,
                validation: validation(alg, cfg),
            })
        })
        .collect();
    if keys.is_empty() {
        return Err("the JWKS document has no usable signing keys".into());
    }
    Ok(keys)
}
