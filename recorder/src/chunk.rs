//! A chunk: one stored object holding a run of one session's frames. Sans-IO:
//! bytes in, header and frames out, every length checked against a bound
//! before anything is allocated for it.
//!
//! ```text
//! offset  size  field (integers big-endian)
//!      0     4  magic "ALRC"
//!      4     1  format version, 1
//!      5     8  chunk index, from 0
//!     13     8  first seq
//!     21     8  last seq
//!     29    32  the previous chunk's hash (zeros for chunk 0)
//!     61     4  payload length, uncompressed
//!     65     …  the payload compressed: one zstd frame, with its checksum
//! ```
//!
//! The payload is the frames `first seq..=last seq`, each a protobuf `Frame`
//! (without its session id, which the key names) preceded by its length as a
//! varint. A chunk's hash is `SHA-256(previous hash ‖ the chunk's bytes)`, so
//! each chunk commits to every chunk before it.

use airlock_proto::v1::Frame;
use bytes::{Buf, Bytes};
use prost::Message;
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The previous hash of chunk 0.
pub const ZERO_HASH: Hash = [0; 32];

pub const MAGIC: [u8; 4] = *b"ALRC";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 65;

/// The largest seq a chunk may hold, far past any session's, so that `seq + 1`
/// never overflows.
pub const MAX_SEQ: u64 = 1 << 62;

/// The largest frame body (client or server bytes, a statement) the recorder
/// takes: workers split longer runs of bytes over several frames.
pub const MAX_FRAME_BODY_BYTES: usize = 4 << 20;
/// The largest encoded frame in a payload: a body and its other fields.
pub const MAX_ENCODED_FRAME_BYTES: usize = MAX_FRAME_BODY_BYTES + (64 << 10);
/// The largest size bound a recorder may be configured with.
pub const MAX_CHUNK_TARGET_BYTES: usize = 16 << 20;
/// The largest uncompressed payload: a full buffer plus the frame that passed the bound.
pub const MAX_PAYLOAD_BYTES: usize = MAX_CHUNK_TARGET_BYTES + 2 * MAX_ENCODED_FRAME_BYTES;
/// The largest chunk object: zstd never grows its input by more than a small fraction.
pub const MAX_CHUNK_BYTES: usize = HEADER_LEN + MAX_PAYLOAD_BYTES + (MAX_PAYLOAD_BYTES >> 7) + (64 << 10);

/// zstd's window is at most 2^24 bytes: what a chunk of this size needs, and a
/// bound on what a hostile chunk can make the decoder allocate.
const WINDOW_LOG_MAX: u32 = 24;
const COMPRESSION_LEVEL: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("{len} bytes is shorter than a chunk header ({HEADER_LEN} bytes)")]
    Truncated { len: usize },
    #[error("not a chunk (no ALRC magic)")]
    Magic,
    #[error("unknown chunk format version {0}")]
    Version(u8),
    #[error("{len} bytes is over the {MAX_CHUNK_BYTES}-byte limit of a chunk")]
    TooLarge { len: usize },
    #[error("the header declares a payload of {declared} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")]
    PayloadTooLarge { declared: u64 },
    #[error("the header's seq range {first}..={last} is empty, starts at 0 or is past the last seq")]
    SeqRange { first: u64, last: u64 },
    #[error("the payload does not decompress: {0}")]
    Decompress(String),
    #[error("the payload decompresses to {actual} bytes, the header says {declared}")]
    PayloadLength { declared: u64, actual: u64 },
    #[error("the frame at payload offset {offset} has a bad length ({reason})")]
    FrameLength { offset: usize, reason: String },
    #[error("frame {seq} does not decode: {reason}")]
    FrameDecode { seq: u64, reason: String },
    #[error("frame {seq} has no body")]
    FrameBody { seq: u64 },
    #[error("the frames end at seq {found}, the header says {expected}")]
    FrameCount { expected: u64, found: u64 },
    #[error("the payload could not be compressed: {0}")]
    Compress(String),
}

/// A chunk's fixed-size header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub index: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub prev_hash: Hash,
    pub payload_len: u32,
}

impl Header {
    /// Reads the header at the start of `bytes` (the rest may be missing), checking
    /// what it declares against the format's bounds.
    pub fn parse(bytes: &[u8]) -> Result<Header, ChunkError> {
        let mut buf = bytes.get(..HEADER_LEN).ok_or(ChunkError::Truncated { len: bytes.len() })?;
        let mut magic = [0u8; 4];
        buf.copy_to_slice(&mut magic);
        if magic != MAGIC {
            return Err(ChunkError::Magic);
        }
        let version = buf.get_u8();
        if version != VERSION {
            return Err(ChunkError::Version(version));
        }
        let index = buf.get_u64();
        let first_seq = buf.get_u64();
        let last_seq = buf.get_u64();
        let mut prev_hash = ZERO_HASH;
        buf.copy_to_slice(&mut prev_hash);
        let payload_len = buf.get_u32();
        if first_seq == 0 || last_seq < first_seq || last_seq > MAX_SEQ {
            return Err(ChunkError::SeqRange { first: first_seq, last: last_seq });
        }
        if payload_len as usize > MAX_PAYLOAD_BYTES {
            return Err(ChunkError::PayloadTooLarge { declared: u64::from(payload_len) });
        }
        Ok(Header { index, first_seq, last_seq, prev_hash, payload_len })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        out.extend_from_slice(&self.payload_len.to_be_bytes());
    }
}

/// `SHA-256(prev ‖ chunk)`: the hash of a chunk whose predecessor's hash is `prev`.
pub fn link(prev: &Hash, chunk: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(chunk);
    h.finalize().into()
}

/// Appends `frame` to a payload, without its session id.
pub fn encode_frame(mut frame: Frame, payload: &mut Vec<u8>) {
    frame.session_id.clear();
    // Writing to a Vec cannot run out of room.
    let _ = frame.encode_length_delimited(payload);
}

/// A chunk's bytes: the header, then `payload` (frames `first_seq..=last_seq`
/// encoded by [`encode_frame`]) compressed.
pub fn encode(
    index: u64,
    prev_hash: &Hash,
    first_seq: u64,
    last_seq: u64,
    payload: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    let payload_len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len as usize <= MAX_PAYLOAD_BYTES)
        .ok_or(ChunkError::PayloadTooLarge { declared: payload.len() as u64 })?;
    if first_seq == 0 || last_seq < first_seq || last_seq > MAX_SEQ {
        return Err(ChunkError::SeqRange { first: first_seq, last: last_seq });
    }
    let compress = || -> std::io::Result<Vec<u8>> {
        let mut c = zstd::bulk::Compressor::new(COMPRESSION_LEVEL)?;
        c.include_checksum(true)?;
        c.compress(payload)
    };
    let compressed = compress().map_err(|e| ChunkError::Compress(e.to_string()))?;
    let header = Header { index, first_seq, last_seq, prev_hash: *prev_hash, payload_len };
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    header.write(&mut out);
    out.extend_from_slice(&compressed);
    if out.len() > MAX_CHUNK_BYTES {
        return Err(ChunkError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// A chunk read back: its header and its payload, decompressed.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub header: Header,
    payload: Bytes,
}

/// Reads a whole chunk. The frames are decoded as [`Chunk::frames`] is iterated.
pub fn decode(bytes: &[u8]) -> Result<Chunk, ChunkError> {
    if bytes.len() > MAX_CHUNK_BYTES {
        return Err(ChunkError::TooLarge { len: bytes.len() });
    }
    let header = Header::parse(bytes)?;
    let compressed = bytes.get(HEADER_LEN..).unwrap_or_default();
    let declared = u64::from(header.payload_len);
    let decompress = || -> std::io::Result<Vec<u8>> {
        let mut d = zstd::bulk::Decompressor::new()?;
        d.window_log_max(WINDOW_LOG_MAX)?;
        // Allocates at most the declared length, itself bounded by `Header::parse`;
        // a payload that would decompress to more is refused by zstd.
        d.decompress(compressed, header.payload_len as usize)
    };
    let payload = decompress().map_err(|e| ChunkError::Decompress(e.to_string()))?;
    if payload.len() as u64 != declared {
        return Err(ChunkError::PayloadLength { declared, actual: payload.len() as u64 });
    }
    Ok(Chunk { header, payload: Bytes::from(payload) })
}

impl Chunk {
    /// The frames, in order, each checked to carry the next seq and a body; the
    /// last item is an error if they do not end at the header's last seq.
    /// After an error, nothing more.
    pub fn frames(&self) -> Frames {
        Frames {
            payload: self.payload.clone(),
            offset: 0,
            next_seq: self.header.first_seq,
            last_seq: self.header.last_seq,
            done: false,
        }
    }

    /// Decodes every frame, returning how many there are.
    pub fn check_frames(&self) -> Result<u64, ChunkError> {
        let mut n = 0u64;
        for frame in self.frames() {
            frame?;
            n += 1;
        }
        Ok(n)
    }
}

pub struct Frames {
    payload: Bytes,
    offset: usize,
    next_seq: u64,
    last_seq: u64,
    done: bool,
}

impl Frames {
    fn next_frame(&mut self) -> Result<Option<Frame>, ChunkError> {
        if self.payload.is_empty() {
            if self.next_seq.checked_sub(1) != Some(self.last_seq) {
                return Err(ChunkError::FrameCount { expected: self.last_seq, found: self.next_seq.saturating_sub(1) });
            }
            return Ok(None);
        }
        let offset = self.offset;
        let before = self.payload.len();
        let len = prost::encoding::decode_varint(&mut self.payload)
            .map_err(|e| ChunkError::FrameLength { offset, reason: e.to_string() })?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= MAX_ENCODED_FRAME_BYTES)
            .ok_or_else(|| ChunkError::FrameLength { offset, reason: format!("{len} bytes, over the limit") })?;
        if len > self.payload.len() {
            return Err(ChunkError::FrameLength {
                offset,
                reason: format!("{len} bytes, past the end of the payload"),
            });
        }
        let body = self.payload.split_to(len);
        self.offset += before - self.payload.len();
        let seq = self.next_seq;
        if seq > self.last_seq {
            return Err(ChunkError::FrameCount { expected: self.last_seq, found: seq });
        }
        let frame = Frame::decode(body).map_err(|e| ChunkError::FrameDecode { seq, reason: e.to_string() })?;
        if frame.seq != seq {
            return Err(ChunkError::FrameDecode { seq, reason: format!("it carries seq {}", frame.seq) });
        }
        if frame.body.is_none() {
            return Err(ChunkError::FrameBody { seq });
        }
        self.next_seq = seq.saturating_add(1);
        Ok(Some(frame))
    }
}

impl Iterator for Frames {
    type Item = Result<Frame, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_frame() {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use airlock_proto::v1::frame::Body;

    use super::*;

    fn frame(seq: u64, bytes: &'static [u8]) -> Frame {
        Frame {
            session_id: "s".into(),
            seq,
            at_unix_micros: 1_700_000_000_000_000 + seq as i64,
            body: Some(Body::ClientBytes(Bytes::from_static(bytes))),
        }
    }

    fn sample() -> Vec<u8> {
        let mut payload = Vec::new();
        for seq in 7..=9 {
            encode_frame(frame(seq, b"SELECT 1;"), &mut payload);
        }
        encode(2, &[5; 32], 7, 9, &payload).unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let chunk = decode(&bytes).unwrap();
        assert_eq!(chunk.header.index, 2);
        assert_eq!(chunk.header.prev_hash, [5; 32]);
        let frames: Vec<Frame> = chunk.frames().collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(frames[0].session_id, "", "the key names the session, not each frame");
        assert_eq!(frames[1].body, Some(Body::ClientBytes(Bytes::from_static(b"SELECT 1;"))));
        assert_eq!(chunk.check_frames().unwrap(), 3);
    }

    #[test]
    fn every_prefix_is_refused() {
        let bytes = sample();
        for end in 0..bytes.len() {
            let result = decode(&bytes[..end]);
            assert!(result.is_err(), "a {end}-byte prefix decoded");
        }
    }

    #[test]
    fn absurd_payload_length_is_refused_before_allocating() {
        let mut bytes = sample();
        bytes[61..65].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&bytes).unwrap_err(), ChunkError::PayloadTooLarge { declared: u64::from(u32::MAX) });
    }

    #[test]
    fn a_payload_longer_than_declared_is_refused() {
        let mut payload = Vec::new();
        encode_frame(frame(1, b"x"), &mut payload);
        let mut bytes = encode(0, &ZERO_HASH, 1, 1, &payload).unwrap();
        // Declares one byte less than the payload decompresses to.
        let shorter = (payload.len() as u32 - 1).to_be_bytes();
        bytes[61..65].copy_from_slice(&shorter);
        assert!(matches!(decode(&bytes), Err(ChunkError::Decompress(_) | ChunkError::PayloadLength { .. })));
    }

    #[test]
    fn absurd_frame_length_is_refused() {
        // A varint declaring 2^63 bytes, then nothing.
        let payload = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        let bytes = encode(0, &ZERO_HASH, 1, 1, &payload).unwrap();
        let chunk = decode(&bytes).unwrap();
        let errors: Vec<_> = chunk.frames().collect();
        assert_eq!(errors.len(), 1);
        assert!(matches!(errors[0], Err(ChunkError::FrameLength { offset: 0, .. })), "{errors:?}");
    }

    #[test]
    fn frames_must_match_the_header() {
        let mut payload = Vec::new();
        encode_frame(frame(1, b"a"), &mut payload);
        encode_frame(frame(3, b"b"), &mut payload);
        let chunk = decode(&encode(0, &ZERO_HASH, 1, 2, &payload).unwrap()).unwrap();
        assert!(matches!(chunk.check_frames(), Err(ChunkError::FrameDecode { seq: 2, .. })));

        let mut payload = Vec::new();
        encode_frame(frame(1, b"a"), &mut payload);
        let chunk = decode(&encode(0, &ZERO_HASH, 1, 2, &payload).unwrap()).unwrap();
        assert_eq!(chunk.check_frames(), Err(ChunkError::FrameCount { expected: 2, found: 1 }));
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let zeros = vec![0u8; 64 << 20];
        let compressed = zstd::bulk::compress(&zeros, 3).unwrap();
        let header = Header { index: 0, first_seq: 1, last_seq: 1, prev_hash: ZERO_HASH, payload_len: 1 << 20 };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        bytes.extend_from_slice(&compressed);
        assert!(matches!(decode(&bytes), Err(ChunkError::Decompress(_))));
    }

    /// Every single-byte change, and random runs of changes, truncations and
    /// extensions of a valid chunk: refused or decoded, never a panic.
    #[test]
    fn mutations_never_panic() {
        use rand::{Rng, SeedableRng};

        let bytes = sample();
        let walk = |bytes: &[u8]| {
            if let Ok(chunk) = decode(bytes) {
                for frame in chunk.frames() {
                    let _ = frame;
                }
            }
        };
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut changed = bytes.clone();
                changed[at] ^= 1 << bit;
                walk(&changed);
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let mut changed = bytes.clone();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..changed.len());
                changed[at] = rng.r#gen();
            }
            match rng.gen_range(0..3) {
                0 => changed.truncate(rng.gen_range(0..changed.len())),
                1 => changed.extend((0..rng.gen_range(1..64)).map(|_| rng.r#gen::<u8>())),
                _ => {}
            }
            walk(&changed);
        }
    }

    #[test]
    fn seqs_past_the_limit_are_refused() {
        let mut bytes = sample();
        bytes[21..29].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode(&bytes), Err(ChunkError::SeqRange { .. })));
    }

    #[test]
    fn link_chains_the_previous_hash() {
        let bytes = sample();
        assert_ne!(link(&ZERO_HASH, &bytes), link(&[1; 32], &bytes));
        let mut h = Sha256::new();
        h.update([1u8; 32]);
        h.update(&bytes);
        assert_eq!(link(&[1; 32], &bytes), <Hash>::from(h.finalize()));
    }
}
