//! The real recorder started in process on a temporary directory, workers'
//! recordings on a temporary spool, and sessions whose frames tests can
//! predict.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use airlock_core::{SessionId, TenantId};
use airlock_data_plane::recording::{self, Decision, Recorder, SessionOpen, SessionTap, Verdict};
use airlock_proto::v1::{Frame, SessionEnd, frame::Body};
use airlock_recorder::{Config, Recordings, Started};
use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const TOKEN: &str = "worker-token-for-tests";

/// Chunks are stored only on a flush, the size bound or the end.
pub const NEVER_MS: u64 = 3_600_000;

/// An address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    airlock_testkit::free_addr()
}

pub fn recorder_config(dir: &Path, addr: SocketAddr) -> Config {
    Config { addr, data_dir: Some(dir.to_path_buf()), chunk_interval_ms: NEVER_MS, ..Config::default() }
}

pub struct TestRecorder {
    pub started: Started,
    pub config: Config,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl TestRecorder {
    pub async fn start(config: Config) -> TestRecorder {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let started =
            airlock_recorder::start(config.clone(), Some(TOKEN.to_owned()), cancel.clone(), &tracker).await.unwrap();
        TestRecorder { started, config, cancel, tracker }
    }

    /// A recorder on a runtime of its own, so that it can be killed: dropping
    /// the runtime stops every one of its tasks where it stands, as `kill -9` would.
    pub fn on_own_runtime(config: Config) -> (Runtime, TestRecorder) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let recorder = runtime.block_on(TestRecorder::start(config));
        (runtime, recorder)
    }

    pub fn recordings(&self) -> Recordings {
        Recordings::open(&self.config).unwrap()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

pub fn options(spool: &Path, recorder: SocketAddr) -> recording::Options {
    recording::Options {
        recorder_url: format!("http://{recorder}"),
        spool_dir: spool.to_path_buf(),
        reconnect_max_ms: 200,
        worker_token: TOKEN.into(),
        worker_id: "worker-1".into(),
        ..recording::Options::default()
    }
}

/// A worker's recording and the tasks it runs.
pub struct Worker {
    pub recorder: Recorder,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl Worker {
    pub async fn start(options: recording::Options) -> Worker {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let recorder = Recorder::start(options, cancel.clone(), &tracker).await.unwrap();
        Worker { recorder, cancel, tracker }
    }

    /// A worker on a runtime of its own, to be killed by dropping the runtime.
    pub fn on_own_runtime(options: recording::Options) -> (Runtime, Worker) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let worker = runtime.block_on(Worker::start(options));
        (runtime, worker)
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A session's ids, and the frames a test expects the recorder to hold.
pub struct Script {
    pub tenant: TenantId,
    pub session: SessionId,
    pub expected: Vec<(u64, Body)>,
}

impl Script {
    pub fn new() -> Self {
        Self { tenant: TenantId::new(), session: SessionId::new(), expected: Vec::new() }
    }

    pub fn meta(&self) -> SessionOpen {
        SessionOpen {
            tenant: self.tenant,
            session: self.session,
            connection_id: "pg-local".into(),
            principal_subject: "ci-job-42".into(),
            principal_issuer: "https://airlock.test".into(),
            client_addr: "127.0.0.1:50000".parse().unwrap(),
            target_role: "readonly".into(),
            protocol: "postgres".into(),
            started_at: UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_000),
            grant_id: "01a217d0-2e3c-727a-8c2b-c25068352881".into(),
            session_role: "airlock_0123456789abcdef0123456789abcdef".into(),
        }
    }

    /// Step `n` of a predictable session: client bytes, a decision or server bytes.
    pub fn step(&mut self, tap: &mut SessionTap, n: u64) -> u64 {
        let (seq, body) = match n % 3 {
            0 => {
                let decision = Decision {
                    statement: format!("SELECT {n}"),
                    verdict: Verdict::Allow as i32,
                    rule: "agents-read".into(),
                    ..Decision::default()
                };
                (tap.decision(decision.clone()).unwrap(), Body::Decision(decision))
            }
            1 => {
                let bytes = format!("Q\0\0\0\x0eSELECT {n};\0").repeat(1 + (n % 5) as usize);
                (tap.client_bytes(bytes.as_bytes()).unwrap(), Body::ClientBytes(Bytes::from(bytes)))
            }
            _ => {
                let bytes = format!("D row {n} ").repeat(1 + (n % 7) as usize);
                (tap.server_bytes(bytes.as_bytes()).unwrap(), Body::ServerBytes(Bytes::from(bytes)))
            }
        };
        self.expected.push((seq, body));
        seq
    }

    /// Steps `from..=to`; the seq of the last.
    pub fn steps(&mut self, tap: &mut SessionTap, from: u64, to: u64) -> u64 {
        (from..=to).map(|n| self.step(tap, n)).last().unwrap()
    }

    pub fn end(&mut self, tap: &mut SessionTap, reason: &str) -> u64 {
        let seq = tap.end(reason).unwrap();
        let (client_bytes, server_bytes) = self.totals();
        self.expect_end(seq, reason, client_bytes, server_bytes);
        seq
    }

    pub fn expect_end(&mut self, seq: u64, reason: &str, client_bytes: u64, server_bytes: u64) {
        self.expected.push((seq, Body::End(SessionEnd { reason: reason.into(), client_bytes, server_bytes })));
    }

    /// Bytes expected each way.
    pub fn totals(&self) -> (u64, u64) {
        let mut totals = (0, 0);
        for (_, body) in &self.expected {
            match body {
                Body::ClientBytes(b) => totals.0 += b.len() as u64,
                Body::ServerBytes(b) => totals.1 += b.len() as u64,
                _ => {}
            }
        }
        totals
    }

    /// Asserts that the recorder holds exactly the expected frames, in
    /// order, stamped in order, and that the recording verifies.
    pub async fn assert_recorded(&self, recorder: &TestRecorder) {
        let recordings = recorder.recordings();
        let frames = read_all(&recordings, self.tenant, self.session).await;
        let got: Vec<(u64, Body)> = frames.iter().map(|f| (f.seq, f.body.clone().unwrap())).collect();
        assert_eq!(got.len(), self.expected.len(), "frames stored");
        assert!(got == self.expected, "the recorder holds other frames than were recorded");
        assert!(frames.iter().all(|f| f.session_id == self.session.to_string()));
        assert!(frames.windows(2).all(|w| w[0].at_unix_micros <= w[1].at_unix_micros), "stamped in order");
        let report = recordings.verify(self.tenant, self.session, &recorder.started.public_key).await.unwrap();
        assert!(report.is_valid(), "{report}");
    }
}

/// Every stored frame of a session.
pub async fn read_all(recordings: &Recordings, tenant: TenantId, session: SessionId) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut from = 1;
    loop {
        let page = recordings.read_frames(tenant, session, from, 1000).await.unwrap();
        frames.extend(page.frames);
        from = page.next_seq;
        if !page.more {
            return frames;
        }
    }
}

/// The files in a spool directory, at any depth.
pub fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { dirs.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    files
}
