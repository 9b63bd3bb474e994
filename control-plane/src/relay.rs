//! The outbox relay: moves committed records from the log's outbox to the bus.
//!
//! Appends write each record to the outbox in the same transaction as the event,
//! so a record is published if and only if it was committed. The relay publishes
//! pending records in outbox order, one at a time (a tenant's records must reach
//! the bus in `seq` order), and marks them done only after the bus accepted
//! them. A crash between the publish and the mark re-publishes the record on the
//! next run: delivery is at least once, never lost, and duplicates are absorbed
//! by the bus (JetStream's `Nats-Msg-Id` dedup) and by consumers (idempotent by
//! `seq`). On a bus error the relay backs off and retries from the same record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_proto::bus::Bus;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::eventlog::EventLog;

/// How many outbox entries one pass reads.
const BATCH: u32 = 256;
/// How often the relay looks at the outbox without a signal, by default (see
/// `Store::outbox_poll`).
pub const POLL: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Counters a caller (metrics, tests) can read while the relay runs.
#[derive(Clone, Debug, Default)]
pub struct RelayMetrics {
    published: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl RelayMetrics {
    /// Records the bus accepted (a record re-published after a crash counts again).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Failed attempts to read the outbox, publish or mark done.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

pub struct Relay {
    log: Arc<dyn EventLog>,
    bus: Arc<dyn Bus>,
    notify: Arc<Notify>,
    metrics: RelayMetrics,
    poll: Duration,
}

impl Relay {
    /// `notify` is the log's commit signal (`Store::notify`).
    pub fn new(log: Arc<dyn EventLog>, bus: Arc<dyn Bus>, notify: Arc<Notify>) -> Self {
        Self { log, bus, notify, metrics: RelayMetrics::default(), poll: POLL }
    }

    /// How often to look at the outbox without a signal: for records another
    /// process appended and did not publish (it stopped between the two).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub fn metrics(&self) -> RelayMetrics {
        self.metrics.clone()
    }

    /// Relays until `cancel` fires. Never returns early on an error: storage and
    /// bus failures are logged and retried with backoff.
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("outbox_relay");
        self.run_inner(cancel).instrument(span).await;
    }

    async fn run_inner(self, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        while !cancel.is_cancelled() {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => break,
                outcome = self.pass() => outcome,
            };
            match outcome {
                Ok(0) => {
                    backoff = BACKOFF_MIN;
                    // Nothing pending: wait for a local commit or the next poll.
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                }
                Ok(_) => backoff = BACKOFF_MIN,
                Err(e) => {
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "failed to {e:#}");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One batch: publishes pending records in order until the batch ends or the
    /// bus fails, then marks the published prefix done. Returns how many records
    /// were published; an error means the rest of the batch is retried later.
    async fn pass(&self) -> anyhow::Result<usize> {
        let pending = self.log.outbox_pending(BATCH).await.map_err(|e| e.context("read the outbox"))?;
        let records: Vec<_> = pending.iter().map(|(_, r)| r.clone()).collect();
        // In order, stopping at the first failure: later records would reorder a tenant.
        let (published, error) = self.bus.publish_batch(&records).await;
        let done: Vec<i64> = pending.iter().take(published).map(|(id, _)| *id).collect();
        self.metrics.published.fetch_add(done.len() as u64, Ordering::Relaxed);
        let failed = error.map(|e| match records.get(published) {
            Some(r) => e.context(format!("publish event {}:{}", r.tenant_id, r.seq)),
            None => e.context("publish events"),
        });
        if !done.is_empty() {
            // If this fails the records stay pending and are published again:
            // a duplicate, which the bus and the consumers absorb.
            self.log.outbox_done(&done).await.map_err(|e| e.context("mark published events done"))?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }
}
