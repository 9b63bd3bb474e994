//! The event log on SQLite, the embedded default of `airlock up`.
//!
//! SQLite allows one writer at a time. Every write goes through `write`, a pool
//! of exactly one connection, and starts with `BEGIN IMMEDIATE` so the write
//! lock is taken before the head is read: appends are serialized in-process
//! (no SQLITE_BUSY between our own writers), and a second process on the same
//! file waits on `busy_timeout` instead of failing at lock upgrade. Reads use
//! their own pool; in WAL mode they never block the writer.

use std::sync::Arc;

use airlock_core::chain::GENESIS;
use airlock_core::{Event, TenantId};
use airlock_proto::EventRecord;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use tokio::sync::Notify;

use super::records::{self, AppendAt, EVENT_COLUMNS, EventRow, OutboxRow, TxError, from_db, to_db};
use super::{AppendError, EventLog, ExpectedVersion};

pub struct SqliteEventLog {
    read: SqlitePool,
    /// One connection: the only writer.
    write: SqlitePool,
    /// Signalled after every commit so the in-process outbox relay wakes at once.
    notify: Arc<Notify>,
}

impl SqliteEventLog {
    /// A log over an already migrated database. `write` must hold one connection;
    /// for an in-memory database `read` is the same pool.
    pub fn new(read: SqlitePool, write: SqlitePool, notify: Arc<Notify>) -> Self {
        Self { read, write, notify }
    }

    async fn append_tx(
        &self,
        tenant: TenantId,
        stream: &str,
        expected: ExpectedVersion,
        actor: &str,
        events: &[Event],
    ) -> Result<Vec<EventRecord>, TxError> {
        let tenant_id = tenant.to_string();
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let head: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM tenant_heads WHERE tenant_id = ?1")
            .bind(&tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (head_seq, head_hash) = match head {
            Some((seq, hash)) => (from_db("head seq", seq)?, records::hash32("head hash", &hash)?),
            None => (0, GENESIS),
        };
        let current: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM events WHERE tenant_id = ?1 AND stream = ?2")
                .bind(&tenant_id)
                .bind(stream)
                .fetch_one(&mut *tx)
                .await?;
        let current = from_db("stream_version", current.unwrap_or(0))?;
        records::check_expected(stream, expected, current)?;

        let at = AppendAt {
            tenant,
            stream,
            actor,
            head_seq,
            head_hash,
            stream_version: current,
            occurred_at_unix_ms: records::now_unix_ms(),
        };
        let out = records::chain_records(&at, events);
        for r in &out {
            let seq = to_db(r.seq)?;
            sqlx::query(
                "INSERT INTO events (tenant_id, seq, stream, stream_version, occurred_at_unix_ms, actor, payload, \
                 prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .bind(&r.tenant_id)
            .bind(seq)
            .bind(&r.stream)
            .bind(to_db(r.stream_version)?)
            .bind(r.occurred_at_unix_ms)
            .bind(&r.actor)
            .bind(&r.payload)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO outbox (tenant_id, seq) VALUES (?1, ?2)")
                .bind(&r.tenant_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(last) = out.last() {
            sqlx::query(
                "INSERT INTO tenant_heads (tenant_id, seq, hash) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (tenant_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            )
            .bind(&tenant_id)
            .bind(to_db(last.seq)?)
            .bind(&last.hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.notify.notify_one();
        Ok(out)
    }
}

#[async_trait::async_trait]
impl EventLog for SqliteEventLog {
    async fn append(
        &self,
        tenant: TenantId,
        stream: &str,
        expected: ExpectedVersion,
        actor: &str,
        events: &[Event],
    ) -> Result<Vec<EventRecord>, AppendError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match self.append_tx(tenant, stream, expected, actor, events).await {
            Ok(out) => Ok(out),
            Err(TxError::Append(e)) => Err(e),
            Err(TxError::UniqueViolation) => {
                let actual = self.stream_version(tenant, stream).await?;
                Err(AppendError::Conflict { stream: stream.to_owned(), expected, actual })
            }
        }
    }

    async fn read(&self, tenant: TenantId, from_seq: u64, limit: u32) -> anyhow::Result<Vec<EventRecord>> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.tenant_id = ?1 AND e.seq >= ?2 ORDER BY e.seq LIMIT ?3"
        ))
        .bind(tenant.to_string())
        .bind(to_db(from_seq)?)
        .bind(i64::from(limit.min(records::MAX_READ)))
        .fetch_all(&self.read)
        .await?;
        records::records(rows)
    }

    async fn head(&self, tenant: TenantId) -> anyhow::Result<(u64, [u8; 32])> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM tenant_heads WHERE tenant_id = ?1")
            .bind(tenant.to_string())
            .fetch_optional(&self.read)
            .await?;
        match row {
            Some((seq, hash)) => Ok((from_db("head seq", seq)?, records::hash32("head hash", &hash)?)),
            None => Ok((0, GENESIS)),
        }
    }

    async fn stream_version(&self, tenant: TenantId, stream: &str) -> anyhow::Result<u64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM events WHERE tenant_id = ?1 AND stream = ?2")
                .bind(tenant.to_string())
                .bind(stream)
                .fetch_one(&self.read)
                .await?;
        from_db("stream_version", v.unwrap_or(0))
    }

    async fn tenants(&self) -> anyhow::Result<Vec<TenantId>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT tenant_id FROM tenant_heads WHERE seq > 0 ORDER BY tenant_id")
                .fetch_all(&self.read)
                .await?;
        records::parse_tenants(ids)
    }

    async fn outbox_pending(&self, limit: u32) -> anyhow::Result<Vec<(i64, EventRecord)>> {
        let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
            "SELECT o.id AS outbox_id, {EVENT_COLUMNS} FROM outbox o \
             JOIN events e ON e.tenant_id = o.tenant_id AND e.seq = o.seq ORDER BY o.id LIMIT ?1"
        ))
        .bind(i64::from(limit.min(records::MAX_READ)))
        .fetch_all(&self.read)
        .await?;
        records::outbox_entries(rows)
    }

    async fn outbox_done(&self, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // SQLite limits bound parameters per statement (32766 by default); stay
        // well below it and delete in one transaction.
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in ids.chunks(1000) {
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM outbox WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            list.push_unseparated(")");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
