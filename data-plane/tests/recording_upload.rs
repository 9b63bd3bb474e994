//! A worker's recordings reach the real recorder through the spool: whole,
//! in order, verified; while the recorder is down they wait on disk, up to the
//! spool's bound; in strict mode a frame is stored before `durable` answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod recording_support;

use airlock_data_plane::recording::{self, MAX_FRAME_BODY_BYTES};
use airlock_proto::v1::frame::Body;
use bytes::Bytes;
use recording_support::{Script, TestRecorder, Worker, free_addr, options, read_all, recorder_config, spool_files};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_recording_round_trips_through_the_spool() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let recorder = TestRecorder::start(recorder_config(store.path(), free_addr())).await;
    let worker = Worker::start(options(spool.path(), recorder.started.addr)).await;

    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    assert_eq!(spool_files(spool.path()).len(), 1, "the session's spool file");
    script.steps(&mut tap, 1, 30);
    // More than one frame holds: split, each piece a frame of its own.
    let big: Vec<u8> = (0..MAX_FRAME_BODY_BYTES + 10).map(|i| (i % 251) as u8).collect();
    let last = tap.client_bytes(&big).unwrap();
    let first_piece = script.expected.last().unwrap().0 + 1;
    assert_eq!(last, first_piece + 1);
    script.expected.push((first_piece, Body::ClientBytes(Bytes::copy_from_slice(&big[..MAX_FRAME_BODY_BYTES]))));
    script.expected.push((last, Body::ClientBytes(Bytes::copy_from_slice(&big[MAX_FRAME_BODY_BYTES..]))));
    assert_eq!(tap.client_bytes(b"").unwrap(), last, "no frame for no bytes");
    script.steps(&mut tap, 31, 40);
    let end = script.end(&mut tap, "client closed");
    assert!(matches!(tap.client_bytes(b"late"), Err(recording::Error::Ended)));

    tap.durable(end).await.unwrap();
    worker.recorder.drained().await;
    assert!(spool_files(spool.path()).is_empty(), "the closed session's file is deleted");
    assert_eq!(worker.recorder.spool_bytes(), 0);
    script.assert_recorded(&recorder).await;
    let manifest = recorder.recordings().manifest(script.tenant, script.session).await.unwrap().unwrap();
    assert_eq!(manifest.manifest.session.worker_id, "worker-1");
    assert_eq!(manifest.manifest.session.client_addr, "127.0.0.1:50000");

    worker.stop().await;
    recorder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_wait_in_the_spool_until_the_recorder_starts() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = free_addr();
    let worker = Worker::start(options(spool.path(), addr)).await;

    let mut scripts: Vec<Script> = (0..3).map(|_| Script::new()).collect();
    for script in &mut scripts {
        let mut tap = worker.recorder.open_session(script.meta()).unwrap();
        script.steps(&mut tap, 1, 50);
        script.end(&mut tap, "client closed");
    }
    assert_eq!(spool_files(spool.path()).len(), 3);
    let spooled = worker.recorder.spool_bytes();
    assert!(spooled > 0);

    let recorder = TestRecorder::start(recorder_config(store.path(), addr)).await;
    worker.recorder.drained().await;
    assert!(spool_files(spool.path()).is_empty());
    assert_eq!(worker.recorder.spool_bytes(), 0);
    for script in &scripts {
        script.assert_recorded(&recorder).await;
    }
    worker.stop().await;
    recorder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_recording_spool_refuses_sessions_and_ends_live_ones() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = free_addr();
    let worker = Worker::start(recording::Options { spool_max_bytes: 4096, ..options(spool.path(), addr) }).await;

    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    let mut stop = tap.stop_signal();
    let row = [b'x'; 200];
    let mut refused = None;
    for _ in 0..100 {
        match tap.server_bytes(&row) {
            Ok(seq) => script.expected.push((seq, Body::ServerBytes(Bytes::copy_from_slice(&row)))),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the spool's bound was never reached");
    assert!(matches!(refused, recording::Error::SpoolFull { bound: 4096, .. }), "{refused}");
    assert!(refused.to_string().contains("recording spool is full"), "{refused}");
    assert!(!refused.client_message().contains(&spool.path().display().to_string()));
    assert!(worker.recorder.spool_bytes() <= 4096);
    // Every live session is told to end.
    assert!(matches!(stop.stopped().await, recording::Error::SpoolFull { .. }));

    let other = Script::new();
    let err = worker.recorder.open_session(other.meta()).unwrap_err();
    assert!(matches!(err, recording::Error::SpoolFull { .. }), "{err}");
    assert!(err.to_string().contains("recording spool is full"), "{err}");
    assert_eq!(spool_files(spool.path()).len(), 1, "the refused session has no file");

    // The session still records its end, past the bound.
    script.end(&mut tap, "the recording spool is full");

    // Once the recorder takes the spool, sessions are taken again.
    let recorder = TestRecorder::start(recorder_config(store.path(), addr)).await;
    worker.recorder.drained().await;
    script.assert_recorded(&recorder).await;
    let mut next = Script::new();
    let mut tap = worker.recorder.open_session(next.meta()).unwrap();
    next.steps(&mut tap, 1, 3);
    let end = next.end(&mut tap, "client closed");
    tap.durable(end).await.unwrap();
    next.assert_recorded(&recorder).await;

    worker.stop().await;
    recorder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_strict_recording_durable_means_stored() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // No time bound and 1 MiB chunks: the recorder stores nothing unless asked to flush.
    let recorder = TestRecorder::start(recorder_config(store.path(), free_addr())).await;
    let worker =
        Worker::start(recording::Options { strict: true, ..options(spool.path(), recorder.started.addr) }).await;
    let recordings = recorder.recordings();

    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    for round in 0..10u64 {
        // A statement is stored before it would be forwarded.
        let seq = script.step(&mut tap, 3 * round + 1);
        tap.durable(seq).await.unwrap();
        let stored = read_all(&recordings, script.tenant, script.session).await;
        assert_eq!(stored.last().map(|f| f.seq), Some(seq), "round {round}: frame {seq} is stored");
        // The reply and the decision are not waited for.
        script.step(&mut tap, 3 * round + 2);
        script.step(&mut tap, 3 * round + 3);
    }
    // Nothing asked for the last two frames to be stored, and the recorder did not store them.
    let stored = read_all(&recordings, script.tenant, script.session).await;
    assert_eq!(stored.len() as u64, tap.last_seq() - 2);
    assert!(matches!(tap.durable(tap.last_seq() + 1).await, Err(recording::Error::NotRecorded { .. })));

    let end = script.end(&mut tap, "client closed");
    tap.durable(end).await.unwrap();
    worker.recorder.drained().await;
    script.assert_recorded(&recorder).await;
    worker.stop().await;
    recorder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_dropped_without_its_end_is_ended_by_the_uploader() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let recorder = TestRecorder::start(recorder_config(store.path(), free_addr())).await;
    let worker = Worker::start(options(spool.path(), recorder.started.addr)).await;

    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    let last = script.steps(&mut tap, 1, 7);
    // The session's task went away (it panicked, or was cancelled) without ending the recording.
    drop(tap);
    worker.recorder.drained().await;
    assert!(spool_files(spool.path()).is_empty());
    let (client_bytes, server_bytes) = script.totals();
    script.expect_end(last + 1, recording::REASON_ABANDONED, client_bytes, server_bytes);
    script.assert_recorded(&recorder).await;
    worker.stop().await;
    recorder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_recorded_later_are_written_together_by_the_next_write() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let recorder = TestRecorder::start(recorder_config(store.path(), free_addr())).await;
    let worker = Worker::start(options(spool.path(), recorder.started.addr)).await;
    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    let file = spool_files(spool.path()).pop().unwrap();
    let len = || std::fs::metadata(&file).unwrap().len();
    let opened = len();

    // What a relay does for a statement: the client's bytes and the decision
    // are encoded, and written by one commit before anything is forwarded.
    let query = Bytes::from_static(b"Q\0\0\0\x0dSELECT 1;\0");
    let decision = airlock_proto::v1::Decision {
        statement: "SELECT 1;".into(),
        verdict: airlock_proto::v1::Verdict::Allow as i32,
        ..Default::default()
    };
    let sent = tap.client_bytes_later(&query).unwrap();
    let decided = tap.decision_later(decision.clone()).unwrap();
    assert_eq!((sent, decided), (1, 2), "numbered as they are recorded");
    assert_eq!(len(), opened, "nothing written yet");
    assert_eq!(tap.last_seq(), 0, "nothing written yet");
    assert!(matches!(tap.durable(sent).await, Err(recording::Error::NotRecorded { .. })));
    tap.commit().unwrap();
    assert!(len() > opened, "written by the commit");
    assert_eq!(tap.last_seq(), 2);
    tap.commit().unwrap();
    script.expected.push((sent, Body::ClientBytes(query.clone())));
    script.expected.push((decided, Body::Decision(decision)));

    // Any write takes what waits along, in order.
    let more = tap.client_bytes_later(&query).unwrap();
    let reply = Bytes::from_static(b"Z\0\0\0\x05I");
    let replied = tap.server_bytes(&reply).unwrap();
    assert_eq!((more, replied, tap.last_seq()), (3, 4, 4));
    script.expected.push((more, Body::ClientBytes(query.clone())));
    script.expected.push((replied, Body::ServerBytes(reply)));

    // The end takes them too, and counts them.
    let last = tap.client_bytes_later(&query).unwrap();
    script.expected.push((last, Body::ClientBytes(query)));
    let end = script.end(&mut tap, "client closed");
    assert_eq!(end, last + 1);

    tap.durable(end).await.unwrap();
    worker.recorder.drained().await;
    script.assert_recorded(&recorder).await;
    worker.stop().await;
    recorder.stop().await;
}
