//! A recorder started in process on `127.0.0.1:0`, a real gRPC client, and
//! sessions whose frames tests can predict.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, dead_code)]

use std::path::Path;

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1::recorder_service_client::RecorderServiceClient;
use airlock_proto::v1::{Decision, Frame, IngestAck, IngestRequest, SessionEnd, SessionOpen, Verdict, frame::Body};
use airlock_recorder::{Backend, Config, Recordings, S3, Started};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Chunks are stored only on a flush, the size bound or the end unless a test says otherwise.
pub const NEVER_MS: u64 = 3_600_000;

pub fn local_config(dir: &Path) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_path_buf()),
        chunk_interval_ms: NEVER_MS,
        ..Config::default()
    }
}

/// A config on the S3-compatible server `scripts/test` starts, under a prefix of
/// the test's own; `None` (with a message) when `AIRLOCK_TEST_S3_URL` is unset.
///
/// `AIRLOCK_TEST_S3_URL` is `http://host:port/bucket`; credentials come from
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, `test`/`test` when unset.
pub fn s3_config(dir: &Path) -> Option<Config> {
    let Ok(url) = std::env::var("AIRLOCK_TEST_S3_URL") else {
        eprintln!("SKIPPED: AIRLOCK_TEST_S3_URL is not set (scripts/test starts an S3-compatible server and sets it)");
        return None;
    };
    let (scheme, rest) = url.split_once("://").expect("AIRLOCK_TEST_S3_URL: scheme://host:port/bucket");
    let (host, bucket) = rest.split_once('/').expect("AIRLOCK_TEST_S3_URL: scheme://host:port/bucket");
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| "test".into());
    Some(Config {
        backend: Backend::S3,
        s3: S3 {
            bucket: bucket.trim_end_matches('/').to_owned(),
            region: "us-east-1".into(),
            endpoint: format!("{scheme}://{host}"),
            path_style: true,
            prefix: format!("test-{}", uuid::Uuid::new_v4()),
            access_key_id: env("AWS_ACCESS_KEY_ID"),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
            session_token: String::new(),
        },
        ..local_config(dir)
    })
}

pub struct Recorder {
    pub started: Started,
    pub config: Config,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

impl Recorder {
    pub async fn start(config: Config) -> Recorder {
        Self::start_with_token(config, None).await
    }

    pub async fn start_with_token(config: Config, token: Option<&str>) -> Recorder {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let started =
            airlock_recorder::start(config.clone(), token.map(str::to_owned), cancel.clone(), &tracker).await.unwrap();
        Recorder { started, config, cancel, tracker }
    }

    pub async fn client(&self) -> RecorderServiceClient<Channel> {
        RecorderServiceClient::connect(format!("http://{}", self.started.addr)).await.unwrap()
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

/// One session's ids and predictable frames: the frame for a seq is always the same.
#[derive(Clone, Copy)]
pub struct Session {
    pub tenant: TenantId,
    pub id: SessionId,
}

impl Session {
    pub fn new() -> Self {
        Self { tenant: TenantId::new(), id: SessionId::new() }
    }

    pub fn open(&self) -> IngestRequest {
        IngestRequest {
            opens: vec![SessionOpen {
                tenant_id: self.tenant.to_string(),
                session_id: self.id.to_string(),
                connection_id: "pg-local".into(),
                principal_subject: "ci-job-42".into(),
                principal_issuer: "https://airlock.test".into(),
                client_addr: "127.0.0.1:50000".into(),
                worker_id: "worker-1".into(),
                target_role: "readonly".into(),
                protocol: "postgres".into(),
                started_at_unix_ms: 1_700_000_000_000,
                ..SessionOpen::default()
            }],
            ..IngestRequest::default()
        }
    }

    /// Frame `seq`: client bytes, server bytes or a decision, by seq.
    pub fn frame(&self, seq: u64) -> Frame {
        let body = match seq % 3 {
            0 => Body::Decision(Decision {
                statement: format!("SELECT {seq}"),
                verdict: Verdict::Allow as i32,
                rule: "agents-read".into(),
                reason: String::new(),
                review_id: String::new(),
                approver: String::new(),
            }),
            1 => Body::ClientBytes(Bytes::from(format!("Q\0\0\0\x0eSELECT {seq};\0").repeat(1 + (seq % 5) as usize))),
            _ => Body::ServerBytes(Bytes::from(format!("D row {seq} ").repeat(1 + (seq % 7) as usize))),
        };
        Frame {
            session_id: self.id.to_string(),
            seq,
            at_unix_micros: 1_700_000_000_000_000 + seq as i64,
            body: Some(body),
        }
    }

    pub fn end_frame(&self, seq: u64) -> Frame {
        Frame {
            session_id: self.id.to_string(),
            seq,
            at_unix_micros: 1_700_000_000_000_000 + seq as i64,
            body: Some(Body::End(SessionEnd { reason: "client closed".into(), client_bytes: 100, server_bytes: 200 })),
        }
    }

    /// Frames `from..=to`, the last one flushed.
    pub fn frames(&self, from: u64, to: u64) -> Vec<IngestRequest> {
        (from..=to).map(|seq| send(self.frame(seq), seq == to)).collect()
    }
}

/// A request of one frame, naming its session to be flushed when `flush`.
pub fn send(frame: Frame, flush: bool) -> IngestRequest {
    let flush_sessions = if flush { vec![frame.session_id.clone()] } else { Vec::new() };
    IngestRequest { opens: Vec::new(), frames: vec![frame], flush_sessions }
}

/// One Ingest stream.
pub struct Stream {
    tx: mpsc::Sender<IngestRequest>,
    acks: Streaming<IngestAck>,
}

impl Stream {
    pub async fn open(client: &mut RecorderServiceClient<Channel>) -> Stream {
        let (tx, rx) = mpsc::channel(1024);
        let acks = client.ingest(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Stream { tx, acks }
    }

    pub async fn send(&self, request: IngestRequest) {
        self.tx.send(request).await.unwrap();
    }

    pub async fn send_all(&self, requests: impl IntoIterator<Item = IngestRequest>) {
        for r in requests {
            self.send(r).await;
        }
    }

    /// The next ack for `session`, skipping other sessions' acks.
    pub async fn next_ack(&mut self, session: &Session) -> IngestAck {
        loop {
            match self.acks.message().await {
                Ok(Some(ack)) if ack.session_id == session.id.to_string() => return ack,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the ack stream ended"),
                Err(status) => panic!("the ack stream failed: {status:?}"),
            }
        }
    }

    /// Reads acks until `session` is durable up to `seq`.
    pub async fn durable(&mut self, session: &Session, seq: u64) -> IngestAck {
        loop {
            let ack = self.next_ack(session).await;
            assert!(ack.durable_seq <= seq, "acked {} past the {seq} sent", ack.durable_seq);
            if ack.durable_seq == seq {
                return ack;
            }
        }
    }

    /// Reads acks until the stream fails, and returns why.
    pub async fn failure(&mut self) -> Status {
        loop {
            match self.acks.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the ack stream ended without an error"),
                Err(status) => return status,
            }
        }
    }

    /// Closes the sending side; the acks still come.
    pub fn finish(self) -> Streaming<IngestAck> {
        self.acks
    }
}

/// Every stored frame of a session, read back a page of `page` frames at a time.
pub async fn read_all(recordings: &Recordings, session: &Session, page: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut from = 1;
    loop {
        let p = recordings.read_frames(session.tenant, session.id, from, page).await.unwrap();
        assert!(p.frames.len() <= page);
        frames.extend(p.frames);
        from = p.next_seq;
        if !p.more {
            return frames;
        }
    }
}

/// The chunk files of a session in a local store, in index order.
pub fn chunk_files(config: &Config, session: &Session) -> Vec<std::path::PathBuf> {
    let dir = config.local_dir().join(format!("tenants/{}/sessions/{}/chunks", session.tenant, session.id));
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

pub fn manifest_file(config: &Config, session: &Session) -> std::path::PathBuf {
    config.local_dir().join(format!("tenants/{}/sessions/{}/manifest.json", session.tenant, session.id))
}
