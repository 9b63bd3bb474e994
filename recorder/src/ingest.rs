//! `RecorderService.Ingest`: a worker's stream of frames for any number of
//! sessions, and the acknowledgements going back.
//!
//! Each open session gets a task that owns its [`Writer`], so one session's
//! stores never wait for another's. The stream's task routes frames to them;
//! acks from every session task go back through one queue.
//!
//! One writer per session, across streams: a session opened on a second stream
//! (a worker that reconnected before the recorder noticed the first stream was
//! gone) takes it over. The earlier task is cancelled, and the new one starts
//! only once the earlier one has let go of the session's lock, that is after
//! any store it was making returned; it then reads the chain from the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tracing::Instrument;

use crate::error::Error;
use crate::manifest::SessionInfo;
use crate::signing::Signer;
use crate::store::{SessionRef, Store};
use crate::writer::{Accepted, Refused, Writer};

/// Acks waiting to be sent on one stream. When it is full (the worker does not
/// read its acks), session tasks wait, then the stream stops reading frames.
const ACK_QUEUE: usize = 256;
/// Batches of frames waiting for one session's task. When it is full (a store
/// is slow), the stream stops reading requests. At most this many requests'
/// worth of frames wait per session.
const SESSION_QUEUE: usize = 32;
/// Sessions that ended on a stream, remembered so that the frames a worker
/// resends after a session's end are absorbed. Older ones are forgotten (a
/// frame for one then asks the worker to open the session again).
const CLOSED_REMEMBERED: usize = 4096;
/// The largest text of one metadata field of an open.
const MAX_METADATA_FIELD: usize = 4096;

pub type AckStream = ReceiverStream<Result<v1::IngestAck, Status>>;
type Outbound = mpsc::Sender<Result<v1::IngestAck, Status>>;

/// What every Ingest stream shares.
pub struct Ingest {
    store: Store,
    signer: Arc<Signer>,
    chunk_bytes: usize,
    interval: Duration,
    registry: Arc<Registry>,
    tracker: TaskTracker,
    /// On shutdown, streams stop reading and sessions store what they buffered.
    shutdown: CancellationToken,
}

impl Ingest {
    pub fn new(
        store: Store,
        signer: Arc<Signer>,
        chunk_bytes: usize,
        interval: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self { store, signer, chunk_bytes, interval, registry: Arc::new(Registry::default()), tracker, shutdown }
    }

    /// Serves one Ingest stream: reads `inbound` in a task of its own and
    /// returns the stream of acks.
    pub fn serve<S>(self: &Arc<Self>, inbound: S) -> AckStream
    where
        S: Stream<Item = Result<v1::IngestRequest, Status>> + Send + Unpin + 'static,
    {
        let (out, acks) = mpsc::channel(ACK_QUEUE);
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let stream = StreamState {
            ingest: self.clone(),
            out,
            abort: self.shutdown.child_token(),
            open: HashMap::new(),
            closed: Closed::default(),
            closed_tx,
            closed_rx,
            generations: 0,
        };
        self.tracker.spawn(stream.run(inbound));
        ReceiverStream::new(acks)
    }
}

/// Frames of one session from one request, in order; `flush`: store them
/// (and what the session buffered before) now.
struct Incoming {
    frames: Vec<v1::Frame>,
    flush: bool,
}

/// A session task's word to its stream that the session closed at `last_seq`.
struct ClosedEvent {
    session: SessionId,
    generation: u64,
    last_seq: u64,
}

struct OpenSession {
    generation: u64,
    tx: mpsc::Sender<Incoming>,
}

struct StreamState {
    ingest: Arc<Ingest>,
    out: Outbound,
    /// Cancelled when the stream fails: its sessions stop without storing what they buffered.
    abort: CancellationToken,
    open: HashMap<SessionId, OpenSession>,
    closed: Closed,
    /// Unbounded, yet never longer than the number of sessions open on this
    /// stream: each session task sends at most one event.
    closed_tx: mpsc::UnboundedSender<ClosedEvent>,
    closed_rx: mpsc::UnboundedReceiver<ClosedEvent>,
    generations: u64,
}

impl StreamState {
    async fn run<S>(mut self, mut inbound: S)
    where
        S: Stream<Item = Result<v1::IngestRequest, Status>> + Send + Unpin + 'static,
    {
        let shutdown = self.ingest.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                // A session task failed and already told the worker why.
                _ = self.abort.cancelled() => break,
                // Like the worker closing the stream: sessions store what they buffered.
                _ = shutdown.cancelled() => break,
                Some(event) = self.closed_rx.recv() => self.session_closed(event),
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        if let Err(status) = self.route(request).await {
                            tracing::info!("refused an ingest stream: {}", status.message());
                            // Stop the sessions first: their acks then leave room for the error.
                            self.abort.cancel();
                            tokio::select! {
                                _ = self.out.send(Err(status)) => {}
                                _ = shutdown.cancelled() => {}
                            }
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!("an ingest stream broke: {}", status.message());
                        break;
                    }
                    None => break,
                },
            }
        }
        // Dropping the senders lets each session task store what it buffered and stop.
    }

    async fn route(&mut self, request: v1::IngestRequest) -> Result<(), Status> {
        if request.opens.is_empty() && request.frames.is_empty() && request.flush_sessions.is_empty() {
            return Err(Status::invalid_argument("an ingest request needs opens, frames or sessions to flush"));
        }
        let mut flush = HashSet::with_capacity(request.flush_sessions.len());
        for id in &request.flush_sessions {
            let id: SessionId = id.parse().map_err(|_| Status::invalid_argument("flush_sessions: not a session id"))?;
            flush.insert(id);
        }
        for open in request.opens {
            self.open(open)?;
        }
        // Each run of one session's frames goes to its task in one piece; the
        // last run of a session named in `flush_sessions` carries the flush.
        let mut runs: Vec<(SessionId, Vec<v1::Frame>, bool)> = Vec::new();
        for frame in request.frames {
            match runs.last_mut() {
                Some((_, run, _)) if run.first().is_some_and(|f| f.session_id == frame.session_id) => run.push(frame),
                _ => {
                    let session: SessionId = frame
                        .session_id
                        .parse()
                        .map_err(|_| Status::invalid_argument("frame.session_id: not an id"))?;
                    runs.push((session, vec![frame], false));
                }
            }
        }
        for (session, _, flush_it) in runs.iter_mut().rev() {
            *flush_it = flush.remove(session);
        }
        for (session, run, flush_it) in runs {
            self.frames(session, run, flush_it).await?;
        }
        // A named session without frames here stores what it holds.
        for session in flush {
            if self.open.contains_key(&session) {
                self.frames(session, Vec::new(), true).await?;
            }
        }
        Ok(())
    }

    fn open(&mut self, open: v1::SessionOpen) -> Result<(), Status> {
        let tenant: TenantId =
            open.tenant_id.parse().map_err(|_| Status::invalid_argument("open.tenant_id: not an id"))?;
        let session: SessionId =
            open.session_id.parse().map_err(|_| Status::invalid_argument("open.session_id: not an id"))?;
        check_metadata(&open)?;
        self.drain_closed();
        if self.open.get(&session).is_some_and(|o| !o.tx.is_closed()) {
            return Err(Status::invalid_argument(format!("session {session} is already open on this stream")));
        }
        self.closed.remove(&session);
        self.generations += 1;
        let generation = self.generations;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let cancel = self.abort.child_token();
        let s = SessionRef::new(tenant, session);
        let claim = self.ingest.registry.claim(s, cancel.clone());
        let mut info = SessionInfo::from_open(&open);
        info.tenant_id = tenant.to_string();
        info.session_id = session.to_string();
        let span = tracing::info_span!(
            "recording",
            tenant = %tenant,
            session = %session,
            principal = %info.principal_subject,
            connection = %info.connection_id,
            worker = %info.worker_id,
            protocol = %info.protocol,
        );
        let task = SessionTask {
            ingest: self.ingest.clone(),
            s,
            generation,
            info,
            rx,
            out: self.out.clone(),
            cancel,
            abort: self.abort.clone(),
            closed_tx: self.closed_tx.clone(),
            closed_told: false,
            claim,
        };
        self.ingest.tracker.spawn(task.run().instrument(span));
        self.open.insert(session, OpenSession { generation, tx });
        Ok(())
    }

    /// Hands `frames`, all of `session` and in order, to its task.
    async fn frames(&mut self, session: SessionId, frames: Vec<v1::Frame>, flush: bool) -> Result<(), Status> {
        if let Some(f) = frames.iter().find(|f| f.seq == 0) {
            return Err(Status::invalid_argument(format!("session {session}: seq starts at 1, got {}", f.seq)));
        }
        self.drain_closed();
        let mut incoming = Incoming { frames, flush };
        if let Some(open) = self.open.get(&session) {
            let tx = open.tx.clone();
            tokio::select! {
                biased;
                sent = tx.send(incoming) => match sent {
                    Ok(()) => return Ok(()),
                    // The session's task is gone: the session closed meanwhile, or
                    // was opened on another stream, or failed.
                    Err(mpsc::error::SendError(back)) => incoming = back,
                },
                _ = self.abort.cancelled() => return Ok(()),
                _ = self.ingest.shutdown.cancelled() => return Ok(()),
            }
            self.drain_closed();
            if !self.closed.contains(&session) {
                self.open.remove(&session);
                return Err(Status::aborted(format!(
                    "session {session} is no longer open on this stream (it was opened on another); open it again"
                )));
            }
        }
        let Some(seq) = incoming.frames.iter().map(|f| f.seq).max() else { return Ok(()) };
        match self.closed.last_seq(&session) {
            Some(last) if seq <= last => Ok(()),
            Some(last) => {
                Err(Status::failed_precondition(format!("session {session} ended at seq {last}, got seq {seq}")))
            }
            None => {
                let first = incoming.frames.iter().map(|f| f.seq).min().unwrap_or(seq);
                Err(Status::failed_precondition(format!("session {session}: frame {first} before the session's open")))
            }
        }
    }

    fn drain_closed(&mut self) {
        while let Ok(event) = self.closed_rx.try_recv() {
            self.session_closed(event);
        }
    }

    fn session_closed(&mut self, event: ClosedEvent) {
        if self.open.get(&event.session).is_some_and(|o| o.generation == event.generation) {
            // The task drains what it was sent, then stops.
            self.open.remove(&event.session);
            self.closed.insert(event.session, event.last_seq);
        }
    }
}

fn check_metadata(open: &v1::SessionOpen) -> Result<(), Status> {
    let fields = [
        ("connection_id", &open.connection_id),
        ("principal_subject", &open.principal_subject),
        ("principal_issuer", &open.principal_issuer),
        ("client_addr", &open.client_addr),
        ("worker_id", &open.worker_id),
        ("target_role", &open.target_role),
        ("protocol", &open.protocol),
    ];
    for (name, value) in fields {
        if value.len() > MAX_METADATA_FIELD {
            return Err(Status::invalid_argument(format!("open.{name}: over {MAX_METADATA_FIELD} bytes")));
        }
    }
    Ok(())
}

/// Sessions that ended on one stream, the oldest forgotten first.
#[derive(Default)]
struct Closed {
    last_seq: HashMap<SessionId, u64>,
    order: VecDeque<SessionId>,
}

impl Closed {
    fn insert(&mut self, session: SessionId, last_seq: u64) {
        if self.last_seq.insert(session, last_seq).is_none() {
            self.order.push_back(session);
        }
        while self.order.len() > CLOSED_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.last_seq.remove(&old);
            }
        }
    }

    fn remove(&mut self, session: &SessionId) {
        if self.last_seq.remove(session).is_some() {
            self.order.retain(|s| s != session);
        }
    }

    fn contains(&self, session: &SessionId) -> bool {
        self.last_seq.contains_key(session)
    }

    fn last_seq(&self, session: &SessionId) -> Option<u64> {
        self.last_seq.get(session).copied()
    }
}

/// Why a session task stopped its stream.
enum Failure {
    Refused(Refused),
    Store(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

impl Failure {
    fn status(&self, session: SessionId) -> Status {
        match self {
            Failure::Refused(r @ Refused::Gap { expected, .. }) => {
                let mut status = Status::failed_precondition(format!("session {session}: {r}"));
                let metadata = status.metadata_mut();
                if let Ok(value) = session.to_string().parse() {
                    metadata.insert("airlock-session-id", value);
                }
                if let Ok(value) = expected.to_string().parse() {
                    metadata.insert("airlock-expected-seq", value);
                }
                status
            }
            Failure::Refused(r @ Refused::Ended { .. }) => {
                Status::failed_precondition(format!("session {session}: {r}"))
            }
            Failure::Refused(r @ Refused::Invalid { .. }) => {
                Status::invalid_argument(format!("session {session}: {r}"))
            }
            Failure::Store(Error::Exists { key }) => Status::aborted(format!(
                "session {session}: {key} is already stored (another recorder may be writing this session); open it again"
            )),
            Failure::Store(e @ (Error::Chunk { .. } | Error::Manifest { .. })) => {
                Status::data_loss(format!("session {session}: {e}"))
            }
            Failure::Store(Error::Storage(_) | Error::NotFound { .. }) => {
                Status::unavailable(format!("session {session}: the recording could not be stored; open it again"))
            }
        }
    }
}

struct SessionTask {
    ingest: Arc<Ingest>,
    s: SessionRef,
    generation: u64,
    info: SessionInfo,
    rx: mpsc::Receiver<Incoming>,
    out: Outbound,
    /// Cancelled when the session is opened on another stream, or its stream fails.
    cancel: CancellationToken,
    abort: CancellationToken,
    closed_tx: mpsc::UnboundedSender<ClosedEvent>,
    /// The stream was told the session closed.
    closed_told: bool,
    claim: Claim,
}

impl SessionTask {
    async fn run(mut self) {
        let result = self.record().await;
        if let Err(failure) = result {
            if self.cancel.is_cancelled() {
                return;
            }
            match &failure {
                Failure::Refused(r) => tracing::info!("refused a frame: {r}"),
                Failure::Store(e) => tracing::error!("failed to record the session: {e}"),
            }
            let _ = self.send(Err(failure.status(self.s.session))).await;
            self.abort.cancel();
        }
    }

    async fn record(&mut self) -> Result<(), Failure> {
        let _owner = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Ok(()),
            owner = self.claim.acquire() => owner,
        };
        let opened = Writer::open(
            self.s,
            self.info.clone(),
            self.ingest.store.clone(),
            self.ingest.signer.clone(),
            self.ingest.chunk_bytes,
        );
        let mut w = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Ok(()),
            w = opened => w?,
        };
        if w.needs_close() {
            w.close().await?;
        }
        self.ack(&w).await;
        loop {
            let deadline = w.deadline(self.ingest.interval);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(()),
                incoming = self.rx.recv() => match incoming {
                    Some(Incoming { frames, flush }) => self.take(&mut w, frames, flush).await?,
                    // The stream ended or the recorder is stopping: store what is buffered.
                    None => {
                        if w.has_buffered() {
                            w.flush().await?;
                            self.ack(&w).await;
                        }
                        return Ok(());
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    w.flush().await?;
                    self.ack(&w).await;
                }
            }
        }
    }

    /// Takes a batch of frames: a chunk is stored whenever the buffer reaches
    /// its bound (or the session's end is in it), and at the end of the batch
    /// when `flush` asks for it; each store is acknowledged.
    async fn take(&mut self, w: &mut Writer, frames: Vec<v1::Frame>, flush: bool) -> Result<(), Failure> {
        for frame in frames {
            if w.accept(frame).map_err(Failure::Refused)? == Accepted::Buffered && w.wants_flush() {
                self.store(w).await?;
            }
        }
        if flush {
            self.store(w).await?;
        }
        Ok(())
    }

    /// Stores what is buffered (if anything), signs the manifest once the end
    /// is stored, and acknowledges.
    async fn store(&mut self, w: &mut Writer) -> Result<(), Failure> {
        w.flush().await?;
        if w.needs_close() {
            w.close().await?;
        }
        self.ack(w).await;
        Ok(())
    }

    async fn ack(&mut self, w: &Writer) {
        let ack = v1::IngestAck {
            session_id: self.s.session.to_string(),
            durable_seq: w.durable_seq(),
            closed: w.is_closed(),
        };
        let _ = self.send(Ok(ack)).await;
        if w.is_closed() && !self.closed_told {
            self.closed_told = true;
            let event = ClosedEvent { session: self.s.session, generation: self.generation, last_seq: w.durable_seq() };
            let _ = self.closed_tx.send(event);
        }
    }

    async fn send(&self, message: Result<v1::IngestAck, Status>) -> bool {
        tokio::select! {
            biased;
            sent = self.out.send(message) => sent.is_ok(),
            _ = self.cancel.cancelled() => false,
            _ = self.ingest.shutdown.cancelled() => false,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which task writes each session, process-wide.
#[derive(Default)]
struct Registry {
    sessions: Mutex<HashMap<SessionRef, Owner>>,
    epochs: AtomicU64,
}

struct Owner {
    epoch: u64,
    cancel: CancellationToken,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Registry {
    /// Makes the caller the session's writer-to-be, cancelling the one before.
    fn claim(self: &Arc<Self>, s: SessionRef, cancel: CancellationToken) -> Claim {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let owner = sessions.entry(s).or_insert_with(|| Owner {
            epoch,
            cancel: cancel.clone(),
            lock: Arc::new(tokio::sync::Mutex::new(())),
        });
        if owner.epoch != epoch {
            owner.cancel.cancel();
            owner.epoch = epoch;
            owner.cancel = cancel;
        }
        Claim { registry: self.clone(), s, epoch, lock: owner.lock.clone() }
    }
}

/// A session task's claim; the session is forgotten when the last claim goes.
struct Claim {
    registry: Arc<Registry>,
    s: SessionRef,
    epoch: u64,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Claim {
    /// Waits until the task before (if any) has stopped writing the session.
    async fn acquire(&self) -> OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut sessions = self.registry.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(&self.s).is_some_and(|o| o.epoch == self.epoch) {
            sessions.remove(&self.s);
        }
    }
}
