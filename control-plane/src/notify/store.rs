//! The notifier's durable state, in the same database as the event log: how far
//! it has read each tenant's log (a cursor per consumer), the deliveries that
//! reading produced, and every attempt at each of them.
//!
//! Deliveries for a batch of events are enqueued in the same transaction that
//! moves the cursor past those events, and the move is a compare-and-set on the
//! cursor's old value. So after a crash an event is either behind the cursor
//! with all its deliveries stored, or ahead of it with none, and two notifiers
//! on one database cannot both enqueue the same batch. The unique
//! `(tenant, kind, target, msg_id)` makes a repeated enqueue harmless anyway.
//!
//! A dispatcher claims due deliveries by pushing their `next_attempt_at` out by
//! a lease; if it dies mid-attempt the lease runs out and the delivery is
//! attempted again (at least once).

use airlock_core::TenantId;
use anyhow::Context as _;
use sqlx::{PgPool, SqlitePool};

use crate::eventlog::records::{from_db, now_unix_ms, to_db};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet; attempted at `next_attempt_at`.
    Pending,
    Delivered,
    /// Every attempt failed, or the target is gone.
    Failed,
}

impl DeliveryState {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => anyhow::bail!("stored delivery state {other:?} is unknown"),
        }
    }
}

/// A delivery to enqueue. `(kind, target, msg_id)` identifies it within a
/// tenant: enqueueing the same triple again adds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Who dispatches it: `webhook`, or a kind with a registered handler.
    pub kind: String,
    /// Where it goes, in the kind's terms (a webhook id, a channel, ...).
    pub target: String,
    /// Stable across retries, so a receiver can drop duplicates.
    pub msg_id: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub tenant: TenantId,
    pub kind: String,
    pub target: String,
    pub msg_id: String,
    /// The event it was made for.
    pub event_seq: u64,
    pub payload: Vec<u8>,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub created_at_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// One attempt at a delivery, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub delivery_id: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at_ms: i64,
    /// The receiver's HTTP status; `None` when there was no answer.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    /// Attempt again at this unix time (ms).
    RetryAt(i64),
    Failed,
}

/// A delivery and its attempts, oldest attempt first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryHistory {
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

#[async_trait::async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    /// The last `seq` of `tenant` whose deliveries `consumer` has enqueued (0: none).
    async fn cursor(&self, tenant: TenantId, consumer: &str) -> anyhow::Result<u64>;

    /// In one transaction: if the cursor is still at `from`, stores `deliveries`
    /// (each with the `seq` of its event) and moves the cursor to `to`. Returns
    /// false, storing nothing, when the cursor had moved (another notifier).
    async fn enqueue(
        &self,
        tenant: TenantId,
        consumer: &str,
        from: u64,
        to: u64,
        deliveries: &[(u64, NewDelivery)],
    ) -> anyhow::Result<bool>;

    /// Up to `limit` pending deliveries due at `now_ms`, oldest due first, each
    /// leased until `lease_until_ms` (not handed out again before then).
    async fn claim_due(&self, now_ms: i64, lease_until_ms: i64, limit: u32) -> anyhow::Result<Vec<Delivery>>;

    /// When the earliest pending delivery is due (a leased one: when its lease ends).
    async fn next_due(&self) -> anyhow::Result<Option<i64>>;

    /// Records an attempt and moves its delivery on. A delivery no longer
    /// pending (settled by another dispatcher) keeps its state.
    async fn record_attempt(&self, attempt: &Attempt, after: AfterAttempt) -> anyhow::Result<()>;

    /// Marks a pending delivery failed without attempting it (its target is gone).
    async fn abandon(&self, delivery_id: i64, error: &str) -> anyhow::Result<()>;

    /// Hands a claimed delivery back, due at `at_ms`, with no attempt recorded.
    async fn postpone(&self, delivery_id: i64, at_ms: i64) -> anyhow::Result<()>;

    /// The tenant's deliveries, newest first, at most `limit`, only those with an
    /// id below `before` when given (to page back).
    async fn list(&self, tenant: TenantId, before: Option<i64>, limit: u32) -> anyhow::Result<Vec<DeliveryHistory>>;

    /// Remembers `value` under `key` for a delivery handler (last write wins).
    async fn set_note(&self, tenant: TenantId, key: &str, value: &str) -> anyhow::Result<()>;

    async fn note(&self, tenant: TenantId, key: &str) -> anyhow::Result<Option<String>>;
}

const DELIVERY_COLUMNS: &str = "id, tenant_id, kind, target, msg_id, event_seq, payload, state, attempts, \
     next_attempt_at, created_at, last_status, last_error";

/// A row of `deliveries`, the same in both databases.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    tenant_id: String,
    kind: String,
    target: String,
    msg_id: String,
    event_seq: i64,
    payload: Vec<u8>,
    state: String,
    attempts: i64,
    next_attempt_at: i64,
    created_at: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
}

impl DeliveryRow {
    fn into_delivery(self) -> anyhow::Result<Delivery> {
        Ok(Delivery {
            id: self.id,
            tenant: self.tenant_id.parse().with_context(|| format!("stored tenant id {:?}", self.tenant_id))?,
            kind: self.kind,
            target: self.target,
            msg_id: self.msg_id,
            event_seq: from_db("delivery event seq", self.event_seq)?,
            payload: self.payload,
            state: DeliveryState::parse(&self.state)?,
            attempts: small("delivery attempts", self.attempts)?,
            next_attempt_at_ms: self.next_attempt_at,
            created_at_ms: self.created_at,
            last_status: self.last_status.map(|s| small("delivery status", s)).transpose()?,
            last_error: self.last_error,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: i64,
    attempt: i64,
    attempted_at: i64,
    status: Option<i64>,
    error: Option<String>,
    duration_ms: i64,
}

impl AttemptRow {
    fn into_attempt(self) -> anyhow::Result<Attempt> {
        Ok(Attempt {
            delivery_id: self.delivery_id,
            attempt: small("attempt number", self.attempt)?,
            at_ms: self.attempted_at,
            status: self.status.map(|s| small("attempt status", s)).transpose()?,
            error: self.error,
            duration_ms: from_db("attempt duration", self.duration_ms)?,
        })
    }
}

fn small<T: TryFrom<i64>>(what: &str, n: i64) -> anyhow::Result<T> {
    T::try_from(n).map_err(|_| anyhow::anyhow!("stored {what} {n} is out of range"))
}

fn deliveries(rows: Vec<DeliveryRow>) -> anyhow::Result<Vec<Delivery>> {
    let mut out = rows.into_iter().map(DeliveryRow::into_delivery).collect::<anyhow::Result<Vec<_>>>()?;
    out.sort_by_key(|d| d.id);
    Ok(out)
}

/// Pairs deliveries (newest first) with their attempts.
fn histories(rows: Vec<DeliveryRow>, attempts: Vec<AttemptRow>) -> anyhow::Result<Vec<DeliveryHistory>> {
    let mut by_delivery: std::collections::HashMap<i64, Vec<Attempt>> = std::collections::HashMap::new();
    for row in attempts {
        let attempt = row.into_attempt()?;
        by_delivery.entry(attempt.delivery_id).or_default().push(attempt);
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let delivery = row.into_delivery()?;
        let mut attempts = by_delivery.remove(&delivery.id).unwrap_or_default();
        attempts.sort_by_key(|a| a.attempt);
        out.push(DeliveryHistory { delivery, attempts });
    }
    out.sort_by_key(|h| std::cmp::Reverse(h.delivery.id));
    Ok(out)
}

/// The columns an attempt changes on its delivery.
fn settle(after: AfterAttempt, now_ms: i64) -> (&'static str, i64) {
    match after {
        AfterAttempt::Delivered => (DeliveryState::Delivered.as_str(), now_ms),
        AfterAttempt::RetryAt(at) => (DeliveryState::Pending.as_str(), at),
        AfterAttempt::Failed => (DeliveryState::Failed.as_str(), now_ms),
    }
}

pub struct PgNotifyStore {
    pool: PgPool,
}

impl PgNotifyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl NotifyStore for PgNotifyStore {
    async fn cursor(&self, tenant: TenantId, consumer: &str) -> anyhow::Result<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM notification_cursors WHERE tenant_id = $1 AND consumer = $2")
                .bind(tenant.to_string())
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await
                .context("reading the notification cursor")?;
        from_db("notification cursor", seq.unwrap_or(0))
    }

    async fn enqueue(
        &self,
        tenant: TenantId,
        consumer: &str,
        from: u64,
        to: u64,
        deliveries: &[(u64, NewDelivery)],
    ) -> anyhow::Result<bool> {
        let tenant_id = tenant.to_string();
        let context = || format!("enqueueing notifications of tenant {tenant}");
        let mut tx = self.pool.begin().await.with_context(context)?;
        sqlx::query(
            "INSERT INTO notification_cursors (tenant_id, consumer, seq) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .bind(&tenant_id)
        .bind(consumer)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        // The row lock makes a concurrent enqueue wait here and then see our cursor.
        let current: i64 = sqlx::query_scalar(
            "SELECT seq FROM notification_cursors WHERE tenant_id = $1 AND consumer = $2 FOR UPDATE",
        )
        .bind(&tenant_id)
        .bind(consumer)
        .fetch_one(&mut *tx)
        .await
        .with_context(context)?;
        if from_db("notification cursor", current)? != from {
            return Ok(false);
        }
        let now = now_unix_ms();
        for (seq, d) in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (tenant_id, kind, target, msg_id, event_seq, payload, next_attempt_at, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (tenant_id, kind, target, msg_id) DO NOTHING",
            )
            .bind(&tenant_id)
            .bind(&d.kind)
            .bind(&d.target)
            .bind(&d.msg_id)
            .bind(to_db(*seq)?)
            .bind(&d.payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        }
        sqlx::query("UPDATE notification_cursors SET seq = $3 WHERE tenant_id = $1 AND consumer = $2")
            .bind(&tenant_id)
            .bind(consumer)
            .bind(to_db(to)?)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(true)
    }

    async fn claim_due(&self, now_ms: i64, lease_until_ms: i64, limit: u32) -> anyhow::Result<Vec<Delivery>> {
        // SKIP LOCKED: instances claiming at once take disjoint rows instead of queueing.
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE deliveries SET next_attempt_at = $2 WHERE id IN (\
               SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(lease_until_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .context("claiming due deliveries")?;
        deliveries(rows)
    }

    async fn next_due(&self) -> anyhow::Result<Option<i64>> {
        sqlx::query_scalar("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await
            .context("reading when the next delivery is due")
    }

    async fn record_attempt(&self, attempt: &Attempt, after: AfterAttempt) -> anyhow::Result<()> {
        let context = || format!("recording attempt {} of delivery {}", attempt.attempt, attempt.delivery_id);
        let (state, next_at) = settle(after, attempt.at_ms);
        let mut tx = self.pool.begin().await.with_context(context)?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, attempted_at, status, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(attempt.delivery_id)
        .bind(i64::from(attempt.attempt))
        .bind(attempt.at_ms)
        .bind(attempt.status.map(i64::from))
        .bind(&attempt.error)
        .bind(to_db(attempt.duration_ms)?)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        sqlx::query(
            "UPDATE deliveries SET state = $2, attempts = GREATEST(attempts, $3), next_attempt_at = $4, \
             last_status = $5, last_error = $6 WHERE id = $1 AND state = 'pending'",
        )
        .bind(attempt.delivery_id)
        .bind(state)
        .bind(i64::from(attempt.attempt))
        .bind(next_at)
        .bind(attempt.status.map(i64::from))
        .bind(&attempt.error)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(())
    }

    async fn abandon(&self, delivery_id: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', last_error = $2, next_attempt_at = $3 \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(delivery_id)
        .bind(error)
        .bind(now_unix_ms())
        .execute(&self.pool)
        .await
        .with_context(|| format!("abandoning delivery {delivery_id}"))?;
        Ok(())
    }

    async fn postpone(&self, delivery_id: i64, at_ms: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE deliveries SET next_attempt_at = $2 WHERE id = $1 AND state = 'pending'")
            .bind(delivery_id)
            .bind(at_ms)
            .execute(&self.pool)
            .await
            .with_context(|| format!("postponing delivery {delivery_id}"))?;
        Ok(())
    }

    async fn list(&self, tenant: TenantId, before: Option<i64>, limit: u32) -> anyhow::Result<Vec<DeliveryHistory>> {
        let tenant_id = tenant.to_string();
        let mut tx = self.pool.begin().await.context("listing deliveries")?;
        // One snapshot for both reads, so attempts match the deliveries they belong to.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .context("listing deliveries")?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = $1 AND ($2::BIGINT IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(&tenant_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("listing deliveries")?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT delivery_id, attempt, attempted_at, status, error, duration_ms FROM delivery_attempts \
             WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .context("listing delivery attempts")?;
        tx.commit().await.context("listing deliveries")?;
        histories(rows, attempts)
    }

    async fn set_note(&self, tenant: TenantId, key: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO notification_notes (tenant_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(tenant.to_string())
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .context("storing a notification note")?;
        Ok(())
    }

    async fn note(&self, tenant: TenantId, key: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM notification_notes WHERE tenant_id = $1 AND key = $2")
            .bind(tenant.to_string())
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .context("reading a notification note")
    }
}

/// On SQLite every write goes through the one write connection (see
/// `eventlog::sqlite`), so enqueues and claims are serialized in-process and
/// another process on the file waits for the write lock.
pub struct SqliteNotifyStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteNotifyStore {
    pub fn new(read: SqlitePool, write: SqlitePool) -> Self {
        Self { read, write }
    }
}

#[async_trait::async_trait]
impl NotifyStore for SqliteNotifyStore {
    async fn cursor(&self, tenant: TenantId, consumer: &str) -> anyhow::Result<u64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM notification_cursors WHERE tenant_id = ?1 AND consumer = ?2")
                .bind(tenant.to_string())
                .bind(consumer)
                .fetch_optional(&self.read)
                .await
                .context("reading the notification cursor")?;
        from_db("notification cursor", seq.unwrap_or(0))
    }

    async fn enqueue(
        &self,
        tenant: TenantId,
        consumer: &str,
        from: u64,
        to: u64,
        deliveries: &[(u64, NewDelivery)],
    ) -> anyhow::Result<bool> {
        let tenant_id = tenant.to_string();
        let context = || format!("enqueueing notifications of tenant {tenant}");
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.with_context(context)?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM notification_cursors WHERE tenant_id = ?1 AND consumer = ?2")
                .bind(&tenant_id)
                .bind(consumer)
                .fetch_optional(&mut *tx)
                .await
                .with_context(context)?;
        if from_db("notification cursor", current.unwrap_or(0))? != from {
            return Ok(false);
        }
        let now = now_unix_ms();
        for (seq, d) in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (tenant_id, kind, target, msg_id, event_seq, payload, next_attempt_at, \
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                 ON CONFLICT (tenant_id, kind, target, msg_id) DO NOTHING",
            )
            .bind(&tenant_id)
            .bind(&d.kind)
            .bind(&d.target)
            .bind(&d.msg_id)
            .bind(to_db(*seq)?)
            .bind(&d.payload)
            .bind(now)
            .execute(&mut *tx)
            .await
            .with_context(context)?;
        }
        sqlx::query(
            "INSERT INTO notification_cursors (tenant_id, consumer, seq) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant_id, consumer) DO UPDATE SET seq = excluded.seq",
        )
        .bind(&tenant_id)
        .bind(consumer)
        .bind(to_db(to)?)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(true)
    }

    async fn claim_due(&self, now_ms: i64, lease_until_ms: i64, limit: u32) -> anyhow::Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE deliveries SET next_attempt_at = ?2 WHERE id IN (\
               SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?1 \
               ORDER BY next_attempt_at, id LIMIT ?3) \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(lease_until_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.write)
        .await
        .context("claiming due deliveries")?;
        deliveries(rows)
    }

    async fn next_due(&self) -> anyhow::Result<Option<i64>> {
        sqlx::query_scalar("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending'")
            .fetch_one(&self.read)
            .await
            .context("reading when the next delivery is due")
    }

    async fn record_attempt(&self, attempt: &Attempt, after: AfterAttempt) -> anyhow::Result<()> {
        let context = || format!("recording attempt {} of delivery {}", attempt.attempt, attempt.delivery_id);
        let (state, next_at) = settle(after, attempt.at_ms);
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.with_context(context)?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, attempted_at, status, error, duration_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .bind(attempt.delivery_id)
        .bind(i64::from(attempt.attempt))
        .bind(attempt.at_ms)
        .bind(attempt.status.map(i64::from))
        .bind(&attempt.error)
        .bind(to_db(attempt.duration_ms)?)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        sqlx::query(
            "UPDATE deliveries SET state = ?2, attempts = max(attempts, ?3), next_attempt_at = ?4, \
             last_status = ?5, last_error = ?6 WHERE id = ?1 AND state = 'pending'",
        )
        .bind(attempt.delivery_id)
        .bind(state)
        .bind(i64::from(attempt.attempt))
        .bind(next_at)
        .bind(attempt.status.map(i64::from))
        .bind(&attempt.error)
        .execute(&mut *tx)
        .await
        .with_context(context)?;
        tx.commit().await.with_context(context)?;
        Ok(())
    }

    async fn abandon(&self, delivery_id: i64, error: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', last_error = ?2, next_attempt_at = ?3 \
             WHERE id = ?1 AND state = 'pending'",
        )
        .bind(delivery_id)
        .bind(error)
        .bind(now_unix_ms())
        .execute(&self.write)
        .await
        .with_context(|| format!("abandoning delivery {delivery_id}"))?;
        Ok(())
    }

    async fn postpone(&self, delivery_id: i64, at_ms: i64) -> anyhow::Result<()> {
        sqlx::query("UPDATE deliveries SET next_attempt_at = ?2 WHERE id = ?1 AND state = 'pending'")
            .bind(delivery_id)
            .bind(at_ms)
            .execute(&self.write)
            .await
            .with_context(|| format!("postponing delivery {delivery_id}"))?;
        Ok(())
    }

    async fn list(&self, tenant: TenantId, before: Option<i64>, limit: u32) -> anyhow::Result<Vec<DeliveryHistory>> {
        let tenant_id = tenant.to_string();
        // A read transaction is one snapshot in WAL mode, so attempts match their deliveries.
        let mut tx = self.read.begin().await.context("listing deliveries")?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE tenant_id = ?1 AND (?2 IS NULL OR id < ?2) \
             ORDER BY id DESC LIMIT ?3"
        ))
        .bind(&tenant_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("listing deliveries")?;
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT a.delivery_id, a.attempt, a.attempted_at, a.status, a.error, a.duration_ms \
             FROM delivery_attempts a JOIN (\
               SELECT id FROM deliveries WHERE tenant_id = ?1 AND (?2 IS NULL OR id < ?2) \
               ORDER BY id DESC LIMIT ?3) d ON a.delivery_id = d.id \
             ORDER BY a.delivery_id, a.attempt",
        )
        .bind(&tenant_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .context("listing delivery attempts")?;
        tx.commit().await.context("listing deliveries")?;
        histories(rows, attempts)
    }

    async fn set_note(&self, tenant: TenantId, key: &str, value: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO notification_notes (tenant_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(tenant.to_string())
        .bind(key)
        .bind(value)
        .execute(&self.write)
        .await
        .context("storing a notification note")?;
        Ok(())
    }

    async fn note(&self, tenant: TenantId, key: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM notification_notes WHERE tenant_id = $1 AND key = $2")
            .bind(tenant.to_string())
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .context("reading a notification note")
    }
}
