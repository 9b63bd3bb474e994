//! The server's messages the gateway reads: authentication and session setup
//! when it connects upstream, and the result messages policy may look at
//! (RowDescription and DataRow for masking, errors and command tags for the
//! record). Everything else is [`BackendMessage::Other`], forwarded raw.

use bytes::Bytes;

use super::ProtocolError;
use super::frame::Frame;
use super::reader::Reader;
use super::startup::{MAX_CANCEL_KEY_LEN, MIN_CANCEL_KEY_LEN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// 0
    Ok,
    /// 3
    CleartextPassword,
    /// 5
    Md5Password { salt: [u8; 4] },
    /// 10: the mechanisms the server offers, in its order of preference.
    Sasl { mechanisms: Vec<Bytes> },
    /// 11
    SaslContinue { data: Bytes },
    /// 12
    SaslFinal { data: Bytes },
    /// Kerberos, GSSAPI, SSPI, … : the request code.
    Unsupported(i32),
}

/// An ErrorResponse or NoticeResponse: `(field code, value)` pairs in the
/// order the server sent them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    pub fields: Vec<(u8, Bytes)>,
}

impl ErrorFields {
    pub fn get(&self, code: u8) -> Option<&Bytes> {
        self.fields.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// The untranslated severity (`V`, since 9.6), else the localised one (`S`).
    pub fn severity(&self) -> Option<&Bytes> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    /// The SQLSTATE (`C`).
    pub fn code(&self) -> Option<&Bytes> {
        self.get(b'C')
    }

    /// The primary message (`M`).
    pub fn message(&self) -> Option<&Bytes> {
        self.get(b'M')
    }

    pub fn detail(&self) -> Option<&Bytes> {
        self.get(b'D')
    }

    pub fn hint(&self) -> Option<&Bytes> {
        self.get(b'H')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: Bytes,
    pub table_oid: u32,
    pub column_attr: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// `R`
    Authentication(Authentication),
    /// `S`
    ParameterStatus { name: Bytes, value: Bytes },
    /// `K`: 4 bytes of key in protocol 3.0, up to 256 in 3.2.
    BackendKeyData { pid: i32, secret_key: Vec<u8> },
    /// `Z`: `I` idle, `T` in a transaction, `E` in a failed transaction.
    ReadyForQuery { status: u8 },
    /// `E`
    ErrorResponse(ErrorFields),
    /// `N`
    NoticeResponse(ErrorFields),
    /// `T`
    RowDescription(Vec<FieldDescription>),
    /// `D`: `None` for NULL.
    DataRow(Vec<Option<Bytes>>),
    /// `C`: e.g. `SELECT 1`, `INSERT 0 3`.
    CommandComplete { tag: Bytes },
    /// Any other message, to be forwarded as it came.
    Other(u8),
}

pub fn decode_backend(frame: &Frame) -> Result<BackendMessage, ProtocolError> {
    let tag = frame.tag();
    let mut r = Reader::new(tag, frame.body());
    let msg = match tag {
        b'R' => BackendMessage::Authentication(match r.i32("missing authentication code")? {
            0 => Authentication::Ok,
            3 => Authentication::CleartextPassword,
            5 => {
                let salt = r.u32("missing MD5 salt")?;
                Authentication::Md5Password { salt: salt.to_be_bytes() }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let mechanism = r.cstr("mechanism list not terminated")?;
                    if mechanism.is_empty() {
                        break;
                    }
                    mechanisms.push(mechanism);
                }
                Authentication::Sasl { mechanisms }
            }
            11 => Authentication::SaslContinue { data: r.rest() },
            12 => Authentication::SaslFinal { data: r.rest() },
            other => {
                // Their payloads (GSSAPI tokens, …) are not ours to check.
                r.rest();
                Authentication::Unsupported(other)
            }
        }),
        b'S' => BackendMessage::ParameterStatus {
            name: r.cstr("parameter name not terminated")?,
            value: r.cstr("parameter value not terminated")?,
        },
        b'K' => {
            let pid = r.i32("missing process id")?;
            let secret_key = r.rest();
            if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&secret_key.len()) {
                return Err(r.malformed("cancel key must be 4 to 256 bytes"));
            }
            BackendMessage::BackendKeyData { pid, secret_key: secret_key.to_vec() }
        }
        b'Z' => {
            let status = r.u8("missing transaction status")?;
            if !matches!(status, b'I' | b'T' | b'E') {
                return Err(r.malformed("unknown transaction status"));
            }
            BackendMessage::ReadyForQuery { status }
        }
        b'E' | b'N' => {
            let fields = error_fields(&mut r)?;
            if tag == b'E' { BackendMessage::ErrorResponse(fields) } else { BackendMessage::NoticeResponse(fields) }
        }
        b'T' => {
            let count = usize::from(r.u16("missing field count")?);
            // Each field is at least 19 bytes; never reserve for more than could fit.
            let mut fields = Vec::with_capacity(count.min(r.remaining() / 19));
            for _ in 0..count {
                fields.push(FieldDescription {
                    name: r.cstr("fewer fields than declared")?,
                    table_oid: r.u32("field truncated")?,
                    column_attr: r.i16("field truncated")?,
                    type_oid: r.u32("field truncated")?,
                    type_len: r.i16("field truncated")?,
                    type_mod: r.i32("field truncated")?,
                    format: r.i16("field truncated")?,
                });
            }
            BackendMessage::RowDescription(fields)
        }
        b'D' => {
            let count = usize::from(r.u16("missing column count")?);
            let mut cells = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                cells.push(match r.i32("fewer columns than declared")? {
                    -1 => None,
                    len => {
                        let len = usize::try_from(len).map_err(|_| r.malformed("negative column length"))?;
                        Some(r.bytes(len, "column longer than the message")?)
                    }
                });
            }
            BackendMessage::DataRow(cells)
        }
        b'C' => BackendMessage::CommandComplete { tag: r.cstr("command tag not terminated")? },
        other => return Ok(BackendMessage::Other(other)),
    };
    r.finish()?;
    Ok(msg)
}

/// Fields up to the terminating zero byte. A field's value is NUL-terminated.
fn error_fields(r: &mut Reader) -> Result<ErrorFields, ProtocolError> {
    let mut fields = Vec::new();
    loop {
        match r.u8("field list not terminated")? {
            0 => return Ok(ErrorFields { fields }),
            code => fields.push((code, r.cstr("field value not terminated")?)),
        }
    }
}
