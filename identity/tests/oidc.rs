//! OIDC tokens against a real issuer on loopback (testkit's `OidcIssuer`).

// clippy.toml allows these in #[test] fns; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use airlock_core::TenantId;
use airlock_core::principal::{AdminScope, PrincipalKind};
use airlock_identity::{AuthError, VerifierOptions};
use airlock_testkit::oidc::{AUDIENCE, OidcIssuer, PublicKeyBytes, assemble, now_unix, unsigned_token};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

use common::{TestDirectory, verifier, verifier_with, with_cooldown};

async fn issuer_and_directory() -> (OidcIssuer, TenantId, TestDirectory) {
    let issuer = OidcIssuer::start().await.unwrap();
    let tenant = TenantId::new();
    let directory = TestDirectory::trusting(tenant, issuer.trusted_issuer());
    (issuer, tenant, directory)
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn assert_refused(result: Result<airlock_core::principal::Principal, AuthError>, message: &str) {
    match result {
        Ok(p) => panic!("accepted a token that should be refused with {message:?}: {p:?}"),
        Err(e) => assert!(e.0.contains(message), "expected {message:?} in {:?}", e.0),
    }
}

#[tokio::test]
async fn a_valid_rs256_token_is_accepted() {
    let (issuer, tenant, directory) = issuer_and_directory().await;
    let verifier = verifier();
    let claims = with(issuer.claims("alice"), "groups", json!(["agents", "dba"]));
    let principal = verifier.verify(&issuer.token(&claims), &directory).await.unwrap();
    assert_eq!(principal.tenant_id, tenant);
    assert_eq!(principal.issuer, issuer.url());
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.groups, ["agents", "dba"]);
    assert_eq!(principal.kind, PrincipalKind::Workload);
    assert_eq!(principal.admin, AdminScope::None);
    assert_eq!(issuer.jwks_fetches(), 1);
    assert_eq!(verifier.jwks_fetches(issuer.url()), 1);

    // Cached: a second token costs no fetch.
    verifier.verify(&issuer.token(&issuer.claims("bob")), &directory).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn the_subject_can_come_from_a_ci_providers_repository_claim() {
    let issuer = OidcIssuer::start().await.unwrap();
    let tenant = TenantId::new();
    let mut trusted = issuer.trusted_issuer();
    trusted.subject_claim = "repository".into();
    trusted.groups_claim = "job_workflow_ref".into();
    trusted.principal_kind = PrincipalKind::Human;
    let directory = TestDirectory::trusting(tenant, trusted);
    let claims = json!({
        "iss": issuer.url(),
        "aud": ["https://github.com/acme", AUDIENCE],
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app",
        "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
        "exp": now_unix() + 300,
    });
    let principal = verifier().verify(&issuer.token(&claims), &directory).await.unwrap();
    assert_eq!(principal.subject, "acme/app");
    assert_eq!(principal.groups, ["acme/app/.github/workflows/deploy.yml@refs/heads/main"]);
    assert_eq!(principal.kind, PrincipalKind::Human);
    assert_eq!(principal.tenant_id, tenant);

    let missing = without(claims, "repository");
    assert_refused(verifier().verify(&issuer.token(&missing), &directory).await, "\"repository\" claim");
}

#[tokio::test]
async fn alg_none_is_refused_before_any_key_lookup() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    let token = unsigned_token(&issuer.claims("mallory"));
    assert_refused(verifier.verify(&token, &directory).await, "algorithm none is not allowed");
    // Also with a kid and a bogus signature, and in other spellings.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "kid": issuer.kid()});
        let token = assemble(&header, &issuer.claims("mallory"), b"sig");
        assert_refused(verifier.verify(&token, &directory).await, "is not allowed");
    }
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_issuers_rsa_public_key_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    // Warm the cache, so the key is right there for a confused verifier to misuse.
    verifier.verify(&issuer.token(&issuer.claims("alice")), &directory).await.unwrap();
    for bytes in [PublicKeyBytes::SpkiPem, PublicKeyBytes::SpkiDer, PublicKeyBytes::Pkcs1Pem, PublicKeyBytes::Pkcs1Der]
    {
        let forged = issuer.hs256_signed_with_public_key(&issuer.claims("mallory"), bytes);
        assert_refused(verifier.verify(&forged, &directory).await, "algorithm HS256 is not allowed");
    }
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn an_hmac_or_mismatched_key_in_the_jwks_is_never_used() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    // An `oct` key published under a kid: an RS256 token naming it is refused.
    issuer.add_jwk(json!({"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(b"secret")}));
    // The issuer's own RSA key republished as PS256: an RS256 token naming it is refused.
    let mut ps = issuer.current_jwk();
    ps["kid"] = json!("ps");
    ps["alg"] = json!("PS256");
    issuer.add_jwk(ps);

    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("hmac".into());
    let token = issuer.token_with_header(&header, &issuer.claims("mallory"));
    assert_refused(verifier.verify(&token, &directory).await, "does not match algorithm RS256");

    header.kid = Some("ps".into());
    let token = issuer.token_with_header(&header, &issuer.claims("mallory"));
    assert_refused(verifier.verify(&token, &directory).await, "for algorithm PS256, not RS256");

    // PS256 with that key is fine: the declared alg matches.
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some("ps".into());
    let token = issuer.token_with_header(&header, &issuer.claims("alice"));
    assert_eq!(verifier.verify(&token, &directory).await.unwrap().subject, "alice");
}

#[tokio::test]
async fn a_token_without_aud_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let token = issuer.token(&without(issuer.claims("alice"), "aud"));
    assert_refused(verifier().verify(&token, &directory).await, "token has no aud claim");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    let token = issuer.token(&with(issuer.claims("alice"), "aud", json!("someone-else")));
    assert_refused(
        verifier.verify(&token, &directory).await,
        &format!("issuer \"{}\" is not trusted by any tenant for audience \"someone-else\"", issuer.url()),
    );
    let token = issuer.token(&with(issuer.claims("alice"), "aud", json!(["x", "y"])));
    assert_refused(verifier.verify(&token, &directory).await, "is not trusted by any tenant");
    assert_eq!(issuer.jwks_fetches(), 0, "an untrusted token must not cause a fetch");
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let other = OidcIssuer::start().await.unwrap();
    let verifier = verifier();
    // Signed by a real issuer nobody here trusts.
    let token = other.token(&other.claims("alice"));
    assert_refused(verifier.verify(&token, &directory).await, "is not trusted by any tenant");
    // Signed by the trusted issuer's key, but naming another iss.
    let token = issuer.token(&with(issuer.claims("alice"), "iss", json!("https://evil.example")));
    assert_refused(verifier.verify(&token, &directory).await, "issuer \"https://evil.example\" is not trusted");
    let token = issuer.token(&without(issuer.claims("alice"), "iss"));
    assert_refused(verifier.verify(&token, &directory).await, "token has no iss claim");
    assert_eq!(other.jwks_fetches() + issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    let now = now_unix();
    let expired = issuer.token(&with(issuer.claims("alice"), "exp", json!(now - 120)));
    assert_refused(verifier.verify(&expired, &directory).await, "token expired");

    // With an injected clock: valid now, expired past exp + leeway (30 s). The
    // exp is set here, not by claims(), whose own clock may have ticked since `now`.
    let exp = now + 300;
    let token = issuer.token(&with(issuer.claims("alice"), "exp", json!(exp)));
    assert!(verifier.verify_at(&token, &directory, exp + 29).await.is_ok());
    assert_refused(verifier.verify_at(&token, &directory, exp + 30).await, "token expired");

    let no_exp = issuer.token(&without(issuer.claims("alice"), "exp"));
    assert_refused(verifier.verify(&no_exp, &directory).await, "exp");
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    let now = now_unix();
    let early = issuer.token(&with(issuer.claims("alice"), "nbf", json!(now + 120)));
    assert_refused(verifier.verify(&early, &directory).await, "not valid yet");
    assert!(verifier.verify_at(&early, &directory, now + 120).await.is_ok());
    assert!(verifier.verify_at(&early, &directory, now + 90).await.is_ok(), "within the leeway");
    assert_refused(verifier.verify_at(&early, &directory, now + 89).await, "not valid yet");
}

#[tokio::test]
async fn exp_given_as_a_string_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    // Far in the future, so a verifier that ignored a string exp would accept it.
    for exp in [json!("99999999999"), json!(format!("{}", now_unix() + 300)), json!(null)] {
        let token = issuer.token(&with(issuer.claims("alice"), "exp", exp));
        assert_refused(verifier.verify(&token, &directory).await, "token has no valid exp claim");
    }
    for exp in [json!([99999999999_i64]), json!(true), json!({"t": 99999999999_i64})] {
        let token = issuer.token(&with(issuer.claims("alice"), "exp", exp));
        assert!(verifier.verify(&token, &directory).await.is_err());
    }
    let token = issuer.token(&with(issuer.claims("alice"), "nbf", json!("0")));
    assert_refused(verifier.verify(&token, &directory).await, "nbf");
}

#[tokio::test]
async fn a_tampered_payload_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let signed = issuer.claims("alice");
    let presented = with(with(signed.clone(), "sub", json!("root")), "groups", json!(["dba"]));
    let token = issuer.tampered_token(&signed, &presented);
    assert_refused(verifier().verify(&token, &directory).await, "invalid token signature");
}

#[tokio::test]
async fn an_unknown_kid_is_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("not-a-key".into());
    let token = issuer.token_with_header(&header, &issuer.claims("alice"));
    assert_refused(verifier().verify(&token, &directory).await, "unknown signing key");

    let token = issuer.token_with_header(&Header::new(Algorithm::RS256), &issuer.claims("alice"));
    assert_refused(verifier().verify(&token, &directory).await, "token header has no kid");
}

#[tokio::test]
async fn a_flood_of_random_kids_causes_at_most_a_handful_of_fetches() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let directory = Arc::new(directory);
    // A cold cache, so the first lookups race to fetch: single flight.
    let verifier = verifier();
    let claims = issuer.claims("mallory");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let header = json!({"alg": "RS256", "kid": uuid::Uuid::new_v4().to_string()});
        let token = assemble(&header, &claims, &[7; 256]);
        let (verifier, directory) = (verifier.clone(), directory.clone());
        tasks.spawn(async move { verifier.verify(&token, directory.as_ref()).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap_err().0, "unknown signing key");
    }
    assert!(issuer.jwks_fetches() <= 3, "{} JWKS fetches", issuer.jwks_fetches());
    assert!(verifier.jwks_fetches(issuer.url()) <= 3);
    // And the real key still works, from the cache.
    verifier.verify(&issuer.token(&issuer.claims("alice")), directory.as_ref()).await.unwrap();
    assert!(issuer.jwks_fetches() <= 3);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_once_the_cooldown_allows_a_refetch() {
    let (issuer, _, directory) = issuer_and_directory().await;
    // The cooldown is long enough that signing and verifying a token fits inside
    // it even on a loaded machine; waiting it out is what the test is about.
    let cooldown = Duration::from_millis(1000);
    let verifier = with_cooldown(cooldown);
    let old = issuer.token(&issuer.claims("alice"));
    verifier.verify(&old, &directory).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);

    let new_kid = issuer.rotate();
    let new = issuer.token(&issuer.claims("alice"));
    assert!(new.len() > 10 && issuer.kid() == new_kid);
    // Within the cooldown the new kid is unknown, and nothing is fetched.
    assert_refused(verifier.verify(&new, &directory).await, "unknown signing key");
    assert_eq!(issuer.jwks_fetches(), 1);

    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let principal = verifier.verify(&new, &directory).await.unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(issuer.jwks_fetches(), 2);
    // The old key was dropped by the issuer, and now by us.
    assert_refused(verifier.verify(&old, &directory).await, "unknown signing key");
}

#[tokio::test]
async fn keys_older_than_the_max_age_are_refetched_lazily() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier_with(VerifierOptions {
        jwks_max_age: Duration::from_millis(100),
        jwks_refetch_cooldown: Duration::from_millis(50),
        ..VerifierOptions::default()
    });
    let token = issuer.token(&issuer.claims("alice"));
    verifier.verify(&token, &directory).await.unwrap();
    verifier.verify(&token, &directory).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    verifier.verify(&token, &directory).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_used() {
    let (issuer, _, directory) = issuer_and_directory().await;
    issuer.set_discovery_issuer(Some("https://elsewhere.example".into()));
    let token = issuer.token(&issuer.claims("alice"));
    assert_refused(
        verifier().verify(&token, &directory).await,
        &format!("could not fetch the signing keys of issuer {}", issuer.url()),
    );
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn issuers_off_loopback_must_use_https() {
    let tenant = TenantId::new();
    let issuer = OidcIssuer::start().await.unwrap();
    let mut trusted = issuer.trusted_issuer();
    trusted.issuer_url = "http://idp.example".into();
    let directory = TestDirectory::trusting(tenant, trusted);
    let token = issuer.token(&with(issuer.claims("alice"), "iss", json!("http://idp.example")));
    assert_refused(verifier().verify(&token, &directory).await, "could not fetch the signing keys");
}

#[tokio::test]
async fn the_audience_picks_the_tenant_and_ambiguity_is_refused() {
    let issuer = OidcIssuer::start().await.unwrap();
    let (a, b) = (TenantId::new(), TenantId::new());
    let mut for_b = issuer.trusted_issuer();
    for_b.audience = "tenant-b".into();
    let mut directory = TestDirectory::trusting(a, issuer.trusted_issuer());
    directory.issuers.push((b, for_b));
    let verifier = verifier();

    let to_a = issuer.token(&issuer.claims("alice"));
    assert_eq!(verifier.verify(&to_a, &directory).await.unwrap().tenant_id, a);
    let to_b = issuer.token(&with(issuer.claims("alice"), "aud", json!("tenant-b")));
    assert_eq!(verifier.verify(&to_b, &directory).await.unwrap().tenant_id, b);

    let to_both = issuer.token(&with(issuer.claims("alice"), "aud", json!([AUDIENCE, "tenant-b"])));
    assert_refused(verifier.verify(&to_both, &directory).await, "more than one tenant");
    directory.issuers.push((TenantId::new(), issuer.trusted_issuer()));
    assert_refused(verifier.verify(&to_a, &directory).await, "more than one tenant");
}

#[tokio::test]
async fn oversized_and_malformed_tokens_are_refused() {
    let (issuer, _, directory) = issuer_and_directory().await;
    let verifier = verifier();
    let big = with(issuer.claims("alice"), "pad", json!("x".repeat(17 * 1024)));
    assert_refused(verifier.verify(&issuer.token(&big), &directory).await, "token is longer than 16384 bytes");
    for bad in ["", "Bearer x", "a.b", "a.b.c", "....", "é.é.é"] {
        assert!(verifier.verify(bad, &directory).await.is_err(), "{bad}");
    }
    assert_eq!(issuer.jwks_fetches(), 0);
}
