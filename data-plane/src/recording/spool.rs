//! The spool: one append-only file per session,
//! `<spool_dir>/<tenant>/<session>.spool`, holding what the recorder has not
//! acknowledged yet.
//!
//! ```text
//! "ALSP" 0x01          header: magic and version
//! u32 len, SessionOpen the session's metadata
//! u32 len, Frame       its frames: seq 1, 2, 3, ... (the end last)
//! ```
//!
//! Lengths are big-endian and count the protobuf message only. Frames are
//! stored without their `session_id` (the file names the session); reading
//! fills it in. Parsing is sans-IO and bounded: a length of zero or over
//! [`MAX_RECORD_BYTES`] is refused before anything is allocated for it, and a
//! record cut short at the end of what is readable is reported as such (after
//! a crash mid-write, that is the torn tail to cut off).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_core::{SessionId, TenantId};
use airlock_proto::v1::{self, frame::Body};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

pub const MAGIC: [u8; 4] = *b"ALSP";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 5;
/// The length in front of every record.
pub const PREFIX_LEN: usize = 4;
/// The most body bytes one frame holds, the recorder's own limit. Longer
/// writes are split over several frames.
pub const MAX_FRAME_BODY_BYTES: usize = 4 << 20;
/// The largest record: a frame at its largest, with room for its other fields.
pub const MAX_RECORD_BYTES: usize = MAX_FRAME_BODY_BYTES + (64 << 10);
/// The largest text of one metadata field of an open (the recorder's limit).
pub const MAX_METADATA_FIELD: usize = 4096;
/// A decision's statement is cut to this many bytes (the statement's bytes
/// are whole in the client's frames).
pub const MAX_DECISION_STATEMENT: usize = 1 << 20;
/// ... and each of its other texts to this many.
pub const MAX_DECISION_TEXT: usize = 4096;
/// How much is read from a spool file at once, unless a record needs more.
const READ_AHEAD: usize = 64 << 10;

/// File names: `<session>.spool` while the recorder has not closed the
/// session, `<session>.failed` once the recorder refused it (kept for an
/// operator; it still counts against the bound).
pub const SPOOL_EXT: &str = "spool";
pub const FAILED_EXT: &str = "failed";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("not a spool file: bad header")]
    BadHeader,
    #[error("a record of {0} bytes, outside 1..={MAX_RECORD_BYTES}")]
    BadLength(u64),
    #[error("a record that does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("expected frame {expected}, found frame {found}")]
    OutOfOrder { expected: u64, found: u64 },
    #[error("a frame without a body")]
    NoBody,
    #[error("the file ends inside a record")]
    Torn,
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub fn put_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
}

/// Appends `message` as one record.
pub fn put_message(buf: &mut Vec<u8>, message: &impl Message) -> Result<(), SpoolError> {
    let len = message.encoded_len();
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(SpoolError::BadLength(len as u64));
    }
    buf.put_u32(len as u32);
    message.encode_raw(buf);
    Ok(())
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the client.
    Client,
    /// To the client, as it received them.
    Server,
}

impl Way {
    fn tag(self) -> u32 {
        match self {
            Way::Client => 4,
            Way::Server => 5,
        }
    }
}

/// Appends a frame of relayed bytes as one record, encoded straight from the
/// slice (the same bytes prost would write for the `Frame`, without its
/// `session_id`). `data` is at most [`MAX_FRAME_BODY_BYTES`].
pub fn put_bytes_frame(buf: &mut Vec<u8>, seq: u64, at_unix_micros: i64, way: Way, data: &[u8]) {
    let at = at_unix_micros as u64;
    let len = key_len(2)
        + encoded_len_varint(seq)
        + key_len(3)
        + encoded_len_varint(at)
        + key_len(way.tag())
        + encoded_len_varint(data.len() as u64)
        + data.len();
    buf.reserve(PREFIX_LEN + len);
    buf.put_u32(len as u32);
    encode_key(2, WireType::Varint, buf);
    encode_varint(seq, buf);
    encode_key(3, WireType::Varint, buf);
    encode_varint(at, buf);
    encode_key(way.tag(), WireType::LengthDelimited, buf);
    encode_varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

/// The header at the front of `buf`: `None` until `buf` holds it whole.
pub fn check_header(buf: &[u8]) -> Result<Option<()>, SpoolError> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(None) };
    if header.get(..4) != Some(&MAGIC[..]) || header.get(4) != Some(&VERSION) {
        return Err(SpoolError::BadHeader);
    }
    Ok(Some(()))
}

/// The length of the record at the front of `buf`, prefix included, once its
/// prefix is there.
pub fn record_len(buf: &[u8]) -> Result<Option<usize>, SpoolError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else { return Ok(None) };
    let mut prefix = prefix;
    let len = prefix.get_u32() as usize;
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(SpoolError::BadLength(len as u64));
    }
    Ok(Some(PREFIX_LEN + len))
}

/// Takes the next whole record off the front of `buf` (its message, without
/// the prefix); `None` while `buf` holds only part of it.
pub fn next_record(buf: &mut BytesMut) -> Result<Option<Bytes>, SpoolError> {
    match record_len(buf)? {
        Some(total) if buf.len() >= total => {
            let mut record = buf.split_to(total);
            record.advance(PREFIX_LEN);
            Ok(Some(record.freeze()))
        }
        _ => Ok(None),
    }
}

/// A frame record as the recorder wants it: with its session id.
pub fn decode_frame(record: Bytes, session_id: &str) -> Result<v1::Frame, SpoolError> {
    let mut frame = v1::Frame::decode(record)?;
    if frame.body.is_none() {
        return Err(SpoolError::NoBody);
    }
    session_id.clone_into(&mut frame.session_id);
    Ok(frame)
}

pub fn is_end(frame: &v1::Frame) -> bool {
    matches!(frame.body, Some(Body::End(_)))
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut at = max;
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
}

/// What the next read of a spool file found.
#[derive(Debug)]
pub enum Next {
    /// A whole record starting at `offset`.
    Record { offset: u64, message: Bytes },
    /// Nothing left before the limit.
    End,
    /// Bytes before the limit that are not a whole record (from the reader's position on).
    Partial,
}

/// Reads records of one spool file in order, up to a limit the caller gives
/// (the length the writer has finished), a bounded buffer at a time. The file
/// is opened at the first read.
pub struct Reader {
    path: PathBuf,
    /// The session's file, shared with its tap when it has one (reads are
    /// positional, so the tap's appends and these reads never move each
    /// other's offset): a recorded session holds one descriptor for it.
    file: Option<Arc<File>>,
    /// The offset in the file of `buf`'s first byte.
    pos: u64,
    buf: BytesMut,
}

impl Reader {
    pub fn new(path: &Path, offset: u64) -> Self {
        Self { path: path.to_path_buf(), file: None, pos: offset, buf: BytesMut::new() }
    }

    /// Reads through `file` (opened for reading) rather than opening `path` itself.
    pub fn with_file(path: &Path, offset: u64, file: Option<Arc<File>>) -> Self {
        Self { path: path.to_path_buf(), file, pos: offset, buf: BytesMut::new() }
    }

    /// The offset of the next record.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn seek(&mut self, offset: u64) {
        self.pos = offset;
        self.buf.clear();
    }

    /// Checks the header at the start of the file and moves past it.
    pub fn header(&mut self, limit: u64) -> Result<(), SpoolError> {
        self.seek(0);
        if !self.fill(HEADER_LEN, limit)? {
            return Err(SpoolError::Torn);
        }
        check_header(&self.buf)?;
        self.buf.advance(HEADER_LEN);
        self.pos = HEADER_LEN as u64;
        Ok(())
    }

    /// The next record that ends at or before `limit`.
    pub fn next(&mut self, limit: u64) -> Result<Next, SpoolError> {
        let total = match record_len(&self.buf)? {
            Some(total) => total,
            None => {
                if !self.fill(PREFIX_LEN, limit)? {
                    return Ok(self.short(limit));
                }
                record_len(&self.buf)?.unwrap_or(PREFIX_LEN)
            }
        };
        if !self.fill(total, limit)? {
            return Ok(self.short(limit));
        }
        let offset = self.pos;
        let message = next_record(&mut self.buf)?.ok_or(SpoolError::Torn)?;
        self.pos += total as u64;
        if self.buf.is_empty() {
            // An idle session keeps no buffer.
            self.buf = BytesMut::new();
        }
        Ok(Next::Record { offset, message })
    }

    fn short(&self, limit: u64) -> Next {
        if self.pos >= limit { Next::End } else { Next::Partial }
    }

    /// Reads until `buf` holds `need` bytes; false when `limit` (or the end of
    /// the file) comes first.
    fn fill(&mut self, need: usize, limit: u64) -> io::Result<bool> {
        if self.buf.len() >= need {
            return Ok(true);
        }
        let end = self.pos + self.buf.len() as u64;
        let available = limit.saturating_sub(end);
        let missing = (need - self.buf.len()) as u64;
        if available < missing {
            return Ok(false);
        }
        // `need` is at most a record's length: `want` is bounded too.
        let want = available.min(missing.max(READ_AHEAD as u64)) as usize;
        let start = self.buf.len();
        let file = match &self.file {
            Some(file) => file.clone(),
            None => self.file.insert(Arc::new(File::open(&self.path)?)).clone(),
        };
        self.buf.resize(start + want, 0);
        let mut got = 0;
        while got < want {
            let Some(into) = self.buf.get_mut(start + got..) else { break };
            match file.read_at(into, end + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(start + got);
        Ok(self.buf.len() >= need)
    }
}

/// A session's spool file found when the worker starts.
#[derive(Debug)]
pub struct Found {
    pub tenant: TenantId,
    pub session: SessionId,
    pub path: PathBuf,
    pub open: v1::SessionOpen,
    /// Where its frames start.
    pub data_start: u64,
    pub len: u64,
}

/// What an earlier run left in the spool.
#[derive(Debug, Default)]
pub struct Scan {
    pub sessions: Vec<Found>,
    /// Every file's bytes, failed ones included.
    pub bytes: u64,
}

/// Lists the spool: every session file with its open, and the bytes they
/// hold. A file without a whole open (the worker stopped while creating it,
/// before anything was recorded in it) is removed.
pub fn scan(dir: &Path) -> io::Result<Scan> {
    let mut scan = Scan::default();
    for tenant_dir in std::fs::read_dir(dir)? {
        let tenant_dir = tenant_dir?;
        let Some(tenant) = tenant_dir.file_name().to_str().and_then(|n| n.parse::<TenantId>().ok()) else {
            continue;
        };
        if !tenant_dir.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(tenant_dir.path())? {
            let file = file?;
            let path = file.path();
            let len = file.metadata()?.len();
            let ext = path.extension().and_then(|e| e.to_str());
            let session = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<SessionId>().ok());
            let Some(session) = session else { continue };
            match ext {
                Some(FAILED_EXT) => scan.bytes += len,
                Some(SPOOL_EXT) => match read_open(&path, len) {
                    Ok((open, data_start)) if open.session_id == session.to_string() => {
                        scan.bytes += len;
                        scan.sessions.push(Found { tenant, session, path, open, data_start, len });
                    }
                    Ok(_) => {
                        scan.bytes += len;
                        tracing::warn!(
                            %tenant, %session,
                            "a spool file holds another session's open: left in place, not uploaded"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(%tenant, %session, "removing a spool file without a whole open: {e}");
                        std::fs::remove_file(&path)?;
                    }
                },
                _ => {}
            }
        }
    }
    Ok(scan)
}

/// The open at the start of a spool file, and where its frames start.
pub fn read_open(path: &Path, len: u64) -> Result<(v1::SessionOpen, u64), SpoolError> {
    let mut reader = Reader::new(path, 0);
    reader.header(len)?;
    match reader.next(len)? {
        Next::Record { message, .. } => Ok((v1::SessionOpen::decode(message)?, reader.position())),
        Next::End | Next::Partial => Err(SpoolError::Torn),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;

    fn frame(seq: u64, body: Body) -> v1::Frame {
        v1::Frame { session_id: String::new(), seq, at_unix_micros: 1_700_000_000_000_000, body: Some(body) }
    }

    #[test]
    fn a_bytes_frame_is_what_prost_would_encode() {
        for (way, data) in [(Way::Client, &b"Q\0\0\0\x0dSELECT 1;\0"[..]), (Way::Server, &b""[..])] {
            let mut ours = Vec::new();
            put_bytes_frame(&mut ours, 7, 1_700_000_000_000_000, way, data);
            let body = match way {
                Way::Client => Body::ClientBytes(Bytes::copy_from_slice(data)),
                Way::Server => Body::ServerBytes(Bytes::copy_from_slice(data)),
            };
            let mut theirs = Vec::new();
            put_message(&mut theirs, &frame(7, body)).unwrap();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_reader_sharing_the_writers_file_reads_what_is_appended() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.spool");
        let file = std::fs::OpenOptions::new().append(true).read(true).create_new(true).open(&path).unwrap();
        let file = Arc::new(file);
        let mut bytes = Vec::new();
        put_bytes_frame(&mut bytes, 1, 1, Way::Client, b"hello");
        (&*file).write_all(&bytes).unwrap();
        let first = bytes.len() as u64;
        let mut reader = Reader::with_file(&path, 0, Some(file.clone()));
        assert!(matches!(reader.next(first).unwrap(), Next::Record { offset: 0, .. }));
        assert!(matches!(reader.next(first).unwrap(), Next::End));
        // The writer appends through the same handle; the reader's reads did not move its offset.
        let mut more = Vec::new();
        put_bytes_frame(&mut more, 2, 2, Way::Server, b"world");
        (&*file).write_all(&more).unwrap();
        let Next::Record { offset, message } = reader.next(first + more.len() as u64).unwrap() else {
            panic!("no record")
        };
        assert_eq!(offset, first);
        assert_eq!(decode_frame(message, "s").unwrap().seq, 2);
        assert_eq!(std::fs::read(&path).unwrap().len() as u64, first + more.len() as u64);
    }

    #[test]
    fn records_come_back_whole_and_never_from_a_prefix() {
        let mut bytes = Vec::new();
        put_bytes_frame(&mut bytes, 1, 1, Way::Client, b"hello");
        let end = v1::SessionEnd { reason: "client closed".into(), client_bytes: 5, server_bytes: 0 };
        put_message(&mut bytes, &frame(2, Body::End(end))).unwrap();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let mut seqs = Vec::new();
            while let Some(record) = next_record(&mut buf).unwrap() {
                seqs.push(decode_frame(record, "s").unwrap().seq);
            }
            assert!(seqs.len() < 2, "a prefix of {cut} bytes gave {seqs:?}");
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let first = decode_frame(next_record(&mut buf).unwrap().unwrap(), "s").unwrap();
        assert_eq!((first.session_id.as_str(), first.seq), ("s", 1));
        assert_eq!(first.body, Some(Body::ClientBytes(Bytes::from_static(b"hello"))));
        let second = decode_frame(next_record(&mut buf).unwrap().unwrap(), "s").unwrap();
        assert!(is_end(&second));
        assert!(buf.is_empty());
    }

    #[test]
    fn absurd_and_empty_lengths_are_refused() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(matches!(next_record(&mut buf), Err(SpoolError::BadLength(0xffff_ffff))));
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(next_record(&mut buf), Err(SpoolError::BadLength(0))));
        let too_long = (MAX_RECORD_BYTES + 1) as u32;
        assert!(matches!(record_len(&too_long.to_be_bytes()), Err(SpoolError::BadLength(_))));
    }

    #[test]
    fn a_header_is_checked() {
        let mut header = Vec::new();
        put_header(&mut header);
        assert!(check_header(&header[..3]).unwrap().is_none());
        assert!(check_header(&header).unwrap().is_some());
        assert!(matches!(check_header(b"ALSP\x02"), Err(SpoolError::BadHeader)));
        assert!(matches!(check_header(b"PK\x03\x04\x01"), Err(SpoolError::BadHeader)));
    }

    #[test]
    fn the_reader_stops_at_its_limit_and_reports_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.spool");
        let mut bytes = Vec::new();
        put_header(&mut bytes);
        let open = v1::SessionOpen { session_id: "s".into(), ..Default::default() };
        put_message(&mut bytes, &open).unwrap();
        let data_start = bytes.len() as u64;
        put_bytes_frame(&mut bytes, 1, 1, Way::Client, &[7; 100_000]);
        let first_end = bytes.len() as u64;
        put_bytes_frame(&mut bytes, 2, 2, Way::Server, b"row");
        std::fs::write(&path, &bytes).unwrap();

        let (read, start) = read_open(&path, bytes.len() as u64).unwrap();
        assert_eq!((read, start), (open, data_start));
        let mut reader = Reader::new(&path, data_start);
        // Up to a limit inside frame 2: frame 1, then a partial record.
        let limit = first_end + 3;
        assert!(matches!(reader.next(limit).unwrap(), Next::Record { offset, .. } if offset == data_start));
        assert!(matches!(reader.next(limit).unwrap(), Next::Partial));
        assert_eq!(reader.position(), first_end);
        assert!(matches!(reader.next(bytes.len() as u64).unwrap(), Next::Record { offset, .. } if offset == first_end));
        assert!(matches!(reader.next(bytes.len() as u64).unwrap(), Next::End));
        // Two bytes of a prefix are a partial record too.
        assert!(matches!(reader.next(bytes.len() as u64 + 2).unwrap(), Next::Partial));
    }

    #[test]
    fn texts_are_cut_on_character_boundaries() {
        let mut text = "ééé".to_owned();
        truncate_utf8(&mut text, 3);
        assert_eq!(text, "é");
        let mut short = "abc".to_owned();
        truncate_utf8(&mut short, 10);
        assert_eq!(short, "abc");
    }
}
