//! A session's tap, on the session's own task: each call numbers the next
//! frame, stamps it and appends it to the session's spool file before
//! returning. The `_later` calls only encode their frame; it is written with
//! the next write (any other call, or [`SessionTap::commit`]), so what the
//! client sent and what policy decided of it take one `write` together, made
//! before the relay forwards anything. The hot path is one `write` into the
//! session's file (a sync to disk too in strict mode) and one update of the
//! spool's byte counter; the uploader is woken only when it has not been
//! already.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use airlock_core::SessionId;
use airlock_proto::v1::{self, frame::Body};
use tokio::sync::watch;

use super::spool::{self, MAX_DECISION_STATEMENT, MAX_DECISION_TEXT, MAX_FRAME_BODY_BYTES, Way};
use super::{Error, Inner, Session, now_unix_micros};

/// Past this capacity, the encoding buffer is let go after a write (one large
/// message does not keep its memory for the rest of the session).
const KEEP_BUFFER_BYTES: usize = 256 << 10;

/// Records one session. `Send`: it lives on the session's task.
pub struct SessionTap {
    inner: Arc<Inner>,
    session: Arc<Session>,
    /// Shared with the uploader, which reads through it.
    file: Arc<File>,
    /// Frames encoded and not yet written; reused for every write, so
    /// encoding allocates only to grow it.
    buf: Vec<u8>,
    /// The seq of the last frame encoded.
    encoded_seq: u64,
    /// The seq of the last frame written to the file.
    written_seq: u64,
    /// Bytes recorded each way: written, and (`pending`) encoded but not yet written.
    client_total: u64,
    server_total: u64,
    pending: (u64, u64),
    full: watch::Receiver<u64>,
    ended: bool,
    /// A failed write could not be cut back: the file may end inside a record.
    poisoned: bool,
}

impl std::fmt::Debug for SessionTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTap")
            .field("session", &self.session.id)
            .field("written_seq", &self.written_seq)
            .field("encoded_seq", &self.encoded_seq)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl SessionTap {
    pub(super) fn new(inner: Arc<Inner>, session: Arc<Session>, file: Arc<File>) -> Self {
        let full = inner.full.subscribe();
        Self {
            inner,
            session,
            file,
            buf: Vec::new(),
            encoded_seq: 0,
            written_seq: 0,
            client_total: 0,
            server_total: 0,
            pending: (0, 0),
            full,
            ended: false,
            poisoned: false,
        }
    }

    pub fn session_id(&self) -> SessionId {
        self.session.id
    }

    /// In strict mode, how long to wait for [`SessionTap::durable`] before
    /// forwarding what the client sent; `None` when not strict.
    pub fn strict_wait(&self) -> Option<std::time::Duration> {
        self.inner.strict.then_some(self.inner.strict_timeout)
    }

    /// The seq of the last frame written (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.written_seq
    }

    /// Records bytes the client sent; forward them only once this returned
    /// `Ok`. Returns the seq of the (last) frame written: more than
    /// [`MAX_FRAME_BODY_BYTES`] are split over several frames. Nothing is
    /// written for no bytes.
    pub fn client_bytes(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        self.relayed(Way::Client, bytes)?;
        self.write_pending(true)?;
        Ok(self.encoded_seq)
    }

    /// [`SessionTap::client_bytes`], written with the next write: forward the
    /// bytes only once a [`SessionTap::commit`] (or any other write) after
    /// this returned `Ok`.
    pub fn client_bytes_later(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        self.relayed(Way::Client, bytes)
    }

    /// Records bytes as the client receives them (after masking); write them
    /// to the client only once this returned `Ok`.
    pub fn server_bytes(&mut self, bytes: &[u8]) -> Result<u64, Error> {
        self.relayed(Way::Server, bytes)?;
        self.write_pending(true)?;
        Ok(self.encoded_seq)
    }

    /// Writes the frames the `_later` calls encoded (none: nothing to do).
    pub fn commit(&mut self) -> Result<(), Error> {
        self.write_pending(true)
    }

    /// Records a policy decision. A statement over 1 MiB is cut (its bytes
    /// are whole in the client's frames), and so are other texts over 4 KiB.
    pub fn decision(&mut self, decision: v1::Decision) -> Result<u64, Error> {
        let seq = self.decision_later(decision)?;
        self.write_pending(true)?;
        Ok(seq)
    }

    /// [`SessionTap::decision`], written with the next write.
    pub fn decision_later(&mut self, mut decision: v1::Decision) -> Result<u64, Error> {
        self.check()?;
        spool::truncate_utf8(&mut decision.statement, MAX_DECISION_STATEMENT);
        for text in [&mut decision.rule, &mut decision.reason, &mut decision.review_id, &mut decision.approver] {
            spool::truncate_utf8(text, MAX_DECISION_TEXT);
        }
        self.message_frame(Body::Decision(decision))
    }

    /// Records the session's end, with the bytes recorded each way, and syncs
    /// the file. The end is written even past the spool's bound (a session
    /// must be able to end; it is one small frame per session). Nothing can
    /// be recorded after it.
    pub fn end(&mut self, reason: &str) -> Result<u64, Error> {
        self.check()?;
        // Frames still waiting go first, within the bound; when they cannot be
        // written they are dropped (nothing was forwarded after them), and the
        // end alone goes, unless the file could not be cut back to whole records.
        if let Err(e) = self.write_pending(true)
            && self.poisoned
        {
            return Err(e);
        }
        let mut reason = reason.to_owned();
        spool::truncate_utf8(&mut reason, MAX_DECISION_TEXT);
        let end = v1::SessionEnd { reason, client_bytes: self.client_total, server_bytes: self.server_total };
        let seq = self.message_frame(Body::End(end))?;
        self.write_pending(false)?;
        self.ended = true;
        if !self.inner.strict {
            self.file.sync_data().map_err(|e| self.write_error(e))?;
        }
        Ok(seq)
    }

    /// Resolves once the recorder has stored every frame up to `seq`, asking
    /// it to store them now rather than at its next chunk bound. It waits as
    /// long as the recorder is unreachable: bound it with a timeout where a
    /// wait must end. The future borrows nothing from the tap.
    pub fn durable(&self, seq: u64) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let recorded =
            if seq > self.written_seq { Err(Error::NotRecorded { seq, last: self.written_seq }) } else { Ok(()) };
        if recorded.is_ok() && seq > *self.session.durable.borrow() {
            self.session.flush_wanted.fetch_max(seq, Ordering::AcqRel);
            self.inner.wake_urgent(&self.session);
        }
        let mut durable = self.session.durable.subscribe();
        let session = self.session.clone();
        async move {
            recorded?;
            tokio::select! {
                biased;
                reached = durable.wait_for(|d| *d >= seq) => reached.map(|_| ()).map_err(|_| Error::Stopped),
                () = session.stop.cancelled() => {
                    if *session.durable.borrow() >= seq { Ok(()) } else { Err(session.stop_error()) }
                }
            }
        }
    }

    /// What tells the session it must end though the client did not go.
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal { inner: self.inner.clone(), session: self.session.clone(), full: self.full.clone() }
    }

    /// Encodes `bytes` as frames after those waiting; returns the last seq.
    fn relayed(&mut self, way: Way, bytes: &[u8]) -> Result<u64, Error> {
        self.check()?;
        if bytes.is_empty() {
            return Ok(self.encoded_seq);
        }
        let at = now_unix_micros();
        let mut seq = self.encoded_seq;
        for piece in bytes.chunks(MAX_FRAME_BODY_BYTES) {
            seq += 1;
            spool::put_bytes_frame(&mut self.buf, seq, at, way, piece);
        }
        self.encoded_seq = seq;
        let total = match way {
            Way::Client => &mut self.pending.0,
            Way::Server => &mut self.pending.1,
        };
        *total = total.saturating_add(bytes.len() as u64);
        Ok(seq)
    }

    /// Encodes one frame after those waiting; returns its seq.
    fn message_frame(&mut self, body: Body) -> Result<u64, Error> {
        let seq = self.encoded_seq + 1;
        let frame = v1::Frame { session_id: String::new(), seq, at_unix_micros: now_unix_micros(), body: Some(body) };
        let mark = self.buf.len();
        if let Err(e) = spool::put_message(&mut self.buf, &frame) {
            self.buf.truncate(mark);
            return Err(self.write_error(std::io::Error::other(e)));
        }
        self.encoded_seq = seq;
        Ok(seq)
    }

    fn check(&self) -> Result<(), Error> {
        if self.ended || self.session.closed.load(Ordering::Acquire) {
            return Err(Error::Ended);
        }
        if let Some(reason) = self.session.failure.get() {
            return Err(Error::Failed { reason: reason.clone() });
        }
        if self.poisoned {
            return Err(self.write_error(std::io::Error::other("an earlier failed write could not be undone")));
        }
        Ok(())
    }

    /// Appends the frames waiting in `buf` with one write. When they cannot
    /// be written they are dropped, their seqs given back: the file's seqs
    /// stay consecutive, and nothing after the last written frame was
    /// forwarded.
    fn write_pending(&mut self, within_bound: bool) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self.append(within_bound);
        if result.is_err() {
            self.buf.clear();
            self.encoded_seq = self.written_seq;
            self.pending = (0, 0);
        }
        result
    }

    fn append(&mut self, within_bound: bool) -> Result<(), Error> {
        let len = self.buf.len() as u64;
        self.inner.reserve(len, within_bound)?;
        if let Err(error) = (&*self.file).write_all(&self.buf) {
            self.inner.unreserve(len);
            // A write cut short leaves part of a record: cut the file back to whole records.
            if self.file.set_len(self.session.committed.load(Ordering::Acquire)).is_err() {
                self.poisoned = true;
            }
            return Err(self.write_error(error));
        }
        let synced = if self.inner.strict { self.file.sync_data() } else { Ok(()) };
        self.session.committed.fetch_add(len, Ordering::AcqRel);
        self.written_seq = self.encoded_seq;
        let (client, server) = std::mem::take(&mut self.pending);
        self.client_total = self.client_total.saturating_add(client);
        self.server_total = self.server_total.saturating_add(server);
        self.inner.wake(&self.session);
        self.buf.clear();
        if self.buf.capacity() > KEEP_BUFFER_BYTES {
            self.buf = Vec::new();
        }
        synced.map_err(|e| self.write_error(e))
    }

    fn write_error(&self, error: std::io::Error) -> Error {
        Error::Write { path: self.session.path.clone(), error }
    }
}

impl Drop for SessionTap {
    /// A session that stops without its end is ended by the uploader.
    fn drop(&mut self) {
        if !self.ended && !self.session.closed.load(Ordering::Acquire) {
            // What the client sent last, though nothing was forwarded after it.
            if self.check().is_ok() {
                let _ = self.write_pending(true);
            }
            self.session.abandoned.store(true, Ordering::Release);
            self.inner.wake(&self.session);
        }
    }
}

/// Tells a session it must end: the spool passed its bound (every live
/// session), the recorder refused this session's recording, or the worker
/// is stopping. Cheap to clone; use it in the session's `select!`.
#[derive(Clone)]
pub struct StopSignal {
    inner: Arc<Inner>,
    session: Arc<Session>,
    full: watch::Receiver<u64>,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal").field("session", &self.session.id).finish_non_exhaustive()
    }
}

impl StopSignal {
    /// Resolves with why the session must end. Cancel-safe.
    pub async fn stopped(&mut self) -> Error {
        tokio::select! {
            biased;
            () = self.session.stop.cancelled() => self.session.stop_error(),
            // The sender lives in `inner`, which this holds: `changed` fails never.
            _ = self.full.changed() => Error::SpoolFull {
                used: self.inner.used.load(Ordering::Acquire),
                bound: self.inner.bound,
            },
        }
    }
}
