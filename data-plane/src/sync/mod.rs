//! Keeps the projection current.
//!
//! Subscribe to the bus first, then install the snapshot, then apply records as
//! they arrive: whatever was published between the snapshot and the first
//! record is either in the snapshot or on the bus, and duplicates are absorbed
//! by `seq`. A record past the next expected `seq` is a gap: the missing records
//! are backfilled from the control plane. A lost final record leaves no later
//! one to reveal the gap, so the worker also compares its `seq`s with the log's
//! heads on a timer.

pub mod grpc;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use airlock_core::{ApplyError, TenantId, TenantState};
use airlock_proto::EventRecord;
use airlock_proto::bus::{Bus, StartAt};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use grpc::GrpcSource;

use crate::projection::Projection;

/// How a worker reads the log, for snapshots and backfills.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    async fn snapshot(&self) -> anyhow::Result<Vec<(TenantId, TenantState)>>;
    /// Up to one page of a tenant's records from `from_seq` (inclusive).
    async fn backfill(&self, tenant: TenantId, from_seq: u64) -> anyhow::Result<Vec<EventRecord>>;
    async fn heads(&self) -> anyhow::Result<Vec<(TenantId, u64)>>;
}

pub struct Synchronizer {
    pub projection: Arc<Projection>,
    pub source: Arc<dyn Source>,
    pub bus: Arc<dyn Bus>,
    /// How often to compare with the log's heads.
    pub reconcile_every: Duration,
}

impl Synchronizer {
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !cancel.is_cancelled() {
            match self.session(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("failed to follow the event bus: {e:#}; retrying in {backoff:?}");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One subscription, until the bus ends it (an error) or we are cancelled (Ok).
    async fn session(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut records = self.bus.subscribe(StartAt::New).await?;
        for (tenant, state) in self.source.snapshot().await? {
            self.projection.install(tenant, state);
        }
        self.reconcile().await?;
        self.projection.set_ready();
        tracing::info!(tenants = self.projection.applied().len(), "projection loaded");
        // The heads were just compared: the next comparison is an interval away
        // (an interval's first tick would come at once).
        let first = tokio::time::Instant::now() + self.reconcile_every;
        let mut reconcile = tokio::time::interval_at(first, self.reconcile_every);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                record = records.next() => match record {
                    Some(record) => self.apply(record).await,
                    None => anyhow::bail!("the bus subscription ended"),
                },
                _ = reconcile.tick() => self.compare_heads().await,
                () = self.projection.reconcile_wanted() => self.compare_heads().await,
            }
        }
    }

    /// `reconcile` on its interval or when asked, where a failure waits for the next time.
    async fn compare_heads(&self) {
        if let Err(e) = self.reconcile().await {
            tracing::warn!("failed to compare with the log's heads: {e:#}");
        }
    }

    async fn apply(&self, record: EventRecord) {
        let Ok(tenant) = record.tenant_id.parse::<TenantId>() else {
            tracing::warn!(tenant = %record.tenant_id, "ignoring a record with a malformed tenant id");
            return;
        };
        let event = match airlock_proto::convert::decode_event(&record.payload) {
            Ok(e) => e,
            Err(e) => {
                // Stay at the previous seq: the worker must not skip what it cannot read.
                tracing::error!(%tenant, seq = record.seq, "failed to decode an event: {e}");
                return;
            }
        };
        match self.projection.apply(tenant, record.seq, &event) {
            Ok(_) => {}
            Err(ApplyError::Gap { expected, got }) => {
                tracing::info!(%tenant, expected, got, "gap in the bus; backfilling from the log");
                if let Err(e) = self.backfill(tenant).await {
                    tracing::warn!(%tenant, "failed to backfill: {e:#}");
                }
            }
        }
    }

    /// Applies the tenant's records after what we hold, up to the log's head.
    async fn backfill(&self, tenant: TenantId) -> anyhow::Result<()> {
        loop {
            let from = self.projection.seq(&tenant) + 1;
            let records = self.source.backfill(tenant, from).await?;
            if records.is_empty() {
                return Ok(());
            }
            for record in &records {
                let event = airlock_proto::convert::decode_event(&record.payload)?;
                self.projection.apply(tenant, record.seq, &event)?;
                self.projection.counters.backfilled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn reconcile(&self) -> anyhow::Result<()> {
        for (tenant, head) in self.source.heads().await? {
            if head > self.projection.seq(&tenant) {
                self.backfill(tenant).await?;
            }
        }
        Ok(())
    }
}
