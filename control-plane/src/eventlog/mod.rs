//! The event log: append-only, per tenant, ordered by a gap-free `seq`, every
//! record hash-chained to the one before it. Two backends behind one trait:
//! Postgres (the system of record in a deployment) and SQLite (the embedded
//! default). The control plane is its only writer.

use airlock_core::{Event, TenantId};
use airlock_proto::EventRecord;

pub mod postgres;
pub(crate) mod records;
pub mod sqlite;

/// What the writer expects of a stream before its append (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (versions start at 1).
    Exactly(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream} is at version {actual}, expected {expected:?}")]
    Conflict { stream: String, expected: ExpectedVersion, actual: u64 },
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` to `stream` of `tenant` in one transaction, with the next
    /// `seq`s of the tenant and the next versions of the stream, chained to the
    /// tenant's head; writes them to the outbox in the same transaction. Returns
    /// the stored records. Appends to one tenant are serialized.
    async fn append(
        &self,
        tenant: TenantId,
        stream: &str,
        expected: ExpectedVersion,
        actor: &str,
        events: &[Event],
    ) -> Result<Vec<EventRecord>, AppendError>;

    /// Up to `limit` records of `tenant` with `seq >= from_seq`, in order.
    async fn read(&self, tenant: TenantId, from_seq: u64, limit: u32) -> anyhow::Result<Vec<EventRecord>>;

    /// The tenant's last `seq` (0 when empty) and its hash (`GENESIS` when empty).
    async fn head(&self, tenant: TenantId) -> anyhow::Result<(u64, [u8; 32])>;

    /// The version of a stream (0 when it does not exist).
    async fn stream_version(&self, tenant: TenantId, stream: &str) -> anyhow::Result<u64>;

    /// Every tenant that has at least one event.
    async fn tenants(&self) -> anyhow::Result<Vec<TenantId>>;

    /// Up to `limit` outbox entries not yet published, oldest first: (outbox id, record).
    async fn outbox_pending(&self, limit: u32) -> anyhow::Result<Vec<(i64, EventRecord)>>;

    /// Marks outbox entries published.
    async fn outbox_done(&self, ids: &[i64]) -> anyhow::Result<()>;
}
