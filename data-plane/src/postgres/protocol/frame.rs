//! Framing of every message after startup: Byte1 tag, Int32 length (counting
//! itself but not the tag), then `length - 4` bytes of body.
//!
//! A [`Frame`] holds the whole message as it arrived, so a message the gateway
//! does not change is forwarded byte for byte with [`Frame::raw`].

use bytes::{BufMut, Bytes, BytesMut};

use super::{ProtocolError, Tag};

/// Tag byte plus length field.
pub const HEADER_LEN: usize = 5;

/// Default cap on the length field of the client's large messages (Query,
/// Parse, Bind, FunctionCall, CopyData). Postgres itself allows 1 GiB - 1
/// (`PQ_LARGE_MESSAGE_LIMIT`); the gateway holds a whole message in memory to
/// inspect it, so it stops at 64 MiB unless configured higher (raise it for
/// COPY rows or bound parameters larger than that).
pub const DEFAULT_MAX_FRONTEND_MESSAGE_LEN: usize = 64 << 20;

/// Postgres's `PQ_SMALL_MESSAGE_LIMIT`: the cap on the client's other messages
/// (Sync, Describe, Close, Execute, CopyDone, CopyFail, Terminate, unknown tags).
pub const SMALL_MESSAGE_LEN: usize = 10_000;

/// Postgres's `PG_MAX_AUTH_TOKEN_LENGTH`: the cap on password and SASL messages.
pub const MAX_AUTH_MESSAGE_LEN: usize = 65_535;

/// Default cap on a server message's length field: Postgres builds each
/// message in one allocation of at most 1 GiB - 1 (`MaxAllocSize`), so this
/// refuses nothing a real server sends.
pub const DEFAULT_MAX_BACKEND_MESSAGE_LEN: usize = 1 << 30;

/// One typed message, kept whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Tag, length and body exactly as received; always at least [`HEADER_LEN`] bytes.
    raw: Bytes,
}

impl Frame {
    /// Builds a message from a tag and a body.
    pub fn new(tag: u8, body: &[u8]) -> Result<Frame, ProtocolError> {
        let len = body
            .len()
            .checked_add(4)
            .filter(|len| i32::try_from(*len).is_ok())
            .ok_or(ProtocolError::MessageTooLong { tag: Tag(tag), len: body.len(), max: i32::MAX as usize - 4 })?;
        let mut raw = BytesMut::with_capacity(len + 1);
        raw.put_u8(tag);
        raw.put_i32(len as i32);
        raw.put_slice(body);
        Ok(Frame { raw: raw.freeze() })
    }

    pub fn tag(&self) -> u8 {
        self.raw.first().copied().unwrap_or_default()
    }

    /// The body, without tag and length.
    pub fn body(&self) -> Bytes {
        self.raw.slice(HEADER_LEN.min(self.raw.len())..)
    }

    /// The whole message as received: tag, length and body.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Total size on the wire.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies carry SQL and data: show only the shape.
        f.debug_struct("Frame").field("tag", &Tag(self.tag())).field("body_len", &self.body().len()).finish()
    }
}

/// Takes one message off the front of `buf`. `Ok(None)` (buffer untouched)
/// until the whole message has arrived. A length field under 4 (negative
/// included) or over `max_len` is refused as soon as the header is read, so
/// the caller never waits for, or buffers, an oversized body.
pub fn parse_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    match peek_frame(buf, max_len)? {
        Some((_, total)) => Ok(Some(Frame { raw: buf.split_to(total).freeze() })),
        // No `reserve(total)` here: a declared length is not yet a reason to
        // allocate; the buffer grows as bytes actually arrive.
        None => Ok(None),
    }
}

/// The tag and whole length (tag included) of the message at the front of
/// `buf`, once all of it has arrived; the same checks as [`parse_frame`],
/// without taking anything. For forwarding runs of messages as they came.
pub fn peek_frame(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..HEADER_LEN) else { return Ok(None) };
    let declared = i32::from_be_bytes([a, b, c, d]);
    if declared < 4 {
        return Err(ProtocolError::InvalidLength { tag: Tag(tag), len: declared });
    }
    let len = declared as usize;
    if len > max_len {
        return Err(ProtocolError::MessageTooLong { tag: Tag(tag), len, max: max_len });
    }
    let total = len + 1;
    if buf.len() < total { Ok(None) } else { Ok(Some((tag, total))) }
}

/// The cap Postgres applies to a client message with this tag, with
/// `large_max` standing in for its 1 GiB limit on the large ones.
pub fn frontend_max_len(tag: u8, large_max: usize) -> usize {
    match tag {
        b'Q' | b'P' | b'B' | b'F' | b'd' => large_max,
        b'p' => MAX_AUTH_MESSAGE_LEN,
        _ => SMALL_MESSAGE_LEN,
    }
}

/// [`parse_frame`] for client messages, capped per tag as Postgres does
/// ([`frontend_max_len`]).
pub fn parse_frontend_frame(buf: &mut BytesMut, large_max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(&tag) = buf.first() else { return Ok(None) };
    parse_frame(buf, frontend_max_len(tag, large_max))
}
