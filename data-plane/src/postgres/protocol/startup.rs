//! The first message on a client connection, which has no tag: a
//! StartupMessage, or one of the special requests that share its framing
//! (SSLRequest, GSSENCRequest, CancelRequest). Layout: Int32 length (including
//! itself), Int32 code, then the code's payload.

use bytes::{BufMut, BytesMut};

use super::ProtocolError;
use super::reader::Reader;

/// The longest startup packet accepted, Postgres's own `MAX_STARTUP_PACKET_LENGTH`.
/// Checked against the declared length before the body is waited for.
pub const MAX_STARTUP_LEN: usize = 10_000;

pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Protocol 3.0's cancel key is 4 bytes; 3.2 allows up to 256.
pub const MIN_CANCEL_KEY_LEN: usize = 4;
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// The protocol version of [`encode_startup`] messages the gateway sends upstream.
pub const PROTOCOL_3_0: (u16, u16) = (3, 0);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    CancelRequest {
        pid: i32,
        secret_key: Vec<u8>,
    },
    /// The parameters in the order, duplicates included, and bytes exactly as
    /// the client sent them (no UTF-8 conversion).
    Startup {
        protocol: (u16, u16),
        params: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

impl Startup {
    /// The value of the first parameter called `name`.
    pub fn first_param(&self, name: &[u8]) -> Option<&[u8]> {
        match self {
            Startup::Startup { params, .. } => params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice()),
            _ => None,
        }
    }

    /// The value of the last parameter called `name`: the one Postgres uses
    /// when a client sends a name twice.
    pub fn last_param(&self, name: &[u8]) -> Option<&[u8]> {
        match self {
            Startup::Startup { params, .. } => params.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice()),
            _ => None,
        }
    }
}

/// Parses the first message of a client connection. `Ok(None)` (buffer
/// untouched) until the whole packet has arrived; a declared length under 8
/// or over [`MAX_STARTUP_LEN`] is refused as soon as the length is read.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<Startup>, ProtocolError> {
    let Some(len_bytes) = buf.get(..4) else { return Ok(None) };
    let mut len_arr = [0u8; 4];
    len_arr.copy_from_slice(len_bytes);
    let declared = i32::from_be_bytes(len_arr);
    if declared < 8 {
        return Err(ProtocolError::StartupTooShort(declared));
    }
    let len = usize::try_from(declared).map_err(|_| ProtocolError::StartupTooShort(declared))?;
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::StartupTooLong(declared));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len).freeze();
    // Tag 0 only labels errors; the startup packet has none.
    let mut r = Reader::new(0, packet);
    r.i32("length")?;
    let code = r.i32("code")?;
    let startup = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if len != 8 {
                let what = if code == SSL_REQUEST_CODE { "SSLRequest" } else { "GSSENCRequest" };
                return Err(ProtocolError::InvalidSpecialLength { what, len: declared });
            }
            if code == SSL_REQUEST_CODE { Startup::SslRequest } else { Startup::GssEncRequest }
        }
        CANCEL_REQUEST_CODE => {
            let key_len = len.saturating_sub(12);
            if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&key_len) || len < 12 {
                return Err(ProtocolError::InvalidSpecialLength { what: "CancelRequest", len: declared });
            }
            let pid = r.i32("process id")?;
            let secret_key = r.rest().to_vec();
            Startup::CancelRequest { pid, secret_key }
        }
        _ => {
            let version = code as u32;
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let name = r.cstr("parameter list not terminated").map_err(startup_error)?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr("parameter without a value").map_err(startup_error)?;
                params.push((name.to_vec(), value.to_vec()));
            }
            if r.remaining() != 0 {
                return Err(ProtocolError::InvalidStartup("bytes after the parameter list"));
            }
            Startup::Startup { protocol: (major, minor), params }
        }
    };
    Ok(Some(startup))
}

fn startup_error(e: ProtocolError) -> ProtocolError {
    match e {
        ProtocolError::Malformed { what, .. } => ProtocolError::InvalidStartup(what),
        other => other,
    }
}

/// Appends a StartupMessage. Names and values must not contain a zero byte
/// and names must not be empty (either would change the list's meaning).
pub fn encode_startup(
    buf: &mut BytesMut,
    protocol: (u16, u16),
    params: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), ProtocolError> {
    let mut len = 4 + 4 + 1;
    for (name, value) in params {
        if name.is_empty() {
            return Err(ProtocolError::InvalidStartup("empty parameter name"));
        }
        if name.contains(&0) || value.contains(&0) {
            return Err(ProtocolError::EmbeddedNul("a startup parameter"));
        }
        len += name.len() + 1 + value.len() + 1;
    }
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::StartupTooLong(i32::try_from(len).unwrap_or(i32::MAX)));
    }
    buf.reserve(len);
    buf.put_i32(len as i32);
    buf.put_u16(protocol.0);
    buf.put_u16(protocol.1);
    for (name, value) in params {
        buf.put_slice(name);
        buf.put_u8(0);
        buf.put_slice(value);
        buf.put_u8(0);
    }
    buf.put_u8(0);
    Ok(())
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(SSL_REQUEST_CODE);
}

/// Appends a CancelRequest.
pub fn encode_cancel_request(buf: &mut BytesMut, pid: i32, secret_key: &[u8]) -> Result<(), ProtocolError> {
    if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&secret_key.len()) {
        return Err(ProtocolError::InvalidSpecialLength {
            what: "CancelRequest",
            len: i32::try_from(12 + secret_key.len()).unwrap_or(i32::MAX),
        });
    }
    buf.put_i32(12 + secret_key.len() as i32);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_slice(secret_key);
    Ok(())
}
