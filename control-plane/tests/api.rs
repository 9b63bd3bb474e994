//! The REST contract, end to end over a real control plane (SQLite and Postgres).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod harness;

use harness::{Backend, EXAMPLE_POLICY, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

on_both_backends!(
    example_documents_are_accepted_as_written,
    invalid_policies_name_the_field,
    errors_are_json_with_the_right_status,
    secrets_are_never_echoed_or_logged_to_events,
    minted_tokens_authenticate_and_verify_with_the_published_jwks,
    tenants_cannot_see_or_change_each_other,
    oidc_tokens_from_a_trusted_issuer_authenticate,
    admins_grant_and_revoke_access,
);

async fn example_documents_are_accepted_as_written(backend: Backend) {
    let h = Harness::start(backend).await;
    let (status, _) = h.get("/readyz", "").await;
    assert_eq!(status, StatusCode::OK);

    let conn = h.register_example_connection(&h.admin_token).await;
    assert_eq!(conn["name"], "pg-local");
    assert_eq!(conn["roles"]["readonly"], "app_readonly");
    assert_eq!(conn["credential_user"], "postgres");

    let (status, policy) = h.put_policy(&h.admin_token, EXAMPLE_POLICY).await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert_eq!(policy["version"], 1);
    let (status, policy2) = h.put_policy(&h.admin_token, EXAMPLE_POLICY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(policy2["version"], 2);

    let (status, page) = h.get("/v1/events?from_seq=0", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "tenant_created",
            "signing_key_added",
            "api_key_issued",
            "connection_registered",
            "policy_applied",
            "policy_applied"
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
        if i > 0 {
            assert_eq!(e["prev_hash"], events[i - 1]["hash"]);
        }
    }
    assert_eq!(page["head_seq"], 6);
    let (_, page) = h.get("/v1/events?from_seq=5", &h.admin_token).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);

    let (status, doc) = h.get("/v1/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/v1/connections", "/v1/policy", "/v1/events", "/v1/tokens", "/v1/tenants/{id}"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
}

async fn invalid_policies_name_the_field(backend: Backend) {
    let h = Harness::start(backend).await;
    let bad = EXAMPLE_POLICY.replace("max_ttl: 30m", "max_ttl: 30 minutes");
    let (status, body) = h.put_policy(&h.admin_token, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_argument");
    assert_eq!(body["field"], "access[1].max_ttl");
    assert!(body["message"].as_str().unwrap().contains("access[1].max_ttl"), "{body}");
    // Nothing was applied.
    let (status, _) = h.get("/v1/policy", &h.admin_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn errors_are_json_with_the_right_status(backend: Backend) {
    let h = Harness::start(backend).await;
    let (status, body) = h.get("/v1/connections", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthenticated");
    let (status, body) = h.get("/v1/connections", "alk_not-a-real-key").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthenticated");
    let (status, body) = h.get("/v1/connections/nope", &h.admin_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    let (status, body) = h.get("/v1/nothing-here", &h.admin_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    let (status, body) = h.post("/v1/connections", &h.admin_token, json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_argument");
    let mut conn: Value = serde_json::from_str(harness::EXAMPLE_CONNECTION).unwrap();
    conn["address"] = json!("no-port");
    let (status, body) = h.post("/v1/connections", &h.admin_token, conn).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "address");
    h.register_example_connection(&h.admin_token).await;
    let (status, body) =
        h.post("/v1/connections", &h.admin_token, serde_json::from_str(harness::EXAMPLE_CONNECTION).unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "conflict");
    let response = reqwest::Client::new()
        .put(format!("{}/v1/policy", h.base))
        .bearer_auth(&h.admin_token)
        .header("content-type", "image/png")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

async fn secrets_are_never_echoed_or_logged_to_events(backend: Backend) {
    let h = Harness::start(backend).await;
    let secret = "s3cr3t-Passw0rd-that-must-not-leak";
    let mut conn: Value = serde_json::from_str(harness::EXAMPLE_CONNECTION).unwrap();
    conn["admin_credential"]["password"] = json!(secret);
    let (status, created) = h.post("/v1/connections", &h.admin_token, conn.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, got) = h.get("/v1/connections/pg-local", &h.admin_token).await;
    let (_, events) = h.get("/v1/events?from_seq=0", &h.admin_token).await;
    conn["admin_credential"]["password"] = json!(format!("{secret}-v2"));
    let (status, updated) = h.call(Method::PUT, "/v1/connections/pg-local", &h.admin_token, Some(conn)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["secret_version"], 2);
    for body in [&created, &got, &events, &updated] {
        assert!(!body.to_string().contains(secret), "the password leaked: {body}");
    }
    // Not in the event log's stored bytes either, nor in plaintext anywhere in the database.
    if h.database_url.starts_with("sqlite") {
        for entry in std::fs::read_dir(&h.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue; // the recordings' directory, empty here
            }
            let bytes = std::fs::read(path).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "plaintext secret on disk");
        }
    }
}

async fn minted_tokens_authenticate_and_verify_with_the_published_jwks(backend: Backend) {
    let h = Harness::start(backend).await;
    h.register_example_connection(&h.admin_token).await;
    let (status, minted) = h
        .post("/v1/tokens", &h.admin_token, json!({"subject": "ci-job-42", "groups": ["agents"], "ttl_seconds": 900}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let token = minted["token"].as_str().unwrap();

    // A workload token reads, but may not administer.
    let (status, list) = h.get("/v1/connections", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["name"], "pg-local");
    let (status, body) = h.post("/v1/tokens", token, json!({"subject": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "permission_denied");

    // Anyone can check it against the published keys.
    let (_, jwks) = h.get("/.well-known/jwks.json", "").await;
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == json!(header.kid)).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["airlock"]);
    validation.set_issuer(&[&h.base]);
    let data =
        jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
    assert_eq!(data.claims["sub"], "ci-job-42");
    assert_eq!(data.claims["groups"], json!(["agents"]));
    let (_, discovery) = h.get("/.well-known/openid-configuration", "").await;
    assert_eq!(discovery["issuer"], json!(h.base));

    // The mint is audited, without the token.
    let (_, events) = h.get("/v1/events?from_seq=0", &h.admin_token).await;
    let issued = events["events"].as_array().unwrap().iter().find(|e| e["type"] == "token_issued").unwrap();
    assert_eq!(issued["data"]["subject"], "ci-job-42");
    assert!(!events.to_string().contains(token));

    let (status, _) = h.post("/v1/tokens", &h.admin_token, json!({"subject": "x", "ttl_seconds": 999999})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn tenants_cannot_see_or_change_each_other(backend: Backend) {
    let h = Harness::start(backend).await;
    let a_conn = h.register_example_connection(&h.admin_token).await;
    let a_id = a_conn["id"].as_str().unwrap().to_owned();
    let (status, _) = h.put_policy(&h.admin_token, EXAMPLE_POLICY).await;
    assert_eq!(status, StatusCode::OK);
    let (_, a_tenants) = h.get("/v1/tenants", &h.admin_token).await;
    let a_tenant = a_tenants[0]["id"].as_str().unwrap().to_owned();

    let (b_tenant, b) = h.create_tenant("tenant-b").await;

    // List: only its own.
    let (status, list) = h.get("/v1/connections", &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    // Read, change, remove another tenant's connection by id or name: 404.
    for path in [format!("/v1/connections/{a_id}"), "/v1/connections/pg-local".to_owned()] {
        let (status, _) = h.get(&path, &b).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}");
        let body: Value = serde_json::from_str(harness::EXAMPLE_CONNECTION).unwrap();
        let (status, _) = h.call(Method::PUT, &path, &b, Some(body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "PUT {path}");
        let (status, _) = h.call(Method::DELETE, &path, &b, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "DELETE {path}");
    }
    let (status, _) = h.get(&format!("/v1/tenants/{a_tenant}"), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, tenants) = h.get("/v1/tenants", &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tenants.as_array().unwrap().len(), 1);
    assert_eq!(tenants[0]["id"], json!(b_tenant));
    // Policies and events are the tenant's own.
    let (status, _) = h.get("/v1/policy", &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.put_policy(&b, "version: 1\n").await;
    assert_eq!(status, StatusCode::OK);
    let (_, a_policy) = h.get("/v1/policy", &h.admin_token).await;
    assert_eq!(a_policy["source"], json!(EXAMPLE_POLICY));
    let (_, b_events) = h.get("/v1/events?from_seq=0", &b).await;
    assert!(!b_events.to_string().contains(&a_id));
    assert!(!b_events.to_string().contains("pg-local"));
    assert_eq!(b_events["events"][0]["seq"], 1);
    // A tenant admin cannot create tenants.
    let (status, _) = h.post("/v1/tenants", &b, json!({"name": "tenant-c"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // And A still has its connection.
    let (status, _) = h.get(&format!("/v1/connections/{a_id}"), &h.admin_token).await;
    assert_eq!(status, StatusCode::OK);
}

async fn oidc_tokens_from_a_trusted_issuer_authenticate(backend: Backend) {
    let h = Harness::start(backend).await;
    let idp = airlock_testkit::oidc::OidcIssuer::start().await.unwrap();
    let mut claims = idp.claims("ignored");
    claims["repository"] = json!("acme/deploy");
    claims["groups"] = json!(["agents"]);
    let token = idp.token(&claims);
    let (status, _) = h.get("/v1/connections", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an untrusted issuer's token was accepted");

    let (status, issuer) = h
        .post(
            "/v1/issuers",
            &h.admin_token,
            json!({"name": "ci", "issuer_url": idp.url(), "audience": airlock_testkit::oidc::AUDIENCE,
                   "subject_claim": "repository", "principal_kind": "workload"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issuer}");
    let (status, _) = h.get("/v1/connections", &token).await;
    assert_eq!(status, StatusCode::OK);
    // The same issuer and audience cannot resolve to two tenants.
    let (_, b) = h.create_tenant("tenant-b").await;
    let (status, _) = h
        .post(
            "/v1/issuers",
            &b,
            json!({"name": "ci", "issuer_url": idp.url(), "audience": airlock_testkit::oidc::AUDIENCE}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Removing the issuer ends its tokens' access.
    let (status, _) = h.call(Method::DELETE, "/v1/issuers/ci", &h.admin_token, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.get("/v1/connections", &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn admins_grant_and_revoke_access(backend: Backend) {
    let h = Harness::start(backend).await;
    h.register_example_connection(&h.admin_token).await;
    let grant = json!({"subject": "ci-job-42", "connection": "pg-local", "role": "readonly", "ttl_seconds": 900, "reason": "deploy"});
    let (status, created) = h.post("/v1/grants", &h.admin_token, grant.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["state"], "active");
    assert_eq!(created["connection"], "pg-local");
    assert_eq!(created["expires_at_unix"].as_i64().unwrap() - created["starts_at_unix"].as_i64().unwrap(), 900);
    let id = created["id"].as_str().unwrap().to_owned();

    let mut bad = grant.clone();
    bad["role"] = json!("superuser");
    let (status, body) = h.post("/v1/grants", &h.admin_token, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "role");
    let mut bad = grant.clone();
    bad["ttl_seconds"] = json!(0);
    let (status, _) = h.post("/v1/grants", &h.admin_token, bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, list) = h.get("/v1/grants", &h.admin_token).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Another tenant can neither see nor revoke it.
    let (_, b) = h.create_tenant("tenant-b").await;
    let (status, _) = h.get(&format!("/v1/grants/{id}"), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.post(&format!("/v1/grants/{id}/revoke"), &b, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, revoked) = h.post(&format!("/v1/grants/{id}/revoke"), &h.admin_token, json!({"reason": "done"})).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    let (_, list) = h.get("/v1/grants", &h.admin_token).await;
    assert_eq!(list[0]["state"], "revoked");
    let (status, body) = h.post(&format!("/v1/grants/{id}/revoke"), &h.admin_token, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "a revoked grant cannot be revoked again");
    assert!(body["message"].as_str().unwrap().ends_with("is already revoked"), "{body}");
    let (_, events) = h.get("/v1/events?from_seq=0", &h.admin_token).await;
    let types: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.ends_with(&["grant_activated", "grant_revoked"]), "{types:?}");
}
