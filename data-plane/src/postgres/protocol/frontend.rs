//! The client's messages, decoded as far as policy needs and no further.
//!
//! Each decoder reads strictly inside the frame's declared body: a field that
//! would run past it is an error, and so are bytes left after the last field
//! (Postgres's `pq_getmsgend`). Text stays raw bytes in the client's encoding.
//! Counts are read as Postgres reads them (`pq_getmsgint(msg, 2)`: unsigned
//! 16-bit, so 0..=65535), which keeps every count within the body's own bounds.

use bytes::Bytes;

use super::ProtocolError;
use super::frame::Frame;
use super::reader::Reader;

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `S`: a prepared statement.
    Statement,
    /// `P`: a portal.
    Portal,
}

impl ObjectKind {
    pub fn as_byte(self) -> u8 {
        match self {
            ObjectKind::Statement => b'S',
            ObjectKind::Portal => b'P',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// `Q`: a simple query, possibly several statements.
    Query { sql: Bytes },
    /// `P`: an empty `name` is the unnamed statement.
    Parse { name: Bytes, sql: Bytes, param_types: Vec<u32> },
    /// `B`: `params` in the order of the statement's placeholders, `None` for NULL.
    Bind {
        portal: Bytes,
        statement: Bytes,
        /// Empty (all text), one (applies to all) or one per parameter: 0 text, 1 binary.
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
    },
    /// `E`: `max_rows` 0 means no limit.
    Execute { portal: Bytes, max_rows: i32 },
    /// `D`
    Describe { kind: ObjectKind, name: Bytes },
    /// `C`
    Close { kind: ObjectKind, name: Bytes },
    /// `S`
    Sync,
    /// `H`
    Flush,
    /// `X`
    Terminate,
    /// `d`: during COPY FROM STDIN.
    CopyData(Bytes),
    /// `c`
    CopyDone,
    /// `f`
    CopyFail { message: Bytes },
    /// `F`: a fast-path function call, which runs a function by OID without a
    /// statement for policy to see. Kept raw so the gateway can refuse it.
    FunctionCall { body: Bytes },
    /// `p`: PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse;
    /// which one depends on the authentication exchange, so it is kept raw (see
    /// [`decode_password`] and [`decode_sasl_initial_response`]).
    Password(Bytes),
    /// Any other tag. The gateway refuses these rather than forward what it
    /// cannot inspect.
    Unknown(u8),
}

pub fn decode_frontend(frame: &Frame) -> Result<FrontendMessage, ProtocolError> {
    let tag = frame.tag();
    let mut r = Reader::new(tag, frame.body());
    let msg = match tag {
        b'Q' => FrontendMessage::Query { sql: r.cstr("query string not terminated")? },
        b'P' => {
            let name = r.cstr("statement name not terminated")?;
            let sql = r.cstr("query string not terminated")?;
            let count = usize::from(r.u16("missing parameter type count")?);
            let mut param_types = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                param_types.push(r.u32("fewer parameter types than declared")?);
            }
            FrontendMessage::Parse { name, sql, param_types }
        }
        b'B' => {
            let portal = r.cstr("portal name not terminated")?;
            let statement = r.cstr("statement name not terminated")?;
            let param_formats = formats(&mut r, "fewer parameter formats than declared")?;
            let count = usize::from(r.u16("missing parameter count")?);
            let mut params = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                let len = r.i32("fewer parameters than declared")?;
                params.push(match len {
                    -1 => None,
                    len => {
                        let len = usize::try_from(len).map_err(|_| r.malformed("negative parameter length"))?;
                        Some(r.bytes(len, "parameter longer than the message")?)
                    }
                });
            }
            if param_formats.len() > 1 && param_formats.len() != params.len() {
                return Err(r.malformed("parameter format count does not match the parameter count"));
            }
            let result_formats = formats(&mut r, "fewer result formats than declared")?;
            FrontendMessage::Bind { portal, statement, param_formats, params, result_formats }
        }
        b'E' => FrontendMessage::Execute {
            portal: r.cstr("portal name not terminated")?,
            max_rows: r.i32("missing row limit")?,
        },
        b'D' | b'C' => {
            let kind = match r.u8("missing statement or portal marker")? {
                b'S' => ObjectKind::Statement,
                b'P' => ObjectKind::Portal,
                _ => return Err(r.malformed("target is neither a statement (S) nor a portal (P)")),
            };
            let name = r.cstr("name not terminated")?;
            if tag == b'D' { FrontendMessage::Describe { kind, name } } else { FrontendMessage::Close { kind, name } }
        }
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        b'X' => FrontendMessage::Terminate,
        b'd' => FrontendMessage::CopyData(r.rest()),
        b'c' => FrontendMessage::CopyDone,
        b'f' => FrontendMessage::CopyFail { message: r.cstr("message not terminated")? },
        b'F' => FrontendMessage::FunctionCall { body: r.rest() },
        b'p' => FrontendMessage::Password(r.rest()),
        other => return Ok(FrontendMessage::Unknown(other)),
    };
    r.finish()?;
    Ok(msg)
}

fn formats(r: &mut Reader, what: &'static str) -> Result<Vec<i16>, ProtocolError> {
    let count = usize::from(r.u16(what)?);
    let mut out = Vec::with_capacity(count.min(r.remaining() / 2));
    for _ in 0..count {
        out.push(r.i16(what)?);
    }
    Ok(out)
}

/// The format (0 text, 1 binary) of Bind parameter `index` under Postgres's
/// rule: no formats means text, one format applies to every parameter.
pub fn param_format(param_formats: &[i16], index: usize) -> i16 {
    match param_formats {
        [] => 0,
        [one] => *one,
        many => many.get(index).copied().unwrap_or(0),
    }
}

/// The lengths of a Parse body's statement name and text, when the body is
/// laid out as Postgres reads it: the two strings, a count of parameter types
/// and that many types, and nothing after them. A Parse the server would
/// refuse before reading it as a statement (and so keep the unnamed statement
/// it had) is not one the relay may take as the statement's new text.
pub fn parse_layout(body: &[u8]) -> Option<(usize, usize)> {
    let name_len = memchr::memchr(0, body)?;
    let rest = body.get(name_len + 1..)?;
    let sql_len = memchr::memchr(0, rest)?;
    let types = rest.get(sql_len + 1..)?;
    let count = usize::from(u16::from_be_bytes([*types.first()?, *types.get(1)?]));
    (types.len() == 2 + 4 * count).then_some((name_len, sql_len))
}

/// The portal and statement names at the start of a Bind body, read without
/// decoding the rest (the relay looks up the statement before deciding to
/// decode). Whatever a Bind that decodes names, this reads the same.
pub fn bind_names(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let portal_end = memchr::memchr(0, body)?;
    let rest = body.get(portal_end + 1..)?;
    let statement_end = memchr::memchr(0, rest)?;
    Some((body.get(..portal_end)?, rest.get(..statement_end)?))
}

/// A PasswordMessage body: the password (or `md5…` hash), NUL-terminated.
pub fn decode_password(body: &Bytes) -> Result<Bytes, ProtocolError> {
    let mut r = Reader::new(b'p', body.clone());
    let password = r.cstr("password not terminated")?;
    r.finish()?;
    Ok(password)
}

/// A SASLInitialResponse body: the mechanism and the client's first message
/// (`None` when its length is -1).
pub fn decode_sasl_initial_response(body: &Bytes) -> Result<(Bytes, Option<Bytes>), ProtocolError> {
    let mut r = Reader::new(b'p', body.clone());
    let mechanism = r.cstr("mechanism not terminated")?;
    let data = match r.i32("missing response length")? {
        -1 => None,
        len => {
            let len = usize::try_from(len).map_err(|_| r.malformed("negative response length"))?;
            Some(r.bytes(len, "response longer than the message")?)
        }
    };
    r.finish()?;
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::{bind_names, parse_layout};

    #[test]
    fn a_parse_is_read_only_when_laid_out_as_postgres_reads_it() {
        let body = |tail: &[u8]| [b"s\0SELECT $1\0".as_slice(), tail].concat();
        assert_eq!(parse_layout(&body(&[0, 0])), Some((1, 9)));
        assert_eq!(parse_layout(&body(&[0, 1, 0, 0, 0, 23])), Some((1, 9)));
        assert_eq!(parse_layout(&[0, 0, 0, 0]), Some((0, 0)));
        for tail in [&[][..], &[0], &[0, 1], &[0, 1, 0, 0, 0], &[0, 0, 9], &[0xff, 0xff], &[0, 1, 0, 0, 0, 23, 0]] {
            assert_eq!(parse_layout(&body(tail)), None, "{tail:?}");
        }
        assert_eq!(parse_layout(b"s\0SELECT 1"), None, "no end to the text");
        assert_eq!(parse_layout(b"s"), None, "no end to the name");
    }

    #[test]
    fn a_binds_names_are_read_up_to_their_terminators() {
        assert_eq!(bind_names(b"p\0s\0\0\0"), Some((&b"p"[..], &b"s"[..])));
        assert_eq!(bind_names(b"\0\0"), Some((&b""[..], &b""[..])));
        assert_eq!(bind_names(b"p\0s"), None, "no end to the statement's name");
        assert_eq!(bind_names(b"p"), None, "no end to the portal's name");
    }
}
