//! Airlock's own tokens: minted with a tenant's Ed25519 key, verified from the
//! directory with no network call.

// clippy.toml allows these in #[test] fns; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use airlock_core::TenantId;
use airlock_core::principal::{AdminScope, PrincipalKind};
use airlock_identity::{
    AIRLOCK_AUDIENCE, IssuedToken, MintError, MintRequest, SigningKeyPair, VerifierOptions, jwks_document, mint,
    openid_configuration,
};
use airlock_testkit::oidc::{OidcIssuer, now_unix};
use axum::Json;
use axum::routing::get;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

use common::{OWN_ISSUER, TestDirectory, verifier, verifier_with};

struct Tenant {
    id: TenantId,
    key: SigningKeyPair,
}

fn tenant() -> Tenant {
    Tenant { id: TenantId::new(), key: SigningKeyPair::generate() }
}

fn directory(tenants: &[&Tenant]) -> TestDirectory {
    TestDirectory {
        signing_keys: tenants.iter().map(|t| (t.id, t.key.signing_key())).collect(),
        ..TestDirectory::default()
    }
}

fn mint_for(tenant: &Tenant, groups: &[String], now: i64) -> IssuedToken {
    mint(&MintRequest {
        issuer: OWN_ISSUER,
        tenant: tenant.id,
        kid: &tenant.key.kid,
        private_key: tenant.key.private_key(),
        subject: "ci-job-42",
        groups,
        kind: PrincipalKind::Workload,
        ttl: Duration::from_secs(900),
        now_unix: now,
    })
    .unwrap()
}

#[tokio::test]
async fn a_minted_token_round_trips() {
    let a = tenant();
    let directory = directory(&[&a]);
    let groups = vec!["agents".to_owned(), "dba".to_owned()];
    let now = now_unix();
    let issued = mint(&MintRequest {
        issuer: OWN_ISSUER,
        tenant: a.id,
        kid: &a.key.kid,
        private_key: a.key.private_key(),
        subject: "alice@example.com",
        groups: &groups,
        kind: PrincipalKind::Human,
        ttl: Duration::from_secs(900),
        now_unix: now,
    })
    .unwrap();
    assert_eq!(issued.expires_at_unix, now + 900);
    assert!(uuid::Uuid::parse_str(&issued.jti).is_ok());

    let verifier = verifier();
    let principal = verifier.verify(&issued.token, &directory).await.unwrap();
    assert_eq!(principal.tenant_id, a.id);
    assert_eq!(principal.issuer, OWN_ISSUER);
    assert_eq!(principal.subject, "alice@example.com");
    assert_eq!(principal.groups, groups);
    assert_eq!(principal.kind, PrincipalKind::Human);
    assert_eq!(principal.admin, AdminScope::None);
    assert_eq!(verifier.jwks_fetches(OWN_ISSUER), 0);

    // The claims are the documented ones.
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&issued.token).unwrap().claims;
    assert_eq!(claims["aud"], AIRLOCK_AUDIENCE);
    assert_eq!(claims["iss"], OWN_ISSUER);
    assert_eq!(claims["tid"], a.id.to_string());
    assert_eq!(claims["kind"], "human");
    assert_eq!(claims["jti"], issued.jti.as_str());
    assert_eq!(claims["exp"], now + 900);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["iat"], now);
    let header = jsonwebtoken::decode_header(&issued.token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(a.key.kid.as_str()));
}

#[tokio::test]
async fn a_token_of_tenant_as_key_naming_tenant_b_is_refused() {
    let (a, b) = (tenant(), tenant());
    let directory = directory(&[&a, &b]);
    let forged = mint(&MintRequest {
        issuer: OWN_ISSUER,
        tenant: b.id,
        kid: &a.key.kid,
        private_key: a.key.private_key(),
        subject: "ci-job-42",
        groups: &[],
        kind: PrincipalKind::Workload,
        ttl: Duration::from_secs(900),
        now_unix: now_unix(),
    })
    .unwrap();
    let err = verifier().verify(&forged.token, &directory).await.unwrap_err();
    assert_eq!(err.0, "token tenant does not match its signing key");
}

#[tokio::test]
async fn a_token_signed_by_another_key_under_a_known_kid_is_refused() {
    let (a, mallory) = (tenant(), tenant());
    let directory = directory(&[&a]);
    let forged = mint(&MintRequest {
        issuer: OWN_ISSUER,
        tenant: a.id,
        kid: &a.key.kid,
        private_key: mallory.key.private_key(),
        subject: "ci-job-42",
        groups: &[],
        kind: PrincipalKind::Workload,
        ttl: Duration::from_secs(900),
        now_unix: now_unix(),
    })
    .unwrap();
    let err = verifier().verify(&forged.token, &directory).await.unwrap_err();
    assert_eq!(err.0, "invalid token signature");
}

#[tokio::test]
async fn an_expired_minted_token_is_refused() {
    let a = tenant();
    let directory = directory(&[&a]);
    let verifier = verifier();
    let issued = mint_for(&a, &[], now_unix() - 3600);
    assert_eq!(verifier.verify(&issued.token, &directory).await.unwrap_err().0, "token expired");

    let issued = mint_for(&a, &[], 1_000_000);
    assert!(verifier.verify_at(&issued.token, &directory, 1_000_000 + 899).await.is_ok());
    assert_eq!(
        verifier.verify_at(&issued.token, &directory, 1_000_000 + 900 + 30).await.unwrap_err().0,
        "token expired"
    );
}

#[tokio::test]
async fn a_token_with_an_unknown_kid_is_refused() {
    let (a, unknown) = (tenant(), tenant());
    let directory = directory(&[&a]);
    let issued = mint_for(&unknown, &[], now_unix());
    assert_eq!(verifier().verify(&issued.token, &directory).await.unwrap_err().0, "unknown signing key");
}

#[tokio::test]
async fn only_eddsa_is_accepted_for_the_own_issuer() {
    let a = tenant();
    let directory = directory(&[&a]);
    let idp = OidcIssuer::start().await.unwrap();
    let claims = json!({
        "iss": OWN_ISSUER, "aud": AIRLOCK_AUDIENCE, "sub": "x", "tid": a.id.to_string(), "kind": "workload",
        "exp": now_unix() + 300,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(a.key.kid.clone());
    let rs256 = idp.token_with_header(&header, &claims);
    assert_eq!(
        verifier().verify(&rs256, &directory).await.unwrap_err().0,
        "algorithm RS256 is not allowed for Airlock tokens"
    );
    let hs256 = jsonwebtoken::encode(
        &Header { kid: Some(a.key.kid.clone()), ..Header::new(Algorithm::HS256) },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&a.key.public_key),
    )
    .unwrap();
    assert_eq!(verifier().verify(&hs256, &directory).await.unwrap_err().0, "algorithm HS256 is not allowed");
}

#[test]
fn minting_refuses_more_than_twelve_hours() {
    let a = tenant();
    let err = mint(&MintRequest {
        issuer: OWN_ISSUER,
        tenant: a.id,
        kid: &a.key.kid,
        private_key: a.key.private_key(),
        subject: "ci-job-42",
        groups: &[],
        kind: PrincipalKind::Workload,
        ttl: Duration::from_secs(12 * 3600 + 1),
        now_unix: now_unix(),
    })
    .unwrap_err();
    assert_eq!(err, MintError::TtlTooLong);
    assert_eq!(err.to_string(), "ttl must be at most 43200s (12h)");
}

/// Another system can verify Airlock's tokens the standard way, from the
/// published discovery document and JWKS: here, a second verifier that trusts
/// this installation as an ordinary OIDC issuer.
#[tokio::test]
async fn the_published_documents_verify_minted_tokens_as_oidc() {
    let a = tenant();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_url = format!("http://{}", listener.local_addr().unwrap());
    let (conf, jwks) = (openid_configuration(&issuer_url), jwks_document([&a.key.signing_key()]));
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(move || async move { Json(conf) }))
        .route("/.well-known/jwks.json", get(move || async move { Json(jwks) }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let issued = mint(&MintRequest {
        issuer: &issuer_url,
        tenant: a.id,
        kid: &a.key.kid,
        private_key: a.key.private_key(),
        subject: "ci-job-42",
        groups: &["agents".to_owned()],
        kind: PrincipalKind::Workload,
        ttl: Duration::from_secs(60),
        now_unix: now_unix(),
    })
    .unwrap();
    let relying_tenant = TenantId::new();
    let mut trusted = OidcIssuer::start().await.unwrap().trusted_issuer();
    trusted.issuer_url = issuer_url.clone();
    trusted.audience = AIRLOCK_AUDIENCE.into();
    let directory = TestDirectory::trusting(relying_tenant, trusted);
    let relying = verifier_with(VerifierOptions { own_issuer: String::new(), ..VerifierOptions::default() });
    let principal = relying.verify(&issued.token, &directory).await.unwrap();
    assert_eq!(principal.tenant_id, relying_tenant);
    assert_eq!(principal.subject, "ci-job-42");
    assert_eq!(principal.groups, ["agents"]);
    assert_eq!(relying.jwks_fetches(&issuer_url), 1);
    server.abort();
}
