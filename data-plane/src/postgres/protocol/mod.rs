//! The Postgres wire protocol (version 3.0, with 3.2's longer cancel keys), sans-IO.
//!
//! Every parser here takes a `&mut BytesMut` read buffer and returns
//! `Ok(None)` when it needs more bytes (leaving the buffer untouched), the
//! message when one is complete (consuming exactly its bytes), or a
//! [`ProtocolError`] when the bytes cannot be a valid message. Nothing reads
//! past a message's declared length, nothing converts text to UTF-8 (clients
//! may speak LATIN1 or any other `client_encoding`), and every length is
//! checked against a cap before a byte of the body is waited for.
//!
//! - [`startup`]: the untyped first message (StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest).
//! - [`frame`]: the typed `tag, length, body` framing of every later message;
//!   a [`Frame`] keeps the original bytes so the gateway forwards what it does
//!   not change byte for byte.
//! - [`frontend`]: the client's messages, decoded as far as policy needs.
//! - [`backend`]: the server's messages the gateway reads.
//! - [`encode`]: what the gateway writes: synthesised errors, notices and
//!   authentication toward the client, and startup/authentication/queries toward
//!   the upstream server.

pub mod backend;
pub mod encode;
pub mod frame;
pub mod frontend;
pub mod startup;

mod reader;

use std::fmt;

pub use backend::{Authentication, BackendMessage, ErrorFields, FieldDescription, decode_backend};
pub use frame::{DEFAULT_MAX_BACKEND_MESSAGE_LEN, DEFAULT_MAX_FRONTEND_MESSAGE_LEN, Frame, parse_frame};
pub use frontend::{FrontendMessage, decode_frontend};
pub use startup::{MAX_STARTUP_LEN, Startup, encode_startup, parse_startup};

/// Why bytes are not a valid protocol message. The messages are safe to show a
/// client: they name the message and the length, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid startup packet length {0}")]
    StartupTooShort(i32),
    #[error("startup packet longer than {max} bytes", max = MAX_STARTUP_LEN)]
    StartupTooLong(i32),
    #[error("unsupported frontend protocol {major}.{minor}: only protocol 3 is supported")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid {what} packet length {len}")]
    InvalidSpecialLength { what: &'static str, len: i32 },
    #[error("invalid startup packet: {0}")]
    InvalidStartup(&'static str),
    #[error("invalid message length {len} for message {tag}")]
    InvalidLength { tag: Tag, len: i32 },
    #[error("message {tag} of {len} bytes is longer than the limit of {max} bytes")]
    MessageTooLong { tag: Tag, len: usize, max: usize },
    #[error("invalid message {tag}: {what}")]
    Malformed { tag: Tag, what: &'static str },
    #[error("invalid message {tag}: {extra} unexpected bytes after the last field")]
    TrailingBytes { tag: Tag, extra: usize },
    #[error("{0} must not contain a zero byte")]
    EmbeddedNul(&'static str),
}

/// A message tag as a client-safe label: `'Q'` for printable ASCII, `0x00` otherwise.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() { write!(f, "'{}'", char::from(self.0)) } else { write!(f, "0x{:02x}", self.0) }
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// SQLSTATE codes the gateway uses in the errors it synthesises.
pub mod sqlstate {
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INTERNAL_ERROR: &str = "XX000";
}
