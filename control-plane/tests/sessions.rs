//! `GET /v1/sessions` on both databases: sessions as the log records them
//! (opened and closed by workers), newest first, filtered, paged by cursor,
//! each tenant's own; a session with nothing recorded has an empty timeline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod harness;

use airlock_core::event::SessionInfo;
use airlock_core::{ConnectionId, Event, GrantId, SessionId, TenantId};
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

on_both_backends!(sessions_are_listed_filtered_and_paged, a_session_without_a_recording_has_an_empty_timeline);

/// Opens a session the way a worker records it; closes it with `reason` when given.
async fn session(
    h: &Harness,
    tenant: TenantId,
    connection: ConnectionId,
    subject: &str,
    reason: Option<&str>,
) -> String {
    let id = SessionId::new();
    let cp = &h.running.control_plane;
    let info = SessionInfo {
        id,
        grant_id: GrantId::new(),
        connection_id: connection,
        subject: subject.into(),
        issuer: "https://issuer.test".into(),
        client_addr: "127.0.0.1:5555".into(),
        worker_id: "worker-1".into(),
        target_role: "airlock_x".into(),
    };
    cp.record_session(tenant, Event::SessionOpened { session: info }).await.unwrap();
    if let Some(reason) = reason {
        let closed = Event::SessionClosed {
            session_id: id,
            duration_ms: 1234,
            bytes_from_client: 10,
            bytes_to_client: 20,
            reason: reason.into(),
        };
        cp.record_session(tenant, closed).await.unwrap();
    }
    id.to_string()
}

async fn ids(h: &Harness, query: &str) -> Vec<String> {
    let (status, page) = h.get(&format!("/v1/sessions{query}"), &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    page["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

async fn tenant_and_connection(h: &Harness) -> (TenantId, ConnectionId) {
    let connection = h.register_example_connection(&h.admin_token).await;
    let (_, tenants) = h.get("/v1/tenants", &h.admin_token).await;
    (tenants[0]["id"].as_str().unwrap().parse().unwrap(), connection["id"].as_str().unwrap().parse().unwrap())
}

async fn sessions_are_listed_filtered_and_paged(backend: Backend) {
    let h = Harness::start(backend).await;
    let (tenant, connection) = tenant_and_connection(&h).await;
    let first = session(&h, tenant, connection, "ci-job-1", Some("client closed the session")).await;
    let second = session(&h, tenant, connection, "ci-job-2", Some("access ended: grant revoked by alice")).await;
    let third = session(&h, tenant, connection, "ci-job-1", Some("the client went away")).await;
    let open = session(&h, tenant, connection, "ci-job-3", None).await;

    // Newest first (same-millisecond sessions by id, which grows with time).
    assert_eq!(ids(&h, "").await, [open.clone(), third.clone(), second.clone(), first.clone()]);
    let (_, page) = h.get("/v1/sessions?principal=ci-job-2", &h.admin_token).await;
    let s = &page["sessions"][0];
    assert_eq!(s["connection"], "pg-local");
    assert_eq!(s["connection_id"], json!(connection.to_string()));
    assert_eq!(s["outcome"], "terminated");
    assert_eq!(s["close_reason"], "access ended: grant revoked by alice");
    assert_eq!(
        (&s["duration_ms"], &s["bytes_from_client"], &s["bytes_to_client"]),
        (&json!(1234), &json!(10), &json!(20))
    );
    assert_eq!(
        (&s["client_addr"], &s["worker_id"], &s["target_role"]),
        (&json!("127.0.0.1:5555"), &json!("worker-1"), &json!("airlock_x"))
    );
    assert!(
        s["opened_at"].is_string()
            && s["closed_at"].is_string()
            && s["grant_id"].is_string()
            && s["issuer"].is_string()
    );

    assert_eq!(ids(&h, "?principal=ci-job-1").await, [third.clone(), first.clone()]);
    assert_eq!(ids(&h, "?outcome=completed").await, [third.clone(), first.clone()]);
    assert_eq!(ids(&h, "?outcome=terminated").await, std::slice::from_ref(&second));
    assert_eq!(ids(&h, "?outcome=open").await, std::slice::from_ref(&open));
    let (_, page) = h.get("/v1/sessions?outcome=open", &h.admin_token).await;
    assert_eq!((&page["sessions"][0]["closed_at"], &page["sessions"][0]["close_reason"]), (&Value::Null, &Value::Null));
    assert_eq!(ids(&h, "?connection=pg-local").await.len(), 4);
    assert_eq!(ids(&h, &format!("?connection={connection}")).await.len(), 4);
    assert!(ids(&h, "?connection=other").await.is_empty());
    assert!(ids(&h, "?since=2999-01-01T00:00:00Z").await.is_empty());
    assert_eq!(ids(&h, "?since=2000-01-01T00:00:00Z&principal=ci-job-3").await, std::slice::from_ref(&open));

    // Paged by cursor: each once, in order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = h.get(&format!("/v1/sessions?limit=1{cursor}"), &h.admin_token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(page["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, [open.clone(), third, second, first]);

    // A session closed later moves to its outcome.
    let closed = Event::SessionClosed {
        session_id: open.parse().unwrap(),
        duration_ms: 5,
        bytes_from_client: 1,
        bytes_to_client: 2,
        reason: "the gateway is shutting down".into(),
    };
    h.running.control_plane.record_session(tenant, closed).await.unwrap();
    assert_eq!(ids(&h, "?outcome=terminated").await.len(), 2);

    // Another tenant's list is its own.
    let (_, other) = h.create_tenant("tenant-b").await;
    let (status, page) = h.get("/v1/sessions", &other).await;
    assert_eq!((status, page), (StatusCode::OK, json!({"sessions": [], "next": null})));
    let (status, _) = h.get(&format!("/v1/sessions/{open}"), &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn a_session_without_a_recording_has_an_empty_timeline(backend: Backend) {
    let h = Harness::start(backend).await;
    let (tenant, connection) = tenant_and_connection(&h).await;
    let id = session(&h, tenant, connection, "ci-job-1", None).await;
    let (status, detail) = h.get(&format!("/v1/sessions/{id}"), &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["recording"], json!({"stored": false, "signed": false}));
    assert_eq!(detail["outcome"], "open");
    let (status, timeline) = h.get(&format!("/v1/sessions/{id}/timeline"), &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    assert_eq!(timeline, json!({"entries": [], "next": 0, "live": true}));
    for path in [format!("/v1/sessions/{}", SessionId::new()), "/v1/sessions/not-an-id".to_owned()] {
        let (status, body) = h.get(&path, &h.admin_token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"], "not_found");
    }
    // Without the recorder's key, verification says so rather than guessing.
    let (status, body) = h.get(&format!("/v1/sessions/{id}/verify"), &h.admin_token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().unwrap().contains("public_key_file"), "{body}");
}
