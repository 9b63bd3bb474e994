//! Trusted issuers' signing keys: discovered, cached per issuer, and refetched
//! lazily.
//!
//! A token naming a `kid` the cache does not know triggers a refetch, since the
//! issuer may have rotated its keys. Anyone can send such tokens, so refetches
//! are bounded two ways:
//! - single flight: lookups that miss wait on one per-issuer fetch lock, and a
//!   lookup that waited while another fetched uses that fetch's result;
//! - a cooldown: after any fetch attempt, misses are answered from the cache
//!   until the cooldown has passed.
//!
//! So a flood of random `kid`s costs at most one fetch per cooldown per issuer.
//! Keys older than the maximum age are refetched on the next lookup; if that
//! fails, the old keys are kept (an issuer's brief outage should not lock
//! everyone out) and the failure is retried after the cooldown.
//!
//! Entries are only made for issuers a tenant trusts (the caller checks the
//! [`crate::Directory`] first), so the map is bounded by configuration, not by
//! what clients send.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::ensure;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;

use crate::AuthError;
use crate::claims::quoted;
use crate::http::{fetchable_url, get_json};

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

pub(crate) struct JwksCache {
    http: reqwest::Client,
    refetch_cooldown: Duration,
    max_age: Duration,
    issuers: Mutex<HashMap<String, Arc<IssuerKeys>>>,
}

#[derive(Default)]
struct IssuerKeys {
    /// Held for the duration of a fetch; see the module comment.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Never held across an await.
    state: Mutex<KeyState>,
    /// Fetch attempts, successful or not.
    fetches: AtomicU64,
}

#[derive(Default)]
struct KeyState {
    /// The last key set fetched successfully, by `kid`.
    keys: Option<Arc<HashMap<String, Jwk>>>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    /// Bumped after every attempt, so a lookup that waited on the fetch lock
    /// can tell that someone else fetched meanwhile.
    attempts: u64,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

impl JwksCache {
    pub(crate) fn new(http: reqwest::Client, refetch_cooldown: Duration, max_age: Duration) -> Self {
        Self { http, refetch_cooldown, max_age, issuers: Mutex::new(HashMap::new()) }
    }

    /// How many times the keys of `issuer` were fetched (attempts, including
    /// failed ones).
    pub(crate) fn fetches(&self, issuer: &str) -> u64 {
        let issuers = self.issuers.lock().unwrap_or_else(PoisonError::into_inner);
        issuers.get(issuer).map_or(0, |e| e.fetches.load(Ordering::Relaxed))
    }

    /// The key `kid` of `issuer`, checked to suit `alg`.
    pub(crate) async fn key(&self, issuer: &str, kid: &str, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let entry = self.entry(issuer);
        let seen_attempts = {
            let state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = state.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
            if let Some(jwk) = state.keys.as_ref().and_then(|keys| keys.get(kid))
                && fresh
            {
                return decoding_key(jwk, alg);
            }
            state.attempts
        };

        {
            let _flight = entry.fetch_lock.lock().await;
            let may_fetch = {
                let state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.attempts == seen_attempts
                    && state.attempted_at.is_none_or(|t| t.elapsed() >= self.refetch_cooldown)
            };
            if may_fetch {
                self.refresh(issuer, &entry).await;
            }
        }

        let keys = entry.state.lock().unwrap_or_else(PoisonError::into_inner).keys.clone();
        let keys =
            keys.ok_or_else(|| AuthError::new(format!("could not fetch the signing keys of issuer {issuer}")))?;
        let jwk = keys.get(kid).ok_or_else(|| AuthError::new("unknown signing key"))?;
        decoding_key(jwk, alg)
    }

    fn entry(&self, issuer: &str) -> Arc<IssuerKeys> {
        let mut issuers = self.issuers.lock().unwrap_or_else(PoisonError::into_inner);
        issuers.entry(issuer.to_owned()).or_default().clone()
    }

    /// Fetches the issuer's keys once and records the outcome. Called with the
    /// entry's fetch lock held.
    async fn refresh(&self, issuer: &str, entry: &IssuerKeys) {
        entry.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch(issuer).await;
        let now = Instant::now();
        let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.attempted_at = Some(now);
        state.attempts += 1;
        match result {
            Ok(keys) => {
                tracing::debug!(issuer, keys = keys.len(), "fetched the signing keys of an issuer");
                state.keys = Some(Arc::new(keys));
                state.fetched_at = Some(now);
            }
            Err(e) => tracing::warn!(issuer, "failed to fetch the signing keys of issuer {issuer}: {e:#}"),
        }
    }

    /// Discovery, then the key set. Keys that do not parse, or have no `kid`,
    /// are skipped rather than failing the set: an issuer may publish keys of
    /// types we do not support next to ones we do.
    async fn fetch(&self, issuer: &str) -> anyhow::Result<HashMap<String, Jwk>> {
        let base = issuer.strip_suffix('/').unwrap_or(issuer);
        let discovery_url = fetchable_url(&format!("{base}/.well-known/openid-configuration"))?;
        let discovery: Discovery = get_json(&self.http, &discovery_url).await?;
        ensure!(
            discovery.issuer == issuer,
            "the discovery document at {discovery_url} names issuer {}",
            quoted(&discovery.issuer)
        );
        let jwks_url = fetchable_url(&discovery.jwks_uri)?;
        let set: RawJwkSet = get_json(&self.http, &jwks_url).await?;
        let mut keys = HashMap::new();
        for raw in set.keys {
            match serde_json::from_value::<Jwk>(raw) {
                Ok(jwk) => {
                    if let Some(kid) = jwk.common.key_id.clone() {
                        keys.entry(kid).or_insert(jwk);
                    }
                }
                Err(e) => tracing::debug!(issuer, "skipped a key of issuer {issuer}: {e}"),
            }
        }
        Ok(keys)
    }
}

/// Builds a verification key from `jwk` for a token signed with `alg`, refusing
/// a key whose type, curve or declared algorithm does not match. This is where
/// key-confusion attacks stop: a symmetric (`oct`) key is never used, and an
/// RSA key is only ever an RSA key.
pub(crate) fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Result<DecodingKey, AuthError> {
    if let Some(declared) = jwk.common.key_algorithm
        && declared.to_string() != format!("{alg:?}")
    {
        return Err(AuthError::new(format!("the signing key is for algorithm {declared}, not {alg:?}")));
    }
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err(AuthError::new("the signing key is not for signatures"));
    }
    let mismatch = || AuthError::new(format!("the signing key's type does not match algorithm {alg:?}"));
    let invalid = || AuthError::new("the signing key is malformed");
    use Algorithm::*;
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(rsa), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => {
            let modulus = URL_SAFE_NO_PAD.decode(&rsa.n).map_err(|_| invalid())?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err(AuthError::new("the RSA signing key is shorter than 2048 bits"));
            }
            DecodingKey::from_rsa_components(&rsa.n, &rsa.e).map_err(|_| invalid())
        }
        (AlgorithmParameters::EllipticCurve(ec), ES256) if ec.curve == EllipticCurve::P256 => {
            DecodingKey::from_ec_components(&ec.x, &ec.y).map_err(|_| invalid())
        }
        (AlgorithmParameters::EllipticCurve(ec), ES384) if ec.curve == EllipticCurve::P384 => {
            DecodingKey::from_ec_components(&ec.x, &ec.y).map_err(|_| invalid())
        }
        (AlgorithmParameters::OctetKeyPair(okp), EdDSA) if okp.curve == EllipticCurve::Ed25519 => {
            // `jsonwebtoken` slices the first 32 bytes without checking the length.
            let x = URL_SAFE_NO_PAD.decode(&okp.x).map_err(|_| invalid())?;
            if x.len() != 32 {
                return Err(invalid());
            }
            Ok(DecodingKey::from_ed_der(&x))
        }
        _ => Err(mismatch()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jwk(v: serde_json::Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    fn rsa_n() -> String {
        let mut n = vec![0xc5u8; 256];
        n[255] = 0x01;
        URL_SAFE_NO_PAD.encode(n)
    }

    #[test]
    fn key_type_must_match_the_algorithm_family() {
        let rsa = jwk(json!({"kty": "RSA", "kid": "r", "n": rsa_n(), "e": "AQAB"}));
        assert!(decoding_key(&rsa, Algorithm::RS256).is_ok());
        assert!(decoding_key(&rsa, Algorithm::PS512).is_ok());
        assert!(decoding_key(&rsa, Algorithm::ES256).is_err());
        assert!(decoding_key(&rsa, Algorithm::EdDSA).is_err());
        assert!(decoding_key(&rsa, Algorithm::HS256).is_err());

        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let p256 = jwk(json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": x, "y": x}));
        assert!(decoding_key(&p256, Algorithm::ES256).is_ok());
        assert!(decoding_key(&p256, Algorithm::ES384).is_err(), "curve must match");
        assert!(decoding_key(&p256, Algorithm::RS256).is_err());

        let ed = jwk(json!({"kty": "OKP", "crv": "Ed25519", "kid": "d", "x": x}));
        assert!(decoding_key(&ed, Algorithm::EdDSA).is_ok());
        assert!(decoding_key(&ed, Algorithm::ES256).is_err());
        let short = jwk(json!({"kty": "OKP", "crv": "Ed25519", "kid": "d", "x": "AAAA"}));
        assert!(decoding_key(&short, Algorithm::EdDSA).is_err());

        let oct = jwk(json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}));
        for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            assert!(decoding_key(&oct, alg).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn a_declared_alg_or_use_must_match() {
        let rs384 = jwk(json!({"kty": "RSA", "kid": "r", "alg": "RS384", "n": rsa_n(), "e": "AQAB"}));
        assert!(decoding_key(&rs384, Algorithm::RS384).is_ok());
        assert_eq!(
            decoding_key(&rs384, Algorithm::RS256).err(),
            Some(AuthError::new("the signing key is for algorithm RS384, not RS256"))
        );
        let enc = jwk(json!({"kty": "RSA", "kid": "r", "use": "enc", "n": rsa_n(), "e": "AQAB"}));
        assert!(decoding_key(&enc, Algorithm::RS256).is_err());
    }

    #[test]
    fn short_rsa_keys_are_refused() {
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let weak = jwk(json!({"kty": "RSA", "kid": "r", "n": n, "e": "AQAB"}));
        assert!(decoding_key(&weak, Algorithm::RS256).is_err());
    }
}
