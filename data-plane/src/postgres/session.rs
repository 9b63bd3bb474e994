//! One client session, from its first byte to its last:
//!
//! 1. startup: SSLRequest (TLS if configured), GSSENCRequest (refused),
//!    CancelRequest (routed to the upstream backend), StartupMessage;
//! 2. authentication: the password is an access token; it must verify, and a
//!    live grant must admit its principal to the connection and role named by
//!    the user name (`<connection>[.<role>]`);
//! 3. credentials: a role made for this session on the target (or the static
//!    credential), and an upstream connection logged in as it;
//! 4. relay: client messages framed, decoded as far as the statement hook
//!    needs, forwarded byte for byte; server messages forwarded, watching
//!    ReadyForQuery; the session ends with a FATAL that says why as soon as
//!    the projection no longer admits it or its grant runs out;
//! 5. the end: the session role is dropped and the session recorded.
//!
//! Recording (when the worker records, see `PostgresOptions::recording`)
//! starts once the client is authenticated, so the token is never in it, and
//! refuses the session when it cannot start. From then on, client bytes are
//! recorded as they are read, before anything is done with them; server bytes
//! as the client receives them (masked), before each write to the client; and
//! the hook's decisions as it makes them. Any failure to record ends the
//! session (fail closed), and so does a full spool through the tap's stop
//! signal.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use airlock_core::connection::{ConnectionKind, ConnectionSpec, CredentialMode};
use airlock_core::event::SessionInfo;
use airlock_core::grant::Grant;
use airlock_core::policy::ResultMask;
use airlock_core::{Event, SessionId, TenantId};
use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::copy_watch::{self, CopyEnd, CopyWatch, Probe, ProbeStep};
use super::gateway::{CancelTarget, Gateway, Undropped};
use super::hook::{SessionContext, Statement, Verdict, shown_statement};
use super::in_flight::{InFlight, QUERY_DONE};
use super::keywords;
use super::masking::{self, BoundPortal, Described, Expect, Responses, ValueKind};
use super::protocol::encode::{self, Report};
use super::protocol::frame::{
    Frame, HEADER_LEN, MAX_AUTH_MESSAGE_LEN, frontend_max_len, parse_frontend_frame, peek_frame,
};
use super::protocol::frontend::{self, ObjectKind, decode_password};
use super::protocol::{
    DEFAULT_MAX_BACKEND_MESSAGE_LEN, FrontendMessage, Startup, decode_frontend, parse_frame, parse_startup, sqlstate,
};
use super::roles::{RoleError, SessionRoleSpec};
use super::scram::SaltedPassword;
use super::startup_settings;
use super::statements::{MAX_PREPARED, Prepared, Statements, Tracked, followed};
use super::timers;
use super::upstream::{self, Upstream, UpstreamOptions};
use super::wake_gate::WakeGate;
use crate::recording::{self, SessionTap};

/// How much a read may bring in at once.
const READ_CHUNK: usize = 64 * 1024;

/// A read buffer emptied with more capacity than this is given back.
const KEPT_BUFFER: usize = 1024 * 1024;
/// A row or copy data from the target longer than this is passed on as it
/// arrives, where nothing reads it (no masking, no probe out), instead of
/// being held whole: a session holds at most about this much of one, not
/// the 1 GiB a message may take.
const PASS_ON_LONGER_THAN: usize = 1024 * 1024;

/// SQLSTATE insufficient_resources: the session cannot be recorded.
const RECORDING_UNAVAILABLE: &str = "53000";

/// Why a session ended, as recorded and (for FATALs) as told to the client.
#[derive(Debug)]
struct Ended {
    reason: String,
    /// Sent to the client as a FATAL before closing, when the client is still there.
    fatal: Option<Report>,
}

impl Ended {
    fn quietly(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), fatal: None }
    }

    fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { reason: message.clone(), fatal: Some(Report::fatal(code, message)) }
    }
}

pub(crate) async fn run(gateway: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let session = SessionId::new();
    let span = tracing::info_span!("pg_session", %session, %peer, tenant = tracing::field::Empty,
        principal = tracing::field::Empty, connection = tracing::field::Empty);
    let mut client = Client { io: ClientIo::Plain(tcp), buf: BytesMut::with_capacity(8192), peer, tls: false };
    let outcome = session_main(&gateway, &mut client, session, &shutdown, &span).await;
    if let Err(ended) = outcome {
        if let Some(report) = &ended.fatal {
            let mut out = BytesMut::new();
            encode::error_response(&mut out, report);
            let _ = client.io.write_all(&out).await;
        }
        tracing::debug!(parent: &span, reason = %ended.reason, "session ended early");
    }
    let _ = client.io.shutdown().await;
}

struct Client {
    io: ClientIo,
    buf: BytesMut,
    peer: SocketAddr,
    tls: bool,
}

/// Everything established before the relay starts.
struct Admitted {
    context: SessionContext,
    grant: Grant,
    connection: ConnectionSpec,
    database: String,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    /// The startup settings were checked against the hook (`check_startup_settings`).
    settings_checked: bool,
}

/// The session's span is entered only around its setup, its teardown and its
/// log lines, never for every relayed message: entering a span on each poll is
/// a measurable share of what relaying costs.
async fn session_main(
    gw: &Arc<Gateway>,
    client: &mut Client,
    session: SessionId,
    shutdown: &CancellationToken,
    span: &tracing::Span,
) -> Result<(), Ended> {
    // Counted from here to the session's end, so that a drain waits for it.
    let (under_way, draining) = gw.under_way();
    if draining {
        // The drain waits for no client it refuses.
        drop(under_way);
        return Err(refuse_while_draining(gw, client).instrument(span.clone()).await);
    }
    // Until its token is checked a client holds a task and a socket without
    // having shown who it is: a deadline bounds how long, as Postgres's
    // `authentication_timeout` does, and a count how many one source holds.
    let slot = match gw.start_login(client.peer.ip()) {
        Ok(slot) => slot,
        Err(cap) => return Err(past_the_cap(gw, client, cap).instrument(span.clone()).await),
    };
    let login = async {
        let Some(params) = startup(gw, client).await? else { return Ok(None) };
        authenticate(gw, client, session, params).await.map(Some)
    };
    let timed = tokio::select! {
        biased;
        // A login still going when the gateway stops makes no role and runs nothing.
        () = shutdown.cancelled() => return Err(gateway_stopping()),
        timed = timers::timeout(gw.options.login_timeout, login.instrument(span.clone())) => timed,
    };
    let admitted = match timed {
        Ok(admitted) => admitted?,
        Err(_) => {
            return Err(Ended::fatal(
                sqlstate::QUERY_CANCELED,
                format!(
                    "canceling authentication due to timeout: the login did not finish within {} s",
                    gw.options.login_timeout.as_secs_f64()
                ),
            ));
        }
    };
    drop(slot);
    let Some(mut admitted) = admitted else { return Ok(()) };
    if shutdown.is_cancelled() {
        return Err(gateway_stopping());
    }
    span.record("tenant", tracing::field::display(&admitted.context.tenant));
    span.record("principal", admitted.context.principal.subject.as_str());
    span.record("connection", admitted.connection.name.as_str());
    admitted.settings_checked = check_startup_settings(gw, &admitted)?;

    let mut tap = open_recording(gw, client, &admitted, span)?;
    let result = admitted_session(gw, client, &admitted, tap.as_mut(), shutdown, span).await;
    if let Some(tap) = tap.as_mut() {
        end_recording(tap, &result, span);
    }
    result
}

/// Refuses a login that makes a setting in its startup message (a parameter,
/// or `-c` in `options`) the hook would not allow as a `SET` statement: where
/// the hook looks at this session's statements, a setting must not get past
/// it by coming before the first (`startup_settings`).
/// Returns whether it looked (the hook inspects this session's statements).
fn check_startup_settings(gw: &Gateway, admitted: &Admitted) -> Result<bool, Ended> {
    if !gw.hook.inspects(&admitted.context) {
        return Ok(false);
    }
    let refused = |message: String, rule: Option<&str>| {
        tracing::info!(reason = %message, "login refused for a startup setting");
        let mut report = Report::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, message.clone());
        if let Some(rule) = rule {
            report = report.with_detail(format!("rule: {rule}"));
        }
        Ended { reason: message, fatal: Some(report) }
    };
    let settings = startup_settings::settings(&admitted.params)
        .map_err(|why| refused(format!("permission denied: {why}"), None))?;
    for setting in settings {
        match gw.hook.check(&admitted.context, Statement::Query { sql: &setting.statement }) {
            Verdict::Allow => {}
            Verdict::Deny { rule, message } => {
                return Err(refused(format!("startup setting {}: {message}", setting.name), Some(&rule)));
            }
            Verdict::Review { rule } => {
                return Err(refused(
                    format!(
                        "permission denied: startup setting {name} needs a review (rule {rule}), which a login \
                         cannot wait for; connect without it and run SET {name} in the session",
                        name = setting.name
                    ),
                    Some(&rule),
                ));
            }
        }
    }
    Ok(true)
}

/// How long a client refused past the login cap has to reach its startup
/// message (or `login_timeout`, when shorter).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// Refuses a login past `max_logins_per_address` as Postgres refuses one
/// past `max_connections`: after TLS and the startup message, so that a TLS
/// client reads why (clients drop an error sent in place of the answer to
/// their SSLRequest, which nothing authenticates). At most a few such
/// refusals run at once (`Gateway::start_refusal`), each within
/// `REFUSAL_DEADLINE`; past that the error goes at once. A cancel request
/// is still forwarded: it is how a client stops a statement it started.
async fn past_the_cap(gw: &Gateway, client: &mut Client, cap: super::gateway::LoginCap) -> Ended {
    let message = match cap {
        super::gateway::LoginCap::Source(source) => format!(
            "too many logins in progress from {source} (at most {} at once); try again shortly",
            gw.options.max_logins_per_address
        ),
        super::gateway::LoginCap::Everywhere => format!(
            "too many logins in progress at this gateway (at most {} at once); try again shortly",
            gw.options.max_logins
        ),
    };
    let refusal = Ended::fatal(sqlstate::TOO_MANY_CONNECTIONS, message);
    let Some(_refusing) = gw.start_refusal() else { return refusal };
    refuse_after_startup(gw, client, refusal).await
}

/// Refuses a login while the gateway drains, as Postgres refuses one while
/// it shuts down (57P03), after TLS and the startup message, and passes a
/// cancel request on: sessions still open may need one. Bounded as a login
/// is, by its slot, or past the login caps as a refusal past them is.
async fn refuse_while_draining(gw: &Gateway, client: &mut Client) -> Ended {
    let refusal = Ended::fatal(
        sqlstate::CANNOT_CONNECT_NOW,
        "the gateway is shutting down: connect again to reach another gateway",
    );
    match gw.start_login(client.peer.ip()) {
        Ok(_slot) => refuse_after_startup(gw, client, refusal).await,
        Err(_) => {
            let Some(_refusing) = gw.start_refusal() else { return refusal };
            refuse_after_startup(gw, client, refusal).await
        }
    }
}

/// Refuses a login with `refusal`, sent after TLS and the startup message,
/// within `REFUSAL_DEADLINE`, but passes a cancel request on.
async fn refuse_after_startup(gw: &Gateway, client: &mut Client, refusal: Ended) -> Ended {
    match timers::timeout(REFUSAL_DEADLINE.min(gw.options.login_timeout), startup(gw, client)).await {
        Ok(Ok(None)) => Ended::quietly("a cancel request while logins are refused"),
        Ok(Err(e)) => e,
        Ok(Ok(Some(_))) | Err(_) => refusal,
    }
}

/// Starts recording an authenticated session: refused (and so the session)
/// when the spool is full or cannot be written. Records what the client sent
/// after its password message, which is still unread.
fn open_recording(
    gw: &Gateway,
    client: &Client,
    admitted: &Admitted,
    span: &tracing::Span,
) -> Result<Option<SessionTap>, Ended> {
    let Some(recorder) = &gw.recorder else { return Ok(None) };
    let context = &admitted.context;
    let meta = recording::SessionOpen {
        tenant: context.tenant,
        session: context.session,
        connection_id: admitted.connection.id.to_string(),
        principal_subject: context.principal.subject.clone(),
        principal_issuer: context.principal.issuer.clone(),
        client_addr: client.peer,
        target_role: context.role.clone(),
        protocol: "postgres".into(),
        started_at: SystemTime::now(),
        grant_id: admitted.grant.id.to_string(),
        session_role: match admitted.connection.credential_mode {
            CredentialMode::SessionRole => super::roles::session_role_name(*context.session.as_uuid()),
            CredentialMode::Static => String::new(),
        },
    };
    let mut tap = recorder.open_session(meta).map_err(|e| recording_lost(span, &e))?;
    if let Err(e) = tap.client_bytes(&client.buf) {
        let _ = tap.end("the session could not be recorded");
        return Err(recording_lost(span, &e));
    }
    Ok(Some(tap))
}

/// Records the session's last words: the FATAL it is ended with, if any, then its end.
fn end_recording(tap: &mut SessionTap, result: &Result<(), Ended>, span: &tracing::Span) {
    let reason = match result {
        Ok(()) => airlock_core::session::CLIENT_CLOSED,
        Err(ended) => {
            if let Some(report) = &ended.fatal {
                let mut out = BytesMut::new();
                encode::error_response(&mut out, report);
                let _ = tap.server_bytes(&out);
            }
            ended.reason.as_str()
        }
    };
    if let Err(e) = tap.end(reason) {
        tracing::warn!(parent: span, "failed to record the end of the session: {e}");
    }
}

/// A session whose recording failed ends with this.
fn recording_lost(span: &tracing::Span, e: &recording::Error) -> Ended {
    match e {
        recording::Error::SpoolFull { .. } | recording::Error::Stopped => {
            tracing::warn!(parent: span, "session refused or ended: {e}");
        }
        _ => tracing::error!(parent: span, "failed to record the session: {e}"),
    }
    Ended::fatal(RECORDING_UNAVAILABLE, e.client_message())
}

/// An authenticated, recorded session: its credentials on the target, the
/// relay, and the session role dropped at the end whatever happened.
async fn admitted_session(
    gw: &Arc<Gateway>,
    client: &mut Client,
    admitted: &Admitted,
    tap: Option<&mut SessionTap>,
    shutdown: &CancellationToken,
    span: &tracing::Span,
) -> Result<(), Ended> {
    let session = admitted.context.session;
    // Credentials on the target: a role made for this session, or the static one.
    let credentials = async {
        let mut session_role = None;
        let login = match admitted.connection.credential_mode {
            CredentialMode::Static => {
                let credential = gw.credential(admitted.context.tenant, &admitted.connection).await.map_err(|e| {
                    tracing::error!("failed to read the credential of connection {}: {e:#}", admitted.connection.name);
                    Ended::fatal(sqlstate::CONNECTION_FAILURE, "the gateway cannot read the connection's credential")
                })?;
                let salt_cache = gw.salt_cache(admitted.context.tenant, admitted.connection.id, credential.version);
                TargetLogin {
                    user: credential.user,
                    password: credential.password,
                    salted: None,
                    salt_cache: Some(salt_cache),
                }
            }
            CredentialMode::SessionRole => {
                let template = admitted.connection.roles.get(&admitted.context.role).cloned().ok_or_else(|| {
                    Ended::fatal(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        format!("connection {} has no role {}", admitted.connection.name, admitted.context.role),
                    )
                })?;
                let manager = gw.role_manager(admitted.context.tenant, &admitted.connection).await.map_err(|e| {
                    tracing::error!("failed to reach {} as its admin: {e:#}", admitted.connection.name);
                    match e.downcast_ref::<RoleError>() {
                        // The target is there, and refused the admin another connection.
                        Some(full @ RoleError::ConnectionLimit(_)) => role_not_made(&admitted.connection.name, full),
                        _ => Ended::fatal(
                            sqlstate::CONNECTION_FAILURE,
                            format!("the gateway cannot reach {}", admitted.connection.name),
                        ),
                    }
                })?;
                let spec = SessionRoleSpec {
                    session_id: *session.as_uuid(),
                    worker_id: gw.options.worker_id.clone(),
                    template_role: template,
                    valid_until: unix_to_system(admitted.grant.expires_at_unix),
                    run: gw.run.clone(),
                };
                let role = manager.create_session_role(&spec).await.map_err(|e| {
                    tracing::error!("failed to create a session role on {}: {e}", admitted.connection.name);
                    if let RoleError::Unconfirmed { role, .. } = &e {
                        gw.drop_later(Undropped {
                            tenant: admitted.context.tenant,
                            connection: admitted.connection.clone(),
                            name: role.clone(),
                            manager: manager.clone(),
                        });
                    }
                    role_not_made(&admitted.connection.name, &e)
                })?;
                let login = TargetLogin {
                    user: role.name.clone(),
                    password: role.password.clone(),
                    salted: Some(role.salted.clone()),
                    salt_cache: None,
                };
                session_role = Some((manager, role.name));
                login
            }
        };
        Ok::<_, Ended>((login, session_role))
    }
    .instrument(span.clone())
    .await?;
    let (login, session_role) = credentials;

    let mut tap = tap;
    let result = relay_session(gw, client, admitted, tap.as_deref_mut(), login, shutdown, span).await;
    // The client hears why its session ended before the cleanup: dropping the
    // role takes a few round trips to the target (its connection there is closed already).
    let result = tell_client(client, tap, result).await;

    // The end: whatever happened, the session role goes (later, if the target is away now).
    if let Some((manager, name)) = session_role
        && let Err(e) = manager.drop_session_role(&name).instrument(span.clone()).await
    {
        tracing::error!(parent: span, role = %name, "failed to drop a session role, trying again later: {e}");
        gw.drop_later(Undropped {
            tenant: admitted.context.tenant,
            connection: admitted.connection.clone(),
            name,
            manager,
        });
    }
    result
}

/// Records and sends the FATAL a session ends with, then closes the client's
/// connection; the FATAL is taken out of the result so it is sent once.
async fn tell_client(
    client: &mut Client,
    tap: Option<&mut SessionTap>,
    result: Result<(), Ended>,
) -> Result<(), Ended> {
    let Err(mut ended) = result else { return result };
    let Some(report) = ended.fatal.take() else {
        // Nothing to say (or nothing that may be said: the client may hold
        // part of a message), but the connection closes now all the same.
        let _ = timers::timeout(FATAL_WRITE_TIMEOUT, client.io.shutdown()).await;
        return Err(ended);
    };
    let mut out = BytesMut::new();
    encode::error_response(&mut out, &report);
    if let Some(tap) = tap {
        // Recorded before it is sent, as everything the client receives; a failure here changes nothing now.
        let _ = tap.server_bytes(&out);
    }
    // A client that stopped reading must not hold up the role's drop.
    let told = async {
        let _ = client.io.write_all(&out).await;
        let _ = client.io.shutdown().await;
    };
    let _ = timers::timeout(FATAL_WRITE_TIMEOUT, told).await;
    Err(ended)
}

/// How long a session's last FATAL may take to reach a client that is not reading.
const FATAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the startup phase. `Ok(None)`: the connection was a cancel request, done.
async fn startup(gw: &Gateway, client: &mut Client) -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, Ended> {
    // Each request for encryption is answered once, as Postgres answers
    // them: a client asking again is not negotiating but looping.
    let (mut ssl_answered, mut gss_answered) = (false, false);
    if direct_tls(client).await? {
        let Some(acceptor) = gw.tls.clone() else {
            return Err(Ended::quietly("the client started TLS directly, and the gateway has no TLS"));
        };
        let ClientIo::Plain(tcp) = std::mem::replace(&mut client.io, ClientIo::Closed) else {
            return Err(Ended::quietly("TLS requested twice"));
        };
        let tls = acceptor.accept(tcp).await.map_err(|e| Ended::quietly(format!("TLS handshake failed: {e}")))?;
        let alpn = tls.get_ref().1.alpn_protocol() == Some(super::tls::POSTGRES_ALPN);
        client.io = ClientIo::Tls(Box::new(tls));
        client.tls = true;
        ssl_answered = true;
        if !alpn {
            // Postgres requires it too (and closes without a word): without
            // the protocol's name, a TLS connection made directly may have
            // been meant for another service.
            return Err(Ended::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "TLS started without an SSLRequest must negotiate the ALPN protocol \"postgresql\"",
            ));
        }
    }
    loop {
        let message = loop {
            match parse_startup(&mut client.buf) {
                Ok(Some(m)) => break m,
                Ok(None) => read_more(client).await?,
                Err(e) => return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
            }
        };
        match message {
            Startup::SslRequest => {
                if client.tls {
                    return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "SSLRequest after TLS was established"));
                }
                if std::mem::replace(&mut ssl_answered, true) {
                    // Postgres's code for a request it does not take at this point.
                    return Err(Ended::fatal(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "SSLRequest sent again after its answer",
                    ));
                }
                let Some(acceptor) = gw.tls.clone() else {
                    client.io.write_all(&[encode::SSL_REFUSED]).await.map_err(io_ended)?;
                    continue;
                };
                // Bytes sent after SSLRequest but before the handshake would be
                // read as if they came through TLS: refuse them.
                if !client.buf.is_empty() {
                    return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "unencrypted data after SSLRequest"));
                }
                client.io.write_all(&[encode::SSL_ACCEPTED]).await.map_err(io_ended)?;
                let ClientIo::Plain(tcp) = std::mem::replace(&mut client.io, ClientIo::Closed) else {
                    return Err(Ended::quietly("TLS requested twice"));
                };
                let tls =
                    acceptor.accept(tcp).await.map_err(|e| Ended::quietly(format!("TLS handshake failed: {e}")))?;
                client.io = ClientIo::Tls(Box::new(tls));
                client.tls = true;
            }
            Startup::GssEncRequest => {
                if client.tls || std::mem::replace(&mut gss_answered, true) {
                    return Err(Ended::fatal(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "GSSENCRequest sent again, or inside TLS, after encryption was negotiated",
                    ));
                }
                client.io.write_all(&[encode::SSL_REFUSED]).await.map_err(io_ended)?;
            }
            Startup::CancelRequest { pid, secret_key } => {
                forward_cancel(gw, pid, &secret_key).await;
                return Ok(None);
            }
            Startup::Startup { protocol, params } => {
                if protocol.1 > 0 || params.iter().any(|(n, _)| n.starts_with(b"_pq_.")) {
                    // We speak 3.0 and no protocol extensions; say so, as the server would.
                    let unsupported: Vec<&[u8]> =
                        params.iter().filter(|(n, _)| n.starts_with(b"_pq_.")).map(|(n, _)| n.as_slice()).collect();
                    let mut out = BytesMut::new();
                    encode::negotiate_protocol_version(&mut out, 0, &unsupported)
                        .map_err(|e| Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
                    client.io.write_all(&out).await.map_err(io_ended)?;
                }
                let params = params.into_iter().filter(|(n, _)| !n.starts_with(b"_pq_.")).collect();
                return Ok(Some(params));
            }
        }
    }
}

async fn authenticate(
    gw: &Gateway,
    client: &mut Client,
    session: SessionId,
    params: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<Admitted, Ended> {
    let param = |name: &[u8]| params.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    if param(b"replication").is_some_and(|v| v != b"false" && v != b"0" && v != b"off" && v != b"no") {
        return Err(Ended::fatal(sqlstate::FEATURE_NOT_SUPPORTED, "replication connections are not supported"));
    }
    let user = param(b"user")
        .and_then(|u| std::str::from_utf8(u).ok())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Ended::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "connect as <connection>[.<role>] with your access token as the password",
            )
        })?
        .to_owned();
    let (connection_name, role) = match user.split_once('.') {
        Some((c, r)) => (c.to_owned(), Some(r.to_owned())),
        None => (user.clone(), None),
    };
    if !token_may_travel(client.tls, client.peer.ip(), gw.options.allow_cleartext_off_loopback) {
        return Err(Ended::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "this gateway requires TLS from other hosts (sslmode=require): the password is an access token",
        ));
    }

    // The password is the token.
    let mut out = BytesMut::new();
    encode::authentication_cleartext_password(&mut out);
    client.io.write_all(&out).await.map_err(io_ended)?;
    let frame = loop {
        match parse_frame(&mut client.buf, MAX_AUTH_MESSAGE_LEN) {
            Ok(Some(f)) => break f,
            Ok(None) => read_more(client).await?,
            Err(e) => return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
        }
    };
    if frame.tag() != b'p' {
        return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "expected a password message"));
    }
    let token =
        decode_password(&frame.body()).map_err(|e| Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
    let token = std::str::from_utf8(&token).map_err(|_| invalid_token("not a token"))?.trim().to_owned();
    // On the main runtime: checking an OIDC token may fetch its issuer's keys
    // over HTTP, whose client makes timers and spawns connections, neither of
    // which belongs on a session thread (see `timers`).
    let (verifier, projection) = (gw.verifier.clone(), gw.projection.clone());
    let verified = gw.runtime.spawn(
        async move { verifier.verify(&token, projection.directory()).await }.instrument(tracing::Span::current()),
    );
    let principal = match verified.await {
        Ok(verified) => verified.map_err(|e| invalid_token(&e.0))?,
        Err(e) if e.is_panic() => {
            tracing::error!("checking a token failed: the check panicked");
            return Err(Ended::fatal(sqlstate::INTERNAL_ERROR, "the gateway failed to check the token"));
        }
        Err(_) => return Err(gateway_stopping()),
    };

    let tenant = principal.tenant_id;
    let decided = match decide(gw, &principal, &connection_name, role.as_deref()) {
        // A refusal is checked against the log's head first: a grant made a
        // moment ago may not have reached this worker yet.
        Err(_) if gw.catch_up(tenant).await => decide(gw, &principal, &connection_name, role.as_deref()),
        other => other,
    }?;
    let (connection, role, grant) = decided;

    // The database is the connection's. libpq sends the user name as the
    // database when none is given: treat that as "the connection's".
    let database = match param(b"database") {
        None => connection.database.clone(),
        Some(d) if d == user.as_bytes() => connection.database.clone(),
        Some(d) if d == connection.database.as_bytes() => connection.database.clone(),
        Some(d) => {
            return Err(Ended::fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!(
                    "connection {connection_name} serves database {}, not {}",
                    connection.database,
                    String::from_utf8_lossy(d)
                ),
            ));
        }
    };
    let forwarded = params
        .iter()
        .filter(|(n, _)| !matches!(n.as_slice(), b"user" | b"database" | b"replication"))
        .cloned()
        .collect();
    tracing::info!(role = %role, grant = %grant.id, "session admitted");
    Ok(Admitted {
        context: SessionContext {
            tenant,
            session,
            principal,
            connection: connection.id,
            connection_name: connection.name.clone(),
            grant: grant.id,
            role,
        },
        grant,
        connection,
        database,
        params: forwarded,
        settings_checked: false,
    })
}

/// Which connection, role and grant admit `principal`, from the projection alone.
fn decide(
    gw: &Gateway,
    principal: &airlock_core::principal::Principal,
    connection_name: &str,
    role: Option<&str>,
) -> Result<(ConnectionSpec, String, Grant), Ended> {
    let now = unix_now();
    let tenant = principal.tenant_id;
    gw.projection.read(|t| {
        let state = t.get(&tenant).ok_or_else(|| no_access("your tenant is not known to this gateway yet".into()))?;
        let connection = state
            .connection_by_name(connection_name)
            .ok_or_else(|| no_access(format!("no connection named {connection_name}")))?;
        if connection.kind != ConnectionKind::Postgres {
            return Err(no_access(format!("{connection_name} is not a Postgres connection")));
        }
        let role = match role {
            Some(r) => r.to_owned(),
            None => {
                let mut roles: Vec<&str> = state
                    .grants
                    .values()
                    .filter(|g| g.connection_id == connection.id && g.admits(principal, now))
                    .map(|g| g.role.as_str())
                    .collect();
                roles.dedup();
                match roles.as_slice() {
                    [one] => (*one).to_owned(),
                    [] => return Err(no_access(format!("no grant for {} on {connection_name}", principal.subject))),
                    many => {
                        return Err(no_access(format!(
                            "you hold several roles on {connection_name} ({}); connect as {connection_name}.<role>",
                            many.join(", ")
                        )));
                    }
                }
            }
        };
        if let Some(why) = state.denial(principal, connection, &role, now) {
            return Err(no_access(why));
        }
        let grant = state
            .grant_for(principal, &connection.id, &role, now)
            .cloned()
            .ok_or_else(|| no_access("no grant".into()))?;
        Ok((connection.clone(), role, grant))
    })
}

/// What a client hears when its session role could not be made. A template
/// the target does not have or that confers too much is about its access
/// (42501, said in full); anything else is the target's or the gateway's
/// trouble, worth another try, and its details (the admin's view of the
/// target) stay in the log.
fn role_not_made(connection: &str, e: &RoleError) -> Ended {
    match e {
        RoleError::TemplateNotFound(_) | RoleError::TemplateTooPowerful { .. } | RoleError::InvalidTemplateName(_) => {
            Ended::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("the gateway could not create a session role on {connection}: {e}"),
            )
        }
        RoleError::ConnectionLimit(_) => Ended::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!("{connection} refused the gateway another connection to create a session role; try again later"),
        ),
        _ => Ended::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("the gateway could not create a session role on {connection} (its log says why); try again"),
        ),
    }
}

/// The password is a token: it may cross the network only inside TLS, unless it
/// never leaves the host or the operator said otherwise.
fn token_may_travel(tls: bool, peer: std::net::IpAddr, allow_cleartext_off_loopback: bool) -> bool {
    // A dual-stack listener sees an IPv4 client as `::ffff:a.b.c.d`.
    tls || peer.to_canonical().is_loopback() || allow_cleartext_off_loopback
}

/// What the client is told when the session's connection to the target
/// failed: refused by the target, out of file descriptors or socket memory
/// here (which is no fault of the target's, and passes), or unreachable.
fn upstream_failed(target: &str, e: upstream::UpstreamError) -> Ended {
    match e {
        upstream::UpstreamError::Refused { message, .. } => {
            Ended::fatal(sqlstate::CONNECTION_FAILURE, format!("{target} refused the session: {message}"))
        }
        upstream::UpstreamError::Connect { source, .. } => match upstream::local_shortage(&source) {
            Some(upstream::Shortage::FileDescriptors) => Ended::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("the gateway has no file descriptors left to connect to {target}; try again later"),
            ),
            Some(upstream::Shortage::SocketMemory) => Ended::fatal(
                sqlstate::OUT_OF_MEMORY,
                format!("the gateway is out of memory for sockets to connect to {target}; try again later"),
            ),
            None => unreachable_target(target),
        },
        // How the target is set up, not where it is: say so (no secret is in it).
        e @ upstream::UpstreamError::UnsupportedAuth(_) => {
            Ended::fatal(sqlstate::CONNECTION_FAILURE, format!("the gateway cannot log in to {target}: {e}"))
        }
        _ => unreachable_target(target),
    }
}

fn unreachable_target(target: &str) -> Ended {
    Ended::fatal(sqlstate::CONNECTION_FAILURE, format!("{target} is unreachable"))
}

fn invalid_token(why: &str) -> Ended {
    Ended::fatal(sqlstate::INVALID_AUTHORIZATION_SPECIFICATION, format!("invalid access token: {why}"))
}

fn no_access(why: String) -> Ended {
    Ended::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, format!("access denied: {why}"))
}

/// Who a session logs in to its target as: its session role, with the
/// salted form of the password the gateway made, or the connection's static
/// credential, with where its salted form is kept between logins.
struct TargetLogin {
    user: String,
    password: String,
    salted: Option<SaltedPassword>,
    salt_cache: Option<Arc<super::scram::SaltCache>>,
}

#[allow(clippy::too_many_arguments)]
async fn relay_session(
    gw: &Arc<Gateway>,
    client: &mut Client,
    admitted: &Admitted,
    mut tap: Option<&mut SessionTap>,
    login: TargetLogin,
    shutdown: &CancellationToken,
    span: &tracing::Span,
) -> Result<(), Ended> {
    // Watched from before what the relay takes from the projection (whether
    // it masks, whether it inspects): a change from here on reaches the relay
    // as a change, which it looks at again.
    let changes = gw.projection.changes();
    let mut options = UpstreamOptions::new(
        admitted.connection.address.clone(),
        login.user,
        login.password,
        admitted.database.clone(),
    );
    options.salted = login.salted;
    options.salt_cache = login.salt_cache;
    options.tls = admitted.connection.tls;
    options.root_certs = gw.options.target_roots.as_ref().and_then(|r| r.for_mode(admitted.connection.tls));
    options.params = admitted.params.clone();
    options.connect_timeout = gw.options.connect_timeout;
    let upstream = upstream::connect(&options).instrument(span.clone()).await.map_err(|e| {
        tracing::warn!(parent: span, "failed to connect to {}: {e}", admitted.connection.name);
        upstream_failed(&admitted.connection.name, e)
    })?;

    // Our own cancel key, mapped to the backend's, at the address this
    // connection reached.
    let cancel_to = upstream.stream.peer_addr().map(|reached| options.for_cancel(reached)).map_err(|e| {
        tracing::warn!(parent: span, "the connection to {} has no peer address: {e}", admitted.connection.name);
        Ended::fatal(sqlstate::CONNECTION_FAILURE, format!("the connection to {} failed", admitted.connection.name))
    })?;
    let cancel_held = Arc::new(tokio::sync::Notify::new());
    let (pid, key) = loop {
        let pid = rand::random::<i32>() & i32::MAX;
        let key: [u8; 4] = rand::random();
        let mut cancels = gw.cancels.lock().unwrap_or_else(|e| e.into_inner());
        if pid != 0 && !cancels.contains_key(&(pid, key)) {
            if let Some(backend) = &upstream.backend_key {
                let target = CancelTarget {
                    tenant: admitted.context.tenant,
                    upstream: cancel_to.clone(),
                    key: backend.clone(),
                    held: cancel_held.clone(),
                };
                cancels.insert((pid, key), target);
            }
            break (pid, key);
        }
    };
    let _unregister = Unregister { gateway: gw.clone(), key: (pid, key) };
    // Counted before the client hears it is in.
    let _live = gw.session_started();

    let mut out = BytesMut::new();
    encode::authentication_ok(&mut out);
    for (name, value) in &upstream.parameters {
        encode::parameter_status(&mut out, name, value)
            .map_err(|e| Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
    }
    encode::backend_key_data(&mut out, pid, &key)
        .map_err(|e| Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
    encode::ready_for_query(&mut out, upstream.ready_status);
    if let Some(tap) = tap.as_deref_mut() {
        tap.server_bytes(&out).map_err(|e| recording_lost(span, &e))?;
    }
    client.io.write_all(&out).await.map_err(io_ended)?;

    let started = Instant::now();
    let info = SessionInfo {
        id: admitted.context.session,
        grant_id: admitted.grant.id,
        connection_id: admitted.connection.id,
        subject: admitted.context.principal.subject.clone(),
        issuer: admitted.context.principal.issuer.clone(),
        client_addr: client.peer.to_string(),
        worker_id: gw.options.worker_id.clone(),
        target_role: options.user.clone(),
    };
    record(gw, admitted.context.tenant, Event::SessionOpened { session: info });

    // Masking follows masked columns through the target's views and
    // inheriting tables: the hook learns them before the first statement.
    let masks = gw.hook.masks(&admitted.context);
    if masks && gw.hook.wants_catalog(&admitted.context) {
        let relations = async {
            let admin = gw.role_manager(admitted.context.tenant, &admitted.connection).await?;
            anyhow::Ok(admin.masking_relations().await?)
        }
        .await
        .map_err(|e| {
            tracing::error!(parent: span, "failed to read the catalog of {}: {e:#}", admitted.connection.name);
            Ended::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("the gateway cannot read the catalog of {} to mask results", admitted.connection.name),
            )
        })?;
        let relations: Vec<airlock_core::policy::CatalogRelation> = relations
            .into_iter()
            .map(|r| airlock_core::policy::CatalogRelation {
                schema: r.schema,
                name: r.name,
                columns: r.columns.into_values().collect(),
                definition: r.definition,
                ancestors: r.ancestors,
            })
            .collect();
        gw.hook.learn_catalog(&admitted.context, &relations);
    }
    let lexing_safe = upstream.parameters.iter().all(|(name, value)| lexing_setting(name, value) != Some(false));
    let mut relay = Relay {
        span,
        gw,
        client,
        upstream,
        context: &admitted.context,
        bytes_in: 0,
        bytes_out: 0,
        status: b'I',
        discarding: false,
        batch_open: false,
        ready_owed: 0,
        ready_seen: 0,
        refusal: None,
        inject: Vec::new(),
        held: None,
        decided: None,
        statements: Statements::default(),
        deallocating_portals: std::collections::HashSet::new(),
        every_portal_deallocates: false,
        closing_portals: std::collections::HashMap::new(),
        lexing_safe,
        inspecting: gw.hook.inspects(&admitted.context),
        cancel_held,
        in_flight: InFlight::default(),
        copy: CopyWatch::default(),
        probe: None,
        resumed: false,
        read_ahead: false,
        passing: 0,
        mid_message: false,
        deferred: BytesMut::new(),
        awaiting_answers: false,
        describing: None,
        masking: masks.then(Responses::default),
        masking_lapsed: false,
        salt: admitted.context.tenant.to_string().into_bytes(),
        connection: &admitted.connection,
        // The bytes sent along with the password were recorded when the tap
        // opened: in strict mode they too wait for the recorder.
        client_seq: tap.as_ref().map_or(0, |t| t.last_seq()),
        tap,
        durable_seq: 0,
        review_note: None,
        catalog: std::sync::OnceLock::new(),
        shutdown: shutdown.clone(),
    };
    let ended = if relay.inspecting && !admitted.settings_checked {
        // Rules came to cover the connection while it logged in: its
        // startup settings reached the target unchecked.
        let rules = if relay.masking.is_some() { "masking rules" } else { "command rules" };
        Err(Ended::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("{rules} now cover this connection; reconnect to continue under them"),
        ))
    } else {
        relay.inspecting |= relay.masking.is_some();
        relay.run(&admitted.connection, shutdown, changes).await
    };
    let ended = match ended {
        // Part of a long message went to the client: a FATAL now would be
        // read as the rest of it. The connection just closes.
        Err(e) if relay.mid_message => Err(Ended { fatal: None, ..e }),
        other => other,
    };
    let (bytes_in, bytes_out) = (relay.bytes_in, relay.bytes_out);
    let reason = match &ended {
        Ok(()) => airlock_core::session::CLIENT_CLOSED.to_owned(),
        Err(e) => e.reason.clone(),
    };
    tracing::info!(parent: span, bytes_in, bytes_out, reason = %reason, "session ended");
    record(
        gw,
        admitted.context.tenant,
        Event::SessionClosed {
            session_id: admitted.context.session,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_from_client: bytes_in,
            bytes_to_client: bytes_out,
            reason,
        },
    );
    ended
}

struct Unregister {
    gateway: Arc<Gateway>,
    key: (i32, [u8; 4]),
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.gateway.cancels.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// Sends a session event to the control plane without holding up the session.
fn record(gw: &Arc<Gateway>, tenant: TenantId, event: Event) {
    gw.session_events.send(tenant, event);
}

struct Relay<'a> {
    span: &'a tracing::Span,
    gw: &'a Arc<Gateway>,
    client: &'a mut Client,
    upstream: Upstream,
    context: &'a SessionContext,
    bytes_in: u64,
    bytes_out: u64,
    /// The transaction status of the last ReadyForQuery.
    status: u8,
    /// After a refused extended-protocol message, discard until Sync, as Postgres does.
    discarding: bool,
    /// An extended-protocol message went to the server since the last Sync.
    /// A simple query or function call sent now is refused (`mid_batch`).
    batch_open: bool,
    /// ReadyForQuery messages the server owes: one per Query and Sync forwarded.
    ready_owed: u64,
    /// ReadyForQuery messages seen from the server.
    ready_seen: u64,
    /// The error of a refused extended-protocol message, until the Sync that
    /// ends its batch is forwarded.
    refusal: Option<Refusal>,
    /// Errors to place just before the ReadyForQuery with this ordinal: the one
    /// that answers the Sync ending the refused message's batch. With pipelined
    /// batches that is not always the next ReadyForQuery. Where the server's
    /// error on the failing Describe sent in the refused message's place
    /// comes, the refusal goes there instead.
    inject: Vec<(u64, Refusal)>,
    /// A statement the hook holds for review, taken out of the client's stream.
    held: Option<Held>,
    /// A held statement whose review ended, waiting for a probe to be answered.
    decided: Option<(Held, Result<(), Report>)>,
    /// What the server holds under each prepared statement's name.
    statements: Statements,
    /// Portals bound to a statement that may deallocate prepared statements
    /// (its text says so, or is not known): executing one forgets the texts
    /// again, those learned since its Bind included.
    deallocating_portals: std::collections::HashSet<bytes::Bytes>,
    /// More than `MAX_PREPARED` such portals were bound: every Execute forgets.
    every_portal_deallocates: bool,
    /// Portals bound to a statement that is exactly `DEALLOCATE name`, as a
    /// driver in pipeline mode evicts a statement: executing one closes that
    /// name, and no other.
    closing_portals: std::collections::HashMap<bytes::Bytes, bytes::Bytes>,
    /// The server reads statement text as the gateway does: a client encoding
    /// whose characters cannot hide a quote or backslash, and standard-conforming
    /// strings. Tracked from the server's ParameterStatus messages.
    lexing_safe: bool,
    /// The hook looks at this session's statements (`StatementHook::inspects`),
    /// asked again on every change of the worker's state.
    inspecting: bool,
    /// Notified by a cancel request for this session (see `CancelTarget::held`).
    cancel_held: Arc<tokio::sync::Notify>,
    /// Which Syncs the server ignores while it reads COPY data, and so owes
    /// no ReadyForQuery for.
    copy: CopyWatch,
    /// The question put to the server after a COPY failed with Syncs in
    /// flight; the client's messages wait until it is answered.
    probe: Option<Probe>,
    /// A probe was answered, the answers a Bind awaited came, or the
    /// description a held Execute or Describe awaited: the client's messages read
    /// meanwhile wait to be handled.
    resumed: bool,
    /// The target's bytes were read into the server buffer while a write to
    /// it waited (`write_target`): they wait to be handled, with no read of
    /// the socket to wake the loop for them.
    read_ahead: bool,
    /// Bytes of a long message of the target's (a row, copy data) still to
    /// pass on as they arrive: its start went already (`forward_plain`).
    passing: usize,
    /// The client may have been sent part of a message and not its end: a
    /// FATAL would be read as the rest of the message. Set after a write to
    /// the client while `passing`, and when a write was cut short after
    /// some of it went.
    mid_message: bool,
    /// What the gateway says to the client (a review's notice) while a long
    /// row is on its way: written once the row has gone whole, since inside
    /// it the client would read it as the row's data and the row's end as
    /// messages (`forward_plain`).
    deferred: BytesMut,
    /// The client's next message is a Bind of a statement whose name an
    /// earlier batch changed, and it waits until the server has answered
    /// every batch before it (see `bind_awaits_answers`).
    awaiting_answers: bool,
    /// An Execute, or the client's Describe of a portal, held with the
    /// client's messages after it until the server has described the portal:
    /// in a masked session, a result the detectors cannot read is refused
    /// before the statement runs, and before anything after it in its batch
    /// does (see `Responses::must_describe_first`).
    describing: Option<Undescribed>,
    /// The Parses, Binds and Closes forwarded and not yet answered, in order.
    in_flight: InFlight,
    /// The responses owed and how their rows are masked, when masking rules
    /// cover this session's connection (decided when it starts).
    masking: Option<Responses>,
    /// Masking rules stopped covering this masked session for a while.
    masking_lapsed: bool,
    /// Keys the hash strategy: the tenant.
    salt: Vec<u8>,
    connection: &'a ConnectionSpec,
    /// Where the session is recorded.
    tap: Option<&'a mut SessionTap>,
    /// The seq of the last frame of client bytes recorded.
    client_seq: u64,
    /// In strict mode, the last seq the recorder confirmed stored.
    durable_seq: u64,
    /// The review of the last held statement and who approved it, once decided.
    review_note: Option<(String, String)>,
    /// The target's catalog, once masking needed it: held for the session,
    /// so that the gateway keeps it while the session runs, also after its
    /// connection was pointed elsewhere (`Gateway::forget_removed`).
    catalog: std::sync::OnceLock<Arc<super::catalog::Catalog>>,
    /// The gateway's shutdown, which a write that waits watches.
    shutdown: CancellationToken,
}

/// How much a client may send while one of its statements is held; past it,
/// the session stops reading until the review ends.
const HELD_BUFFER_LIMIT: usize = 1024 * 1024;

/// A message held until the server describes its portal (`Relay::describing`).
struct Undescribed {
    raw: bytes::Bytes,
    message: FrontendMessage,
    /// Set when the description is readable: the flag of the portal's binding
    /// the description was read for (none when the gateway did not know it).
    readable: Option<masking::ReadableFlag>,
}

/// The refusal of an extended-protocol message. In its place the server was
/// sent a Describe of a portal named `name`, which no client can name, for
/// the server to fail the batch as it would on any failed message: the
/// implicit transaction of the batch is rolled back, a transaction block
/// aborted. (A portal, not a statement: a pgbouncer that tracks prepared
/// statements ends the connection on an unknown statement's name, and lets
/// portals through.)
struct Refusal {
    report: Report,
    name: String,
}

/// Parse, Bind and Close messages a session may have forwarded and not yet
/// had answered. Drivers read answers as they pipeline, and stay far below.
const MAX_IN_FLIGHT: usize = 16_384;

/// Bytes of statement text and names those messages may hold until answered
/// (at least one message of the largest size the gateway takes): the server
/// answers a batch at its Sync, so this bounds one batch's Parses.
const MAX_IN_FLIGHT_TEXT: usize = 64 << 20;

/// Client encodings in which a multibyte character can end in a byte that is
/// an ASCII quote or backslash: the server and the gateway would split the
/// same text into different tokens.
const UNSAFE_ENCODINGS: &[&[u8]] = &[b"BIG5", b"GBK", b"GB18030", b"SJIS", b"SHIFT_JIS_2004", b"UHC", b"JOHAB"];

/// Whether a reported setting keeps statement text read alike; `None` when
/// the setting does not bear on it.
fn lexing_setting(name: &[u8], value: &[u8]) -> Option<bool> {
    match name {
        b"client_encoding" => Some(!UNSAFE_ENCODINGS.iter().any(|e| e.eq_ignore_ascii_case(value))),
        b"standard_conforming_strings" => Some(value == b"on"),
        _ => None,
    }
}

/// A statement waiting for review.
struct Held {
    /// The message as the client sent it, forwarded if approved.
    raw: bytes::Bytes,
    message: FrontendMessage,
    /// The statement as approvers see it (see `hook::shown_statement`).
    shown: String,
    /// A simple Query (else a Bind).
    is_query: bool,
    rule: String,
}

/// What becomes of one server message in a masked session.
enum Relayed {
    AsIs,
    Changed(BytesMut),
    Dropped,
}

/// What [`Relay::relay_uninspected`] did with the client's next message.
enum Uninspected {
    Relayed,
    Terminated,
    /// Not all of it has arrived.
    Incomplete,
    /// It needs the full path.
    Decode,
}

/// How far the client's messages were handled.
enum Progress {
    /// All complete messages were handled.
    Done,
    Terminated,
    /// Stopped at a statement held for review (in `Relay::held`).
    Hold,
    /// Stopped at a Bind that waits for the server's answers to the batches
    /// before it (`Relay::bind_awaits_answers`).
    AwaitAnswers,
    /// Stopped at an Execute or Describe that waits for the server to
    /// describe its portal (`Relay::describing`).
    Describe,
}

/// What a relay's wait ended with.
enum Woke {
    Control(Control),
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    /// The target's bytes read while a write to it waited.
    ReadAhead,
}

/// What woke a relay besides its sockets.
enum Control {
    /// The projection changed; false when its sender is gone.
    Changed(bool),
    /// The grant's end, as it was when the timer was set.
    Expired,
    ShuttingDown,
    RecordingStopped(recording::Error),
}

/// How long opening a review may take before the statement is refused.
const OPEN_REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a review's opening, or its withdrawal, waits for the control
/// plane, for a session that may have stopped waiting for it: a review
/// whose id comes later is not withdrawn, and expires on its own. A stop
/// may give up on them sooner (`stop_timeout`): the review then expires on
/// its own too.
const OPENING_LIMIT: Duration = Duration::from_secs(25);

/// Time past a review's end before a worker stops waiting for the control
/// plane to record the expiry: clocks differ a little.
const REVIEW_GRACE: Duration = Duration::from_secs(2);

impl Relay<'_> {
    async fn run(
        &mut self,
        connection: &ConnectionSpec,
        shutdown: &CancellationToken,
        mut changes: tokio::sync::watch::Receiver<u64>,
    ) -> Result<(), Ended> {
        // Set up while the gateway began to stop: nothing is relayed.
        if shutdown.is_cancelled() {
            return Err(gateway_stopping());
        }
        // The projection as it is now is looked at before the first message
        // the client sent along with its password: it may have changed while
        // the session was set up, before the relay watched (a grant revoked
        // while the session's role was made).
        changes.borrow_and_update();
        self.look_again(connection)?;
        let mut armed_for = self.grant_end();
        let expiry = timers::sleep(until(armed_for));
        tokio::pin!(expiry);
        let mut server_buf = std::mem::take(&mut self.upstream.leftover);
        let mut to_server = BytesMut::with_capacity(8192);
        let mut to_client = BytesMut::with_capacity(8192);
        // Anything the client sent along with its password.
        if self.process_client(connection, shutdown, &mut server_buf, &mut to_server, &mut to_client).await? {
            return Ok(());
        }
        // The events that end or change a session, polled only when one of them
        // wakes (see `wake_gate`). Each future lives across iterations:
        // registering anew on every message would cost a lock on state every
        // session shares.
        let gate = WakeGate::new();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        // Ends the session when it can no longer be recorded (a full spool).
        let recording_stopped = recording_stopped(self.tap.as_deref().map(SessionTap::stop_signal));
        tokio::pin!(recording_stopped);
        let mut server_first = false;
        loop {
            let changed = changes.changed();
            tokio::pin!(changed);
            loop {
                let control = std::future::poll_fn(|cx| {
                    let waker = std::task::ready!(gate.poll_woken(cx));
                    let mut cx = Context::from_waker(&waker);
                    let event = if let Poll::Ready(r) = changed.as_mut().poll(&mut cx) {
                        Control::Changed(r.is_ok())
                    } else if expiry.as_mut().poll(&mut cx).is_ready() {
                        Control::Expired
                    } else if shutting_down.as_mut().poll(&mut cx).is_ready() {
                        Control::ShuttingDown
                    } else if let Poll::Ready(e) = recording_stopped.as_mut().poll(&mut cx) {
                        Control::RecordingStopped(e)
                    } else {
                        return Poll::Pending;
                    };
                    // The others were not polled this time: the next poll looks again.
                    gate.reopen();
                    Poll::Ready(event)
                });
                // The gated events first: they cost two atomic operations to look
                // at, and so nothing starves them. The sockets take turns being
                // looked at first, so that one kept readable (a large COPY, a
                // long result) cannot starve the other.
                let woke = if std::mem::take(&mut self.read_ahead) {
                    Woke::ReadAhead
                } else if server_first {
                    tokio::select! {
                        biased;
                        event = control => Woke::Control(event),
                        read = self.upstream.stream.read_buf(&mut server_buf) => Woke::Server(read),
                        read = self.client.io.read_buf(&mut self.client.buf), if self.client_readable() => Woke::Client(read),
                    }
                } else {
                    tokio::select! {
                        biased;
                        event = control => Woke::Control(event),
                        read = self.client.io.read_buf(&mut self.client.buf), if self.client_readable() => Woke::Client(read),
                        read = self.upstream.stream.read_buf(&mut server_buf) => Woke::Server(read),
                    }
                };
                server_first = !server_first;
                match woke {
                    Woke::Control(event) => match event {
                        Control::Changed(alive) => {
                            if !alive {
                                return Err(gateway_stopping());
                            }
                            self.look_again(connection)?;
                            // Another grant may admit the session now (the one it
                            // began under revoked): the clock follows that one's end.
                            let end = self.grant_end();
                            if end != armed_for {
                                armed_for = end;
                                let left = until(end).max(Duration::from_secs(1));
                                expiry.as_mut().reset(tokio::time::Instant::now() + left);
                            }
                            // Watch for the next change.
                            break;
                        }
                        Control::Expired => {
                            if let Some(why) = self.still_admitted(connection) {
                                return Err(access_ended(&why));
                            }
                            armed_for = self.grant_end();
                            let left = until(armed_for).max(Duration::from_secs(1));
                            expiry.as_mut().reset(tokio::time::Instant::now() + left);
                        }
                        Control::ShuttingDown => {
                            return Err(gateway_stopping());
                        }
                        Control::RecordingStopped(e) => return Err(recording_lost(self.span, &e)),
                    },
                    Woke::Client(read) => {
                        let n = read.map_err(io_ended)?;
                        if n == 0 {
                            return Ok(());
                        }
                        self.bytes_in += n as u64;
                        self.record_read(n)?;
                        if self
                            .process_client(connection, shutdown, &mut server_buf, &mut to_server, &mut to_client)
                            .await?
                        {
                            return Ok(());
                        }
                    }
                    Woke::Server(read) => {
                        let n = read.map_err(target_lost)?;
                        if n == 0 {
                            return Err(Ended::fatal(
                                sqlstate::ADMIN_SHUTDOWN,
                                format!("{} closed the connection", connection.name),
                            ));
                        }
                        if self
                            .server_bytes(connection, shutdown, &mut server_buf, &mut to_server, &mut to_client)
                            .await?
                        {
                            return Ok(());
                        }
                    }
                    Woke::ReadAhead => {
                        if self
                            .server_bytes(connection, shutdown, &mut server_buf, &mut to_server, &mut to_client)
                            .await?
                        {
                            return Ok(());
                        }
                    }
                }
                if self.client.buf.capacity() < READ_CHUNK {
                    self.client.buf.reserve(READ_CHUNK);
                }
                if server_buf.capacity() < READ_CHUNK {
                    server_buf.reserve(READ_CHUNK);
                } else if server_buf.is_empty() && server_buf.capacity() > KEPT_BUFFER {
                    // Grown for a large message or by reading ahead: not kept
                    // for the rest of the session.
                    server_buf = BytesMut::with_capacity(READ_CHUNK);
                }
            }
        }
    }

    /// Handles what the target sent, then the client's messages that waited
    /// for it (`resumed`). Returns true when the client terminated.
    async fn server_bytes(
        &mut self,
        connection: &ConnectionSpec,
        shutdown: &CancellationToken,
        server_buf: &mut BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<bool, Ended> {
        self.forward_server(server_buf, to_client).await?;
        self.flush(server_buf, to_server, to_client).await?;
        if std::mem::take(&mut self.resumed) {
            return self.process_client(connection, shutdown, server_buf, to_server, to_client).await;
        }
        Ok(false)
    }

    /// Whether to read the client now. While a probe is out (or a Bind or
    /// an Execute waits for answers) its messages wait, but reading goes on
    /// up to a bound, so that a client that went away ends the session then
    /// and not when the wait ends.
    fn client_readable(&self) -> bool {
        (self.probe.is_none() && !self.awaiting_answers && self.describing.is_none())
            || self.client.buf.len() < HELD_BUFFER_LIMIT
    }

    /// The end of the grant that admits the session now (of the one that
    /// ends last, if several do; not necessarily the one it began under,
    /// which may have been revoked since); 0 when none does.
    fn grant_end(&self) -> i64 {
        let now = unix_now();
        self.gw.projection.read(|t| {
            t.get(&self.context.tenant)
                .and_then(|s| s.grant_for(&self.context.principal, &self.connection.id, &self.context.role, now))
                .map_or(0, |g| g.expires_at_unix)
        })
    }

    /// After a change of the projection: ends the session if no grant admits
    /// it any more, or if rules came to cover it that it did not start under
    /// (or came back after a time without them); otherwise follows what the
    /// rules now say.
    fn look_again(&mut self, connection: &ConnectionSpec) -> Result<(), Ended> {
        if let Some(why) = self.still_admitted(connection) {
            return Err(access_ended(&why));
        }
        let masks = self.gw.hook.masks(self.context);
        if self.masking.is_some() && !masks {
            // Statements prepared now get masks with no rule in them.
            self.masking_lapsed = true;
        }
        if self.masking_lapsed && masks {
            return Err(Ended::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "masking rules cover this connection again after a time without them; \
                 reconnect to continue under them",
            ));
        }
        if self.masking.is_none() && masks {
            return Err(Ended::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "masking rules now cover this connection; reconnect to continue under them",
            ));
        }
        let inspecting = self.gw.hook.inspects(self.context) || self.masking.is_some();
        if inspecting && !self.inspecting {
            // Until now the session could run any SQL unchecked: what it
            // prepared, bound or declared (a DO block's dynamic SQL may have
            // replaced statements unseen) cannot be judged by its text.
            return Err(Ended::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "command rules now cover this connection; reconnect to continue under them",
            ));
        }
        self.inspecting = inspecting;
        Ok(())
    }

    /// Ends a masked session at a message of `len` bytes from the target,
    /// longer than it holds to mask one.
    fn too_long_to_mask(&self, len: usize) -> Ended {
        let most = self.gw.options.masked_message_max;
        tracing::warn!(parent: self.span, len, most, "a message of the target's is too long to mask");
        Ended::fatal(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "the target sent a message of {len} bytes, more than the {most} bytes a masked session holds to \
                 mask one (worker.masked_message_max_bytes)"
            ),
        )
    }

    /// What a wait looks at: the grant, the gateway's stop.
    fn watch(&self) -> Watch<'_> {
        Watch { gw: self.gw, context: self.context, connection: self.connection, shutdown: &self.shutdown }
    }

    /// `None` while the projection still admits this session; otherwise why not.
    fn still_admitted(&self, connection: &ConnectionSpec) -> Option<String> {
        denial(self.gw, self.context, connection)
    }

    /// Writes `bytes` to the client (see [`write_watched`]). Once it is done,
    /// what the client has ends where the target's bytes were taken to; a
    /// write cut short (the grant ended, the gateway stopping) may have left
    /// it part of a message (`mid_message`).
    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        let watch = Watch { gw: self.gw, context: self.context, connection: self.connection, shutdown: &self.shutdown };
        match write_watched(&mut self.client.io, bytes, None, watch).await {
            Ok(written) => {
                written.map_err(io_ended)?;
                self.mid_message = self.passing > 0;
                Ok(())
            }
            Err(Cut { ended, written }) => {
                // Cut inside what was written, which may be inside a message;
                // or all of it taken (a TLS stream's flush cut), which ends
                // inside one only while a long row is on its way.
                self.mid_message |= written > 0 && (written < bytes.len() || self.passing > 0);
                Err(ended)
            }
        }
    }

    /// Handles the client's complete messages, holding statements for review
    /// where the hook says so. Returns true when the client terminated.
    async fn process_client(
        &mut self,
        connection: &ConnectionSpec,
        shutdown: &CancellationToken,
        server_buf: &mut BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<bool, Ended> {
        loop {
            if self.awaiting_answers && self.ready_seen >= self.ready_owed {
                // Answered while a probe was out (see `ready_for_query`).
                self.awaiting_answers = false;
            }
            if self.probe.is_some() || self.awaiting_answers {
                // Handled once the probe or the Bind's batches are answered (`resumed`).
                return Ok(false);
            }
            if self.describing.is_some() {
                let Some(described) = self.masking.as_mut().and_then(|r| r.described.take()) else {
                    // Handled once the portal is described (`resumed`).
                    return Ok(false);
                };
                if let Some(held) = self.describing.take() {
                    self.release_described(held, described, to_server)?;
                }
            }
            if let Some((held, outcome)) = self.decided.take() {
                self.release(held, outcome, to_server)?;
            }
            let progress = self.client_frames(to_server)?;
            self.flush(server_buf, to_server, to_client).await?;
            match progress {
                Progress::Done => return Ok(false),
                Progress::Terminated => return Ok(true),
                Progress::AwaitAnswers => {
                    // The answers may have come while the flush wrote (it
                    // passes on what it reads meanwhile): then nothing would
                    // wake the Bind, and it goes now.
                    if self.ready_seen < self.ready_owed && self.bind_awaits_answers() {
                        self.awaiting_answers = true;
                        return Ok(false);
                    }
                }
                Progress::Describe => {
                    // Likewise, the description may have come while the flush wrote.
                    if self.masking.as_ref().is_none_or(|r| r.described.is_none()) {
                        return Ok(false);
                    }
                }
                Progress::Hold => {
                    let Some(held) = self.held.take() else { return Ok(false) };
                    self.review_note = None;
                    let outcome = self.await_review(&held, connection, shutdown, server_buf, to_client).await?;
                    let (review_id, approver) = self.review_note.take().unwrap_or_default();
                    let (verdict, reason) = match &outcome {
                        Ok(()) => (recording::Verdict::Allow, "approved".to_owned()),
                        Err(report) => (recording::Verdict::Deny, report.message.clone()),
                    };
                    self.record_decision(recording::Decision {
                        statement: held.shown.clone(),
                        verdict: verdict as i32,
                        rule: held.rule.clone(),
                        reason,
                        review_id,
                        approver,
                    })?;
                    self.decided = Some((held, outcome));
                }
            }
        }
    }

    /// Carries out the review of a held statement: forwards it, or refuses
    /// it. Not while a probe is outstanding (the loop in `process_client`
    /// waits): the count it goes by is being put right. When the probe found
    /// the server skipping up to the client's next Sync, it is skipped too.
    fn release(&mut self, held: Held, outcome: Result<(), Report>, to_server: &mut BytesMut) -> Result<(), Ended> {
        if self.discarding {
            return Ok(());
        }
        // The server may have begun reading copy data meanwhile: the statement,
        // or the query a refusal sends in its place, would end that copy.
        let tag = held.raw.first().copied().unwrap_or_default();
        if !self.copy.admits(tag) {
            return Err(not_copy_data());
        }
        match outcome {
            Ok(()) => self.forward_allowed(&held.message, &held.raw, held.is_query, to_server)?,
            Err(report) => self.refuse(held.is_query, report, to_server),
        }
        Ok(())
    }

    /// Forwards a message the hook allowed or a review approved, and notes
    /// what the server now owes and holds. `owes_ready`: a simple query or
    /// function call, answered with a ReadyForQuery of its own.
    fn forward_allowed(
        &mut self,
        message: &FrontendMessage,
        raw: &[u8],
        owes_ready: bool,
        to_server: &mut BytesMut,
    ) -> Result<(), Ended> {
        let tag = raw.first().copied().unwrap_or_default();
        self.copy.forwarded(tag, self.ready_owed + 1);
        self.expect_responses(message, to_server);
        to_server.extend_from_slice(raw);
        // (A Flush opens nothing: a simple query may follow a lone one.)
        if matches!(tag, b'P' | b'B' | b'E' | b'D' | b'C') {
            self.batch_open = true;
        }
        self.track_prepared(message);
        self.bounded_in_flight()?;
        if owes_ready {
            self.ready_owed += 1;
        }
        Ok(())
    }

    /// In a masked session, sends the Describe an Execute or a Describe of
    /// `portal` must wait for (see `Responses::must_describe_first`), with a
    /// Flush so that the server answers it at once. `None` when the message
    /// may go now (also when the server is skipping to the next Sync, and
    /// will skip it); otherwise the flag to set if the portal is described
    /// readable (see `Undescribed`).
    fn describe_first(
        &mut self,
        portal: &bytes::Bytes,
        to_server: &mut BytesMut,
    ) -> Option<Option<masking::ReadableFlag>> {
        let batch = self.ready_owed + 1;
        let (gw, context) = (self.gw, self.context);
        let r = self.masking.as_mut()?;
        if r.skipping {
            return None;
        }
        let waits = r.must_describe_first(portal, batch, || mask_for(gw, context, None))?;
        encode::describe_portal(to_server, portal);
        encode::flush(to_server);
        r.queue.push_back(Expect::DescribePortal { hidden: true, mask: waits.mask, text: waits.text });
        // A message the server would not read as copy data, as the client's own Describe.
        self.copy.forwarded(b'D', batch);
        self.batch_open = true;
        Some(waits.readable)
    }

    /// The Execute or Describe held for its portal's description goes on, or
    /// is refused in its place as a denied statement is: its batch fails on
    /// the server, and the client's messages up to its Sync are skipped. A
    /// Describe described readable was answered already: the client read the
    /// answer to the relay's own (see `masked_response`). Not when the relay
    /// skips to the next Sync meanwhile (a probe found the server skipping),
    /// nor into a copy the server began reading meanwhile.
    fn release_described(
        &mut self,
        held: Undescribed,
        described: Described,
        to_server: &mut BytesMut,
    ) -> Result<(), Ended> {
        if self.discarding {
            return Ok(());
        }
        let Undescribed { raw, message, readable } = held;
        let (portal, executes) = match &message {
            FrontendMessage::Execute { portal, .. } => (portal, true),
            FrontendMessage::Describe { name, .. } => (name, false),
            _ => return Err(lost_track()),
        };
        if !self.copy.admits(if executes { b'E' } else { b'D' }) {
            return Err(not_copy_data());
        }
        match described {
            Described::Readable => {
                if let Some(flag) = readable {
                    // Its later Executes and Describes go at once.
                    let _ = flag.set(());
                }
                if !executes {
                    return Ok(());
                }
                if let Some(r) = &mut self.masking {
                    r.pre_described = true;
                }
                self.forward_allowed(&message, &raw, false, to_server)
            }
            Described::Skipped => {
                if let Some(r) = &mut self.masking {
                    r.pre_described = executes;
                }
                self.forward_allowed(&message, &raw, false, to_server)
            }
            Described::Unreadable(why) => {
                let report = Report::error(sqlstate::INSUFFICIENT_PRIVILEGE, format!("permission denied: {why}"))
                    .with_detail("rule: builtin:masked-binary");
                let batch = self.ready_owed + 1;
                let statement = self.masking.as_ref().and_then(|r| r.bound_text(portal, batch)).cloned();
                self.record_masked_binary(statement, &report)?;
                self.refuse(false, report, to_server);
                Ok(())
            }
        }
    }

    /// Whether the client's next message is a Bind that should wait for the
    /// answers to the batches forwarded before it: its statement's name was
    /// changed by a Parse or Close of an earlier batch (pipelined past that
    /// batch's Sync) that the server has not answered, so the text it would
    /// run is not known yet. Once those batches are answered it is (see
    /// `statements`). Not while a COPY may be reading the client's messages:
    /// the copy data the server waits for would be behind the Bind, and the
    /// Bind is refused as out of place there anyway.
    fn bind_awaits_answers(&self) -> bool {
        let buf = &self.client.buf;
        if buf.first() != Some(&b'B') || self.discarding || !self.copy.admits(b'B') {
            return false;
        }
        let Ok(Some((_, len))) = peek_frame(buf, frontend_max_len(b'B', self.gw.options.max_message_len)) else {
            return false;
        };
        let Some((_, statement)) = frontend::bind_names(buf.get(HEADER_LEN..len).unwrap_or_default()) else {
            return false;
        };
        self.statements.awaits_answer(statement, self.ready_owed + 1)
    }

    /// Handles every complete client message in the buffer, up to a held one.
    fn client_frames(&mut self, to_server: &mut BytesMut) -> Result<Progress, Ended> {
        loop {
            if !self.inspecting {
                match self.relay_uninspected(to_server)? {
                    Uninspected::Relayed => continue,
                    Uninspected::Terminated => return Ok(Progress::Terminated),
                    Uninspected::Incomplete => return Ok(Progress::Done),
                    Uninspected::Decode => {}
                }
            }
            if self.inspecting && self.ready_seen < self.ready_owed && self.bind_awaits_answers() {
                return Ok(Progress::AwaitAnswers);
            }
            let frame = match parse_frontend_frame(&mut self.client.buf, self.gw.options.max_message_len) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(Progress::Done),
                Err(e) => return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
            };
            let message =
                decode_frontend(&frame).map_err(|e| Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
            let statement = match &message {
                FrontendMessage::Query { sql } => Some(Statement::Query { sql }),
                FrontendMessage::Parse { name, sql, .. } => Some(Statement::Parse { name, sql }),
                FrontendMessage::Bind { portal, statement, params, .. } => {
                    let sql = self.statement_text(statement);
                    Some(Statement::Bind { portal, statement, params, sql })
                }
                FrontendMessage::Execute { portal, max_rows } => {
                    Some(Statement::Execute { portal, max_rows: *max_rows })
                }
                FrontendMessage::FunctionCall { .. } => Some(Statement::FunctionCall),
                FrontendMessage::Unknown(tag) => {
                    return Err(Ended::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid frontend message type {}", super::protocol::Tag(*tag)),
                    ));
                }
                FrontendMessage::Password(_) => {
                    return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "unexpected password message"));
                }
                _ => None,
            };
            // A simple query and a fast-path call each get a ReadyForQuery of their own.
            let owes_ready = matches!(message, FrontendMessage::Query { .. } | FrontendMessage::FunctionCall { .. });
            let is_sync = matches!(message, FrontendMessage::Sync);
            if owes_ready && self.batch_open && !self.discarding {
                return Err(mid_batch());
            }
            if self.discarding {
                if is_sync {
                    self.discarding = false;
                    to_server.extend_from_slice(frame.raw());
                    self.sync_forwarded();
                } else if matches!(frame.tag(), b'd' | b'c' | b'f') {
                    // For a copy the server may be reading; it ignores them otherwise.
                    self.copy.forwarded(frame.tag(), self.ready_owed + 1);
                    to_server.extend_from_slice(frame.raw());
                }
                continue;
            }
            if !self.copy.admits(frame.tag()) {
                return Err(not_copy_data());
            }
            let verdict = match statement {
                // The hook inspects nothing of this session (as for the messages
                // `relay_uninspected` takes): a Parse is only remembered.
                Some(_) if !self.inspecting => Verdict::Allow,
                Some(_) if !self.lexing_safe => Verdict::Deny {
                    rule: "builtin:session-lexing".into(),
                    message: "permission denied: this session's client_encoding or standard_conforming_strings \
                              makes the server read statements differently from the gateway"
                        .into(),
                },
                Some(s) => self.gw.hook.check(self.context, s),
                None => Verdict::Allow,
            };
            if self.tap.is_some() && statement.is_some() {
                self.record_verdict(&message, &verdict)?;
            }
            match verdict {
                Verdict::Allow => {
                    if is_sync {
                        to_server.extend_from_slice(frame.raw());
                        self.sync_forwarded();
                        continue;
                    }
                    if let FrontendMessage::Execute { portal, .. }
                    | FrontendMessage::Describe { kind: ObjectKind::Portal, name: portal } = &message
                        && let Some(readable) = self.describe_first(portal, to_server)
                    {
                        let raw = bytes::Bytes::copy_from_slice(frame.raw());
                        self.describing = Some(Undescribed { raw, message, readable });
                        return Ok(Progress::Describe);
                    }
                    self.forward_allowed(&message, frame.raw(), owes_ready, to_server)?;
                    if matches!(message, FrontendMessage::Terminate) {
                        return Ok(Progress::Terminated);
                    }
                }
                Verdict::Deny { rule, message: text } => {
                    let report =
                        Report::error(sqlstate::INSUFFICIENT_PRIVILEGE, text).with_detail(format!("rule: {rule}"));
                    self.refuse(owes_ready, report, to_server);
                }
                Verdict::Review { rule } => {
                    let shown = match &message {
                        FrontendMessage::Query { sql } => {
                            std::str::from_utf8(sql).ok().map(|s| shown_statement(s, &[]))
                        }
                        FrontendMessage::Bind { statement, params, .. } => self
                            .statement_text(statement)
                            .and_then(|sql| std::str::from_utf8(sql).ok())
                            .map(|s| shown_statement(s, params)),
                        _ => None,
                    };
                    let Some(shown) = shown else {
                        let report = Report::error(
                            sqlstate::INSUFFICIENT_PRIVILEGE,
                            format!("permission denied: rule {rule} holds this for review, which needs its UTF-8 text"),
                        );
                        if self.tap.is_some() {
                            self.record_decision(recording::Decision {
                                verdict: recording::Verdict::Deny as i32,
                                reason: report.message.clone(),
                                rule,
                                ..Default::default()
                            })?;
                        }
                        self.refuse(owes_ready, report, to_server);
                        continue;
                    };
                    let raw = bytes::Bytes::copy_from_slice(frame.raw());
                    self.held = Some(Held { raw, message, shown, is_query: owes_ready, rule });
                    return Ok(Progress::Hold);
                }
            }
        }
    }

    /// Records the hook's verdict on a statement: every refusal and hold, and
    /// what it allowed of the statements that carry text (a Query, a Parse, a
    /// Bind of a statement whose text is known).
    fn record_verdict(&mut self, message: &FrontendMessage, verdict: &Verdict) -> Result<(), Ended> {
        let sql = match message {
            FrontendMessage::Query { sql } | FrontendMessage::Parse { sql, .. } => Some(sql),
            FrontendMessage::Bind { statement, .. } => self.statement_text(statement),
            _ => None,
        };
        let (verdict, rule, reason) = match verdict {
            // Allows are worth recording where rules look at statements.
            Verdict::Allow if sql.is_none() || !self.inspecting => return Ok(()),
            Verdict::Allow => (recording::Verdict::Allow, String::new(), String::new()),
            Verdict::Deny { rule, message } => (recording::Verdict::Deny, rule.clone(), message.clone()),
            Verdict::Review { rule } => (recording::Verdict::Review, rule.clone(), "held for review".to_owned()),
        };
        let statement = sql.map(|s| decision_text(s)).unwrap_or_default();
        self.record_decision(recording::Decision {
            statement,
            verdict: verdict as i32,
            rule,
            reason,
            review_id: String::new(),
            approver: String::new(),
        })
    }

    /// Relays the client's next message as it came when the hook would not look
    /// at it: its bytes go from the read buffer to `to_server`, with no frame
    /// made of them and nothing decoded but the layout of a Parse. Nothing is
    /// remembered of what it prepares or binds: should command rules come to
    /// apply, the session ends (see `run`). [`Uninspected::Decode`] for the
    /// messages that need the full path anyway: a Close, and anything
    /// malformed or unexpected, which the decoder refuses with the right error.
    fn relay_uninspected(&mut self, to_server: &mut BytesMut) -> Result<Uninspected, Ended> {
        let Some(&tag) = self.client.buf.first() else { return Ok(Uninspected::Incomplete) };
        if !matches!(tag, b'Q' | b'P' | b'B' | b'E' | b'D' | b'S' | b'H' | b'X' | b'd' | b'c' | b'f' | b'F') {
            return Ok(Uninspected::Decode);
        }
        let len = match peek_frame(&self.client.buf, frontend_max_len(tag, self.gw.options.max_message_len)) {
            Ok(Some((_, len))) => len,
            Ok(None) => return Ok(Uninspected::Incomplete),
            Err(e) => return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())),
        };
        // A Parse laid out other than Postgres reads it takes the full path,
        // which refuses it.
        if tag == b'P' && frontend::parse_layout(self.client.buf.get(HEADER_LEN..len).unwrap_or_default()).is_none() {
            return Ok(Uninspected::Decode);
        }
        // After an error in a batch the server skips to its Sync, and so does
        // the relay; copy messages still go, for a copy the server may be
        // reading (it ignores them otherwise).
        let forwarded = !self.discarding || matches!(tag, b'S' | b'd' | b'c' | b'f');
        if forwarded && matches!(tag, b'Q' | b'F') && self.batch_open {
            return Err(mid_batch());
        }
        if forwarded && !self.copy.admits(tag) {
            return Err(not_copy_data());
        }
        if forwarded && matches!(tag, b'P' | b'B' | b'E' | b'D') {
            self.batch_open = true;
        }
        if forwarded {
            to_server.extend_from_slice(self.client.buf.get(..len).unwrap_or_default());
        }
        self.client.buf.advance(len);
        if tag == b'S' {
            self.discarding = false;
            self.sync_forwarded();
        } else if forwarded {
            self.copy.forwarded(tag, self.ready_owed + 1);
            if matches!(tag, b'Q' | b'F') {
                self.ready_owed += 1;
            }
        }
        Ok(if tag == b'X' { Uninspected::Terminated } else { Uninspected::Relayed })
    }

    /// Follows what the server holds under each statement's name (see
    /// `statements`), from the messages forwarded to it (never from refused
    /// or discarded ones). Where the gateway cannot know what the server
    /// holds, a Bind of that statement is refused where rules apply.
    fn track_prepared(&mut self, message: &FrontendMessage) {
        match message {
            FrontendMessage::Parse { name, sql, .. } => self.track_parse(name, sql),
            FrontendMessage::Close { kind: ObjectKind::Statement, name } => {
                let (key, batch) = (bytes::Bytes::copy_from_slice(name), self.ready_owed + 1);
                let change = self.statements.close(&key, batch);
                self.in_flight.push(b'3', key, batch, change.map(Tracked::Statement));
            }
            // Held for its place too, so that its CloseComplete is not taken for
            // a statement's.
            FrontendMessage::Close { kind: ObjectKind::Portal, name } => {
                if !self.closing_portals.is_empty() {
                    // A portal of the name made later (a cursor) runs something else.
                    self.closing_portals.remove(name);
                }
                let (key, batch) = (bytes::Bytes::copy_from_slice(name), self.ready_owed + 1);
                let change = self.masking.as_mut().and_then(|r| r.portals.close(&key, batch));
                self.in_flight.push(b'3', key, batch, change.map(Tracked::Portal));
            }
            FrontendMessage::Query { sql } => self.track_simple_query(sql),
            FrontendMessage::Bind { portal, statement, .. } => self.track_bind(portal, statement),
            FrontendMessage::Execute { portal, .. } => self.track_execute(portal),
            _ => {}
        }
    }

    /// A Parse forwarded: what the name holds is known again once the
    /// server answers it, and meanwhile for the rest of its batch.
    /// Preparing runs nothing: a text that deallocates does so when bound
    /// and executed (`track_bind`).
    fn track_parse(&mut self, name: &[u8], sql: &[u8]) {
        // Copied: a slice would keep the whole buffer it came from alive, and
        // every later read would then need a new one.
        let (key, text) = (bytes::Bytes::copy_from_slice(name), bytes::Bytes::copy_from_slice(sql));
        let mask = self.masking.as_ref().map(|_| mask_for(self.gw, self.context, Some(&text)));
        let batch = self.ready_owed + 1;
        let change = self.statements.hold(&key, Prepared { text, mask, unreadable: Arc::default() }, batch);
        self.in_flight.push(b'1', key, batch, change.map(Tracked::Statement));
    }

    /// A server message that bears on a COPY FROM STDIN: a CopyInResponse,
    /// an end of a statement, an error.
    fn copy_answer(&mut self, tag: u8) -> Result<(), Ended> {
        let end = match tag {
            b'G' => {
                self.copy
                    .began(self.ready_seen + 1)
                    .map_err(|why| Ended::fatal(sqlstate::FEATURE_NOT_SUPPORTED, why))?;
                if std::mem::take(&mut self.awaiting_answers) {
                    // The copy reads the client's messages: a Bind waiting among
                    // them is out of place (`bind_awaits_answers`).
                    self.resumed = true;
                }
                None
            }
            b'C' => {
                let end = self.copy.done();
                self.copy.answered(tag);
                end
            }
            b'E' => self.copy.failed().transpose().map_err(|why| Ended::fatal(sqlstate::FEATURE_NOT_SUPPORTED, why))?,
            _ => {
                self.copy.answered(tag);
                None
            }
        };
        match end {
            Some(CopyEnd::Settled { from, ignored, extended }) => self.take_back_syncs(from, ignored, extended),
            Some(CopyEnd::Unsure { from, window, extended, synced_after }) => {
                self.probe = Some(Probe::new(from, window, extended, synced_after, self.ready_owed));
            }
            None => {}
        }
        Ok(())
    }

    /// The `ignored` Syncs numbered from `from` were read during a copy: no
    /// ReadyForQuery answers them, and the batches after them move up. When
    /// they were all the Syncs sent after an Execute that started the copy,
    /// its batch is open again (`reopen`).
    fn take_back_syncs(&mut self, from: u64, ignored: u64, reopen: bool) {
        if ignored == 0 {
            return;
        }
        self.ready_owed = self.ready_owed.saturating_sub(ignored);
        if reopen && self.ready_owed < from {
            self.batch_open = true;
        }
        self.in_flight.renumber(|batch| copy_watch::renumber(batch, from, ignored));
        self.statements.batches_renumbered();
        if let Some(r) = &mut self.masking {
            r.portals.batches_renumbered();
        }
        for (ordinal, _) in &mut self.inject {
            *ordinal = copy_watch::renumber(*ordinal, from, ignored);
        }
        if let Some(r) = &mut self.masking {
            // Nothing the server still owes an answer lies among them: they
            // are the first Syncs in the queue.
            let mut left = ignored;
            r.queue.retain(|e| {
                let drop = left > 0 && matches!(e, Expect::Sync);
                left -= u64::from(drop);
                !drop
            });
        }
    }

    /// Sends the probe just set up, once: after it the server is not
    /// discarding, whatever batch was open before.
    async fn send_probe(&mut self, server_buf: &mut BytesMut, to_client: &mut BytesMut) -> Result<(), Ended> {
        let Some(probe) = self.probe.as_mut().filter(|p| !p.sent) else { return Ok(()) };
        probe.sent = true;
        let mut messages = BytesMut::from(&probe.messages()[..]);
        self.batch_open = false;
        self.write_target(&mut messages, server_buf, to_client).await
    }

    /// The probe was answered: the count is known again. The messages held
    /// back meanwhile are put back in front of `server_buf`, to be handled as
    /// they would have been, and the client's messages read meanwhile are
    /// handled next.
    fn probe_answered(&mut self, server_buf: &mut BytesMut) -> Result<(), Ended> {
        let Some(probe) = self.probe.take() else { return Ok(()) };
        let (from, window, extended, synced_after) = (probe.from, probe.window, probe.extended, probe.synced_after);
        let Some((held, ignored)) = probe.outcome(self.ready_seen) else {
            tracing::error!(parent: self.span, seen = self.ready_seen, "the answers to a probe do not fit what was sent");
            return Err(lost_track());
        };
        self.take_back_syncs(from, ignored, false);
        if extended && ignored == window {
            // No Sync in the copy ended the discarding after the error: what
            // the client sent after the copy, up to its next Sync, was skipped.
            if let Some(r) = &mut self.masking {
                while r.queue.front().is_some_and(|e| !matches!(e, Expect::Sync)) {
                    r.queue.pop_front();
                }
                if self.describing.is_some() && r.queue.is_empty() {
                    // The held message's Describe was skipped too, and so is the message.
                    r.described = Some(Described::Skipped);
                }
            }
            // The probe's first Sync ended it early: up to the client's next
            // Sync, the relay skips in its place.
            if !synced_after {
                self.discarding = true;
            }
        }
        if !held.is_empty() {
            let mut replay = BytesMut::with_capacity(held.len() + server_buf.len());
            replay.extend_from_slice(&held);
            replay.extend_from_slice(server_buf);
            *server_buf = replay;
        }
        self.resumed = true;
        Ok(())
    }

    /// The text a Bind of statement `name` sent now would run; none when the
    /// gateway does not know it.
    fn statement_text(&self, name: &[u8]) -> Option<&bytes::Bytes> {
        self.statements.get(name, self.ready_owed + 1).map(|p| &p.text)
    }

    /// Ends a session whose client keeps sending Parse, Bind or Close
    /// messages the server does not answer (it skips them after an error, up
    /// to a Sync that does not come): what the gateway remembers of them is
    /// bounded.
    fn bounded_in_flight(&self) -> Result<(), Ended> {
        if self.in_flight.len() > MAX_IN_FLIGHT {
            return Err(Ended::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("more than {MAX_IN_FLIGHT} Parse, Bind and Close messages await an answer; send a Sync"),
            ));
        }
        let cap = MAX_IN_FLIGHT_TEXT.max(self.gw.options.max_message_len);
        if self.in_flight.bytes() > cap {
            return Err(Ended::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "the statements and names awaiting an answer hold more than {} MiB; send a Sync and read \
                     the answers before sending more",
                    cap >> 20
                ),
            ));
        }
        Ok(())
    }

    /// An ErrorResponse: the server skips the rest of the batch it is in, so
    /// a Parse, Bind or Close of that batch not yet confirmed was refused or
    /// skipped, and changed nothing on the server. Those of later batches are
    /// still owed an answer, in order. The batch is told by the count of
    /// ReadyForQuery, which is exact: nothing the server would skip without
    /// one is relayed (`mid_batch`), and the Syncs a COPY ignores are taken
    /// back (`copy_watch`).
    fn server_error(&mut self) {
        self.settle_batches(self.ready_seen + 1, false);
    }

    /// The batches up to `last` are over, by their ReadyForQuery (`ready`)
    /// or an error: their messages still in flight got no answer, and changed
    /// nothing; a `DEALLOCATE name` among them closed its name, if `ready`.
    fn settle_batches(&mut self, last: u64, ready: bool) {
        let (statements, masking) = (&mut self.statements, &mut self.masking);
        self.in_flight.settle(last, ready, |name, change, took_effect| match change {
            Tracked::Statement(change) if took_effect => statements.confirmed(&name, change),
            Tracked::Statement(_) => statements.unanswered(&name),
            // No statement changes a portal at its batch's end: only its
            // messages do, and unanswered they changed nothing.
            Tracked::Portal(_) => {
                if let Some(r) = masking.as_mut() {
                    r.portals.unanswered(&name);
                }
            }
        });
    }

    /// A message the server answered: what it did to a statement or portal stands.
    fn confirmed(&mut self, tag: u8) {
        match self.in_flight.confirm(tag) {
            Some((name, Tracked::Statement(change))) => self.statements.confirmed(&name, change),
            Some((name, Tracked::Portal(change))) => {
                if let Some(r) = &mut self.masking {
                    r.portals.confirmed(&name, change);
                }
            }
            None => {}
        }
    }

    /// A simple query destroys the unnamed statement. `DEALLOCATE` and
    /// `DISCARD` may remove prepared statements, or fail and keep them, and
    /// `PREPARE` may take a name a Parse left free: the gateway cannot tell,
    /// so a query that may run one forgets every statement. Except a query
    /// that is only `DEALLOCATE name`, as drivers evict a statement from
    /// their cache with: it closes that name (`close_by_sql`), and leaves the
    /// other names known.
    fn track_simple_query(&mut self, sql: &[u8]) {
        if self.statements.is_empty() {
            // Most sessions prepare nothing: then there is nothing to forget,
            // and no query pays for the scan.
            return;
        }
        self.statements.query();
        if !keywords::mentions_deallocation(sql) {
            return;
        }
        match keywords::deallocated_name(sql) {
            Some(name) => self.close_by_sql(bytes::Bytes::from(name)),
            None => self.statements.forget_all(),
        }
    }

    /// A `DEALLOCATE name` forwarded (a query, or the Execute of a portal
    /// bound to one): the name holds nothing once its batch ends without an
    /// error. An error anywhere in the batch counts as its failing, which
    /// it may not have: then the relay takes the name to hold its old text
    /// while the server holds nothing, and the server refuses a Bind of it.
    fn close_by_sql(&mut self, name: bytes::Bytes) {
        let batch = self.ready_owed + 1;
        match self.statements.close(&name, batch) {
            Some(change) => self.in_flight.push(QUERY_DONE, name, batch, Some(Tracked::Statement(change))),
            // A name the server may cut short or convert: not followed.
            None => self.statements.forget_all(),
        }
    }

    /// A Bind: executed, its statement runs as a query would, and one whose
    /// text may deallocate or discard prepared statements leaves their state
    /// unknown (`track_simple_query`); so does one whose text the gateway
    /// does not know, which may be anything.
    /// The same goes for executing its portal, which may come later; a Bind
    /// of the name again does not take that away (it may fail, and the
    /// portal stay), only the end of the transaction does. A statement that
    /// is exactly `DEALLOCATE name` only closes that name, each time its
    /// portal is executed; a Bind of the portal again ends that (should the
    /// Bind fail and the portal stay, the relay takes the name to hold its
    /// text while the server holds nothing, and the server refuses a Bind).
    fn track_bind(&mut self, portal: &[u8], statement: &[u8]) {
        if !self.closing_portals.is_empty() {
            self.closing_portals.remove(portal);
        }
        // One scan of the text, as for a query (`track_simple_query`); the
        // exact reading only of a text that mentions deallocation.
        let (closes, may_deallocate) = match self.statement_text(statement) {
            None => (None, true),
            Some(sql) if !keywords::mentions_deallocation(sql) => (None, false),
            Some(sql) => (keywords::deallocated_name(sql), true),
        };
        // (An Execute of a portal not followed forgets every name anyway. Only
        // followed names are kept, each under 63 bytes: a session cannot make
        // these maps hold more than their count of short names.)
        if let Some(name) = closes
            && followed(portal)
            && followed(name.as_ref())
            && self.closing_portals.len() < MAX_PREPARED
        {
            self.closing_portals.insert(bytes::Bytes::copy_from_slice(portal), bytes::Bytes::from(name));
            return;
        }
        if may_deallocate {
            self.statements.forget_all();
            if !followed(portal) {
                // Its Execute forgets every name, as any such portal's does.
            } else if self.deallocating_portals.len() < MAX_PREPARED {
                self.deallocating_portals.insert(bytes::Bytes::copy_from_slice(portal));
            } else {
                self.every_portal_deallocates = true;
            }
        }
    }

    /// An Execute of a portal bound to a statement that may deallocate, or of
    /// one whose name the server may take for another's.
    fn track_execute(&mut self, portal: &[u8]) {
        if self.every_portal_deallocates || self.deallocating_portals.contains(portal) || !followed(portal) {
            self.statements.forget_all();
        } else if let Some(name) = self.closing_portals.get(portal) {
            self.close_by_sql(name.clone());
        }
    }

    /// Notes the responses a message about to be forwarded owes, with the
    /// mask its rows are read with. Before an Execute, asks the server to
    /// describe the portal: its answer, kept from the client, describes the
    /// rows that follow.
    fn expect_responses(&mut self, message: &FrontendMessage, to_server: &mut BytesMut) {
        if self.masking.is_none() {
            return;
        }
        let batch = self.ready_owed + 1;
        // What the gateway knows of the statement a Bind or Describe names.
        let known = match message {
            FrontendMessage::Bind { statement: name, .. }
            | FrontendMessage::Describe { kind: ObjectKind::Statement, name } => self.statements.get(name, batch),
            _ => None,
        };
        let statement_mask = known.and_then(|p| p.mask.clone());
        let unreadable = known.map(|p| p.unreadable.clone());
        let text = known.map(|p| p.text.clone());
        // A query's text is kept only to record a refusal of its result.
        let recorded = self.tap.is_some();
        let Some(r) = self.masking.as_mut() else { return };
        let (gw, context) = (self.gw, self.context);
        let mask_of = |sql: Option<&bytes::Bytes>| mask_for(gw, context, sql);
        let owed_before = r.queue.len();
        match message {
            FrontendMessage::Query { sql } => {
                r.query(mask_of(Some(sql)), if recorded { sql.clone() } else { bytes::Bytes::new() });
            }
            // Its mask is made with the rest of what the relay keeps of it (`track_parse`).
            FrontendMessage::Parse { .. } => r.parsed(),
            FrontendMessage::Bind { portal, result_formats, .. } => {
                let bound = BoundPortal {
                    // A statement the gateway does not know is read as unreadable.
                    mask: statement_mask.unwrap_or_else(|| mask_of(None)),
                    binary: result_formats.iter().any(|f| *f != 0),
                    described: unreadable,
                    text,
                    readable: Arc::default(),
                };
                let change = r.bound(portal, bound, batch);
                self.in_flight.push(b'2', bytes::Bytes::copy_from_slice(portal), batch, change);
            }
            FrontendMessage::Describe { kind: ObjectKind::Statement, .. } => {
                r.queue.push_back(Expect::DescribeStatement { described: unreadable });
            }
            FrontendMessage::Describe { kind: ObjectKind::Portal, name } => {
                let (mask, text) = r.portal(name, batch, || mask_of(None));
                r.queue.push_back(Expect::DescribePortal { hidden: false, mask, text });
            }
            FrontendMessage::Execute { portal, .. } => {
                let (mask, text) = r.portal(portal, batch, || mask_of(None));
                // Described already when it waited for that (`describe_first`).
                if !std::mem::take(&mut r.pre_described) {
                    encode::describe_portal(to_server, portal);
                    r.queue.push_back(Expect::DescribePortal { hidden: true, mask: mask.clone(), text: text.clone() });
                }
                r.queue.push_back(Expect::Execute(mask, text));
            }
            FrontendMessage::Close { .. } => r.closed(),
            FrontendMessage::FunctionCall { .. } => r.queue.push_back(Expect::FunctionCall),
            _ => {}
        }
        if r.skipping {
            // The server failed this batch and skips to its Sync: nothing it
            // answers. (A portal it bound, `in_flight` settles by batch.)
            r.queue.truncate(owed_before);
        }
    }

    /// Follows a Sync just forwarded: it owes a ReadyForQuery, before which
    /// any refusal of its batch goes.
    fn sync_forwarded(&mut self) {
        self.batch_open = false;
        self.copy.forwarded(b'S', self.ready_owed + 1);
        self.statements.batch_closed();
        if let Some(r) = &mut self.masking {
            r.queue.push_back(Expect::Sync);
            r.skipping = false;
            r.portals.batch_closed();
        }
        self.ready_owed += 1;
        if let Some(refusal) = self.refusal.take() {
            self.inject.push((self.ready_owed, refusal));
        }
    }

    /// Refuses a statement the way Postgres refuses one: the error arrives in
    /// its place among the responses, and the server fails it as any failed
    /// statement, rolling back the implicit transaction or aborting a
    /// transaction block. A simple query is replaced by one that raises the
    /// refusal on the server. An extended-protocol message is replaced by a
    /// Describe the server fails on (`Refusal`), whose error is then replaced by
    /// the refusal, and the rest of its batch is dropped. Should that error
    /// not come (the server was already skipping the batch), the refusal goes
    /// just before the ReadyForQuery that answers the batch's Sync.
    fn refuse(&mut self, is_query: bool, report: Report, to_server: &mut BytesMut) {
        if is_query {
            if let Some(r) = &mut self.masking {
                r.queue.push_back(Expect::Query(Arc::new(ResultMask::unread(Vec::new())), bytes::Bytes::new()));
            }
            encode::refusal_query(to_server, &report);
            self.copy.forwarded(b'Q', self.ready_owed + 1);
            self.ready_owed += 1;
        } else {
            let name = format!("airlock_refused_{:032x}", rand::random::<u128>());
            encode::describe_portal(to_server, name.as_bytes());
            self.copy.forwarded(b'D', self.ready_owed + 1);
            self.batch_open = true;
            self.discarding = true;
            self.refusal = Some(Refusal { report, name });
        }
    }

    /// A server error: when it is the one on the Describe sent in a refused
    /// message's place, the refusal to show instead.
    fn refusal_answered(&mut self, raw: &[u8]) -> Option<Report> {
        if self.refusal.is_none() && self.inject.is_empty() {
            return None;
        }
        let names = |name: &str| copy_watch::contains(raw, name.as_bytes());
        if self.refusal.as_ref().is_some_and(|r| names(&r.name)) {
            return self.refusal.take().map(|r| r.report);
        }
        let at = self.inject.iter().position(|(_, r)| names(&r.name))?;
        Some(self.inject.remove(at).1.report)
    }

    /// Opens a review of a held statement, tells the client where it can be
    /// approved, and waits for the outcome to reach the projection. Responses
    /// to earlier statements keep flowing meanwhile. `Ok(Err(report))`: refuse
    /// the statement with that error.
    async fn await_review(
        &mut self,
        held: &Held,
        connection: &ConnectionSpec,
        shutdown: &CancellationToken,
        server_buf: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<Result<(), Report>, Ended> {
        let refused = |text: String| {
            Report::error(sqlstate::INSUFFICIENT_PRIVILEGE, text).with_detail(format!("rule: {}", held.rule))
        };
        // Listening for the client's cancel from now on: one sent while the
        // review opens, or while the notice is written, is not missed.
        let cancel_held = self.cancel_held.clone();
        let cancelled = cancel_held.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        // The grant and the gateway's stop are watched from here on, as
        // while the review waits: a change the relay has not looked at yet
        // (the watch starts from the projection as it is now) is looked at
        // before anything is asked of the control plane.
        let mut changes = self.gw.projection.changes();
        self.watch().check()?;
        // Opened on the main runtime, apart from the session, and withdrawn
        // whatever way the session stops waiting for it (`AskedReview`).
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        {
            let gw = self.gw.clone();
            let ctx = self.context;
            let (tenant, session) = (ctx.tenant, ctx.session);
            let (grant, shown, rule) = (ctx.grant, held.shown.clone(), held.rule.clone());
            self.gw.spawn_behind(async move {
                let opening = gw.control_plane.hold_command(tenant, session, grant, shown, rule);
                let opening = tokio::time::timeout(OPENING_LIMIT, opening)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer from the control plane in {OPENING_LIMIT:?}")));
                // No session waits for it any more.
                if let Err(Ok(review)) = opened_tx.send(opening) {
                    withdraw_review(&gw, tenant, session, review.review_id);
                }
            });
        }
        let mut asked = AskedReview {
            gw: self.gw.clone(),
            tenant: self.context.tenant,
            session: self.context.session,
            opening: opened,
            answered: false,
            id: None,
        };
        // The client's cancel and the client itself are watched while the
        // review opens, as while it waits: a control plane slow to answer
        // must not keep a revoked session going, nor a client waiting on a
        // statement it cancelled.
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        let ends = timers::sleep(until(self.grant_end()));
        tokio::pin!(ends);
        let gives_up = timers::sleep(OPEN_REVIEW_TIMEOUT);
        tokio::pin!(gives_up);
        let review = loop {
            let room = self.client.buf.len() < HELD_BUFFER_LIMIT;
            tokio::select! {
                biased;
                () = &mut shutting_down => return Err(gateway_stopping()),
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(gateway_stopping());
                    }
                    self.watch().check()?;
                }
                () = &mut ends => {
                    self.watch().check()?;
                    ends.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                () = &mut cancelled => return Ok(Err(self.held_cancelled(&held.rule, None))),
                read = self.client.io.read_buf(&mut self.client.buf), if room => self.read_while_held(read)?,
                opened = &mut asked.opening => {
                    asked.answered = true;
                    let failure = match opened {
                        Ok(Ok(review)) => break review,
                        Ok(Err(e)) => format!("{e:#}"),
                        Err(_) => "its task ended without an answer (the gateway is stopping)".to_owned(),
                    };
                    tracing::warn!(parent: self.span, rule = %held.rule, "failed to open a review: {failure}");
                    return Ok(Err(refused(format!(
                        "permission denied: rule {} holds this statement for review, and the review could not be opened",
                        held.rule
                    ))));
                }
                () = &mut gives_up => {
                    tracing::warn!(parent: self.span, rule = %held.rule, "opening a review timed out");
                    return Ok(Err(refused(format!(
                        "permission denied: rule {} holds this statement for review, and the control plane did not answer",
                        held.rule
                    ))));
                }
            }
        };
        let id = review.review_id;
        asked.id = Some(id);
        self.review_note = Some((id.to_string(), String::new()));
        let wait = until(review.expires_at_unix);
        tracing::info!(parent: self.span, review = %id, rule = %held.rule, "statement held for review");
        let notice = Report::notice(format!(
            "statement held for review {id} by rule {}: waiting up to {} for approval",
            held.rule,
            airlock_core::duration::format(wait)
        ))
        .with_hint(format!("an approver runs `airlock approve {id}`, or decides it in the web inbox or in Slack"));
        if self.passing > 0 {
            encode::notice_response(&mut self.deferred, &notice);
        } else {
            encode::notice_response(to_client, &notice);
        }
        self.send_client(to_client).await?;

        let deadline = tokio::time::Instant::now() + wait + REVIEW_GRACE;
        let mut changes = self.gw.projection.changes();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        // The grant may end while the statement waits; it must not run after that.
        let grant_ends = timers::sleep(until(self.grant_end()));
        tokio::pin!(grant_ends);
        let recording_stopped = recording_stopped(self.tap.as_deref().map(SessionTap::stop_signal));
        tokio::pin!(recording_stopped);
        loop {
            changes.mark_unchanged();
            // Access first: an approval that arrives with the revocation runs nothing.
            if let Some(why) = self.still_admitted(connection) {
                return Err(access_ended(&why));
            }
            // The target's answers read before the hold, while the batch
            // before it was written, go on to the client meanwhile.
            if std::mem::take(&mut self.read_ahead) {
                self.forward_server(server_buf, to_client).await?;
                self.send_client(to_client).await?;
            }
            if let Some((outcome, approver)) = self.review_outcome(id, review.seq) {
                asked.id = None;
                self.review_note = Some((id.to_string(), approver));
                tracing::info!(parent: self.span, review = %id, approved = outcome.is_ok(), "review decided");
                return Ok(outcome);
            }
            let room = self.client.buf.len() < HELD_BUFFER_LIMIT;
            tokio::select! {
                () = &mut cancelled => return Ok(Err(self.held_cancelled(&held.rule, Some(id)))),
                read = self.client.io.read_buf(&mut self.client.buf), if room => self.read_while_held(read)?,
                () = &mut grant_ends => {
                    // Checked again at the top: ends the session if the grant is over.
                    grant_ends.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(gateway_stopping());
                    }
                }
                read = self.upstream.stream.read_buf(server_buf) => {
                    if read.map_err(target_lost)? == 0 {
                        return Err(Ended::fatal(sqlstate::ADMIN_SHUTDOWN, format!("{} closed the connection", connection.name)));
                    }
                    self.forward_server(server_buf, to_client).await?;
                    self.send_client(to_client).await?;
                }
                () = timers::sleep_until(deadline) => {
                    // Expired at the control plane: nothing to withdraw.
                    asked.id = None;
                    return Ok(Err(refused(format!(
                        "permission denied: review {id} was not decided in time; the statement did not run"
                    ))));
                }
                () = &mut shutting_down => {
                    return Err(gateway_stopping());
                }
                e = &mut recording_stopped => return Err(recording_lost(self.span, &e)),
            }
        }
    }

    /// What the client hears when it cancels a statement held for review
    /// (`review`, once opened), which is then withdrawn (`AskedReview`).
    fn held_cancelled(&self, rule: &str, review: Option<airlock_core::ReviewId>) -> Report {
        tracing::info!(parent: self.span, rule, review = ?review, "a held statement was cancelled by the client");
        let which = review.map_or_else(String::new, |id| format!(" {id}"));
        Report::error(sqlstate::QUERY_CANCELED, "canceling statement due to user request")
            .with_detail(format!("it was held for review{which}, which is withdrawn"))
    }

    /// Takes what the client sends while a statement is held: it waits its
    /// turn, recorded at once (nothing may take it along for as long as the
    /// review lasts); a client that went away ends the session now, not
    /// when the review ends.
    fn read_while_held(&mut self, read: std::io::Result<usize>) -> Result<(), Ended> {
        let n = read.map_err(io_ended)?;
        if n == 0 {
            return Err(Ended::quietly("the client went away while a statement was held"));
        }
        self.bytes_in += n as u64;
        self.record_read(n)?;
        self.commit_recording()
    }

    /// The review's outcome once the projection has it: `Ok` to run the
    /// statement, or the error that refuses it; and who decided it.
    fn review_outcome(&self, id: airlock_core::ReviewId, held_at_seq: u64) -> Option<(Result<(), Report>, String)> {
        use airlock_core::review::Outcome;
        self.gw.projection.read(|t| {
            let state = t.get(&self.context.tenant)?;
            if state.seq < held_at_seq {
                return None;
            }
            let review = state.reviews.get(&id)?;
            let (outcome, _) = review.outcome?;
            let refused = |text: String| {
                Report::error(sqlstate::INSUFFICIENT_PRIVILEGE, text).with_detail(format!("rule: {}", review.rule))
            };
            let deciders: Vec<&str> = review
                .decisions
                .iter()
                .filter(|d| d.approve == matches!(outcome, Outcome::Approved))
                .map(|d| d.by.as_str())
                .collect();
            let deciders = deciders.join(", ");
            let result = match outcome {
                Outcome::Approved => Ok(()),
                Outcome::Denied => {
                    let by = review.decisions.iter().find(|d| !d.approve);
                    let who = by.map(|d| d.by.as_str()).unwrap_or("an approver");
                    let comment = by.map(|d| d.comment.as_str()).filter(|c| !c.is_empty());
                    let why = comment.map(|c| format!(": {c}")).unwrap_or_default();
                    Err(refused(format!("permission denied: review {id} was denied by {who}{why}")))
                }
                Outcome::Withdrawn => Err(refused(format!("permission denied: review {id} was withdrawn"))),
                Outcome::Expired => Err(refused(format!(
                    "permission denied: review {id} was not decided in time; the statement did not run"
                ))),
            };
            Some((result, deciders))
        })
    }

    /// Forwards every complete server message as it came, keeping track of the
    /// transaction status. Messages are only measured, not copied apart: the
    /// whole run of complete ones goes to the client in one write, unless an
    /// error must be slipped in before a ReadyForQuery.
    async fn forward_server(&mut self, server_buf: &mut BytesMut, to_client: &mut BytesMut) -> Result<(), Ended> {
        self.forward_answers(server_buf, to_client).await?;
        self.send_probe(server_buf, to_client).await
    }

    /// `forward_server` without sending the probe the answers may call for:
    /// for `flush`, which sends it once what it is writing has gone first.
    async fn forward_answers(&mut self, server_buf: &mut BytesMut, to_client: &mut BytesMut) -> Result<(), Ended> {
        if self.masking.is_some() {
            self.forward_masked(server_buf, to_client).await
        } else {
            self.forward_plain(server_buf, to_client).await
        }
    }

    /// `forward_server` where nothing is masked.
    async fn forward_plain(&mut self, server_buf: &mut BytesMut, to_client: &mut BytesMut) -> Result<(), Ended> {
        // First the rest of a long message whose start went already.
        let mut complete = self.passing.min(server_buf.len());
        self.passing -= complete;
        if self.passing == 0 && !self.deferred.is_empty() {
            // What the gateway had to say while a long row went: after it.
            to_client.extend_from_slice(server_buf.get(..complete).unwrap_or_default());
            server_buf.advance(complete);
            complete = 0;
            to_client.extend_from_slice(&std::mem::take(&mut self.deferred));
        }
        while self.passing == 0 {
            let rest = server_buf.get(complete..).unwrap_or_default();
            let (tag, len) = match peek_frame(rest, DEFAULT_MAX_BACKEND_MESSAGE_LEN) {
                Ok(Some(next)) => next,
                Ok(None) => {
                    // A long row or copy data begun: what there is of it goes
                    // now, the rest as it comes. Nothing here reads either.
                    if let Some(&[tag, a, b, c, d]) = rest.get(..HEADER_LEN)
                        && matches!(tag, b'D' | b'd')
                        && self.probe.is_none()
                    {
                        // Not negative: peek_frame checked the length.
                        let total = usize::try_from(i32::from_be_bytes([a, b, c, d])).unwrap_or(0) + 1;
                        if total > PASS_ON_LONGER_THAN {
                            self.passing = total - rest.len();
                            complete += rest.len();
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(parent: self.span, "the target sent an invalid message: {e}");
                    return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "the target sent an invalid message"));
                }
            };
            if let Some(probe) = &mut self.probe {
                let step = probe.step(tag, rest.get(..len).unwrap_or_default());
                // What went before it goes first.
                to_client.extend_from_slice(server_buf.get(..complete).unwrap_or_default());
                server_buf.advance(complete + len);
                complete = 0;
                match step {
                    ProbeStep::Held => {}
                    ProbeStep::Finished => self.probe_answered(server_buf)?,
                    ProbeStep::Lost => return Err(self.probe_lost(tag)),
                }
                continue;
            }
            if tag == b'S' {
                self.setting_reported(rest.get(HEADER_LEN..len).unwrap_or_default());
            }
            match tag {
                b'E' => self.server_error(),
                b'1' | b'2' | b'3' if !self.in_flight.is_empty() => self.confirmed(tag),
                _ => {}
            }
            if matches!(tag, b'G' | b'C' | b'E' | b'I' | b's') {
                self.copy_answer(tag)?;
            }
            if tag == b'E'
                && let Some(report) = self.refusal_answered(rest.get(..len).unwrap_or_default())
            {
                // In the server's error's place.
                to_client.extend_from_slice(server_buf.get(..complete).unwrap_or_default());
                server_buf.advance(complete + len);
                complete = 0;
                encode::error_response(to_client, &report);
                continue;
            }
            if tag == b'Z' {
                let now = self.ready_for_query(rest.get(HEADER_LEN).copied());
                if !now.is_empty() {
                    to_client.extend_from_slice(server_buf.get(..complete).unwrap_or_default());
                    server_buf.advance(complete);
                    complete = 0;
                    for report in now {
                        encode::error_response(to_client, &report);
                    }
                }
            }
            complete += len;
        }
        // Written from the read buffer and then dropped from it (`advance`, not
        // `split_to`, which would make the buffer shared and reference-counted).
        let run = server_buf.get(..complete).unwrap_or_default();
        if to_client.is_empty() {
            // The common case: nothing of ours to add, so no copy.
            self.record_server(run)?;
            self.bytes_out += run.len() as u64;
            self.write_client(run).await?;
        } else {
            to_client.extend_from_slice(run);
        }
        server_buf.advance(complete);
        Ok(())
    }

    /// A ParameterStatus: whether the server still reads text as the gateway does.
    fn setting_reported(&mut self, body: &[u8]) {
        let mut parts = body.split(|b| *b == 0);
        if let (Some(name), Some(value)) = (parts.next(), parts.next())
            && let Some(safe) = lexing_setting(name, value)
        {
            // Once unsafe, stays unsafe: a later reset does not undo what ran meanwhile.
            self.lexing_safe &= safe;
        }
    }

    /// A probe that cannot be followed: too much held back, or a message
    /// out of place among its answers.
    fn probe_lost(&self, tag: u8) -> Ended {
        tracing::error!(parent: self.span, tag = %super::protocol::Tag(tag), "the target's answers to a probe cannot be followed");
        lost_track()
    }

    /// A ReadyForQuery: notes the transaction status, and returns the refusals
    /// that go just before it.
    fn ready_for_query(&mut self, status: Option<u8>) -> Vec<Report> {
        if let Some(status) = status {
            self.status = status;
        }
        self.ready_seen += 1;
        self.copy.answered(b'Z');
        // Everything of the batch this ends was answered: what was confirmed
        // stands. A message still unanswered was skipped after an error in
        // the batch, one the gateway relayed before forwarding it, and the
        // server did not take what it names.
        let seen = self.ready_seen;
        self.settle_batches(seen, true);
        if self.awaiting_answers && seen >= self.ready_owed {
            // The batches before the waiting Bind are answered: what its
            // statement's name holds is known.
            self.awaiting_answers = false;
            self.resumed = true;
        }
        if self.status == b'I'
            && seen == self.ready_owed
            && !self.batch_open
            && (self.every_portal_deallocates
                || !self.deallocating_portals.is_empty()
                || !self.closing_portals.is_empty())
        {
            // Out of any transaction, with nothing more sent (no batch begun
            // after this one either): the server holds no portal a Bind made
            // (none outlives its transaction).
            self.deallocating_portals.clear();
            self.every_portal_deallocates = false;
            self.closing_portals.clear();
        }
        if !self.inject.iter().any(|(n, _)| *n == seen) {
            return Vec::new();
        }
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.inject).into_iter().partition(|(n, _)| *n == seen);
        self.inject = later;
        now.into_iter().map(|(_, refusal)| refusal.report).collect()
    }

    /// Forwards every complete server message, masking rows, copied rows,
    /// errors and notices as the result they belong to says. Everything goes
    /// to `to_client`, for the caller to write.
    async fn forward_masked(&mut self, server_buf: &mut BytesMut, to_client: &mut BytesMut) -> Result<(), Ended> {
        let held_at_most = self.gw.options.masked_message_max.min(DEFAULT_MAX_BACKEND_MESSAGE_LEN);
        loop {
            let (tag, len) = match peek_frame(server_buf, held_at_most) {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(()),
                // Found out from its header, before it is read whole. What
                // came before it goes first: a COMMIT's answer, say.
                Err(super::protocol::ProtocolError::MessageTooLong { len, .. })
                    if len <= DEFAULT_MAX_BACKEND_MESSAGE_LEN =>
                {
                    self.send_client(to_client).await?;
                    return Err(self.too_long_to_mask(len));
                }
                Err(e) => {
                    tracing::error!(parent: self.span, "the target sent an invalid message: {e}");
                    return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "the target sent an invalid message"));
                }
            };
            if let Some(probe) = &mut self.probe {
                let step = probe.step(tag, server_buf.get(..len).unwrap_or_default());
                server_buf.advance(len);
                match step {
                    ProbeStep::Held => {}
                    ProbeStep::Finished => self.probe_answered(server_buf)?,
                    ProbeStep::Lost => return Err(self.probe_lost(tag)),
                }
                continue;
            }
            // Rows, the bulk of a result, go straight from one buffer to the other.
            if tag == b'D'
                && let Some(r) = self.masking.as_ref()
                && let Some(shape) = r.current.as_ref()
                && !r.dropping
                && matches!(r.queue.front(), Some(Expect::Query(..) | Expect::Execute(..)))
            {
                let raw = server_buf.get(..len).unwrap_or_default();
                if let Err(e) = masking::mask_row_into(raw, shape, &self.salt, to_client) {
                    tracing::error!(parent: self.span, "the target sent an invalid row: {e}");
                    return Err(Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "the target sent an invalid message"));
                }
                bytes::Buf::advance(server_buf, len);
                continue;
            }
            let raw = server_buf.split_to(len);
            // First: the end of a copy takes back the Syncs the server ignored,
            // before the statement's own expectation is settled.
            if matches!(tag, b'G' | b'C' | b'E' | b'I' | b's') {
                self.copy_answer(tag)?;
            }
            let out = self.masked_message(tag, &raw).await?;
            if tag == b'S' {
                self.setting_reported(raw.get(HEADER_LEN..).unwrap_or_default());
            }
            match tag {
                b'E' => self.server_error(),
                b'1' | b'2' | b'3' if !self.in_flight.is_empty() => self.confirmed(tag),
                _ => {}
            }
            if tag == b'Z' {
                for report in self.ready_for_query(raw.get(HEADER_LEN).copied()) {
                    encode::error_response(to_client, &report);
                }
            }
            if tag == b'E'
                && let Some(report) = self.refusal_answered(&raw)
            {
                // In the server's error's place; unless the client was told of
                // an error in this batch already (a result refused), as the
                // server reports one error a batch.
                if !matches!(out, Relayed::Dropped) {
                    encode::error_response(to_client, &report);
                }
                continue;
            }
            match out {
                Relayed::AsIs => to_client.extend_from_slice(&raw),
                Relayed::Changed(changed) => to_client.extend_from_slice(&changed),
                Relayed::Dropped => {}
            }
        }
    }

    /// Places one server message among the responses owed and masks what it
    /// carries.
    async fn masked_message(&mut self, tag: u8, raw: &[u8]) -> Result<Relayed, Ended> {
        let relayed = self.masked_response(tag, raw).await;
        if self.masking.as_ref().is_some_and(|r| r.described.is_some()) {
            // The message held for this description, and what followed it, go on.
            self.resumed = true;
        }
        relayed
    }

    async fn masked_response(&mut self, tag: u8, raw: &[u8]) -> Result<Relayed, Ended> {
        // The answer that ends the wait of a message held for its portal's
        // description is the last one owed: nothing was forwarded after it.
        let held = self.describing.is_some();
        // When the message is the client's Describe, that answer is its answer.
        let answers_client =
            matches!(&self.describing, Some(Undescribed { message: FrontendMessage::Describe { .. }, .. }));
        let lost = |what: &str| {
            tracing::error!("masking lost track of the target's responses: {what}");
            lost_track()
        };
        let Some(r) = self.masking.as_mut() else { return Ok(Relayed::AsIs) };
        let dropping = r.dropping;
        let relayed = match tag {
            b'1' | b'2' | b'3' => {
                let popped = r.queue.pop_front();
                let fits = matches!(
                    (tag, &popped),
                    (b'1', Some(Expect::Parse)) | (b'2', Some(Expect::Bind)) | (b'3', Some(Expect::Close))
                );
                if !fits {
                    return Err(lost("a completion that answers nothing sent"));
                }
                Relayed::AsIs
            }
            b't' => {
                if !matches!(r.queue.front(), Some(Expect::DescribeStatement { .. })) {
                    return Err(lost("a parameter description nobody asked for"));
                }
                Relayed::AsIs
            }
            b'n' => match r.queue.pop_front() {
                Some(Expect::DescribeStatement { described }) => {
                    if let Some(described) = described {
                        let _ = described.set(false);
                    }
                    Relayed::AsIs
                }
                Some(Expect::DescribePortal { hidden: false, .. }) => Relayed::AsIs,
                Some(Expect::DescribePortal { hidden: true, .. }) => {
                    r.current = None;
                    if held && r.queue.is_empty() {
                        r.described = Some(Described::Readable);
                    }
                    if answers_client && r.queue.is_empty() { Relayed::AsIs } else { Relayed::Dropped }
                }
                _ => return Err(lost("NoData that answers no Describe")),
            },
            b'T' => {
                let (hidden, mask, text) = match r.queue.front() {
                    Some(Expect::DescribeStatement { .. }) => {
                        if let Some(Expect::DescribeStatement { described: Some(described) }) = r.queue.pop_front() {
                            let fields = row_description(raw).ok_or_else(|| lost("an unreadable row description"))?;
                            let other = fields.iter().any(|f| masking::value_kind(f.type_oid) == ValueKind::Other);
                            let _ = described.set(other);
                        }
                        return Ok(if dropping { Relayed::Dropped } else { Relayed::AsIs });
                    }
                    Some(Expect::DescribePortal { hidden, mask, text }) => (*hidden, mask.clone(), text.clone()),
                    Some(Expect::Query(mask, sql)) => (false, mask.clone(), Some(sql.clone())),
                    _ => return Err(lost("a row description that answers nothing sent")),
                };
                if !matches!(r.queue.front(), Some(Expect::Query(..))) {
                    r.queue.pop_front();
                }
                let fields = row_description(raw).ok_or_else(|| lost("an unreadable row description"))?;
                let shape = self.shape(&fields, mask).await?;
                let Some(r) = self.masking.as_mut() else { return Ok(Relayed::AsIs) };
                let unreadable = masking::unreadable(&fields, &shape.columns);
                if hidden && held && r.queue.is_empty() {
                    // Nothing ran yet: the held message is refused instead (`release_described`).
                    let readable = unreadable.is_none();
                    r.current = readable.then(|| Arc::new(shape));
                    r.described = Some(unreadable.map_or(Described::Readable, Described::Unreadable));
                    return Ok(if readable && answers_client && !dropping { Relayed::AsIs } else { Relayed::Dropped });
                }
                if let Some(why) = unreadable {
                    r.current = None;
                    r.dropping = true;
                    if dropping {
                        return Ok(Relayed::Dropped);
                    }
                    // Only where the portal's description was not waited for: a
                    // statement described anew, a result refused after it ran.
                    let report = Report::error(sqlstate::INSUFFICIENT_PRIVILEGE, format!("permission denied: {why}"))
                        .with_detail("rule: builtin:masked-binary");
                    self.record_masked_binary(text, &report)?;
                    let mut out = BytesMut::new();
                    encode::error_response(&mut out, &report);
                    return Ok(Relayed::Changed(out));
                }
                r.current = Some(Arc::new(shape));
                if hidden { Relayed::Dropped } else { Relayed::AsIs }
            }
            // The rows of a refused result.
            b'D' | b'd' if dropping => Relayed::Dropped,
            // A row in its place went by in `forward_masked`; one here is out of place.
            b'D' => {
                if !matches!(r.queue.front(), Some(Expect::Query(..) | Expect::Execute(..))) {
                    return Err(lost("a row outside any result"));
                }
                return Err(lost("a row before its description"));
            }
            b'C' | b'I' | b's' => {
                r.current = None;
                r.copy_binary = false;
                match r.queue.front() {
                    Some(Expect::Execute(..)) => {
                        r.queue.pop_front();
                    }
                    Some(Expect::Query(..)) => {}
                    _ => return Err(lost("a completion outside any statement")),
                }
                Relayed::AsIs
            }
            b'E' | b'N' => {
                let mask = match r.queue.front() {
                    Some(Expect::Query(m, _) | Expect::Execute(m, _) | Expect::DescribePortal { mask: m, .. }) => {
                        Some(m.clone())
                    }
                    _ => None,
                };
                if tag == b'E' {
                    r.current = None;
                    r.copy_binary = false;
                    // Outside a simple query, the server skips to the next Sync,
                    // and so what the client sends until that Sync.
                    if !matches!(r.queue.front(), Some(Expect::Query(..) | Expect::FunctionCall)) {
                        while r.queue.front().is_some_and(|e| !matches!(e, Expect::Sync)) {
                            r.queue.pop_front();
                        }
                        r.skipping = r.queue.is_empty();
                        if held && r.skipping {
                            // The server skips the held message's Describe, and will skip the
                            // message: it goes on, and is answered by nothing.
                            r.described = Some(Described::Skipped);
                        }
                    }
                }
                // Outside any statement's result (a notice between statements): the
                // detectors of whatever rules cover the connection.
                match mask.or_else(|| self.gw.hook.result_mask(self.context, None)) {
                    Some(m) => match masking::mask_report(raw, &m, m.involved, &self.salt) {
                        Some(changed) => Relayed::Changed(changed),
                        None => Relayed::AsIs,
                    },
                    None => Relayed::AsIs,
                }
            }
            b'H' => {
                let binary = raw.get(HEADER_LEN) == Some(&1);
                let (detects, statement) = match r.queue.front() {
                    Some(Expect::Query(m, sql)) => (m.has_detectors(), Some(sql)),
                    Some(Expect::Execute(m, text)) => (m.has_detectors(), text.as_ref()),
                    _ => return Err(lost("COPY outside any statement")),
                };
                if binary && detects {
                    r.dropping = true;
                    if dropping {
                        return Ok(Relayed::Dropped);
                    }
                    let statement = statement.cloned();
                    let report = Report::error(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        "permission denied: COPY in binary format cannot be masked; use text or CSV",
                    )
                    .with_detail("rule: builtin:masked-binary");
                    self.record_masked_binary(statement, &report)?;
                    let mut out = BytesMut::new();
                    encode::error_response(&mut out, &report);
                    return Ok(Relayed::Changed(out));
                }
                r.copy_binary = binary;
                Relayed::AsIs
            }
            b'd' => {
                let mask = match r.queue.front() {
                    Some(Expect::Query(m, _) | Expect::Execute(m, _)) => m.clone(),
                    _ => return Err(lost("COPY data outside any statement")),
                };
                if r.copy_binary || !mask.has_detectors() {
                    Relayed::AsIs
                } else {
                    masking::mask_copy_data(raw, &mask, &self.salt).map_or(Relayed::AsIs, Relayed::Changed)
                }
            }
            b'Z' => {
                match r.queue.pop_front() {
                    Some(Expect::Query(..) | Expect::Sync | Expect::FunctionCall) => {}
                    _ => return Err(lost("ReadyForQuery that answers nothing sent")),
                }
                if raw.get(HEADER_LEN) == Some(&b'I') {
                    // Out of any transaction: the server destroyed its portals.
                    r.portals.transaction_ended();
                }
                r.current = None;
                r.dropping = false;
                return Ok(Relayed::AsIs);
            }
            b'V' => {
                if !matches!(r.queue.front(), Some(Expect::FunctionCall)) {
                    return Err(lost("a function result nobody asked for"));
                }
                Relayed::AsIs
            }
            // Asynchronous: settings, notifications; and the rest of a COPY.
            b'S' | b'A' | b'G' | b'W' | b'c' => Relayed::AsIs,
            other => {
                return Err(lost(&format!("unexpected message {}", super::protocol::Tag(other))));
            }
        };
        Ok(if dropping { Relayed::Dropped } else { relayed })
    }

    /// What happens to each column of a result described by `fields`.
    async fn shape(
        &self,
        fields: &[super::protocol::FieldDescription],
        mask: Arc<ResultMask>,
    ) -> Result<masking::Shape, Ended> {
        use masking::Column;
        let column_rules = mask.rules().iter().any(|r| !r.columns.is_empty());
        let mut oids: Vec<u32> =
            fields.iter().filter(|f| f.table_oid != 0 && f.column_attr > 0).map(|f| f.table_oid).collect();
        oids.sort_unstable();
        oids.dedup();
        let catalog = (column_rules && !oids.is_empty())
            .then(|| self.catalog.get_or_init(|| self.gw.catalog(self.context.tenant, self.connection)).clone());
        let relations = if let Some(known) = catalog.as_ref().and_then(|c| c.cached(&oids)) {
            // What a session reads again and again: no admin connection needed.
            known
        } else if let Some(catalog) = catalog {
            let unreachable = |e: String| {
                tracing::error!(parent: self.span, "failed to read the catalog of {}: {e}", self.connection.name);
                Ended::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("the gateway cannot read the catalog of {} to mask results", self.connection.name),
                )
            };
            let admin = self
                .gw
                .role_manager(self.context.tenant, self.connection)
                .await
                .map_err(|e| unreachable(format!("{e:#}")))?;
            catalog.relations(&oids, &admin).await.map_err(|e| unreachable(e.to_string()))?
        } else {
            std::collections::HashMap::new()
        };
        let mut columns = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            let whole = if f.table_oid != 0 && f.column_attr > 0 {
                if !column_rules {
                    None
                } else {
                    match relations.get(&f.table_oid) {
                        Some(Some(rel)) if rel.is_view => {
                            // A view's columns are what its definition computes.
                            let definition = rel.definition.as_deref().map(|d| bytes::Bytes::from(d.to_owned()));
                            match definition.and_then(|d| self.gw.hook.result_mask(self.context, Some(&d))) {
                                Some(view) => view.computed(usize::try_from(f.column_attr - 1).unwrap_or(0)),
                                None => mask.strongest(),
                            }
                        }
                        Some(Some(rel)) => match rel.columns.get(&f.column_attr) {
                            Some(name) => std::iter::once((&rel.schema, &rel.name))
                                .chain(rel.ancestors.iter().map(|(s, n)| (s, n)))
                                .filter_map(|(schema, table)| mask.column(schema, table, name))
                                .min_by_key(|m| m.strategy.reveals()),
                            None => mask.strongest(),
                        },
                        // Gone from the catalog: masked, since nothing says it is not.
                        _ => mask.strongest(),
                    }
                }
            } else {
                mask.computed(i)
            };
            let computed = f.table_oid == 0 || f.column_attr <= 0;
            let column = match whole {
                Some(w) if computed => Column::Computed(w),
                Some(w) => Column::Whole(w),
                None if mask.has_detectors() => Column::Detect,
                None => Column::Pass,
            };
            columns.push((column, masking::value_kind(f.type_oid), f.format == 1));
        }
        Ok(masking::shape(columns, mask))
    }

    /// Sends the target what the client's messages made of it, then the
    /// probe the answers read meanwhile may call for, then what goes to the
    /// client.
    async fn flush(
        &mut self,
        server_buf: &mut BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        // What the client sent and what was decided of it, in one write, before
        // anything goes on (and before a held statement waits for its review).
        self.commit_recording()?;
        if !to_server.is_empty() {
            self.client_bytes_stored().await?;
            self.write_target(to_server, server_buf, to_client).await?;
        }
        // A probe the answers above called for goes after everything before it.
        self.send_probe(server_buf, to_client).await?;
        self.send_client(to_client).await
    }

    /// Writes `bytes` to the target, reading its answers meanwhile: a target
    /// that is itself blocked writing (a client pipelining past the sockets'
    /// buffers) would otherwise never read what is written. Past the
    /// read-ahead limit, the answers read are handled (passed on to the
    /// client, which is reading them or the target would not be waiting, or
    /// held back by a probe that is out) before the write goes on.
    async fn write_target(
        &mut self,
        bytes: &mut BytesMut,
        server_buf: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<(), Ended> {
        let mut done = bytes.is_empty();
        while !done {
            let before = server_buf.len();
            // At least the message the buffer holds the start of, whole: the
            // target may be waiting to write the rest of it.
            // (Not while a long message is passed on as it comes: the buffer
            // starts inside it, and what arrives goes on.)
            let started = match server_buf.get(..HEADER_LEN) {
                Some(&[_, a, b, c, d]) if self.passing == 0 => {
                    usize::try_from(i32::from_be_bytes([a, b, c, d])).unwrap_or(0)
                }
                _ => 0,
            }
            .min(super::protocol::DEFAULT_MAX_BACKEND_MESSAGE_LEN);
            // Not one a masked session would not hold: `forward_masked` ends
            // the session at its header, once what came before it is sent.
            if self.masking.is_some() && started > self.gw.options.masked_message_max {
                self.forward_answers(server_buf, to_client).await?;
                return Err(self.too_long_to_mask(started));
            }
            let ahead = (&mut *server_buf, self.gw.options.read_ahead_limit.max(started + 2));
            let watch =
                Watch { gw: self.gw, context: self.context, connection: self.connection, shutdown: &self.shutdown };
            let wrote =
                write_watched(&mut self.upstream.stream, bytes, Some(ahead), watch).await.map_err(|cut| cut.ended)?;
            self.read_ahead |= server_buf.len() > before;
            let wrote = wrote.map_err(target_lost)?;
            bytes.advance(wrote.written);
            done = wrote.done;
            if !done {
                // Each pass ends at the read-ahead limit, sooner than the
                // write's own watch looks: a client reading a long result as
                // fast as the target writes it would keep this loop, and the
                // session, going past its grant.
                watch.check()?;
                self.read_ahead = false;
                self.forward_answers(server_buf, to_client).await?;
                self.send_client(to_client).await?;
            }
        }
        Ok(())
    }

    /// Records and writes what goes to the client, if anything does.
    async fn send_client(&mut self, to_client: &mut BytesMut) -> Result<(), Ended> {
        if !to_client.is_empty() {
            self.record_server(to_client)?;
            self.bytes_out += to_client.len() as u64;
            self.write_client(to_client).await?;
            to_client.clear();
        }
        Ok(())
    }
}

impl Relay<'_> {
    /// Records the `n` bytes just read into the client's buffer, before
    /// anything is done with them: written by the next `flush`, before it
    /// forwards anything.
    fn record_read(&mut self, n: usize) -> Result<(), Ended> {
        let Some(tap) = self.tap.as_deref_mut() else { return Ok(()) };
        let read = self.client.buf.get(self.client.buf.len().saturating_sub(n)..).unwrap_or_default();
        self.client_seq = tap.client_bytes_later(read).map_err(|e| recording_lost(self.span, &e))?;
        Ok(())
    }

    /// Records bytes about to be written to the client.
    fn record_server(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        let Some(tap) = self.tap.as_deref_mut() else { return Ok(()) };
        tap.server_bytes(bytes).map_err(|e| recording_lost(self.span, &e))?;
        Ok(())
    }

    /// Writes what `record_read` and `record_decision` recorded since the last write.
    fn commit_recording(&mut self) -> Result<(), Ended> {
        let Some(tap) = self.tap.as_deref_mut() else { return Ok(()) };
        tap.commit().map_err(|e| recording_lost(self.span, &e))
    }

    /// Records a result refused because masking cannot read it
    /// (`builtin:masked-binary`) as a deny of `statement` (its text, if known).
    fn record_masked_binary(&mut self, statement: Option<bytes::Bytes>, report: &Report) -> Result<(), Ended> {
        if self.tap.is_none() {
            return Ok(());
        }
        self.record_decision(recording::Decision {
            statement: statement.map(|sql| decision_text(&sql)).unwrap_or_default(),
            verdict: recording::Verdict::Deny as i32,
            reason: report.message.clone(),
            rule: "builtin:masked-binary".into(),
            ..Default::default()
        })
    }

    /// Records what policy decided of a statement.
    fn record_decision(&mut self, decision: recording::Decision) -> Result<(), Ended> {
        let Some(tap) = self.tap.as_deref_mut() else { return Ok(()) };
        tap.decision_later(decision).map_err(|e| recording_lost(self.span, &e))?;
        Ok(())
    }

    /// In strict mode, waits until the recorder has stored everything the
    /// client sent so far: nothing reaches the target unrecorded. A recorder
    /// that does not answer in time ends the session.
    async fn client_bytes_stored(&mut self) -> Result<(), Ended> {
        let Some(tap) = self.tap.as_deref() else { return Ok(()) };
        let Some(wait) = tap.strict_wait() else { return Ok(()) };
        if self.client_seq <= self.durable_seq {
            return Ok(());
        }
        match timers::timeout(wait, tap.durable(self.client_seq)).await {
            Ok(Ok(())) => {
                self.durable_seq = self.client_seq;
                Ok(())
            }
            Ok(Err(e)) => Err(recording_lost(self.span, &e)),
            Err(_) => {
                tracing::error!(parent: self.span, seq = self.client_seq, "the recorder did not store the session's frames in time");
                Err(Ended::fatal(
                    RECORDING_UNAVAILABLE,
                    "session recording is unavailable (the recorder did not store the statement in time)",
                ))
            }
        }
    }
}

/// `None` while the projection still admits the session; otherwise why not.
fn denial(gw: &Gateway, context: &SessionContext, connection: &ConnectionSpec) -> Option<String> {
    let now = unix_now();
    gw.projection.read(|t| {
        let Some(state) = t.get(&context.tenant) else { return Some("the tenant is gone".to_owned()) };
        let Some(current) = state.connections.get(&connection.id) else {
            return Some(format!("connection {} was removed", connection.name));
        };
        state.denial(&context.principal, current, &context.role, now)
    })
}

/// A review a session asked for, withdrawn when this is dropped unless its
/// outcome came (or it expired): whatever way the session stops waiting (a
/// cancel, its client gone, a revocation, the gateway stopping, an error),
/// no approver is left asked to decide a statement that can no longer run.
struct AskedReview {
    gw: Arc<Gateway>,
    tenant: TenantId,
    session: SessionId,
    /// The opening's answer.
    opening: tokio::sync::oneshot::Receiver<anyhow::Result<crate::sync::grpc::HeldReview>>,
    /// The answer was taken.
    answered: bool,
    /// The review, from its opening until its outcome.
    id: Option<airlock_core::ReviewId>,
}

impl Drop for AskedReview {
    fn drop(&mut self) {
        let id = self.id.take().or_else(|| {
            if self.answered {
                return None;
            }
            // From here an answer not yet sent is withdrawn by the task that
            // opens the review; one sent already is withdrawn here.
            self.opening.close();
            self.opening.try_recv().ok()?.ok().map(|review| review.review_id)
        });
        if let Some(id) = id {
            withdraw_review(&self.gw, self.tenant, self.session, id);
        }
    }
}

/// Closes a review no session waits for any more, in the background, on the
/// main runtime: a failure only leaves the review to expire.
fn withdraw_review(gw: &Arc<Gateway>, tenant: TenantId, session: SessionId, review: airlock_core::ReviewId) {
    let withdrawing = gw.clone();
    gw.spawn_behind(async move {
        let withdrawn = withdrawing.control_plane.withdraw_review(tenant, review, session);
        match tokio::time::timeout(OPENING_LIMIT, withdrawn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%review, "failed to withdraw a review: {e:#}"),
            Err(_) => tracing::warn!(%review, "failed to withdraw a review: no answer in {OPENING_LIMIT:?}"),
        }
    });
}

/// What ends a session that waits (on a write, on the control plane): the
/// gateway's stop and the grant's end.
#[derive(Clone, Copy)]
struct Watch<'a> {
    gw: &'a Gateway,
    context: &'a SessionContext,
    connection: &'a ConnectionSpec,
    shutdown: &'a CancellationToken,
}

impl Watch<'_> {
    /// Ends the session if the gateway is stopping or the grant no longer admits it.
    fn check(self) -> Result<(), Ended> {
        if self.shutdown.is_cancelled() {
            return Err(gateway_stopping());
        }
        match denial(self.gw, self.context, self.connection) {
            Some(why) => Err(access_ended(&why)),
            None => Ok(()),
        }
    }
}

/// The time from now to `end_unix`, none once it has passed.
fn until(end_unix: i64) -> Duration {
    Duration::from_secs(u64::try_from(end_unix.saturating_sub(unix_now())).unwrap_or(0))
}

/// How often a write that waits looks at the session's grant.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Writes all of `bytes` to `io`. A peer that stops reading (a client that
/// stopped reading a long result, on purpose or not) holds the write, and
/// with it the session's loop, which watches the grant between writes: while
/// the write waits, the grant and the gateway's shutdown are looked at every
/// `WATCH_EVERY`, and the session ends when either says so, whatever was left
/// unwritten. A write that goes at once, as nearly all do, makes no timer; one
/// that waits registers with nothing shared but the timer.
///
/// With `ahead` (the target's side: its buffer and a limit), what `io` sends
/// while the write waits is read into the buffer: a target whose input is
/// full is busy writing answers, and reads nothing more until someone reads
/// them, so a client pipelining more than the sockets hold (reading its
/// answers all the while) would otherwise wait on the gateway forever. Once
/// the buffer holds the limit, the write stops where it is, so that the
/// caller passes the answers on and writes the rest after them (`Wrote`).
/// The write is done once `io` has flushed it too: a TLS stream may hold the
/// end of it until then.
async fn write_watched<W: AsyncRead + AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    mut ahead: Option<(&mut BytesMut, usize)>,
    watch: Watch<'_>,
) -> Result<std::io::Result<Wrote>, Cut> {
    let mut state = WriteState::default();
    let ended = {
        let write = std::future::poll_fn(|cx| {
            let ahead = ahead.as_mut().map(|(buf, limit)| (&mut **buf, *limit));
            write_reading(io, cx, bytes, ahead, &mut state)
        });
        tokio::pin!(write);
        if let Poll::Ready(written) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            return Ok(written);
        }
        loop {
            tokio::select! {
                written = &mut write => return Ok(written),
                () = timers::sleep(WATCH_EVERY) => {
                    if let Err(ended) = watch.check() {
                        break ended;
                    }
                }
            }
        }
    };
    Err(Cut { ended, written: state.written })
}

/// A `write_watched` write the session's end cut short, and how much of it
/// had gone.
struct Cut {
    ended: Ended,
    written: usize,
}

/// How far a `write_watched` write went.
struct Wrote {
    /// Bytes taken.
    written: usize,
    /// All of them, flushed; otherwise stopped at the read-ahead limit.
    done: bool,
}

/// Where a `write_watched` write stands between polls.
#[derive(Default)]
struct WriteState {
    written: usize,
    /// Bytes were read ahead during this write.
    read: bool,
    /// The peer ended its side: the loop reads the end next.
    ended: bool,
}

/// One poll of `write_watched`'s write: the rest of `bytes` and a flush, and
/// while those wait, reads into `ahead` until `io` has nothing more or has
/// ended. Ready once all is written and flushed, or once this write read the
/// buffer up to its limit.
fn write_reading<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    bytes: &[u8],
    ahead: Option<(&mut BytesMut, usize)>,
    state: &mut WriteState,
) -> Poll<std::io::Result<Wrote>> {
    loop {
        let Some(rest) = bytes.get(state.written..).filter(|rest| !rest.is_empty()) else {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Wrote { written: state.written, done: true })),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        };
        match Pin::new(&mut *io).poll_write(cx, rest) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => state.written += n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    // The write waits (its waker registered): the socket's readable side gets
    // a waker of its own.
    let Some((buf, limit)) = ahead else { return Poll::Pending };
    while !state.ended && buf.len() < limit {
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(0)) => state.ended = true,
            Poll::Ready(Ok(_)) => state.read = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    // At the limit with answers of this write's to pass on; otherwise (a
    // buffer that held the limit before, a peer that ended) the write waits on.
    if state.read && !state.ended {
        Poll::Ready(Ok(Wrote { written: state.written, done: false }))
    } else {
        Poll::Pending
    }
}

/// The columns a RowDescription (`raw`: tag, length and body) describes.
fn row_description(raw: &[u8]) -> Option<Vec<super::protocol::FieldDescription>> {
    let frame = Frame::new(b'T', raw.get(HEADER_LEN..).unwrap_or_default()).ok()?;
    match super::protocol::decode_backend(&frame) {
        Ok(super::protocol::BackendMessage::RowDescription(fields)) => Some(fields),
        _ => None,
    }
}

/// The mask of a statement's rows (`None`: of one the gateway cannot read).
fn mask_for(gw: &Gateway, context: &SessionContext, sql: Option<&bytes::Bytes>) -> Arc<ResultMask> {
    gw.hook.result_mask(context, sql).unwrap_or_else(|| Arc::new(ResultMask::unread(Vec::new())))
}

/// Why a session can no longer be recorded; pending forever without recording.
async fn recording_stopped(stop: Option<recording::StopSignal>) -> recording::Error {
    match stop {
        Some(mut stop) => stop.stopped().await,
        None => std::future::pending().await,
    }
}

/// A statement's text as a decision records it.
fn decision_text(sql: &[u8]) -> String {
    String::from_utf8_lossy(sql).into_owned()
}

async fn forward_cancel(gw: &Gateway, pid: i32, secret_key: &[u8]) {
    let Ok(key) = <[u8; 4]>::try_from(secret_key) else { return };
    gw.cancel(pid, key).await;
}

/// Whether the client starts with a TLS handshake instead of a startup packet
/// (`sslnegotiation=direct`). Looked at without reading, so that the
/// handshake's bytes are the TLS acceptor's to read.
async fn direct_tls(client: &Client) -> Result<bool, Ended> {
    let ClientIo::Plain(tcp) = &client.io else { return Ok(false) };
    if !client.buf.is_empty() {
        return Ok(false);
    }
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await.map_err(io_ended)? {
        0 => Err(Ended::quietly("the client went away")),
        _ => Ok(first[0] == super::tls::TLS_HANDSHAKE),
    }
}

async fn read_more(client: &mut Client) -> Result<(), Ended> {
    if client.buf.capacity() - client.buf.len() < 1024 {
        client.buf.reserve(8192);
    }
    let n = client.io.read_buf(&mut client.buf).await.map_err(io_ended)?;
    if n == 0 {
        return Err(Ended::quietly("the client went away"));
    }
    Ok(())
}

/// A simple query or function call sent after extended-protocol messages and
/// before their Sync. Postgres would skip it if one of those messages failed,
/// and send no ReadyForQuery for it; the relay, which counts the
/// ReadyForQuery messages owed to place its refusals and to know which
/// statement an answer belongs to, could no longer tell. No driver sends one.
/// The session's grant (or connection, or tenant) no longer admits it: `why`.
fn access_ended(why: &str) -> Ended {
    Ended::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, format!("access ended: {why}"))
}

fn gateway_stopping() -> Ended {
    Ended::fatal(sqlstate::ADMIN_SHUTDOWN, "the gateway is shutting down")
}

fn mid_batch() -> Ended {
    Ended::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        "a simple query or function call cannot follow extended-protocol messages before their Sync",
    )
}

fn not_copy_data() -> Ended {
    Ended::fatal(sqlstate::PROTOCOL_VIOLATION, copy_watch::NOT_COPY_DATA)
}

fn lost_track() -> Ended {
    Ended::fatal(sqlstate::PROTOCOL_VIOLATION, "the gateway lost track of the target's responses")
}

/// The client's connection failed: the client ended the session
/// (`airlock_core::session::outcome` counts reasons starting so as completed).
fn io_ended(e: std::io::Error) -> Ended {
    Ended::quietly(format!("connection lost: {e}"))
}

/// The target's connection failed: the session ended on Airlock's side. The
/// client is told at once, before the session role's drop (which may wait
/// for a target that does not answer).
fn target_lost(e: std::io::Error) -> Ended {
    Ended::fatal(sqlstate::CONNECTION_FAILURE, format!("connection to the target lost: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn unix_to_system(t: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))
}

/// The client's side: plain TCP until an SSLRequest upgrades it.
enum ClientIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while upgrading.
    Closed,
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientIo::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientIo::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientIo::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientIo::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RoleError, role_not_made, sqlstate, token_may_travel, upstream, upstream_failed};

    #[test]
    fn a_role_that_could_not_be_made_is_the_grantees_fault_only_when_its_template_is() {
        let too_much =
            RoleError::TemplateTooPowerful { template: "app_rw".into(), reason: "it confers SUPERUSER".into() };
        let out = role_not_made("pg-prod", &too_much);
        assert_eq!(out.fatal.map(|r| r.code), Some(sqlstate::INSUFFICIENT_PRIVILEGE));
        assert!(out.reason.contains("\"app_rw\" is refused: it confers SUPERUSER"), "{}", out.reason);
        let full = RoleError::ConnectionLimit("too many connections for role \"airlock_admin\"".into());
        let out = role_not_made("pg-prod", &full);
        assert_eq!(out.fatal.map(|r| r.code), Some(sqlstate::TOO_MANY_CONNECTIONS));
        assert!(!out.reason.contains("airlock_admin"), "{}", out.reason);
        let failed =
            RoleError::Database { context: "creating the session role", message: "lock timeout on pg_authid".into() };
        let out = role_not_made("pg-prod", &failed);
        assert_eq!(out.fatal.map(|r| r.code), Some(sqlstate::CONNECTION_FAILURE));
        assert!(!out.reason.contains("pg_authid") && out.reason.contains("try again"), "{}", out.reason);
    }

    #[test]
    fn a_gateway_out_of_descriptors_says_so_and_not_that_the_target_is_down() {
        let connect = |source| upstream::UpstreamError::Connect { address: "db:5432".into(), source };
        let out = upstream_failed("pg-prod", connect(std::io::Error::from_raw_os_error(24)));
        assert_eq!(out.fatal.map(|r| r.code), Some(sqlstate::TOO_MANY_CONNECTIONS));
        assert!(out.reason.contains("no file descriptors left to connect to pg-prod"), "{}", out.reason);
        for errno in [rustix::io::Errno::NOBUFS, rustix::io::Errno::NOMEM] {
            let out = upstream_failed("pg-prod", connect(std::io::Error::from_raw_os_error(errno.raw_os_error())));
            assert_eq!(out.fatal.map(|r| r.code), Some(sqlstate::OUT_OF_MEMORY));
            assert!(out.reason.contains("out of memory for sockets to connect to pg-prod"), "{}", out.reason);
        }
        let out = upstream_failed("pg-prod", connect(std::io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(out.fatal.map(|r| r.code), Some(sqlstate::CONNECTION_FAILURE));
        assert_eq!(out.reason, "pg-prod is unreachable");
    }

    #[test]
    fn tokens_cross_the_network_only_inside_tls() {
        let remote: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let local6: std::net::IpAddr = "::1".parse().unwrap();
        assert!(!token_may_travel(false, remote, false));
        assert!(token_may_travel(true, remote, false));
        assert!(token_may_travel(false, local, false));
        assert!(token_may_travel(false, local6, false));
        assert!(token_may_travel(false, "::ffff:127.0.0.1".parse().unwrap(), false));
        assert!(!token_may_travel(false, "::ffff:10.1.2.3".parse().unwrap(), false));
        assert!(token_may_travel(false, remote, true));
    }
}
