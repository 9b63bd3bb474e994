//! [`Verifier`]: from a bearer token to a verified [`Principal`].
//!
//! The order of checks is the security argument:
//! 1. size bound, then API keys by prefix (no parsing at all);
//! 2. the JWT header's `alg` must be one of the asymmetric algorithms, before
//!    anything else is looked up: `none` and HMAC never get as far as a key;
//! 3. the unverified `iss` (and for OIDC, `aud`) only *route* the token: to
//!    Airlock's own keys, or to the one tenant trusting that issuer for that
//!    audience. Every claim is checked again after the signature is verified,
//!    and only verified claims make the principal.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_core::principal::Principal;
use anyhow::ensure;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::claims::{Claims, audience_contains, check_times, oidc_principal, quoted};
use crate::jwks::JwksCache;
use crate::{API_KEY_PREFIX, AuthError, Directory, airlock_tokens, api_keys, http};

/// Longer bearer tokens are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The most clock skew [`VerifierOptions::leeway_secs`] may allow.
pub const MAX_LEEWAY_SECS: u64 = 60;

/// The verifier's settings. Deserializes with every field optional; durations
/// are written as in policies (`30s`, `10m`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierOptions {
    /// This installation's issuer URL: the `iss` of the tokens it mints. Empty
    /// means Airlock's own tokens are not accepted.
    pub own_issuer: String,
    /// Clock skew allowed on `exp` and `nbf`, at most [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// After fetching an issuer's keys, how long a token with an unknown `kid`
    /// is refused without fetching again.
    #[serde(deserialize_with = "duration_text")]
    pub jwks_refetch_cooldown: Duration,
    /// How long fetched keys are used before they are fetched again.
    #[serde(deserialize_with = "duration_text")]
    pub jwks_max_age: Duration,
    /// Timeout of each request to an issuer.
    #[serde(deserialize_with = "duration_text")]
    pub http_timeout: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            own_issuer: String::new(),
            leeway_secs: 30,
            jwks_refetch_cooldown: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(10 * 60),
            http_timeout: Duration::from_secs(5),
        }
    }
}

fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    airlock_core::duration::parse(&text).map_err(serde::de::Error::custom)
}

/// Verifies bearer tokens. Cheap to clone: clones share the key cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    options: VerifierOptions,
    jwks: JwksCache,
}

/// The parts of a JWT header the verifier uses, with `alg` already known to be
/// allowed.
pub(crate) struct TokenHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

impl Verifier {
    pub fn new(options: VerifierOptions) -> anyhow::Result<Self> {
        ensure!(
            options.leeway_secs <= MAX_LEEWAY_SECS,
            "leeway_secs is {}, at most {MAX_LEEWAY_SECS} is allowed",
            options.leeway_secs
        );
        let http = http::client(options.http_timeout)?;
        let jwks = JwksCache::new(http, options.jwks_refetch_cooldown, options.jwks_max_age);
        Ok(Self { inner: Arc::new(Inner { options, jwks }) })
    }

    pub fn options(&self) -> &VerifierOptions {
        &self.inner.options
    }

    /// How many times the keys of `issuer` were fetched, for tests and metrics.
    pub fn jwks_fetches(&self, issuer: &str) -> u64 {
        self.inner.jwks.fetches(issuer)
    }

    /// Verifies `token` now. Every refusal is an [`AuthError`] (a 401).
    pub async fn verify(&self, token: &str, directory: &dyn Directory) -> Result<Principal, AuthError> {
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.verify_at(token, directory, now).await
    }

    /// Verifies `token` as of `now_unix` (seconds since the epoch).
    pub async fn verify_at(
        &self,
        token: &str,
        directory: &dyn Directory,
        now_unix: i64,
    ) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::new(format!("token is longer than {MAX_TOKEN_LEN} bytes")));
        }
        if token.starts_with(API_KEY_PREFIX) {
            return api_keys::verify(token, directory);
        }
        let (header, unverified) = parse_unverified(token)?;
        let options = &self.inner.options;
        let iss = match unverified.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            _ => return Err(AuthError::new("token has no iss claim")),
        };
        if !options.own_issuer.is_empty() && iss == options.own_issuer {
            return airlock_tokens::verify(token, &header, options, directory, now_unix);
        }
        self.verify_oidc(token, &header, iss, &unverified, directory, now_unix).await
    }

    async fn verify_oidc(
        &self,
        token: &str,
        header: &TokenHeader,
        iss: &str,
        unverified: &Claims,
        directory: &dyn Directory,
        now_unix: i64,
    ) -> Result<Principal, AuthError> {
        let aud = match unverified.get("aud") {
            Some(aud @ (Value::String(_) | Value::Array(_))) => aud,
            _ => return Err(AuthError::new("token has no aud claim")),
        };
        // Whether the issuer is unknown or only the audience is wrong is not
        // told apart: that would tell anyone which issuers some tenant trusts.
        let mut matches =
            directory.issuers_for(iss).into_iter().filter(|(_, i)| audience_contains(unverified, &i.audience));
        let (tenant, issuer) = match (matches.next(), matches.next()) {
            (Some(only), None) => only,
            (None, _) => {
                return Err(AuthError::new(format!(
                    "issuer {} is not trusted by any tenant for audience {}",
                    quoted(iss),
                    audience_text(aud)
                )));
            }
            (Some(_), Some(_)) => {
                return Err(AuthError::new(format!(
                    "issuer {} is trusted by more than one tenant for audience {}; the token is ambiguous",
                    quoted(iss),
                    audience_text(aud)
                )));
            }
        };
        let kid = header.kid.as_deref().ok_or_else(|| AuthError::new("token header has no kid"))?;
        let key = self.inner.jwks.key(&issuer.issuer_url, kid, header.alg).await?;
        let claims = decode_verified(token, &key, header.alg, &issuer.issuer_url, &issuer.audience)?;
        check_times(&claims, now_unix, self.inner.options.leeway_secs)?;
        oidc_principal(tenant, &issuer, &claims)
    }
}

fn audience_text(aud: &Value) -> String {
    match aud {
        Value::String(s) => quoted(s),
        other => quoted(&other.to_string()),
    }
}

/// Splits a compact JWS, checks the header's `alg` and returns the header and
/// the *unverified* claims, which may only be used to find the key.
fn parse_unverified(token: &str) -> Result<(TokenHeader, Claims), AuthError> {
    let malformed = || AuthError::new("malformed token (expected a JWT or an API key)");
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header: Claims = decode_part(header).ok_or_else(malformed)?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => allowed_algorithm(alg)?,
        _ => return Err(AuthError::new("token header has no alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::new("token header kid must be a string")),
    };
    let claims = decode_part(payload).ok_or_else(malformed)?;
    Ok((TokenHeader { alg, kid }, claims))
}

fn decode_part(part: &str) -> Option<Claims> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The asymmetric algorithms accepted. `none` and HMAC (`HS*`) are refused
/// here, so no HMAC key is ever built from anything.
fn allowed_algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            let plain = other.len() <= 16 && other.chars().all(|c| c.is_ascii_alphanumeric());
            let shown = if plain { other.to_owned() } else { quoted(other) };
            return Err(AuthError::new(format!("algorithm {shown} is not allowed")));
        }
    })
}

/// Verifies the signature with `key` and `alg` only, and checks `iss` and
/// `aud`. Times are checked by the caller with [`check_times`], against an
/// injectable clock; `jsonwebtoken` still insists that `exp` is a number.
pub(crate) fn decode_verified(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    issuer: &str,
    audience: &str,
) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    match jsonwebtoken::decode::<Claims>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(AuthError::new(match e.kind() {
            ErrorKind::InvalidSignature => "invalid token signature".to_owned(),
            ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                format!("token has no valid {claim} claim")
            }
            ErrorKind::InvalidIssuer => "token issuer is not accepted".to_owned(),
            ErrorKind::InvalidAudience => "token audience is not accepted".to_owned(),
            ErrorKind::ExpiredSignature => "token expired".to_owned(),
            ErrorKind::ImmatureSignature => "token is not valid yet (nbf is in the future)".to_owned(),
            ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEddsaKey => {
                "the signing key is malformed".to_owned()
            }
            _ => "malformed token".to_owned(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_are_allowed() {
        for ok in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"] {
            assert!(allowed_algorithm(ok).is_ok(), "{ok}");
        }
        assert_eq!(allowed_algorithm("none").unwrap_err().0, "algorithm none is not allowed");
        assert_eq!(allowed_algorithm("HS256").unwrap_err().0, "algorithm HS256 is not allowed");
        for bad in ["HS384", "HS512", "NONE", "rs256", "ES512", "", "RS256 "] {
            assert!(allowed_algorithm(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        for bad in ["", ".", "..", "a.b.c", "a.b.c.d.e", "eyJhbGciOiJSUzI1NiJ9.e30", "eyJ9.e30.x"] {
            assert!(parse_unverified(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_deserialize_with_defaults_and_text_durations() {
        let o: VerifierOptions =
            serde_json::from_str(r#"{"own_issuer": "https://airlock.example", "jwks_refetch_cooldown": "1m"}"#)
                .unwrap();
        assert_eq!(o.own_issuer, "https://airlock.example");
        assert_eq!(o.jwks_refetch_cooldown, Duration::from_secs(60));
        assert_eq!(o.jwks_max_age, Duration::from_secs(600));
        assert_eq!(o.leeway_secs, 30);
        assert!(Verifier::new(VerifierOptions { leeway_secs: 61, ..Default::default() }).is_err());
    }
}
