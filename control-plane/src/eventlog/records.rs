//! What both backends do the same way once they hold a tenant's head: check the
//! writer's expectation, build the chained records, and turn stored rows back
//! into `EventRecord`s. Keeping this in one place is what makes the Postgres and
//! SQLite logs produce byte-identical chains.

use airlock_core::chain::{self, Header};
use airlock_core::{Event, TenantId};
use airlock_proto::EventRecord;
use anyhow::Context as _;

use super::{AppendError, ExpectedVersion};

/// `read` never returns more than this many records at once, whatever the caller
/// asks: a subscriber catching up pages through the log instead of loading it whole.
pub(crate) const MAX_READ: u32 = 10_000;

/// Refuses the append unless the stream is where the writer expects it.
pub(crate) fn check_expected(stream: &str, expected: ExpectedVersion, actual: u64) -> Result<(), AppendError> {
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => actual == 0,
        ExpectedVersion::Exactly(v) => actual == v,
    };
    if ok { Ok(()) } else { Err(AppendError::Conflict { stream: stream.to_owned(), expected, actual }) }
}

/// Where an append starts: the tenant's head and the stream's current version.
pub(crate) struct AppendAt<'a> {
    pub tenant: TenantId,
    pub stream: &'a str,
    pub actor: &'a str,
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub stream_version: u64,
    pub occurred_at_unix_ms: i64,
}

/// The records `events` become when appended at `at`, each linked to the one
/// before it (the first to the tenant's head).
pub(crate) fn chain_records(at: &AppendAt<'_>, events: &[Event]) -> Vec<EventRecord> {
    let tenant_id = at.tenant.to_string();
    let mut prev_hash = at.head_hash;
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in (1u64..).zip(events) {
        let payload = airlock_proto::convert::encode_event(event);
        let seq = at.head_seq + i;
        let stream_version = at.stream_version + i;
        let header = Header {
            tenant_id: &tenant_id,
            seq,
            stream: at.stream,
            stream_version,
            occurred_at_unix_ms: at.occurred_at_unix_ms,
            actor: at.actor,
        };
        let hash = chain::link(&prev_hash, &header, &payload);
        out.push(EventRecord {
            tenant_id: tenant_id.clone(),
            seq,
            stream: at.stream.to_owned(),
            stream_version,
            occurred_at_unix_ms: at.occurred_at_unix_ms,
            actor: at.actor.to_owned(),
            payload,
            prev_hash: prev_hash.to_vec(),
            hash: hash.to_vec(),
        });
        prev_hash = hash;
    }
    out
}

pub(crate) fn now_unix_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Both databases store integers as signed 64-bit.
pub(crate) fn to_db(n: u64) -> anyhow::Result<i64> {
    i64::try_from(n).with_context(|| format!("{n} does not fit the database's integer"))
}

pub(crate) fn from_db(what: &str, n: i64) -> anyhow::Result<u64> {
    u64::try_from(n).with_context(|| format!("stored {what} {n} is negative"))
}

pub(crate) fn hash32(what: &str, bytes: &[u8]) -> anyhow::Result<[u8; 32]> {
    bytes.try_into().with_context(|| format!("stored {what} is {} bytes, not 32", bytes.len()))
}

/// One row of `events`, the same in both databases.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub tenant_id: String,
    pub seq: i64,
    pub stream: String,
    pub stream_version: i64,
    pub occurred_at_unix_ms: i64,
    pub actor: String,
    pub payload: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// An outbox entry joined to its event.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub outbox_id: i64,
    #[sqlx(flatten)]
    pub event: EventRow,
}

/// The columns of `EventRow`, qualified by the alias `e`.
pub(crate) const EVENT_COLUMNS: &str = "e.tenant_id, e.seq, e.stream, e.stream_version, e.occurred_at_unix_ms, \
     e.actor, e.payload, e.prev_hash, e.hash";

impl TryFrom<EventRow> for EventRecord {
    type Error = anyhow::Error;

    fn try_from(row: EventRow) -> anyhow::Result<Self> {
        Ok(EventRecord {
            seq: from_db("seq", row.seq)?,
            stream_version: from_db("stream_version", row.stream_version)?,
            tenant_id: row.tenant_id,
            stream: row.stream,
            occurred_at_unix_ms: row.occurred_at_unix_ms,
            actor: row.actor,
            payload: row.payload,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

pub(crate) fn records(rows: Vec<EventRow>) -> anyhow::Result<Vec<EventRecord>> {
    rows.into_iter().map(EventRecord::try_from).collect()
}

pub(crate) fn outbox_entries(rows: Vec<OutboxRow>) -> anyhow::Result<Vec<(i64, EventRecord)>> {
    rows.into_iter().map(|r| Ok((r.outbox_id, EventRecord::try_from(r.event)?))).collect()
}

pub(crate) fn parse_tenants(ids: Vec<String>) -> anyhow::Result<Vec<TenantId>> {
    ids.into_iter().map(|s| s.parse().with_context(|| format!("stored tenant id {s:?} is not a UUID"))).collect()
}

/// How an append transaction failed, before the backend turns it into an
/// `AppendError`. A unique violation means a concurrent writer stored the same
/// stream version (or seq) first: the caller answers `Conflict` with the stream's
/// version re-read after the rollback, never a storage error.
pub(crate) enum TxError {
    Append(AppendError),
    UniqueViolation,
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
            TxError::UniqueViolation
        } else {
            TxError::Append(AppendError::Storage(anyhow::Error::new(e).context("appending to the event log")))
        }
    }
}

impl From<AppendError> for TxError {
    fn from(e: AppendError) -> Self {
        TxError::Append(e)
    }
}

impl From<anyhow::Error> for TxError {
    fn from(e: anyhow::Error) -> Self {
        TxError::Append(AppendError::Storage(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert!(check_expected("s", ExpectedVersion::Any, 7).is_ok());
        assert!(check_expected("s", ExpectedVersion::NoStream, 0).is_ok());
        assert!(matches!(
            check_expected("s", ExpectedVersion::NoStream, 1),
            Err(AppendError::Conflict { actual: 1, .. })
        ));
        assert!(check_expected("s", ExpectedVersion::Exactly(3), 3).is_ok());
        assert!(check_expected("s", ExpectedVersion::Exactly(3), 4).is_err());
    }

    #[test]
    fn chained_records_verify() {
        let tenant = TenantId::new();
        let events = vec![Event::TenantCreated { tenant_id: tenant, name: "a".into() }; 3];
        let at = AppendAt {
            tenant,
            stream: "tenant",
            actor: "system",
            head_seq: 0,
            head_hash: chain::GENESIS,
            stream_version: 0,
            occurred_at_unix_ms: 1,
        };
        let records = chain_records(&at, &events);
        let mut v = chain::Verifier::new();
        for r in &records {
            v.check(&airlock_proto::convert::header(r), &r.payload, &r.prev_hash, &r.hash).unwrap();
        }
        assert_eq!(v.verified(), 3);
        assert_eq!(records.iter().map(|r| r.stream_version).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
