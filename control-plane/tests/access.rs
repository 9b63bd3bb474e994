//! Access requests, reviews and grants over the REST API, on both backends:
//! policy decides, approvers review with a quorum, requesters cannot approve
//! themselves, and the clock ends requests and grants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod harness;

use std::sync::Arc;

use airlock_core::clock::ManualClock;
use harness::{Backend, Harness};
use reqwest::StatusCode;
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
    policy_grants_at_once_or_refuses_naming_the_rule,
    a_quorum_of_two_distinct_approvers_activates_the_grant,
    a_denial_ends_the_request_and_nothing_more_can_be_decided,
    unreviewed_requests_and_grants_expire_by_the_clock,
    holders_and_admins_revoke_and_others_cannot_see_the_grant,
    webhooks_registered_over_the_api_receive_signed_review_events,
);

const POLICY: &str = r#"
version: 1
access:
  - name: agents-read
    principals: { groups: [agents] }
    connections: [pg-local]
    roles: [readonly]
    max_ttl: 1h
    approval: none
  - name: agents-write
    principals: { groups: [agents] }
    connections: [pg-local]
    roles: [readwrite]
    max_ttl: 30m
    reason_required: true
    approval: { approvers: { groups: [dba] }, quorum: 2, timeout: 10m }
"#;

struct Setup {
    h: Harness,
    clock: ManualClock,
    agent: String,
    alice: String,
    bob: String,
    /// A DBA who is also the requester in some tests.
    dba_agent: String,
    outsider: String,
}

async fn setup(backend: Backend) -> Setup {
    let clock = ManualClock::new();
    let h = Harness::start_with_clock(backend, Arc::new(clock.clone())).await;
    h.register_example_connection(&h.admin_token).await;
    let (status, body) = h.put_policy(&h.admin_token, POLICY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = h.admin_token.clone();
    Setup {
        agent: h.token(&admin, "agent-7", &["agents"]).await,
        alice: h.token(&admin, "alice", &["dba"]).await,
        bob: h.token(&admin, "bob", &["dba"]).await,
        dba_agent: h.token(&admin, "carol", &["agents", "dba"]).await,
        outsider: h.token(&admin, "mallory", &["dev"]).await,
        h,
        clock,
    }
}

async fn request(s: &Setup, token: &str, role: &str, ttl: u64, reason: &str) -> (StatusCode, Value) {
    s.h.post(
        "/v1/access-requests",
        token,
        json!({"connection": "pg-local", "role": role, "ttl_seconds": ttl, "reason": reason}),
    )
    .await
}

async fn decide(s: &Setup, token: &str, id: &str, approve: bool) -> (StatusCode, Value) {
    s.h.post(&format!("/v1/reviews/{id}/decision"), token, json!({"approve": approve, "comment": "checked"})).await
}

async fn event_types(s: &Setup) -> Vec<String> {
    let (_, page) = s.h.get("/v1/events?from_seq=0", &s.h.admin_token).await;
    page["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn policy_grants_at_once_or_refuses_naming_the_rule(backend: Backend) {
    let s = setup(backend).await;
    let (status, body) = request(&s, &s.agent, "readonly", 900, "").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "active");
    assert_eq!(body["rule"], "agents-read");
    assert!(body["review"].is_null());
    assert_eq!(body["grant"]["id"], body["id"], "the grant carries the request's id");
    assert_eq!(body["grant"]["subject"], "agent-7");
    assert_eq!(
        body["grant"]["expires_at_unix"].as_i64().unwrap() - body["grant"]["starts_at_unix"].as_i64().unwrap(),
        900
    );

    let (status, body) = request(&s, &s.agent, "readonly", 7200, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["rule"], "agents-read");
    assert!(body["message"].as_str().unwrap().contains("at most 3600s"), "{body}");

    let (status, body) = request(&s, &s.agent, "readwrite", 600, " ").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["rule"], "agents-write");
    assert!(body["message"].as_str().unwrap().contains("requires a reason"), "{body}");

    let (status, body) = request(&s, &s.outsider, "readonly", 600, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["message"], "no access rule lets mallory hold role readonly on pg-local");

    let (status, body) = request(&s, &s.agent, "superuser", 600, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "role");

    let (status, _) =
        s.h.post("/v1/access-requests", &s.agent, json!({"connection": "nope", "role": "readonly", "ttl_seconds": 60}))
            .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let types = event_types(&s).await;
    let tail: Vec<&str> = types.iter().rev().take(2).rev().map(String::as_str).collect();
    assert_eq!(tail, ["access_requested", "grant_activated"], "refusals append nothing");
}

async fn a_quorum_of_two_distinct_approvers_activates_the_grant(backend: Backend) {
    let s = setup(backend).await;
    let (status, body) = request(&s, &s.dba_agent, "readwrite", 900, "migrate the orders table").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(body["review"]["id"], body["id"], "the review has the request's id");
    assert_eq!(body["review"]["quorum"], 2);
    let id = body["id"].as_str().unwrap().to_owned();

    // The requester is a DBA too, and still cannot approve their own request.
    let (status, body) = decide(&s, &s.dba_agent, &id, true).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["message"], "carol requested this and cannot review their own request");

    let (status, body) = decide(&s, &s.outsider, &id, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an outsider cannot even see it: {body}");

    let (status, pending) = s.h.get("/v1/reviews?pending_for_me=true", &s.alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["id"], id.as_str());
    let (_, pending) = s.h.get("/v1/reviews?pending_for_me=true", &s.dba_agent).await;
    assert_eq!(pending.as_array().unwrap().len(), 0, "not pending for the requester");

    let (status, body) = decide(&s, &s.alice, &id, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(body["approvals"], 1);

    let (status, body) = decide(&s, &s.alice, &id, true).await;
    assert_eq!(status, StatusCode::CONFLICT, "the same approver twice: {body}");
    assert_eq!(body["message"], "alice has already decided this review");

    let (status, body) = decide(&s, &s.bob, &id, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    let decided: Vec<(&str, &str)> = body["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["by"].as_str().unwrap(), d["comment"].as_str().unwrap()))
        .collect();
    assert_eq!(decided, [("alice", "checked"), ("bob", "checked")]);

    let (status, request) = s.h.get(&format!("/v1/access-requests/{id}"), &s.dba_agent).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(request["state"], "active");
    assert_eq!(request["grant"]["granted_by"], "alice, bob");
    assert_eq!(request["grant"]["role"], "readwrite");

    let types = event_types(&s).await;
    let tail: Vec<&str> = types.iter().rev().take(5).rev().map(String::as_str).collect();
    assert_eq!(tail, ["access_requested", "review_decided", "review_decided", "review_resolved", "grant_activated"]);
}

async fn a_denial_ends_the_request_and_nothing_more_can_be_decided(backend: Backend) {
    let s = setup(backend).await;
    let (_, body) = request(&s, &s.agent, "readwrite", 900, "hotfix").await;
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = decide(&s, &s.alice, &id, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "denied");
    let (status, body) = decide(&s, &s.bob, &id, true).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, request) = s.h.get(&format!("/v1/access-requests/{id}"), &s.agent).await;
    assert_eq!(request["state"], "denied");
    assert!(request["grant"].is_null());
}

async fn unreviewed_requests_and_grants_expire_by_the_clock(backend: Backend) {
    let s = setup(backend).await;
    let cp = s.h.running.control_plane.clone();
    let (_, pending) = request(&s, &s.agent, "readwrite", 900, "backfill").await;
    let pending_id = pending["id"].as_str().unwrap().to_owned();
    let (_, active) = request(&s, &s.agent, "readonly", 1200, "").await;
    let active_id = active["id"].as_str().unwrap().to_owned();

    // The review times out after 10 minutes; the readonly grant lasts 20.
    s.clock.advance(601);
    cp.expire_due().await.unwrap();
    let (_, request) = s.h.get(&format!("/v1/access-requests/{pending_id}"), &s.agent).await;
    assert_eq!(request["state"], "expired");
    assert_eq!(request["review"]["state"], "expired");
    let (status, body) = decide(&s, &s.alice, &pending_id, true).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, grant) = s.h.get(&format!("/v1/grants/{active_id}"), &s.agent).await;
    assert_eq!(grant["state"], "active");

    s.clock.advance(600);
    // The background expirer may get there first; either way it is recorded once.
    cp.expire_due().await.unwrap();
    assert_eq!(cp.expire_due().await.unwrap(), 0, "an expiry is recorded once");
    let (_, grant) = s.h.get(&format!("/v1/grants/{active_id}"), &s.agent).await;
    assert_eq!(grant["state"], "expired");
    let (_, request) = s.h.get(&format!("/v1/access-requests/{active_id}"), &s.agent).await;
    assert_eq!(request["state"], "grant_expired");

    let types = event_types(&s).await;
    assert_eq!(types.iter().filter(|t| *t == "grant_expired").count(), 1);
    assert_eq!(types.iter().filter(|t| *t == "review_resolved").count(), 1);
}

async fn holders_and_admins_revoke_and_others_cannot_see_the_grant(backend: Backend) {
    let s = setup(backend).await;
    let (_, first) = request(&s, &s.agent, "readonly", 900, "").await;
    let first = first["id"].as_str().unwrap().to_owned();
    let (_, second) = request(&s, &s.agent, "readonly", 900, "").await;
    let second = second["id"].as_str().unwrap().to_owned();

    let (status, _) = s.h.get(&format!("/v1/grants/{first}"), &s.outsider).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.h.post(&format!("/v1/grants/{first}/revoke"), &s.outsider, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, mine) = s.h.get("/v1/grants", &s.agent).await;
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let (_, theirs) = s.h.get("/v1/grants", &s.outsider).await;
    assert_eq!(theirs.as_array().unwrap().len(), 0);

    let (status, body) = s.h.post(&format!("/v1/grants/{first}/revoke"), &s.agent, json!({"reason": "done"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
    assert_eq!(body["revoked_by"], "agent-7");
    let (status, body) = s.h.post(&format!("/v1/grants/{first}/revoke"), &s.agent, json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, body) = s.h.post(&format!("/v1/grants/{second}/revoke"), &s.h.admin_token, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, request) = s.h.get(&format!("/v1/access-requests/{second}"), &s.agent).await;
    assert_eq!(request["state"], "revoked");
}

/// A webhook receiver that checks the Standard Webhooks signature itself (with
/// its own HMAC, not Airlock's) and keeps each message once by its id.
#[derive(Clone, Default)]
struct Receiver {
    secret: Arc<std::sync::Mutex<Vec<u8>>>,
    seen: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    bad: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start(self) -> String {
        use axum::http::{HeaderMap, StatusCode as Status};
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(r): axum::extract::State<Receiver>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        use base64::Engine;
                        use hmac::Mac;
                        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                        let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
                        let secret = r.secret.lock().unwrap().clone();
                        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
                        mac.update(format!("{id}.{ts}.").as_bytes());
                        mac.update(&body);
                        let expected = format!(
                            "v1,{}",
                            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
                        );
                        if !sig.split(' ').any(|s| s == expected) {
                            r.bad.lock().unwrap().push(id);
                            return Status::UNAUTHORIZED;
                        }
                        let mut seen = r.seen.lock().unwrap();
                        if !seen.iter().any(|(known, _)| *known == id) {
                            seen.push((id, serde_json::from_slice(&body).unwrap()));
                        }
                        Status::NO_CONTENT
                    },
                ),
            )
            .with_state(self);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }
}

async fn webhooks_registered_over_the_api_receive_signed_review_events(backend: Backend) {
    let s = setup(backend).await;
    let receiver = Receiver::default();
    let url = receiver.clone().start().await;

    let (status, body) = s.h.post("/v1/webhooks", &s.agent, json!({"url": url})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only admins add webhooks: {body}");
    let (status, body) = s.h.post("/v1/webhooks", &s.h.admin_token, json!({"url": "http://hooks.example.com/x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "plain http off loopback: {body}");
    let (status, body) =
        s.h.post(
            "/v1/webhooks",
            &s.h.admin_token,
            json!({"url": url, "event_types": ["access_requested", "review_resolved"], "description": "pager"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{body}");
    {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
        *receiver.secret.lock().unwrap() = raw;
    }
    let (_, listed) = s.h.get("/v1/webhooks", &s.h.admin_token).await;
    assert!(!listed.to_string().contains("whsec_"), "the secret is shown once: {listed}");

    let (_, request) = request(&s, &s.agent, "readwrite", 900, "rotate keys").await;
    let id = request["id"].as_str().unwrap().to_owned();
    decide(&s, &s.alice, &id, false).await;
    airlock_testkit::eventually(std::time::Duration::from_secs(10), "both events at the receiver", || async {
        receiver.seen.lock().unwrap().len() == 2
    })
    .await;
    // Deliveries run concurrently: a receiver orders by the event's seq, not by arrival.
    let mut seen = receiver.seen.lock().unwrap().clone();
    seen.sort_by_key(|(_, body)| body["data"]["seq"].as_u64());
    assert_eq!(seen[0].1["type"], "access_requested");
    assert_eq!(seen[0].1["data"]["event"]["request"]["id"], id.as_str());
    assert_eq!(seen[0].1["data"]["event"]["request"]["reason"], "rotate keys");
    assert_eq!(seen[1].1["type"], "review_resolved");
    assert_eq!(seen[1].1["data"]["event"]["outcome"], "denied");
    assert!(receiver.bad.lock().unwrap().is_empty(), "every delivery was signed with the secret given");

    // Each delivery and its attempts can be read back, newest first.
    airlock_testkit::eventually(std::time::Duration::from_secs(10), "both deliveries recorded", || async {
        let (_, list) = s.h.get("/v1/deliveries", &s.h.admin_token).await;
        list.as_array().is_some_and(|d| d.iter().filter(|d| d["state"] == "delivered").count() == 2)
    })
    .await;
    let (_, deliveries) = s.h.get("/v1/deliveries", &s.h.admin_token).await;
    let first = &deliveries[1];
    assert_eq!(first["kind"], "webhook");
    assert_eq!(first["msg_id"], seen[0].0.as_str());
    assert_eq!(first["attempts"][0]["status"], 204);
    let (status, _) = s.h.get("/v1/deliveries", &s.agent).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
