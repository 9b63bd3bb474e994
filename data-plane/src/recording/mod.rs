//! Session recording, the worker's side: every session's frames go to a disk
//! spool first, and an uploader streams the spool to the recorder
//! (`airlock.v1.RecorderService.Ingest`).
//!
//! - [`Recorder`] (one per worker): opens sessions, holds the spool's bound.
//! - [`SessionTap`] (one per session, on its task): appends each frame to the
//!   session's spool file before returning (or, for the `_later` calls, with
//!   the next write, which the relay makes before forwarding), so a recorded
//!   byte is in the spool before it is forwarded.
//! - `uploader`: one stream to the recorder; sends each session's frames from
//!   its file, wakes [`SessionTap::durable`] waiters as acks come, deletes a
//!   file once the recorder closed its session, reconnects with backoff and
//!   replays what was not acknowledged. On start it uploads what an earlier
//!   run left in the spool and ends those sessions ("worker restarted").
//! - `spool`: the file format.
//!
//! How a session uses it:
//!
//! ```text
//! let mut tap = recorder.open_session(meta)?;   // refused: refuse the client
//! let mut stop = tap.stop_signal();              // select! on stop.stopped()
//! let seq = tap.client_bytes_later(&message)?;   // encoded, written with the next write
//! tap.decision_later(decision)?;                 // what policy decided
//! tap.commit()?;                                 // one write for both; then forward to the target
//! tap.durable(seq).await?;                       // strict mode, before forwarding a statement
//! tap.server_bytes(&reply)?;                     // written now; then write to the client
//! tap.end("client closed")?;                     // last
//! ```
//!
//! Any error from a tap means the session can no longer be recorded: end it
//! (fail closed).

mod spool;
mod tap;
mod uploader;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use airlock_proto::v1::{Decision, Verdict};
pub use spool::MAX_FRAME_BODY_BYTES;
pub use tap::{SessionTap, StopSignal};
pub use uploader::{REASON_ABANDONED, REASON_RESTARTED};

/// The worker's recording options (`[worker.recording]`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// False: sessions are not recorded (the worker warns at start). For
    /// measuring what recording costs, and targets whose sessions must not
    /// leave the gateway.
    pub enabled: bool,
    /// The recorder's gRPC URL.
    pub recorder_url: String,
    /// Where sessions are spooled. Must be set; the binary's default (an
    /// empty path here) is `spool/` in Airlock's data directory.
    pub spool_dir: PathBuf,
    /// The most bytes the spool holds. Past it, new sessions are refused and
    /// live ones are ended.
    pub spool_max_bytes: u64,
    /// Every frame is synced to disk as it is written, and sessions wait for
    /// the recorder to store a statement before it is forwarded
    /// ([`SessionTap::durable`]).
    pub strict: bool,
    /// In strict mode, how long a session waits for the recorder to store
    /// what the client sent before the session is ended (fail closed).
    pub strict_timeout_ms: u64,
    /// The longest wait between attempts to reach the recorder.
    pub reconnect_max_ms: u64,
    /// Sent as `authorization: Bearer <token>`; empty sends none. Set from
    /// the worker's token, never from this section.
    #[serde(skip)]
    pub worker_token: String,
    /// TLS toward the recorder: the worker's, never from this section.
    #[serde(skip)]
    pub grpc_tls: airlock_proto::transport::ClientTls,
    /// Named in every session's metadata.
    #[serde(skip)]
    pub worker_id: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            enabled: true,
            recorder_url: "http://127.0.0.1:8082".into(),
            spool_dir: PathBuf::new(),
            spool_max_bytes: 1 << 30,
            strict: false,
            strict_timeout_ms: 5_000,
            reconnect_max_ms: 10_000,
            worker_token: String::new(),
            grpc_tls: airlock_proto::transport::ClientTls::default(),
            worker_id: String::new(),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("enabled", &self.enabled)
            .field("recorder_url", &self.recorder_url)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("strict", &self.strict)
            .field("strict_timeout_ms", &self.strict_timeout_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Refuses settings the worker cannot record with, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.spool_dir.as_os_str().is_empty() {
            return Err("worker.recording.spool_dir must be set".into());
        }
        if self.spool_max_bytes == 0 {
            return Err("worker.recording.spool_max_bytes must be greater than zero".into());
        }
        if self.strict && self.strict_timeout_ms == 0 {
            return Err("worker.recording.strict_timeout_ms must be greater than zero".into());
        }
        if self.reconnect_max_ms == 0 {
            return Err("worker.recording.reconnect_max_ms must be greater than zero".into());
        }
        // Whether http:// may leave this machine is the worker's `grpc_tls`
        // to decide, when the uploader is built.
        if !self.recorder_url.starts_with("http://") && !self.recorder_url.starts_with("https://") {
            return Err("worker.recording.recorder_url must be an http:// or https:// URL".into());
        }
        Ok(())
    }
}

/// A session's metadata, recorded first.
#[derive(Debug, Clone)]
pub struct SessionOpen {
    pub tenant: TenantId,
    pub session: SessionId,
    pub connection_id: String,
    pub principal_subject: String,
    pub principal_issuer: String,
    /// The client's address as the worker saw it.
    pub client_addr: SocketAddr,
    /// The grant's role on the target.
    pub target_role: String,
    /// "postgres".
    pub protocol: String,
    pub started_at: SystemTime,
    /// The grant that admitted the session.
    pub grant_id: String,
    /// The role the session logs in to the target as, when known as it starts; empty otherwise.
    pub session_role: String,
}

impl SessionOpen {
    /// The open as the recorder takes it; texts past the recorder's limit are cut.
    fn to_proto(&self, worker_id: &str) -> v1::SessionOpen {
        let started_at_unix_ms =
            self.started_at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut open = v1::SessionOpen {
            tenant_id: self.tenant.to_string(),
            session_id: self.session.to_string(),
            connection_id: self.connection_id.clone(),
            principal_subject: self.principal_subject.clone(),
            principal_issuer: self.principal_issuer.clone(),
            client_addr: self.client_addr.to_string(),
            worker_id: worker_id.to_owned(),
            target_role: self.target_role.clone(),
            protocol: self.protocol.clone(),
            started_at_unix_ms,
            grant_id: self.grant_id.clone(),
            session_role: self.session_role.clone(),
        };
        for text in [
            &mut open.connection_id,
            &mut open.principal_subject,
            &mut open.principal_issuer,
            &mut open.worker_id,
            &mut open.target_role,
            &mut open.protocol,
            &mut open.grant_id,
            &mut open.session_role,
        ] {
            spool::truncate_utf8(text, spool::MAX_METADATA_FIELD);
        }
        open
    }
}

/// Why a session cannot be recorded. Every one ends (or refuses) the session.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the recording spool is full ({used} of {bound} bytes): the recorder has not taken the spooled sessions")]
    SpoolFull { used: u64, bound: u64 },
    #[error("the recording spool cannot be written ({}): {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
    #[error("the recorder refused the session's recording: {reason}")]
    Failed { reason: String },
    #[error("the session's recording has ended")]
    Ended,
    #[error("recording stopped: the worker is shutting down")]
    Stopped,
    #[error("seq {seq} was not recorded (the last recorded is {last})")]
    NotRecorded { seq: u64, last: u64 },
}

impl Error {
    /// What the client is told: no path, no internal detail.
    pub fn client_message(&self) -> &'static str {
        match self {
            Error::SpoolFull { .. } => "session recording is unavailable (the recording spool is full)",
            Error::Write { .. } | Error::Failed { .. } | Error::NotRecorded { .. } => {
                "session recording is unavailable"
            }
            Error::Ended => "the session's recording has ended",
            Error::Stopped => "the gateway is shutting down",
        }
    }
}

/// The worker's recording: opens sessions on the spool. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
    restarted: Arc<Mutex<Option<mpsc::UnboundedReceiver<RestartedSession>>>>,
}

/// A session an earlier run of the worker left open, as its spool file had it.
#[derive(Debug, Clone)]
pub struct RestartedSession {
    pub tenant: TenantId,
    pub session: SessionId,
    /// As the session's tap wrote it when the session started.
    pub open: v1::SessionOpen,
    /// Bytes recorded from the client and to it.
    pub client_bytes: u64,
    pub server_bytes: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("spool_dir", &self.inner.spool_dir)
            .field("spool_bytes", &self.spool_bytes())
            .finish_non_exhaustive()
    }
}

/// What the taps and the uploader share.
struct Inner {
    spool_dir: PathBuf,
    bound: u64,
    strict: bool,
    /// How long a strict session waits for [`SessionTap::durable`].
    strict_timeout: std::time::Duration,
    worker_id: String,
    /// Bytes in the spool's files. The only state every session's hot path touches.
    used: AtomicU64,
    /// Sessions with something for the uploader. Unbounded, yet never longer
    /// than twice the number of spooled sessions: a session is sent only when
    /// its `queued` or its `urgent` flag goes from clear to set; the uploader
    /// clears `queued` when it reads the session's file, `urgent` on receipt.
    wake: mpsc::UnboundedSender<Arc<Session>>,
    /// Bumped each time the spool refuses a write for its bound: live sessions end.
    full: watch::Sender<u64>,
    /// Set by a refusal for the bound, cleared when the uploader frees bytes.
    full_latch: AtomicBool,
    /// Sessions whose spool file is not closed by the recorder yet.
    live: watch::Sender<usize>,
    cancel: CancellationToken,
    /// Sessions an earlier run left open, as their recordings are ended
    /// (`Recorder::restarted_sessions`). Unbounded, but one per file the
    /// spool held at start.
    restarted: mpsc::UnboundedSender<RestartedSession>,
}

impl Inner {
    /// Takes `len` bytes of the spool. `within_bound` refuses past the bound,
    /// and while the spool is full: from a refusal until the uploader frees
    /// some of it (sessions told to end do not go on with their small frames).
    fn reserve(&self, len: u64, within_bound: bool) -> Result<(), Error> {
        let bound = self.bound;
        if within_bound && self.full_latch.load(Ordering::Acquire) {
            return Err(Error::SpoolFull { used: self.used.load(Ordering::Acquire), bound });
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(len)?;
                (after <= bound || !within_bound).then_some(after)
            })
            .map(|_| ())
            .map_err(|used| {
                self.spool_full();
                Error::SpoolFull { used, bound }
            })
    }

    /// Gives back bytes reserved for a write that failed.
    fn unreserve(&self, len: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(len)));
    }

    /// Bytes left the spool: it takes sessions again.
    fn freed(&self, len: u64) {
        self.unreserve(len);
        self.full_latch.store(false, Ordering::Release);
    }

    fn spool_full(&self) {
        if !self.full_latch.swap(true, Ordering::AcqRel) {
            tracing::warn!(bound = self.bound, "the recording spool is full: ending live sessions, refusing new ones");
        }
        self.full.send_modify(|n| *n += 1);
    }

    /// Tells the uploader that `session` has something for it.
    fn wake(&self, session: &Arc<Session>) {
        if !session.queued.swap(true, Ordering::AcqRel) {
            let _ = self.wake.send(session.clone());
        }
    }

    /// Tells the uploader that someone waits for `session`'s frames to be
    /// stored: it sends them without waiting for more to gather.
    fn wake_urgent(&self, session: &Arc<Session>) {
        if !session.urgent.swap(true, Ordering::AcqRel) {
            let _ = self.wake.send(session.clone());
        }
    }

    fn session_gone(&self) {
        self.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One spooled session, as its tap and the uploader share it.
struct Session {
    tenant: TenantId,
    id: SessionId,
    /// `id` as text, as every frame carries it.
    id_text: String,
    path: PathBuf,
    /// The file its tap appends to, opened for reading too: the uploader
    /// reads through it (positionally), so a session holds one descriptor
    /// for its spool file. Unset for a session an earlier run left.
    file: OnceLock<Arc<std::fs::File>>,
    open: v1::SessionOpen,
    /// Where the frames start in the file.
    data_start: u64,
    /// The file's length in whole records: the uploader reads up to here.
    committed: AtomicU64,
    /// Left by an earlier run of the worker: no tap writes it.
    recovered: bool,
    /// Its tap is gone without recording the end.
    abandoned: AtomicBool,
    /// Written since the uploader last read its file; in the wake queue.
    queued: AtomicBool,
    /// In the wake queue for a waiter on `durable`.
    urgent: AtomicBool,
    /// The highest seq a [`SessionTap::durable`] caller waits for.
    flush_wanted: AtomicU64,
    /// Every frame up to here is stored by the recorder.
    durable: watch::Sender<u64>,
    /// The recorder closed the session and its file is deleted.
    closed: AtomicBool,
    /// Why the recorder refused the session.
    failure: OnceLock<String>,
    /// Cancelled when the session cannot be recorded any more, or the worker stops.
    stop: CancellationToken,
}

impl Session {
    fn new(open: v1::SessionOpen, tenant: TenantId, id: SessionId, path: PathBuf, data_start: u64, len: u64) -> Self {
        Self {
            tenant,
            id,
            id_text: id.to_string(),
            path,
            file: OnceLock::new(),
            open,
            data_start,
            committed: AtomicU64::new(len),
            recovered: false,
            abandoned: AtomicBool::new(false),
            queued: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            flush_wanted: AtomicU64::new(0),
            durable: watch::channel(0).0,
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Why the session stopped.
    fn stop_error(&self) -> Error {
        match self.failure.get() {
            Some(reason) => Error::Failed { reason: reason.clone() },
            None if self.closed.load(Ordering::Acquire) => Error::Ended,
            None => Error::Stopped,
        }
    }
}

impl Recorder {
    /// Opens the spool (recovering what an earlier run left in it) and starts
    /// the uploader on `tracker`; cancelling `cancel` stops it. The spool is
    /// kept: the next start uploads what is left.
    pub async fn start(options: Options, cancel: CancellationToken, tracker: &TaskTracker) -> anyhow::Result<Self> {
        options.validate().map_err(anyhow::Error::msg)?;
        let dir = options.spool_dir.clone();
        let scan = tokio::task::spawn_blocking(move || {
            create_private_dir(&dir)?;
            spool::scan(&dir).with_context(|| format!("reading the recording spool {}", dir.display()))
        })
        .await
        .context("reading the recording spool")??;

        let (wake, wake_rx) = mpsc::unbounded_channel();
        let (restarted, restarted_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            spool_dir: options.spool_dir.clone(),
            bound: options.spool_max_bytes,
            strict: options.strict,
            strict_timeout: std::time::Duration::from_millis(options.strict_timeout_ms),
            worker_id: options.worker_id.clone(),
            used: AtomicU64::new(scan.bytes),
            wake,
            full: watch::channel(0).0,
            full_latch: AtomicBool::new(false),
            live: watch::channel(scan.sessions.len()).0,
            cancel: cancel.clone(),
            restarted,
        });
        if !scan.sessions.is_empty() {
            tracing::info!(
                sessions = scan.sessions.len(),
                bytes = scan.bytes,
                "uploading the sessions an earlier run left in the recording spool"
            );
        }
        for found in scan.sessions {
            let mut session =
                Session::new(found.open, found.tenant, found.session, found.path, found.data_start, found.len);
            session.recovered = true;
            session.stop = cancel.child_token();
            inner.wake(&Arc::new(session));
        }
        let uploader = uploader::Uploader::new(inner.clone(), &options, wake_rx)?;
        tracker.spawn(uploader.run(cancel));
        Ok(Self { inner, restarted: Arc::new(Mutex::new(Some(restarted_rx))) })
    }

    /// The sessions an earlier run of this worker left open (a crash, a
    /// kill), each as the uploader ends its recording ("worker restarted"):
    /// the worker closes them in the log too. Once: later calls get `None`.
    pub fn restarted_sessions(&self) -> Option<mpsc::UnboundedReceiver<RestartedSession>> {
        self.restarted.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Starts recording a session: creates its spool file and writes its
    /// metadata. Refused when the spool is full or cannot be written; the
    /// session must then be refused too.
    pub fn open_session(&self, meta: SessionOpen) -> Result<SessionTap, Error> {
        let inner = &self.inner;
        if inner.cancel.is_cancelled() {
            return Err(Error::Stopped);
        }
        let used = inner.used.load(Ordering::Acquire);
        if used >= inner.bound || inner.full_latch.load(Ordering::Acquire) {
            inner.spool_full();
            return Err(Error::SpoolFull { used, bound: inner.bound });
        }
        let open = meta.to_proto(&inner.worker_id);
        let dir = inner.spool_dir.join(meta.tenant.to_string());
        let path = dir.join(format!("{}.{}", meta.session, spool::SPOOL_EXT));
        let write_error = |error| Error::Write { path: path.clone(), error };
        let mut buf = Vec::with_capacity(512);
        spool::put_header(&mut buf);
        spool::put_message(&mut buf, &open).map_err(|e| write_error(std::io::Error::other(e.to_string())))?;
        let len = buf.len() as u64;
        inner.reserve(len, true)?;
        let file = match create_spool_file(&dir, &path, &buf, inner.strict) {
            Ok(file) => file,
            Err(error) => {
                inner.unreserve(len);
                return Err(write_error(error));
            }
        };
        let file = Arc::new(file);
        let mut session = Session::new(open, meta.tenant, meta.session, path, len, len);
        session.stop = inner.cancel.child_token();
        let _ = session.file.set(file.clone());
        let session = Arc::new(session);
        inner.live.send_modify(|n| *n += 1);
        inner.wake(&session);
        Ok(SessionTap::new(inner.clone(), session, file))
    }

    /// Bytes in the spool now.
    pub fn spool_bytes(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Resolves once every spooled session is closed by the recorder and its
    /// file deleted (sessions opened meanwhile included).
    pub async fn drained(&self) {
        let mut live = self.inner.live.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }
}

/// Creates a session's file and writes its first records.
fn create_spool_file(
    dir: &std::path::Path,
    path: &std::path::Path,
    first: &[u8],
    strict: bool,
) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    let mut options = std::fs::OpenOptions::new();
    // Read too: the uploader reads the session's records through this handle.
    options.append(true).read(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        builder.mode(0o700);
        options.mode(0o600);
    }
    builder.create(dir)?;
    let mut file = options.open(path)?;
    let written = file.write_all(first).and_then(|()| if strict { file.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    if strict {
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Makes a file's creation in `dir` durable.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates the spool directory readable by its owner only: it holds what
/// clients and targets said.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), "could not make the recording spool private: {e}");
        }
    }
    Ok(())
}

fn now_unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
