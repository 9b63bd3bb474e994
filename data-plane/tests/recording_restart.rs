//! Nothing recorded is lost when either side dies: a recorder killed
//! mid-session is caught up from the spool once it is back, and a worker
//! killed mid-session leaves its spool to the next run, which uploads it,
//! cuts a torn tail, and ends the session ("worker restarted").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod recording_support;

use std::io::Write;

use airlock_proto::v1::frame::Body;
use recording_support::{Script, TestRecorder, Worker, free_addr, options, recorder_config, spool_files};
use tokio::runtime::Runtime;

#[test]
fn recording_catches_up_a_recorder_killed_mid_session() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = free_addr();
    // Chunks of a few frames, and no time bound: frames past the last flush are only buffered.
    let config = airlock_recorder::Config { chunk_bytes: 300, ..recorder_config(store.path(), addr) };
    let runtime = Runtime::new().unwrap();
    let (first_runtime, _first) = TestRecorder::on_own_runtime(config.clone());
    let worker = runtime.block_on(Worker::start(options(spool.path(), addr)));

    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    runtime.block_on(async {
        let acked = script.steps(&mut tap, 1, 20);
        tap.durable(acked).await.unwrap();
    });
    // Sent, buffered at most, never acknowledged.
    script.steps(&mut tap, 21, 30);
    drop(first_runtime);

    // Recorded while the recorder is down.
    script.steps(&mut tap, 31, 40);
    let (second_runtime, second) = TestRecorder::on_own_runtime(config);
    runtime.block_on(async {
        script.steps(&mut tap, 41, 50);
        let end = script.end(&mut tap, "client closed");
        tap.durable(end).await.unwrap();
        worker.recorder.drained().await;
        assert!(spool_files(spool.path()).is_empty());
        // Exactly the frames recorded: nothing lost, nothing twice.
        script.assert_recorded(&second).await;
    });
    runtime.block_on(worker.stop());
    second_runtime.block_on(second.stop());
}

#[test]
fn a_killed_workers_recordings_are_uploaded_and_ended_by_the_next_run() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let runtime = Runtime::new().unwrap();
    let recorder = runtime.block_on(TestRecorder::start(recorder_config(store.path(), free_addr())));
    let addr = recorder.started.addr;

    let (first_runtime, first) = Worker::on_own_runtime(options(spool.path(), addr));
    let mut scripts: Vec<Script> = (0..2).map(|_| Script::new()).collect();
    let mut taps: Vec<_> = scripts.iter().map(|s| first.recorder.open_session(s.meta()).unwrap()).collect();
    first_runtime.block_on(async {
        for (script, tap) in scripts.iter_mut().zip(&mut taps) {
            let acked = script.steps(tap, 1, 10);
            tap.durable(acked).await.unwrap();
            script.steps(tap, 11, 20);
        }
    });
    // kill -9: the uploader stops where it stands; no session recorded its end.
    drop(first_runtime);
    drop(first);
    drop(taps);
    assert_eq!(spool_files(spool.path()).len(), 2, "the spool outlives the worker");

    runtime.block_on(async {
        let second = Worker::start(options(spool.path(), addr)).await;
        let mut restarted = second.recorder.restarted_sessions().expect("the restarted sessions, once");
        assert!(second.recorder.restarted_sessions().is_none());
        second.recorder.drained().await;
        assert!(spool_files(spool.path()).is_empty());
        for script in &mut scripts {
            let (client_bytes, server_bytes) = script.totals();
            script.expect_end(21, "worker restarted", client_bytes, server_bytes);
            script.assert_recorded(&recorder).await;
        }
        // Each is handed over to be closed in the log, with what its spool file said of it.
        let mut handed: Vec<_> = (0..scripts.len()).map(|_| restarted.try_recv().unwrap()).collect();
        assert!(restarted.try_recv().is_err(), "a session was handed over twice");
        handed.sort_by_key(|r| r.session);
        let mut expected: Vec<&Script> = scripts.iter().collect();
        expected.sort_by_key(|s| s.session);
        for (r, script) in handed.iter().zip(expected) {
            let meta = script.meta();
            assert_eq!((r.tenant, r.session), (script.tenant, script.session));
            assert_eq!(
                (r.open.grant_id.as_str(), r.open.session_role.as_str()),
                (meta.grant_id.as_str(), meta.session_role.as_str())
            );
            assert_eq!((r.client_bytes, r.server_bytes), script.totals());
        }
        second.stop().await;
        recorder.stop().await;
    });
}

#[test]
fn a_torn_recording_spool_tail_is_cut_and_the_rest_uploaded() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = free_addr();

    // The recorder is down: everything stays in the spool.
    let (first_runtime, first) = Worker::on_own_runtime(options(spool.path(), addr));
    let mut torn = Script::new();
    let mut absurd = Script::new();
    let mut taps = Vec::new();
    for script in [&mut torn, &mut absurd] {
        let mut tap = first.recorder.open_session(script.meta()).unwrap();
        script.steps(&mut tap, 1, 5);
        taps.push(tap);
    }
    drop(first_runtime);
    drop(first);
    drop(taps);

    let file = |script: &Script| spool.path().join(script.tenant.to_string()).join(format!("{}.spool", script.session));
    // A write cut short by the crash: the last frame is missing its last bytes.
    let torn_file = file(&torn);
    let len = std::fs::metadata(&torn_file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&torn_file).unwrap().set_len(len - 3).unwrap();
    torn.expected.pop();
    // A length no record can have, then a few bytes.
    std::fs::OpenOptions::new()
        .append(true)
        .open(file(&absurd))
        .unwrap()
        .write_all(&[0xff, 0xff, 0xff, 0xf0, 1, 2])
        .unwrap();
    // A file the crash left before its open was written.
    let empty = Script::new();
    let empty_dir = spool.path().join(empty.tenant.to_string());
    std::fs::create_dir_all(&empty_dir).unwrap();
    std::fs::write(empty_dir.join(format!("{}.spool", empty.session)), b"ALS").unwrap();

    let runtime = Runtime::new().unwrap();
    runtime.block_on(async {
        let recorder = TestRecorder::start(recorder_config(store.path(), addr)).await;
        let second = Worker::start(options(spool.path(), addr)).await;
        second.recorder.drained().await;
        assert!(spool_files(spool.path()).is_empty(), "{:?}", spool_files(spool.path()));
        assert_eq!(second.recorder.spool_bytes(), 0);
        for script in [&mut torn, &mut absurd] {
            let next = script.expected.last().unwrap().0 + 1;
            let (client_bytes, server_bytes) = script.totals();
            script.expect_end(next, "worker restarted", client_bytes, server_bytes);
            script.assert_recorded(&recorder).await;
        }
        assert!(matches!(torn.expected.last(), Some((5, Body::End(_)))), "frame 5 was torn off");
        second.stop().await;
        recorder.stop().await;
    });
}

#[test]
fn a_recording_the_recorder_refuses_for_good_is_given_up_and_its_session_ended() {
    let (store, spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = free_addr();
    let config = airlock_recorder::Config { chunk_bytes: 300, ..recorder_config(store.path(), addr) };
    let runtime = Runtime::new().unwrap();
    let (first_runtime, _first) = TestRecorder::on_own_runtime(config.clone());
    let worker = runtime.block_on(Worker::start(options(spool.path(), addr)));

    let mut script = Script::new();
    let mut tap = worker.recorder.open_session(script.meta()).unwrap();
    let mut stop = tap.stop_signal();
    runtime.block_on(async {
        let acked = script.steps(&mut tap, 1, 10);
        tap.durable(acked).await.unwrap();
    });
    drop(first_runtime);
    // The stored recording is damaged: its last chunk is not a chunk any more.
    let chunks = store.path().join(format!("recordings/tenants/{}/sessions/{}/chunks", script.tenant, script.session));
    let mut stored: Vec<_> = std::fs::read_dir(chunks).unwrap().map(|e| e.unwrap().path()).collect();
    stored.sort();
    std::fs::write(stored.last().unwrap(), b"not a chunk").unwrap();

    let (second_runtime, second) = TestRecorder::on_own_runtime(config);
    runtime.block_on(async {
        // Opening the session again on the new recorder is refused with DATA_LOSS.
        let why = stop.stopped().await;
        assert!(matches!(why, airlock_data_plane::recording::Error::Failed { .. }), "{why}");
        let next = tap.client_bytes(b"Q\0\0\0\x0dSELECT 1;\0");
        assert!(matches!(next, Err(airlock_data_plane::recording::Error::Failed { .. })), "{next:?}");
        assert!(tap.durable(tap.last_seq()).await.is_ok(), "what was acknowledged stays acknowledged");
        // Given up sessions are not waited for; their file is kept for an operator, and counted.
        worker.recorder.drained().await;
        let files = spool_files(spool.path());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].extension().unwrap(), "failed");
        assert_eq!(worker.recorder.spool_bytes(), std::fs::metadata(&files[0]).unwrap().len());
        worker.stop().await;
    });
    second_runtime.block_on(second.stop());
}
