//! One session's writer: takes its frames in `seq` order, buffers them, stores
//! them as chunks that continue the session's hash chain, and signs the
//! manifest at the end. It starts from what the store holds, so a session that
//! a killed recorder was writing continues where its last stored chunk ends.

use std::sync::Arc;
use std::time::Duration;

use airlock_proto::v1::{self, frame::Body};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::time::Instant;

use crate::chunk::{self, Hash, MAX_ENCODED_FRAME_BYTES, MAX_FRAME_BODY_BYTES, ZERO_HASH};
use crate::error::Error;
use crate::manifest::{ChunkEntry, EndInfo, FORMAT, Manifest, SessionInfo, SignedManifest};
use crate::signing::Signer;
use crate::store::{MAX_CHUNK_INDEX, SessionRef, Store};

/// Chunk headers read at once when a manifest is rebuilt after a restart.
const HEADER_READS_IN_FLIGHT: usize = 16;

/// What became of a frame handed to [`Writer::accept`].
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Buffered; [`Writer::wants_flush`] says whether to store it now.
    Buffered,
    /// Its seq was taken before (a resent frame): ignored.
    Duplicate,
}

/// Why a frame was refused. The stream that sent it is ended.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("the session ended at seq {last}, got seq {got}")]
    Ended { last: u64, got: u64 },
    #[error("frame {seq}: {reason}")]
    Invalid { seq: u64, reason: String },
}

pub struct Writer {
    s: SessionRef,
    info: SessionInfo,
    store: Store,
    signer: Arc<Signer>,
    chunk_bytes: usize,

    /// The chain so far: the next chunk's index and its predecessor's hash.
    next_index: u64,
    prev_hash: Hash,
    /// Every frame up to here is stored.
    durable_seq: u64,
    /// The chunks this writer stored or found last in the store; the ones
    /// before `entries[0]` are read back when the manifest is made.
    entries: Vec<ChunkEntry>,
    /// The previous hash in the header of `entries[0]`.
    entries_prev_hash: Hash,

    /// Frames `durable_seq + 1..=last_seq`, encoded, not stored yet.
    buffer: Vec<u8>,
    buffered_since: Option<Instant>,
    last_seq: u64,
    /// The session's end frame was taken.
    end: Option<EndInfo>,
    /// The manifest is stored.
    closed: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("session", &self.s)
            .field("next_index", &self.next_index)
            .field("durable_seq", &self.durable_seq)
            .field("last_seq", &self.last_seq)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Picks the session up from the store: a fresh session, one with stored
    /// chunks (continued after its last chunk), or a closed one.
    pub async fn open(
        s: SessionRef,
        info: SessionInfo,
        store: Store,
        signer: Arc<Signer>,
        chunk_bytes: usize,
    ) -> Result<Self, Error> {
        let mut w = Self {
            s,
            info,
            store,
            signer,
            chunk_bytes,
            next_index: 0,
            prev_hash: ZERO_HASH,
            durable_seq: 0,
            entries: Vec::new(),
            entries_prev_hash: ZERO_HASH,
            buffer: Vec::new(),
            buffered_since: None,
            last_seq: 0,
            end: None,
            closed: false,
        };
        if let Some(bytes) = w.store.get_manifest(&s).await? {
            let signed =
                SignedManifest::parse(&bytes).map_err(|reason| Error::Manifest { key: s.manifest_key(), reason })?;
            // Found stored, perhaps by a process that stopped before syncing it.
            w.store.make_durable(&s.manifest_key()).await?;
            w.closed = true;
            w.durable_seq = signed.manifest.last_seq;
            w.last_seq = signed.manifest.last_seq;
            w.end = Some(signed.manifest.end);
            return Ok(w);
        }
        let listed = w.store.list_chunks(&s).await?;
        let Some(last) = listed.last() else { return Ok(w) };
        // Chunks are stored and synced one after another: only the last can
        // be unsynced, and it counts as durable from here on.
        w.store.make_durable(&last.key).await?;
        let bytes = w.store.get_chunk(&s, last.index).await?;
        let bad = |reason: String| Error::Chunk { index: last.index, key: last.key.clone(), reason };
        let stored = chunk::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        if stored.header.index != last.index {
            return Err(bad(format!("its header says index {}", stored.header.index)));
        }
        let mut end = None;
        for frame in stored.frames() {
            let frame = frame.map_err(|e| bad(e.to_string()))?;
            end = EndInfo::from_frame(&frame);
        }
        let hash = chunk::link(&stored.header.prev_hash, &bytes);
        w.entries_prev_hash = stored.header.prev_hash;
        w.entries.push(ChunkEntry {
            index: last.index,
            key: last.key.clone(),
            first_seq: stored.header.first_seq,
            last_seq: stored.header.last_seq,
            size: bytes.len() as u64,
            hash: hex::encode(hash),
        });
        w.next_index = last.index + 1;
        w.prev_hash = hash;
        w.durable_seq = stored.header.last_seq;
        w.last_seq = stored.header.last_seq;
        w.end = end;
        tracing::info!(
            chunks = w.next_index,
            durable_seq = w.durable_seq,
            "continuing a recording from its stored chunks"
        );
        Ok(w)
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The end frame is stored but the manifest is not (the last writer stopped in between).
    pub fn needs_close(&self) -> bool {
        self.end.is_some() && !self.closed && self.buffer.is_empty()
    }

    pub fn has_buffered(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// When the buffered frames must be stored at the latest.
    pub fn deadline(&self, interval: Duration) -> Option<Instant> {
        self.buffered_since.map(|since| since + interval)
    }

    /// Takes the next frame of the session. Frames at or below the last one
    /// taken are duplicates; a frame past the next seq is a gap.
    pub fn accept(&mut self, frame: v1::Frame) -> Result<Accepted, Refused> {
        let seq = frame.seq;
        if seq <= self.last_seq {
            return Ok(Accepted::Duplicate);
        }
        if self.end.is_some() {
            return Err(Refused::Ended { last: self.last_seq, got: seq });
        }
        let expected = self.last_seq + 1;
        if seq != expected {
            return Err(Refused::Gap { expected, got: seq });
        }
        if seq > chunk::MAX_SEQ {
            return Err(Refused::Invalid {
                seq,
                reason: format!("past the last seq a recording holds ({})", chunk::MAX_SEQ),
            });
        }
        check_frame(&frame).map_err(|reason| Refused::Invalid { seq, reason })?;
        self.end = EndInfo::from_frame(&frame);
        chunk::encode_frame(frame, &mut self.buffer);
        self.last_seq = seq;
        self.buffered_since.get_or_insert_with(Instant::now);
        Ok(Accepted::Buffered)
    }

    /// The buffer passed the size bound, or holds the session's end.
    pub fn wants_flush(&self) -> bool {
        self.buffer.len() >= self.chunk_bytes || (self.end.is_some() && self.has_buffered())
    }

    /// Stores the buffered frames as the next chunk. On an error the writer
    /// must be dropped: the session is picked up again from the store.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let index = self.next_index;
        let key = self.s.chunk_key(index);
        if index > MAX_CHUNK_INDEX {
            return Err(Error::Chunk { index, key, reason: "past the last chunk index a key can hold".into() });
        }
        let first_seq = self.durable_seq + 1;
        let last_seq = self.last_seq;
        let prev_hash = self.prev_hash;
        let payload = std::mem::take(&mut self.buffer);
        self.buffered_since = None;
        // Compressing a chunk takes milliseconds: off the async workers.
        let bytes =
            tokio::task::spawn_blocking(move || chunk::encode(index, &prev_hash, first_seq, last_seq, &payload))
                .await
                .map_err(|e| Error::Storage(format!("compressing chunk {index}: {e}")))?
                .map_err(|e| Error::Chunk { index, key: key.clone(), reason: e.to_string() })?;
        let hash = chunk::link(&prev_hash, &bytes);
        let size = bytes.len() as u64;
        self.store.put_chunk(&self.s, index, Bytes::from(bytes)).await?;
        if self.entries.is_empty() {
            self.entries_prev_hash = prev_hash;
        }
        self.entries.push(ChunkEntry { index, key, first_seq, last_seq, size, hash: hex::encode(hash) });
        self.next_index = index + 1;
        self.prev_hash = hash;
        self.durable_seq = last_seq;
        Ok(())
    }

    /// Signs and stores the manifest of an ended session whose frames are all stored.
    pub async fn close(&mut self) -> Result<(), Error> {
        let Some(end) = self.end.clone() else { return Ok(()) };
        if self.closed || self.has_buffered() {
            return Ok(());
        }
        let chunks = self.all_entries().await?;
        let manifest = Manifest {
            format: FORMAT,
            session: self.info.clone(),
            end,
            last_seq: self.durable_seq,
            chunks,
            final_hash: hex::encode(self.prev_hash),
            key_id: String::new(),
        }
        .sign(&self.signer);
        match self.store.put_manifest(&self.s, Bytes::from(manifest.to_json())).await {
            Ok(()) => {}
            // Stored by an earlier attempt whose answer was lost: fine if it seals the same chain.
            Err(Error::Exists { key }) => {
                let stored = self.store.get_manifest(&self.s).await?.unwrap_or_default();
                let same = SignedManifest::parse(&stored).is_ok_and(|m| {
                    m.manifest.final_hash == manifest.manifest.final_hash
                        && m.manifest.last_seq == manifest.manifest.last_seq
                });
                if !same {
                    return Err(Error::Manifest { key, reason: "a different manifest is already stored".into() });
                }
                self.store.make_durable(&key).await?;
            }
            Err(e) => return Err(e),
        }
        self.closed = true;
        Ok(())
    }

    /// Entries for every chunk: the ones this writer knows, and before them the
    /// ones stored before it started, from their headers (each header holds its
    /// predecessor's hash).
    async fn all_entries(&self) -> Result<Vec<ChunkEntry>, Error> {
        let known_from = self.entries.first().map_or(self.next_index, |e| e.index);
        if known_from == 0 {
            return Ok(self.entries.clone());
        }
        let listed = self.store.list_chunks(&self.s).await?;
        let sizes: Vec<u64> = (0..known_from)
            .map(|index| match listed.get(index as usize) {
                Some(l) if l.index == index => Ok(l.size),
                _ => Err(Error::Chunk { index, key: self.s.chunk_key(index), reason: "missing".into() }),
            })
            .collect::<Result<_, _>>()?;
        let store = &self.store;
        let s = &self.s;
        let headers: Vec<chunk::Header> = futures::stream::iter(0..known_from)
            .map(|index| store.get_header(s, index))
            .buffered(HEADER_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut entries = Vec::with_capacity(headers.len() + self.entries.len());
        let mut next_seq = 1;
        for (i, (header, size)) in headers.iter().zip(sizes).enumerate() {
            let index = i as u64;
            let key = self.s.chunk_key(index);
            if header.index != index || header.first_seq != next_seq {
                return Err(Error::Chunk { index, key, reason: "its header does not continue the chain".into() });
            }
            // This chunk's hash is in the next chunk's header.
            let hash = headers.get(i + 1).map_or(self.entries_prev_hash, |next| next.prev_hash);
            entries.push(ChunkEntry {
                index,
                key,
                first_seq: header.first_seq,
                last_seq: header.last_seq,
                size,
                hash: hex::encode(hash),
            });
            next_seq = header.last_seq + 1;
        }
        if let Some(first) = self.entries.first()
            && first.first_seq != next_seq
        {
            return Err(Error::Chunk {
                index: first.index,
                key: first.key.clone(),
                reason: format!("starts at seq {}, the chunk before ends at {}", first.first_seq, next_seq - 1),
            });
        }
        entries.extend(self.entries.iter().cloned());
        Ok(entries)
    }
}

fn check_frame(frame: &v1::Frame) -> Result<(), String> {
    let body = frame.body.as_ref().ok_or("no body")?;
    let body_len = match body {
        Body::ClientBytes(b) | Body::ServerBytes(b) => b.len(),
        Body::Decision(d) => d.statement.len() + d.reason.len(),
        Body::End(e) => e.reason.len(),
    };
    if body_len > MAX_FRAME_BODY_BYTES {
        return Err(format!("a body of {body_len} bytes is over the {MAX_FRAME_BODY_BYTES}-byte limit"));
    }
    if frame.encoded_len() > MAX_ENCODED_FRAME_BYTES {
        return Err(format!("over the {MAX_ENCODED_FRAME_BYTES}-byte limit of a frame"));
    }
    Ok(())
}
