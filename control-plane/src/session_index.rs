//! The sessions the log records, one row each, for listing and filtering
//! (`GET /v1/sessions`). A read model of `SessionOpened` and `SessionClosed`
//! in the control plane's database: before reading it, the control plane
//! brings it up to date from the log ([`SessionIndex::apply`] moves a
//! per-tenant cursor in the transaction that stores the rows, and only from
//! where it stood, so concurrent readers never skip or reorder an event).

use airlock_core::TenantId;
use airlock_core::event::SessionInfo;
use airlock_core::session::{Outcome, outcome_of};
use anyhow::Context;
use sqlx::{PgPool, Postgres, QueryBuilder, Sqlite, SqlitePool};

use crate::eventlog::records::{from_db, to_db};

/// A change to the index, from one event.
#[derive(Debug, Clone)]
pub enum Change {
    Opened {
        session: SessionInfo,
        seq: u64,
        at_ms: i64,
    },
    Closed {
        session_id: String,
        at_ms: i64,
        duration_ms: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
        reason: String,
    },
}

/// One session as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub session_id: String,
    pub opened_seq: i64,
    pub opened_at: i64,
    pub grant_id: String,
    pub connection_id: String,
    pub subject: String,
    pub issuer: String,
    pub client_addr: String,
    pub worker_id: String,
    pub target_role: String,
    pub closed_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub bytes_from_client: i64,
    pub bytes_to_client: i64,
    pub close_reason: Option<String>,
    pub outcome: String,
}

/// Which sessions, newest first.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub subject: Option<String>,
    pub connection_id: Option<String>,
    /// Opened at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Opened at or before (unix ms).
    pub until_ms: Option<i64>,
    pub outcome: Option<Outcome>,
    /// Strictly older than this (opened_at, session id): the page before it.
    pub before: Option<(i64, String)>,
    pub limit: u32,
}

#[async_trait::async_trait]
pub trait SessionIndex: Send + Sync + 'static {
    /// The last seq of the tenant's log the index reflects.
    async fn cursor(&self, tenant: TenantId) -> anyhow::Result<u64>;
    /// Stores `changes` (the session events of `from + 1..=to`) and moves the
    /// cursor to `to`, unless it no longer stands at `from` (another reader
    /// got there first): then nothing is written and the answer is false.
    async fn apply(&self, tenant: TenantId, from: u64, to: u64, changes: &[Change]) -> anyhow::Result<bool>;
    async fn list(&self, tenant: TenantId, query: &SessionQuery) -> anyhow::Result<Vec<SessionRow>>;
    async fn get(&self, tenant: TenantId, session_id: &str) -> anyhow::Result<Option<SessionRow>>;
}

const COLUMNS: &str = "session_id, opened_seq, opened_at, grant_id, connection_id, subject, issuer, client_addr, \
                       worker_id, target_role, closed_at, duration_ms, bytes_from_client, bytes_to_client, \
                       close_reason, outcome";

/// The bytes and durations the log holds as u64, clamped into the database's integer.
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The list query for either database (`QueryBuilder` writes each one's placeholders).
macro_rules! list_query {
    ($db:ty, $tenant:expr, $q:expr) => {{
        let q: &SessionQuery = $q;
        let mut b = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM sessions WHERE tenant_id = "));
        b.push_bind($tenant.to_string());
        if let Some(subject) = &q.subject {
            b.push(" AND subject = ").push_bind(subject.clone());
        }
        if let Some(connection) = &q.connection_id {
            b.push(" AND connection_id = ").push_bind(connection.clone());
        }
        if let Some(since) = q.since_ms {
            b.push(" AND opened_at >= ").push_bind(since);
        }
        if let Some(until) = q.until_ms {
            b.push(" AND opened_at <= ").push_bind(until);
        }
        if let Some(outcome) = q.outcome {
            b.push(" AND outcome = ").push_bind(outcome.as_str().to_owned());
        }
        if let Some((at, id)) = &q.before {
            b.push(" AND (opened_at < ").push_bind(*at);
            b.push(" OR (opened_at = ").push_bind(*at);
            b.push(" AND session_id < ").push_bind(id.clone());
            b.push("))");
        }
        b.push(" ORDER BY opened_at DESC, session_id DESC LIMIT ").push_bind(i64::from(q.limit));
        b
    }};
}

pub struct PgSessionIndex {
    pool: PgPool,
}

impl PgSessionIndex {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl SessionIndex for PgSessionIndex {
    async fn cursor(&self, tenant: TenantId) -> anyhow::Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM session_index_cursors WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await
            .context("reading the session index's cursor")?;
        from_db("session index cursor", seq.unwrap_or(0))
    }

    async fn apply(&self, tenant: TenantId, from: u64, to: u64, changes: &[Change]) -> anyhow::Result<bool> {
        let tenant_id = tenant.to_string();
        let context = || format!("indexing the sessions of tenant {tenant}");
        let mut tx = self.pool.begin().await.with_context(context)?;
        sqlx::query("INSERT INTO session_index_cursors (tenant_id, seq) VALUES ($1, 0) ON CONFLICT DO NOTHING")
            .bind(&tenant_id)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        // The row lock makes a concurrent apply wait here and then see our cursor.
        let current: i64 = sqlx::query_scalar("SELECT seq FROM session_index_cursors WHERE tenant_id = $1 FOR UPDATE")
            .bind(&tenant_id)
            .fetch_one(&mut *tx)
            .await
            .with_context(context)?;
        if from_db("session index cursor", current)? != from {
            return Ok(false);
        }
        for change in changes {
            match change {
                Change::Opened { session: s, seq, at_ms } => {
                    sqlx::query(
                        "INSERT INTO sessions (tenant_id, session_id, opened_seq, opened_at, grant_id, connection_id, \
                         subject, issuer, client_addr, worker_id, target_role, outcome) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'open') ON CONFLICT DO NOTHING",
                    )
                    .bind(&tenant_id)
                    .bind(s.id.to_string())
                    .bind(to_db(*seq)?)
                    .bind(*at_ms)
                    .bind(s.grant_id.to_string())
                    .bind(s.connection_id.to_string())
                    .bind(&s.subject)
                    .bind(&s.issuer)
                    .bind(&s.client_addr)
                    .bind(&s.worker_id)
                    .bind(&s.target_role)
                    .execute(&mut *tx)
                    .await
                    .with_context(context)?;
                }
                Change::Closed { session_id, at_ms, duration_ms, bytes_from_client, bytes_to_client, reason } => {
                    sqlx::query(
                        "UPDATE sessions SET closed_at = $3, duration_ms = $4, bytes_from_client = $5, \
                         bytes_to_client = $6, close_reason = $7, outcome = $8 WHERE tenant_id = $1 AND session_id = $2",
                    )
                    .bind(&tenant_id)
                    .bind(session_id)
                    .bind(*at_ms)
                    .bind(clamp(*duration_ms))
                    .bind(clamp(*bytes_from_client))
                    .bind(clamp(*bytes_to_client))
                    .bind(reason)
                    .bind(outcome_of(reason).as_str())
                    .execute(&mut *tx)
                    .await
                    .with_context(context)?;
                }
            }
        }
        sqlx::query("UPDATE session_index_cursors SET seq = $2 WHERE tenant_id = $1")
            .bind(&tenant_id)
            .bind(to_db(to)?)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(true)
    }

    async fn list(&self, tenant: TenantId, query: &SessionQuery) -> anyhow::Result<Vec<SessionRow>> {
        let mut b = list_query!(Postgres, tenant, query);
        b.build_query_as().fetch_all(&self.pool).await.context("listing sessions")
    }

    async fn get(&self, tenant: TenantId, session_id: &str) -> anyhow::Result<Option<SessionRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM sessions WHERE tenant_id = $1 AND session_id = $2"))
            .bind(tenant.to_string())
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await
            .context("reading a session")
    }
}

pub struct SqliteSessionIndex {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteSessionIndex {
    pub fn new(read: SqlitePool, write: SqlitePool) -> Self {
        Self { read, write }
    }
}

#[async_trait::async_trait]
impl SessionIndex for SqliteSessionIndex {
    async fn cursor(&self, tenant: TenantId) -> anyhow::Result<u64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM session_index_cursors WHERE tenant_id = ?1")
            .bind(tenant.to_string())
            .fetch_optional(&self.read)
            .await
            .context("reading the session index's cursor")?;
        from_db("session index cursor", seq.unwrap_or(0))
    }

    async fn apply(&self, tenant: TenantId, from: u64, to: u64, changes: &[Change]) -> anyhow::Result<bool> {
        let tenant_id = tenant.to_string();
        let context = || format!("indexing the sessions of tenant {tenant}");
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.with_context(context)?;
        let current: Option<i64> = sqlx::query_scalar("SELECT seq FROM session_index_cursors WHERE tenant_id = ?1")
            .bind(&tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .with_context(context)?;
        if from_db("session index cursor", current.unwrap_or(0))? != from {
            return Ok(false);
        }
        for change in changes {
            match change {
                Change::Opened { session: s, seq, at_ms } => {
                    sqlx::query(
                        "INSERT INTO sessions (tenant_id, session_id, opened_seq, opened_at, grant_id, connection_id, \
                         subject, issuer, client_addr, worker_id, target_role, outcome) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'open') ON CONFLICT DO NOTHING",
                    )
                    .bind(&tenant_id)
                    .bind(s.id.to_string())
                    .bind(to_db(*seq)?)
                    .bind(*at_ms)
                    .bind(s.grant_id.to_string())
                    .bind(s.connection_id.to_string())
                    .bind(&s.subject)
                    .bind(&s.issuer)
                    .bind(&s.client_addr)
                    .bind(&s.worker_id)
                    .bind(&s.target_role)
                    .execute(&mut *tx)
                    .await
                    .with_context(context)?;
                }
                Change::Closed { session_id, at_ms, duration_ms, bytes_from_client, bytes_to_client, reason } => {
                    sqlx::query(
                        "UPDATE sessions SET closed_at = ?3, duration_ms = ?4, bytes_from_client = ?5, \
                         bytes_to_client = ?6, close_reason = ?7, outcome = ?8 WHERE tenant_id = ?1 AND session_id = ?2",
                    )
                    .bind(&tenant_id)
                    .bind(session_id)
                    .bind(*at_ms)
                    .bind(clamp(*duration_ms))
                    .bind(clamp(*bytes_from_client))
                    .bind(clamp(*bytes_to_client))
                    .bind(reason)
                    .bind(outcome_of(reason).as_str())
                    .execute(&mut *tx)
                    .await
                    .with_context(context)?;
                }
            }
        }
        sqlx::query(
            "INSERT INTO session_index_cursors (tenant_id, seq) VALUES (?1, ?2) \
             ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq",
        )
        .bind(&tenant_id)
        .bind(to_db(to)?)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(true)
    }

    async fn list(&self, tenant: TenantId, query: &SessionQuery) -> anyhow::Result<Vec<SessionRow>> {
        let mut b = list_query!(Sqlite, tenant, query);
        b.build_query_as().fetch_all(&self.read).await.context("listing sessions")
    }

    async fn get(&self, tenant: TenantId, session_id: &str) -> anyhow::Result<Option<SessionRow>> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM sessions WHERE tenant_id = ?1 AND session_id = ?2"))
            .bind(tenant.to_string())
            .bind(session_id)
            .fetch_optional(&self.read)
            .await
            .context("reading a session")
    }
}
