//! Per-session roles on a Postgres target.
//!
//! For every session the gateway creates, with the connection's admin
//! credential, a role `airlock_<session id as 32 hex chars>` that can log in
//! with a random password until the grant's end, is a member of exactly the
//! role template the grant names (e.g. `app_readonly`), and never holds
//! SUPERUSER, CREATEROLE, CREATEDB, BYPASSRLS or REPLICATION — neither as its
//! own attributes nor through the template. The gateway then connects upstream
//! as that role. At session end or grant end the role is dropped: logins are
//! switched off, its backends terminated, what it owns reassigned to its
//! template (never to the admin user, whose power it would lend), and the role
//! removed. The admin user needs no more than CREATEROLE: it takes the role
//! into its own memberships to end and clear it. On start a worker sweeps the roles it left
//! behind (they carry `worker=<id>` in their comment), e.g. after `kill -9`.
//!
//! Secrets: the password is generated here, handed to the caller in
//! [`SessionRole`] (whose `Debug` redacts it) and never logged. Only a
//! SCRAM-SHA-256 verifier, computed client-side, is sent to the server, so the
//! plaintext is not in the statement text, the server's statement log or
//! `pg_stat_activity`.
//!
//! TLS to the admin connection is the caller's choice ([`TlsChoice`]): the
//! caller builds the `tokio_postgres::Config` (including its `ssl_mode`) and
//! either refuses TLS or supplies a rustls `ClientConfig` (whose verifier
//! decides what "verified" means). The gateway opens the socket and negotiates
//! TLS itself, as for sessions (`upstream`). Over TLS the login is bound to
//! the target's certificate (SCRAM-SHA-256-PLUS, `tls-server-end-point`), so
//! that a target that sees another certificate than the gateway saw (an
//! impostor in the middle relaying the login) refuses it. Unless the target is
//! on this machine or its certificate was checked to name it, the admin
//! password goes only into such a bound login: the gateway refuses a target
//! that asks for it in cleartext, as MD5, or by SCRAM without binding
//! ([`LoginGuard`]).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::RngCore as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::config::{SslMode, SslNegotiation};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::scram::{self, SaltedPassword};
use super::upstream;

/// Every role this module creates is named `airlock_` + 32 lowercase hex chars.
pub const ROLE_PREFIX: &str = "airlock_";

/// One upstream connection per session: the gateway opens exactly one backend
/// connection as the session role (cancel requests carry a backend key and do
/// not log in), so a second login with the same password — a leaked or replayed
/// credential — is refused by the server while the session is live.
pub const SESSION_CONNECTION_LIMIT: u32 = 1;

/// How long what the gateway sends on an admin connection may go unacknowledged
/// by the target before the connection fails (`TCP_USER_TIMEOUT`). Admin calls
/// send a statement and read its answer; the target's kernel acknowledges
/// within a round trip even while the statement runs.
#[cfg(target_os = "linux")]
const ADMIN_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long `drop_session_role` waits for each terminated backend to exit, so
/// that its locks and temporary objects are gone before the role is dropped.
const TERMINATE_WAIT_MS: i64 = 5_000;
/// Ends a role's backends (`$1`), waiting up to `$2` ms for each to exit.
const TERMINATE: &str = "SELECT pg_catalog.pg_terminate_backend(pid, $2) FROM pg_catalog.pg_stat_activity \
     WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()";

/// Begins every transaction of the admin's that reads or calls anything by
/// name. A session whose template may create objects can define functions,
/// aggregates and operators in a schema on the admin's default search path
/// (`"$user", public`), named like the built-ins the admin's statements use
/// and typed to match their arguments better (an `array_agg(text)`, a
/// `shobj_description(oid, text)`); Postgres would pick those and run them
/// with the admin's rights. Names here resolve in the system catalog only.
/// Local to the transaction, so that it holds through a pooler that hands
/// each transaction to another server connection, and leaks into no other.
const CATALOG_ONLY: &str = "SET LOCAL search_path = pg_catalog, pg_temp";

/// Bounds on the transaction that makes a session role: a lock on the role
/// catalog held by someone else, or a target that stalls, fails the login
/// instead of holding it and an admin connection indefinitely.
const CREATE_TIMEOUTS: &str = "SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '30s'";

/// Bound on how long the drop transaction waits for a lock (an object the role
/// owns being in use by someone else), so a drop reports an error instead of
/// hanging the caller.
const DROP_LOCK_TIMEOUT: &str = "10s";

/// The SQLSTATE the drop of a role that is a member of no role raises when
/// the role owns objects (a code of its own, so that no other error of the
/// drop's transaction is taken for it).
const ORPHAN_OWNS: &str = "AL001";

/// The SQLSTATE that drop raises when a backend of the role outlived its
/// termination.
const BACKEND_STAYED: &str = "AL002";

/// Longest worker id accepted (it goes into the role's comment).
const MAX_WORKER_ID_LEN: usize = 128;

/// Postgres truncates identifiers to NAMEDATALEN - 1 bytes; a longer template
/// name would silently name another role, so it is refused.
const MAX_IDENTIFIER_LEN: usize = 63;

/// Roles a session must never reach through membership even though their
/// power is not a role attribute: each lets its members read or write the
/// server's files or run programs as the server's OS user.
const FORBIDDEN_PREDEFINED_ROLES: [&str; 3] =
    ["pg_execute_server_program", "pg_write_server_files", "pg_read_server_files"];

/// Errors from managing session roles. Messages are safe to show to a client
/// or write to a log: they name roles and problems, never a password or a
/// statement's text.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("cannot connect to the target as the admin user: {0}")]
    Connect(String),
    /// The target is there, but refused another connection: its own limit,
    /// or the admin role's.
    #[error("the target refused another admin connection: {0}")]
    ConnectionLimit(String),
    #[error("invalid role template name: {0}")]
    InvalidTemplateName(&'static str),
    #[error("role template {0:?} does not exist on the target")]
    TemplateNotFound(String),
    #[error("role template {template:?} is refused: {reason}")]
    TemplateTooPowerful { template: String, reason: String },
    #[error("invalid worker id: {0}")]
    InvalidWorkerId(&'static str),
    #[error("the grant's end is {0}")]
    InvalidValidUntil(&'static str),
    #[error("session role {0:?} already exists")]
    AlreadyExists(String),
    /// The connection failed while committing the role's creation, which the
    /// target may have carried out: the caller drops the role to be sure.
    #[error("the target did not confirm the creation of session role {role:?}: {message}")]
    Unconfirmed { role: String, message: String },
    #[error("refusing to manage role {0:?}: not an airlock session role")]
    NotASessionRole(String),
    #[error("cannot drop session role {role:?}: it still owns objects or holds privileges elsewhere ({detail})")]
    StillReferenced { role: String, detail: String },
    #[error(
        "cannot drop session role {role:?}: it is a member of {found} roles, not of one template to hand what it owns to"
    )]
    NoSingleTemplate { role: String, found: usize },
    /// A member of no role (its template was dropped, or its membership
    /// revoked, by hand) that owns objects in this database: there is no one
    /// to hand them to but the admin, whose power they would lend.
    #[error(
        "cannot drop session role {role:?}: it is a member of no role (its template was dropped or its membership \
         revoked) and owns objects in this database, which need an owner; give them one \
         (REASSIGN OWNED BY {role} TO <a role>) and it is dropped at the next try"
    )]
    Orphaned { role: String },
    #[error("{}", sweep_message(dropped, failed))]
    SweepIncomplete { dropped: Vec<String>, failed: Vec<(String, String)> },
    #[error("target error while {context}: {message}")]
    Database { context: &'static str, message: String },
    /// The admin connection failed (closed, reset, timed out) while `context`.
    #[error("the admin connection was lost while {context}: {message}")]
    Lost { context: &'static str, message: String },
    /// The runtime that drives admin connections is stopping.
    #[error("no admin connection to the target is available")]
    AdminUnavailable,
    /// The password's hashing did not finish (the runtime is stopping).
    #[error("hashing the session role's password failed: {0}")]
    Hashing(String),
}

/// How the admin connection reaches the target. The caller's
/// `tokio_postgres::Config::ssl_mode` decides whether TLS is attempted
/// (`disable`), preferred (`prefer`: falls back to cleartext if the server has
/// no TLS) or required (`require`).
#[derive(Clone)]
pub enum TlsChoice {
    /// No TLS; only for `ssl_mode = disable` or a loopback/`prefer` target
    /// without TLS. With `ssl_mode = require` connecting fails.
    Disable,
    /// TLS with rustls. The `ClientConfig`'s certificate verifier decides what
    /// is trusted; the server name presented is the host in the Config.
    /// `names_checked` says the verifier checks that the certificate names
    /// that host (`verify-full`): only then does the admin password go in
    /// cleartext to a target off this machine that asks for it so.
    Rustls { config: Arc<rustls::ClientConfig>, names_checked: bool },
}

impl fmt::Debug for TlsChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsChoice::Disable => f.write_str("Disable"),
            TlsChoice::Rustls { names_checked, .. } => write!(f, "Rustls {{ names_checked: {names_checked} }}"),
        }
    }
}

/// What a session role is made for.
#[derive(Debug, Clone)]
pub struct SessionRoleSpec {
    pub session_id: uuid::Uuid,
    /// Stable id of the worker that owns the session; its sweeper finds the
    /// role by it after a crash. `[A-Za-z0-9._:-]`, at most 128 chars.
    pub worker_id: String,
    /// The Postgres role the grant's role maps to on this connection.
    pub template_role: String,
    /// The grant's end; the role's `VALID UNTIL` (truncated to the second).
    pub valid_until: SystemTime,
    /// This run of the worker (random at each start, `[0-9a-f]`, at most 32
    /// chars; empty for none): a sweep of the same run leaves the role
    /// (`sweep`).
    pub run: String,
}

/// A created session role and the password to log in as it.
#[derive(Clone)]
pub struct SessionRole {
    pub name: String,
    pub password: String,
    /// The password as its verifier salted it: a login reuses it instead of
    /// hashing the password again (see `scram`).
    pub salted: SaltedPassword,
}

impl fmt::Debug for SessionRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRole").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

/// The name of the session role for a session: `airlock_<32 hex chars>`.
pub fn session_role_name(session_id: uuid::Uuid) -> String {
    format!("{ROLE_PREFIX}{}", session_id.simple())
}

/// Whether `name` is shaped like a role this module creates.
pub fn is_session_role_name(name: &str) -> bool {
    match name.strip_prefix(ROLE_PREFIX) {
        Some(hex) => hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        None => false,
    }
}

/// The most admin connections a manager holds to one target. Making and
/// dropping session roles takes a few round trips and a commit each; over one
/// connection they queued behind each other. Each counts against the target's
/// `max_connections` and the admin role's connection limit, and stays open
/// once opened; a target that refuses one more makes the manager keep to
/// what it has.
pub const ADMIN_CONNECTIONS: usize = 4;

/// What the addresses of a target share for an admin connection's TCP
/// connect when its configuration sets no connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Manages session roles over up to [`ADMIN_CONNECTIONS`] admin connections
/// to a target: the first opened by `connect`, the others when that many calls
/// overlap. Methods take `&self`, each on a connection of its own while it
/// runs; share the manager with an `Arc`. A connection that dropped is opened
/// again by a later call. Connections are opened, and driven, on the runtime
/// the manager was made on, whichever runtime calls it.
pub struct RoleManager {
    config: tokio_postgres::Config,
    tls: TlsChoice,
    runtime: tokio::runtime::Handle,
    /// One permit per call under way: at most `ceiling` run at once.
    permits: Semaphore,
    /// Open connections no call holds.
    idle: std::sync::Mutex<Vec<Client>>,
    /// Connections open, idle or held.
    live: AtomicUsize,
    /// How many may be open: the pool's size, lowered to what was open when
    /// the target refused another.
    ceiling: AtomicUsize,
    /// A connection came back, or one was lost.
    returned: Notify,
}

impl fmt::Debug for RoleManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The Config's own Debug redacts its password, but print only what helps.
        f.debug_struct("RoleManager")
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls)
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RoleManager {
    /// Connects to the target with the connection's admin credential, as
    /// described by `config` (host, port, user, password, dbname — the
    /// connection's database, where session roles' objects live — and
    /// ssl_mode).
    pub async fn connect(config: tokio_postgres::Config, tls: TlsChoice) -> Result<RoleManager, RoleError> {
        Self::with_connections(config, tls, ADMIN_CONNECTIONS).await
    }

    /// `connect`, with at most `connections` admin connections (at least one).
    pub async fn with_connections(
        config: tokio_postgres::Config,
        tls: TlsChoice,
        connections: usize,
    ) -> Result<RoleManager, RoleError> {
        let connections = connections.max(1);
        let client = open(&config, &tls).await?;
        Ok(RoleManager {
            config,
            tls,
            runtime: tokio::runtime::Handle::current(),
            permits: Semaphore::new(connections),
            idle: std::sync::Mutex::new(vec![client]),
            live: AtomicUsize::new(1),
            ceiling: AtomicUsize::new(connections),
            returned: Notify::new(),
        })
    }

    /// An admin connection for one call: an idle one, else one opened now if
    /// the ceiling allows, else the next one a call gives back.
    async fn client(&self) -> Result<AdminClient<'_>, RoleError> {
        let _permit = self.permits.acquire().await.map_err(|_| RoleError::AdminUnavailable)?;
        loop {
            // Registered before looking, so a connection given back in
            // between wakes this call.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(client) = self.take_idle() {
                return Ok(AdminClient { manager: self, client: Some(client), _permit });
            }
            // Counted before it is opened, so that calls side by side stay
            // under the ceiling; `live` is how many there were.
            let reserved = self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < self.ceiling.load(Ordering::Acquire)).then_some(live + 1)
            });
            if let Ok(live) = reserved {
                // Given back if the open fails, or this call is dropped while
                // it waits for it.
                let reservation = Reservation { manager: self, kept: false };
                match self.open_here().await {
                    Ok(client) => {
                        reservation.keep();
                        return Ok(AdminClient { manager: self, client: Some(client), _permit });
                    }
                    Err(e) => {
                        drop(reservation);
                        // A target that does not answer fails each call on its
                        // own, side by side; one whose limit (or the admin
                        // role's) was reached is kept to the connections there are.
                        if live == 0 || !matches!(e, RoleError::ConnectionLimit(_)) {
                            return Err(e);
                        }
                        self.ceiling.fetch_min(live, Ordering::AcqRel);
                        tracing::warn!(
                            open = live,
                            "the target refused another admin connection ({e}); using those open"
                        );
                        continue;
                    }
                }
            }
            returned.await;
        }
    }

    /// An idle connection that is still open; closed ones are let go.
    fn take_idle(&self) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(client) = idle.pop() {
            if !client.is_closed() {
                return Some(client);
            }
            tracing::info!("admin connection to the target was closed; another will be opened");
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    /// Opens a connection on the manager's runtime, which then drives it.
    async fn open_here(&self) -> Result<Client, RoleError> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        self.runtime.spawn(async move { open(&config, &tls).await }).await.map_err(|_| RoleError::AdminUnavailable)?
    }

    /// Gives a connection back: idle if still open, else counted as lost.
    fn give_back(&self, client: Client) {
        if client.is_closed() {
            self.live.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(client);
        }
        self.returned.notify_one();
    }

    /// Creates the session role for `spec` and returns its name and password.
    ///
    /// The template is checked in the same transaction that creates the role:
    /// it must exist and neither it nor any role it is a member of (directly or
    /// indirectly) may be SUPERUSER, CREATEROLE, CREATEDB, BYPASSRLS or
    /// REPLICATION, or one of the predefined roles that reach the server's
    /// files or programs.
    pub async fn create_session_role(&self, spec: &SessionRoleSpec) -> Result<SessionRole, RoleError> {
        validate_worker_id(&spec.worker_id)?;
        validate_run(&spec.run)?;
        validate_template_name(&spec.template_role)?;
        let until = rfc3339_utc(spec.valid_until)?;
        if spec.valid_until <= SystemTime::now() {
            return Err(RoleError::InvalidValidUntil("already in the past"));
        }
        let name = session_role_name(spec.session_id);
        let password = random_password();
        // About 0.6 ms of hashing: not on the thread relaying sessions.
        let hashed = password.clone();
        let (verifier, salted) = tokio::task::spawn_blocking(move || scram::verifier(hashed.as_bytes()))
            .await
            .map_err(|e| RoleError::Hashing(e.to_string()))?;

        let create = format!(
            "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS NOREPLICATION \
             INHERIT CONNECTION LIMIT {limit} PASSWORD {verifier} VALID UNTIL {until} IN ROLE {template}",
            role = quote_ident(&name),
            limit = SESSION_CONNECTION_LIMIT,
            verifier = quote_literal(&verifier),
            until = quote_literal(&until),
            template = quote_ident(&spec.template_role),
        );
        let comment = format!(
            "COMMENT ON ROLE {role} IS {text}",
            role = quote_ident(&name),
            text =
                quote_literal(&role_comment(&spec.worker_id, &spec.run, spec.session_id, &until, &spec.template_role)),
        );

        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| db_error("starting a transaction", &e))?;
        // As a catalog transaction (`catalog_transaction`), bounded, in one round trip.
        let settings = format!("{CATALOG_ONLY}; {CREATE_TIMEOUTS}");
        tx.batch_execute(&settings).await.map_err(|e| db_error("starting a transaction", &e))?;
        check_template(&tx, &spec.template_role).await?;
        // The statement carries only the SCRAM verifier; still, never log it.
        tx.batch_execute(&create).await.map_err(|e| match e.code() {
            Some(c) if *c == SqlState::DUPLICATE_OBJECT => RoleError::AlreadyExists(name.clone()),
            _ => db_error("creating the session role", &e),
        })?;
        tx.batch_execute(&comment).await.map_err(|e| db_error("commenting the session role", &e))?;
        tx.commit().await.map_err(|e| match e.as_db_error() {
            Some(_) => db_error("committing the session role", &e),
            // The COMMIT may have reached the target: the role may exist.
            None => RoleError::Unconfirmed { role: name.clone(), message: safe_message(&e) },
        })?;
        tracing::info!(role = %name, template = %spec.template_role, valid_until = %until, "created session role");
        Ok(SessionRole { name, password, salted })
    }

    /// Drops a session role: no more logins, its backends terminated (waiting
    /// for them to exit), what it owns in this database reassigned to its
    /// template, its remaining privileges here dropped, then the role. Dropping
    /// a role that does not exist is Ok. Only names shaped like session roles
    /// are accepted. The template is the one its comment names; a role whose
    /// comment names none (made before comments did) and that is a member of
    /// several roles is left NOLOGIN ([`RoleError::NoSingleTemplate`]). A role
    /// that is a member of no role (its template dropped by hand) is dropped
    /// if it owns nothing in this database, and otherwise left NOLOGIN
    /// ([`RoleError::Orphaned`]).
    ///
    /// `REASSIGN OWNED` and `DROP OWNED` act on the current database only (the
    /// connection's database); if the role owns objects or holds privileges in
    /// another database, the drop fails with [`RoleError::StillReferenced`]
    /// naming them, and the role stays NOLOGIN.
    pub async fn drop_session_role(&self, name: &str) -> Result<(), RoleError> {
        if !is_session_role_name(name) {
            return Err(RoleError::NotASessionRole(name.to_owned()));
        }
        let mut client = self.client().await?;
        drop_role(&mut client, name).await
    }

    /// Describes the relations with these OIDs (tables, views and the like):
    /// their schema, name, kind, columns, the tables they inherit from or are
    /// partitions of, and, for views, their definition.
    /// OIDs that name no relation are left out.
    pub async fn describe_relations(&self, oids: &[u32]) -> Result<Vec<super::catalog::Relation>, RoleError> {
        const CONTEXT: &str = "reading the catalog";
        let mut client = self.client().await?;
        let rows = catalog_query(
            &mut client,
            CONTEXT,
            "WITH RECURSIVE up(child, oid) AS ( \
                     SELECT inhrelid, inhparent FROM pg_inherits WHERE inhrelid = ANY($1) \
                     UNION SELECT up.child, i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid) \
                 SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                        CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, \
                        coalesce(array_agg(a.attnum ORDER BY a.attnum) FILTER (WHERE a.attnum > 0), '{}'), \
                        coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0), '{}'), \
                        (SELECT coalesce(array_agg(pn.nspname::text ORDER BY p.oid), '{}') FROM up \
                         JOIN pg_class p ON p.oid = up.oid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
                         WHERE up.child = c.oid), \
                        (SELECT coalesce(array_agg(p.relname::text ORDER BY p.oid), '{}') FROM up \
                         JOIN pg_class p ON p.oid = up.oid WHERE up.child = c.oid) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE c.oid = ANY($1) GROUP BY c.oid, n.nspname, c.relname, c.relkind",
            &[&oids],
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get(3).map_err(|e| db_error(CONTEXT, &e))?;
            let numbers: Vec<i16> = row.try_get(5).map_err(|e| db_error(CONTEXT, &e))?;
            let names: Vec<String> = row.try_get(6).map_err(|e| db_error(CONTEXT, &e))?;
            let ancestor_schemas: Vec<String> = row.try_get(7).map_err(|e| db_error(CONTEXT, &e))?;
            let ancestor_names: Vec<String> = row.try_get(8).map_err(|e| db_error(CONTEXT, &e))?;
            out.push(super::catalog::Relation {
                oid: row.try_get(0).map_err(|e| db_error(CONTEXT, &e))?,
                schema: row.try_get(1).map_err(|e| db_error(CONTEXT, &e))?,
                name: row.try_get(2).map_err(|e| db_error(CONTEXT, &e))?,
                is_view: matches!(kind.as_str(), "v" | "m"),
                definition: row.try_get(4).map_err(|e| db_error(CONTEXT, &e))?,
                columns: numbers.into_iter().zip(names).collect(),
                ancestors: ancestor_schemas.into_iter().zip(ancestor_names).collect(),
            });
        }
        Ok(out)
    }

    /// Every view, materialized view and inheriting or partition table of the
    /// database outside the system schemas: what masking follows masked
    /// columns through.
    pub async fn masking_relations(&self) -> Result<Vec<super::catalog::Relation>, RoleError> {
        let oids: Vec<u32> = {
            let mut client = self.client().await?;
            let rows = catalog_query(
                &mut client,
                "listing views",
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE (c.relkind IN ('v', 'm') OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)) \
                       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
                &[],
            )
            .await?;
            rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(|e| db_error("listing views", &e))?
        };
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        self.describe_relations(&oids).await
    }

    /// Drops every session role whose comment says it was made by `worker_id`
    /// in another run than `run` (for the roles a crash or a kill -9 left
    /// behind; the roles of `run`, this one, belong to live sessions). Roles
    /// of other workers are left alone. Returns the names dropped; if some
    /// could not be dropped, the others still are and the error
    /// ([`RoleError::SweepIncomplete`]) lists both.
    pub async fn sweep(&self, worker_id: &str, run: &str) -> Result<Vec<String>, RoleError> {
        validate_worker_id(worker_id)?;
        validate_run(run)?;
        let mut client = self.client().await?;
        let rows = catalog_query(
            &mut client,
            "listing session roles",
            "SELECT rolname::text, pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles \
             WHERE rolname ~ '^airlock_[0-9a-f]{32}$' ORDER BY rolname",
            &[],
        )
        .await?;
        let mut mine = Vec::new();
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| db_error("listing session roles", &e))?;
            let comment: Option<String> = row.try_get(1).map_err(|e| db_error("listing session roles", &e))?;
            let Some(comment) = comment else { continue };
            let this_run = !run.is_empty() && comment_word(&comment, "run=") == Some(run);
            if comment_word(&comment, "worker=") == Some(worker_id) && !this_run && is_session_role_name(&name) {
                mine.push(name);
            }
        }
        drop_all(&mut client, mine, "swept leftover session role").await
    }

    /// Drops session roles of any worker whose `VALID UNTIL` has passed and
    /// that no backend is logged in as: their grant has ended, and their
    /// worker is gone (its sessions' connections went with it). Safe for any
    /// worker to run (e.g. periodically), covering a worker that never comes
    /// back. A role with a backend is left to the worker relaying it: its
    /// session may go on under a later grant of the same principal, or the
    /// target's clock may run ahead of the worker's.
    pub async fn sweep_expired(&self) -> Result<Vec<String>, RoleError> {
        let mut client = self.client().await?;
        let rows = catalog_query(
            &mut client,
            "listing expired session roles",
            "SELECT r.rolname::text FROM pg_catalog.pg_roles r \
             WHERE r.rolname ~ '^airlock_[0-9a-f]{32}$' AND r.rolvaliduntil < pg_catalog.now() \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.usename = r.rolname) \
             ORDER BY r.rolname",
            &[],
        )
        .await?;
        let mut expired = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| db_error("listing expired session roles", &e))?;
            if is_session_role_name(&name) {
                expired.push(name);
            }
        }
        drop_all(&mut client, expired, "swept expired session role").await
    }
}

/// A connection counted in `live` before it is open.
struct Reservation<'a> {
    manager: &'a RoleManager,
    kept: bool,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.manager.live.fetch_sub(1, Ordering::AcqRel);
            self.manager.returned.notify_one();
        }
    }
}

/// One admin connection, a call's until this is dropped.
struct AdminClient<'a> {
    manager: &'a RoleManager,
    /// Always `Some` until dropped.
    client: Option<Client>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for AdminClient<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.manager.give_back(client);
        }
    }
}

impl std::ops::Deref for AdminClient<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Set from construction until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!("an admin client is held until dropped"))
    }
}

impl std::ops::DerefMut for AdminClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!("an admin client is held until dropped"))
    }
}

async fn open(config: &tokio_postgres::Config, tls: &TlsChoice) -> Result<Client, RoleError> {
    let opening = async {
        let (address, name) = admin_address(config)?;
        let mode = config.get_ssl_mode();
        let (connector, names_checked) = match (tls, mode) {
            (_, SslMode::Disable) | (TlsChoice::Disable, SslMode::Prefer) => (None, false),
            (TlsChoice::Disable, _) => {
                return Err(RoleError::Connect("TLS is required but no TLS configuration was given".into()));
            }
            (TlsChoice::Rustls { config, names_checked }, _) => {
                let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| RoleError::Connect(format!("invalid server name {name:?}: {e}")))?;
                (Some((tokio_rustls::TlsConnector::from(config.clone()), server_name)), *names_checked)
            }
        };
        let within = config.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
        let stream = upstream::open_stream(&address, within, connector, mode == SslMode::Prefer)
            .await
            .map_err(|e| RoleError::Connect(e.to_string()))?;
        // A target that vanished (its address black-holed after a failover)
        // fails the call within this, instead of the 15 minutes or so of TCP's
        // retransmissions: a session's role is made or its drop queued, and
        // the admin connection is replaced.
        #[cfg(target_os = "linux")]
        socket2::SockRef::from(stream.tcp())
            .set_tcp_user_timeout(Some(ADMIN_USER_TIMEOUT))
            .map_err(|e| RoleError::Connect(format!("setting the admin socket's user timeout: {e}")))?;
        let trusted = stream.may_carry_cleartext(names_checked);
        let binding = stream.tls_server_end_point();
        let tls = stream.is_tls();
        let guard = LoginGuard::new(stream, trusted, tls, binding);
        // TLS is settled: tokio_postgres only logs in, told the stream is TLS
        // (with nothing to negotiate) when it is, so that it binds its login.
        let mut login = config.clone();
        if !trusted {
            // The guard lets SCRAM through only when it can be bound: so it is.
            login.channel_binding(tokio_postgres::config::ChannelBinding::Prefer);
        }
        let client = if guard.inner.is_tls() {
            login.ssl_mode(SslMode::Require).ssl_negotiation(SslNegotiation::Direct);
            let (client, connection) = login.connect_raw(guard, SettledTls).await.map_err(|e| connect_error(&e))?;
            spawn_connection(connection);
            client
        } else {
            login.ssl_mode(SslMode::Disable);
            let (client, connection) = login.connect_raw(guard, NoTls).await.map_err(|e| connect_error(&e))?;
            spawn_connection(connection);
            client
        };
        Ok(client)
    };
    match config.get_connect_timeout() {
        Some(limit) => super::timers::timeout(*limit, opening)
            .await
            .map_err(|_| RoleError::Connect(format!("no answer from the target within {limit:?}")))?,
        None => opening.await,
    }
}

/// Where the admin connection goes (`hostaddr` when given, else `host`) and
/// the name its certificate is checked against (`host`).
fn admin_address(config: &tokio_postgres::Config) -> Result<(String, &str), RoleError> {
    let name = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.as_str(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(_)) => {
            return Err(RoleError::Connect("an admin connection over a Unix socket is not supported".into()));
        }
        None => "localhost",
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let address = match config.get_hostaddrs().first() {
        Some(ip) => std::net::SocketAddr::new(*ip, port).to_string(),
        None if name.contains(':') => format!("[{name}]:{port}"),
        None => format!("{name}:{port}"),
    };
    Ok((address, name))
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %safe_message(&e), "admin connection to the target ended");
        }
    });
}

/// A transaction on `client` whose statements resolve names in the system
/// catalog only (see [`CATALOG_ONLY`]).
async fn catalog_transaction<'a>(
    client: &'a mut Client,
    context: &'static str,
) -> Result<tokio_postgres::Transaction<'a>, RoleError> {
    let tx = client.transaction().await.map_err(|e| db_error(context, &e))?;
    tx.batch_execute(CATALOG_ONLY).await.map_err(|e| db_error(context, &e))?;
    Ok(tx)
}

/// One query in a [`catalog_transaction`], committed.
async fn catalog_query(
    client: &mut Client,
    context: &'static str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, RoleError> {
    let tx = catalog_transaction(client, context).await?;
    let rows = tx.query(sql, params).await.map_err(|e| db_error(context, &e))?;
    tx.commit().await.map_err(|e| db_error(context, &e))?;
    Ok(rows)
}

/// Refuses a template that is missing or that would confer power the session
/// must not have, directly or through (recursive) membership.
async fn check_template(tx: &tokio_postgres::Transaction<'_>, template: &str) -> Result<(), RoleError> {
    let rows = tx
        .query(
            "WITH RECURSIVE up(oid) AS ( \
                 SELECT oid FROM pg_roles WHERE rolname = $1 \
               UNION \
                 SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid) \
             SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication, \
                    (SELECT array_agg(g.rolname::text ORDER BY g.rolname) FROM pg_auth_members m \
                     JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid AND m.admin_option) \
             FROM up JOIN pg_roles r ON r.oid = up.oid",
            &[&template],
        )
        .await
        .map_err(|e| db_error("checking the role template", &e))?;
    if rows.is_empty() {
        return Err(RoleError::TemplateNotFound(template.to_owned()));
    }
    for row in rows {
        let get = |i: usize| row.try_get::<_, bool>(i).map_err(|e| db_error("checking the role template", &e));
        let name: String = row.try_get(0).map_err(|e| db_error("checking the role template", &e))?;
        let attributes = [
            ("SUPERUSER", get(1)?),
            ("CREATEROLE", get(2)?),
            ("CREATEDB", get(3)?),
            ("BYPASSRLS", get(4)?),
            ("REPLICATION", get(5)?),
        ];
        let found: Vec<&str> = attributes.iter().filter(|(_, set)| *set).map(|(attr, _)| *attr).collect();
        let via = if name == template { String::from("it") } else { format!("its membership in {name:?}") };
        if !found.is_empty() {
            return Err(RoleError::TemplateTooPowerful {
                template: template.to_owned(),
                reason: format!("{via} confers {}", found.join(", ")),
            });
        }
        // Membership it may hand out: a session could grant that role to any
        // other, and the grant would outlive the session and its role.
        let delegates: Option<Vec<String>> = row.try_get(6).map_err(|e| db_error("checking the role template", &e))?;
        if let Some(delegated) = delegates.as_deref().and_then(<[String]>::first) {
            let holder =
                if name == template { String::from("it") } else { format!("{name:?}, which it is a member of,") };
            return Err(RoleError::TemplateTooPowerful {
                template: template.to_owned(),
                reason: format!(
                    "{holder} holds {delegated:?} WITH ADMIN OPTION: a session could grant it to other roles, \
                     beyond the session's end"
                ),
            });
        }
        if FORBIDDEN_PREDEFINED_ROLES.contains(&name.as_str()) {
            return Err(RoleError::TemplateTooPowerful {
                template: template.to_owned(),
                reason: format!("{via} gives access to the server's files or programs"),
            });
        }
        if name.starts_with(ROLE_PREFIX) {
            return Err(RoleError::TemplateTooPowerful {
                template: template.to_owned(),
                reason: format!("{via} is an airlock session role"),
            });
        }
    }
    Ok(())
}

/// Drops each role, going on past failures (one role that cannot be dropped
/// must not keep the others alive); Ok with the names if all went, otherwise
/// [`RoleError::SweepIncomplete`] naming both lists.
async fn drop_all(client: &mut Client, names: Vec<String>, what: &'static str) -> Result<Vec<String>, RoleError> {
    let mut dropped = Vec::with_capacity(names.len());
    let mut failed = Vec::new();
    for name in names {
        match drop_role(client, &name).await {
            Ok(()) => {
                tracing::info!(role = %name, "{what}");
                dropped.push(name);
            }
            Err(e) => {
                tracing::warn!(role = %name, error = %e, "could not drop session role");
                failed.push((name, e.to_string()));
            }
        }
    }
    if failed.is_empty() { Ok(dropped) } else { Err(RoleError::SweepIncomplete { dropped, failed }) }
}

fn sweep_message(dropped: &[String], failed: &[(String, String)]) -> String {
    let failures: Vec<String> = failed.iter().map(|(role, error)| format!("{role}: {error}")).collect();
    format!("sweep dropped {} session role(s) but not {}: {}", dropped.len(), failed.len(), failures.join("; "))
}

async fn drop_role(client: &mut Client, name: &str) -> Result<(), RoleError> {
    // The role and the roles it is a member of: its template, unless someone
    // changed it by hand.
    let rows = catalog_query(
        client,
        "looking up the session role",
        "SELECT coalesce(pg_catalog.array_agg(DISTINCT t.rolname::text) FILTER (WHERE t.rolname IS NOT NULL), '{}'), \
                pg_catalog.shobj_description(r.oid, 'pg_authid') \
         FROM pg_catalog.pg_roles r LEFT JOIN pg_catalog.pg_auth_members m ON m.member = r.oid \
         LEFT JOIN pg_catalog.pg_roles t ON t.oid = m.roleid \
         WHERE r.rolname = $1 GROUP BY r.oid",
        &[&name],
    )
    .await?;
    let Some(row) = rows.first() else { return Ok(()) };
    let templates: Vec<String> = row.try_get(0).map_err(|e| db_error("looking up the session role", &e))?;
    let comment: Option<String> = row.try_get(1).map_err(|e| db_error("looking up the session role", &e))?;
    // The template it was made a member of, as its comment names it: a session
    // whose template may grant other roles may have joined them too. (Roles
    // made before comments named it: their one membership.)
    let named = comment.as_deref().and_then(comment_template).filter(|t| templates.contains(t));
    let template = named.or_else(|| match templates.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    });
    // A member of no role at all: dropped as long as it owns nothing here.
    let orphan = templates.is_empty();
    let role = quote_ident(name);
    // 1. No new logins (also stops a client that has the password
    //    reconnecting), committed before anything else.
    match client.batch_execute(&format!("ALTER ROLE {role} NOLOGIN")).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(()),
        Err(e) => return Err(db_error("disabling the session role's login", &e)),
    }
    if template.is_none() && !orphan {
        // Left NOLOGIN; its backends are ended where the admin may end them
        // without taking its privileges (a superuser).
        let _ =
            catalog_query(client, "ending the session role's backends", TERMINATE, &[&name, &TERMINATE_WAIT_MS]).await;
        return Err(RoleError::NoSingleTemplate { role: name.to_owned(), found: templates.len() });
    }
    // 2. In one transaction, all or nothing:
    //    - the admin user takes the role's privileges: a superuser has them,
    //      but an admin with CREATEROLE may end the role's backends and take
    //      or drop what it owns only as a member of it. Never committed on
    //      its own: no one else ever sees the admin as a member of the role
    //      or, through it, of its template (which `+group` lines of the
    //      target's pg_hba.conf would match);
    //    - its sessions end, in every database, waiting for each backend to
    //      exit so its locks and temporary objects are released;
    //    - what it owns in this database goes to its template, whose power
    //      any session of it has anyway; never to the admin user, whose power
    //      a function or view the session left behind (SECURITY DEFINER, or
    //      readable by others) would lend to whoever uses it. A role that is
    //      a member of no role has no one to hand objects to: it goes only if
    //      it owns none here (checked once its backends are gone, so that
    //      none is made after the check), else the transaction fails with
    //      `ORPHAN_OWNS`;
    //    - its remaining privileges here, then the role, go.
    //    One simple query is one implicit transaction, which the server
    //    commits without waiting for us: a worker that stalls (or dies) here
    //    leaves nothing half done and no role rows locked.
    let literal = quote_literal(name);
    let terminate = format!(
        "SELECT pg_catalog.pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_catalog.pg_stat_activity \
         WHERE usename = {literal} AND pid <> pg_catalog.pg_backend_pid()"
    );
    let end_and_hand_over = match &template {
        Some(template) => format!("{terminate}; REASSIGN OWNED BY {role} TO {}", quote_ident(template)),
        // Every backend must be gone before the check (one still there
        // could make an object after it, which DROP OWNED would destroy):
        // each is ended, then the activity view, which a transaction reads
        // once, is read again to see that none is left. Default privileges
        // and user mappings count as owned, but DROP OWNED is what clears
        // them, and they lend no one anything.
        None => format!(
            "DO $orphan$ BEGIN \
                 PERFORM FROM ({terminate}) AS t; \
                 PERFORM pg_catalog.pg_stat_clear_snapshot(); \
                 IF EXISTS (SELECT FROM pg_catalog.pg_stat_activity \
                   WHERE usename = {literal} AND pid <> pg_catalog.pg_backend_pid()) THEN \
                   RAISE EXCEPTION USING ERRCODE = '{BACKEND_STAYED}', \
                     MESSAGE = 'a backend of the role did not exit within {TERMINATE_WAIT_MS} ms'; \
                 END IF; \
                 IF EXISTS (SELECT FROM pg_catalog.pg_shdepend d \
                   WHERE d.deptype = 'o' AND d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass \
                     AND d.refobjid = {literal}::pg_catalog.regrole \
                     AND d.classid NOT IN ('pg_catalog.pg_default_acl'::pg_catalog.regclass, \
                                           'pg_catalog.pg_user_mapping'::pg_catalog.regclass) \
                     AND d.dbid = (SELECT oid FROM pg_catalog.pg_database \
                                   WHERE datname = pg_catalog.current_database())) THEN \
                   RAISE EXCEPTION USING ERRCODE = '{ORPHAN_OWNS}', MESSAGE = 'the role owns objects'; \
                 END IF; END $orphan$"
        ),
    };
    let statements = format!(
        "{CATALOG_ONLY}; SET LOCAL lock_timeout = {timeout}; GRANT {role} TO CURRENT_USER; \
         {end_and_hand_over}; DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}",
        timeout = quote_literal(DROP_LOCK_TIMEOUT),
    );
    match client.batch_execute(&statements).await {
        Ok(()) => {}
        // The role is gone (dropped meanwhile), or the template is (dropped
        // since it was looked up): a role still there is tried again.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
            let left = catalog_query(
                client,
                "looking up the session role",
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&name],
            )
            .await?;
            if left.is_empty() {
                return Ok(());
            }
            return Err(db_error("dropping the session role", &e));
        }
        Err(e) if template.is_none() && e.code().map(SqlState::code) == Some(ORPHAN_OWNS) => {
            return Err(RoleError::Orphaned { role: name.to_owned() });
        }
        Err(e) if e.code() == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
            let detail =
                e.as_db_error().and_then(|d| d.detail().map(str::to_owned)).unwrap_or_else(|| safe_message(&e));
            return Err(RoleError::StillReferenced { role: name.to_owned(), detail: detail.replace('\n', "; ") });
        }
        Err(e) => return Err(db_error("dropping the session role", &e)),
    }
    tracing::info!(role = %name, template = template.as_deref().unwrap_or("(none)"), "dropped session role");
    Ok(())
}

/// 32 random bytes from the OS, base64url without padding (43 chars; no
/// character that SASLprep changes or SQL needs escaped).
fn random_password() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `airlock worker=<id> [run=<run>] session=<uuid> until=<rfc3339>
/// template=<the template's name in hex>`.
fn role_comment(worker_id: &str, run: &str, session_id: uuid::Uuid, until: &str, template: &str) -> String {
    let run = if run.is_empty() { String::new() } else { format!(" run={run}") };
    format!(
        "airlock worker={worker_id}{run} session={} until={until} template={}",
        session_id.hyphenated(),
        hex::encode(template)
    )
}

/// The template a role comment names, if any.
fn comment_template(comment: &str) -> Option<String> {
    let bytes = hex::decode(comment_word(comment, "template=")?).ok()?;
    String::from_utf8(bytes).ok()
}

/// The value of `key` (`worker=`, `run=`) in a role comment written by
/// [`role_comment`], if any.
fn comment_word<'a>(comment: &'a str, key: &str) -> Option<&'a str> {
    let mut words = comment.split_ascii_whitespace();
    if words.next() != Some("airlock") {
        return None;
    }
    words.find_map(|w| w.strip_prefix(key))
}

/// A run's id: lowercase hex, at most 32 chars (a role's comment carries it).
fn validate_run(run: &str) -> Result<(), RoleError> {
    if run.len() > 32 || !run.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(RoleError::InvalidWorkerId("a run id is up to 32 lowercase hex digits"));
    }
    Ok(())
}

fn validate_worker_id(worker_id: &str) -> Result<(), RoleError> {
    if worker_id.is_empty() {
        return Err(RoleError::InvalidWorkerId("empty"));
    }
    if worker_id.len() > MAX_WORKER_ID_LEN {
        return Err(RoleError::InvalidWorkerId("longer than 128 characters"));
    }
    if !worker_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err(RoleError::InvalidWorkerId("only letters, digits and . _ : - are allowed"));
    }
    Ok(())
}

fn validate_template_name(template: &str) -> Result<(), RoleError> {
    if template.is_empty() {
        return Err(RoleError::InvalidTemplateName("empty"));
    }
    if template.len() > MAX_IDENTIFIER_LEN {
        return Err(RoleError::InvalidTemplateName("longer than 63 bytes"));
    }
    if template.contains('\0') {
        return Err(RoleError::InvalidTemplateName("contains a NUL character"));
    }
    Ok(())
}

/// A quoted SQL identifier: `"` around it, embedded `"` doubled. Callers
/// refuse NUL first (Postgres cannot carry it in a statement).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A quoted SQL string literal, as Postgres's `quote_literal` makes it: `'`
/// doubled, and if there is a backslash, an `E''` literal with backslashes
/// doubled (correct whatever `standard_conforming_strings` is).
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') { format!("E'{}'", quoted.replace('\\', "\\\\")) } else { format!("'{quoted}'") }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time at or after the epoch, truncated to the
/// second (so the role expires no later than the grant).
fn rfc3339_utc(t: SystemTime) -> Result<String, RoleError> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| RoleError::InvalidValidUntil("before 1970"))?.as_secs();
    let secs = i64::try_from(secs).map_err(|_| RoleError::InvalidValidUntil("too far in the future"))?;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if y > 9999 {
        return Err(RoleError::InvalidValidUntil("too far in the future"));
    }
    Ok(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A tokio_postgres error as text without secrets: for a server error its
/// SQLSTATE and message (never the statement), otherwise the error's own text
/// and its causes (tokio_postgres does not put passwords in them).
fn safe_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            // tokio_postgres's own text ("error performing TLS handshake") hides
            // the cause; add the chain (I/O, TLS, DNS errors: no secrets).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

fn db_error(context: &'static str, e: &tokio_postgres::Error) -> RoleError {
    // The connection closed, or its socket failed (reset, timed out): not
    // the target's answer. (tokio_postgres reports a message it could not
    // read as invalid data: that is the target's.)
    let io_failed = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| !matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput));
    let lost = e.is_closed() || io_failed;
    if lost {
        RoleError::Lost { context, message: safe_message(e) }
    } else {
        RoleError::Database { context, message: safe_message(e) }
    }
}

fn connect_error(e: &tokio_postgres::Error) -> RoleError {
    match e.code() {
        Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => RoleError::ConnectionLimit(safe_message(e)),
        _ => RoleError::Connect(safe_message(e)),
    }
}

// ---- what the admin connection's login may answer ----

/// The admin connection's stream. Until the target has accepted the login it
/// reads the target's messages as they pass, and fails the connection before
/// tokio_postgres answers a request that would hand the admin password, or a
/// login made with it, to whoever answers at the target's address: unless the
/// target is on this machine or its certificate was checked to name it, a
/// request for the password in cleartext (`password`, `ldap` or `pam` in
/// pg_hba.conf, which an impostor would simply keep), as MD5, or by SCRAM
/// without channel binding (both of which an impostor in the middle could
/// relay to the real target, and then use the admin's session), or a SCRAM
/// challenge of fewer than 4096 iterations (whose proof an impostor could
/// test password guesses against cheaply). After the
/// login, bytes pass untouched.
pub struct LoginGuard<S> {
    inner: S,
    /// The target is on this machine, or its certificate was checked to name it.
    trusted: bool,
    /// The stream is TLS.
    tls: bool,
    /// The `tls-server-end-point` data of the target's certificate, over TLS.
    binding: Option<Vec<u8>>,
    /// The target's messages so far, until AuthenticationOk or an error;
    /// `None` after.
    seen: Option<Vec<u8>>,
}

/// More than the messages before a login ever take (SASL's are the largest,
/// well under a kilobyte).
const LOGIN_MESSAGES_LIMIT: usize = 64 * 1024;

/// What an admin connection's login may answer.
#[derive(Debug, Clone, Copy)]
struct LoginRule {
    /// The target is on this machine, or its certificate was checked to name
    /// it: any method it asks for.
    pub trusted: bool,
    /// The login can be bound to the target's certificate (TLS, with a
    /// certificate whose signature names its hash).
    pub bound: bool,
    /// The stream is TLS (for why it cannot be bound, when it cannot).
    pub tls: bool,
}

impl LoginRule {
    /// Why the request for authentication `code` (with `body`, after the
    /// code) is not answered, if it is not.
    fn refusal(self, code: i32, body: &[u8]) -> Option<String> {
        if self.trusted {
            return None;
        }
        const ELSEWHERE: &str = "the target is off this machine without a certificate checked to name it";
        const FIX: &str = "use scram-sha-256 in the target's pg_hba.conf over TLS, or sslmode verify-full";
        match code {
            3 => Some(format!(
                "the target asks for the admin password in cleartext and {ELSEWHERE}; the password was not sent \
                 ({FIX})"
            )),
            5 => Some(format!(
                "the target asks for the admin password as MD5, which an impostor in the middle could relay, and \
                 {ELSEWHERE}; nothing was sent ({FIX})"
            )),
            10 => {
                let plus = body.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256-PLUS");
                (!(plus && self.bound)).then(|| {
                    let why = super::upstream::why_unbound(self.tls, plus);
                    format!(
                        "the admin login cannot be bound to the target's certificate ({why}), so an impostor in \
                         the middle could relay it, and {ELSEWHERE}; nothing was sent ({FIX})"
                    )
                })
            }
            // SASLContinue: a proof for few iterations lets whoever answered
            // try passwords against it offline, cheaply.
            11 => super::scram::iterations_asked(body).filter(|asked| *asked < super::scram::ITERATIONS).map(|asked| {
                format!(
                    "the target asks for SCRAM with {asked} iterations (fewer than {}) and {ELSEWHERE}: whoever \
                     answered could guess the admin password from the proof cheaply; no proof was sent (use sslmode \
                     verify-full)",
                    super::scram::ITERATIONS
                )
            }),
            _ => None,
        }
    }
}

impl<S> LoginGuard<S> {
    /// `binding`: the channel binding data of the target's certificate, when
    /// the stream is TLS and the certificate names a hash.
    pub fn new(inner: S, trusted: bool, tls: bool, binding: Option<Vec<u8>>) -> LoginGuard<S> {
        LoginGuard { inner, trusted, tls, binding, seen: Some(Vec::new()) }
    }

    /// Looks at bytes just read: an error stops them reaching tokio_postgres.
    pub fn inspect(&mut self, read: &[u8]) -> io::Result<()> {
        let rule = LoginRule { trusted: self.trusted, bound: self.binding.is_some(), tls: self.tls };
        let Some(seen) = self.seen.as_mut() else { return Ok(()) };
        seen.extend_from_slice(read);
        let mut at = 0;
        loop {
            let rest = seen.get(at..).unwrap_or_default();
            let (tag, len) = match super::protocol::frame::peek_frame(rest, LOGIN_MESSAGES_LIMIT) {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };
            if tag == b'E' {
                // The login failed: tokio_postgres reports the target's error.
                self.seen = None;
                return Ok(());
            }
            if tag == b'R' {
                // Every authentication message carries its code.
                let code = rest.get(5..9).filter(|_| len >= 9);
                let Some(code) = code.and_then(|b| <[u8; 4]>::try_from(b).ok()).map(i32::from_be_bytes) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "an authentication request without its code",
                    ));
                };
                if code == 0 {
                    self.seen = None;
                    return Ok(());
                }
                if let Some(why) = rule.refusal(code, rest.get(9..len).unwrap_or_default()) {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
                }
            }
            at += len;
        }
        seen.drain(..at);
        if seen.len() > LOGIN_MESSAGES_LIMIT {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the target's login messages are too long"));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LoginGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().get(before..).unwrap_or_default();
        Poll::Ready(self.inspect(read))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LoginGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hands tokio_postgres an admin connection's stream whose TLS is already
/// settled (by `upstream::open_stream`, with direct negotiation, so nothing
/// more is said) as it is: as a TLS stream, it reports the channel binding
/// data of the target's certificate.
struct SettledTls;

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsConnect<LoginGuard<S>> for SettledTls {
    type Stream = LoginGuard<S>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<LoginGuard<S>>>;

    fn connect(self, stream: LoginGuard<S>) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for LoginGuard<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match &self.binding {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash.clone()),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

/// Whether TLS was negotiated on an admin connection is visible in
/// `pg_stat_ssl`; exposed for the caller's health checks and tests.
impl RoleManager {
    pub async fn connection_uses_tls(&self) -> Result<bool, RoleError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .map_err(|e| db_error("reading pg_stat_ssl", &e))?;
        row.try_get(0).map_err(|e| db_error("reading pg_stat_ssl", &e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("app_readonly"), "\"app_readonly\"");
        assert_eq!(quote_ident("x\"; DROP ROLE postgres; --"), "\"x\"\"; DROP ROLE postgres; --\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn names() {
        let id = uuid::Uuid::new_v4();
        let name = session_role_name(id);
        assert!(is_session_role_name(&name));
        assert_eq!(name.len(), 8 + 32);
        assert!(!is_session_role_name("airlock_"));
        assert!(!is_session_role_name("postgres"));
        assert!(!is_session_role_name(&name.to_uppercase()));
        assert!(!is_session_role_name(&format!("{name}0")));
        assert!(!is_session_role_name("airlock_0123456789abcdef0123456789abcdeg"));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH).unwrap(), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_999); // 2024-02-29T12:34:56.999Z
        assert_eq!(rfc3339_utc(t).unwrap(), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_utc(t).unwrap(), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31T23:59:59Z
        assert_eq!(rfc3339_utc(t).unwrap(), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn comments_and_ids() {
        let id = uuid::Uuid::new_v4();
        let c = role_comment("worker-1", "", id, "2030-01-01T00:00:00Z", "app readonly \"x\"");
        assert_eq!(comment_word(&c, "worker="), Some("worker-1"));
        assert_eq!(comment_word(&c, "run="), None);
        assert_eq!(comment_template(&c).as_deref(), Some("app readonly \"x\""));
        assert_eq!(comment_template("airlock worker=w template=zz"), None);
        assert_eq!(comment_word("worker=worker-1", "worker="), None);
        let c = role_comment("worker-1", "0a1b", id, "2030-01-01T00:00:00Z", "t");
        assert_eq!((comment_word(&c, "worker="), comment_word(&c, "run=")), (Some("worker-1"), Some("0a1b")));
        assert!(validate_run("").is_ok() && validate_run("0123456789abcdef0123456789abcdef").is_ok());
        assert!(validate_run("0123456789abcdef0123456789abcdef0").is_err());
        assert!(validate_run("ABC").is_err() && validate_run("a b").is_err() && validate_run("x'").is_err());
        assert!(validate_worker_id("w-1.a:b_c").is_ok());
        assert!(validate_worker_id("w 1").is_err());
        assert!(validate_worker_id("").is_err());
        assert!(validate_worker_id("w'1").is_err());
    }

    #[test]
    fn passwords_are_random_and_redacted() {
        let (a, b) = (random_password(), random_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        let (_, salted) = scram::verifier(a.as_bytes());
        let role = SessionRole { name: "airlock_x".into(), password: a.clone(), salted };
        assert!(!format!("{role:?}").contains(&a));
    }

    /// The guard reads messages however the reads split them, and stands
    /// aside once the login is accepted.
    #[test]
    fn the_login_guard_finds_a_cleartext_request_across_reads() {
        fn auth(code: i32) -> Vec<u8> {
            let mut m = vec![b'R'];
            m.extend_from_slice(&8i32.to_be_bytes());
            m.extend_from_slice(&code.to_be_bytes());
            m
        }
        // NegotiateProtocolVersion, then a cleartext request, a byte at a time.
        let mut stream = vec![b'v'];
        stream.extend_from_slice(&8i32.to_be_bytes());
        stream.extend_from_slice(&[0, 0, 0, 0]);
        stream.extend(auth(3));
        let mut refused = LoginGuard::new((), false, true, Some(vec![0; 32]));
        let failed = stream.iter().position(|b| refused.inspect(std::slice::from_ref(b)).is_err());
        assert_eq!(failed, Some(stream.len() - 1), "refused once the request is whole");

        let mut allowed = LoginGuard::new((), true, false, None);
        assert!(allowed.inspect(&stream).is_ok());
        assert!(allowed.seen.is_some(), "still watching before the login is accepted");
        let mut ok = auth(0);
        ok.extend(auth(3)); // after the login: not a request, and not looked at
        assert!(allowed.inspect(&ok).is_ok());
        assert!(allowed.seen.is_none());

        // A declared length past the bound, or a negative one, ends it too.
        let mut huge = vec![b'R'];
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(LoginGuard::new((), true, false, None).inspect(&huge).is_err());
        let mut negative = vec![b'R'];
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(LoginGuard::new((), true, false, None).inspect(&negative).is_err());
        // A request too short for its code is not read into the next message.
        let mut short = vec![b'R', 0, 0, 0, 4];
        short.extend(auth(0));
        assert!(LoginGuard::new((), false, true, Some(vec![0; 32])).inspect(&short).is_err());
    }

    /// Off this machine without a checked name, the admin login goes only
    /// into a login bound to the target's certificate: MD5, and SCRAM that
    /// cannot be bound, are refused; a target that asks nothing is not.
    #[test]
    fn the_login_guard_lets_only_a_bound_login_through_to_a_target_elsewhere() {
        fn request(code: i32, body: &[u8]) -> Vec<u8> {
            let mut m = vec![b'R'];
            m.extend_from_slice(&i32::try_from(8 + body.len()).unwrap().to_be_bytes());
            m.extend_from_slice(&code.to_be_bytes());
            m.extend_from_slice(body);
            m
        }
        let md5 = request(5, &[1, 2, 3, 4]);
        let scram_only = request(10, b"SCRAM-SHA-256\0\0");
        let plus = request(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let accepted = request(0, b"");
        let answered = |(trusted, tls, binding): (bool, bool, Option<Vec<u8>>), m: &[u8]| {
            LoginGuard::new((), trusted, tls, binding).inspect(m).map_err(|e| e.to_string())
        };

        let elsewhere_bound = || (false, true, Some(vec![0; 32]));
        let e = answered(elsewhere_bound(), &md5).unwrap_err();
        assert!(e.contains("as MD5") && e.contains("verify-full"), "{e}");
        let e = answered(elsewhere_bound(), &scram_only).unwrap_err();
        assert!(e.contains("does not offer SCRAM-SHA-256-PLUS"), "{e}");
        answered(elsewhere_bound(), &plus).unwrap();
        answered(elsewhere_bound(), &accepted).unwrap();

        let e = answered((false, true, None), &plus).unwrap_err();
        assert!(e.contains("names no hash"), "{e}");
        // Plain TCP (`disable`) has nothing to bind to, and says so.
        let e = answered((false, false, None), &plus).unwrap_err();
        assert!(e.contains("not TLS"), "{e}");

        // On this machine, or with the name checked, every method.
        for binding in [None, Some(vec![0; 32])] {
            for m in [&md5, &scram_only, &plus, &accepted] {
                answered((true, binding.is_some(), binding.clone()), m).unwrap();
            }
        }
    }
}
