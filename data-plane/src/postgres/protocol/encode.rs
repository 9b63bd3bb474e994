//! Messages the gateway writes: toward the client, the errors, notices and
//! session setup it synthesises; toward the upstream server, startup,
//! authentication and queries. Each appends to a `BytesMut` so a caller can
//! batch several messages into one write.
//!
//! Strings are written as NUL-terminated C strings, so a zero byte inside one
//! would end it early and shift every later field: text the gateway composes
//! has zero bytes dropped, and bytes passed through (passwords, SQL) are
//! refused with [`ProtocolError::EmbeddedNul`].

use bytes::{BufMut, BytesMut};

use super::{ProtocolError, Tag};

pub use super::startup::{encode_cancel_request, encode_ssl_request, encode_startup};

/// The single byte answering an SSLRequest or GSSENCRequest: go ahead with TLS.
pub const SSL_ACCEPTED: u8 = b'S';
/// The single byte answering an SSLRequest or GSSENCRequest: continue in plaintext.
pub const SSL_REFUSED: u8 = b'N';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the statement; the session goes on.
    Error,
    /// Ends the session.
    Fatal,
    Warning,
    Notice,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// An error or notice the gateway tells a client. Its text is what the client
/// sees: name the rule, never an internal address or secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub severity: Severity,
    /// A five-character SQLSTATE, see [`super::sqlstate`].
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Report {
    pub fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Report { severity, code, message: message.into(), detail: None, hint: None }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Report::new(Severity::Error, code, message)
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Report::new(Severity::Fatal, code, message)
    }

    pub fn notice(message: impl Into<String>) -> Self {
        Report::new(Severity::Notice, "00000", message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Appends an ErrorResponse (`E`).
pub fn error_response(buf: &mut BytesMut, report: &Report) {
    report_message(buf, b'E', report);
}

/// Appends a NoticeResponse (`N`).
pub fn notice_response(buf: &mut BytesMut, report: &Report) {
    report_message(buf, b'N', report);
}

fn report_message(buf: &mut BytesMut, tag: u8, report: &Report) {
    let field = |buf: &mut BytesMut, code: u8, text: &str| {
        buf.put_u8(code);
        // Bounded: the longest text the gateway composes is far below 2 GiB.
        buf.extend(text.bytes().filter(|b| *b != 0));
        buf.put_u8(0);
    };
    let result = put_message(buf, tag, |buf| {
        field(buf, b'S', report.severity.as_str());
        field(buf, b'V', report.severity.as_str());
        field(buf, b'C', report.code);
        field(buf, b'M', &report.message);
        if let Some(detail) = &report.detail {
            field(buf, b'D', detail);
        }
        if let Some(hint) = &report.hint {
            field(buf, b'H', hint);
        }
        buf.put_u8(0);
        Ok(())
    });
    // Only a report over 2 GiB could fail; say so in a shorter one.
    if result.is_err() {
        let short = Report::new(report.severity, report.code, "message too long to send");
        let _ = put_message(buf, tag, |buf| {
            field(buf, b'S', short.severity.as_str());
            field(buf, b'V', short.severity.as_str());
            field(buf, b'C', short.code);
            field(buf, b'M', &short.message);
            buf.put_u8(0);
            Ok(())
        });
    }
}

/// Appends AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    authentication(buf, 0);
}

/// Appends AuthenticationCleartextPassword: the client answers with a
/// PasswordMessage holding its token.
pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    authentication(buf, 3);
}

fn authentication(buf: &mut BytesMut, code: i32) {
    buf.put_u8(b'R');
    buf.put_i32(8);
    buf.put_i32(code);
}

/// Appends a ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) -> Result<(), ProtocolError> {
    put_message(buf, b'S', |buf| {
        put_cstr(buf, name, "a parameter name")?;
        put_cstr(buf, value, "a parameter value")
    })
}

/// Appends a BackendKeyData: a 4-byte key for protocol 3.0, up to 256 bytes for 3.2.
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret_key: &[u8]) -> Result<(), ProtocolError> {
    use super::startup::{MAX_CANCEL_KEY_LEN, MIN_CANCEL_KEY_LEN};
    if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&secret_key.len()) {
        return Err(ProtocolError::Malformed { tag: Tag(b'K'), what: "cancel key must be 4 to 256 bytes" });
    }
    put_message(buf, b'K', |buf| {
        buf.put_i32(pid);
        buf.put_slice(secret_key);
        Ok(())
    })
}

/// Appends a ReadyForQuery with the transaction status (`I`, `T` or `E`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_u8(b'Z');
    buf.put_i32(5);
    buf.put_u8(status);
}

/// Appends a NegotiateProtocolVersion: the newest minor version the gateway
/// speaks and the `_pq_.` options it does not recognise.
pub fn negotiate_protocol_version(
    buf: &mut BytesMut,
    newest_minor: u16,
    unrecognized: &[&[u8]],
) -> Result<(), ProtocolError> {
    put_message(buf, b'v', |buf| {
        buf.put_i32(i32::from(newest_minor) | (3 << 16));
        buf.put_i32(i32::try_from(unrecognized.len()).unwrap_or(i32::MAX));
        for option in unrecognized {
            put_cstr(buf, option, "a protocol option")?;
        }
        Ok(())
    })
}

/// Appends a PasswordMessage (a cleartext password or an `md5…` hash).
pub fn password_message(buf: &mut BytesMut, password: &[u8]) -> Result<(), ProtocolError> {
    put_message(buf, b'p', |buf| put_cstr(buf, password, "a password"))
}

/// Appends a SASLInitialResponse.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &[u8], data: &[u8]) -> Result<(), ProtocolError> {
    put_message(buf, b'p', |buf| {
        put_cstr(buf, mechanism, "a SASL mechanism")?;
        let len = i32::try_from(data.len()).map_err(|_| ProtocolError::MessageTooLong {
            tag: Tag(b'p'),
            len: data.len(),
            max: i32::MAX as usize,
        })?;
        buf.put_i32(len);
        buf.put_slice(data);
        Ok(())
    })
}

/// Appends a SASLResponse.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) -> Result<(), ProtocolError> {
    put_message(buf, b'p', |buf| {
        buf.put_slice(data);
        Ok(())
    })
}

/// Appends a Query (simple query protocol).
pub fn query(buf: &mut BytesMut, sql: &[u8]) -> Result<(), ProtocolError> {
    put_message(buf, b'Q', |buf| put_cstr(buf, sql, "a query string"))
}

/// Appends a Describe of a portal. The name came in a client's message, so it
/// holds no NUL and fits a message.
pub fn describe_portal(buf: &mut BytesMut, portal: &[u8]) {
    let _ = put_message(buf, b'D', |buf| {
        buf.put_u8(b'P');
        put_cstr(buf, portal, "a portal name")
    });
}

/// Appends a Sync.
pub fn sync(buf: &mut BytesMut) {
    buf.put_u8(b'S');
    buf.put_i32(4);
}

/// Appends a Flush: the server sends what it has answered so far.
pub fn flush(buf: &mut BytesMut) {
    buf.put_u8(b'H');
    buf.put_i32(4);
}

/// Appends a Terminate.
pub fn terminate(buf: &mut BytesMut) {
    buf.put_u8(b'X');
    buf.put_i32(4);
}

fn put_cstr(buf: &mut BytesMut, s: &[u8], what: &'static str) -> Result<(), ProtocolError> {
    if s.contains(&0) {
        return Err(ProtocolError::EmbeddedNul(what));
    }
    buf.put_slice(s);
    buf.put_u8(0);
    Ok(())
}

/// Appends a message built by `body` with its length filled in; on error
/// (or a length that does not fit the protocol's Int32) the buffer is left as
/// it was.
pub(crate) fn put_message(
    buf: &mut BytesMut,
    tag: u8,
    body: impl FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let len = buf.len() - start - 1;
    let Ok(len32) = i32::try_from(len) else {
        buf.truncate(start);
        return Err(ProtocolError::MessageTooLong { tag: Tag(tag), len, max: i32::MAX as usize });
    };
    if let Some(field) = buf.get_mut(start + 1..start + 5) {
        field.copy_from_slice(&len32.to_be_bytes());
    }
    Ok(())
}

/// A simple Query that makes the server raise `report` as its own error
/// (SQLSTATE, message, detail and hint as given). Sent in place of a refused
/// statement, so the error takes that statement's place among the responses
/// and a transaction block is aborted by the server, as for any failed
/// statement. The text is reduced to printable ASCII, which every client
/// encoding reads alike, and quoted with tags that do not occur in it.
pub fn refusal_query(buf: &mut BytesMut, report: &Report) {
    let clean =
        |s: &str| -> String { s.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect() };
    let message = clean(&report.message);
    let detail = report.detail.as_deref().map(clean);
    let hint = report.hint.as_deref().map(clean);
    let all = format!("{message}{}{}", detail.as_deref().unwrap_or(""), hint.as_deref().unwrap_or(""));
    let tag = loop {
        let candidate = format!("airlock{:016x}", rand::random::<u64>());
        if !all.contains(&candidate) {
            break candidate;
        }
    };
    // A SQLSTATE is five ASCII letters or digits; anything else becomes "refused by policy".
    let code = if report.code.len() == 5 && report.code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        report.code
    } else {
        super::sqlstate::INSUFFICIENT_PRIVILEGE
    };
    let mut sql =
        format!("DO $o{tag}$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = ${tag}${message}${tag}$");
    if let Some(detail) = detail {
        sql.push_str(&format!(", DETAIL = ${tag}${detail}${tag}$"));
    }
    if let Some(hint) = hint {
        sql.push_str(&format!(", HINT = ${tag}${hint}${tag}$"));
    }
    sql.push_str(&format!("; END$o{tag}$"));
    // The text has no NUL, so this cannot fail.
    let _ = query(buf, sql.as_bytes());
}
