//! Token pre-parsing and verification: nothing panics, and a token whose
//! signature bytes were changed, or whose header names another algorithm,
//! is never accepted.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt as _;
use serde_json::json;

use crate::auth::{Verifier, mint_hs256};
use crate::config::Config;

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";

fn verifier() -> std::sync::Arc<Verifier> {
    let mut config = Config::load(None).expect("the built-in defaults");
    config.auth.hs256_secret = Some(SECRET.to_vec());
    Verifier::new(&config.auth)
        .now_or_never()
        .expect("no I/O without a JWKS URL")
        .expect("an HS256 verifier")
}

/// Input: the first byte picks the case. 0: the rest is a token as a
/// client sent it. Otherwise the rest is a mask XORed into the signature of
/// a valid token for a `sub` taken from the input.
pub fn token(data: &[u8]) {
    thread_local! {
        static VERIFIER: std::sync::Arc<Verifier> = verifier();
    }
    let [case, rest @ ..] = data else { return };
    VERIFIER.with(|v| {
        let verify = |t: &str| v.verify(t).now_or_never().expect("HS256 needs no I/O");
        if *case == 0 {
            if let Ok(text) = std::str::from_utf8(rest) {
                // No valid token can be made without the secret.
                assert!(verify(text).is_err(), "a forged token was accepted: {text:?}");
            }
            return;
        }
        let sub: String = rest.iter().take(8).map(|b| char::from(b'a' + b % 26)).collect();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let good = mint_hs256(SECRET, &json!({"sub": if sub.is_empty() { "u".into() } else { sub }, "exp": exp})).unwrap();
        assert!(verify(&good).is_ok());
        let (signed, sig) = good.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let mask = &rest[rest.len().min(8)..];
        if mask.iter().take(bytes.len()).all(|m| *m == 0) {
            return;
        }
        for (b, m) in bytes.iter_mut().zip(mask.iter().cycle()) {
            *b ^= m;
        }
        let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
        assert!(verify(&forged).is_err(), "a changed signature was accepted");
        // The same signature under a header naming another algorithm.
        let (_, payload) = signed.split_once('.').unwrap();
        for alg in ["none", "HS384", "RS256", "ES256", "EdDSA"] {
            let head = URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"));
            assert!(verify(&format!("{head}.{payload}.{sig}")).is_err(), "{alg} accepted");
        }
    });
}
