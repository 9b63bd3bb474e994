//! The uploader: one `Ingest` stream to the recorder carries every spooled
//! session. Each session is opened on the stream, its open's ack says how far
//! the recorder holds it, and its frames follow from there, read from its
//! spool file up to what its tap has finished writing. Acks wake
//! [`SessionTap::durable`](super::SessionTap::durable) waiters; a closed
//! session's file is deleted. When the stream fails, the uploader reconnects
//! with capped exponential backoff and opens every session again (the
//! recorder ignores frames it holds already).
//!
//! A session left by an earlier run, or whose tap went without its end, gets
//! an end made up once its file is sent, so that the recorder closes it and
//! signs its manifest. A file left by an earlier run is cut at its first
//! record that is torn or out of place. A session the recorder refuses (its
//! stored recording is damaged, or it takes none of its frames) is given up:
//! its session is told to end and its file is kept, renamed `.failed`.
//!
//! Spool files are read with plain blocking reads, a bounded buffer at a time:
//! what is read was just written, and comes from the page cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use airlock_core::SessionId;
use airlock_proto::v1::recorder_service_client::RecorderServiceClient;
use airlock_proto::v1::{self, frame::Body};
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::spool::{self, FAILED_EXT, Next, SpoolError};
use super::{Inner, Options, Session, now_unix_micros};

/// Requests waiting to go out on the stream. When it is full (the recorder
/// takes frames slowly), the uploader stops reading spool files; it goes on
/// reading acks.
const REQUEST_QUEUE: usize = 16;
/// Requests made in one turn before acks and wakes are looked at again.
const SEND_BATCH: usize = 16;
/// A request takes frames (and opens) until it holds this many bytes; one
/// frame may take it past, up to the largest frame. The recorder reads
/// requests of up to a largest frame plus 1 MiB.
const REQUEST_TARGET_BYTES: usize = 256 << 10;
/// How long written frames wait for more to gather before they are sent,
/// unless someone waits for them to be stored. Recording's cost on the
/// session's hot path is then one write into its file: the uploader is woken,
/// and a request made, about once per session per `LINGER`, not per frame.
const LINGER: Duration = Duration::from_millis(5);
/// A sent frame's seq and offset are kept every this many bytes, so that a
/// replay reads a file from near its first unacknowledged frame. Between two
/// acks a session keeps about (bytes in flight / this) of them.
const CHECKPOINT_BYTES: u64 = 256 << 10;
/// The first wait before reconnecting; it doubles up to `reconnect_max_ms`.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a recorder that vanished without closing the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The end made up for a session an earlier run of the worker left open.
pub const REASON_RESTARTED: &str = "worker restarted";
/// ... and for one whose tap went without recording its end.
pub const REASON_ABANDONED: &str = "the session stopped without ending its recording";

pub(super) struct Uploader {
    inner: Arc<Inner>,
    client: RecorderServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    url: String,
    reconnect_max: Duration,
    wake: mpsc::UnboundedReceiver<Arc<Session>>,
    uploads: HashMap<SessionId, Upload>,
    /// Sessions with something to send, in turn.
    run: VecDeque<SessionId>,
    /// When what is in `run` is to be sent, at the latest.
    due: Option<tokio::time::Instant>,
    /// Sending now: `due` passed, or someone waits for a frame to be stored.
    sending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not opened on this stream yet.
    Unopened,
    /// Its open is sent; its ack says where to resume.
    Opening,
    Streaming,
}

/// One session's upload, as the uploader alone sees it.
struct Upload {
    session: Arc<Session>,
    reader: spool::Reader,
    phase: Phase,
    /// In `run`.
    in_run: bool,
    /// Frames below this seq are stored: read past, not sent.
    resume: u64,
    /// The seq the next record read must have.
    next_seq: u64,
    /// The highest frame sent on this stream.
    sent: Option<u64>,
    /// The highest frame sent with `flush` on this stream.
    flushed: u64,
    /// The highest seq the recorder acknowledged.
    durable: u64,
    /// `(seq, offset)` of frames sent, about `CHECKPOINT_BYTES` apart; the
    /// first at or before the first unacknowledged frame.
    checkpoints: VecDeque<(u64, u64)>,
    /// The file's end frame was read.
    end_read: bool,
    /// An end the file lacks was sent on this stream.
    end_made: bool,
    /// The highest seq read so far, and the bytes those frames carried each
    /// way (the totals of an end made up).
    read_to: u64,
    client_bytes: u64,
    server_bytes: u64,
}

impl Upload {
    fn new(session: Arc<Session>) -> Self {
        let reader = spool::Reader::with_file(&session.path, session.data_start, session.file.get().cloned());
        Self {
            session,
            reader,
            phase: Phase::Unopened,
            in_run: false,
            resume: 1,
            next_seq: 1,
            sent: None,
            flushed: 0,
            durable: 0,
            checkpoints: VecDeque::new(),
            end_read: false,
            end_made: false,
            read_to: 0,
            client_bytes: 0,
            server_bytes: 0,
        }
    }

    /// The recorder holds the session up to `stored`: read from the last
    /// checkpoint at or before the next frame (or from the first frame).
    fn start_from(&mut self, stored: u64) {
        self.resume = stored.saturating_add(1);
        while self.checkpoints.back().is_some_and(|&(seq, _)| seq > self.resume) {
            self.checkpoints.pop_back();
        }
        let (seq, offset) = self.checkpoints.back().copied().unwrap_or((1, self.session.data_start));
        self.rewind(seq, offset);
        self.end_read = false;
        self.end_made = false;
        self.phase = Phase::Streaming;
    }

    fn rewind(&mut self, seq: u64, offset: u64) {
        self.next_seq = seq;
        self.reader.seek(offset);
    }

    fn note_sent(&mut self, seq: u64, offset: u64) {
        if self.sent.is_none_or(|sent| seq > sent) {
            self.sent = Some(seq);
        }
        if self.checkpoints.back().is_none_or(|&(last, at)| seq > last && offset >= at + CHECKPOINT_BYTES) {
            self.checkpoints.push_back((seq, offset));
        }
    }

    /// Takes the recorder's word that every frame up to `seq` is stored;
    /// true when that is news.
    fn acknowledged(&mut self, seq: u64) -> bool {
        if seq <= self.durable {
            return false;
        }
        self.durable = seq;
        while self.checkpoints.get(1).is_some_and(|&(next, _)| next <= seq.saturating_add(1)) {
            self.checkpoints.pop_front();
        }
        self.session.durable.send_if_modified(|durable| {
            let news = seq > *durable;
            *durable = (*durable).max(seq);
            news
        });
        true
    }

    /// Someone waits for a frame the recorder was not asked to store yet.
    fn wants_flush(&self) -> bool {
        self.session.flush_wanted.load(Ordering::Acquire) > self.flushed.max(self.durable)
    }

    fn count(&mut self, frame: &v1::Frame) {
        if frame.seq <= self.read_to {
            return;
        }
        self.read_to = frame.seq;
        match &frame.body {
            Some(Body::ClientBytes(b)) => self.client_bytes = self.client_bytes.saturating_add(b.len() as u64),
            Some(Body::ServerBytes(b)) => self.server_bytes = self.server_bytes.saturating_add(b.len() as u64),
            _ => {}
        }
    }
}

enum Outcome {
    Cancelled,
    /// The stream could not be made or broke, and why.
    Broken(String),
}

impl Uploader {
    pub(super) fn new(
        inner: Arc<Inner>,
        options: &Options,
        wake: mpsc::UnboundedReceiver<Arc<Session>>,
    ) -> anyhow::Result<Self> {
        let endpoint = airlock_proto::transport::endpoint(
            "worker.recording.recorder_url",
            &options.recorder_url,
            &options.grpc_tls,
        )?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
        let authorization = if options.worker_token.is_empty() {
            None
        } else {
            let value = format!("Bearer {}", options.worker_token)
                .parse()
                .map_err(|_| anyhow::anyhow!("the worker token has characters that cannot go in a header"))?;
            Some(value)
        };
        Ok(Self {
            inner,
            client: RecorderServiceClient::new(endpoint.connect_lazy()),
            authorization,
            url: options.recorder_url.clone(),
            reconnect_max: Duration::from_millis(options.reconnect_max_ms),
            wake,
            uploads: HashMap::new(),
            run: VecDeque::new(),
            due: None,
            sending: false,
        })
    }

    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(self.reconnect_max);
        loop {
            let why = match self.stream(&cancel, &mut backoff).await {
                Outcome::Cancelled => return,
                Outcome::Broken(why) => why,
            };
            let delay = backoff.next_delay();
            tracing::warn!(
                recorder = %self.url,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                sessions = self.uploads.len(),
                "no stream to the recorder: {why}"
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Makes one stream and serves it until it fails or `cancel`.
    async fn stream(&mut self, cancel: &CancellationToken, backoff: &mut Backoff) -> Outcome {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        let mut client = self.client.clone();
        let response = tokio::select! {
            () = cancel.cancelled() => return Outcome::Cancelled,
            response = client.ingest(request) => response,
        };
        let mut acks = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return Outcome::Broken(describe(&status)),
        };
        tracing::info!(recorder = %self.url, sessions = self.uploads.len(), "connected to the recorder");
        // Every session is opened again on a new stream, at once.
        self.run.clear();
        for (id, upload) in &mut self.uploads {
            upload.phase = Phase::Unopened;
            upload.sent = None;
            upload.flushed = 0;
            upload.in_run = true;
            self.run.push_back(*id);
        }
        self.sending = !self.run.is_empty();
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Outcome::Cancelled,
                message = acks.message() => match message {
                    Ok(Some(ack)) => {
                        if self.on_ack(ack) {
                            backoff.reset();
                        }
                    }
                    Ok(None) => return Outcome::Broken("the recorder ended the stream".into()),
                    Err(status) => return Outcome::Broken(self.on_failure(&status)),
                },
                Some(session) = self.wake.recv() => self.on_wake(session),
                () = sleep_until(self.due), if !self.sending && self.due.is_some() => self.sending = true,
                permit = tx.reserve(), if self.sending => match permit {
                    Ok(permit) => self.send_batch(permit, &tx),
                    Err(_) => return Outcome::Broken("the stream's sending side closed".into()),
                },
            }
        }
    }

    fn on_wake(&mut self, session: Arc<Session>) {
        session.urgent.swap(false, Ordering::AcqRel);
        if session.closed.load(Ordering::Acquire) || session.failure.get().is_some() {
            return;
        }
        let id = session.id;
        let upload = self.uploads.entry(id).or_insert_with(|| Upload::new(session));
        if upload.phase != Phase::Opening {
            let urgent = upload.wants_flush();
            self.queue(id, urgent);
        }
    }

    /// Puts a session in the run (if it is not there), to be sent within
    /// `LINGER`, or at once when `urgent`.
    fn queue(&mut self, id: SessionId, urgent: bool) {
        let Some(upload) = self.uploads.get_mut(&id) else { return };
        if !upload.in_run {
            upload.in_run = true;
            self.run.push_back(id);
        }
        if urgent {
            self.sending = true;
        } else if !self.sending && self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + LINGER);
        }
    }

    /// Makes up to `SEND_BATCH` requests, each of as many sessions' frames as
    /// fit, the sessions in turn. Stops sending once the run is empty.
    fn send_batch(&mut self, first: mpsc::Permit<'_, v1::IngestRequest>, tx: &mpsc::Sender<v1::IngestRequest>) {
        let mut permit = Some(first);
        for _ in 0..SEND_BATCH {
            if self.run.is_empty() {
                break;
            }
            let Some(p) = permit.take().or_else(|| tx.try_reserve().ok()) else { return };
            let request = self.next_request();
            if request.opens.is_empty() && request.frames.is_empty() && request.flush_sessions.is_empty() {
                permit = Some(p);
                continue;
            }
            p.send(request);
        }
        if self.run.is_empty() {
            self.sending = false;
            self.due = None;
        }
    }

    /// The next request: sessions from the front of the run, each read as far
    /// as the request has room; a session with more than fits goes to the back.
    fn next_request(&mut self) -> v1::IngestRequest {
        let mut request = v1::IngestRequest::default();
        let mut size = 0;
        for _ in 0..self.run.len() {
            if size >= REQUEST_TARGET_BYTES {
                break;
            }
            let Some(id) = self.run.pop_front() else { break };
            match self.fill(id, &mut request, &mut size) {
                Ok(true) => self.run.push_back(id),
                Ok(false) => {
                    if let Some(upload) = self.uploads.get_mut(&id) {
                        upload.in_run = false;
                    }
                }
                Err(e) => self.fail(id, format!("its spool file could not be read: {e}")),
            }
        }
        request
    }

    /// Adds what the session has to send now to `request`, until `size`
    /// reaches `REQUEST_TARGET_BYTES`; true when it has more.
    fn fill(&mut self, id: SessionId, request: &mut v1::IngestRequest, size: &mut usize) -> Result<bool, SpoolError> {
        let Some(u) = self.uploads.get_mut(&id) else { return Ok(false) };
        // Cleared before the file is read: a write after this wakes again.
        u.session.queued.swap(false, Ordering::AcqRel);
        match u.phase {
            Phase::Unopened => {
                u.phase = Phase::Opening;
                *size += u.session.open.encoded_len() + 8;
                request.opens.push(u.session.open.clone());
                return Ok(false);
            }
            Phase::Opening => return Ok(false),
            Phase::Streaming => {}
        }
        let wanted = u.session.flush_wanted.load(Ordering::Acquire);
        // A tap marks itself gone after its last write: the flag first, then the length.
        let abandoned = u.session.abandoned.load(Ordering::Acquire);
        let mut last = None;
        let mut more = false;
        loop {
            if *size >= REQUEST_TARGET_BYTES {
                more = true;
                break;
            }
            let Some((frame, offset)) = read_frame(u, &self.inner)? else { break };
            u.count(&frame);
            if spool::is_end(&frame) {
                u.end_read = true;
            }
            if frame.seq < u.resume {
                continue;
            }
            u.note_sent(frame.seq, offset);
            last = Some(frame.seq);
            *size += frame.encoded_len() + 8;
            request.frames.push(frame);
        }
        if !more && !(u.end_read || u.end_made || !(u.session.recovered || abandoned)) {
            // The file ends without the session's end: make it, after whatever
            // either side holds.
            u.end_made = true;
            let seq = u.next_seq.max(u.resume);
            let reason = if u.session.recovered { REASON_RESTARTED } else { REASON_ABANDONED };
            tracing::info!(
                tenant = %u.session.tenant, session = %u.session.id, seq,
                "ending a recording that has no end: {reason}"
            );
            if u.session.recovered {
                let _ = self.inner.restarted.send(super::RestartedSession {
                    tenant: u.session.tenant,
                    session: u.session.id,
                    open: u.session.open.clone(),
                    client_bytes: u.client_bytes,
                    server_bytes: u.server_bytes,
                });
            }
            let end =
                v1::SessionEnd { reason: reason.into(), client_bytes: u.client_bytes, server_bytes: u.server_bytes };
            let frame = v1::Frame {
                session_id: u.session.id_text.clone(),
                seq,
                at_unix_micros: now_unix_micros(),
                body: Some(Body::End(end)),
            };
            last = Some(seq);
            *size += frame.encoded_len() + 8;
            request.frames.push(frame);
        }
        // Someone waits for a frame that is now sent (here or before): ask
        // for it to be stored now.
        let sent = last.or(u.sent).unwrap_or(0);
        if wanted > u.flushed.max(u.durable) && sent >= wanted {
            u.flushed = sent;
            request.flush_sessions.push(u.session.id_text.clone());
        }
        Ok(more)
    }

    /// Acks for sessions this stream does not carry (any more) are ignored.
    /// True when the ack shows progress.
    fn on_ack(&mut self, ack: v1::IngestAck) -> bool {
        let Ok(id) = ack.session_id.parse::<SessionId>() else { return false };
        let Some(upload) = self.uploads.get_mut(&id) else { return false };
        if ack.closed {
            self.finish(id, ack.durable_seq);
            return true;
        }
        if upload.phase == Phase::Opening {
            upload.start_from(ack.durable_seq);
            let news = upload.acknowledged(ack.durable_seq);
            let urgent = upload.wants_flush();
            self.queue(id, urgent);
            return news;
        }
        upload.acknowledged(ack.durable_seq)
    }

    /// The recorder closed the session: its file goes.
    fn finish(&mut self, id: SessionId, last_seq: u64) {
        let Some(upload) = self.uploads.remove(&id) else { return };
        let session = upload.session;
        drop(upload.reader);
        if let Err(e) = std::fs::remove_file(&session.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                tenant = %session.tenant, session = %session.id,
                "failed to delete a closed session's spool file: {e}"
            );
        }
        self.inner.freed(session.committed.load(Ordering::Acquire));
        session.closed.store(true, Ordering::Release);
        session.durable.send_if_modified(|durable| {
            let news = last_seq > *durable;
            *durable = (*durable).max(last_seq);
            news
        });
        self.inner.session_gone();
        tracing::debug!(tenant = %session.tenant, session = %session.id, last_seq, "recording closed");
    }

    /// Gives a session up: its tap refuses further frames and its session is
    /// told to end; its file stays, renamed, for an operator.
    fn fail(&mut self, id: SessionId, reason: String) {
        let Some(upload) = self.uploads.remove(&id) else { return };
        let session = upload.session;
        drop(upload.reader);
        tracing::error!(
            tenant = %session.tenant, session = %session.id,
            "failed to record a session, its spool file is kept as .{FAILED_EXT}: {reason}"
        );
        let _ = session.failure.set(reason);
        session.stop.cancel();
        if let Err(e) = std::fs::rename(&session.path, session.path.with_extension(FAILED_EXT)) {
            tracing::warn!(tenant = %session.tenant, session = %session.id, "failed to rename a spool file: {e}");
        }
        self.inner.session_gone();
    }

    /// Gives up the session a refusal names, if it names one that retrying
    /// cannot fix. Returns what to log.
    fn on_failure(&mut self, status: &Status) -> String {
        let why = describe(status);
        if matches!(status.code(), Code::DataLoss | Code::InvalidArgument | Code::FailedPrecondition)
            && let Some(id) = named_session(status)
            && self.uploads.contains_key(&id)
        {
            self.fail(id, format!("the recorder refused it: {}", status.message()));
        }
        why
    }
}

/// The next frame of the file, in order, and where it starts; `None` at the
/// end of what is written. A file left by an earlier run is cut at its first
/// record that is torn or out of place; in a live file that is an error.
fn read_frame(u: &mut Upload, inner: &Inner) -> Result<Option<(v1::Frame, u64)>, SpoolError> {
    let limit = u.session.committed.load(Ordering::Acquire);
    let at = u.reader.position();
    let bad = match u.reader.next(limit) {
        Ok(Next::Record { offset, message }) => match spool::decode_frame(message, &u.session.id_text) {
            Ok(frame) if frame.seq == u.next_seq => {
                u.next_seq += 1;
                return Ok(Some((frame, offset)));
            }
            Ok(frame) => SpoolError::OutOfOrder { expected: u.next_seq, found: frame.seq },
            Err(e) => e,
        },
        Ok(Next::End) => return Ok(None),
        Ok(Next::Partial) => SpoolError::Torn,
        Err(e @ SpoolError::Io(_)) => return Err(e),
        Err(e) => e,
    };
    if !u.session.recovered {
        return Err(bad);
    }
    cut(u, inner, at, &bad);
    Ok(None)
}

/// Cuts a file an earlier run left at `offset`, where its records stop making sense.
fn cut(u: &mut Upload, inner: &Inner, offset: u64, why: &SpoolError) {
    let session = &u.session;
    let len = session.committed.load(Ordering::Acquire);
    tracing::warn!(
        tenant = %session.tenant, session = %session.id, offset, len,
        "cutting a spool file left by an earlier run where it stops making sense: {why}"
    );
    if offset < len {
        let cut = std::fs::OpenOptions::new().write(true).open(&session.path).and_then(|f| f.set_len(offset));
        if let Err(e) = cut {
            // Reading stops at `committed` all the same.
            tracing::warn!(tenant = %session.tenant, session = %session.id, "failed to cut a spool file: {e}");
        }
        session.committed.store(offset, Ordering::Release);
        inner.freed(len - offset);
    }
    u.reader.seek(offset);
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The session a refusal names: in its trailers, or at the start of its message.
fn named_session(status: &Status) -> Option<SessionId> {
    if let Some(value) = status.metadata().get("airlock-session-id")
        && let Ok(text) = value.to_str()
        && let Ok(id) = text.parse()
    {
        return Some(id);
    }
    let rest = status.message().strip_prefix("session ")?;
    rest.get(..36)?.parse().ok()
}

fn describe(status: &Status) -> String {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            format!("the recorder refused the worker's token: {}", status.message())
        }
        code => format!("{code:?}: {}", status.message()),
    }
}

/// Capped exponential backoff with jitter.
struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { step: RECONNECT_FIRST.min(max), max }
    }

    fn reset(&mut self) {
        self.step = RECONNECT_FIRST.min(self.max);
    }

    /// The current step less up to half of it at random (workers restarted
    /// together do not all call at once); the step then doubles.
    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = u64::try_from(step.as_millis() / 2).unwrap_or(u64::MAX);
        step.saturating_sub(Duration::from_millis(rand::thread_rng().gen_range(0..=half)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(800));
        let steps: Vec<Duration> = (0..6)
            .map(|_| {
                let step = backoff.step;
                let delay = backoff.next_delay();
                assert!(delay <= step && delay >= step / 2, "{delay:?} from a step of {step:?}");
                step
            })
            .collect();
        let ms: Vec<u128> = steps.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 800, 800]);
        backoff.reset();
        assert_eq!(backoff.step, RECONNECT_FIRST);
    }

    #[test]
    fn a_refusal_names_its_session() {
        let id = SessionId::new();
        let status = Status::data_loss(format!("session {id}: chunk 3 is damaged"));
        assert_eq!(named_session(&status), Some(id));
        let mut status = Status::failed_precondition("a gap");
        status.metadata_mut().insert("airlock-session-id", id.to_string().parse().unwrap());
        assert_eq!(named_session(&status), Some(id));
        assert_eq!(named_session(&Status::unavailable("object storage failed")), None);
    }
}
