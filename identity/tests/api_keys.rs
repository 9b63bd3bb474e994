//! Opaque API keys: only their SHA-256 is known to the directory.

// clippy.toml allows these in #[test] fns; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use airlock_core::principal::{AdminScope, PrincipalKind};
use airlock_core::state::ApiKey;
use airlock_core::{KeyId, TenantId};
use airlock_identity::generate_api_key;
use sha2::{Digest, Sha256};

use common::{TestDirectory, verifier};

#[tokio::test]
async fn an_api_key_round_trips() {
    let tenant = TenantId::new();
    let (token, sha256) = generate_api_key();
    assert!(token.starts_with("alk_"));
    assert_eq!(sha256, hex::encode(Sha256::digest(token.as_bytes())));
    let directory = TestDirectory {
        api_keys: vec![(
            tenant,
            ApiKey { id: KeyId::new(), name: "deploy-bot".into(), sha256, scope: AdminScope::Tenant },
        )],
        ..TestDirectory::default()
    };
    let principal = verifier().verify(&token, &directory).await.unwrap();
    assert_eq!(principal.tenant_id, tenant);
    assert_eq!(principal.issuer, "airlock");
    assert_eq!(principal.subject, "api-key:deploy-bot");
    assert!(principal.groups.is_empty());
    assert_eq!(principal.kind, PrincipalKind::Workload);
    assert_eq!(principal.admin, AdminScope::Tenant);
}

#[tokio::test]
async fn an_unknown_api_key_is_refused() {
    let (known, sha256) = generate_api_key();
    let directory = TestDirectory {
        api_keys: vec![(
            TenantId::new(),
            ApiKey { id: KeyId::new(), name: "k".into(), sha256, scope: AdminScope::None },
        )],
        ..TestDirectory::default()
    };
    let verifier = verifier();
    let (unknown, _) = generate_api_key();
    assert_eq!(verifier.verify(&unknown, &directory).await.unwrap_err().0, "unknown API key");
    // A near miss, and a key that looks like a JWT, are unknown keys too.
    let last = if known.ends_with('A') { 'B' } else { 'A' };
    let near_miss = format!("{}{last}", &known[..known.len() - 1]);
    assert_eq!(verifier.verify(&near_miss, &directory).await.unwrap_err().0, "unknown API key");
    assert_eq!(verifier.verify("alk_a.b.c", &directory).await.unwrap_err().0, "unknown API key");
}
