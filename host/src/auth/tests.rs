//! Unit tests for the JWT rules, with the test keys in `tests/keys/`.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::config::{JwksConfig, KeyConfig};

const SECRET: &[u8] = b"unit-test-secret-that-is-long-enough!!";

fn keyfile(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn cfg() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        issuer: vec![],
        audience: vec![],
        leeway: Duration::from_secs(30),
        cache_size: 100,
        keys: vec![
            KeyConfig {
                kid: Some("rsa-1".into()),
                alg: Algorithm::RS256,
                pem: keyfile("rs256.pub"),
            },
            KeyConfig {
                kid: Some("ec-1".into()),
                alg: Algorithm::ES256,
                pem: keyfile("es256.pub"),
            },
            KeyConfig {
                kid: None,
                alg: Algorithm::EdDSA,
                pem: keyfile("ed25519.pub"),
            },
        ],
        jwks: None,
    }
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "tier": "pro", "exp": now() + 600})
}

fn hs(claims: &Value) -> String {
    mint_hs256(SECRET, claims).unwrap()
}

fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn check(token: &str) -> Result<Arc<Identity>, AuthError> {
    Verifier::new(&cfg()).await.unwrap().verify(token).await
}

#[tokio::test]
async fn accepts_each_configured_key_type() {
    let id = check(&hs(&claims("42"))).await.unwrap();
    assert_eq!((id.sub.as_str(), id.tier.as_deref()), ("42", Some("pro")));

    let rsa = EncodingKey::from_rsa_pem(&keyfile("rs256.key")).unwrap();
    assert_eq!(
        check(&signed(Algorithm::RS256, Some("rsa-1"), &rsa, &claims("r")))
            .await
            .unwrap()
            .sub,
        "r"
    );
    let ec = EncodingKey::from_ec_pem(&keyfile("es256.key")).unwrap();
    assert_eq!(
        check(&signed(Algorithm::ES256, Some("ec-1"), &ec, &claims("e"))).await.unwrap().sub,
        "e"
    );
    let ed = EncodingKey::from_ed_pem(&keyfile("ed25519.key")).unwrap();
    assert_eq!(check(&signed(Algorithm::EdDSA, None, &ed, &claims("d"))).await.unwrap().sub, "d");
}

#[tokio::test]
async fn refuses_every_bad_token_kind() {
    let t = now();
    let other = EncodingKey::from_rsa_pem(&keyfile("other-rs256.key")).unwrap();
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims("42")));
    let crit = format!("{}.{}.sig", b64(&json!({"alg": "HS256", "crit": ["exp"]})), b64(&claims("42")));
    let cases: Vec<(&str, String, AuthError)> = vec![
        ("alg none", none, AuthError::Algorithm),
        ("expired", hs(&json!({"sub": "42", "exp": t - 120})), AuthError::Expired),
        (
            "future nbf",
            hs(&json!({"sub": "42", "exp": t + 600, "nbf": t + 300})),
            AuthError::NotYetValid,
        ),
        ("no exp", hs(&json!({"sub": "42"})), AuthError::Malformed),
        ("missing sub", hs(&json!({"exp": t + 600})), AuthError::Subject),
        ("empty sub", hs(&json!({"sub": "", "exp": t + 600})), AuthError::Subject),
        ("numeric sub", hs(&json!({"sub": 42, "exp": t + 600})), AuthError::Subject),
        (
            "newline in sub",
            hs(&json!({"sub": "1\r\nX-User-ID: 2", "exp": t + 600})),
            AuthError::Subject,
        ),
        (
            "bad tier",
            hs(&json!({"sub": "1", "tier": "pro\n", "exp": t + 600})),
            AuthError::Tier,
        ),
        (
            "wrong secret",
            mint_hs256(b"another-secret-another-secret-another", &claims("42")).unwrap(),
            AuthError::Signature,
        ),
        (
            "wrong rsa key",
            signed(Algorithm::RS256, Some("rsa-1"), &other, &claims("42")),
            AuthError::Signature,
        ),
        (
            "unknown kid",
            signed(Algorithm::RS256, Some("nope"), &other, &claims("42")),
            AuthError::UnknownKey,
        ),
        ("garbage", "not-a-token".into(), AuthError::Malformed),
        ("garbage parts", "a.b.c".into(), AuthError::Malformed),
        ("oversized", "a".repeat(MAX_TOKEN_BYTES + 1), AuthError::TooLarge),
        ("crit", crit, AuthError::Critical),
    ];
    for (name, token, want) in cases {
        assert_eq!(check(&token).await.unwrap_err(), want, "{name}");
    }
}

#[tokio::test]
async fn token_alg_never_picks_the_key_type() {
    // HS256 signed with the RSA *public* key bytes: the classic confusion.
    let pubkey = keyfile("rs256.pub");
    let forged = signed(Algorithm::HS256, Some("rsa-1"), &EncodingKey::from_secret(&pubkey), &claims("42"));
    assert_eq!(check(&forged).await.unwrap_err(), AuthError::UnknownKey);
    // RS256 token naming the EC key's kid.
    let rsa = EncodingKey::from_rsa_pem(&keyfile("rs256.key")).unwrap();
    let wrong = signed(Algorithm::RS256, Some("ec-1"), &rsa, &claims("42"));
    assert_eq!(check(&wrong).await.unwrap_err(), AuthError::UnknownKey);
}

#[tokio::test]
async fn jku_and_embedded_jwk_are_ignored() {
    // A token signed with the attacker's key, pointing at the attacker's keys.
    let other = EncodingKey::from_rsa_pem(&keyfile("other-rs256.key")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    h.jku = Some("http://127.0.0.1:1/jwks.json".into());
    let token = encode(&h, &claims("42"), &other).unwrap();
    assert_eq!(check(&token).await.unwrap_err(), AuthError::Signature);
}

#[tokio::test]
async fn issuer_audience_and_leeway() {
    let mut c = cfg();
    c.issuer = vec!["https://auth.example".into()];
    c.audience = vec!["gatehouse".into()];
    let v = Verifier::new(&c).await.unwrap();
    let t = now();
    let good = hs(&json!({"sub": "1", "exp": t + 60, "iss": "https://auth.example", "aud": "gatehouse"}));
    assert!(v.verify(&good).await.is_ok());
    let bad_iss = hs(&json!({"sub": "1", "exp": t + 60, "iss": "https://evil", "aud": "gatehouse"}));
    assert_eq!(v.verify(&bad_iss).await.unwrap_err(), AuthError::Issuer);
    let no_aud = hs(&json!({"sub": "1", "exp": t + 60, "iss": "https://auth.example"}));
    assert_eq!(v.verify(&no_aud).await.unwrap_err(), AuthError::Audience);
    // Within the 30 s leeway: still accepted.
    let just_expired = hs(&json!({"sub": "1", "exp": t - 5, "iss": "https://auth.example", "aud": "gatehouse"}));
    assert!(v.verify(&just_expired).await.is_ok());
}

#[tokio::test]
async fn jwks_file_keys_verify_and_symmetric_jwks_keys_are_refused() {
    let mut c = cfg();
    c.hs256_secret = None;
    c.keys.clear();
    c.jwks = Some(JwksConfig::File(
        format!("{}/../tests/keys/jwks.json", env!("CARGO_MANIFEST_DIR")).into(),
    ));
    let v = Verifier::new(&c).await.unwrap();
    let rsa = EncodingKey::from_rsa_pem(&keyfile("rs256.key")).unwrap();
    assert_eq!(
        v.verify(&signed(Algorithm::RS256, Some("rsa-1"), &rsa, &claims("j")))
            .await
            .unwrap()
            .sub,
        "j"
    );
    assert_eq!(v.verify(&hs(&claims("h"))).await.unwrap_err(), AuthError::UnknownKey);

    let oct = json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]});
    assert!(keys::jwks_keys(oct.to_string().as_bytes(), &c).is_err());
}

#[tokio::test]
async fn cache_returns_the_same_identity_and_respects_exp() {
    let v = Verifier::new(&cfg()).await.unwrap();
    let token = hs(&claims("c"));
    let a = v.verify(&token).await.unwrap();
    let b = v.verify(&token).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second verification should be a cache hit");
    let cache = cache::TokenCache::new(10, 0);
    let old = Arc::new(Identity::new("x".into(), None, 100, Map::new()));
    cache.insert("t", old, 50);
    assert!(cache.get("t", 100).is_some());
    assert!(cache.get("t", 101).is_none(), "expired entries are not served");
}
