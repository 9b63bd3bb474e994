//! What the identity tests share: an in-memory [`Directory`] and a verifier.

#![allow(dead_code)]

use std::time::Duration;

use airlock_core::TenantId;
use airlock_core::event::TrustedIssuer;
use airlock_core::state::{ApiKey, SigningKey};
use airlock_identity::{Directory, Verifier, VerifierOptions};

/// This installation's issuer in the tests.
pub const OWN_ISSUER: &str = "http://127.0.0.1:8080";

/// The tenants' projected state, reduced to what the verifier asks.
#[derive(Default)]
pub struct TestDirectory {
    pub issuers: Vec<(TenantId, TrustedIssuer)>,
    pub signing_keys: Vec<(TenantId, SigningKey)>,
    pub api_keys: Vec<(TenantId, ApiKey)>,
}

impl TestDirectory {
    pub fn trusting(tenant: TenantId, issuer: TrustedIssuer) -> Self {
        Self { issuers: vec![(tenant, issuer)], ..Self::default() }
    }
}

impl Directory for TestDirectory {
    fn issuers_for(&self, iss: &str) -> Vec<(TenantId, TrustedIssuer)> {
        self.issuers.iter().filter(|(_, i)| i.issuer_url == iss).cloned().collect()
    }

    fn signing_key(&self, kid: &str) -> Option<(TenantId, SigningKey)> {
        self.signing_keys.iter().find(|(_, k)| k.kid == kid).cloned()
    }

    fn api_key(&self, sha256_hex: &str) -> Option<(TenantId, ApiKey)> {
        self.api_keys.iter().find(|(_, k)| k.sha256 == sha256_hex).cloned()
    }
}

pub fn verifier() -> Verifier {
    verifier_with(VerifierOptions::default())
}

pub fn verifier_with(options: VerifierOptions) -> Verifier {
    Verifier::new(VerifierOptions { own_issuer: OWN_ISSUER.into(), ..options }).unwrap()
}

pub fn with_cooldown(cooldown: Duration) -> Verifier {
    verifier_with(VerifierOptions { jwks_refetch_cooldown: cooldown, ..VerifierOptions::default() })
}
