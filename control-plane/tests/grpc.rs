//! The gRPC API runs the same handlers as REST: what one writes, the other reads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod harness;

use airlock_proto::v1;
use futures::StreamExt;
use harness::{Backend, Harness};
use tonic::Code;
use tonic::transport::Channel;

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn channel(h: &Harness) -> Channel {
    Channel::from_shared(format!("http://{}", h.running.grpc_addr)).unwrap().connect().await.unwrap()
}

#[tokio::test]
async fn grpc_and_rest_share_one_state() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut connections = v1::connection_service_client::ConnectionServiceClient::new(channel(&h).await);
    let input = v1::ConnectionInput {
        name: "pg-grpc".into(),
        kind: "postgres".into(),
        address: "127.0.0.1:5432".into(),
        database: "app".into(),
        admin_credential: Some(v1::Credential { user: "postgres".into(), password: "pw-not-echoed".into() }),
        roles: [("readonly".to_owned(), "app_readonly".to_owned())].into(),
        ..Default::default()
    };
    let created = connections.register_connection(authed(&h.admin_token, input.clone())).await.unwrap().into_inner();
    assert_eq!(created.name, "pg-grpc");
    assert!(created.has_secret);
    assert!(!format!("{created:?}").contains("pw-not-echoed"));

    let (status, rest) = h.get("/v1/connections/pg-grpc", &h.admin_token).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(rest["id"], serde_json::json!(created.id));

    let dup = connections.register_connection(authed(&h.admin_token, input.clone())).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let anonymous = connections.list_connections(tonic::Request::new(v1::ListConnectionsRequest {})).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let mut policy = v1::policy_service_client::PolicyServiceClient::new(channel(&h).await);
    let bad = policy
        .apply_policy(authed(&h.admin_token, v1::ApplyPolicyRequest { source: "version: 1\naccess: [{}]\n".into() }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("access[0]"), "{}", bad.message());
}

#[tokio::test]
async fn subscribe_catches_up_then_follows_new_events() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut events = v1::event_service_client::EventServiceClient::new(channel(&h).await);
    let mut stream =
        events.subscribe(authed(&h.admin_token, v1::SubscribeRequest { from_seq: 2 })).await.unwrap().into_inner();
    // The three bootstrap events exist already: from seq 2, we get 2 and 3.
    for expected in [2, 3] {
        let record = stream.next().await.unwrap().unwrap();
        assert_eq!(record.seq, expected);
    }
    // Then the next append arrives as it happens.
    h.register_example_connection(&h.admin_token).await;
    let record =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(record.seq, 4);
    let event = airlock_proto::convert::decode_event(&record.payload).unwrap();
    assert_eq!(event.type_name(), "connection_registered");
}

#[tokio::test]
async fn the_worker_service_needs_the_worker_token() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut worker = v1::worker_service_client::WorkerServiceClient::new(channel(&h).await);
    let refused = worker.snapshot(authed(&h.admin_token, v1::SnapshotRequest {})).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let snapshot = worker.snapshot(authed("worker-secret", v1::SnapshotRequest {})).await.unwrap().into_inner();
    assert_eq!(snapshot.tenants.len(), 1);
    let state = airlock_core::snapshot::decode(&snapshot.tenants[0].state).unwrap();
    assert_eq!(state.name, "default");
    assert_eq!(state.seq, 3);
}

#[tokio::test]
async fn workers_read_credentials_and_record_sessions_with_the_worker_token() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut conn: serde_json::Value = serde_json::from_str(harness::EXAMPLE_CONNECTION).unwrap();
    conn["admin_credential"]["password"] = serde_json::json!("pw-for-the-gateway");
    let (_, created) = h.post("/v1/connections", &h.admin_token, conn).await;
    let (_, tenants) = h.get("/v1/tenants", &h.admin_token).await;
    let request = v1::ConnectionCredentialRequest {
        tenant_id: tenants[0]["id"].as_str().unwrap().into(),
        connection_id: created["id"].as_str().unwrap().into(),
    };
    let mut worker = v1::worker_service_client::WorkerServiceClient::new(channel(&h).await);
    let refused = worker.connection_credential(authed(&h.admin_token, request.clone())).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let credential = worker.connection_credential(authed("worker-secret", request.clone())).await.unwrap().into_inner();
    assert_eq!((credential.user.as_str(), credential.password.as_str()), ("postgres", "pw-for-the-gateway"));

    let opened = v1::SessionOpened {
        session_id: airlock_core::SessionId::new().to_string(),
        grant_id: airlock_core::GrantId::new().to_string(),
        connection_id: request.connection_id.clone(),
        subject: "ci".into(),
        issuer: "i".into(),
        client_addr: "127.0.0.1:1".into(),
        worker_id: "w1".into(),
        target_role: "airlock_x".into(),
    };
    let record = |kind: v1::record_session_request::Kind| {
        let mut worker = worker.clone();
        let tenant_id = request.tenant_id.clone();
        async move {
            worker
                .record_session(authed("worker-secret", v1::RecordSessionRequest { tenant_id, kind: Some(kind) }))
                .await
        }
    };
    let session_id = opened.session_id.clone();
    let reply = record(v1::record_session_request::Kind::Opened(opened.clone())).await.unwrap().into_inner();
    let (_, events) = h.get(&format!("/v1/events?from_seq={}", reply.seq), &h.admin_token).await;
    assert_eq!(events["events"][0]["type"], "session_opened");
    assert_eq!(events["events"][0]["data"]["session"]["client_addr"], "127.0.0.1:1");

    // A worker that lost the answer sends again: the log has it once, and says so.
    let again = record(v1::record_session_request::Kind::Opened(opened)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let closed = v1::SessionClosed {
        session_id,
        duration_ms: 5,
        bytes_from_client: 10,
        bytes_to_client: 20,
        reason: "client closed the session".into(),
    };
    let closed_at = record(v1::record_session_request::Kind::Closed(closed.clone())).await.unwrap().into_inner().seq;
    let again = record(v1::record_session_request::Kind::Closed(closed)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let (_, events) = h.get(&format!("/v1/events?from_seq={}", reply.seq), &h.admin_token).await;
    let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session_opened", "session_closed"]);
    assert_eq!(events["events"][1]["seq"], closed_at);

    // A close for a session the log never opened is refused too.
    let stray = v1::SessionClosed {
        session_id: airlock_core::SessionId::new().to_string(),
        reason: "client closed the session".into(),
        ..Default::default()
    };
    assert_eq!(record(v1::record_session_request::Kind::Closed(stray)).await.unwrap_err().code(), Code::AlreadyExists);
}

#[tokio::test]
async fn access_is_requested_and_reviewed_over_grpc() {
    let h = Harness::start(Backend::Sqlite).await;
    h.register_example_connection(&h.admin_token).await;
    let (status, body) = h.put_policy(&h.admin_token, harness::EXAMPLE_POLICY).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let agent = h.token(&h.admin_token, "agent-7", &["agents"]).await;
    let dba = h.token(&h.admin_token, "alice", &["dba"]).await;

    let mut access = v1::access_service_client::AccessServiceClient::new(channel(&h).await);
    let ask = |role: &str| v1::RequestAccessRequest {
        connection: "pg-local".into(),
        role: role.into(),
        ttl_seconds: 600,
        reason: "grpc".into(),
    };
    let read = access.request_access(authed(&agent, ask("readonly"))).await.unwrap().into_inner();
    assert_eq!(read.state, "active");
    assert_eq!(read.grant.unwrap().grant_id, read.id);
    let refused = access
        .request_access(authed(&agent, v1::RequestAccessRequest { ttl_seconds: 7200, ..ask("readonly") }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("rule agents-read allows at most 3600s"), "{}", refused.message());

    let write = access.request_access(authed(&agent, ask("readwrite"))).await.unwrap().into_inner();
    assert_eq!(write.state, "pending");
    let mut reviews = v1::review_service_client::ReviewServiceClient::new(channel(&h).await);
    let mine = reviews
        .list_reviews(authed(&dba, v1::ListReviewsRequest { pending_for_me: true, state: String::new() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.reviews.len(), 1);
    assert_eq!(mine.reviews[0].id, write.id);
    let own = reviews
        .decide_review(authed(
            &agent,
            v1::DecideReviewRequest { id: write.id.clone(), approve: true, ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);
    let decided = reviews
        .decide_review(authed(
            &dba,
            v1::DecideReviewRequest { id: write.id.clone(), approve: true, comment: "ok".into(), scope: String::new() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(decided.state, "approved");
    assert_eq!(decided.decisions[0].by, "alice");
    // REST sees the same.
    let (_, rest) = h.get(&format!("/v1/access-requests/{}", write.id), &agent).await;
    assert_eq!(rest["state"], "active");
}

/// A stop is not held by clients waiting for new events: a subscription
/// ends and a long poll answers with what there is, at once, instead of
/// when the poll's wait runs out (30 s here) or never (a subscription).
#[tokio::test]
async fn a_stop_ends_subscriptions_and_long_polls() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut events = v1::event_service_client::EventServiceClient::new(channel(&h).await);
    // The three bootstrap events exist: from seq 4 there is nothing yet.
    let mut stream =
        events.subscribe(authed(&h.admin_token, v1::SubscribeRequest { from_seq: 4 })).await.unwrap().into_inner();
    let poll = h.client.get(format!("{}/v1/events?from_seq=4&wait_ms=30000", h.base)).bearer_auth(&h.admin_token);
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let answered = match poll.send().await {
            Ok(r) => Some((r.status(), r.json::<serde_json::Value>().await.unwrap_or_default())),
            // Only if the poll reached the server after its stop began.
            Err(_) => None,
        };
        (answered, started.elapsed())
    });
    // Time for the poll to reach the server (nothing to wait on that says it has).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    assert!(h.stop(std::time::Duration::from_secs(10)).await, "the stop waited for its clients");
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await.unwrap();
    assert!(end.as_ref().is_none_or(Result::is_err), "{end:?}");
    let (answered, took) = poll.await.unwrap();
    assert!(took < std::time::Duration::from_secs(10), "the long poll answered after {took:?}");
    if let Some((status, page)) = answered {
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_eq!(page["events"], serde_json::json!([]), "{page}");
    }
}
