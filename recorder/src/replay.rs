//! A session's timeline read from the store, a page of frames at a time: the
//! decoder of [`crate::timeline`] over [`Recordings::read_frames`], never the
//! whole session in memory.
//!
//! Timeline pages are keyed by frame `seq`: a page after `seq` A holds the
//! entries whose `seq` is past A, in order, and its `next` is a `seq` such that
//! every entry at or before it has been handed out and none after it. The
//! decoder's state at A (prepared statements, portals, a message cut between
//! frames) comes from the frames before it, so a page decodes them again and
//! hands out only what follows.

use airlock_core::{SessionId, TenantId};

use crate::error::Error;
use crate::read::Recordings;
use crate::store::SessionRef;
use crate::timeline::{Decoder, Entry, VALUE_OVERHEAD};

/// Frames read from the store at a time.
const FRAMES_PER_READ: usize = 1000;
/// The most entries a timeline page holds (more only when one frame starts more).
pub const MAX_TIMELINE_PAGE: usize = 1000;
/// A page also ends once its entries hold about this many bytes of rows and text.
pub const MAX_TIMELINE_PAGE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct TimelinePage {
    pub entries: Vec<Entry>,
    /// Pass as `after` for what follows; `None` once the session ended and everything was handed out.
    pub next: Option<u64>,
    /// The session has no end yet: more may come.
    pub live: bool,
}

impl Recordings {
    /// Up to `limit` timeline entries past frame `after`. A session with nothing
    /// stored yet has an empty, live timeline.
    pub async fn timeline(
        &self,
        tenant: TenantId,
        session: SessionId,
        after: u64,
        limit: usize,
    ) -> Result<TimelinePage, Error> {
        let limit = limit.clamp(1, MAX_TIMELINE_PAGE);
        let mut reader = TimelineReader::new(self.clone(), tenant, session);
        let mut out: Vec<Entry> = Vec::new();
        while let Some(batch) = reader.next_frames().await? {
            for frame in &batch {
                reader.decoder.push(frame);
                out.extend(std::iter::from_fn(|| reader.decoder.pop()).filter(|e| e.seq > after));
                // Every entry up to `bound` is out; later ones start after it.
                let bound = reader.decoder.pending_seq().map_or(frame.seq, |p| p.saturating_sub(1)).min(frame.seq);
                let done = out.iter().take_while(|e| e.seq <= bound).count();
                if let Some(last) = page_end(&out, done, limit) {
                    let s = last.seq;
                    out.retain(|e| e.seq <= s);
                    let live = !reader.decoder.ended() && self.manifest(tenant, session).await?.is_none();
                    return Ok(TimelinePage { entries: out, next: Some(s), live });
                }
            }
        }
        let decoder = &reader.decoder;
        let finished = decoder.ended() && decoder.pending_seq().is_none();
        let bound = decoder.pending_seq().map_or(decoder.last_seq(), |p| p.saturating_sub(1)).max(after);
        out.retain(|e| e.seq <= bound);
        let live = !decoder.ended() && self.manifest(tenant, session).await?.is_none();
        Ok(TimelinePage { entries: out, next: (!finished).then_some(bound), live })
    }

    /// Whether anything of the session's recording is stored.
    pub async fn stored(&self, tenant: TenantId, session: SessionId) -> Result<bool, Error> {
        let s = SessionRef::new(tenant, session);
        Ok(self.store.get_manifest(&s).await?.is_some() || !self.store.list_chunks(&s).await?.is_empty())
    }

    /// The whole timeline, a batch of entries at a time.
    pub fn timeline_reader(&self, tenant: TenantId, session: SessionId) -> TimelineReader {
        TimelineReader::new(self.clone(), tenant, session)
    }
}

/// Reads a session's frames in order and decodes them as it goes.
#[derive(Debug)]
pub struct TimelineReader {
    recordings: Recordings,
    tenant: TenantId,
    session: SessionId,
    decoder: Decoder,
    from: u64,
    done: bool,
}

impl TimelineReader {
    fn new(recordings: Recordings, tenant: TenantId, session: SessionId) -> Self {
        Self { recordings, tenant, session, decoder: Decoder::new(), from: 1, done: false }
    }

    /// The next stored frames, or `None` past the last (or when nothing is stored).
    async fn next_frames(&mut self) -> Result<Option<Vec<airlock_proto::v1::Frame>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = match self.recordings.read_frames(self.tenant, self.session, self.from, FRAMES_PER_READ).await {
            Ok(page) => page,
            Err(Error::NotFound { .. }) => {
                self.done = true;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.done = !page.more || page.frames.is_empty();
        self.from = page.next_seq;
        Ok(Some(page.frames))
    }

    /// The entries completed by the next stored frames; `None` past the last
    /// frame. Entries still incomplete there (a live session's last statement)
    /// are not handed out.
    pub async fn next_entries(&mut self) -> Result<Option<Vec<Entry>>, Error> {
        let Some(frames) = self.next_frames().await? else { return Ok(None) };
        let mut out = Vec::new();
        for frame in &frames {
            self.decoder.push(frame);
            out.extend(std::iter::from_fn(|| self.decoder.pop()));
        }
        Ok(Some(out))
    }

    /// The session's end frame has been read.
    pub fn ended(&self) -> bool {
        self.decoder.ended()
    }
}
/// The last entry of a full page among the first `done` (complete) entries:
/// the `limit`-th, or the one that takes the page past its byte bound.
fn page_end(out: &[Entry], done: usize, limit: usize) -> Option<&Entry> {
    let mut bytes = 0;
    for (i, entry) in out.iter().take(done).enumerate() {
        bytes += entry_bytes(entry);
        if i + 1 >= limit || bytes >= MAX_TIMELINE_PAGE_BYTES {
            return Some(entry);
        }
    }
    None
}

/// About what an entry takes in memory.
fn entry_bytes(e: &Entry) -> usize {
    let text = |t: &Option<String>| t.as_ref().map_or(0, String::len);
    let values = |v: &[Option<String>]| v.iter().map(|x| text(x) + VALUE_OVERHEAD).sum::<usize>();
    text(&e.statement)
        + e.parameters.as_deref().map_or(0, values)
        + e.rows.as_ref().map_or(0, |rows| rows.iter().map(|r| values(r) + VALUE_OVERHEAD).sum())
        + 256
}
