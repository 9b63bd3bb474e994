//! Stored bytes are untrusted: a chunk whose length fields are absurd, or an
//! object too large to be a chunk, is refused with the chunk named, without
//! a panic and without allocating what it claims.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use airlock_recorder::chunk::{self, HEADER_LEN, MAX_CHUNK_BYTES};
use airlock_recorder::{Config, Error};
use support::{Recorder, Session, Stream};

async fn two_chunks(dir: &std::path::Path) -> (Recorder, Session, Vec<std::path::PathBuf>) {
    let recorder = Recorder::start(support::local_config(dir)).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.send_all(session.frames(1, 3)).await;
    stream.durable(&session, 3).await;
    stream.send_all(session.frames(4, 6)).await;
    stream.durable(&session, 6).await;
    drop(stream);
    let files = support::chunk_files(&recorder.config, &session);
    assert_eq!(files.len(), 2);
    (recorder, session, files)
}

#[tokio::test]
async fn an_absurd_payload_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, files) = two_chunks(dir.path()).await;
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(&files[1], &bytes).unwrap();

    let recordings = recorder.recordings();
    let e = recordings.read_frames(session.tenant, session.id, 4, 10).await.unwrap_err();
    match e {
        Error::Chunk { index, reason, .. } => {
            assert_eq!(index, 1);
            assert!(reason.contains("over the"), "{reason}");
        }
        other => panic!("{other}"),
    }
    let report = recordings.verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap();
    assert_eq!(report.first_bad_chunk.unwrap().index, 1);
    recorder.stop().await;
}

#[tokio::test]
async fn an_absurd_frame_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, files) = two_chunks(dir.path()).await;
    // A well-formed chunk 1 whose payload declares a frame of 2^62 bytes.
    let chunk0 = std::fs::read(&files[0]).unwrap();
    let prev = chunk::link(&chunk::ZERO_HASH, &chunk0);
    let payload = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    std::fs::write(&files[1], chunk::encode(1, &prev, 4, 6, &payload).unwrap()).unwrap();

    let recordings = recorder.recordings();
    let e = recordings.read_frames(session.tenant, session.id, 4, 10).await.unwrap_err();
    assert!(matches!(&e, Error::Chunk { index: 1, reason, .. } if reason.contains("bad length")), "{e}");
    let report = recordings.verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap();
    let bad = report.first_bad_chunk.unwrap();
    assert_eq!(bad.index, 1);
    assert!(bad.reason.contains("bad length"), "{}", bad.reason);
    recorder.stop().await;
}

#[tokio::test]
async fn an_object_too_large_to_be_a_chunk_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, files) = two_chunks(dir.path()).await;
    let file = std::fs::OpenOptions::new().write(true).open(&files[1]).unwrap();
    file.set_len(MAX_CHUNK_BYTES as u64 + 1).unwrap();
    drop(file);
    let report = recorder.recordings().verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap();
    let bad = report.first_bad_chunk.unwrap();
    assert_eq!(bad.index, 1);
    assert!(bad.reason.contains("over the"), "{}", bad.reason);
    recorder.stop().await;
}

#[tokio::test]
async fn a_recorder_refuses_a_session_whose_last_chunk_is_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, files) = two_chunks(dir.path()).await;
    recorder.stop().await;
    std::fs::write(&files[1], b"ALRC\x01 not a chunk").unwrap();

    let recorder = Recorder::start(Config { ..support::local_config(dir.path()) }).await;
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    let status = stream.failure().await;
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains("chunk 1"), "{}", status.message());
    recorder.stop().await;
}
