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
    let reply = worker
        .record_session(authed(
            "worker-secret",
            v1::RecordSessionRequest {
                tenant_id: request.tenant_id.clone(),
                kind: Some(v1::record_session_request::Kind::Opened(opened)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, events) = h.get(&format!("/v1/events?from_seq={}", reply.seq), &h.admin_token).await;
    assert_eq!(events["events"][0]["type"], "session_opened");
    assert_eq!(events["events"][0]["data"]["session"]["client_addr"], "127.0.0.1:1");
}
