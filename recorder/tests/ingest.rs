//! The Ingest stream as a worker sees it: acks only for stored frames, when the
//! size bound, the time bound or a flush stores them; duplicates absorbed;
//! gaps refused with the seq expected; several sessions on one stream; a
//! session reopened on another stream taken over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use airlock_proto::v1::recorder_service_client::RecorderServiceClient;
use airlock_proto::v1::{Frame, IngestRequest, frame::Body};
use airlock_recorder::Config;
use bytes::Bytes;
use support::{Recorder, Session, Stream, read_all, send};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn local(config: impl FnOnce(Config) -> Config) -> (tempfile::TempDir, Recorder) {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(config(support::local_config(dir.path()))).await;
    (dir, recorder)
}

#[tokio::test]
async fn duplicates_are_absorbed() {
    let (_dir, recorder) = local(|c| c).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.send_all(session.frames(1, 5)).await;
    stream.durable(&session, 5).await;
    // Resent: stored ones, then buffered ones, then new ones.
    stream.send_all((1..=3).map(|seq| send(session.frame(seq), false))).await;
    stream.send_all((6..=8).map(|seq| send(session.frame(seq), false))).await;
    stream.send_all(session.frames(4, 10)).await;
    stream.durable(&session, 10).await;
    let expected: Vec<Frame> = (1..=10).map(|seq| session.frame(seq)).collect();
    assert_eq!(read_all(&recorder.recordings(), &session, 100).await, expected);
    drop(stream);
    recorder.stop().await;
}

#[tokio::test]
async fn a_gap_ends_the_stream_naming_the_session_and_the_seq_expected() {
    let (_dir, recorder) = local(|c| c).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.send_all(session.frames(1, 3)).await;
    stream.durable(&session, 3).await;
    stream.send(send(session.frame(5), true)).await;
    let status = stream.failure().await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&session.id.to_string()), "{}", status.message());
    assert!(status.message().contains("expected seq 4, got 5"), "{}", status.message());
    assert_eq!(status.metadata().get("airlock-expected-seq").unwrap(), "4");
    assert_eq!(status.metadata().get("airlock-session-id").unwrap().to_str().unwrap(), session.id.to_string());
    recorder.stop().await;
}

#[tokio::test]
async fn a_frame_before_its_open_is_refused() {
    let (_dir, recorder) = local(|c| c).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(send(session.frame(1), true)).await;
    let status = stream.failure().await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("before the session's open"), "{}", status.message());
    recorder.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused() {
    let (_dir, recorder) = local(|c| c).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    let big = Frame {
        body: Some(Body::ClientBytes(Bytes::from(vec![b'x'; airlock_recorder::chunk::MAX_FRAME_BODY_BYTES + 1]))),
        ..session.frame(1)
    };
    stream.send(send(big, true)).await;
    let status = stream.failure().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("frame 1"), "{}", status.message());
    recorder.stop().await;
}

#[tokio::test]
async fn the_size_bound_stores_chunks_without_a_flush() {
    let (_dir, recorder) = local(|c| Config { chunk_bytes: 256, ..c }).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.next_ack(&session).await;
    stream.send_all((1..=30).map(|seq| send(session.frame(seq), false))).await;
    // Only the size bound can store anything: there is no flush and no time bound.
    let ack = stream.next_ack(&session).await;
    assert!(ack.durable_seq > 0 && ack.durable_seq < 30, "{ack:?}");
    let mut last = ack.durable_seq;
    while last < 25 {
        let ack = stream.next_ack(&session).await;
        assert!(ack.durable_seq > last);
        last = ack.durable_seq;
    }
    assert!(support::chunk_files(&recorder.config, &session).len() >= 3);
    drop(stream);
    recorder.stop().await;
}

#[tokio::test]
async fn the_time_bound_stores_a_quiet_session() {
    let (_dir, recorder) = local(|c| Config { chunk_interval_ms: 50, ..c }).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.send_all((1..=3).map(|seq| send(session.frame(seq), false))).await;
    stream.durable(&session, 3).await;
    assert_eq!(support::chunk_files(&recorder.config, &session).len(), 1);
    drop(stream);
    recorder.stop().await;
}

#[tokio::test]
async fn sessions_share_a_stream() {
    let (_dir, recorder) = local(|c| Config { chunk_bytes: 400, ..c }).await;
    let sessions: Vec<Session> = (0..4).map(|_| Session::new()).collect();
    let stream = Stream::open(&mut recorder.client().await).await;
    for s in &sessions {
        stream.send(s.open()).await;
    }
    for seq in 1..=20 {
        for s in &sessions {
            stream.send(send(s.frame(seq), false)).await;
        }
    }
    for s in &sessions {
        stream.send(send(s.end_frame(21), false)).await;
    }
    let mut closed = 0;
    let mut acks = stream.finish();
    while let Some(ack) = acks.message().await.unwrap() {
        closed += usize::from(ack.closed);
    }
    assert_eq!(closed, sessions.len(), "the stream ends once every session's acks are sent");
    let recordings = recorder.recordings();
    for s in &sessions {
        let expected: Vec<Frame> = (1..=20).map(|seq| s.frame(seq)).chain([s.end_frame(21)]).collect();
        assert_eq!(read_all(&recordings, s, 9).await, expected);
        assert!(recordings.verify(s.tenant, s.id, &recorder.started.public_key).await.unwrap().is_valid());
    }
    recorder.stop().await;
}

#[tokio::test]
async fn one_request_carries_opens_and_interleaved_frames_of_several_sessions() {
    let (_dir, recorder) = local(|c| c).await;
    let (a, b) = (Session::new(), Session::new());
    let mut stream = Stream::open(&mut recorder.client().await).await;
    let mut opens = a.open();
    opens.opens.extend(b.open().opens);
    stream.send(opens).await;
    // Runs of each, interleaved; only `a` is to be stored now.
    let frames = vec![a.frame(1), a.frame(2), b.frame(1), a.frame(3), b.frame(2), b.frame(3)];
    stream.send(IngestRequest { frames, flush_sessions: vec![a.id.to_string()], ..IngestRequest::default() }).await;
    assert_eq!(stream.durable(&a, 3).await.durable_seq, 3);
    // A flush naming `b` alone stores what it holds.
    stream.send(IngestRequest { flush_sessions: vec![b.id.to_string()], ..IngestRequest::default() }).await;
    assert_eq!(stream.durable(&b, 3).await.durable_seq, 3);
    let recordings = recorder.recordings();
    for s in [&a, &b] {
        let expected: Vec<Frame> = (1..=3).map(|seq| s.frame(seq)).collect();
        assert_eq!(read_all(&recordings, s, 10).await, expected);
    }
    drop(stream);
    recorder.stop().await;
}

#[tokio::test]
async fn an_empty_request_or_a_bad_flush_name_is_refused() {
    let (_dir, recorder) = local(|c| c).await;
    let mut client = recorder.client().await;
    let mut stream = Stream::open(&mut client).await;
    stream.send(IngestRequest::default()).await;
    let status = stream.failure().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("needs opens, frames or sessions to flush"), "{}", status.message());
    let mut stream = Stream::open(&mut client).await;
    stream.send(IngestRequest { flush_sessions: vec!["not-an-id".into()], ..IngestRequest::default() }).await;
    let status = stream.failure().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("flush_sessions"), "{}", status.message());
    recorder.stop().await;
}

#[tokio::test]
async fn a_session_opened_on_another_stream_is_taken_over() {
    let (_dir, recorder) = local(|c| c).await;
    let session = Session::new();
    let mut client = recorder.client().await;
    let mut old = Stream::open(&mut client).await;
    old.send(session.open()).await;
    old.send_all(session.frames(1, 3)).await;
    old.durable(&session, 3).await;

    // The worker reconnected: the old stream still looks open to the recorder.
    let mut new = Stream::open(&mut client).await;
    new.send(session.open()).await;
    assert_eq!(new.next_ack(&session).await.durable_seq, 3);
    new.send_all(session.frames(2, 6)).await;
    new.durable(&session, 6).await;

    old.send(send(session.frame(4), true)).await;
    let status = old.failure().await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");

    new.send(send(session.end_frame(7), false)).await;
    assert!(new.durable(&session, 7).await.closed);
    let recordings = recorder.recordings();
    let expected: Vec<Frame> = (1..=6).map(|seq| session.frame(seq)).chain([session.end_frame(7)]).collect();
    assert_eq!(read_all(&recordings, &session, 100).await, expected);
    assert!(recordings.verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap().is_valid());
    drop(new);
    recorder.stop().await;
}

#[tokio::test]
async fn with_a_worker_token_calls_must_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start_with_token(support::local_config(dir.path()), Some("worker-secret")).await;
    let session = Session::new();

    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let status = recorder.client().await.ingest(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", recorder.started.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RecorderServiceClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", "Bearer worker-secret".parse().unwrap());
        Ok(request)
    });
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks = client.ingest(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(session.open()).await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().durable_seq, 0);
    drop(tx);
    recorder.stop().await;
}
