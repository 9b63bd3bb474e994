//! Identity: turns a bearer token into a verified [`Principal`](airlock_core::principal::Principal), and mints
//! Airlock's own short-lived tokens.
//!
//! Three kinds of bearer token are understood:
//! - OIDC JWTs from an issuer a tenant trusts (an IdP for people, a CI provider
//!   for jobs), verified against the issuer's JWKS (discovered, cached, refetched
//!   on an unknown `kid` at most once per cooldown);
//! - Airlock's own JWTs, signed with a per-tenant Ed25519 key whose public half
//!   is in the tenant's event log (so workers verify them with no network call);
//! - opaque API keys (`alk_...`), of which only the SHA-256 is known.
//!
//! Lookups go through [`Directory`], implemented by whoever holds the tenants'
//! projected state (the control plane and every worker).
//!
//! Codemap: [`Verifier`] (`verifier.rs`) routes a token to one of the three
//! paths; `jwks.rs` discovers and caches issuers' keys, fetching through
//! `http.rs`; `claims.rs` checks times and maps claims to a principal;
//! `airlock_tokens.rs` mints and verifies Airlock's own tokens and publishes
//! their keys; `api_keys.rs` makes and resolves API keys.

mod airlock_tokens;
mod api_keys;
mod claims;
mod http;
mod jwks;
mod verifier;

use airlock_core::TenantId;
use airlock_core::event::TrustedIssuer;
use airlock_core::state::{ApiKey, SigningKey};

pub use airlock_tokens::{
    IssuedToken, MAX_MINTED_TTL, MintError, MintRequest, SigningKeyPair, jwks_document, mint, openid_configuration,
};
pub use api_keys::generate_api_key;
pub use claims::MAX_GROUPS;
pub use verifier::{MAX_LEEWAY_SECS, MAX_TOKEN_LEN, Verifier, VerifierOptions};

/// The `aud` of every token Airlock mints.
pub const AIRLOCK_AUDIENCE: &str = "airlock";

/// The prefix of opaque API keys.
pub const API_KEY_PREFIX: &str = "alk_";

/// What the verifier needs to know about tenants. Implementations answer from
/// memory; none of these may do I/O.
pub trait Directory: Send + Sync {
    /// Every (tenant, issuer) whose `issuer_url` equals `iss`.
    fn issuers_for(&self, iss: &str) -> Vec<(TenantId, TrustedIssuer)>;
    /// The tenant owning an Airlock signing key, and the key.
    fn signing_key(&self, kid: &str) -> Option<(TenantId, SigningKey)>;
    /// The tenant owning an API key with this SHA-256 (hex), and the key.
    fn api_key(&self, sha256_hex: &str) -> Option<(TenantId, ApiKey)>;
}

/// The projection every component keeps (the control plane's and each
/// worker's) answers directly; each lookup holds the read lock only for itself.
impl Directory for std::sync::RwLock<airlock_core::Tenants> {
    fn issuers_for(&self, iss: &str) -> Vec<(TenantId, TrustedIssuer)> {
        self.read().unwrap_or_else(|e| e.into_inner()).issuers_for(iss)
    }

    fn signing_key(&self, kid: &str) -> Option<(TenantId, SigningKey)> {
        self.read().unwrap_or_else(|e| e.into_inner()).signing_key(kid)
    }

    fn api_key(&self, sha256_hex: &str) -> Option<(TenantId, ApiKey)> {
        self.read().unwrap_or_else(|e| e.into_inner()).api_key(sha256_hex)
    }
}

/// Why a token was refused. The message is safe to show the client: it never
/// contains the token, a key, or an internal address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl AuthError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
