//! The event log on Postgres, the system of record in a deployment.
//!
//! An append is one transaction that locks the tenant's row in `tenant_heads`
//! (`SELECT ... FOR UPDATE`): appends of one tenant queue behind each other, so
//! `seq` is gap-free and every record chains to the one committed before it,
//! while different tenants append in parallel. The unique constraints on
//! `events` are the last line of defence if anything ever bypasses the lock.

use std::sync::Arc;

use airlock_core::chain::GENESIS;
use airlock_core::{Event, TenantId};
use airlock_proto::EventRecord;
use sqlx::PgPool;
use tokio::sync::Notify;

use super::records::{self, AppendAt, EVENT_COLUMNS, EventRow, OutboxRow, TxError, from_db, to_db};
use super::{AppendError, EventLog, ExpectedVersion};

pub struct PgEventLog {
    pool: PgPool,
    /// Signalled after every commit so the in-process outbox relay wakes at once.
    notify: Arc<Notify>,
}

impl PgEventLog {
    /// A log over an already migrated database.
    pub fn new(pool: PgPool, notify: Arc<Notify>) -> Self {
        Self { pool, notify }
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
        let mut tx = self.pool.begin().await?;
        // Make sure the head row exists, then lock it for the rest of the transaction.
        sqlx::query("INSERT INTO tenant_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING")
            .bind(&tenant_id)
            .bind(GENESIS.as_slice())
            .execute(&mut *tx)
            .await?;
        let (head_seq, head_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM tenant_heads WHERE tenant_id = $1 FOR UPDATE")
                .bind(&tenant_id)
                .fetch_one(&mut *tx)
                .await?;
        // Read after taking the lock: under READ COMMITTED this sees every append
        // of the tenant that committed before ours.
        let current: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM events WHERE tenant_id = $1 AND stream = $2")
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
            head_seq: from_db("head seq", head_seq)?,
            head_hash: records::hash32("head hash", &head_hash)?,
            stream_version: current,
            occurred_at_unix_ms: records::now_unix_ms(),
        };
        let out = records::chain_records(&at, events);
        for r in &out {
            let seq = to_db(r.seq)?;
            sqlx::query(
                "INSERT INTO events (tenant_id, seq, stream, stream_version, occurred_at_unix_ms, actor, payload, \
                 prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
            sqlx::query("INSERT INTO outbox (tenant_id, seq) VALUES ($1, $2)")
                .bind(&r.tenant_id)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(last) = out.last() {
            sqlx::query("UPDATE tenant_heads SET seq = $2, hash = $3 WHERE tenant_id = $1")
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
impl EventLog for PgEventLog {
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
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.tenant_id = $1 AND e.seq >= $2 ORDER BY e.seq LIMIT $3"
        ))
        .bind(tenant.to_string())
        .bind(to_db(from_seq)?)
        .bind(i64::from(limit.min(records::MAX_READ)))
        .fetch_all(&self.pool)
        .await?;
        records::records(rows)
    }

    async fn head(&self, tenant: TenantId) -> anyhow::Result<(u64, [u8; 32])> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM tenant_heads WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some((seq, hash)) => Ok((from_db("head seq", seq)?, records::hash32("head hash", &hash)?)),
            None => Ok((0, GENESIS)),
        }
    }

    async fn stream_version(&self, tenant: TenantId, stream: &str) -> anyhow::Result<u64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT max(stream_version) FROM events WHERE tenant_id = $1 AND stream = $2")
                .bind(tenant.to_string())
                .bind(stream)
                .fetch_one(&self.pool)
                .await?;
        from_db("stream_version", v.unwrap_or(0))
    }

    async fn tenants(&self) -> anyhow::Result<Vec<TenantId>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT tenant_id FROM tenant_heads WHERE seq > 0 ORDER BY tenant_id")
                .fetch_all(&self.pool)
                .await?;
        records::parse_tenants(ids)
    }

    async fn outbox_pending(&self, limit: u32) -> anyhow::Result<Vec<(i64, EventRecord)>> {
        let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
            "SELECT o.id AS outbox_id, {EVENT_COLUMNS} FROM outbox o \
             JOIN events e ON e.tenant_id = o.tenant_id AND e.seq = o.seq ORDER BY o.id LIMIT $1"
        ))
        .bind(i64::from(limit.min(records::MAX_READ)))
        .fetch_all(&self.pool)
        .await?;
        records::outbox_entries(rows)
    }

    async fn outbox_done(&self, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(ids).execute(&self.pool).await?;
        Ok(())
    }
}
