//! The gateway's own client connection to a target Postgres: TCP, optional TLS
//! through SSLRequest, StartupMessage, authentication (cleartext, MD5,
//! SCRAM-SHA-256, and SCRAM-SHA-256-PLUS bound to the target's certificate
//! over TLS), then the session parameters and cancel key up to the first
//! ReadyForQuery. What comes after is the relay's business: [`Upstream`] hands
//! back the stream and any bytes already read past ReadyForQuery.
//!
//! TLS follows libpq's `sslmode`s ([`TargetTls`]):
//! - `disable`: plaintext.
//! - `prefer`: TLS when the server offers it, plaintext when it refuses.
//! - `require`: TLS or nothing, but the certificate is not checked, exactly as
//!   libpq's `require` without a root certificate: it stops passive
//!   eavesdropping, not an active man in the middle.
//! - `verify-ca`: the certificate must chain to [`UpstreamOptions::root_certs`].
//! - `verify-full`: and must name the host ([`UpstreamOptions::server_name`],
//!   by default the host part of the address).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_core::connection::TargetTls;
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::protocol::backend::{Authentication, BackendMessage, ErrorFields, decode_backend};
use super::protocol::frame::{Frame, parse_frame};
use super::protocol::startup::{PROTOCOL_3_0, encode_cancel_request, encode_ssl_request, encode_startup};
use super::protocol::{ProtocolError, Tag, encode};
use super::scram::{self, SaltedPassword};

/// The longest message accepted from the server before ReadyForQuery. The
/// handshake's messages are small; this stops a hostile target from making
/// the gateway buffer a gigabyte before it is even authenticated.
const MAX_HANDSHAKE_MESSAGE_LEN: usize = 1 << 20;

/// Startup parameters the gateway sets itself; a client's value for one is
/// never forwarded.
const RESERVED_PARAMS: [&[u8]; 2] = [b"user", b"database"];

/// How to reach and log in to a target.
#[derive(Clone)]
pub struct UpstreamOptions {
    /// `host:port` or `[v6]:port`.
    pub address: String,
    pub tls: TargetTls,
    /// Trust anchors for `verify-ca` and `verify-full` (required by both).
    pub root_certs: Option<Arc<RootCertStore>>,
    /// The name the certificate must carry under `verify-full`; by default the
    /// host part of `address`.
    pub server_name: Option<String>,
    pub user: String,
    /// Never logged: `Debug` prints it redacted.
    pub password: String,
    /// The password salted as the role's SCRAM verifier has it, when the
    /// gateway made that verifier: a SCRAM login then skips hashing the
    /// password (see `scram`). `None` for a stored credential.
    pub salted: Option<SaltedPassword>,
    /// Where a stored password's salted form is kept from one login to the
    /// next (one per credential): a SCRAM login then hashes it only when the
    /// target names a salt or count it was not hashed for. `None`: hashed at
    /// every login.
    pub salt_cache: Option<Arc<scram::SaltCache>>,
    pub database: String,
    /// Further startup parameters to send, in order (e.g. the client's
    /// `application_name`, `client_encoding`, `DateStyle`, `options`): the
    /// caller decides which. `user` and `database` here are dropped.
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
    /// Covers TCP connect, TLS and authentication up to ReadyForQuery.
    pub connect_timeout: Duration,
}

impl UpstreamOptions {
    pub fn new(
        address: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        UpstreamOptions {
            address: address.into(),
            tls: TargetTls::Prefer,
            root_certs: None,
            server_name: None,
            user: user.into(),
            password: password.into(),
            salted: None,
            salt_cache: None,
            database: database.into(),
            params: Vec::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Where a cancel for the session these options opened goes: to
    /// `reached`, the address that session's connection reached, and not to
    /// whichever address the name gives when the cancel comes (a name with
    /// several, one that moved to another host since): a cancel anywhere else
    /// would be lost. TLS is as the session's, with the same server name
    /// (which `verify-full` checks the certificate for). A cancel logs in as
    /// no one: it carries no credential.
    pub fn for_cancel(&self, reached: std::net::SocketAddr) -> UpstreamOptions {
        UpstreamOptions {
            address: reached.to_string(),
            tls: self.tls,
            root_certs: self.root_certs.clone(),
            server_name: Some(self.server_name.clone().unwrap_or_else(|| host_of(&self.address).to_owned())),
            user: String::new(),
            password: String::new(),
            salted: None,
            salt_cache: None,
            database: String::new(),
            params: Vec::new(),
            connect_timeout: self.connect_timeout,
        }
    }
}

impl fmt::Debug for UpstreamOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamOptions")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("root_certs", &self.root_certs.as_ref().map(|r| r.len()))
            .field("server_name", &self.server_name)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("salted", &self.salted.is_some())
            .field("salt_cache", &self.salt_cache)
            .field("database", &self.database)
            .field("params", &self.params.iter().map(|(n, _)| String::from_utf8_lossy(n)).collect::<Vec<_>>())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The server's cancel key for this session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub pid: i32,
    pub secret_key: Vec<u8>,
}

/// A logged-in session, ready for queries.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// Bytes read past the first ReadyForQuery: they belong to the relay.
    pub leftover: BytesMut,
    /// Every ParameterStatus before ReadyForQuery, in order (`server_version`,
    /// `client_encoding`, …), raw.
    pub parameters: Vec<(Vec<u8>, Vec<u8>)>,
    /// `None` only if the server sent no BackendKeyData (Postgres always does).
    pub backend_key: Option<BackendKey>,
    /// The first ReadyForQuery's transaction status, normally `I`.
    pub ready_status: u8,
}

impl Upstream {
    /// The value of a ParameterStatus the server reported.
    pub fn parameter(&self, name: &[u8]) -> Option<&[u8]> {
        self.parameters.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// The connection to the target, plaintext or TLS.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// The address the connection reached.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The TCP socket under it.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(tcp) => tcp,
            UpstreamStream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether a stored password (the static credential's, the admin
    /// credential's) may go over this stream in cleartext: to a target on this
    /// machine, or over TLS that checked the certificate for the target's name.
    /// Elsewhere anyone on the path could read it (plain TCP), or answer in the
    /// target's place and keep it (TLS without the name checked).
    pub(crate) fn may_carry_cleartext(&self, name_checked: bool) -> bool {
        self.peer_is_loopback() || (name_checked && self.is_tls())
    }

    /// The channel binding data of the certificate the target showed
    /// (`scram::tls_server_end_point`); `None` over plain TCP.
    pub(crate) fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let UpstreamStream::Tls(tls) = self else { return None };
        super::scram::tls_server_end_point(tls.get_ref().1.peer_certificates()?.first()?)
    }

    /// Whether the target answers on this machine (its address is loopback).
    fn peer_is_loopback(&self) -> bool {
        let tcp = match self {
            UpstreamStream::Plain(tcp) => tcp,
            UpstreamStream::Tls(tls) => tls.get_ref().0,
        };
        tcp.peer_addr().is_ok_and(|a| on_this_machine(a.ip()))
    }
}

/// A loopback address, IPv4 written as IPv6 (`::ffff:127.0.0.1`) among them.
fn on_this_machine(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why a connection to the target failed. `Refused` carries the server's own
/// error; the others are the gateway's view. None of them holds the password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("timed out after {0:?} connecting to the target")]
    Timeout(Duration),
    #[error("the target does not accept TLS and the connection requires it")]
    TlsUnavailable,
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    #[error("TLS handshake with the target failed: {0}")]
    Tls(io::Error),
    #[error("reading from or writing to the target failed: {0}")]
    Io(#[from] io::Error),
    #[error("the target sent an invalid message: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the target sent an unexpected message {tag} during {phase}")]
    Unexpected { tag: Tag, phase: &'static str },
    #[error("the target closed the connection during {0}")]
    Closed(&'static str),
    /// The server's ErrorResponse: wrong password, unknown database, too many
    /// connections, …
    #[error("the target refused the connection: {message} (SQLSTATE {sqlstate})")]
    Refused { sqlstate: String, message: String, fields: ErrorFields },
    #[error("the target asks for authentication the gateway does not support: {0}")]
    UnsupportedAuth(String),
    #[error("SCRAM authentication with the target failed: {0}")]
    Scram(String),
}

/// Connects and logs in; see the module documentation for the TLS modes.
pub async fn connect(opts: &UpstreamOptions) -> Result<Upstream, UpstreamError> {
    super::timers::timeout(opts.connect_timeout, connect_inner(opts))
        .await
        .map_err(|_| UpstreamError::Timeout(opts.connect_timeout))?
}

/// Sends a CancelRequest for `key` on a new connection (with the same TLS
/// mode) and waits for the server to close it, so the cancel has been
/// delivered when this returns. The server never answers a cancel: whether it
/// took effect shows on the session it was meant for.
pub async fn cancel(opts: &UpstreamOptions, key: &BackendKey) -> Result<(), UpstreamError> {
    let work = async {
        let mut stream = open(opts).await?;
        let mut buf = BytesMut::new();
        encode_cancel_request(&mut buf, key.pid, &key.secret_key)?;
        stream.write_all(&buf).await?;
        stream.flush().await?;
        let mut sink = [0u8; 64];
        // The server closes the connection once it has read the request.
        while stream.read(&mut sink).await? != 0 {}
        Ok(())
    };
    super::timers::timeout(opts.connect_timeout, work)
        .await
        .map_err(|_| UpstreamError::Timeout(opts.connect_timeout))?
}

async fn connect_inner(opts: &UpstreamOptions) -> Result<Upstream, UpstreamError> {
    let mut stream = open(opts).await?;
    let mut out = BytesMut::new();
    encode_startup(&mut out, PROTOCOL_3_0, &startup_params(opts))?;
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(8192);
    authenticate(&mut stream, &mut buf, opts).await?;

    let mut parameters = Vec::new();
    let mut backend_key = None;
    loop {
        let frame = read_frame(&mut stream, &mut buf, "session setup").await?;
        match decode_backend(&frame)? {
            BackendMessage::ParameterStatus { name, value } => parameters.push((name.to_vec(), value.to_vec())),
            BackendMessage::BackendKeyData { pid, secret_key } => backend_key = Some(BackendKey { pid, secret_key }),
            BackendMessage::NoticeResponse(_) => {}
            BackendMessage::ErrorResponse(fields) => return Err(refused(fields)),
            BackendMessage::ReadyForQuery { status } => {
                return Ok(Upstream { stream, leftover: buf, parameters, backend_key, ready_status: status });
            }
            _ => return Err(UpstreamError::Unexpected { tag: Tag(frame.tag()), phase: "session setup" }),
        }
    }
}

/// The caller's parameters first, then `user` and `database`: Postgres takes
/// the last value of a repeated name, so nothing before can override them.
fn startup_params(opts: &UpstreamOptions) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut params: Vec<(Vec<u8>, Vec<u8>)> =
        opts.params.iter().filter(|(name, _)| !RESERVED_PARAMS.contains(&name.as_slice())).cloned().collect();
    params.push((b"user".to_vec(), opts.user.as_bytes().to_vec()));
    params.push((b"database".to_vec(), opts.database.as_bytes().to_vec()));
    params
}

/// Answers the server's authentication requests until AuthenticationOk.
async fn authenticate(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    opts: &UpstreamOptions,
) -> Result<(), UpstreamError> {
    const PHASE: &str = "authentication";
    // TLS that does not prove the target's name, to a target elsewhere: an
    // impostor in the middle could relay a login to the real target and keep
    // the session, unless the login is bound to the certificate it showed.
    // Under `prefer` that impostor may also have refused TLS in the target's
    // place: plain TCP is held to the same rule then (only `disable` is not).
    let unchecked_elsewhere =
        (stream.is_tls() || opts.tls == TargetTls::Prefer) && !stream.may_carry_cleartext(opts.tls.verifies_name());
    let mut out = BytesMut::new();
    loop {
        let frame = read_frame(stream, buf, PHASE).await?;
        let request = match decode_backend(&frame)? {
            BackendMessage::Authentication(request) => request,
            BackendMessage::ErrorResponse(fields) => return Err(refused(fields)),
            // NegotiateProtocolVersion: the server speaks an older 3.x; we asked for 3.0.
            BackendMessage::Other(b'v') => continue,
            _ => return Err(UpstreamError::Unexpected { tag: Tag(frame.tag()), phase: PHASE }),
        };
        match request {
            Authentication::Ok => return Ok(()),
            // A role the gateway made holds a SCRAM verifier: a Postgres that
            // has it asks for SCRAM, or for the password itself under the
            // `password` method of pg_hba. Anything else asking is not that
            // server, and is not given the role's password in a form it can use.
            // The password itself goes only to a target that proved its name
            // with a certificate (`verify-full`): over plain TCP, under TLS
            // that takes any certificate (`prefer`, `require`) or any the CA
            // signed (`verify-ca`: another target, say), whoever answers could
            // log in as the role with it.
            Authentication::CleartextPassword
                if opts.salted.is_some() && !(opts.tls.verifies_name() && stream.is_tls()) =>
            {
                return Err(UpstreamError::UnsupportedAuth(
                    "a session role's password in cleartext to a target whose certificate was not checked for \
                     its name (use scram-sha-256 in the target's pg_hba.conf, or sslmode verify-full)"
                        .into(),
                ));
            }
            Authentication::Md5Password { .. } if opts.salted.is_some() => {
                return Err(UpstreamError::UnsupportedAuth(
                    "MD5 for a session role, whose password the target stores as a SCRAM verifier".into(),
                ));
            }
            Authentication::Md5Password { .. } if unchecked_elsewhere => {
                return Err(UpstreamError::UnsupportedAuth(
                    "MD5, which an impostor in the middle could relay, to a target off this machine whose \
                     certificate was not checked for its name (use scram-sha-256 in the target's pg_hba.conf, or \
                     sslmode verify-full)"
                        .into(),
                ));
            }
            Authentication::CleartextPassword if !stream.may_carry_cleartext(opts.tls.verifies_name()) => {
                return Err(UpstreamError::UnsupportedAuth(
                    "the password in cleartext to a target off this machine whose certificate was not checked for \
                     its name (use scram-sha-256 in the target's pg_hba.conf, or sslmode verify-full)"
                        .into(),
                ));
            }
            Authentication::CleartextPassword => {
                encode::password_message(&mut out, opts.password.as_bytes())?;
            }
            Authentication::Md5Password { salt } => {
                let hash = md5_hash(opts.user.as_bytes(), opts.password.as_bytes(), salt);
                encode::password_message(&mut out, hash.as_bytes())?;
            }
            Authentication::Sasl { mechanisms } => {
                let offers = |name: &str| mechanisms.iter().any(|m| m.as_ref() == name.as_bytes());
                // Bound to the certificate the gateway saw whenever the target offers it.
                let end_point = stream.tls_server_end_point();
                let binding = match end_point {
                    Some(data) if offers(SCRAM_SHA_256_PLUS) => Binding::Bound(data),
                    Some(_) => Binding::NotOffered,
                    None => Binding::Unable,
                };
                if unchecked_elsewhere && !matches!(binding, Binding::Bound(_)) {
                    let why = why_unbound(stream.is_tls(), offers(SCRAM_SHA_256_PLUS));
                    return Err(UpstreamError::UnsupportedAuth(format!(
                        "a login that cannot be bound to the target's certificate ({why}), which an impostor in the \
                         middle could relay, to a target off this machine whose certificate was not checked for its \
                         name (use sslmode verify-full)"
                    )));
                }
                if !matches!(binding, Binding::Bound(_)) && !offers(SCRAM_SHA_256) {
                    if offers(SCRAM_SHA_256_PLUS) {
                        return Err(UpstreamError::UnsupportedAuth(
                            "SCRAM-SHA-256-PLUS only, and this login cannot be bound (plain TCP, or a certificate \
                             whose signature names no hash)"
                                .into(),
                        ));
                    }
                    let offered: Vec<_> = mechanisms.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
                    return Err(UpstreamError::UnsupportedAuth(format!("SASL {}", offered.join(", "))));
                }
                scram(stream, buf, opts, binding, unchecked_elsewhere).await?;
                // After SASLFinal the server must say AuthenticationOk.
                let frame = read_frame(stream, buf, PHASE).await?;
                return match decode_backend(&frame)? {
                    BackendMessage::Authentication(Authentication::Ok) => Ok(()),
                    BackendMessage::ErrorResponse(fields) => Err(refused(fields)),
                    _ => Err(UpstreamError::Unexpected { tag: Tag(frame.tag()), phase: PHASE }),
                };
            }
            Authentication::SaslContinue { .. } | Authentication::SaslFinal { .. } => {
                return Err(UpstreamError::Scram("the target sent a SASL step without starting SASL".into()));
            }
            Authentication::Unsupported(code) => {
                return Err(UpstreamError::UnsupportedAuth(auth_name(code)));
            }
        }
        stream.write_all(&out).await?;
        stream.flush().await?;
        out.clear();
    }
}

/// Why a SCRAM login to a target cannot be bound to its certificate, for
/// the error that refuses it: over `tls`, with SCRAM-SHA-256-PLUS offered or
/// not (`plus_offered`).
pub(crate) fn why_unbound(tls: bool, plus_offered: bool) -> &'static str {
    if !tls {
        "the connection to the target is not TLS"
    } else if plus_offered {
        "the target's certificate names no hash to bind the login to"
    } else {
        "the target does not offer SCRAM-SHA-256-PLUS"
    }
}

/// How a SCRAM login relates to the TLS certificate the target showed.
enum Binding {
    /// Bound by its `tls-server-end-point` data (SCRAM-SHA-256-PLUS).
    Bound(Vec<u8>),
    /// Could be, but the target offered no SCRAM-SHA-256-PLUS (`y,,`).
    NotOffered,
    /// Plain TCP, or a certificate that names no hash (`n,,`).
    Unable,
}

/// SCRAM-SHA-256 (RFC 5802, 7677), bound to the target's certificate when
/// `binding` says so: the server's final message is checked, so a target
/// that does not know the password cannot pass for one that does, and a
/// target that saw another certificate than the gateway did refuses a bound
/// login. A password the gateway made (with its salted form) logs in with
/// `scram::Login`, which skips hashing it again; a stored one with a salt
/// cache too (`scram::SaltCache`: hashed at the first login only), unless
/// SASLprep might change it; then with postgres-protocol's client, which
/// normalizes it first.
async fn scram(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    opts: &UpstreamOptions,
    binding: Binding,
    unchecked_elsewhere: bool,
) -> Result<(), UpstreamError> {
    const PHASE: &str = "SCRAM authentication";
    enum Client {
        /// The gateway's client, which hashes nothing.
        Made(Box<scram::Login>),
        /// The gateway's client, which may hash the password (its cache missed).
        Cached(Box<scram::Login>),
        /// postgres-protocol's, which hashes the password.
        Stored(ScramSha256),
    }
    let failed = |e: &dyn std::fmt::Display| UpstreamError::Scram(e.to_string());
    let mechanism = if matches!(binding, Binding::Bound(_)) { SCRAM_SHA_256_PLUS } else { SCRAM_SHA_256 };
    let client = match (&opts.salted, binding) {
        (Some(salted), Binding::Bound(data)) => Client::Made(Box::new(scram::Login::bound(salted.clone(), data))),
        (Some(salted), Binding::NotOffered) => {
            Client::Made(Box::new(scram::Login::unbound_though_able(salted.clone())))
        }
        (Some(salted), Binding::Unable) => Client::Made(Box::new(scram::Login::new(salted.clone()))),
        (None, binding) => {
            match opts.salt_cache.as_ref().and_then(|cache| scram::Login::stored(&opts.password, cache.clone())) {
                Some(login) => Client::Cached(Box::new(match binding {
                    Binding::Bound(data) => login.bind(data),
                    Binding::NotOffered => login.able_to_bind(),
                    Binding::Unable => login,
                })),
                None => {
                    let binding = match binding {
                        Binding::Bound(data) => ChannelBinding::tls_server_end_point(data),
                        Binding::NotOffered => ChannelBinding::unrequested(),
                        Binding::Unable => ChannelBinding::unsupported(),
                    };
                    Client::Stored(ScramSha256::new(opts.password.as_bytes(), binding))
                }
            }
        }
    };
    let first = match &client {
        Client::Made(login) | Client::Cached(login) => login.first(),
        Client::Stored(scram) => scram.message().to_vec(),
    };
    let mut out = BytesMut::new();
    encode::sasl_initial_response(&mut out, mechanism.as_bytes(), &first)?;
    stream.write_all(&out).await?;
    stream.flush().await?;

    let data = sasl_step(stream, buf, PHASE, |a| match a {
        Authentication::SaslContinue { data } => Some(data),
        _ => None,
    })
    .await?;
    // The proof answers the salt and count the server names: one that took
    // TLS in the target's place could try passwords against it offline, each
    // guess costing as many iterations as it asked for. Where the certificate
    // does not prove the target's name, it gets a proof only for at least
    // Postgres's default count.
    if unchecked_elsewhere
        && let Some(asked) = scram::iterations_asked(&data)
        && asked < scram::ITERATIONS
    {
        return Err(UpstreamError::UnsupportedAuth(format!(
            "SCRAM with {asked} iterations (fewer than {}) from a target off this machine whose certificate was \
             not checked for its name: whoever answered could guess the password from the proof cheaply (use \
             sslmode verify-full)",
            scram::ITERATIONS
        )));
    }
    let (mut client, last) = match client {
        Client::Made(mut login) => {
            let last = login.respond(&data).map_err(|e| failed(&e))?;
            (Client::Made(login), last)
        }
        // Hashing the password as the server's salt and count ask (about 0.6
        // ms at 4096 iterations) is not done on the thread relaying sessions:
        // a cached login answers here only with the salted password kept.
        Client::Cached(mut login) => match login.respond_if_kept(&data) {
            Some(last) => (Client::Cached(login), last.map_err(|e| failed(&e))?),
            None => {
                let (login, last) =
                    off_the_session_thread(login, move |l| l.respond(&data)).await.map_err(|e| failed(&e))?;
                (Client::Cached(login), last.map_err(|e| failed(&e))?)
            }
        },
        Client::Stored(scram) => {
            let (scram, updated) =
                off_the_session_thread(scram, move |s| s.update(&data)).await.map_err(|e| failed(&e))?;
            updated.map_err(|e| failed(&e))?;
            let last = scram.message().to_vec();
            (Client::Stored(scram), last)
        }
    };
    out.clear();
    encode::sasl_response(&mut out, &last)?;
    stream.write_all(&out).await?;
    stream.flush().await?;

    let data = sasl_step(stream, buf, PHASE, |a| match a {
        Authentication::SaslFinal { data } => Some(data),
        _ => None,
    })
    .await?;
    match &mut client {
        Client::Made(login) | Client::Cached(login) => login.verify(&data).map_err(|e| failed(&e)),
        Client::Stored(scram) => scram.finish(&data).map_err(|e| failed(&e)),
    }
}

/// `work` done with `value` on the blocking pool, and `value` back.
async fn off_the_session_thread<T: Send + 'static, R: Send + 'static>(
    mut value: T,
    work: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<(T, R), tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let done = work(&mut value);
        (value, done)
    })
    .await
}

async fn sasl_step(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    phase: &'static str,
    want: impl Fn(Authentication) -> Option<Bytes>,
) -> Result<Bytes, UpstreamError> {
    let frame = read_frame(stream, buf, phase).await?;
    match decode_backend(&frame)? {
        BackendMessage::Authentication(a) => want(a).ok_or(UpstreamError::Unexpected { tag: Tag(frame.tag()), phase }),
        BackendMessage::ErrorResponse(fields) => Err(refused(fields)),
        _ => Err(UpstreamError::Unexpected { tag: Tag(frame.tag()), phase }),
    }
}

fn auth_name(code: i32) -> String {
    match code {
        2 => "Kerberos V5".into(),
        6 => "SCM credentials".into(),
        7 | 8 => "GSSAPI".into(),
        9 => "SSPI".into(),
        other => format!("authentication request {other}"),
    }
}

fn refused(fields: ErrorFields) -> UpstreamError {
    let text = |b: Option<&Bytes>| b.map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
    UpstreamError::Refused { sqlstate: text(fields.code()), message: text(fields.message()), fields }
}

async fn read_frame(
    stream: &mut UpstreamStream,
    buf: &mut BytesMut,
    phase: &'static str,
) -> Result<Frame, UpstreamError> {
    loop {
        if let Some(frame) = parse_frame(buf, MAX_HANDSHAKE_MESSAGE_LEN)? {
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Closed(phase));
        }
    }
}

/// TCP, then TLS when the mode asks for it.
async fn open(opts: &UpstreamOptions) -> Result<UpstreamStream, UpstreamError> {
    // Build the TLS configuration first: a bad one fails without touching the network.
    let tls = match opts.tls {
        TargetTls::Disable => None,
        _ => Some(tls_connector(opts)?),
    };
    open_stream(&opts.address, opts.connect_timeout, tls, opts.tls == TargetTls::Prefer).await
}

/// TCP to `address` (see `connect_tcp` for `within`) and, given a
/// connector, TLS through SSLRequest: with `prefer`, plaintext when the
/// server refuses TLS, otherwise that refusal is an error. What a login then
/// runs over; the admin connection's too.
pub(crate) async fn open_stream(
    address: &str,
    within: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    prefer: bool,
) -> Result<UpstreamStream, UpstreamError> {
    let mut tcp = connect_tcp(address, within).await?;
    tcp.set_nodelay(true)?;
    // As libpq and tokio-postgres do: a target that vanished without a word
    // (its host lost, a partition) is found out by the kernel's keepalive,
    // after its idle time (two hours unless the host says otherwise), and not
    // never, which would hold an idle session, or an admin connection, forever.
    socket2::SockRef::from(&tcp).set_keepalive(true)?;
    let Some((connector, server_name)) = tls else { return Ok(UpstreamStream::Plain(tcp)) };

    let mut request = BytesMut::new();
    encode_ssl_request(&mut request);
    tcp.write_all(&request).await?;
    // Exactly one byte: anything the server sends after it, before the TLS
    // handshake, must not be taken as trusted (CVE-2021-23222).
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => UpstreamError::Closed("TLS negotiation"),
        _ => UpstreamError::Io(e),
    })?;
    match answer {
        [encode::SSL_ACCEPTED] => {
            let tls = connector.connect(server_name, tcp).await.map_err(UpstreamError::Tls)?;
            Ok(UpstreamStream::Tls(Box::new(tls)))
        }
        [encode::SSL_REFUSED] if prefer => Ok(UpstreamStream::Plain(tcp)),
        [encode::SSL_REFUSED] => Err(UpstreamError::TlsUnavailable),
        // An ErrorResponse here means a server too old for SSLRequest.
        [other] => Err(UpstreamError::Unexpected { tag: Tag(other), phase: "TLS negotiation" }),
    }
}

/// TCP to the first address of `address` (a name may have several: a
/// cluster's endpoints, IPv6 and IPv4) that answers, within three quarters
/// of `within`, the connect timeout, which also covers TLS and the login
/// that follow: so when no address answers, this says which were tried and
/// why before the whole connect times out. Each address gets an equal share
/// of the time left when its turn comes (one that fails at once leaves its
/// share to the next), so that one that drops packets does not use up the
/// time the others would need, as libpq tries each address in turn.
async fn connect_tcp(address: &str, within: Duration) -> Result<TcpStream, UpstreamError> {
    let failed = |source| UpstreamError::Connect { address: address.to_owned(), source };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(address).await.map_err(failed)?.collect();
    connect_any(&addrs, within.mul_f64(0.75)).await.map_err(failed)
}

/// What the gateway itself ran out of, when `error` says so: a connection
/// that fails this way would fail to any address, and is no fault of the
/// target's. (EADDRNOTAVAIL, out of local ports, is left out: it also means an
/// address this host cannot reach from any of its own, which another
/// address of the target may not be.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shortage {
    /// EMFILE, ENFILE.
    FileDescriptors,
    /// ENOBUFS, ENOMEM.
    SocketMemory,
}

pub(crate) fn local_shortage(error: &io::Error) -> Option<Shortage> {
    use rustix::io::Errno;
    match Errno::from_io_error(error)? {
        Errno::MFILE | Errno::NFILE => Some(Shortage::FileDescriptors),
        Errno::NOBUFS | Errno::NOMEM => Some(Shortage::SocketMemory),
        _ => None,
    }
}

/// `connect_tcp` once the name is resolved, within `within`.
async fn connect_any(addrs: &[std::net::SocketAddr], within: Duration) -> io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + within;
    let mut failures: Vec<(std::net::SocketAddr, io::Error)> = Vec::new();
    for (tried, addr) in addrs.iter().enumerate() {
        let left = u32::try_from(addrs.len() - tried).unwrap_or(u32::MAX).max(1);
        let share = deadline.saturating_duration_since(tokio::time::Instant::now()) / left;
        let error = match super::timers::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {:.1} s", share.as_secs_f64())),
        };
        // The gateway's own shortage, not the address's: the others would fail alike.
        if local_shortage(&error).is_some() {
            return Err(error);
        }
        failures.push((*addr, error));
    }
    match failures.len() {
        0 => Err(io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address")),
        // One address: its own error, as the system gave it.
        1 => Err(failures.pop().map_or_else(|| io::ErrorKind::Other.into(), |(_, e)| e)),
        _ => {
            let kind = failures.last().map_or(io::ErrorKind::Other, |(_, e)| e.kind());
            let each: Vec<String> = failures.iter().map(|(addr, e)| format!("{addr}: {e}")).collect();
            Err(io::Error::new(kind, each.join("; ")))
        }
    }
}

/// What targets' certificates must chain to (`worker.target_ca_file`, or
/// the system's roots).
#[derive(Clone)]
pub struct TargetRoots {
    roots: Arc<RootCertStore>,
    from_file: bool,
}

impl std::fmt::Debug for TargetRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRoots")
            .field("certificates", &self.roots.len())
            .field("from_file", &self.from_file)
            .finish()
    }
}

impl TargetRoots {
    /// The roots a mode checks the target's certificate with, as libpq does
    /// with a root file: `verify-full` and `verify-ca`, and `require`, which
    /// then checks the chain too. The system's roots serve `verify-full`
    /// only: under `verify-ca` any certificate of any public CA would pass,
    /// whatever name it carries.
    pub fn for_mode(&self, tls: TargetTls) -> Option<Arc<RootCertStore>> {
        let usable = !self.roots.is_empty();
        match tls {
            TargetTls::VerifyFull if usable => Some(self.roots.clone()),
            TargetTls::VerifyCa | TargetTls::Require if usable && self.from_file => Some(self.roots.clone()),
            _ => None,
        }
    }
}

/// The certificates of `ca_file` (each must parse, and it must hold one), or
/// the system's trusted roots.
pub fn target_roots(ca_file: Option<&std::path::Path>) -> anyhow::Result<TargetRoots> {
    let roots = match ca_file {
        Some(path) => airlock_proto::transport::ca_file_roots(path)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("reading the system's trusted roots: {e}");
            }
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                // Only verify-full targets need them: say so, and go on.
                tracing::warn!("no trusted roots on this system: targets under verify-full need worker.target_ca_file");
            }
            roots
        }
    };
    Ok(TargetRoots { roots: Arc::new(roots), from_file: ca_file.is_some() })
}

/// The rustls client configuration for a TLS mode: libpq's meanings (`require`
/// encrypts without checking the certificate; `verify-ca` checks the chain;
/// `verify-full` also the name). Shared by upstream sessions and the admin
/// connection that makes session roles.
pub fn client_config(
    tls: TargetTls,
    root_certs: Option<Arc<RootCertStore>>,
) -> Result<Arc<ClientConfig>, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::TlsConfig(e.to_string()))?;
    let roots = || {
        root_certs.clone().ok_or_else(|| {
            UpstreamError::TlsConfig(format!(
                "{} needs root certificates for the target: set worker.target_ca_file{}",
                tls.as_str(),
                if tls == TargetTls::VerifyFull { "" } else { " (the system's roots serve verify-full only)" }
            ))
        })
    };
    let mut config = match tls {
        TargetTls::VerifyFull => builder.with_root_certificates(roots()?).with_no_client_auth(),
        TargetTls::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LibpqVerifier { roots: Some(roots()?), provider }))
            .with_no_client_auth(),
        // `require` with roots checks the chain, as libpq's does with a root file.
        TargetTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LibpqVerifier { roots: root_certs, provider }))
            .with_no_client_auth(),
        TargetTls::Disable | TargetTls::Prefer => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LibpqVerifier { roots: None, provider }))
            .with_no_client_auth(),
    };
    // What libpq sends since Postgres 17; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

fn tls_connector(opts: &UpstreamOptions) -> Result<(TlsConnector, ServerName<'static>), UpstreamError> {
    let config = client_config(opts.tls, opts.root_certs.clone())?;
    let host = opts.server_name.clone().unwrap_or_else(|| host_of(&opts.address).to_owned());
    let server_name = match ServerName::try_from(host) {
        Ok(name) => name,
        Err(e) if opts.tls == TargetTls::VerifyFull => {
            return Err(UpstreamError::TlsConfig(format!("invalid server name for verify-full: {e}")));
        }
        // The name only matters to verify-full; SNI is best effort otherwise.
        Err(_) => ServerName::try_from("localhost").map_err(|e| UpstreamError::TlsConfig(e.to_string()))?,
    };
    Ok((TlsConnector::from(config), server_name))
}

/// `host` from `host:port`, `[v6]:port` or a bare host.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

/// The certificate checks of `prefer`/`require` and of `verify-ca`, which
/// rustls's own verifier (chain and name: `verify-full`) does not offer.
/// Without roots any certificate is accepted, as libpq does without a root
/// certificate; with roots the chain must lead to one, and the name is not
/// checked. Either way the handshake signature is checked, which proves the
/// server holds the key of the certificate it showed.
#[derive(Debug)]
struct LibpqVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A listener that answers no new connection: its accept queue (of one)
    /// is full and never drained, so the kernel drops further SYNs and a
    /// connect waits, as it does for an address whose packets are dropped.
    fn black_hole() -> (socket2::Socket, std::net::TcpStream, std::net::SocketAddr) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let queued = std::net::TcpStream::connect(addr).unwrap();
        (socket, queued, addr)
    }

    /// An address that drops packets gets its share of the time and no more:
    /// the next address is tried within the same connect timeout.
    #[tokio::test]
    async fn an_address_that_does_not_answer_leaves_time_for_the_next() {
        let (_hole, _queued, silent) = black_hole();
        // The accept queue is full once a second connect does not complete at once.
        let probe = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(silent)).await;
        assert!(probe.is_err(), "the black hole answered: {probe:?}");
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();

        let started = std::time::Instant::now();
        let tcp = connect_any(&[silent, good_addr], Duration::from_secs(2)).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), good_addr);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(2), "{took:?}");
        // An address that fails at once leaves its share to the next.
        let refused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let e = connect_any(&[refused, silent], Duration::from_secs(2)).await.unwrap_err();
        assert!(e.to_string().contains(&format!("{silent}: no answer within 2.0 s")), "{e}");

        // Every address silent: each is named with why.
        let (_other_hole, _other_queued, also_silent) = black_hole();
        let e = connect_any(&[silent, also_silent], Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let text = e.to_string();
        assert!(text.contains(&format!("{silent}: no answer within 1.0 s")), "{text}");
        assert!(text.contains(&format!("{also_silent}: no answer within 1.0 s")), "{text}");
        // One address: the system's own error.
        drop(good);
        let e = connect_any(&[good_addr], Duration::from_secs(2)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    /// Where a stored password may go in cleartext without a checked certificate.
    #[test]
    fn only_loopback_addresses_are_on_this_machine() {
        for (ip, local) in [
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("10.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::127.0.0.1", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(on_this_machine(ip.parse().unwrap()), local, "{ip}");
        }
    }

    #[test]
    fn a_cancel_goes_where_the_session_went_under_the_same_name_with_no_credential() {
        let mut opts = UpstreamOptions::new("db.internal:6432", "airlock_s1", "secret", "app");
        opts.tls = TargetTls::VerifyFull;
        opts.params = vec![(b"application_name".to_vec(), b"psql".to_vec())];
        let reached: std::net::SocketAddr = "10.1.2.3:6432".parse().unwrap();
        let cancel = opts.for_cancel(reached);
        assert_eq!(cancel.address, "10.1.2.3:6432");
        assert_eq!(cancel.server_name.as_deref(), Some("db.internal"), "the certificate is checked for the name");
        assert_eq!(cancel.tls, TargetTls::VerifyFull);
        assert_eq!(cancel.connect_timeout, opts.connect_timeout);
        assert!(cancel.password.is_empty() && cancel.user.is_empty() && cancel.salted.is_none());
        assert!(cancel.params.is_empty());
        opts.server_name = Some("primary.db.internal".into());
        assert_eq!(opts.for_cancel(reached).server_name.as_deref(), Some("primary.db.internal"));
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("db.internal:5432"), "db.internal");
        assert_eq!(host_of("127.0.0.1:5432"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5432"), "::1");
        assert_eq!(host_of("db.internal"), "db.internal");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn client_cannot_override_user_or_database() {
        let mut opts = UpstreamOptions::new("127.0.0.1:5432", "airlock_s1", "pw", "app");
        opts.params = vec![
            (b"user".to_vec(), b"postgres".to_vec()),
            (b"application_name".to_vec(), b"psql".to_vec()),
            (b"database".to_vec(), b"other".to_vec()),
        ];
        assert_eq!(
            startup_params(&opts),
            vec![
                (b"application_name".to_vec(), b"psql".to_vec()),
                (b"user".to_vec(), b"airlock_s1".to_vec()),
                (b"database".to_vec(), b"app".to_vec()),
            ]
        );
    }

    #[test]
    fn debug_redacts_the_password() {
        let opts = UpstreamOptions::new("h:1", "u", "hunter2-secret", "d");
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
