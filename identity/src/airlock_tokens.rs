//! Airlock's own tokens: short-lived JWTs for workloads without an IdP, signed
//! with a per-tenant Ed25519 key.
//!
//! The public half of each key is in the tenant's event log
//! (`SigningKeyAdded`), so every worker verifies these tokens from memory with
//! no network call. The `kid` names the key, the key names the tenant, and the
//! token's `tid` must name the same tenant: a key of tenant A can never vouch
//! for a principal of tenant B.

use std::time::Duration;

use airlock_core::TenantId;
use airlock_core::principal::{AdminScope, Principal, PrincipalKind};
use airlock_core::state::SigningKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::claims::{MAX_GROUPS, check_times, groups};
use crate::verifier::{TokenHeader, VerifierOptions, decode_verified};
use crate::{AIRLOCK_AUDIENCE, AuthError, Directory};

/// The longest lifetime of a token Airlock mints.
pub const MAX_MINTED_TTL: Duration = Duration::from_secs(12 * 3600);

/// The algorithm of every Airlock signing key, as `SigningKey::algorithm` names it.
const ALGORITHM: &str = "EdDSA";

/// A new Ed25519 signing key. The caller publishes [`SigningKeyPair::signing_key`]
/// in the tenant's log and stores [`SigningKeyPair::private_key`] encrypted;
/// the private key never enters the log.
pub struct SigningKeyPair {
    /// The RFC 7638 thumbprint of the public key, so the same key always has
    /// the same `kid`.
    pub kid: String,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: [u8; 32],
    seed: [u8; 32],
}

impl SigningKeyPair {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let public_key = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        Self { kid: thumbprint(&public_key), public_key, seed }
    }

    /// The private key as [`mint`] takes it: the 32-byte Ed25519 seed (RFC 8032).
    pub fn private_key(&self) -> &[u8] {
        &self.seed
    }

    /// The public half, as `SigningKeyAdded` carries it.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey { kid: self.kid.clone(), algorithm: ALGORITHM.to_owned(), public_key: self.public_key.to_vec() }
    }
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyPair").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// RFC 7638: SHA-256 over the required members of the JWK, in lexical order.
fn thumbprint(public_key: &[u8; 32]) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(public_key));
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// What to mint.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    /// The installation's issuer URL (`VerifierOptions::own_issuer`).
    pub issuer: &'a str,
    pub tenant: TenantId,
    pub kid: &'a str,
    /// The 32-byte seed from [`SigningKeyPair::private_key`].
    pub private_key: &'a [u8],
    pub subject: &'a str,
    pub groups: &'a [String],
    pub kind: PrincipalKind,
    /// At most [`MAX_MINTED_TTL`].
    pub ttl: Duration,
    pub now_unix: i64,
}

/// A minted token and what the caller records about it (`TokenIssued`).
#[derive(Clone)]
pub struct IssuedToken {
    pub token: String,
    pub jti: String,
    pub expires_at_unix: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("jti", &self.jti)
            .field("expires_at_unix", &self.expires_at_unix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("ttl must be at most {}s (12h)", MAX_MINTED_TTL.as_secs())]
    TtlTooLong,
    #[error("ttl must be at least 1s")]
    TtlTooShort,
    #[error("subject must not be empty")]
    EmptySubject,
    #[error("at most {MAX_GROUPS} groups may be given")]
    TooManyGroups,
    #[error("the signing key's private half is not a 32-byte Ed25519 seed")]
    InvalidPrivateKey,
    #[error("failed to sign the token: {0}")]
    Sign(String),
}

/// The claims of an Airlock token.
#[derive(Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    tid: String,
    groups: &'a [String],
    kind: PrincipalKind,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
}

/// The claims read back, after the signature and times were checked.
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    tid: String,
    #[serde(default)]
    groups: Value,
    kind: String,
}

/// Signs a token for `req.subject` in `req.tenant`.
pub fn mint(req: &MintRequest<'_>) -> Result<IssuedToken, MintError> {
    if req.ttl > MAX_MINTED_TTL {
        return Err(MintError::TtlTooLong);
    }
    let ttl = i64::try_from(req.ttl.as_secs()).map_err(|_| MintError::TtlTooLong)?;
    if ttl < 1 {
        return Err(MintError::TtlTooShort);
    }
    if req.subject.is_empty() {
        return Err(MintError::EmptySubject);
    }
    if req.groups.len() > MAX_GROUPS {
        return Err(MintError::TooManyGroups);
    }
    let seed: &[u8; 32] = req.private_key.try_into().map_err(|_| MintError::InvalidPrivateKey)?;
    let der = ed25519_dalek::SigningKey::from_bytes(seed)
        .to_pkcs8_der()
        .map_err(|e| MintError::Sign(format!("failed to encode the key: {e}")))?;
    let key = EncodingKey::from_ed_der(der.as_bytes());

    let jti = uuid::Uuid::new_v4().to_string();
    let expires_at_unix = req.now_unix.saturating_add(ttl);
    let claims = MintedClaims {
        iss: req.issuer,
        aud: AIRLOCK_AUDIENCE,
        sub: req.subject,
        tid: req.tenant.to_string(),
        groups: req.groups,
        kind: req.kind,
        iat: req.now_unix,
        nbf: req.now_unix,
        exp: expires_at_unix,
        jti: &jti,
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(req.kid.to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &key).map_err(|e| MintError::Sign(e.to_string()))?;
    Ok(IssuedToken { token, jti, expires_at_unix })
}

/// Verifies a token whose unverified `iss` is this installation's.
pub(crate) fn verify(
    token: &str,
    header: &TokenHeader,
    options: &VerifierOptions,
    directory: &dyn Directory,
    now_unix: i64,
) -> Result<Principal, AuthError> {
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::new(format!("algorithm {:?} is not allowed for Airlock tokens", header.alg)));
    }
    let kid = header.kid.as_deref().ok_or_else(|| AuthError::new("token header has no kid"))?;
    let (tenant, key) = directory.signing_key(kid).ok_or_else(|| AuthError::new("unknown signing key"))?;
    if key.algorithm != ALGORITHM || key.public_key.len() != 32 {
        tracing::error!(%tenant, kid, algorithm = key.algorithm, "signing key in the log is not a 32-byte Ed25519 key");
        return Err(AuthError::new("unknown signing key"));
    }
    let claims = decode_verified(
        token,
        &DecodingKey::from_ed_der(&key.public_key),
        Algorithm::EdDSA,
        &options.own_issuer,
        AIRLOCK_AUDIENCE,
    )?;
    check_times(&claims, now_unix, options.leeway_secs)?;
    let claims: VerifiedClaims = serde_json::from_value(Value::Object(claims))
        .map_err(|_| AuthError::new("token lacks the claims of an Airlock token (sub, tid, kind)"))?;
    if claims.tid.parse::<TenantId>().ok() != Some(tenant) {
        return Err(AuthError::new("token tenant does not match its signing key"));
    }
    let kind = PrincipalKind::parse(&claims.kind)
        .ok_or_else(|| AuthError::new("token kind must be \"workload\" or \"human\""))?;
    if claims.sub.is_empty() {
        return Err(AuthError::new("token has an empty sub claim"));
    }
    Ok(Principal {
        tenant_id: tenant,
        issuer: options.own_issuer.clone(),
        subject: claims.sub,
        groups: groups(Some(&claims.groups)),
        claims: Default::default(),
        kind,
        admin: AdminScope::None,
    })
}

/// The document served at `/.well-known/jwks.json`: the public halves of the
/// given keys. Keys that are not 32-byte Ed25519 keys are left out.
pub fn jwks_document<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    let keys: Vec<Value> = keys
        .into_iter()
        .filter(|k| k.algorithm == ALGORITHM && k.public_key.len() == 32)
        .map(|k| {
            json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(&k.public_key),
                "kid": k.kid,
                "alg": ALGORITHM,
                "use": "sig",
            })
        })
        .collect();
    json!({ "keys": keys })
}

/// The document served at `/.well-known/openid-configuration` for Airlock's own
/// issuer, so other systems can verify Airlock's tokens the standard way.
pub fn openid_configuration(issuer: &str) -> Value {
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3.
        let x = URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        let x: [u8; 32] = x.try_into().unwrap();
        assert_eq!(thumbprint(&x), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn mint_refuses_long_ttls_and_bad_keys() {
        let key = SigningKeyPair::generate();
        let groups = vec!["agents".to_owned()];
        let req = MintRequest {
            issuer: "http://127.0.0.1:8080",
            tenant: TenantId::new(),
            kid: &key.kid,
            private_key: key.private_key(),
            subject: "ci-job-42",
            groups: &groups,
            kind: PrincipalKind::Workload,
            ttl: Duration::from_secs(900),
            now_unix: 1_700_000_000,
        };
        let issued = mint(&req).unwrap();
        assert_eq!(issued.expires_at_unix, 1_700_000_900);
        assert!(!format!("{issued:?}").contains(&issued.token), "Debug must not show the token");
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.private_key())));

        let too_long = MintRequest { ttl: MAX_MINTED_TTL + Duration::from_secs(1), ..req.clone() };
        assert_eq!(mint(&too_long).unwrap_err(), MintError::TtlTooLong);
        assert!(mint(&MintRequest { ttl: MAX_MINTED_TTL, ..req.clone() }).is_ok());
        assert_eq!(
            mint(&MintRequest { private_key: &[1, 2, 3], ..req.clone() }).unwrap_err(),
            MintError::InvalidPrivateKey
        );
        assert_eq!(mint(&MintRequest { subject: "", ..req.clone() }).unwrap_err(), MintError::EmptySubject);
        assert_eq!(mint(&MintRequest { ttl: Duration::ZERO, ..req }).unwrap_err(), MintError::TtlTooShort);
    }

    #[test]
    fn documents_publish_the_public_keys() {
        let key = SigningKeyPair::generate();
        let bad = SigningKey { kid: "rsa".into(), algorithm: "RS256".into(), public_key: vec![1; 270] };
        let doc = jwks_document([&key.signing_key(), &bad]);
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], key.kid.as_str());
        assert_eq!(keys[0]["x"], URL_SAFE_NO_PAD.encode(key.public_key).as_str());
        assert_eq!(keys[0]["kty"], "OKP");
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[0].clone()).unwrap();
        assert!(crate::jwks::decoding_key(&jwk, Algorithm::EdDSA).is_ok());

        let conf = openid_configuration("https://airlock.example");
        assert_eq!(conf["jwks_uri"], "https://airlock.example/.well-known/jwks.json");
        assert_eq!(conf["id_token_signing_alg_values_supported"], json!(["EdDSA"]));
    }
}
