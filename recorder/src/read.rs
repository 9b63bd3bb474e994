//! Reading recordings back, a page at a time: replay reads frames from a
//! `seq` on without loading the whole session.

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1;
use prost::Message;

use crate::chunk;
use crate::config::Config;
use crate::error::Error;
use crate::manifest::SignedManifest;
use crate::store::{SessionRef, Store};

/// The most frames one page holds.
pub const MAX_PAGE_FRAMES: usize = 10_000;
/// A page stops after the frame that brings it past this many bytes.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// Stored recordings, for replay and verification. Reads only: it needs no key.
#[derive(Debug, Clone)]
pub struct Recordings {
    pub(crate) store: Store,
}

/// Frames in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub frames: Vec<v1::Frame>,
    /// Where the next page starts.
    pub next_seq: u64,
    /// Frames from `next_seq` on are stored already.
    pub more: bool,
}

/// A stored chunk as reading sees it: from the manifest when there is one
/// (with the hash the chunk must have), else from listing the store.
struct Located {
    index: u64,
    key: String,
    /// Known from the manifest.
    seqs: Option<(u64, u64)>,
    hash: Option<String>,
}

impl Recordings {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The recordings the configuration names.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        Ok(Self::new(Store::open(config)?))
    }

    /// A session's manifest, if it ended. Not verified: see [`Recordings::verify`].
    pub async fn manifest(&self, tenant: TenantId, session: SessionId) -> Result<Option<SignedManifest>, Error> {
        let s = SessionRef::new(tenant, session);
        let Some(bytes) = self.store.get_manifest(&s).await? else { return Ok(None) };
        SignedManifest::parse(&bytes).map(Some).map_err(|reason| Error::Manifest { key: s.manifest_key(), reason })
    }

    /// Up to `limit` frames (at most [`MAX_PAGE_FRAMES`]) from `from_seq` on.
    /// Reads only the chunks that hold them: the first is found from the
    /// manifest, or by reading chunk headers (a binary search) while the
    /// session has none. Each chunk read is checked against its header, and
    /// against the manifest's hash when there is one.
    pub async fn read_frames(
        &self,
        tenant: TenantId,
        session: SessionId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Page, Error> {
        let s = SessionRef::new(tenant, session);
        let from_seq = from_seq.max(1);
        let limit = limit.clamp(1, MAX_PAGE_FRAMES);
        let manifest = self.manifest(tenant, session).await?;
        let chunks: Vec<Located> = match &manifest {
            Some(m) => m
                .manifest
                .chunks
                .iter()
                .map(|c| Located {
                    index: c.index,
                    key: c.key.clone(),
                    seqs: Some((c.first_seq, c.last_seq)),
                    hash: Some(c.hash.clone()),
                })
                .collect(),
            None => self
                .store
                .list_chunks(&s)
                .await?
                .into_iter()
                .map(|l| Located { index: l.index, key: l.key, seqs: None, hash: None })
                .collect(),
        };
        if chunks.is_empty() {
            return Err(Error::NotFound { tenant, session });
        }
        let mut page = Page { frames: Vec::new(), next_seq: from_seq, more: false };
        let start = self.first_chunk_with(&s, &chunks, from_seq).await?;
        let mut bytes = 0usize;
        let mut expected_first: Option<u64> = None;
        for (position, located) in chunks.iter().enumerate().skip(start) {
            let raw = self.store.get_chunk(&s, located.index).await?;
            let bad = |reason: String| Error::Chunk { index: located.index, key: located.key.clone(), reason };
            let stored = chunk::decode(&raw).map_err(|e| bad(e.to_string()))?;
            if stored.header.index != located.index {
                return Err(bad(format!("its header says index {}", stored.header.index)));
            }
            if let Some(expected) = expected_first
                && stored.header.first_seq != expected
            {
                return Err(bad(format!("starts at seq {}, expected {expected}", stored.header.first_seq)));
            }
            if let Some(hash) = &located.hash
                && hex::encode(chunk::link(&stored.header.prev_hash, &raw)) != *hash
            {
                return Err(bad("its hash differs from the manifest's".into()));
            }
            expected_first = Some(stored.header.last_seq + 1);
            for frame in stored.frames() {
                let mut frame = frame.map_err(|e| bad(e.to_string()))?;
                if frame.seq < from_seq {
                    continue;
                }
                frame.session_id = session.to_string();
                bytes += frame.encoded_len();
                page.next_seq = frame.seq + 1;
                page.frames.push(frame);
                if page.frames.len() >= limit || bytes >= MAX_PAGE_BYTES {
                    page.more = page.next_seq <= stored.header.last_seq || position + 1 < chunks.len();
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// The position in `chunks` of the first chunk whose frames reach `seq`.
    async fn first_chunk_with(&self, s: &SessionRef, chunks: &[Located], seq: u64) -> Result<usize, Error> {
        let (mut lo, mut hi) = (0usize, chunks.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(located) = chunks.get(mid) else { break };
            let last_seq = match located.seqs {
                Some((_, last)) => last,
                None => self.store.get_header(s, located.index).await?.last_seq,
            };
            if last_seq < seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}
