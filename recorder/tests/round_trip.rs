//! A session through the gRPC service, onto a local directory and onto a real
//! S3-compatible server: open, frames, end → chunks and a signed manifest, read
//! back a page at a time in order, verified against the recorder's key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1::{Frame, ReadSessionRequest};
use airlock_recorder::store::SessionRef;
use airlock_recorder::{Config, Error, Signature, Store};
use bytes::Bytes;
use support::{Recorder, Session, Stream, read_all, send};

async fn round_trip(config: Config) {
    // Small chunks, so the session spans several.
    let recorder = Recorder::start(Config { chunk_bytes: 512, ..config }).await;
    let mut client = recorder.client().await;
    let session = Session::new();

    let mut stream = Stream::open(&mut client).await;
    stream.send(session.open()).await;
    let ack = stream.next_ack(&session).await;
    assert_eq!((ack.durable_seq, ack.closed), (0, false), "a new session has nothing stored");
    stream.send_all(session.frames(1, 40)).await;
    stream.durable(&session, 40).await;
    stream.send(send(session.end_frame(41), false)).await;
    let ack = stream.durable(&session, 41).await;
    assert!(ack.closed, "the end's ack says the manifest is stored");

    let recordings = recorder.recordings();
    let signed = recordings.manifest(session.tenant, session.id).await.unwrap().expect("a manifest");
    let m = &signed.manifest;
    assert_eq!(m.key_id, recorder.started.key_id);
    assert_eq!(m.session.tenant_id, session.tenant.to_string());
    assert_eq!(m.session.principal_subject, "ci-job-42");
    assert_eq!(m.session.protocol, "postgres");
    assert_eq!(m.end.reason, "client closed");
    assert_eq!(m.last_seq, 41);
    assert!(m.chunks.len() >= 3, "{} chunks", m.chunks.len());
    for (i, c) in m.chunks.iter().enumerate() {
        assert_eq!(c.index, i as u64);
        assert_eq!(c.key, format!("tenants/{}/sessions/{}/chunks/{:010}", session.tenant, session.id, i));
        let first = if i == 0 { 1 } else { m.chunks[i - 1].last_seq + 1 };
        assert_eq!(c.first_seq, first, "chunk {i} continues the one before");
    }
    assert_eq!(m.final_hash, m.chunks.last().unwrap().hash);

    let expected: Vec<Frame> = (1..=40).map(|seq| session.frame(seq)).chain([session.end_frame(41)]).collect();
    assert_eq!(read_all(&recordings, &session, 7).await, expected, "paged reads give every frame once, in order");

    let page = recordings.read_frames(session.tenant, session.id, 20, 5).await.unwrap();
    assert_eq!(page.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [20, 21, 22, 23, 24]);
    assert_eq!((page.next_seq, page.more), (25, true));
    let past = recordings.read_frames(session.tenant, session.id, 42, 5).await.unwrap();
    assert!(past.frames.is_empty() && !past.more);

    let request = ReadSessionRequest {
        tenant_id: session.tenant.to_string(),
        session_id: session.id.to_string(),
        from_seq: 30,
        limit: 0,
    };
    let mut replay = client.read_session(request).await.unwrap().into_inner();
    let mut over_grpc = Vec::new();
    while let Some(frame) = replay.message().await.unwrap() {
        over_grpc.push(frame);
    }
    assert_eq!(over_grpc, expected[29..]);

    let report = recordings.verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap();
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.signature, Signature::Valid { key_id: recorder.started.key_id.clone() });
    assert_eq!(report.chunks, m.chunks.len() as u64);
    assert_eq!(report.last_seq, 41);
    assert_eq!(report.final_hash.as_deref(), Some(m.final_hash.as_str()));

    drop(stream);
    recorder.stop().await;
}

#[tokio::test]
async fn round_trip_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::local_config(dir.path());
    round_trip(config.clone()).await;
    // The embedded default: recordings and the generated key in the data directory.
    assert!(dir.path().join("signing-key.pem").is_file());
    assert!(config.local_dir().join("tenants").is_dir());
}

#[tokio::test]
async fn round_trip_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = support::s3_config(dir.path()) else { return };
    round_trip(config).await;
    assert!(!dir.path().join("recordings").exists(), "nothing is written to the local directory");
}

/// Objects are never replaced: a second writer of a chunk is refused.
async fn written_once(config: Config) {
    let store = Store::open(&config).unwrap();
    let s = SessionRef::new(TenantId::new(), SessionId::new());
    store.put_chunk(&s, 0, Bytes::from_static(b"first")).await.unwrap();
    let e = store.put_chunk(&s, 0, Bytes::from_static(b"second")).await.unwrap_err();
    assert!(matches!(&e, Error::Exists { key } if key.ends_with("/chunks/0000000000")), "{e}");
    assert_eq!(store.get_chunk(&s, 0).await.unwrap(), "first");
}

#[tokio::test]
async fn objects_are_written_once_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    written_once(support::local_config(dir.path())).await;
}

#[tokio::test]
async fn objects_are_written_once_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = support::s3_config(dir.path()) else { return };
    written_once(config).await;
}

#[tokio::test]
async fn health_checks_share_the_grpc_port() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(support::local_config(dir.path())).await;
    let body = reqwest::get(format!("http://{}/healthz", recorder.started.addr)).await.unwrap().text().await.unwrap();
    assert_eq!(body, "ok");
    recorder.stop().await;
}

#[tokio::test]
async fn reading_a_session_that_was_never_recorded_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(support::local_config(dir.path())).await;
    let session = Session::new();
    let e = recorder.recordings().read_frames(session.tenant, session.id, 1, 10).await.unwrap_err();
    assert!(matches!(e, airlock_recorder::Error::NotFound { .. }), "{e}");
    let request = ReadSessionRequest {
        tenant_id: session.tenant.to_string(),
        session_id: session.id.to_string(),
        from_seq: 1,
        limit: 0,
    };
    let status = recorder.client().await.read_session(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    recorder.stop().await;
}
