//! A recorder killed mid-session loses only frames it had not acknowledged:
//! the worker resends from its first unacknowledged seq (and some before), a
//! new recorder on the same storage continues the chain, and the recording
//! ends up whole, without duplicates, and verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use airlock_proto::v1::Frame;
use airlock_recorder::Config;
use support::{Recorder, Session, Stream, read_all, send};
use tokio::runtime::Runtime;

/// A recorder on a runtime of its own, so that it can be killed: dropping the
/// runtime stops every one of its tasks where it stands, as `kill -9` would
/// (a file write already under way finishes, as the kernel would finish it).
fn recorder_on_own_runtime(config: Config) -> (Runtime, Recorder) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let recorder = runtime.block_on(Recorder::start(config));
    (runtime, recorder)
}

#[test]
fn killed_mid_session_loses_only_unacknowledged_frames() {
    let dir = tempfile::tempdir().unwrap();
    killed_mid_session(support::local_config(dir.path()));
}

#[test]
fn killed_mid_session_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = support::s3_config(dir.path()) else { return };
    killed_mid_session(config);
}

fn killed_mid_session(config: Config) {
    let client_runtime = Runtime::new().unwrap();
    let session = Session::new();
    // Chunks of a few frames, and no time bound: nothing is stored unless flushed or full.
    let config = Config { chunk_bytes: 300, ..config };

    let (first_runtime, first) = recorder_on_own_runtime(config.clone());
    let acked = client_runtime.block_on(async {
        let mut stream = Stream::open(&mut first.client().await).await;
        stream.send(session.open()).await;
        assert_eq!(stream.next_ack(&session).await.durable_seq, 0);
        stream.send_all(session.frames(1, 12)).await;
        let acked = stream.durable(&session, 12).await.durable_seq;
        // Sent, buffered at most, never acknowledged.
        stream.send_all((13..=16).map(|seq| send(session.frame(seq), false))).await;
        acked
    });
    drop(first_runtime);

    client_runtime.block_on(async {
        let recordings = first.recordings();
        let stored = read_all(&recordings, &session, 100).await;
        assert!(stored.len() as u64 >= acked, "every acknowledged frame is stored");
        let report = recordings.verify(session.tenant, session.id, &first.started.public_key).await.unwrap();
        assert!(report.chain_intact(), "{report}");
        assert_eq!(report.signature.to_string(), "unsigned: session not closed");
    });

    let (second_runtime, second) = recorder_on_own_runtime(config);
    assert_eq!(second.started.key_id, first.started.key_id, "the key kept in the data directory is used again");
    client_runtime.block_on(async {
        let mut stream = Stream::open(&mut second.client().await).await;
        stream.send(session.open()).await;
        let reopened = stream.next_ack(&session).await;
        assert!(reopened.durable_seq >= acked && !reopened.closed, "{reopened:?}");
        // The worker's spool: from a little before its last ack, past what was lost.
        stream.send_all(session.frames(acked - 3, 20)).await;
        stream.durable(&session, 20).await;
        stream.send(send(session.end_frame(21), false)).await;
        assert!(stream.durable(&session, 21).await.closed);

        let recordings = second.recordings();
        let expected: Vec<Frame> = (1..=20).map(|seq| session.frame(seq)).chain([session.end_frame(21)]).collect();
        assert_eq!(read_all(&recordings, &session, 6).await, expected, "nothing lost, nothing twice");
        let report = recordings.verify(session.tenant, session.id, &second.started.public_key).await.unwrap();
        assert!(report.is_valid(), "{report}");
        let manifest = recordings.manifest(session.tenant, session.id).await.unwrap().unwrap();
        assert_eq!(manifest.manifest.chunks.len() as u64, report.chunks);
    });
    client_runtime.block_on(second.stop());
    drop(second_runtime);
}

/// The end frame is stored but the recorder dies before the manifest: opening
/// the session again finishes it.
#[tokio::test]
async fn an_end_stored_without_its_manifest_is_signed_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new();
    let config = support::local_config(dir.path());
    let recorder = Recorder::start(config.clone()).await;
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.send_all(session.frames(1, 5)).await;
    stream.send(send(session.end_frame(6), false)).await;
    assert!(stream.durable(&session, 6).await.closed);
    drop(stream);
    recorder.stop().await;
    // As if the manifest had never been written.
    std::fs::remove_file(support::manifest_file(&config, &session)).unwrap();

    let recorder = Recorder::start(config).await;
    let report = recorder.recordings().verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap();
    assert_eq!(report.signature, airlock_recorder::Signature::Unsigned);
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    let ack = stream.next_ack(&session).await;
    assert_eq!((ack.durable_seq, ack.closed), (6, true));
    // A spool replayed after the end is absorbed.
    stream.send_all(session.frames(1, 6)).await;
    let report = recorder.recordings().verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap();
    assert!(report.is_valid(), "{report}");
    drop(stream);
    recorder.stop().await;
}
